"""``REPRODUCIBILITY.md``: published figures against ours, generated from run directories.

For every method: each published figure (protocol, metric, source), our figure on the same
protocol where a run exists (mean ± std over seeds), a verdict, and the command that produced
our runs; then our figures on the mini protocols (20 CIFAR-100 classes, no published
counterpart). Verdicts compare our mean with the published value: ``matches`` within 1 point
(or within our std over seeds), ``within noise`` within twice the combined std (at least 2
points), otherwise ``below`` / ``above``; ``not run`` where we have no run of that protocol.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from dfcil.atomic import write_text
from dfcil.errors import DataError
from dfcil.report.labels import run_precision, run_seed, sessions
from dfcil.report.model import Group, Stat
from dfcil.report.runs import RunRecord
from dfcil.yamlio import safe_load

# The mini protocols (protocol label -> config): small versions of the papers' splits.
MINI_PROTOCOLS = {"cifar100 B0 N=4 (20 classes)": "configs/mini.yaml",
                  "cifar100 B10 N=3 (20 classes)": "configs/mini_b10.yaml"}
METRIC_NAMES = {"last_accuracy": "A_N", "average_incremental_accuracy": "avg. inc.", "omega": "Omega"}


@dataclass(frozen=True)
class Published:
    """One published figure."""

    method: str
    protocol: str
    config: str
    metric: str
    value: float
    source: str
    std: float | None = None
    note: str | None = None
    # a variant of a registered method (e.g. mfgr-lwf): the config overrides that make it, one of
    # them ``method.name=<registered method>``; empty for a registered method itself
    overrides: tuple[str, ...] = ()

    def base_method(self) -> str:
        """The registered method: ``method`` itself, or the one ``overrides`` name."""
        for item in self.overrides:
            key, _, value = item.partition("=")
            if key.strip() == "method.name":
                return value.strip()
        return self.method

    def command(self) -> str:
        """The command of a run of this figure's protocol and method, for a row not yet run."""
        sets = self.overrides or (f"method.name={self.method}",)
        return f"`dfcil run {self.config} " + " ".join(f"--set {item}" for item in sets) + "`"


def load_published(path: Path) -> list[Published]:
    """Read the published-figures YAML (a list of mappings with the fields of :class:`Published`)."""
    try:
        data = safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"cannot read published figures {path}: {' '.join(str(error).split())}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of published figures")
    entries = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("overrides", []), list):
            raise DataError(f"{path}: entry {index + 1}: expected a mapping whose overrides, if any, are a list")
        try:
            entry = Published(**{**item, "overrides": tuple(str(o) for o in item.get("overrides") or ())})
        except TypeError as error:
            raise DataError(f"{path}: entry {index + 1}: {error}") from None
        if entry.overrides and entry.base_method() == entry.method:
            raise DataError(f"{path}: entry {index + 1}: overrides must name the registered method "
                            f"(method.name=...) that {entry.method} is a variant of")
        if entry.metric not in METRIC_NAMES:
            raise DataError(f"{path}: entry {index + 1}: unknown metric {entry.metric!r}")
        entries.append(entry)
    return entries


def verdict(ours: Stat | None, published: Published) -> str:
    """``matches`` / ``within noise`` / ``below`` / ``above`` / ``not run`` (see the module text)."""
    if ours is None:
        return "not run"
    difference = ours.mean - published.value
    spread = ours.std if ours.n > 1 else 0.0
    if abs(difference) <= max(1.0, spread):
        return "matches"
    combined = math.sqrt(spread**2 + (published.std or 0.0) ** 2)
    if abs(difference) <= max(2.0, 2.0 * combined):
        return "within noise"
    return "below" if difference < 0 else "above"


