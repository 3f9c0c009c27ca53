"""Does DGR's VAE learn within a budget? Trains it on the first task's images of a protocol.

DGR (`src/dfcil/methods/dgr.py`) replays from a convolutional VAE trained after each task. This
trains that VAE (the method's own loss, `generator_loss`: per-image BCE plus KL per pixel value,
bf16 autocast on the CPU as in a run) on the real training images of the protocol's first task,
unaugmented, batches drawn with replacement, and prints the reconstruction and KL terms every 50
steps, beside the BCE of the best constant image (each pixel's mean over the images): a VAE whose
reconstruction stays near that value and whose KL is near 0 ignores its latent code and replays
one grey image.

    DFCIL_DATA=../shared/data python benchmarks/dgr_vae_budget.py --optimizer sgd --steps 300
    DFCIL_DATA=../shared/data python benchmarks/dgr_vae_budget.py --optimizer adam --lr 0.001 --steps 300

``sgd`` is DGR's default (ABD's code: lr 0.1, momentum 0.9, lr / 10 at 40, 60 and 80 % of the steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dfcil.config import load_yaml_tree  # noqa: E402
from dfcil.errors import DfcilError  # noqa: E402
from dfcil.methods.dgr import DGRGeneratorOptions, generator_loss, learning_rate  # noqa: E402
from dfcil.synthesis.vae import VAE  # noqa: E402


def first_task_images(config: Path) -> torch.Tensor:
    """The first task's training images of ``config``'s protocol, NCHW float in [0, 1]."""
    from dfcil.experiment import parse_experiment

    dataset, scenario = parse_experiment(load_yaml_tree(config)).load_data()
    positions = scenario.remap(dataset.train.labels)
    first = scenario.tasks[0]
    index = np.flatnonzero((positions >= first.start) & (positions < first.stop))
    return torch.from_numpy(dataset.train.images[index]).permute(0, 3, 1, 2).float() / 255


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "mini.yaml")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--lr", type=float, help="default: DGR's (0.1 for sgd), 0.001 for adam")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        print("dgr_vae_budget: error: --steps and --batch-size must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    defaults = DGRGeneratorOptions()
    try:
        images = first_task_images(args.config)
    except (DfcilError, OSError) as error:  # a bad config or missing data: one line, exit 2
        print(f"dgr_vae_budget: error: {error}", file=sys.stderr)
        return 2
    mean_image = images.mean(0, keepdim=True).clamp(1e-4, 1 - 1e-4)
    floor = float(F.binary_cross_entropy(mean_image.expand_as(images), images))
    print(f"{len(images)} images; BCE of the per-pixel mean image: {floor:.4f}", flush=True)
    torch.manual_seed(args.seed)
    vae = VAE(images.shape[-1], defaults.z_dim, defaults.width)
    lr = args.lr if args.lr is not None else (defaults.lr if args.optimizer == "sgd" else 1e-3)
    optimizer: torch.optim.Optimizer
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(vae.parameters(), lr=lr, momentum=defaults.momentum)
    else:
        optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    draw = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        if args.optimizer == "sgd":
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(lr, (step - 1) / args.steps, defaults.lr_decay_at)
        batch = images[torch.randint(len(images), (args.batch_size,), generator=draw)]
        noise = torch.randn(args.batch_size, vae.z_dim, generator=draw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = generator_loss(vae, batch, torch.ones(args.batch_size), noise)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            values = {name: round(float(value.detach()), 5) for name, value in terms.items()}
            print(f"{args.optimizer} lr {lr:g} step {step}: {values} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
