"""Replay oracle: a data-free method run with real old-class images in place of its synthetic ones.

A diagnostic for the fidelity issue (R-DFCIL below ABD on cifar100-mini, against R-DFCIL's
Table 1, arXiv:2207.09213). Both methods see old classes only through their synthetic images
(R-DFCIL through them alone: hard KD on synthetic images; ABD also distils the real new images'
features through the old classifier). If the inversion comes from synthetic images that are far
from the old classes (300 generator steps instead of 5,000 on mini), it should close or reverse
when both methods get the best synthetic images there can be: the old classes' own training
images. If R-DFCIL stays below ABD with them, the synthetic images' quality is not the cause.

What changes, and nothing else: the method's synthesizer is replaced by :class:`RealReplay`,
which trains no generator and, wherever the method draws a synthetic batch, returns that many
real training images of the old classes, drawn uniformly with replacement from its own seeded
stream, unaugmented and normalised as a generator's images are, labelled as synthetic images
are (the old model's argmax, logits and features). Losses, weights, schedules, the old model,
the first task and the evaluation are the method's own. This breaks the data-free rule on
purpose: it is an upper bound on the synthetic images, never a method of the package.

Each run directory gets ``config.yaml``, ``log.jsonl`` (with one ``replay_oracle`` record per task:
old-class images, the old model's accuracy and confidence on them), ``metrics.json`` and
``oracle.json`` (what was replaced, command, commit, machine). The second and later methods
start from the first one's first task (:mod:`dfcil.first_task`).

Usage::

    DFCIL_DATA=../shared/data python benchmarks/replay_oracle.py abd rdfcil -o RUNS \\
        [--config configs/mini.yaml] [--set method.refine_epochs=5 ...] [--seed 0]
    python benchmarks/budget_curves.py ... (the budget README reads the oracle runs too)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from dfcil.atomic import write_text
from dfcil.config import config_to_dict
from dfcil.console import console_logging
from dfcil.data import default_cache_dir, load_dataset, resolve_data_root
from dfcil.engine.epoch import SplitTensors
from dfcil.engine.trainer import Trainer
from dfcil.errors import DfcilError
from dfcil.experiment import load_experiment
from dfcil.first_task import adopt_first_task
from dfcil.methods.replay import SyntheticReplayMethod
from dfcil.models import IncrementalClassifier
from dfcil.synthesis.synthesizer import SyntheticBatch, label_with_old_model

ROOT = Path(__file__).resolve().parents[1]
#: the suite's mini budget of each method (suites/mini.yaml): the generator steps do not matter here
METHOD_OVERRIDES = {"abd": ["method.name=abd"], "rdfcil": ["method.name=rdfcil", "method.refine_epochs=5"],
                    "deepinversion": ["method.name=deepinversion"]}
#: images the old model is scored on per task (the replay_oracle record)
SCORED = 1024


class RealReplay:
    """Stands in for a method's :class:`~dfcil.synthesis.Synthesizer` with real old-class images.

    ``train`` records how many classes are old (and logs the old model on their images) instead of
    fitting a generator; ``generate`` and ``sample`` return real training images of those classes."""

    def __init__(self, train_data: SplitTensors, normalize: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, autocast: Callable[[], Any], seed: int) -> None:
        self.train_data = train_data
        self.normalize = normalize
        self.device = device
        self.autocast = autocast
        self.rng = torch.Generator().manual_seed(10_000 + seed)  # its own stream: the run's are untouched
        self.old_indices: torch.Tensor | None = None
        self.generator = None  # read by methods that check for a trained generator

    def train(self, old_model: IncrementalClassifier, num_old: int, log: Callable[[dict[str, Any]], None],
              batch_size: int, progress: Callable[[int], None] | None = None) -> dict[str, float]:
        """Select the old classes' training images; log the old model's accuracy and confidence on them."""
        self.old_indices = self.train_data.indices_of(0, num_old)
        scored = self.old_indices[torch.randperm(len(self.old_indices), generator=self.rng)[:SCORED]]
        old_model.eval()
        with torch.no_grad(), self.autocast():
            logits = old_model(self._images(scored)).logits[:, :num_old].float()
        probabilities = logits.softmax(dim=1)
        accuracy = (logits.argmax(dim=1) == self.train_data.labels[scored].to(logits.device)).float().mean()
        record = {"event": "replay_oracle", "old_classes": num_old, "old_images": len(self.old_indices),
                  "old_model_accuracy": round(100 * float(accuracy), 2),
                  "confidence": round(float(probabilities.max(dim=1).values.mean()), 4)}
        log(record)
        return record

    def _images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.train_data.store.gather(indices))

    @torch.no_grad()
    def generate(self, count: int) -> torch.Tensor:
        """``count`` real old-class training images, normalised, unaugmented (as a generator's)."""
        assert self.old_indices is not None, "train() selects the old classes first"
        picks = self.old_indices[torch.randint(len(self.old_indices), (count,), generator=self.rng)]
        return self._images(picks)

    @torch.no_grad()
    def sample(self, old_model: IncrementalClassifier, count: int, num_old: int) -> SyntheticBatch:
        """Real old-class images with the old model's argmax, logits and features (as synthetic ones)."""
        return label_with_old_model(old_model, self.generate(count), num_old, self.autocast)

    def save_grid(self, *args: Any, **kwargs: Any) -> None:
        """No grid: the images are the dataset's."""

    def discard(self) -> None:
        """Forget the old classes (end of task)."""
        self.old_indices = None

    def state_dict(self) -> dict[str, Any] | None:
        """No resumable state: an oracle run is not resumed (it restarts)."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Nothing to load."""


def _provenance(command: list[str]) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"replaced": "the method's synthesizer: real training images of the old classes (RealReplay), no generator",
            "command": " ".join(["python", "benchmarks/replay_oracle.py", *command]),
            "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, "
                       f"{torch.get_num_threads()} torch threads)", "torch": torch.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run_oracle(method: str, config_path: Path, overrides: list[str], run_dir: Path, dataset: Any,
               first_task_from: Path | None, command: list[str]) -> dict[str, Any]:
    """Train ``method`` with :class:`RealReplay` into ``run_dir``; return its metrics."""
    experiment = load_experiment(config_path, [*METHOD_OVERRIDES.get(method, [f"method.name={method}"]), *overrides])
    config = experiment.config
    if not issubclass(experiment.method, SyntheticReplayMethod):
        raise DfcilError(f"{method} has no synthesizer to replace (abd, rdfcil, deepinversion have one)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DfcilError(f"{run_dir} already holds files; choose another -o")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    write_text(run_dir / "oracle.json", json.dumps(_provenance(command), indent=2) + "\n")
    trainer = Trainer(experiment, run_dir, dataset)
    trainer.method.synthesizer = RealReplay(trainer.train_data, trainer.normalizer, trainer.device,  # type: ignore[attr-defined]
                                            trainer.env.autocast, config.seed)
    resume = adopt_first_task(first_task_from, trainer) if first_task_from is not None else None
    return trainer.run(resume=resume)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+", help="data-free methods with a synthesizer (abd, rdfcil, deepinversion)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder of the run directories")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "mini.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        return _run(args, sys.argv[1:] if argv is None else argv)
    except DfcilError as error:  # bad config, method or data: one line, exit 2
        print(f"replay_oracle: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, command: list[str]) -> int:
    overrides = [f"seed={args.seed}", "runtime.progress=false", *args.overrides]
    probe = load_experiment(args.config, overrides).config
    dataset = load_dataset(probe.data.dataset, resolve_data_root(probe.data.root), default_cache_dir(),
                           image_size=probe.data.image_size, progress=False)
    donor: Path | None = None
    for method in args.methods:
        run_dir = args.out / f"seed-{args.seed}__oracle-{method}"
        metrics = run_oracle(method, args.config, overrides, run_dir, dataset, donor, command)
        print(json.dumps({"run": str(run_dir), "last_accuracy": metrics["last_accuracy"]}), flush=True)
        donor = donor or run_dir
    return 0


if __name__ == "__main__":
    with console_logging():  # the library's messages on stderr, as in `dfcil`
        raise SystemExit(main())
