"""Speed of every method's training step, its generator training and evaluation, with FLOP
utilisation, on the current machine.

For each method, the engine (``Trainer``) is brought to task ``--task`` (default 2) of the mini
split (4 tasks of 5 classes, ResNet-32, batch 128, the engine's defaults: bf16 autocast where
native, channels_last; each method with its settings in ``suites/mini.yaml``, e.g. PASS's Adam) on
random uint8 images - speed does not depend on the pixels - with a generator trained for only a
few steps (its quality does not change the cost of a step); every task before the measured one
ends with the method's ``finish_task`` (PASS's class means, EWC's Fisher, DGR's generator). Then:

* **training step**: epochs of the task (2,500 real images, 20 steps each) through the engine's
  own loop (``Trainer.train_epoch``: batch augmentation, the method's loss terms, backward, SGD),
  timed after a warm-up epoch; the median of ``--epochs`` (default 3) timed epochs is reported;
  images/second counts real images only;
* **FLOPs per step**: ``torch.utils.flop_counter.FlopCounterMode`` over one more epoch (forward
  and backward of every module the step runs: real and synthetic batches, the frozen old
  model, generator sampling), divided by the steps;
* **utilisation** = FLOPs per step / seconds per step / the machine's peak in the precision the
  engine runs in (bf16 where the CPU has native bf16, else fp32), where the peak is measured here
  as the fastest of a few dense kernels - square matmuls and 3x3 convolutions (batch 128,
  channels_last) - see ``measured_peaks`` (``--peak-gflops`` states it instead);
* **generator steps/second**: ``prepare_task`` with ``--generator-steps`` steps, timed, minus
  the same call with 1 step (data-free methods); for DGR, whose VAE trains on the task's real
  images after the task (``finish_task``), that call instead;
* **evaluation images/second**: the engine's task-agnostic evaluation of 2,000 test images.

On a GPU the same is measured on the GPU (``runtime.device: auto``), with the peak measured on
the GPU and the device synchronised before every clock read.

``--compare-compile`` measures every method twice in the same run, as configured and with
``train.compile=true``, so that the two columns share the machine's state.

Usage::

    python benchmarks/method_speed.py [--methods finetune lwf rdfcil ...] [--task 2] [--epochs 3]
        [--compare-compile] [--set train.compile=true ...] [--out DIR | --no-write]

Writes ``DIR/method_speed.{json,md}`` (default ``benchmarks/results``, atomically) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dfcil.atomic import write_json, write_text
from dfcil.console import console_logging
from dfcil.data import DatasetArrays, ImageArrays
from dfcil.engine.trainer import Trainer, resolve_device
from dfcil.errors import DfcilError
from dfcil.experiment import Experiment, load_experiment
from dfcil.methods import METHODS
from dfcil.precision import resolve_precision
from dfcil.run import git_commit, machine_description
from dfcil.suite import Suite, load_suite

ROOT = Path(__file__).resolve().parents[1]
MINI_SUITE = ROOT / "suites" / "mini.yaml"
GENERATOR_SECTIONS = {"deepinversion": "synthesis", "abd": "synthesis", "rdfcil": "synthesis",
                      "mfgr": "synthesis", "skd": "delegator", "dgr": "generator"}
#: methods whose generator trains in ``finish_task`` (after the task) rather than in ``prepare_task``
TRAINED_AFTER_TASK = frozenset(m for m, section in GENERATOR_SECTIONS.items() if section == "generator")


def random_dataset(classes: int = 20, train: int = 500, test: int = 100, seed: int = 0) -> DatasetArrays:
    """CIFAR-shaped random uint8 images (speed does not depend on the pixels)."""
    rng = np.random.default_rng(seed)

    def split(per_class: int) -> ImageArrays:
        labels = np.repeat(np.arange(classes), per_class).astype(np.int64)
        return ImageArrays(rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels)

    return DatasetArrays("random", split(train), split(test), [f"c{i}" for i in range(classes)],
                         (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "random")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a clock read counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(run: Any, device: torch.device, repeats: int = 10, inner: int = 5) -> float:
    """Fastest time of one ``run()`` call: the best of ``repeats`` windows of ``inner`` calls."""
    run()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            run()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def measured_peaks(dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """Throughput (GFLOP/s) of the fastest dense kernels in ``dtype`` on ``device``: square
    matmuls and 3x3 convolutions (batch 128, channels_last, the engine's layout) of a few sizes.

    The machine's peak is stated as the best of them. Matmul alone understates it on CPUs whose
    oneDNN convolutions are better tuned than their GEMM (a 2-core Zen 4: bf16 matmul 2048^2
    about 420 GFLOP/s, a 128-channel 3x3 convolution about 515), which would overstate the
    utilisation of a convolutional network."""
    gpu = device.type == "cuda"
    results: dict[str, float] = {}
    for size in ((4096, 8192) if gpu else (1024, 2048)):
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        seconds = best_seconds(lambda: torch.mm(a, b), device, inner=2 if size >= 2048 else 5)  # noqa: B023 - called here
        results[f"matmul {size}"] = 2.0 * size**3 / seconds / 1e9
    for channels, side in (((256, 32), (512, 16)) if gpu else ((64, 8), (128, 8), (256, 8))):
        x = torch.randn(128, channels, side, side, dtype=dtype, device=device).to(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, 3, 3, dtype=dtype, device=device).to(memory_format=torch.channels_last)
        seconds = best_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), device)  # noqa: B023 - called here
        results[f"conv3x3 {channels}ch {side}px"] = 2.0 * 128 * side * side * channels * channels * 9 / seconds / 1e9
    return results


@functools.cache
def _suite(path: Path) -> Suite:
    return load_suite(path)


def suite_settings(method: str, suite: Path = MINI_SUITE) -> list[str]:
    """The mini suite's overrides of its run of ``method`` (e.g. PASS's Adam), as the suite itself
    builds them, without the method name and seed; none for a method the suite does not name."""
    run = next((r for r in _suite(suite).runs if r.labels.get("method") == method), None)
    return [] if run is None else [o for o in run.overrides if o.split("=", 1)[0] not in ("method.name", "seed")]


def config_for(method: str, generator_steps: int, extra: tuple[str, ...] = ()) -> Experiment:
    """The mini experiment for ``method`` with the mini suite's settings of it, a short generator
    budget (and ``extra`` overrides, applied after them)."""
    overrides = [f"method.name={method}", "runtime.progress=false", *suite_settings(method), *extra]
    section = GENERATOR_SECTIONS.get(method)
    if section == "synthesis":
        overrides.append(f"method.synthesis.steps={generator_steps}")
        if method == "mfgr":
            overrides.append("method.synthesis.batch_size=128")
        if method == "rdfcil":
            overrides.append("method.refine_epochs=1")
    elif section == "delegator":
        overrides += [f"method.delegator.iterations={generator_steps}", "method.delegator.batch_size=128",
                      "method.delegator_check=false"]
    elif section == "generator":
        overrides.append(f"method.generator.steps={generator_steps}")
    return load_experiment(ROOT / "configs" / "mini.yaml", overrides)


def reach_task(trainer: Trainer, task_index: int) -> None:
    """Run ``prepare_task``, add the head and run ``finish_task`` of every task before
    ``task_index`` (no training epochs): what a method keeps from a finished task (PASS's class
    means, EWC's Fisher, DGR's generator) is there when the measured task starts."""
    for task in trainer.scenario.tasks[:task_index]:
        trainer.method.prepare_task(trainer.model, task)
        trainer.model.add_head(task.num_new)
        trainer.method.finish_task(trainer.model, task)


def timed_prepare(method: str, task_index: int, steps: int, dataset: DatasetArrays, work: Path,
                  extra: tuple[str, ...] = ()) -> float:
    """Seconds of ``prepare_task`` of ``task_index`` with a generator budget of ``steps`` (of
    ``finish_task`` for a method in :data:`TRAINED_AFTER_TASK`)."""
    trainer = Trainer(config_for(method, steps, extra), work / f"prep-{method}-{steps}", dataset)
    reach_task(trainer, task_index)
    task = trainer.scenario.tasks[task_index]
    timed = trainer.method.prepare_task
    if method in TRAINED_AFTER_TASK:
        timed(trainer.model, task)
        trainer.model.add_head(task.num_new)
        timed = trainer.method.finish_task
    synchronize(trainer.device)
    start = time.perf_counter()
    timed(trainer.model, task)
    synchronize(trainer.device)
    return time.perf_counter() - start


def measure(method: str, task_index: int, generator_steps: int, dataset: DatasetArrays, work: Path,
            extra: tuple[str, ...] = (), epochs: int = 3) -> dict[str, Any]:
    """Step time (median of ``epochs`` timed epochs), FLOPs per step, generator and evaluation
    speed of one method."""
    trainer = Trainer(config_for(method, 2, extra), work / method, dataset)
    reach_task(trainer, task_index)
    task = trainer.scenario.tasks[task_index]
    trainer.method.prepare_task(trainer.model, task)
    trainer.model.add_head(task.num_new)
    phase = trainer.method.phases(task)[0]
    optimizer, _ = trainer.make_optimizer(phase)
    trainer.train_epoch(task, phase, 1, optimizer)  # warm-up (allocations, autotuning, compilation)
    timed = [trainer.train_epoch(task, phase, 2 + i, optimizer) for i in range(epochs)]
    stats = sorted(timed, key=lambda s: s.seconds)[len(timed) // 2]
    steps = -(-stats.images // trainer.config.train.batch_size)
    with FlopCounterMode(display=False) as counter:
        trainer.train_epoch(task, phase, 2 + epochs, optimizer)
    flops_per_step = counter.get_total_flops() / steps
    result: dict[str, Any] = {
        "method": method,
        "task": task_index + 1,
        "phase": phase.name,
        "compiled": trainer.config.train.compile,
        "step_ms": 1000.0 * stats.seconds / steps,
        "epoch_seconds": [s.seconds for s in timed],
        "images_per_s": stats.images / stats.seconds,
        "gflop_per_step": flops_per_step / 1e9,
        "gflops": flops_per_step / (stats.seconds / steps) / 1e9,
    }
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.evaluate(task)
    synchronize(trainer.device)
    evaluated = len(trainer.test_data.indices_of(0, task.stop))
    result["eval_images_per_s"] = evaluated / (time.perf_counter() - start)
    if method in GENERATOR_SECTIONS and generator_steps > 1:
        seconds = timed_prepare(method, task_index, generator_steps, dataset, work, extra) \
            - timed_prepare(method, task_index, 1, dataset, work, extra)
        result["generator_steps_per_s"] = (generator_steps - 1) / max(seconds, 1e-9)
    return result


def markdown(results: list[dict[str, Any]], peaks: dict[str, float], facts: dict[str, Any]) -> str:
    """The results as a Markdown table with provenance."""
    precision = facts["precision"]
    peak = peaks[precision]
    rows = []
    for r in results:
        finetune = next((f for f in results if f["method"] == "finetune" and f["compiled"] == r["compiled"]), None)
        relative = f"{r['step_ms'] / finetune['step_ms']:.2f}x" if finetune else "-"
        generator = f"{r['generator_steps_per_s']:.2f}" if "generator_steps_per_s" in r else "-"
        name = f"{r['method']} (compiled)" if r["compiled"] else r["method"]
        rows.append(f"| {name} | {r['step_ms']:.0f} | {relative} | {r['images_per_s']:.0f} | "
                    f"{r['gflop_per_step']:.1f} | {r['gflops']:.0f} | {100 * r['gflops'] / peak:.0f} % | "
                    f"{generator} | {r['eval_images_per_s']:.0f} |")
    return "\n".join([
        "# Method speed",
        "",
        f"Produced by `python benchmarks/method_speed.py {' '.join(sys.argv[1:])}` at commit `{facts['commit']}`",
        f"on {facts['machine'].get('gpu', facts['machine']['processor'])} "
        f"({facts['machine']['cpu_count']} CPU cores, torch {facts['machine']['torch']},",
        f"{facts['machine']['torch_threads']} threads, precision {facts['precision']}). Mini split, task {results[0]['task']} "
        "(5 old + 5 new classes), ResNet-32, batch 128 real images, random pixels.",
        "Peak: the fastest dense kernel measured here (square matmuls and 3x3 convolutions, batch 128, "
        "channels_last), "
        + ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in peaks.items())
        + (" (stated with --peak-gflops)" if facts.get("peak_stated") else "")
        + f"; utilisation is against the {precision} peak (the precision the engine runs in here). "
        + f"The {precision} kernels: "
        + ", ".join(f"{name} {value:.0f}" for name, value in facts["kernels"].get(precision, {}).items()) + ".",
        "",
        "| method | step ms | vs finetune | real images/s | GFLOP/step | GFLOP/s | utilisation | generator steps/s | eval images/s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "GFLOP/step counts every forward and backward of the step (real and synthetic batches, frozen",
        "old model, generator sampling) with PyTorch's FlopCounterMode; generator steps/s is the",
        "method's own generator (or SKD's delegator: one iteration = 5 imitate + 1 explore step) at",
        "batch 128 (MFGR: 128; ABD / R-DFCIL / DeepInversion: the real batch size; DGR: its VAE's step",
        "after the task, on a batch of real images and as many replayed ones). Step ms is the",
        f"median of {facts['epochs']} timed epochs of 20 steps (19 of 128 images and one of 68) after a warm-up epoch;",
        "(compiled) rows are the same measurement with `train.compile=true` (the backbones compiled",
        "with static shapes; the warm-up epoch compiles every shape the timed ones meet).",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=[m for m, cls in METHODS.items() if not cls.upper_bound])
    parser.add_argument("--task", type=int, default=2, help="the task whose step is measured (1-based, default 2)")
    parser.add_argument("--generator-steps", type=int, default=11, help="generator steps timed per method")
    parser.add_argument("--peak-gflops", type=float,
                        help="state the peak of the engine's precision (bf16 or fp32) instead of measuring it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every method (e.g. train.compile=true; repeatable)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per method; the median is reported")
    parser.add_argument("--compare-compile", action="store_true",
                        help="measure every method twice: as configured and with train.compile=true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="where method_speed.{json,md} go (default benchmarks/results)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]}")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.peak_gflops is not None and args.peak_gflops <= 0:
        parser.error("--peak-gflops must be > 0")
    dataset = random_dataset()
    extra = tuple(args.overrides)
    try:
        probe = config_for("finetune", 1, extra).config
    except DfcilError as error:
        parser.error(str(error))
    device = resolve_device(probe.runtime.device)
    precision = resolve_precision(probe.train.precision, device)
    kernels = {"fp32": measured_peaks(torch.float32, device)}
    if precision == "bf16":  # emulated bf16 kernels (no native bf16) say nothing about this run
        kernels["bf16"] = measured_peaks(torch.bfloat16, device)
    peaks = {name: max(figures.values()) for name, figures in kernels.items()}
    if args.peak_gflops is not None:
        peaks[precision] = args.peak_gflops
    facts = {"commit": git_commit(ROOT / "src" / "dfcil"), "machine": machine_description(str(device)),
             "device": str(device), "precision": precision, "peak_stated": args.peak_gflops is not None,
             "overrides": list(extra), "epochs": args.epochs}
    facts["kernels"] = kernels

    def write(results: list[dict[str, Any]]) -> str:
        """The table so far, written out (after every method: a run stopped by a time limit
        keeps what it measured)."""
        text = markdown(results, peaks, facts)
        if not args.no_write:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / "method_speed.json", {"peaks_gflops": peaks, "kernels_gflops": kernels, **facts,
                                                        "results": results})
            write_text(args.out / "method_speed.md", text)
        return text

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        variants = [extra, (*extra, "train.compile=true")] if args.compare_compile else [extra]
        for method in args.methods:
            for index, overrides in enumerate(variants):
                result = measure(method, args.task - 1, args.generator_steps, dataset,
                                 Path(work) / str(index), overrides, args.epochs)
                results.append(result)
                print(result, flush=True)
                write(results)
    print(write(results))
    return 0


if __name__ == "__main__":
    with console_logging():  # the library's messages on stderr, as in `dfcil`
        sys.exit(main())
