"""One learning step of a deployed model: a first model from a folder, or new classes added to
an existing model with a data-free method that never sees the earlier classes' images.

A step is one task of the experiment engine (:class:`dfcil.engine.trainer.Trainer`): its
scenario has one task per earlier step (the model's heads, no data) and the new task (the
folder's classes). The recipe (``recipe.yaml`` next to this module, or the user's file) gives
the ``seed``, ``data`` augmentation, ``model``, ``train``, ``method`` and ``runtime`` sections.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from dfcil.config import apply_overrides, load_yaml_tree
from dfcil.data.arrays import DatasetArrays, ImageArrays
from dfcil.data.stats import channel_stats
from dfcil.errors import ConfigError, DataError
from dfcil.experiment import Experiment, parse_experiment
from dfcil.models import IncrementalClassifier
from dfcil.scenario import scenario_from_sizes
from dfcil.tensorboard_sink import require_tensorboard
from dfcil.workflow.artifact import Architecture, InputSpec, LearningStep, ModelInfo
from dfcil.workflow.folder import LabelledFolder, read_labelled_folder, report_skipped

logger = logging.getLogger(__name__)

RECIPE = Path(__file__).with_name("recipe.yaml")
#: Input sizes of a first model: the sizes the data-free methods' generators produce.
IMAGE_SIZES = (32, 64, 224)
#: The sections a recipe may have (a step's scenario is the model's heads plus the folder's classes).
_RECIPE_SECTIONS = {"seed", "data", "model", "train", "method", "runtime"}
_RECIPE_DATA_KEYS = {"crop_padding", "flip"}


@dataclass
class LearnOptions:
    """How ``dfcil learn`` trains a step (the recipe file plus command-line choices)."""

    method: str | None = None  # replaces the recipe's method.name (and drops its options)
    recipe: Path | None = None  # default: the packaged recipe.yaml
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE, as `dfcil run --set`
    image_size: int = 32  # first model only; later steps keep the model's
    holdout: float = 0.1  # fraction of each class held out when FOLDER has no test/ split
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    workdir: Path | None = None  # where the step's log, checkpoints and grids go (default: temporary)
    progress: bool = True


@dataclass
class StepResult:
    """What a learning step produced: the new model's metadata and weights."""

    info: ModelInfo
    model: IncrementalClassifier
    step: LearningStep


