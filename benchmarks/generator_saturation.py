"""Why MFGR's replay images saturate: a generator's tanh saturation in training and at replay.

Trains one generator per variant against the frozen old model of a run's per-task checkpoint
(the same data-free inversion a run does before its next task) and measures, for each variant:

* during training, the mean over the last logging window of the fraction of output pixels at
  ``|tanh| >= 0.99`` (``tanh_saturated``), the old model's confidence and class coverage, and the
  loss terms;
* at replay, the same fraction, confidence and coverage on a batch drawn as a run draws it
  (generator in eval mode: BatchNorm running statistics) and with batch statistics (train mode,
  as MFGR's code samples; on a copy, so the running statistics are not moved).

Variants are ``name:key=value,key=value`` overrides of the method's generator section (values in
YAML). Example, MFGR on the mini budget (200 steps at batch 128) against the first task of a mini
run: the paper's l_div (this project's default before), l_div off, and the authors' run.sh
(l_div off, activation loss 0.1)::

    python benchmarks/generator_saturation.py RUN/checkpoints/task_1.pt --method mfgr \\
        --steps 200 --batch 128 --variant "paper:div_weight=0.1" --variant "no-div:div_weight=0" \\
        --variant "code:div_weight=0,activation_weight=0.1" -o benchmarks/results/mini/mfgr_saturation

Writes ``<out>.json`` and ``<out>.md`` (command, commit, machine in both). One torch thread unless
``--threads``; a CPU-bound job sharing the machine slows it, not its figures.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from dfcil.atomic import write_json, write_text
from dfcil.methods.mfgr import KnowledgeRecordingOptions
from dfcil.models import IncrementalClassifier, build_backbone, frozen_copy
from dfcil.run import git_commit, machine_description
from dfcil.synthesis import SynthesisOptions, Synthesizer
from dfcil.synthesis.monitor import OutputSaturation, confidence_and_coverage

OPTIONS = {"abd": SynthesisOptions, "rdfcil": SynthesisOptions, "mfgr": KnowledgeRecordingOptions}


def load_old_model(checkpoint: Path, variant: str) -> tuple[IncrementalClassifier, int]:
    """The frozen model of a per-task checkpoint and its number of classes."""
    saved = torch.load(checkpoint, weights_only=False, map_location="cpu")
    model = IncrementalClassifier(build_backbone("resnet32", variant=variant))
    for size in saved["head_sizes"]:
        model.add_head(size)
    model.load_state_dict(saved["model"])
    return frozen_copy(model), sum(saved["head_sizes"])


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` -> (name, {key: YAML value})."""
    name, _, body = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"generator_saturation: variant {text!r}: {item!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


@torch.no_grad()
def replay_figures(synth: Synthesizer, old: IncrementalClassifier, num_old: int, count: int) -> dict[str, float]:
    """Saturation, confidence and coverage of ``count`` replay images, eval mode and batch statistics."""
    assert synth.generator is not None
    out: dict[str, float] = {}
    for mode, generator in (("eval", synth.generator), ("batch_stats", copy.deepcopy(synth.generator).train())):
        z = generator.sample_latent(count, torch.device("cpu"), synth.rng)
        with OutputSaturation(generator.output_tanh) as saturation:
            images = generator(z)
        confidence, coverage = confidence_and_coverage(old(images).logits[:, :num_old])
        assert saturation.value is not None
        out[f"replay_{mode}_tanh_saturated"] = saturation.value.item()
        out[f"replay_{mode}_confidence"] = confidence.item()
        out[f"replay_{mode}_coverage"] = coverage.item()
        out[f"replay_{mode}_pixel_std"] = images.float().std().item()
    return out


