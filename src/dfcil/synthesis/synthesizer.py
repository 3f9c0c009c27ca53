"""Train a generator against the frozen old model, sample synthetic batches, visualise them.

The generator lives for one task: the method that owns a :class:`Synthesizer` trains it in
``prepare_task`` and discards it in ``finish_task`` (data-free discipline). Its weights are
part of the method state, so a run resumed inside a task does not train it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from dfcil.atomic import atomic_write
from dfcil.distributed import SINGLE, Distributed
from dfcil.hooks import BatchNormInput, BatchNormInputs
from dfcil.models import IncrementalClassifier
from dfcil.schema import join, require
from dfcil.synthesis.generator import Generator, build_generator, generate_images
from dfcil.synthesis.losses import bn_statistics_kl, content_loss, image_prior_loss, label_diversity_loss
from dfcil.synthesis.monitor import OutputSaturation, WindowMeans, confidence_and_coverage

# (generated images, old-model logits over old classes, old-model features, BN-input statistics)
# -> named (unweighted value, weight) terms; the generator minimises the weighted sum.
InversionObjective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[BatchNormInput]],
                              dict[str, tuple[torch.Tensor, float]]]


class GeneratorTrainingOptions(Protocol):
    """What :class:`Synthesizer` reads from a method's generator section (duck-typed; read-only
    members, so that the frozen dataclasses of the sections match)."""

    @property
    def steps(self) -> int: ...
    @property
    def batch_size(self) -> int | None: ...
    @property
    def lr(self) -> float: ...
    @property
    def z_dim(self) -> int: ...
    @property
    def bn_eps(self) -> float: ...
    @property
    def warm_start(self) -> bool: ...
    @property
    def log_every(self) -> int: ...
    @property
    def keep_generator(self) -> bool: ...

    def objective(self) -> InversionObjective:
        """The generator's loss terms."""


def validate_generator_training(options: GeneratorTrainingOptions, path: str, weights: tuple[str, ...]) -> None:
    """Range checks shared by every generator-training section; ``weights`` must be >= 0."""
    require(options.steps >= 1, join(path, "steps"), "must be >= 1")
    require(options.batch_size is None or options.batch_size >= 2, join(path, "batch_size"), "must be >= 2")
    require(options.lr > 0, join(path, "lr"), "must be > 0")
    require(options.z_dim >= 1, join(path, "z_dim"), "must be >= 1")
    require(options.bn_eps > 0, join(path, "bn_eps"), "must be > 0")
    require(options.log_every >= 1, join(path, "log_every"), "must be >= 1")
    for name in weights:
        require(getattr(options, name) >= 0, join(path, name), "must be >= 0")


@dataclass(frozen=True)
class SynthesisOptions:
    """Generator training (defaults: R-DFCIL's code on CIFAR, arXiv:2207.09213; ABD's generator, arXiv:2106.09701)."""

    steps: int = 5000
    batch_size: int | None = None  # None: the real batch size (train.batch_size)
    lr: float = 1e-3
    z_dim: int = 1000
    bn_eps: float = 0.8  # the original code's accidental eps; published numbers use it
    content_temperature: float = 1000.0
    content_weight: float = 1.0
    diversity_weight: float = 1.0
    bn_weight: float = 50.0  # code; R-DFCIL's supplement says 5
    prior_weight: float = 1e-3
    warm_start: bool = False  # ABD's code keeps one generator for the whole run
    log_every: int = 100
    keep_generator: bool = False  # save each task's generator under generators/ (breaks data-free rule)

    def objective(self) -> InversionObjective:
        """The four losses of ABD / R-DFCIL with this section's weights."""
        opts = self

        def terms(images: torch.Tensor, logits: torch.Tensor, features: torch.Tensor,
                  bn_stats: list[BatchNormInput]) -> dict[str, tuple[torch.Tensor, float]]:
            return {
                "content": (content_loss(logits, opts.content_temperature), opts.content_weight),
                "diversity": (label_diversity_loss(logits), opts.diversity_weight),
                "bn": (bn_statistics_kl(bn_stats), opts.bn_weight),
                "prior": (image_prior_loss(images), opts.prior_weight),
            }

        return terms

    def validate(self, path: str) -> None:
        """Check value ranges."""
        validate_generator_training(self, path, ("content_weight", "diversity_weight", "bn_weight", "prior_weight"))
        require(self.content_temperature > 0, join(path, "content_temperature"), "must be > 0")