def build_experiment(options: LearnOptions, image_size: int, architecture: Architecture | None) -> Experiment:
    """The resolved experiment of one step: the recipe, the method choice and overrides, with
    the data section fixed to the folder and (for ``--from``) the model's architecture."""
    if architecture is not None and any(item.strip().startswith("model.") for item in options.overrides):
        raise ConfigError("model.*: the architecture of an existing model is fixed; it cannot be overridden")
    raw = load_yaml_tree(options.recipe or RECIPE)
    unknown = sorted(set(raw) - _RECIPE_SECTIONS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not used by dfcil learn (a recipe has the sections "
                          f"{', '.join(sorted(_RECIPE_SECTIONS))})")
    if options.method is not None:
        raw = apply_overrides(raw, [f"method.name={options.method}"])
    raw = apply_overrides(raw, options.overrides)
    unknown = sorted(set(raw) - _RECIPE_SECTIONS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not used by dfcil learn (each step is one task of the folder's classes)")
    data = raw.get("data") or {}
    bad = sorted(set(data) - _RECIPE_DATA_KEYS)
    if bad:
        hint = " (use --image-size)" if bad[0] == "image_size" else ""
        raise ConfigError(f"data.{bad[0]}: not used by dfcil learn{hint}")
    raw["data"] = {**data, "dataset": "imagefolder", "image_size": image_size}
    if architecture is not None:
        raw["model"] = architecture.to_config()
    elif image_size > 64 and "backbone" not in (raw.get("model") or {}):
        raw.setdefault("model", {})["backbone"] = "resnet18"
    return parse_experiment(raw)


def _step_dataset(folder: LabelledFolder, old_classes: list[str], input_spec: InputSpec) -> DatasetArrays:
    offset = len(old_classes)
    return DatasetArrays(
        name="imagefolder",
        train=ImageArrays(folder.train_images, folder.train_labels + offset),
        test=ImageArrays(folder.held_out_images, folder.held_out_labels + offset),
        class_names=old_classes + folder.class_names,
        mean=input_spec.mean,
        std=input_spec.std,
        source="imagefolder",
    )


def learn_step(data: Path, base: tuple[ModelInfo, IncrementalClassifier] | None,
               options: LearnOptions) -> StepResult:
    """Train a first model on the classes of ``data`` (``base`` None), or add them to ``base``.

    Raises :class:`DataError` for classes the model already knows, empty or unreadable class
    folders, and :class:`ConfigError` for a bad recipe or a method that needs old data.
    """
    from dfcil.engine.trainer import Trainer

    info, model = base if base is not None else (None, None)
    if info is None and options.image_size not in IMAGE_SIZES:
        raise ConfigError(f"--image-size must be one of {', '.join(map(str, IMAGE_SIZES))} "
                          f"(the sizes the data-free methods' generators produce), got {options.image_size}")
    image_size = options.image_size if info is None else info.input.size
    experiment = build_experiment(options, image_size, None if info is None else info.architecture)
    config = experiment.config
    if info is not None and experiment.method.needs_old_data:
        raise ConfigError(f"method {config.method_name!r} needs the earlier classes' images; "
                          f"choose a data-free method (e.g. rdfcil, abd, skd, mfgr) or lwf / finetune")
    if config.runtime.tensorboard:
        require_tensorboard()  # before the folder is decoded
    if info is not None:
        folder_classes = _class_folder_names(data)
        known = sorted(set(folder_classes) & set(info.class_names))
        if known:
            raise DataError(f"class '{known[0]}' is already known to the model ({len(known)} known class folder(s) "
                            f"in {data}); a step adds new classes only: remove or rename those folders")
    folder = read_labelled_folder(data, image_size, holdout=options.holdout, seed=config.seed, strict=options.strict)
    report_skipped(folder.skipped)
    old_classes = [] if info is None else info.class_names
    head_sizes = [] if info is None else info.head_sizes
    if info is None:
        mean, std = channel_stats(folder.train_images)
        input_spec = InputSpec(image_size, mean, std)
    else:
        input_spec = info.input
    dataset = _step_dataset(folder, old_classes, input_spec)
    # one task per earlier step (the model's heads, no data), then the folder's classes
    scenario = scenario_from_sizes([*head_sizes, len(folder.class_names)])
    experiment = experiment.with_runtime(replace(config.runtime, progress=options.progress))
    config = experiment.config
    started = time.perf_counter()
    scratch = (contextlib.nullcontext(str(options.workdir)) if options.workdir is not None
               else tempfile.TemporaryDirectory(prefix="dfcil-learn-"))
    with scratch as workdir_name:
        workdir = Path(workdir_name)
        trainer = Trainer(experiment, workdir, dataset, scenario=scenario, start_task=len(head_sizes))
        if model is not None:
            trainer.load_model(head_sizes, model.state_dict())
        trainer.run()
        evaluation = trainer.results.evaluations[-1]
        trained = trainer.model
    seconds = time.perf_counter() - started
    new_names = folder.class_names
    per_class = evaluation.per_class[len(old_classes):]
    step = LearningStep(
        step=(0 if info is None else len(info.history)) + 1,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=new_names,
        method=config.method_name if info is not None else f"{config.method_name} (first model: cross-entropy)",
        images={"train": int(len(folder.train_labels)), "held_out": int(len(folder.held_out_labels)),
                "skipped": len(folder.skipped)},
        metrics={
            "held_out_accuracy": round(float(evaluation.accuracy), 2),
            "held_out_accuracy_per_class": {name: None if acc is None else round(float(acc), 2)
                                            for name, acc in zip(new_names, per_class)},
            "seconds": round(seconds, 1),
            "note": "held-out images of this step's classes only (earlier classes' data is not available)",
        },
        settings={"seed": config.seed, "train": asdict(config.train), "method": config.method,
                  "data": {"crop_padding": config.data.crop_padding, "flip": config.data.flip}},
    )
    trained = trained.to("cpu").eval()
    architecture = Architecture.from_config(config.model)
    new_info = ModelInfo(
        architecture=architecture,
        input=input_spec,
        class_names=old_classes + new_names,
        head_sizes=list(trained.head_sizes),
        history=([] if info is None else list(info.history)) + [step],
    )
    logger.info("learned %d class(es) in %.0f s: held-out accuracy %.2f %% on them",
             len(new_names), seconds, evaluation.accuracy)
    return StepResult(new_info, trained, step)


def _class_folder_names(data: Path) -> list[str]:
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"image folder {data} does not exist or is not a folder")
    base = data / "train" if (data / "train").is_dir() and (data / "test").is_dir() else data
    return [p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
