"""Experiment configuration: YAML files with ``extends``, dotted ``--set`` overrides, strict checks.

This module is data and YAML plumbing only: the typed sections, their value ranges, merging and
overrides, and the fingerprint. It knows no method and no scenario: the ``method`` section stays
a mapping here, and :func:`dfcil.experiment.resolve` turns a config into its method, the method's
typed options and its scenario (checking both), once, before any data is read or any model is
built. The ``runtime`` section holds options that never change what is trained (device, threads,
progress bars, the upper-bound run used for Omega, the TensorBoard view of the log); everything else is part of the run's
fingerprint, which ``--resume`` checks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dfcil.data.registry import DatasetName
from dfcil.errors import ConfigError
from dfcil.schema import from_dict, join, require, to_dict
from dfcil.yamlio import load_file, safe_load


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how real training images are augmented."""

    dataset: DatasetName = "cifar100"
    root: str | None = None  # default: $DFCIL_DATA
    image_size: int | None = None  # default: the dataset's native size
    download: bool = False  # cifar100 only: fetch the official archive when absent
    crop_padding: int = 4  # random crop with this much zero padding; 0 disables
    flip: bool = True  # random horizontal flip, p = 0.5
    # keep only the first N training images of each class (dataset order); None = all.
    # For quick protocols and tests; the test split is never reduced.
    train_per_class: int | None = None

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.image_size is None or self.image_size >= 8, join(path, "image_size"), "must be >= 8")
        require(self.train_per_class is None or self.train_per_class >= 1, join(path, "train_per_class"), "must be >= 1")
        require(self.crop_padding >= 0, join(path, "crop_padding"), "must be >= 0")


@dataclass(frozen=True)
class ScenarioConfig:
    """Class order and task split.

    ``base_classes = 0`` is the equal split (B0): ``num_tasks`` tasks of equal size.
    ``base_classes = 50`` is the half-base protocol (B50): a first task of 50 classes, then
    ``num_tasks - 1`` equal increments.
    """

    order: Literal["abd", "icarl", "identity", "explicit"] = "abd"
    order_seed: int | None = None  # default 0 for "abd", 1993 for "icarl"
    class_order: list[int] | None = None  # required for order = "explicit"
    subset: int | None = None  # use only the first K classes of the order
    num_tasks: int = 10
    base_classes: int = 0

    def validate(self, path: str) -> None:
        """Check values that do not depend on the dataset (the split: :func:`dfcil.scenario.check_split`)."""
        require(self.num_tasks >= 1, join(path, "num_tasks"), "must be >= 1")
        require(self.base_classes >= 0, join(path, "base_classes"), "must be >= 0")
        require(self.subset is None or self.subset >= 1, join(path, "subset"), "must be >= 1")
        if self.order == "explicit":
            require(bool(self.class_order), join(path, "class_order"), "required when order is 'explicit'")
        else:
            require(self.class_order is None, join(path, "class_order"), "only allowed when order is 'explicit'")
        if self.order in ("identity", "explicit"):
            require(self.order_seed is None, join(path, "order_seed"), f"not used by order '{self.order}'")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and classifier heads."""

    backbone: Literal["resnet32", "resnet18", "resnet34"] = "resnet32"
    resnet32_variant: Literal["rdfcil", "abd"] = "rdfcil"
    resnet18_stem: Literal["imagenet", "small"] = "imagenet"
    head_init_std: float | None = None  # None: PyTorch's Linear init; R-DFCIL uses 0.001

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.head_init_std is None or self.head_init_std > 0, join(path, "head_init_std"), "must be > 0")

    @property
    def network_revision(self) -> int:
        """Revision of the network this section builds (see :data:`NETWORK_REVISIONS`)."""
        return NETWORK_REVISIONS.get(self.network_key, 1)

    @property
    def network_key(self) -> str:
        """The network's key in :data:`NETWORK_REVISIONS`: the backbone, or ``resnet32/<variant>``."""
        return self.backbone if self.backbone != "resnet32" else f"resnet32/{self.resnet32_variant}"


