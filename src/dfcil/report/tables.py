"""Paper-style tables of a report: ``report.md``, ``report.csv`` (long format), ``report.json``.

Each table names its sources: the run directories behind every number, with the commit
``run.json`` recorded for them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dfcil.atomic import write_json, write_text
from dfcil.report.aggregate import methods, metric_columns, protocols
from dfcil.report.labels import commit_label, run_seed
from dfcil.report.model import METRICS, Group, Stat
from dfcil.report.runs import RunRecord

CSV_COLUMNS = ("protocol", "method", "metric", "mean", "std", "n", "seeds", "runs")


def format_cell(stat: Stat | None) -> str:
    """``"48.50 ± 1.20 (3)"``; the deviation reads ``-`` for one seed, a missing cell ``n/a``."""
    if stat is None:
        return "n/a"
    std = f"{stat.std:.2f}" if stat.n > 1 else "-"
    return f"{stat.mean:.2f} ± {std} ({stat.n})"


def find_group(groups: Sequence[Group], protocol: str, method: str) -> Group | None:
    """The group of (``protocol``, ``method``), or ``None``."""
    for group in groups:
        if group.protocol == protocol and group.method == method:
            return group
    return None


def source_rows(groups: Sequence[Group]) -> list[dict[str, str]]:
    """One row per run behind the tables: protocol, method, seed, run directory, commit."""
    return [
        {"protocol": g.protocol, "method": g.method, "seed": str(run_seed(r)), "run": str(r.path),
         "commit": commit_label(r)}
        for g in groups
        for r in g.runs
    ]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(groups: Sequence[Group], excluded: Sequence[RunRecord] = (), warnings: Sequence[str] = ()) -> str:
    """The Markdown report: results table, metric legend, sources, excluded runs, warnings."""
    header, cells = ["method"], []
    for protocol in protocols(groups):
        header += [f"{protocol}: {METRICS[key][0]}" for key in metric_columns(groups, protocol)]
    for method in methods(groups):
        row = [method]
        for protocol in protocols(groups):
            group = find_group(groups, protocol, method)
            row += [format_cell(group.stats.get(key) if group else None) for key in metric_columns(groups, protocol)]
        cells.append(row)
    lines = ["# dfcil report", "", "## Results", "",
             "Cells: mean ± sample standard deviation over seeds (number of seeds); `-`: a single seed.", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in cells]
    lines += ["", *(f"- {name}: {text}" for name, text in METRICS.values()), "", "## Sources", "",
              "| protocol | method | seed | run directory | commit |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_md_escape(s[k]) for k in ("protocol", "method", "seed", "run", "commit")) + " |"
              for s in source_rows(groups)]
    if excluded:
        lines += ["", "## Excluded runs (not in the means)", ""]
        lines += [f"- `{r.path}`: {r.excluded}" for r in excluded]
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in warnings)]
    return "\n".join(lines) + "\n"


def csv_text(groups: Sequence[Group]) -> str:
    """Long-format CSV: one row per (protocol, method, metric)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for group in groups:
        runs = ";".join(f"{r.path}@{commit_label(r)}" for r in group.runs)
        for key, stat in group.stats.items():
            writer.writerow([group.protocol, group.method, key, repr(stat.mean), repr(stat.std), stat.n,
                             ";".join(str(s) for s in stat.seeds), runs])
    return buffer.getvalue()


def json_tree(
    groups: Sequence[Group], excluded: Sequence[RunRecord] = (), warnings: Sequence[str] = ()
) -> dict[str, Any]:
    """The JSON form of the tables (metric legend, groups with their runs, exclusions)."""
    return {
        "metrics": {key: {"column": col, "description": text} for key, (col, text) in METRICS.items()},
        "protocols": protocols(groups),
        "methods": methods(groups),
        "groups": [
            {
                "protocol": g.protocol,
                "method": g.method,
                "stats": {k: {"mean": s.mean, "std": s.std, "n": s.n, "seeds": list(s.seeds)}
                          for k, s in g.stats.items()},
                "runs": [{"path": str(r.path), "seed": run_seed(r), "commit": commit_label(r)} for r in g.runs],
            }
            for g in groups
        ],
        "excluded": [{"path": str(r.path), "reason": r.excluded} for r in excluded],
        "warnings": list(warnings),
    }


def write_tables(
    groups: Sequence[Group], out_dir: Path, excluded: Sequence[RunRecord] = (), warnings: Sequence[str] = ()
) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and ``report.json`` into ``out_dir`` (atomically).

    Returns ``{"md": path, "csv": path, "json": path}``.
    """
    out_dir = Path(out_dir)
    paths = {"md": out_dir / "report.md", "csv": out_dir / "report.csv", "json": out_dir / "report.json"}
    write_text(paths["md"], markdown(groups, excluded, warnings))
    write_text(paths["csv"], csv_text(groups))
    write_json(paths["json"], json_tree(groups, excluded, warnings))
    return paths
