"""The report as one static, self-contained HTML page (inline CSS, no scripts, relative images)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from dfcil.atomic import write_text
from dfcil.report.aggregate import methods, metric_columns, protocols
from dfcil.report.labels import commit_label, machine_label, protocol_labels, row_label, run_seed, sessions
from dfcil.report.model import METRICS, Report
from dfcil.report.runs import RunRecord
from dfcil.report.tables import find_group, format_cell, source_rows

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1, h2, h3 { color: #123; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
th { background: #eef2f6; }
th:first-child, table.facts td:first-child { white-space: nowrap; overflow-wrap: normal; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0.5em 0; max-width: calc(50% - 0.5em); }
figure.wide { max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
section.run { border-top: 1px solid #ccc; margin-top: 1.5em; }
.warn { color: #a40; }
.muted { color: #666; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<table{attribute}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def _img(src: str, caption: str, wide: bool = False) -> str:
    attribute = ' class="wide"' if wide else ""
    return (f'<figure{attribute}><img src="{_e(quote(src))}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>\n")


def results_table(report: Report) -> str:
    """The results as an HTML table: a column group (``colspan``) per protocol."""
    groups = report.groups
    columns = {p: metric_columns(groups, p) for p in protocols(groups)}
    top = '<tr><th rowspan="2">method</th>' + "".join(
        f'<th colspan="{len(cols)}">{_e(p)}</th>' for p, cols in columns.items()) + "</tr>\n"
    sub = "<tr>" + "".join(f'<th title="{_e(METRICS[k][1])}">{_e(METRICS[k][0])}</th>'
                           for cols in columns.values() for k in cols) + "</tr>\n"
    body = ""
    for method in methods(groups):
        cells = ""
        for protocol, cols in columns.items():
            group = find_group(groups, protocol, method)
            cells += "".join(f'<td class="num">{_e(format_cell(group.stats.get(k) if group else None))}</td>'
                             for k in cols)
        body += f"<tr><th>{_e(method)}</th>{cells}</tr>\n"
    legend = "".join(f"<li><b>{_e(col)}</b>: {_e(text)}</li>" for col, text in METRICS.values())
    return (f'<table class="results">\n<thead>\n{top}{sub}</thead>\n<tbody>\n{body}</tbody>\n</table>\n'
            f'<p class="muted">Cells: mean ± sample standard deviation over seeds (number of seeds); '
            f"“-”: a single seed.</p>\n<ul>{legend}</ul>\n")


def _session_facts(session: dict[str, object]) -> list[tuple[str, str]]:
    facts = [(key, str(session[key])) for key in ("started", "command", "commit") if session.get(key)]
    if session.get("machine"):
        facts.append(("machine", machine_label(session["machine"])))
    facts += [(key, str(session[key])) for key in ("device", "precision", "data", "dfcil", "resumed_from")
              if session.get(key) is not None]
    return facts


def _run_section(report: Report, record: RunRecord, protocol: str) -> str:
    key = str(record.path)
    slug = report.run_slugs.get(key, record.name)
    status = "used in the tables" if record.excluded is None else f"excluded: {record.excluded}"
    facts = [
        ("directory", str(record.path)),
        ("protocol", protocol),
        ("row", row_label(record)),
        ("seed", str(run_seed(record))),
        ("status", status),
        ("commit", commit_label(record)),
    ]
    if record.suite_labels:
        facts.append(("suite", f"{record.suite_name or ''} "
                               + ", ".join(f"{k}={v}" for k, v in record.suite_labels.items())))
    if record.adopted_from:
        facts.append(("adopted from", record.adopted_from))
    if record.run_info and record.run_info.get("fingerprint"):
        facts.append(("fingerprint", str(record.run_info["fingerprint"])))
    if isinstance(record.metrics.get("wall_time_s"), (int, float)):
        facts.append(("wall time", f"{record.metrics['wall_time_s']:.0f} s"))
    out = [f'<section class="run" id="{_e(slug)}">\n<h3>{_e(record.name)}</h3>\n',
           _table(("field", "value"), facts, "facts")]
    for number, session in enumerate(sessions(record), start=1):
        out.append(f"<h4>Session {number} (run.json)</h4>\n")
        out.append(_table(("field", "value"), _session_facts(session), "facts"))
    if not sessions(record):
        out.append('<p class="muted">No run.json: provenance unknown.</p>\n')
    gaps = report.domain_gaps.get(key)
    if gaps:
        out.append("<h4>Domain gap: real vs synthetic features of the old classes (model after the task)</h4>\n")
        out.append(_table(("task", "MID real old vs synthetic", "MID real old vs real new",
                           "MMD² real old vs synthetic", "MMD² real old vs real new"),
                          [(str(g["task"]), str(g["mid_real_old_vs_synthetic"]), str(g["mid_real_old_vs_real_new"]),
                            str(g["mmd_real_old_vs_synthetic"]), str(g["mmd_real_old_vs_real_new"])) for g in gaps]))
    note = report.domain_gap_notes.get(key)
    if note:
        out.append(f'<p class="muted">Domain gap unavailable for {_e(note)}</p>\n')
    out.append('<div class="plots">\n')
    captions = {"matrix": "accuracy matrix", "old_new": "old vs new accuracy", "synthesis": "synthetic samples",
                **{f"domain_task{g['task']}": f"t-SNE of real and synthetic features, task {g['task']}" for g in gaps or []}}
    for kind, src in report.run_plots.get(key, {}).items():
        out.append(_img(src, f"{record.name}: {captions.get(kind, kind)}", wide=kind == "synthesis"))
    out.append("</div>\n</section>\n")
    return "".join(out)


def render(report: Report) -> str:
    """The HTML text of ``report``."""
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<title>dfcil report</title>\n<style>", CSS, "</style>\n</head>\n<body>\n",
        "<h1>dfcil report</h1>\n",
        f"<p>{len(report.runs)} run directories: {len(report.runs) - len(report.excluded)} in the tables, "
        f"{len(report.excluded)} excluded. Tables: "
        '<a href="report.md">report.md</a>, <a href="report.csv">report.csv</a>, '
        '<a href="report.json">report.json</a>.</p>\n',
        "<h2>Results</h2>\n",
        results_table(report) if report.groups else "<p>No complete runs.</p>\n",
        "<h2>Sources</h2>\n<p>The run directories behind every number, with the commit recorded in run.json.</p>\n",
        _table(("protocol", "method", "seed", "run directory", "commit"),
               ((s["protocol"], s["method"], s["seed"], s["run"], s["commit"]) for s in source_rows(report.groups))),
    ]
    if report.warnings:
        parts.append("<h2>Warnings</h2>\n<ul>" + "".join(f'<li class="warn">{_e(w)}</li>' for w in report.warnings)
                     + "</ul>\n")
    parts.append("<h2>Accuracy on all seen classes</h2>\n")
    parts.extend(_img(src, protocol, wide=True) for protocol, src in report.protocol_plots.items())
    parts.append('<h2 id="incomplete">Incomplete and excluded runs</h2>\n')
    if report.excluded:
        parts.append(_table(("run directory", "reason", "commit"),
                            ((str(r.path), r.excluded or "", commit_label(r)) for r in report.excluded)))
    else:
        parts.append("<p>None.</p>\n")
    parts.append("<h2>Runs</h2>\n")
    columns = protocol_labels(report.runs)
    parts.extend(_run_section(report, r, columns[str(r.path)]) for r in report.runs)
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def write_html(report: Report, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` (atomically) and return its path."""
    path = Path(out_dir) / "index.html"
    write_text(path, render(report))
    return path
