"""Run methods on the cifar100-mini protocol and record their results in the repository.

For each method: ``dfcil run configs/mini.yaml --set method.name=<method>`` into
``runs/mini/<method>-s<seed>`` (resumed if it exists), then copies ``metrics.json``,
``config.yaml``, ``run.json`` and ``log.jsonl`` to ``benchmarks/results/mini/<method>-s<seed>/``
and rewrites the summary table ``benchmarks/results/mini/README.md`` from every result there.
``joint`` runs first when listed, and its accuracies give the others Omega.

Usage::

    DFCIL_DATA=../shared/data python benchmarks/run_mini.py joint finetune lwf [--seed 0]
    DFCIL_DATA=../shared/data python benchmarks/run_mini.py rdfcil --tag no-rkd \
        --set method.synthesis.steps=300 --set method.refine_epochs=5 --set method.relational_kd=false
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from dfcil.atomic import write_text
from dfcil.config import parse_config
from dfcil.rundir import CONFIG_FILE, LOG_FILE, METRICS_FILE, RUN_FILE, RunDir
from dfcil.yamlio import load_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mini"
#: what a committed result keeps of its run directory (no checkpoints)
KEPT_FILES = (METRICS_FILE, CONFIG_FILE, RUN_FILE, LOG_FILE)
MINI_CONFIG = ROOT / "configs" / "mini.yaml"


def variant_name(config: Path) -> str | None:
    """Short name of a variant of the mini protocol (``mini_b10.yaml`` -> ``b10``); None for mini.yaml."""
    stem = config.stem
    if config.resolve() == MINI_CONFIG.resolve():
        return None
    return stem[len("mini_"):] if stem.startswith("mini_") else stem


def config_description(config: Path) -> list[str]:
    """The leading comment block of a config file, without the ``#`` marks."""
    lines = []
    for line in config.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def run_label(method: str, tag: str | None, seed: int) -> str:
    """``<method>[-<tag>]-s<seed>``: the run's directory name and table label."""
    return f"{method}-{tag}-s{seed}" if tag else f"{method}-s{seed}"


def run_method(method: str, seed: int, runs: Path, extra: list[str], tag: str | None = None,
               config: Path = MINI_CONFIG, results: Path = RESULTS) -> Path:
    """Run (or resume) one method of ``config``; return its run directory."""
    run_dir = runs / run_label(method, tag, seed)
    args = [sys.executable, "-m", "dfcil", "run"]
    if RunDir(run_dir).config.exists():
        args += ["--resume", str(run_dir)]
    else:
        args += [str(config), "-o", str(run_dir), "--set", f"method.name={method}",
                 "--set", f"seed={seed}", "--set", "runtime.progress=false",
                 *[arg for item in extra for arg in ("--set", item)]]
    joint = runs / f"joint-s{seed}"
    if not RunDir(joint).metrics.exists():
        joint = results / f"joint-s{seed}"  # the committed joint result of this protocol
    if method != "joint" and RunDir(joint).metrics.exists() and "--resume" not in args:
        args += ["--set", f"runtime.upper_bound={joint}"]
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)
    return run_dir


def overrides(command: str) -> str:
    """The ``--set`` overrides of a run's command, except method name, seed and runtime keys."""
    words = command.split()
    items = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]
    kept = [item for item in items if not item.startswith(("method.name=", "seed=", "runtime."))]
    return "<br>".join(f"`{item}`" for item in kept) or "-"


def network_label(run_dir: Path) -> str:
    """The network a run trained, e.g. ``resnet32/rdfcil r2``: its key and the revision its
    ``run.json`` fingerprint records (``r?`` when that cannot be told; ``-`` without a config)."""
    folder = RunDir(run_dir)
    if not folder.config.is_file():
        return "-"
    model = parse_config(load_file(folder.config)).model
    trained = folder.trained_network_revision()
    return f"{model.network_key} r{'?' if trained is None else trained}"