@dataclass
class SyntheticBatch:
    """Synthetic images with the old model's outputs on them."""

    images: torch.Tensor  # (N, 3, H, W), normalised units, no augmentation
    labels: torch.Tensor  # argmax of the old model over old classes
    old_logits: torch.Tensor  # old model's logits over old classes
    old_features: torch.Tensor  # old model's penultimate features


@torch.no_grad()
def label_with_old_model(old_model: IncrementalClassifier, images: torch.Tensor, num_old: int,
                         autocast: Callable[[], Any]) -> SyntheticBatch:
    """``images`` with the old model's pseudo labels (argmax over the old classes), logits and features."""
    with autocast():
        out = old_model(images)
    logits = out.logits[:, :num_old].float()
    return SyntheticBatch(images, logits.argmax(dim=1), logits, out.features.float())


class Synthesizer:
    """A model-inversion generator for the classes of the frozen old model."""

    def __init__(self, options: GeneratorTrainingOptions, image_size: int, device: torch.device,
                 autocast: Callable[[], Any], rng: torch.Generator, channels_last: bool,
                 dist: Distributed = SINGLE) -> None:
        self.options = options
        self.dist = dist
        self.objective = options.objective()
        self.image_size = image_size
        self.device = device
        self.autocast = autocast
        self.rng = rng
        self.channels_last = channels_last
        self.generator: Generator | None = None
        self.optimizer_state: dict[str, Any] | None = None
        # the generator training in progress: steps done and its optimiser (None between
        # trainings); a checkpoint taken through train's ``progress`` holds both, and train
        # continues from them after a resume
        self.steps_done: int | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------------------------------
    def _new_generator(self) -> Generator:
        return build_generator(self.image_size, self.options.z_dim, self.options.bn_eps,
                               self.channels_last).to(self.device)

    def train(self, old_model: IncrementalClassifier, num_old: int, log: Callable[[dict[str, Any]], None],
              batch_size: int, progress: Callable[[int], None] | None = None) -> dict[str, float]:
        """Fit a generator (new, or the previous one with ``warm_start``) against ``old_model``.

        In a multi-process run each rank generates its slice of the batch, the BN statistics
        are those of the global batch and DDP averages the generator's gradients.
        ``progress(step)`` is called after every step (and its log record): a checkpoint taken
        there (:meth:`state_dict`) holds the training in progress, which a synthesizer restored
        from it continues at the next step, exactly (the caller restores the random streams)."""
        opts = self.options
        resuming = self.steps_done is not None and self.generator is not None
        if not resuming and (self.generator is None or not opts.warm_start):
            self.generator = self._new_generator()
            self.optimizer_state = None
        generator = self.generator
        assert generator is not None  # a new one, or the one kept (warm start) or restored (resume)
        optimizer = torch.optim.Adam(generator.parameters(), lr=opts.lr)
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        first_step = (self.steps_done or 0) + 1 if resuming else 1
        self._optimizer = optimizer
        batch = self.dist.shard_size(opts.batch_size or batch_size)
        run_step = self.dist.step_runner([generator], self.device)
        old_model.eval()
        generator.train()
        window = WindowMeans()
        start = time.perf_counter()
        last: dict[str, float] = {}
        with BatchNormInputs(old_model, self.dist) as bn, OutputSaturation(generator.output_tanh) as saturation:

            def losses() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
                z = generator.sample_latent(batch, self.device, self.rng)
                with self.autocast():
                    images = generator(z)
                    model_input = images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
                    out = old_model(model_input)
                    logits = out.logits[:, :num_old]
                weighted = self.objective(images, logits, out.features, bn.stats)
                bn.clear()
                total = sum(weight * value for value, weight in weighted.values())
                assert isinstance(total, torch.Tensor)
                return total, {name: value for name, (value, _) in weighted.items()}, logits

            for step in range(first_step, opts.steps + 1):
                total, terms, logits = run_step(losses)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                confidence, coverage = confidence_and_coverage(logits)
                assert saturation.value is not None
                window.add({**terms, "total": total, "confidence": confidence, "coverage": coverage,
                            "tanh_saturated": saturation.value})
                if step % opts.log_every == 0 or step == opts.steps:
                    last = window.pop_means()  # after a resume, the first window holds fewer steps
                    seconds = time.perf_counter() - start
                    log({"event": "synthesis", "step": step, "steps": opts.steps, **last,
                         "steps_per_s": (step - first_step + 1) / max(seconds, 1e-9)})
                self.steps_done = step
                if progress is not None:
                    progress(step)  # after the step's record: a checkpoint here keeps it
        self.steps_done = None
        self._optimizer = None
        # Adam's moments (twice the generator's size) only matter to a generator trained on
        # next task (warm_start); kept otherwise, they would be in every checkpoint of the task
        self.optimizer_state = optimizer.state_dict() if opts.warm_start else None
        generator.eval()
        return last

    @torch.no_grad()
    def generate(self, count: int) -> torch.Tensor:
        """``count`` synthetic images (generator in eval mode), normalised units."""
        assert self.generator is not None, "the synthesizer has not been trained for this task"
        return generate_images(self.generator, count, self.device, self.rng, self.autocast, self.channels_last)

    @torch.no_grad()
    def sample(self, old_model: IncrementalClassifier, count: int, num_old: int) -> SyntheticBatch:
        """Synthetic images plus the old model's pseudo labels, logits and features."""
        return label_with_old_model(old_model, self.generate(count), num_old, self.autocast)

    def discard(self) -> None:
        """Forget the generator (end of task), unless ``warm_start`` keeps it for the next one."""
        self.steps_done = None
        if not self.options.warm_start:
            self.generator = None
            self.optimizer_state = None

    # ------------------------------------------------------------------------------------------
    def save_grid(self, old_model: IncrementalClassifier, num_old: int, path: Path,
                  denormalize: Callable[[torch.Tensor], torch.Tensor], per_class: int = 8,
                  max_batches: int = 4) -> None:
        """PNG grid of synthetic samples: one row per class the old model predicts (up to ``per_class``)."""

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            batch = self.sample(old_model, 256, num_old)
            return batch.images, batch.labels

        save_sample_grid(draw, num_old, self.image_size, path, denormalize, per_class, max_batches)

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """Generator and optimiser state, and the steps done of a training in progress (None
        when there is no generator)."""
        if self.generator is None:
            return None
        optimizer = self._optimizer.state_dict() if self._optimizer is not None else self.optimizer_state
        return {"generator": self.generator.state_dict(), "optimizer": optimizer, "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Inverse of :meth:`state_dict`."""
        self._optimizer = None
        if state is None:
            self.generator = None
            self.optimizer_state = None
            self.steps_done = None
            return
        self.generator = self._new_generator()
        self.generator.load_state_dict(state["generator"])
        self.generator.eval()
        self.optimizer_state = state["optimizer"]
        self.steps_done = state.get("steps_done")  # checkpoints before resumable training: None


def save_sample_grid(draw: Callable[[], tuple[torch.Tensor, torch.Tensor]], num_classes: int, image_size: int,
                     path: Path, denormalize: Callable[[torch.Tensor], torch.Tensor], per_class: int = 8,
                     max_batches: int = 4) -> None:
    """PNG grid of synthetic images, one row per predicted class (up to ``per_class`` each).

    ``draw()`` returns a batch of normalised images and their predicted labels; at most
    ``max_batches`` batches are drawn to fill the rows. The first batch is also kept beside the
    grid as ``<name>_samples.npz`` (uint8 NHWC ``images`` and the old model's ``labels``) for the
    domain-gap diagnostics of ``dfcil report`` (synthetic images, not training data).
    """
    rows: dict[int, list[torch.Tensor]] = {}
    for index in range(max_batches):
        images, labels = draw()
        if index == 0:
            _save_samples(path.with_name(f"{path.stem}_samples.npz"), images, labels, denormalize)
        for image, label in zip(images, labels.tolist()):
            if len(rows.setdefault(label, [])) < per_class:
                rows[label].append(image)
        if len(rows) == num_classes and all(len(r) == per_class for r in rows.values()):
            break
    size = image_size
    grid = np.full((max(len(rows), 1) * (size + 2), per_class * (size + 2), 3), 255, dtype=np.uint8)
    for r, label in enumerate(sorted(rows)):
        row = denormalize(torch.stack(rows[label])).clamp(0, 1).mul(255).round().byte()
        pixels = row.permute(0, 2, 3, 1).cpu().numpy()
        for c, image in enumerate(pixels):
            grid[r * (size + 2) + 1 : r * (size + 2) + 1 + size, c * (size + 2) + 1 : c * (size + 2) + 1 + size] = image
    atomic_write(path, lambda handle: Image.fromarray(grid).save(handle, format="PNG"))


def _save_samples(path: Path, images: torch.Tensor, labels: torch.Tensor,
                  denormalize: Callable[[torch.Tensor], torch.Tensor]) -> None:
    pixels = denormalize(images.float()).clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    def write(handle: Any) -> None:
        np.savez_compressed(handle, images=pixels, labels=labels.cpu().numpy().astype(np.int64))

    atomic_write(path, write)
