"""The Python face of the workflow: ``dfcil.learn``, ``dfcil.load`` and :class:`Model`.

Example::

    import dfcil
    model = dfcil.learn("photos/first-classes")            # a first model
    model.save("model.safetensors")
    model = dfcil.load("model.safetensors")
    model = model.learn("photos/new-classes", method="rdfcil")   # data-free: earlier images not needed
    model.save("model.safetensors")
    for p in model.predict(["cat.jpg"], top=3):
        print(p.path, p.classes, p.probabilities)
    print(model.evaluate("photos/test-all-classes").accuracy)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfcil.models import IncrementalClassifier
from dfcil.workflow.artifact import LearningStep, ModelInfo, load_model, save_model
from dfcil.workflow.folder import collect_image_paths, report_skipped
from dfcil.workflow.inference import Evaluation, Prediction, evaluate_folder, predict_files
from dfcil.workflow.learn import LearnOptions, learn_step


class Model:
    """A deployed classifier: the network plus its self-description (classes, input, history)."""

    def __init__(self, info: ModelInfo, network: IncrementalClassifier) -> None:
        self.info = info
        self.network = network.eval()

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(self.info.class_names)

    @property
    def history(self) -> list[LearningStep]:
        """The learning steps that made this model, oldest first."""
        return list(self.info.history)

    def save(self, path: str | Path) -> None:
        """Write the model file (safetensors + JSON metadata) atomically."""
        save_model(Path(path), self.info, self.network.state_dict())

    def learn(self, data: str | Path, method: str | None = None, **options: Any) -> Model:
        """A new model that also knows the classes of the image folder ``data`` (which must all
        be new), learned with a data-free ``method`` (default: the recipe's, rdfcil).
        ``options``: the fields of :class:`~dfcil.workflow.learn.LearnOptions`."""
        result = learn_step(Path(data), (self.info, self.network), LearnOptions(method=method, **options))
        return Model(result.info, result.model)

    def predict(self, images: list[str | Path] | str | Path, top: int = 5, strict: bool = False) -> list[Prediction]:
        """Top-``top`` classes of image files (or folders of them); unreadable files are
        reported on stderr and skipped unless ``strict``."""
        items = [images] if isinstance(images, (str, Path)) else list(images)
        predictions, skipped = predict_files(self.info, self.network, collect_image_paths([Path(i) for i in items]),
                                             top, strict)
        report_skipped(skipped)
        return predictions

    def evaluate(self, data: str | Path, strict: bool = False) -> Evaluation:
        """Accuracy on a labelled image folder: overall, per class and per learning step."""
        return evaluate_folder(self.info, self.network, Path(data), strict)


def load(path: str | Path) -> Model:
    """Read a model file written by :meth:`Model.save` or ``dfcil learn`` (no code is executed)."""
    info, network = load_model(Path(path))
    return Model(info, network)


def learn(data: str | Path, method: str | None = None, **options: Any) -> Model:
    """A first model trained on the classes of the image folder ``data``."""
    result = learn_step(Path(data), None, LearnOptions(method=method, **options))
    return Model(result.info, result.model)