def summarize(results: Path = RESULTS, config: Path = MINI_CONFIG) -> str:
    """Markdown table of every result under ``results`` (default ``benchmarks/results/mini``)."""
    rows = []
    for metrics_file in sorted(results.glob(f"*/{METRICS_FILE}")):
        metrics = json.loads(metrics_file.read_text())
        run = json.loads(RunDir(metrics_file.parent).run_info.read_text())
        session = run["sessions"][0]  # the command with the overrides (later sessions: --resume)
        commits = " + ".join(dict.fromkeys(f"`{(s['commit'] or '?')[:12]}`" for s in run["sessions"]))
        steps = " / ".join(f"{a:.1f}" for a in metrics["accuracy_per_step"])
        omega = f"{metrics['omega']:.1f}" if "omega" in metrics else "-"
        forgetting = "-" if metrics["forgetting"] is None else f"{metrics['forgetting']:.1f}"
        rows.append(
            f"| {metrics_file.parent.name.rsplit('-s', 1)[0]} | {metrics['seed']} | {network_label(metrics_file.parent)} | "
            f"{overrides(session['command'])} | {metrics['last_accuracy']:.2f} | "
            f"{metrics['average_incremental_accuracy']:.2f} | {forgetting} | {omega} | {steps} | "
            f"{metrics['wall_time_s'] / 60:.1f} | {commits} |"
        )
    machine = ""
    if rows:
        first = json.loads(next(iter(sorted(results.glob("*/run.json")))).read_text())["sessions"][-1]
        m = first["machine"]
        machine = f"{m['processor']}, {m['cpu_count']} cores, torch {m['torch']}, device {first['device']}"
    table = [
        "| run | seed | network | overrides | A_N (last) | avg. incremental | forgetting | Omega | A_1 / ... / A_N | minutes | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Network: the backbone and the revision of its forward the run trained, read from the fingerprint",
        "its `run.json` recorded (`NETWORK_REVISIONS` in `dfcil.config`): `resnet32/rdfcil r1` kept a ReLU",
        "after every residual addition but the last (30 per forward), `r2` is R-DFCIL's code (16). Rows",
        "of different revisions do not compare; the mini suite's rerun (`benchmarks/results/suites/mini-rev2`) is r2.",
        "",
        "Each directory holds the run's `metrics.json`, `config.yaml`, `run.json` (command, commit,",
        "machine, data) and `log.jsonl` (per-epoch loss terms, lr, accuracy, images/s).",
    ]
    variant = variant_name(config)
    if variant is not None:
        config_name = config.resolve().relative_to(ROOT) if config.resolve().is_relative_to(ROOT) else config
        return "\n".join(
            [
                f"# cifar100-mini, variant `{variant}` results",
                "",
                f"Protocol: `{config_name}`:",
                "",
                *[f"> {line}" for line in config_description(config)],
                "",
                f"Each row was produced by `DFCIL_DATA=../shared/data python benchmarks/run_mini.py --config {config_name}",
                "<method> [--tag <tag>] [--set <override> ...]`, which runs `dfcil run` on that config with",
                "`--set method.name=<method> --set seed=<seed>` plus the overrides listed in the row (the exact",
                "command, commit and machine of every row are in its `run.json`). Data: the JPEG copy of",
                "CIFAR-100 (`../shared/data/cifar100-jpg.tar.gz`). Minutes are wall-clock on this machine.",
                f"Machine: {machine}.",
                "",
                *table,
                "",
            ]
        )
    return "\n".join(
        [
            "# cifar100-mini results",
            "",
            "Protocol: `configs/mini.yaml` (ResNet-32, ABD class order seed 0, first 20 CIFAR-100 classes,",
            "4 tasks of 5, 500/100 images per class, 20 epochs per task). Data: the JPEG copy of CIFAR-100",
            "(`../shared/data/cifar100-jpg.tar.gz`; pixels differ slightly from the official release).",
            "",
            "Each row was produced by `DFCIL_DATA=../shared/data python benchmarks/run_mini.py <method>",
            "[--tag <tag>] [--set <override> ...]`, which runs `dfcil run configs/mini.yaml --set",
            "method.name=<method> --set seed=<seed>` plus the overrides listed in the row (the non-joint runs",
            "also get `--set runtime.upper_bound=<joint run>` for Omega; the exact command, commit and machine",
            "of every row are in its `run.json`; a few rows were run with `dfcil run` itself, e.g. from another",
            "run's first task with `--first-task-from`, and their `run.json` says so). The data-free methods train their generator for 300 steps",
            "per task instead of the papers' 5,000 so that a run fits the ~15-minute CPU budget of this",
            "protocol; R-DFCIL's head refinement runs 5 epochs (its 40 of 160, compressed 8x like the rest).",
            "MFGR's generator trains 200 steps at batch 128 per task (the paper: 60,000 at 512), because its",
            "training step also grows with the old classes (B * n_old / n_new generated images per step).",
            "Minutes are wall-clock and only comparable where the CPU ran nothing else: the abd, mfgr and mfgr-no-div",
            "rows shared it with other jobs for part of their run (see FINDINGS.md).",
            f"Machine: {machine}.",
            "",
            *table,
            "What the table shows and where it differs from the papers: [FINDINGS.md](FINDINGS.md).",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help="methods to run (none: only rewrite the table)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=MINI_CONFIG,
                        help="a variant of the mini protocol (default configs/mini.yaml); results of "
                             "configs/mini_<v>.yaml go to benchmarks/results/mini/<v>/, runs to runs/mini/<v>/")
    parser.add_argument("--runs", type=Path, help="where run directories go (default runs/mini[/<v>])")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra overrides for new runs")
    parser.add_argument("--tag", help="label of a variant (ablation): runs go to <method>-<tag>-s<seed>")
    parser.add_argument("--results", type=Path,
                        help="where results and the summary table go (default benchmarks/results/mini; "
                             "runs that change the protocol itself belong elsewhere)")
    args = parser.parse_args()
    variant = variant_name(args.config)
    results = args.results or (RESULTS if variant is None else RESULTS / variant)
    runs = args.runs or (ROOT / "runs" / "mini" if variant is None else ROOT / "runs" / "mini" / variant)
    methods = sorted(args.methods, key=lambda m: m != "joint")
    for method in methods:
        run_dir = run_method(method, args.seed, runs, args.extra, args.tag, args.config, results)
        target = results / run_label(method, args.tag, args.seed)
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT_FILES:
            shutil.copyfile(run_dir / name, target / name)
    if args.results is None:
        write_text(results / "README.md", summarize(results, args.config))
        print((results / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
