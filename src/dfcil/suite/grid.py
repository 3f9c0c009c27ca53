"""A suite file parsed into its grid of runs (see :mod:`dfcil.suite` for the format)."""

from __future__ import annotations

import fnmatch
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfcil.config import apply_overrides, fingerprint, load_yaml_tree
from dfcil.errors import ConfigError
from dfcil.experiment import Experiment, parse_experiment
from dfcil.first_task import first_task_identity
from dfcil.yamlio import load_file


@dataclass(frozen=True)
class SuiteRun:
    """One point of a suite's grid."""

    name: str  # run directory name
    labels: dict[str, str]  # axis -> label
    config: Path
    overrides: tuple[str, ...]
    experiment: Experiment = field(compare=False, repr=False)  # config + overrides, resolved

    def fingerprint(self) -> str:
        """The fingerprint of this run's resolved config (what is trained, not ``runtime``)."""
        return fingerprint(self.experiment.config)

    def first_task_key(self) -> str:
        """What determines this run's first task (:func:`dfcil.first_task.first_task_identity`),
        as a string: runs with equal keys train the same first task."""
        return json.dumps(first_task_identity(self.experiment, self.experiment.first_task_classes()), sort_keys=True)

    @property
    def is_joint(self) -> bool:
        """Whether this run is the offline upper bound (its method says so: ``Method.upper_bound``)."""
        return self.experiment.method.upper_bound


@dataclass
class Suite:
    """A parsed suite file."""

    name: str
    path: Path
    runs: list[SuiteRun] = field(default_factory=list)
    all_joint_runs: list[SuiteRun] | None = None  # of the whole grid, when ``runs`` is a selection

    @property
    def joint_runs(self) -> list[SuiteRun]:
        """The grid's joint runs (partners for Omega), also those a selection left out."""
        if self.all_joint_runs is not None:
            return self.all_joint_runs
        return [run for run in self.runs if run.is_joint]


def _format(value: Any) -> str:
    if isinstance(value, (list, dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def _points(axis: str, spec: Any, origin: Path) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{origin}: axis '{axis}' has no values")
        return [(_format(value), {axis: value}) for value in spec]
    if isinstance(spec, dict):
        if not spec:
            raise ConfigError(f"{origin}: axis '{axis}' has no points")
        points = []
        for label, overrides in spec.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"{origin}: axis '{axis}', point '{label}': expected a mapping KEY: VALUE")
            points.append((str(label), overrides))
        return points
    raise ConfigError(f"{origin}: axis '{axis}' must be a list of values or a mapping label -> overrides")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in label)


def load_suite(path: Path) -> Suite:
    """Parse and validate a suite file: every run's config is resolved and checked now, so a
    typo fails before the first run starts."""
    path = Path(path)
    data = load_file(path, "suite")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite is a mapping with name, config, axes")
    unknown = sorted(set(data) - {"name", "config", "set", "axes"})
    if unknown:
        raise ConfigError(f"{path}: unknown suite key '{unknown[0]}' (expected name, config, set, axes)")
    if "config" not in data or not isinstance(data.get("axes"), dict) or not data["axes"]:
        raise ConfigError(f"{path}: a suite needs 'config' (a config file) and 'axes' (at least one)")
    shared = data.get("set") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: 'set' must be a mapping KEY: VALUE")
    axes = [(axis, _points(axis, spec, path)) for axis, spec in data["axes"].items()]
    suite = Suite(str(data.get("name") or path.stem), path)
    seen: set[str] = set()
    used_shared: set[str] = set()
    for combination in itertools.product(*[points for _, points in axes]):
        labels = {axis: label for (axis, _), (label, _) in zip(axes, combination)}
        merged: dict[str, Any] = {}
        for _, point in combination:
            merged.update(point)
        config = path.parent / str(merged.pop("config", data["config"]))
        name = "__".join(f"{_safe(axis)}-{_safe(label)}" for axis, label in labels.items())
        if name in seen:
            raise ConfigError(f"{path}: two points give the same run name {name}")
        seen.add(name)
        overrides = tuple(f"{key}={_format(value)}" for key, value in merged.items())
        raw = load_yaml_tree(config)
        method = apply_overrides(raw, list(overrides)).get("method", {}).get("name")
        # shared overrides apply to the runs whose method accepts them (e.g. generator steps)
        for key, value in shared.items():
            candidate = apply_overrides(raw, [*overrides, f"{key}={_format(value)}"])
            try:
                parse_experiment(candidate)
            except ConfigError:
                if key.startswith("method."):
                    continue
                raise
            overrides += (f"{key}={_format(value)}",)
            used_shared.add(key)
        try:
            experiment = parse_experiment(apply_overrides(raw, list(overrides)))
        except ConfigError as error:
            raise ConfigError(f"{path}: run {name} ({method}): {error}") from None
        suite.runs.append(SuiteRun(name, labels, config.resolve(), overrides, experiment))
    unused = sorted(set(shared) - used_shared)
    if unused:
        raise ConfigError(f"{path}: set: '{unused[0]}' is accepted by none of the suite's runs")
    return suite


def select_runs(suite: Suite, patterns: list[str]) -> Suite:
    """``suite`` restricted to the runs whose name matches one of the shell-style ``patterns``
    (``method-rdfcil__*``, ``*__seed-[01]``); all of them when ``patterns`` is empty. A pattern
    that matches no run is an error (a typo would otherwise run nothing, silently)."""
    if not patterns:
        return suite
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(run.name, pattern) for run in suite.runs):
            raise ConfigError(f"--only {pattern}: matches none of the suite's runs (e.g. {suite.runs[0].name})")
    kept = [run for run in suite.runs if any(fnmatch.fnmatchcase(run.name, p) for p in patterns)]
    return Suite(suite.name, suite.path, kept, all_joint_runs=suite.joint_runs)