def _cell(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    spread = f" ± {stat.std:.2f}" if stat.n > 1 else ""
    return f"{stat.mean:.2f}{spread} ({stat.n} seed{'s' if stat.n != 1 else ''})"


def _run_command(run: RunRecord) -> str:
    """A run's own command as a user would type it (``dfcil ...``, paths relative to the current
    directory, without runtime-only options), or ``"-"`` when run.json does not say."""
    runs = sessions(run)
    words = str(runs[0].get("command", "")).split() if runs else []
    if not words:
        return "-"
    if words[0].endswith(("__main__.py", "/dfcil", "dfcil")):
        words = ["dfcil", *words[1:]]
    elif words[0].endswith(("python", "python3")) and words[1:3] == ["-m", "dfcil"]:
        words = ["dfcil", *words[3:]]
    kept: list[str] = []
    skip = False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word == "--set" and i + 1 < len(words) and words[i + 1].startswith("runtime."):
            skip = True
            continue
        kept.append(word)
    prefix = f"{Path.cwd()}/"
    return "`" + " ".join(kept).replace(prefix, "") + "`"


def _command(group: Group | None) -> str:
    """The commands that made a group's runs: ``dfcil suite <file>`` for the runs a suite made
    (runs it adopted included), and the first run's own command for runs made without a suite;
    where a group mixes sources, each command names its runs."""
    if group is None or not group.runs:
        return "-"
    by_source: dict[str | None, list[RunRecord]] = {}
    for run in group.runs:
        by_source.setdefault(run.suite_file, []).append(run)
    parts = []
    for suite_file, runs in by_source.items():
        names = ", ".join(run.name for run in runs)
        if suite_file is not None:
            parts.append(f"`dfcil suite {suite_file}` (run{'s' if len(runs) > 1 else ''} {names})")
        elif len(by_source) > 1:
            parts.append(f"{_run_command(runs[0])} (runs {names}, each with its seed)" if len(runs) > 1
                         else f"{_run_command(runs[0])} (run {names})")
        else:
            parts.append(_run_command(runs[0]))
    return "; ".join(parts)


def _precisions(group: Group) -> str:
    """``"fp32 (seeds 1, 2), bf16 (seed 0)"``: the precision each of the group's runs trained in."""
    seeds: dict[str, list[str]] = {}
    for run in group.runs:
        seeds.setdefault(run_precision(run), []).append(str(run_seed(run)))
    return ", ".join(f"{precision} (seed{'s' if len(found) > 1 else ''} {', '.join(found)})"
                     for precision, found in seeds.items())


def _group(groups: list[Group], method: str, protocol: str) -> Group | None:
    for group in groups:
        if group.method == method and group.protocol.split(" [")[0] == protocol:
            return group
    return None


def render_reproducibility(groups: list[Group], published: list[Published], generated_by: str) -> str:
    """The Markdown text of ``REPRODUCIBILITY.md``."""
    from dfcil.methods import METHODS

    methods: list[str] = []
    for name in [p.method for p in published if p.base_method() in METHODS] + [
            g.method for g in groups if g.protocol in MINI_PROTOCOLS and g.method in METHODS]:
        if name not in methods:
            methods.append(name)
    # a variant with a published figure (e.g. mfgr-lwf) gets its own section above
    variants = [g for g in groups if g.protocol in MINI_PROTOCOLS and g.method not in methods]
    lines = [
        "# Reproducibility",
        "",
        f"Generated by `{generated_by}`; do not edit by hand.",
        "Published figures: the papers (see `benchmarks/published.yaml` for the table and source of each).",
        "Ours: the run directories given to `dfcil report`, mean ± std over seeds (where two of them hold a",
        "run of the same method, protocol and seed, the one given first); the precision of each seed's run",
        "(bf16 autocast on a CPU or GPU with native bf16, else fp32) is named. Data caveat: our",
        "CIFAR-100 is the JPEG copy (`../shared/data/cifar100-jpg.tar.gz`), whose pixels differ slightly",
        "from the official release the papers used.",
        "Verdict: `matches` = within 1 point (or our std); `within noise` = within twice the combined",
        "std (at least 2 points); `below` / `above` otherwise; `not run` = no run of that protocol yet.",
        "",
    ]
    for method in methods:
        lines += [f"## {method}", ""]
        entries = [p for p in published if p.method == method]
        if entries:
            lines += ["| protocol | metric | published | source | ours | verdict | our command |",
                      "|---|---|---|---|---|---|---|"]
            for entry in entries:
                group = _group(groups, method, entry.protocol)
                ours = None if group is None else group.stats.get(entry.metric)
                published_cell = f"{entry.value:.2f}" + (f" ± {entry.std:.2f}" if entry.std else "")
                why = f" ({entry.note})" if entry.note else ""
                command = _command(group) if group else entry.command()
                lines.append(f"| {entry.protocol} | {METRIC_NAMES[entry.metric]} | {published_cell} | {entry.source} | "
                             f"{_cell(ours)} | {verdict(ours, entry)}{why} | {command} |")
            lines.append("")
        else:
            lines += ["No published figure of this method on our protocols.", ""]
        for protocol, config in MINI_PROTOCOLS.items():
            mini = _group(groups, method, protocol)
            if mini is not None:
                lines += [f"Mini protocol (`{config}`, {protocol}; no published counterpart): "
                          + ", ".join(f"{METRIC_NAMES[k]} {_cell(mini.stats.get(k))}" for k in METRIC_NAMES
                                      if mini.stats.get(k) is not None)
                          + f". Precision: {_precisions(mini)}. Command: {_command(mini)}.", ""]
    if variants:
        lines += ["## Variants and ablations on the mini protocols", "",
                  "| run | protocol | A_N | avg. inc. | Omega | precision | command |", "|---|---|---|---|---|---|---|"]
        for group in variants:
            lines.append(f"| {group.method} | {group.protocol} | {_cell(group.stats.get('last_accuracy'))} | "
                         f"{_cell(group.stats.get('average_incremental_accuracy'))} | {_cell(group.stats.get('omega'))} | "
                         f"{_precisions(group)} | {_command(group)} |")
        lines.append("")
    return "\n".join(lines)


def write_reproducibility(groups: list[Group], published_file: Path, path: Path) -> None:
    """Write ``path`` (atomically) from the report's groups and the published figures."""
    text = render_reproducibility(groups, load_published(published_file), " ".join(["dfcil", *sys.argv[1:]]))
    write_text(path, text)
