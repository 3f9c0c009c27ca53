"""``build_report``: runs -> aggregates -> tables, plots and the HTML page."""

from __future__ import annotations

import re
from pathlib import Path

from dfcil.atomic import write_json
from dfcil.errors import DataError
from dfcil.report import plots
from dfcil.report.aggregate import duplicate_seed_warnings, exclude_superseded, group_runs, omega_from_joint, protocols
from dfcil.report.domain_gap import (
    TSNE_MISSING,
    DomainGaps,
    plot_domain_gap,
    run_domain_gaps,
    tsne_available,
    with_tsne_maps,
)
from dfcil.report.html import write_html
from dfcil.report.labels import protocol_labels, row_label, run_seed
from dfcil.report.model import Report
from dfcil.report.reproducibility import write_reproducibility
from dfcil.report.runs import RunRecord, find_runs
from dfcil.report.tables import write_tables

PLOTS_DIR = "plots"


def slugify(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def unique_slugs(records: list[RunRecord]) -> dict[str, str]:
    """Map each run's path to a distinct slug: its directory name, extended with parent
    folders (then a counter) where two runs share a name."""
    slugs: dict[str, str] = {}
    taken: set[str] = set()
    for record in records:
        parts = record.path.parts
        depth, slug = 1, slugify(record.name)
        while slug in taken and depth < len(parts):
            depth += 1
            slug = slugify("-".join(parts[-depth:]))
        base, count = slug, 2
        while slug in taken:
            slug, count = f"{base}-{count}", count + 1
        taken.add(slug)
        slugs[str(record.path)] = slug
    return slugs


def make_plots(report: Report, out_dir: Path, with_tsne: bool | None = None, jobs: int = 1) -> None:
    """Draw every plot into ``out_dir/plots`` and record their relative paths in ``report``.

    ``with_tsne``: draw the domain gaps' t-SNE maps (default: when scikit-learn is installed;
    without it the report says so in one warning and keeps the MID / MMD figures). ``jobs``: how
    many t-SNE maps are computed at once, in separate processes (they are most of a report's
    time: a few seconds of CPU each, one per task of every run that kept synthetic samples)."""
    plot_dir = Path(out_dir) / PLOTS_DIR
    if with_tsne is None:
        with_tsne = tsne_available()
    if not report.run_slugs:
        report.run_slugs = unique_slugs(report.runs)
    for index, protocol in enumerate(protocols(report.groups)):
        name = f"curve-{index + 1:02d}-{slugify(protocol)}.png"
        plots.accuracy_curve(protocol, report.groups, plot_dir / name)
        report.protocol_plots[protocol] = f"{PLOTS_DIR}/{name}"
    columns = protocol_labels(report.runs)
    drawers = {"matrix": plots.accuracy_matrix, "old_new": plots.old_new, "synthesis": plots.synthesis_page}
    titles = {}
    for record in report.runs:
        key, slug = str(record.path), report.run_slugs[str(record.path)]
        titles[key] = f"{record.name} ({row_label(record)}, seed {run_seed(record)}, {columns[key]})"
        for kind, draw in drawers.items():
            name = f"run-{slug}-{kind}.png"
            if draw(record, titles[key], plot_dir / name) is not None:
                report.run_plots.setdefault(key, {})[kind] = f"{PLOTS_DIR}/{name}"
    gaps = {str(record.path): run_domain_gaps(record.path, record.config, with_tsne=False) for record in report.runs}
    if with_tsne:
        with_tsne_maps(list(gaps.values()), jobs)
    for record in report.runs:
        add_domain_gaps(report, record, gaps[str(record.path)], titles[str(record.path)], plot_dir)
    if report.domain_gaps and not with_tsne:
        report.warnings.append(TSNE_MISSING)


def add_domain_gaps(report: Report, record: RunRecord, result: DomainGaps, title: str, plot_dir: Path) -> None:
    """Record the MID / MMD figures of a run that kept synthetic samples (``result``, from
    :func:`run_domain_gaps`) and draw the t-SNE plots of the tasks that have a map; tasks without
    features get one warning line (and a note in the run's section) saying why."""
    key, slug = str(record.path), report.run_slugs[str(record.path)]
    for gap in result.gaps:
        if gap.embedding is None:
            continue
        name = f"run-{slug}-domain_task{gap.task}.png"
        plot_domain_gap(gap, title, plot_dir / name)
        report.run_plots.setdefault(key, {})[f"domain_task{gap.task}"] = f"{PLOTS_DIR}/{name}"
    if result.gaps:
        report.domain_gaps[key] = [gap.to_dict() for gap in result.gaps]
    line = result.unavailable_line()
    if line is not None:
        report.domain_gap_notes[key] = line
        report.warnings.append(f"{record.name}: domain gap unavailable for {line}")


#: what a report writes into its folder; a folder holding anything else is not replaced
REPORT_FILES = frozenset({"report.md", "report.csv", "report.json", "index.html", "domain_gap.json", PLOTS_DIR})


def check_report_folder(out_dir: Path) -> None:
    """Refuse (``DataError``, one line) an output that is a file, or a folder holding files that a
    report does not write (the user's own, which rewriting the report there would mix with or
    overwrite); a folder holding an earlier report is rewritten."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"-o {out_dir} is a file; give a folder for the report")
    if not out_dir.is_dir():
        return
    foreign = sorted(entry.name for entry in out_dir.iterdir() if entry.name not in REPORT_FILES)
    plot_dir = out_dir / PLOTS_DIR
    if plot_dir.is_dir():
        foreign += sorted(f"{PLOTS_DIR}/{e.name}" for e in plot_dir.iterdir() if e.suffix != ".png" or not e.is_file())
    elif plot_dir.exists():
        foreign.append(PLOTS_DIR)
    if foreign:
        raise DataError(f"-o {out_dir} holds files a report does not write ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}): choose a new or empty folder")


def build_report(paths: list[Path], out_dir: Path, published: Path | None = None,
                 reproducibility: Path | None = None, jobs: int = 1) -> Path:
    """Aggregate the run directories under ``paths`` into ``out_dir``; return ``index.html``.

    Writes ``report.md``, ``report.csv``, ``report.json``, ``plots/*.png`` and ``index.html``.
    Incomplete runs are listed but left out of the means, and so are runs superseded by a run
    of the same method, protocol and seed under a path given earlier.  A run without Omega (trained
    without an upper bound) gets it from the joint run of its protocol and seed among the runs, if
    there is one (:func:`omega_from_joint`, named in the warnings).  Raises ``DataError`` when no run
    directory is found or a file is damaged. ``jobs``: t-SNE maps computed at once (see
    :func:`make_plots`); the report is the same for any value.
    """
    if jobs < 1:
        raise DataError(f"--jobs must be at least 1, not {jobs}")
    out_dir = Path(out_dir)
    check_report_folder(out_dir)
    records = find_runs([Path(p) for p in paths])
    if not records:
        raise DataError(f"no run directory (metrics.json + config.yaml) under {', '.join(map(str, paths))}")
    exclude_superseded(records)
    omega_notes = omega_from_joint(records)
    groups = group_runs(records)
    report = Report(
        groups=groups,
        runs=records,
        excluded=[r for r in records if r.excluded is not None],
        warnings=duplicate_seed_warnings(groups) + omega_notes,
        run_slugs=unique_slugs(records),
    )
    if reproducibility is not None and published is None:
        raise DataError("--reproducibility needs --published (the published figures, e.g. benchmarks/published.yaml)")
    out_dir.mkdir(parents=True, exist_ok=True)
    make_plots(report, out_dir, jobs=jobs)  # first: its warnings (domain gaps) belong in the tables too
    write_tables(report.groups, out_dir, report.excluded, report.warnings)
    if reproducibility is not None and published is not None:
        write_reproducibility(groups, published, reproducibility)
    if report.domain_gaps:
        write_json(out_dir / "domain_gap.json", {path: gaps for path, gaps in report.domain_gaps.items()})
    return write_html(report, out_dir)