#: Revision of a backbone's forward computation, by ``backbone`` or ``resnet32/<variant>``
#: (absent: 1). It goes up when the network the code builds for an unchanged config changes while
#: its parameters keep their names and shapes, so that older weights would load without complaint
#: into the newer network: it enters the run fingerprint (older checkpoints are refused, suites do
#: not adopt older runs) and model files. ``resnet32/rdfcil`` 2: no ReLU after any residual addition
#: (16 ReLUs per forward, the network of R-DFCIL's code); revision 1 kept a ReLU after every
#: addition but the last (30 ReLUs).
NETWORK_REVISIONS: dict[str, int] = {"resnet32/rdfcil": 2}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the main phase of every task (SGD or Adam, re-created per task)."""

    epochs: int = 160
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [80, 120])
    gamma: float = 0.1
    eval_batch_size: int = 1000
    # bf16 = autocast for forward passes; auto = bf16 where the device runs it natively
    # (AVX-512 BF16 / AMX CPUs, recent GPUs), else fp32 (see dfcil.precision)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    compile: bool = False  # torch.compile the backbone, static shapes (finetune step about +7 % on a 2-core CPU; each new shape compiles)
    # torch.compile's mode when compile is on; reduce-overhead replays CUDA graphs on a GPU (no
    # per-kernel launch cost: a CIFAR ResNet's step is launch-bound there), same as default on a CPU
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # sgd: momentum, weight_decay and nesterov as above (every method's papers); adam: Adam with
    # weight_decay as L2 (PASS's code: lr 1e-3, wd 2e-4), momentum and nesterov unused
    optimizer: Literal["sgd", "adam"] = "sgd"

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(self.epochs >= 1, join(path, "epochs"), "must be >= 1")
        require(self.batch_size >= 2, join(path, "batch_size"), "must be >= 2")
        require(self.lr > 0, join(path, "lr"), "must be > 0")
        require(0 <= self.momentum < 1, join(path, "momentum"), "must be in [0, 1)")
        require(self.weight_decay >= 0, join(path, "weight_decay"), "must be >= 0")
        require(0 < self.gamma <= 1, join(path, "gamma"), "must be in (0, 1]")
        require(self.eval_batch_size >= 1, join(path, "eval_batch_size"), "must be >= 1")
        require(
            list(self.milestones) == sorted(set(self.milestones)) and all(m >= 1 for m in self.milestones),
            join(path, "milestones"),
            "must be strictly increasing positive epochs",
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Options that do not change what is trained (excluded from the run fingerprint)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch CPU threads: a count; auto = the cores other processes leave free, re-decided while
    # training (dfcil.engine.threads; the last bits then depend on the load); None = torch's default
    num_threads: int | Literal["auto"] | None = "auto"
    progress: bool = True  # console progress bars
    upper_bound: str | None = None  # metrics.json (or run dir) of a `joint` run -> omega
    # an epoch's checkpoint is skipped when the last one is younger than this (0: every epoch);
    # the last epoch of every phase and the end of every task are always saved
    checkpoint_every_s: float = 30.0
    # also write the run log as TensorBoard events into RUN_DIR/tensorboard/ (needs the tensorboard
    # package: pip install 'dfcil[tensorboard]'); see dfcil.tensorboard_sink
    tensorboard: bool = False

    def validate(self, path: str) -> None:
        """Check value ranges."""
        require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            join(path, "device"),
            f"expected auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        require(self.num_threads in (None, "auto") or int(self.num_threads) >= 1, join(path, "num_threads"),
                "must be >= 1 or auto")
        require(math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s >= 0,
                join(path, "checkpoint_every_s"), "must be a number of seconds >= 0")


@dataclass(frozen=True)
class Config:
    """A whole experiment. ``method`` holds ``name`` plus that method's own options (checked by
    :func:`dfcil.experiment.resolve`, which knows the methods)."""

    seed: int = 0  # weight initialisation, sampling and augmentation (not the class order)
    data: DataConfig = field(default_factory=DataConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "finetune"})
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def method_name(self) -> str:
        """Registered name of the method."""
        return str(self.method["name"])


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "method":
            merged[key] = _deep_merge(merged[key], value)
        elif key == "method" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            # Switching method drops the base method's options; same method merges them.
            same = value.get("name", merged[key].get("name")) == merged[key].get("name")
            merged[key] = _deep_merge(merged[key], value) if same else copy.deepcopy(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving ``extends: other.yaml`` (relative to the file) recursively."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'extends' cycle")
    data = load_file(path, "config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a file name")
    return _deep_merge(load_yaml_tree(path.parent / parent, _seen + (path,)), data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides (dotted key path, YAML value) to a raw config dict."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        try:
            value = safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        if parts == ["method", "name"] and isinstance(data.get("method"), dict):
            if data["method"].get("name") != value:
                data["method"] = {}
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def parse_config(data: dict[str, Any]) -> Config:
    """The typed :class:`Config` of a raw dict: unknown keys, types and value ranges checked.

    The method section's options and the split are not checked here: that is
    :func:`dfcil.experiment.resolve` (or :func:`dfcil.experiment.parse_experiment`, both at once)."""
    return from_dict(Config, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, merge and override a config file, then :func:`parse_config` it."""
    return parse_config(apply_overrides(load_yaml_tree(path), overrides or []))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain-dict form of a config (what ``config.yaml`` in a run directory holds)."""
    return to_dict(config)


def first_difference(a: Any, b: Any, names: tuple[str, str] = ("there", "here"), path: str = "") -> str | None:
    """The first key path (sorted) where the nested dicts ``a`` and ``b`` differ, as
    ``path: <a> <names[0]>, <b> <names[1]>`` (None when they are equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), names, f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else f"{path or 'value'}: {a!r} {names[0]}, {b!r} {names[1]}"


