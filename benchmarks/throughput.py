"""Training throughput: dfcil's pipeline against a plain per-sample DataLoader pipeline.

Both train the same ResNet-32 (finetune, CE over all 100 CIFAR-100 classes, SGD lr 0.1,
batch 128) in the same process, one after the other:

* ``dfcil``: the engine's own epoch (``Trainer``): uint8 images resident as one tensor,
  index batches, crop + flip + normalise on the device for the whole batch, channels_last,
  bf16 autocast (the shipped defaults).
* ``per-sample DataLoader``: what the reference code bases do - a ``Dataset`` that turns each
  image into a PIL image, pads by 4 and crops, flips, converts to a tensor and normalises one
  sample at a time, batched by ``torch.utils.data.DataLoader``; fp32, NCHW.
* the same per-sample DataLoader feeding the bf16 + channels_last model, to separate the
  data pipeline's share from the compute settings' share.

Also measures evaluation images/second of the engine. Usage::

    DFCIL_DATA=../shared/data python benchmarks/throughput.py [--baseline-images 10000]

Writes ``benchmarks/results/throughput.{json,md}`` (atomically) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dfcil.atomic import write_json, write_text
from dfcil.console import console_logging
from dfcil.data import default_cache_dir, load_dataset, resolve_data_root
from dfcil.engine.evaluate import predict_logits
from dfcil.engine.trainer import Trainer
from dfcil.experiment import load_experiment
from dfcil.methods import Phase
from dfcil.models import IncrementalClassifier, build_backbone
from dfcil.run import git_commit, machine_description

ROOT = Path(__file__).resolve().parents[1]


class PerSampleCifar(torch.utils.data.Dataset):
    """Torchvision-style per-sample pipeline: PIL pad-crop, flip, ToTensor, Normalize."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, seed: int = 0):
        self.images, self.labels = images, labels
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i])
        padded = Image.new("RGB", (40, 40))
        padded.paste(image, (4, 4))
        top, left = self.rng.integers(0, 9, size=2)
        image = padded.crop((left, top, left + 32, top + 32))
        if self.rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        x = (x - self.mean) / self.std
        return torch.from_numpy(x), int(self.labels[i])


def per_sample_run(dataset, limit: int, workers: int, bf16: bool, channels_last: bool, seed: int) -> dict:
    """Images/s of the per-sample DataLoader pipeline over ``limit`` training images."""
    torch.manual_seed(seed)
    model = IncrementalClassifier(build_backbone("resnet32", variant="rdfcil"))
    model.add_head(100)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    data = PerSampleCifar(dataset.train.images, dataset.train.labels, dataset.mean, dataset.std, seed)
    loader = torch.utils.data.DataLoader(
        data, batch_size=128, shuffle=True, num_workers=workers, drop_last=False,
        persistent_workers=False,
    )
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).logits
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
        if seen >= limit:
            break
    seconds = time.perf_counter() - start
    return {"images": seen, "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1)}


def engine_run(config_path: Path, dataset, run_dir: Path, extra: list[str] = (), warmup: bool = False) -> tuple[dict, dict]:
    """One full finetune epoch of the engine over all CIFAR-100 training images, then evaluation."""
    experiment = load_experiment(
        config_path,
        ["scenario.num_tasks=1", "scenario.subset=null", "train.epochs=1", "runtime.progress=false",
         "method.name=finetune", *extra],
    )
    config = experiment.config
    trainer = Trainer(experiment, run_dir, dataset)
    task = trainer.scenario.tasks[0]
    trainer.model.add_head(task.num_new)
    phase = Phase.main(config.train)
    optimizer, _ = trainer.make_optimizer(phase)
    if warmup:  # an untimed epoch first (torch.compile compiles during its first steps)
        trainer.train_epoch(task, phase, 1, optimizer)
    stats = trainer.train_epoch(task, phase, 1, optimizer)
    train = {"images": stats.images, "seconds": round(stats.seconds, 2), "images_per_s": round(stats.images / stats.seconds, 1)}
    indices = trainer.test_data.indices_of(0, task.stop)
    start = time.perf_counter()
    predict_logits(trainer.model, trainer.test_data.store, indices, trainer.normalizer, trainer.env, 1000)
    seconds = time.perf_counter() - start
    evaluation = {"images": len(indices), "seconds": round(seconds, 2), "images_per_s": round(len(indices) / seconds, 1)}
    return train, evaluation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "cifar100" / "base.yaml")
    parser.add_argument("--baseline-images", type=int, default=10000, help="images timed per baseline pipeline")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    dataset = load_dataset("cifar100", resolve_data_root(None), default_cache_dir(), progress=False)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        train, evaluation = engine_run(args.config, dataset, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        compiled, _ = engine_run(args.config, dataset, Path(tmp), ["train.compile=true"], warmup=True)
    rows = {
        "dfcil engine (uint8 tensor, batch augmentation, bf16, channels_last)": train,
        "dfcil engine + train.compile=true (second epoch; compilation excluded)": compiled,
        f"per-sample DataLoader ({args.workers} workers), fp32 NCHW": per_sample_run(
            dataset, args.baseline_images, args.workers, bf16=False, channels_last=False, seed=0
        ),
        f"per-sample DataLoader ({args.workers} workers), bf16 + channels_last": per_sample_run(
            dataset, args.baseline_images, args.workers, bf16=True, channels_last=True, seed=0
        ),
    }
    baseline = rows[f"per-sample DataLoader ({args.workers} workers), fp32 NCHW"]["images_per_s"]
    result = {
        "benchmark": "ResNet-32 finetune training throughput on CIFAR-100 (batch 128)",
        "command": "python " + " ".join(sys.argv),
        "commit": git_commit(ROOT),
        "machine": machine_description("cpu"),
        "data": dataset.source,
        "train": rows,
        "speedup_vs_plain_pipeline": round(train["images_per_s"] / baseline, 2),
        "speedup_vs_plain_pipeline_compiled": round(compiled["images_per_s"] / baseline, 2),
        "evaluation": evaluation,
    }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        out = ROOT / "benchmarks" / "results"
        write_json(out / "throughput.json", result)
        lines = [
            "# Training throughput (generated by benchmarks/throughput.py)",
            "",
            f"Command: `{result['command']}`  ",
            f"Commit: `{result['commit']}`  ",
            f"Machine: {result['machine']['processor']}, {result['machine']['cpu_count']} cores, "
            f"torch {result['machine']['torch']} ({result['machine']['torch_threads']} threads)  ",
            f"Data: {result['data']}",
            "",
            "| pipeline | images | seconds | images/s |",
            "|---|---|---|---|",
        ]
        lines += [f"| {name} | {r['images']} | {r['seconds']} | {r['images_per_s']} |" for name, r in rows.items()]
        lines += [
            "",
            f"Speed-up of the engine over the plain fp32 per-sample pipeline: **{result['speedup_vs_plain_pipeline']}x** "
            f"(defaults), **{result['speedup_vs_plain_pipeline_compiled']}x** with `train.compile=true`.",
            f"Evaluation (engine, 10,000 test images, batch 1000): {evaluation['images_per_s']} images/s.",
            "",
            "The engine row is one full epoch over the 50,000 training images; each baseline row times",
            f"the first {args.baseline_images} images of an epoch (steady state, same model and optimiser).",
            "",
        ]
        write_text(out / "throughput.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    with console_logging():  # the library's messages on stderr, as in `dfcil`
        sys.exit(main())
