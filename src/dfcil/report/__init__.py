"""Aggregate run directories into paper-style tables, plots and one static HTML page.

``build_report([Path("runs")], Path("report"))`` finds every run directory under ``runs``,
averages each method's seeds per protocol and writes ``report/index.html`` with
``report.md``, ``report.csv``, ``report.json`` and ``plots/*.png`` beside it.
"""

from __future__ import annotations

from dfcil.report.aggregate import group_runs, omega_from_joint, summarise
from dfcil.report.build import build_report, make_plots
from dfcil.report.html import write_html
from dfcil.report.labels import protocol_label, protocol_labels, row_label, run_seed
from dfcil.report.model import METRICS, Group, Report, Stat
from dfcil.report.runs import RunRecord, find_runs, load_run
from dfcil.report.tables import format_cell, write_tables

__all__ = [
    "METRICS",
    "Group",
    "Report",
    "RunRecord",
    "Stat",
    "build_report",
    "find_runs",
    "format_cell",
    "group_runs",
    "omega_from_joint",
    "load_run",
    "make_plots",
    "protocol_label",
    "protocol_labels",
    "row_label",
    "run_seed",
    "summarise",
    "write_html",
    "write_tables",
]