#: keys added after runs were made, left out of :func:`without_runtime` (and so of fingerprints and
#: first-task identities) while they hold the value every earlier run had: earlier runs stay
#: resumable, adoptable and shareable
LATER_DEFAULTS: dict[tuple[str, str], Any] = {("train", "optimizer"): "sgd"}


def drop_later_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as a dict) without the :data:`LATER_DEFAULTS` keys that hold their default."""
    for (section, key), default in LATER_DEFAULTS.items():
        if isinstance(data.get(section), dict) and data[section].get(key, default) == default:
            data[section].pop(key, None)
    return data


def without_runtime(config: Config) -> dict[str, Any]:
    """The config as a dict without its ``runtime`` section (what a resume must match) and without
    the :data:`LATER_DEFAULTS` keys at their defaults."""
    data = config_to_dict(config)
    data.pop("runtime", None)
    return drop_later_defaults(data)


def _fingerprint_of(data: dict[str, Any], network_revision: int) -> str:
    """The fingerprint of a config as a dict without ``runtime`` (and later defaults), built with
    network revision ``network_revision``."""
    data = copy.deepcopy(data)
    if network_revision != 1:  # revision 1 is left out: earlier fingerprints stay valid
        data.setdefault("model", {})["network_revision"] = network_revision
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def fingerprint(config: Config) -> str:
    """Hash of everything that determines the result of a run (``runtime`` excluded)."""
    return _fingerprint_of(without_runtime(config), config.model.network_revision)


def recorded_network_revision(written_config: dict[str, Any], recorded_fingerprint: str) -> int | None:
    """The network revision a run was trained with, read from its own files.

    ``written_config`` is the run's ``config.yaml`` as written (a mapping, not re-parsed: keys
    added to dfcil since would change its hash) and ``recorded_fingerprint`` the fingerprint its
    ``run.json`` recorded when it started. The revision is the one under which the written
    config hashes to the recorded fingerprint; ``None`` when no known revision does (the file was
    edited, or written by a dfcil that hashed differently). A run made before a network changed
    thus keeps its old revision, although its config now builds the new network.
    """
    data = copy.deepcopy(written_config)
    data.pop("runtime", None)
    data = drop_later_defaults(data)
    for revision in range(1, max(NETWORK_REVISIONS.values(), default=1) + 1):
        if _fingerprint_of(data, revision) == recorded_fingerprint:
            return revision
    return None
