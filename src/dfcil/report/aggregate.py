"""Group complete runs by (protocol, method variant) and aggregate their metrics over seeds."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence

from dfcil import metrics as run_metrics
from dfcil.report.labels import method_name, natural_key, protocol_labels, row_label, run_seed
from dfcil.report.model import METRICS, Group, Stat
from dfcil.report.runs import RunRecord


def summarise(values: Sequence[float], seeds: Sequence[int | str | None]) -> Stat:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value)."""
    if not values:
        raise ValueError("cannot summarise an empty list of values")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stat(mean=statistics.fmean(values), std=std, n=len(values), seeds=tuple(seeds))


def _value(record: RunRecord, key: str) -> float | None:
    value = record.metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def exclude_superseded(records: Sequence[RunRecord]) -> None:
    """Where runs of the same protocol column, row and seed were found under different paths
    given to the report, use only those under the path given first and mark the others
    ``excluded`` (superseded), so that e.g. a suite's seed-0 run replaces an older seed-0 run of
    the same method instead of being averaged with it; a run trained before its network changed
    (a "network revision N" row) is superseded by a run of the same row on today's network too.
    Same-seed runs under one path are left alone (:func:`duplicate_seed_warnings` reports them)."""
    columns = protocol_labels(records)
    by_key: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for record in (r for r in records if r.excluded is None):
        by_key[(columns[str(record.path)], row_label(record, network=False), str(run_seed(record)))].append(record)
    for (protocol, method, seed), runs in by_key.items():
        first = min(r.source_rank for r in runs)
        kept = [r for r in runs if r.source_rank == first]
        for record in runs:
            if record.source_rank != first:
                record.excluded = (f"superseded by {kept[0].path} (same {method}, {protocol}, seed {seed}, "
                                   "under a path given earlier to the report)")


def omega_from_joint(records: Sequence[RunRecord]) -> list[str]:
    """Give Omega to every used run that has none (it trained without an upper bound, e.g. a run
    adopted from another suite) from a joint run among ``records`` of the same protocol column
    and seed, with the same class order and number of tasks: ``metrics.omega`` of the run's
    accuracy after each task against the joint run's, as the engine computes it. The run's
    metrics gain ``omega``, ``upper_bound_accuracy_per_step`` and ``omega_from`` (the joint
    run's path); the joint run must have trained the same network revision. Returns one note per
    run given Omega (for the report's warnings)."""
    columns = protocol_labels(records)
    used = [r for r in records if r.excluded is None]
    joints = [r for r in used if method_name(r) == "joint" and isinstance(r.metrics.get("accuracy_per_step"), list)]
    notes = []
    for record in used:
        per_step = record.metrics.get("accuracy_per_step")
        if method_name(record) == "joint" or "omega" in record.metrics or not isinstance(per_step, list):
            continue
        partner = next((j for j in joints if columns[str(j.path)] == columns[str(record.path)]
                        and str(run_seed(j)) == str(run_seed(record)) and j.older_network == record.older_network
                        and j.metrics.get("class_order") == record.metrics.get("class_order")
                        and len(j.metrics["accuracy_per_step"]) == len(per_step)), None)
        if partner is None:
            continue
        bound = [float(a) for a in partner.metrics["accuracy_per_step"]]
        record.metrics["omega"] = run_metrics.omega([float(a) for a in per_step], bound)
        record.metrics["upper_bound_accuracy_per_step"] = bound
        record.metrics["omega_from"] = str(partner.path)
        notes.append(f"{record.path}: Omega computed by the report from the joint run {partner.path} "
                     "(the run trained without an upper bound)")
    return notes


def group_runs(records: Sequence[RunRecord]) -> list[Group]:
    """One :class:`Group` per (protocol column, row label) of the runs that are not excluded.

    Groups are sorted by protocol, then method (numbers inside labels compare numerically);
    runs inside a group by seed.  A metric no run of a group reports (e.g. ``omega`` without
    an upper bound) is absent from ``stats``.
    """
    columns = protocol_labels(records)
    buckets: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in (r for r in records if r.excluded is None):
        buckets[(columns[str(record.path)], row_label(record))].append(record)
    groups = []
    order = sorted(buckets, key=lambda key: (natural_key(key[0]), natural_key(key[1])))
    for protocol, method in order:
        runs = sorted(buckets[(protocol, method)], key=lambda r: (natural_key(str(run_seed(r))), str(r.path)))
        stats = {}
        for key in METRICS:
            pairs = [(v, run_seed(r)) for r in runs if (v := _value(r, key)) is not None]
            if pairs:
                stats[key] = summarise([v for v, _ in pairs], [s for _, s in pairs])
        groups.append(Group(protocol=protocol, method=method, runs=runs, stats=stats))
    return groups


def duplicate_seed_warnings(groups: Sequence[Group]) -> list[str]:
    """Warnings for groups that hold two runs with the same seed (not independent samples)."""
    warnings = []
    for group in groups:
        by_seed: dict[str, list[str]] = defaultdict(list)
        for run in group.runs:
            by_seed[str(run_seed(run))].append(str(run.path))
        for seed, paths in by_seed.items():
            if len(paths) > 1:
                warnings.append(
                    f"{group.protocol} / {group.method}: seed {seed} appears in {len(paths)} runs "
                    f"({', '.join(paths)}); all are averaged"
                )
    return warnings


def protocols(groups: Sequence[Group]) -> list[str]:
    """The protocols of ``groups`` in table order."""
    return sorted({g.protocol for g in groups}, key=natural_key)


def methods(groups: Sequence[Group]) -> list[str]:
    """The row labels of ``groups`` in table order."""
    return sorted({g.method for g in groups}, key=natural_key)


def metric_columns(groups: Sequence[Group], protocol: str) -> list[str]:
    """The metrics (keys of ``METRICS``) at least one group of ``protocol`` reports."""
    present = {key for g in groups if g.protocol == protocol for key in g.stats}
    return [key for key in METRICS if key in present]
