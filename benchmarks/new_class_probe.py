"""Are a task's new classes separable in a run's features? A linear probe against the run's own head.

For each run directory and task t (>= 2), loads the model saved after task t
(``checkpoints/task_t.pt``) and the run's dataset, computes the penultimate features (eval mode)
of the training and test images of task t's own classes, fits a multinomial logistic regression
on the training features (scikit-learn, standardised features) and reports its test accuracy
among those classes, beside the run's own head restricted to the same classes (its task-local
accuracy) and over all seen classes. A probe far above the head means the features separate the
new classes and the head does not use it; a probe near chance (100 / classes) means the features
do not separate them.

    DFCIL_DATA=../shared/data python benchmarks/new_class_probe.py RUN [RUN ...] [--tasks 2 3 4]

Prints a Markdown table; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dfcil.atomic import write_text  # noqa: E402
from dfcil.config import load_yaml_tree  # noqa: E402
from dfcil.engine.gap_features import penultimate_features  # noqa: E402
from dfcil.errors import DfcilError  # noqa: E402
from dfcil.rundir import RunDir  # noqa: E402


def head_accuracy(model: Any, features: np.ndarray, labels: np.ndarray, start: int, stop: int,
                  seen: int) -> tuple[float, float]:
    """The run's head on ``features``: accuracy (%) among classes ``[start, stop)`` and among all
    ``seen`` classes."""
    with torch.no_grad():
        logits = model.classify(torch.from_numpy(features).float())[:, :seen]
    local = logits[:, start:stop].argmax(dim=1).numpy() + start
    overall = logits.argmax(dim=1).numpy()
    return float((local == labels).mean() * 100), float((overall == labels).mean() * 100)


def probe_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """Test accuracy (%) of a multinomial logistic regression fitted on standardised ``train``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train, train_labels)
    return float((probe.predict(test) == test_labels).mean() * 100)


def probe_run(run: Path, tasks: list[int] | None) -> list[dict[str, Any]]:
    """One row per task: the probe's and the head's accuracy on the task's own classes."""
    from dfcil.experiment import parse_experiment
    from dfcil.models import build_classifier

    files = RunDir(run)
    experiment = parse_experiment(load_yaml_tree(files.config))
    parsed = experiment.config
    dataset, scenario = experiment.load_data()
    train_positions = scenario.remap(dataset.train.labels)
    test_positions = scenario.remap(dataset.test.labels)
    rows = []
    for task in tasks or range(2, len(scenario.tasks) + 1):
        path = files.task_model(task)
        if not path.exists():
            continue
        current = scenario.tasks[task - 1]
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = build_classifier(parsed.model, saved["head_sizes"])
        model.load_state_dict(saved["model"])
        model.eval()
        sets = []
        for images, positions in ((dataset.train.images, train_positions), (dataset.test.images, test_positions)):
            index = np.flatnonzero((positions >= current.start) & (positions < current.stop))
            sets.append((penultimate_features(model, images[index], dataset.mean, dataset.std),
                         positions[index].astype(np.int64)))
        (train, train_labels), (test, test_labels) = sets
        local, overall = head_accuracy(model, test, test_labels, current.start, current.stop, current.stop)
        rows.append({"run": run.name, "task": task, "classes": current.num_new,
                     "probe": probe_accuracy(train, train_labels, test, test_labels),
                     "head_local": local, "head_all": overall})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories with checkpoints/task_t.pt")
    parser.add_argument("--tasks", type=int, nargs="*", help="tasks to probe (default: 2..N)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["| run | task | new classes | linear probe (%) | head, among the task's classes (%) | head, all seen (%) |",
             "|---|---|---|---|---|---|"]
    for run in args.runs:
        if not RunDir(run).config.exists():
            print(f"new_class_probe: error: {run} is not a run directory (no config.yaml)", file=sys.stderr)
            return 2
        try:
            rows = probe_run(run, args.tasks)
        except DfcilError as error:  # a bad config or missing data: one line, exit 2
            print(f"new_class_probe: error: {run}: {error}", file=sys.stderr)
            return 2
        for row in rows:
            lines.append(f"| {row['run']} | {row['task']} | {row['classes']} | {row['probe']:.1f} | "
                         f"{row['head_local']:.1f} | {row['head_all']:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
