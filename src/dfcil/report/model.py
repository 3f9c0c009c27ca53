"""Data types of a report: per-metric statistics, (protocol, method) groups, the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dfcil.report.runs import RunRecord

# metrics.json key -> (short column name, description); the order of the table columns
METRICS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "last_accuracy": ("A_N", "last accuracy: accuracy on all classes after the last task (%)"),
    "average_incremental_accuracy": ("Avg", "average incremental accuracy: mean of the accuracy after each task (%)"),
    "omega": ("Omega", "the accuracy after each task divided by the joint upper bound's, averaged over tasks (%)"),
})


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (0 for one value) of a metric over seeds."""

    mean: float
    std: float
    n: int
    seeds: tuple[int | str | None, ...]


@dataclass
class Group:
    """The complete runs of one method variant (row) under one protocol (column group)."""

    protocol: str
    method: str
    runs: list[RunRecord]
    stats: dict[str, Stat]


@dataclass
class Report:
    """Everything the tables, plots and HTML page show.

    ``protocol_plots`` maps a protocol to its curve plot and ``run_plots`` maps a run's
    path (as a string) to ``{kind: plot}``; plot paths are relative to the output folder.
    ``run_slugs`` maps a run's path to the distinct name its plots and HTML anchor use.
    """

    groups: list[Group]
    runs: list[RunRecord]
    excluded: list[RunRecord]
    warnings: list[str] = field(default_factory=list)
    protocol_plots: dict[str, str] = field(default_factory=dict)
    run_plots: dict[str, dict[str, str]] = field(default_factory=dict)
    run_slugs: dict[str, str] = field(default_factory=dict)
    domain_gaps: dict[str, list[dict[str, object]]] = field(default_factory=dict)  # run path -> per task
    domain_gap_notes: dict[str, str] = field(default_factory=dict)  # run path -> why some tasks have no gap
