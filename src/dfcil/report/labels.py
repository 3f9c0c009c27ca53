"""Labels of a run: its protocol (dataset + split), its table row (method variant), its seed
and its provenance (commits, commands).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from dfcil.report.runs import RunRecord

# suite axes a row label leaves out: the row itself, the seeds it averages, the column
ROW_AXES_SHOWN_ELSEWHERE = frozenset({"method", "seed", "protocol"})


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def protocol_label(record: RunRecord) -> str:
    """``"<dataset> B<base> N=<tasks>"`` plus ``" (<K> classes)"`` for a class subset.

    ``N`` counts every task including the base task, e.g. ``"cifar100 B0 N=4 (20 classes)"``
    or ``"cifar100 B50 N=6"``.  (:func:`protocol_labels` adds a suite's ``protocol`` label
    where two suite protocols share this label.)
    """
    data, scenario = _section(record.config, "data"), _section(record.config, "scenario")
    dataset = data.get("dataset") or record.metrics.get("dataset") or "unknown"
    num_tasks = scenario.get("num_tasks")
    if num_tasks is None and isinstance(record.metrics.get("tasks"), list):
        num_tasks = len(record.metrics["tasks"])
    label = f"{dataset} B{scenario.get('base_classes', 0)} N={num_tasks}"
    if scenario.get("subset"):
        label += f" ({scenario['subset']} classes)"
    if data.get("train_per_class"):
        label += f" [{data['train_per_class']} train images/class]"
    return label


def protocol_labels(records: Sequence[RunRecord]) -> dict[str, str]:
    """Map each run's path (a string) to its protocol column label.

    The label is :func:`protocol_label`; where runs with that label carry different suite
    ``protocol`` labels (protocols the config summary does not tell apart, e.g. two epoch
    budgets), the suite label is appended in brackets so they stay separate columns.
    """
    suite_protocols: dict[str, set[str | None]] = defaultdict(set)
    for record in records:
        suite_protocols[protocol_label(record)].add((record.suite_labels or {}).get("protocol"))
    labels = {}
    for record in records:
        label = protocol_label(record)
        extra = (record.suite_labels or {}).get("protocol")
        labels[str(record.path)] = f"{label} [{extra}]" if extra and len(suite_protocols[label]) > 1 else label
    return labels


def method_name(record: RunRecord) -> str:
    """The method's registered name (config ``method.name``, else ``metrics.json``)."""
    return str(_section(record.config, "method").get("name") or record.metrics.get("method") or "unknown")


def row_label(record: RunRecord, *, network: bool = True) -> str:
    """The table row of a run: the suite's ``method`` label, else the method name.

    A run directory named ``<method>-<tag>-s<seed>`` marks a non-default variant and gets
    ``<method>-<tag>`` (``rdfcil-no-rkd-s0`` -> ``"rdfcil-no-rkd"``).  Suite axes other than
    method, seed, protocol and the scenario / data keys (which the protocol label shows) are
    appended, e.g. ``"rdfcil (method.refine_epochs=5)"``, so distinct variants never share a row.
    A diagnostic run (:data:`dfcil.report.runs.DIAGNOSTIC_FILES`) adds its note, e.g.
    ``"abd (replay oracle: real old images)"``: it never averages with the method's own runs.
    So does a run trained before its network's forward changed, e.g. ``"rdfcil-no-rkd (network
    revision 1)"`` (:func:`dfcil.config.recorded_network_revision`); ``network=False`` leaves that
    note out (the row the run would have on today's network).
    """
    labels = record.suite_labels or {}
    if "method" in labels:
        label = labels["method"]
    else:
        method = method_name(record)
        match = re.fullmatch(rf"{re.escape(method)}-(.+)-s\d+", record.name)
        label = f"{method}-{match.group(1)}" if match else method
    extra = [f"{axis}={value}" for axis, value in labels.items()
             if axis not in ROW_AXES_SHOWN_ELSEWHERE and not axis.startswith(("scenario.", "data."))]
    if record.diagnostic:
        extra.append(record.diagnostic)
    if record.older_network and network:
        extra.append(record.older_network)
    return f"{label} ({', '.join(extra)})" if extra else label


def run_seed(record: RunRecord) -> int | str | None:
    """The run's seed (``metrics.json``, else ``config.yaml``, else the suite's label)."""
    for value in (record.metrics.get("seed"), record.config.get("seed")):
        if value is not None:
            return value
    if record.suite_labels and "seed" in record.suite_labels:
        return record.suite_labels["seed"]
    return None


def sessions(record: RunRecord) -> list[dict[str, Any]]:
    """The provenance sessions of ``run.json`` (empty when it is missing)."""
    if not record.run_info:
        return []
    value = record.run_info.get("sessions")
    return [s for s in value if isinstance(s, dict)] if isinstance(value, list) else []


def commits(record: RunRecord) -> list[str]:
    """Distinct commits the run's sessions ran at, in order (empty when unknown)."""
    found: list[str] = []
    for session in sessions(record):
        commit = session.get("commit")
        if commit and str(commit) not in found:
            found.append(str(commit))
    return found


def commit_label(record: RunRecord) -> str:
    """The run's commits joined by ``+`` (a resumed run may span several), or ``"unknown"``."""
    return "+".join(commits(record)) or "unknown"


def machine_label(machine: Any) -> str:
    """A one-line summary of a session's ``machine`` mapping."""
    if not isinstance(machine, dict):
        return "" if machine is None else str(machine)
    parts = []
    name = machine.get("cpu_model") or machine.get("processor") or machine.get("platform")
    if name:
        parts.append(str(name))
    if machine.get("cpu_count") is not None:
        parts.append(f"{machine['cpu_count']} CPUs")
    if "cpu_native_bf16" in machine:
        parts.append("native bf16" if machine["cpu_native_bf16"] else "no native bf16")
    for key in ("gpu", "cuda"):
        if machine.get(key):
            parts.append(f"{key} {machine[key]}")
    for key in ("torch", "python"):
        if machine.get(key):
            parts.append(f"{key} {machine[key]}")
    known = {"processor", "cpu_model", "cpu_native_bf16", "cpu_count", "gpu", "cuda", "torch", "python", "platform",
             "torch_threads"}
    parts.extend(f"{k}={v}" for k, v in machine.items() if k not in known)
    if machine.get("platform") and machine.get("processor"):
        parts.append(str(machine["platform"]))
    return ", ".join(parts)


def run_precision(record: RunRecord) -> str:
    """The precision the run trained in: its sessions' ``precision`` (``run.json``; several joined
    by ``+``), else an explicit ``train.precision`` of its config, else ``"unknown"``."""
    found: list[str] = []
    for session in sessions(record):
        value = session.get("precision")
        if value and str(value) not in found:
            found.append(str(value))
    if found:
        return "+".join(found)
    configured = _section(record.config, "train").get("precision")
    return str(configured) if configured in ("bf16", "fp32", "fp16") else "unknown"


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``N=4`` before ``N=10``)."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]
