"""The deployed-model workflow on real images: 20 CIFAR-100 classes taught in 4 steps of 5.

Writes the mini protocol's classes (the first 20 of the ABD seed-0 order, all 500 train / 100
test images each) as four image folders ``step<k>/{train,test}/<class>/*.png`` (lossless copies
of the decoded JPEG copy of CIFAR-100), then runs::

    dfcil learn --data step1 -o model.safetensors [--set ...]
    dfcil learn --data step<k> --from model.safetensors [--method M] [--set ...]   # k = 2, 3, 4
    dfcil evaluate model.safetensors --data test-all-so-far                      # after every step

and writes a Markdown table (accuracy on all classes so far, on each step's classes, held-out
accuracy of the step, seconds) to ``benchmarks/results/workflow/<method>.md`` plus the JSON of
every evaluation. Usage::

    DFCIL_DATA=../shared/data python benchmarks/workflow_demo.py [--method rdfcil] \\
        [--set method.synthesis.steps=300 --set method.refine_epochs=5] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dfcil.atomic import write_json, write_text
from dfcil.console import console_logging
from dfcil.data import default_cache_dir, load_dataset, resolve_data_root
from dfcil.run import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "workflow"


def mini_classes() -> list[int]:
    """The first 20 classes of the ABD seed-0 order (the cifar100-mini protocol's)."""
    order = list(range(100))
    random.Random(0).shuffle(order)
    return order[:20]


def export(work: Path) -> list[list[str]]:
    """Write the 4 step folders and return the class names of each step."""
    dataset = load_dataset("cifar100", resolve_data_root(None), default_cache_dir(), progress=False)
    classes = mini_classes()
    steps = []
    for k in range(4):
        names = []
        for c in classes[5 * k : 5 * k + 5]:
            name = dataset.class_names[c]
            names.append(name)
            for split in ("train", "test"):
                arrays = getattr(dataset, split)
                folder = work / f"step{k + 1}" / split / name
                if folder.exists():
                    continue
                folder.mkdir(parents=True)
                for i in np.nonzero(arrays.labels == c)[0]:
                    Image.fromarray(arrays.images[i]).save(folder / f"{i}.png")
        steps.append(names)
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="rdfcil")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "workflow")
    args = parser.parse_args()
    work = args.work / args.method
    work.mkdir(parents=True, exist_ok=True)
    steps = export(args.work)
    model = work / "model.safetensors"
    for old in work.glob("model*.safetensors"):
        old.unlink()
    sets = [a for item in args.overrides for a in ("--set", item)]
    rows, evaluations = [], []
    for k, names in enumerate(steps, start=1):
        command = [sys.executable, "-m", "dfcil", "learn", "--data", str(args.work / f"step{k}"), "-o", str(model),
                   "--no-progress", *sets]
        if k > 1:
            command += ["--from", str(model), "--method", args.method]
        print("+", " ".join(command), flush=True)
        start = time.perf_counter()
        learned = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        seconds = time.perf_counter() - start
        seen = args.work / f"seen{k}"
        seen.mkdir(exist_ok=True)
        for j in range(1, k + 1):
            for folder in (args.work / f"step{j}" / "test").iterdir():
                link = seen / folder.name
                if not link.exists():
                    link.symlink_to(folder.resolve(), target_is_directory=True)
        out = work / f"evaluation-step{k}"
        subprocess.run([sys.executable, "-m", "dfcil", "evaluate", str(model), "--data", str(seen), "--out", str(out)],
                       check=True, capture_output=True)
        evaluation = json.loads((out / "evaluation.json").read_text())
        evaluations.append(evaluation)
        per_step = " / ".join("-" if s["accuracy"] is None else f"{s['accuracy']:.1f}" for s in evaluation["per_step"])
        rows.append(f"| {k} | {', '.join(names)} | {learned['method']} | {learned['held_out_accuracy']:.1f} | "
                    f"{evaluation['accuracy']:.2f} | {per_step} | {seconds / 60:.1f} |")
        print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{args.method}.json", {"evaluations": evaluations, "overrides": args.overrides})
    target = RESULTS / f"{args.method}-confusion-step4.png"
    target.write_bytes((work / "evaluation-step4" / "confusion.png").read_bytes())
    machine = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores"
    text = "\n".join([
        f"# The learn / evaluate workflow: 20 CIFAR-100 classes in 4 steps ({args.method})",
        "",
        f"Produced by `DFCIL_DATA=../shared/data python benchmarks/workflow_demo.py --method {args.method}"
        + "".join(f" --set {o}" for o in args.overrides) + "`",
        f"at commit `{git_commit(ROOT / 'src' / 'dfcil')}` on {machine} (torch CPU). Data: the cifar100-mini classes",
        "(first 20 of the ABD seed-0 order; the JPEG copy of CIFAR-100) written as image folders of 5 classes",
        "with train/ (500 images per class) and test/ (100); each step sees only its own folder.",
        "After each step, `dfcil evaluate` runs on the test images of every class learned so far.",
        "",
        "| step | classes added | method | held-out acc. of the step's classes | accuracy on all classes so far | per step (1 / 2 / ...) | minutes |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Confusion matrix after step 4: [{target.name}]({target.name}); every evaluation: [{args.method}.json]({args.method}.json).",
        "",
    ])
    write_text(RESULTS / f"{args.method}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    with console_logging():  # the library's messages on stderr, as in `dfcil`
        sys.exit(main())
