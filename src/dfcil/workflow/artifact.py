"""The deployable model file: one safetensors file that describes itself.

The tensors are the classifier's weights; the safetensors header's string metadata holds, as
JSON under the key ``dfcil``, everything needed to rebuild and use the model: architecture,
input size and normalisation, class names in label order, head sizes, and the history of
learning steps. Loading parses that JSON and the raw tensors only: no pickle, no code from
the file is ever executed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfcil.atomic import write_bytes
from dfcil.config import ModelConfig
from dfcil.errors import ConfigError, DfcilError
from dfcil.models import IncrementalClassifier, build_classifier
from dfcil.schema import from_dict

FORMAT = "dfcil-model"
FORMAT_VERSION = 1


class ModelFileError(DfcilError):
    """A model file is missing, truncated, not a dfcil model, or inconsistent."""


@dataclass(frozen=True)
class Architecture:
    """How to rebuild the network (the ``model`` section of an experiment config)."""

    backbone: str
    resnet32_variant: str = "rdfcil"
    resnet18_stem: str = "imagenet"
    head_init_std: float | None = None
    network_revision: int | None = None  # None: the revision this dfcil builds (files without it: 1)

    def __post_init__(self) -> None:
        if self.network_revision is None:
            object.__setattr__(self, "network_revision", self._current_revision())

    def _current_revision(self) -> int:
        """The revision of the network this dfcil builds for these settings."""
        return ModelConfig(**self.to_config()).network_revision

    @classmethod
    def from_config(cls, config: ModelConfig) -> Architecture:
        """The architecture of an experiment's ``model`` section."""
        return cls(
            config.backbone,
            config.resnet32_variant,
            config.resnet18_stem,
            config.head_init_std,
            config.network_revision,
        )

    def to_config(self) -> dict[str, Any]:
        """The ``model`` section of an experiment config that builds this architecture."""
        section = asdict(self)
        section.pop("network_revision")
        return section

    def check_buildable(self, origin: str) -> None:
        """Raise :class:`ModelFileError` when this code builds another network for these settings
        than the one whose weights the file holds (an older revision; ``origin`` names the file)."""
        current = self._current_revision()
        if self.network_revision != current:
            raise ModelFileError(
                f"{origin} holds revision {self.network_revision} of the {self.backbone} "
                f"'{self.resnet32_variant}' network, this dfcil builds revision {current} "
                "(its ReLU layout changed); retrain the model with this version"
            )

    def build(self, head_sizes: list[int]) -> IncrementalClassifier:
        """A freshly initialised network with heads of ``head_sizes`` (CPU, fp32)."""
        return build_classifier(self, head_sizes)


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: square RGB images of ``size`` pixels, normalised per channel."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class LearningStep:
    """One entry of a model's history: what was learned, when, how, and how well."""

    step: int
    date: str
    classes: list[str]
    method: str
    images: dict[str, int]  # train / held_out / skipped
    metrics: dict[str, Any]  # held-out accuracy etc. (data-free steps see only the new classes' data)
    settings: dict[str, Any] = field(default_factory=dict)  # the method and training options used


@dataclass
class ModelInfo:
    """The metadata of a model file (everything but the weights)."""

    architecture: Architecture
    input: InputSpec
    class_names: list[str]
    head_sizes: list[int]
    history: list[LearningStep]

    def to_json(self) -> str:
        """The JSON stored in the file's header."""
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str, origin: str) -> ModelInfo:
        """Parse and check :meth:`to_json` output (``origin`` names the file in errors)."""
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ModelFileError(f"{origin} is not a dfcil model (format {data.get('format')!r})")
            if data.get("format_version") != FORMAT_VERSION:
                raise ModelFileError(f"{origin}: unsupported dfcil model format version {data.get('format_version')!r}")
            info = cls(
                # files written before revisions were recorded hold revision-1 networks
                architecture=Architecture(**{"network_revision": 1, **data["architecture"]}),
                input=InputSpec(int(data["input"]["size"]), tuple(data["input"]["mean"]), tuple(data["input"]["std"])),
                class_names=[str(name) for name in data["class_names"]],
                head_sizes=[int(size) for size in data["head_sizes"]],
                history=[LearningStep(**step) for step in data["history"]],
            )
        except ModelFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelFileError(f"{origin}: damaged dfcil metadata ({type(error).__name__}: {error})") from None
        try:  # the same check as a config's model section: an unknown backbone or variant is named
            from_dict(ModelConfig, info.architecture.to_config(), "architecture")
        except ConfigError as error:
            raise ModelFileError(f"{origin}: a network this dfcil cannot build ({error})") from None
        info.architecture.check_buildable(origin)
        if not info.head_sizes or min(info.head_sizes) < 1:
            raise ModelFileError(f"{origin}: damaged dfcil metadata (head sizes {info.head_sizes}: "
                                 "every head needs at least one class)")
        if sum(info.head_sizes) != len(info.class_names) or len(set(info.class_names)) != len(info.class_names):
            raise ModelFileError(f"{origin}: damaged dfcil metadata (class names do not match the heads)")
        return info


def save_model(path: Path, info: ModelInfo, weights: dict[str, torch.Tensor]) -> None:
    """Write the model file atomically (a temporary file in the same folder, then a rename)."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in weights.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, save(tensors, metadata={"format": FORMAT, "dfcil": info.to_json()}))


def load_model(path: Path) -> tuple[ModelInfo, IncrementalClassifier]:
    """Read a model file: its metadata and the network (CPU, eval mode).

    Raises :class:`ModelFileError` with a one-line reason for a missing, truncated or foreign
    file, or one whose weights do not fit its own description.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "dfcil" not in metadata:
                raise ModelFileError(f"{path} is a safetensors file but not a dfcil model (no dfcil metadata)")
            info = ModelInfo.from_json(metadata["dfcil"], str(path))
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except ModelFileError:
        raise
    except Exception as error:  # safetensors raises its own error types for foreign or truncated files
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ModelFileError(f"{path} is not a readable dfcil model file (truncated or another format: {reason})") from None
    model = info.architecture.build(info.head_sizes)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ModelFileError(f"{path}: weights do not fit the described architecture ({what})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ModelFileError(f"{path}: weight {name} has shape {tuple(tensor.shape)}, "
                                 f"the architecture needs {tuple(expected[name].shape)}")
    model.load_state_dict(weights)
    model.eval()
    return info, model
