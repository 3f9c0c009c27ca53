"""Using a model file: class probabilities of images, and evaluation on a labelled folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfcil.augment import Normalizer
from dfcil.data.images import Geometry
from dfcil.errors import DataError
from dfcil.models import IncrementalClassifier
from dfcil.workflow.artifact import ModelInfo
from dfcil.workflow.folder import Skipped, decode_paths, list_class_folders


@torch.no_grad()
def class_probabilities(info: ModelInfo, model: IncrementalClassifier, images: np.ndarray,
                        batch_size: int = 256) -> torch.Tensor:
    """Softmax over all known classes (float32, CPU) of uint8 (N, S, S, 3) ``images``."""
    normalizer = Normalizer(info.input.mean, info.input.std, channels_last=False)
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        outputs.append(torch.softmax(model(normalizer(batch)).logits.float(), dim=1).cpu())
    if not outputs:
        return torch.empty(0, len(info.class_names))
    return torch.cat(outputs)


@dataclass
class Prediction:
    """The top classes of one image, most probable first."""

    path: str
    classes: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"path": self.path, "top": [{"class": c, "probability": round(p, 6)}
                                           for c, p in zip(self.classes, self.probabilities)]}


def predict_files(info: ModelInfo, model: IncrementalClassifier, paths: list[Path], top: int = 5,
                  strict: bool = False) -> tuple[list[Prediction], list[Skipped]]:
    """Top-``top`` classes of every readable file of ``paths`` (unreadable ones are returned
    as skipped, or raise with ``strict``)."""
    if top < 1:
        raise DataError(f"--top must be >= 1, got {top}")
    decoded = decode_paths(paths, Geometry.square(info.input.size), strict)
    probabilities = class_probabilities(info, model, decoded.images)
    k = min(top, len(info.class_names))
    values, indices = probabilities.topk(k, dim=1) if len(probabilities) else (torch.empty(0, k), torch.empty(0, k))
    predictions = [
        Prediction(str(path), [info.class_names[int(i)] for i in row_indices], [float(v) for v in row_values])
        for path, row_values, row_indices in zip(decoded.paths, values, indices)
    ]
    return predictions, decoded.skipped


@dataclass
class Evaluation:
    """Accuracy of a model on a labelled folder: overall, per class, per learning step."""

    accuracy: float
    images: int
    per_class: dict[str, float]
    per_step: list[dict[str, Any]]
    confusion: np.ndarray  # rows: true class, columns: predicted class (the evaluated classes' order)
    class_names: list[str]  # the evaluated classes, in the model's label order
    skipped: list[Skipped]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the confusion matrix's image)."""
        return {
            "accuracy": round(self.accuracy, 2),
            "images": self.images,
            "per_class": {name: round(acc, 2) for name, acc in self.per_class.items()},
            "per_step": self.per_step,
            "confusion_classes": self.class_names,
            "confusion": self.confusion.tolist(),
            "skipped": [vars(s) for s in self.skipped],
        }


def evaluate_folder(info: ModelInfo, model: IncrementalClassifier, root: Path, strict: bool = False) -> Evaluation:
    """Evaluate on ``root/<class>/<images>`` (or ``root/test/<class>/...`` when it has one).

    Every class folder must name a class the model knows; the model predicts among all its
    classes (not only those present)."""
    root = Path(root)
    base = root / "test" if (root / "test").is_dir() else root
    folders = list_class_folders(base)
    unknown = sorted(set(folders) - set(info.class_names))
    if unknown:
        raise DataError(f"class folder '{unknown[0]}' in {base} is not a class of the model "
                        f"({len(unknown)} unknown; known: {', '.join(info.class_names[:10])}"
                        f"{', ...' if len(info.class_names) > 10 else ''})")
    position = {name: index for index, name in enumerate(info.class_names)}
    names = sorted(folders, key=position.__getitem__)
    paths = [path for name in names for path in folders[name]]
    owner = {path: position[name] for name in names for path in folders[name]}
    decoded = decode_paths(paths, Geometry.square(info.input.size), strict)
    if not decoded.paths:
        raise DataError(f"no readable image in {base}")
    labels = np.asarray([owner[p] for p in decoded.paths])
    predictions = class_probabilities(info, model, decoded.images).argmax(dim=1).numpy()
    per_class = {info.class_names[c]: 100.0 * float(np.mean(predictions[labels == c] == c))
                 for c in sorted(set(labels.tolist()))}
    per_step = []
    start = 0
    for step, size in zip(info.history, info.head_sizes):
        members = (labels >= start) & (labels < start + size)
        per_step.append({
            "step": step.step, "classes": size, "images": int(members.sum()),
            "accuracy": None if not members.any() else round(100.0 * float(np.mean(predictions[members] == labels[members])), 2),
        })
        start += size
    present = [position[name] for name in names]
    lookup = np.full(len(info.class_names), len(present), dtype=np.int64)  # last column: other classes
    lookup[present] = np.arange(len(present))
    confusion = np.zeros((len(present), len(present) + 1), dtype=np.int64)
    np.add.at(confusion, (lookup[labels], lookup[predictions]), 1)
    if not confusion[:, -1].any():
        confusion = confusion[:, :-1]
    return Evaluation(
        accuracy=100.0 * float(np.mean(predictions == labels)),
        images=int(len(labels)),
        per_class=per_class,
        per_step=per_step,
        confusion=confusion,
        class_names=names,
        skipped=decoded.skipped,
    )


def plot_confusion(evaluation: Evaluation, path: Path, title: str) -> None:
    """Write the confusion matrix (row-normalised, %) as a PNG, atomically."""
    from dfcil.report.plots import new_figure, save_figure, tight_layout

    counts = evaluation.confusion.astype(np.float64)
    rates = 100.0 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    columns = list(evaluation.class_names) + (["(other)"] if counts.shape[1] > counts.shape[0] else [])
    n = len(evaluation.class_names)
    side = min(24.0, 3.0 + 0.35 * max(n, 4))
    figure = new_figure(side + 1.5, side)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7 if n > 30 else 9)
    axes.set_yticks(range(n), evaluation.class_names, fontsize=7 if n > 30 else 9)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"{title}\naccuracy {evaluation.accuracy:.2f} % on {evaluation.images} images")
    if n <= 30:
        for row in range(rates.shape[0]):
            for col in range(rates.shape[1]):
                if counts[row, col]:
                    axes.text(col, row, f"{rates[row, col]:.0f}", ha="center", va="center", fontsize=7,
                              color="white" if rates[row, col] > 50 else "black")
    figure.colorbar(image, ax=axes, label="% of the true class")
    tight_layout(figure)
    save_figure(figure, path)