def measure(old: IncrementalClassifier, num_old: int, options: Any, batch: int, replay: int,
            seed: int) -> dict[str, Any]:
    """Train one generator with ``options``; the last training window and the replay figures."""
    torch.manual_seed(seed)
    synth = Synthesizer(options, 32, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False),
                        torch.Generator().manual_seed(seed), channels_last=False)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    synth.train(old, num_old, records.append, batch_size=batch)
    seconds = time.perf_counter() - start
    return {"training": records, "last_window": records[-1], "seconds": seconds,
            **replay_figures(synth, old, num_old, replay)}


def markdown(results: dict[str, Any]) -> str:
    """The results as a table, with how they were produced."""
    lines = [f"# Generator saturation: {results['method']} against {results['checkpoint']}", "",
             f"Command: `{results['command']}`  ", f"Commit: {results['commit']}; machine: {results['machine']['cpu_model']} "
             f"({results['machine']['cpu_count']} cores, native bf16: {results['machine']['cpu_native_bf16']}), fp32; "
             f"{results['steps']} steps at batch {results['batch']}, seed {results['seed']}, replay batch "
             f"{results['replay']}, {results['threads']} torch thread(s).", "",
             "Saturated: fraction of output pixels with |tanh| >= 0.99 (before the generator's final BN). "
             "Training: mean over the last logging window. Replay: one batch, generator in eval mode "
             "(running statistics, as dfcil replays) and with batch statistics (as MFGR's code replays).", "",
             "| variant | overrides | training saturated | confidence | coverage | replay (eval) saturated "
             "| confidence | coverage | replay (batch stats) saturated | confidence | coverage | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["variants"].items():
        last = row["last_window"]
        over = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "defaults"
        lines.append(
            f"| {name} | {over} | {last['tanh_saturated']:.3f} | {last['confidence']:.3f} | {last['coverage']:.3f} "
            f"| {row['replay_eval_tanh_saturated']:.3f} | {row['replay_eval_confidence']:.3f} "
            f"| {row['replay_eval_coverage']:.3f} | {row['replay_batch_stats_tanh_saturated']:.3f} "
            f"| {row['replay_batch_stats_confidence']:.3f} | {row['replay_batch_stats_coverage']:.3f} "
            f"| {row['seconds']:.0f} |")
    lines += ["", "Training windows (step: saturated / confidence / coverage):", ""]
    for name, row in results["variants"].items():
        windows = "; ".join(f"{r['step']}: {r['tanh_saturated']:.3f} / {r['confidence']:.3f} / {r['coverage']:.3f}"
                            for r in row["training"])
        lines.append(f"- {name}: {windows}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a run's checkpoints/task_<k>.pt (the old model)")
    parser.add_argument("--method", choices=sorted(OPTIONS), default="mfgr")
    parser.add_argument("--network", default="rdfcil", help="resnet32 variant of the checkpoint")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--replay", type=int, default=512, help="replay batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[], help="name:key=value,... (repeatable)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output path without suffix")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        parser.error(f"no checkpoint at {args.checkpoint}")
    old, num_old = load_old_model(args.checkpoint, args.network)
    cls = OPTIONS[args.method]
    results: dict[str, Any] = {
        "method": args.method, "checkpoint": str(args.checkpoint), "steps": args.steps, "batch": args.batch,
        "replay": args.replay, "seed": args.seed, "threads": args.threads,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "commit": git_commit(Path(__file__).resolve().parents[1] / "src"), "machine": machine_description("cpu"), "variants": {}}
    for text in args.variant or ["defaults:"]:
        name, overrides = parse_variant(text)
        try:
            options = dataclasses.replace(cls(), steps=args.steps, batch_size=args.batch, log_every=args.log_every,
                                          **overrides)
        except TypeError as error:
            parser.error(f"variant {name!r}: {error}")
        row = measure(old, num_old, options, args.batch, args.replay, args.seed)
        results["variants"][name] = {"overrides": overrides, **row}
        print(json.dumps({"variant": name, **{k: v for k, v in row.items() if k != "training"}}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out.with_suffix(".json"), results)
        write_text(args.out.with_suffix(".md"), markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
