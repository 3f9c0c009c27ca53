"""The run log as TensorBoard events (``runtime.tensorboard: true``), in ``RUN_DIR/tensorboard/``.

A :class:`TensorBoardSink` attached to the run's :class:`dfcil.runlog.RunLog` turns each record of
``log.jsonl`` into events when the record is written (an epoch's end, an evaluation, a logging
window of a generator's training), never inside a training step:

- ``epoch`` -> ``loss/total``, ``loss/<term>`` (each loss term, unweighted), ``loss_weight/<term>``,
  ``train/accuracy``, ``train/lr``, ``train/images_per_s`` and ``train/task``, at the epoch's
  number in the whole run (every phase of every task: 1, 2, ...);
- ``synthesis`` -> ``synthesis/task_<t>/<figure>`` at the generator step (every loss term, the
  total, the old model's confidence and class coverage, tanh saturation, steps/s); ``delegator``
  (SKD) likewise as ``delegator/task_<t>/<figure>`` at the iteration;
- ``eval`` -> ``eval/accuracy``, ``eval/old``, ``eval/new``, ... at the task number, and the task's
  grid of synthetic samples (``synthesis/task_<t>.png``, where a data-free method wrote one) as
  the image ``samples`` at the task number;
- ``phase_eval`` -> ``phase_eval/<phase>/<figure>`` at the task number;
- any other record (``skd_gamma``, ``delegator_check``, ...) -> ``<event>/<figure>`` for each of
  its numbers, at the task number.

The events are a function of the log: when a run starts or resumes, the directory is rebuilt
from the records the log keeps (a resume drops the records of the work it redoes), so a resumed
run shows what an uninterrupted one shows, without the interrupted session's leftovers.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dfcil.errors import ConfigError
from dfcil.rundir import TENSORBOARD_DIR, RunDir

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter

#: The sink's folder in a run directory.

MISSING_PACKAGE = ("runtime.tensorboard: true needs the tensorboard package, which is not installed "
                   "(pip install 'dfcil[tensorboard]', or set runtime.tensorboard=false)")
#: Records whose figures are plotted against their own counter, per task.
STEP_KEYS = {"synthesis": "step", "delegator": "iteration"}
#: Record keys that locate a record rather than measure something.
POSITION_KEYS = frozenset({"event", "task", "phase", "phase_index", "epoch", "epochs", "step", "steps", "iteration"})

Scalar = tuple[str, float, int]  # tag, value, step


def require_tensorboard() -> type[SummaryWriter]:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line :class:`ConfigError` when the
    ``tensorboard`` package is not installed (checked when a run with the sink starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(MISSING_PACKAGE) from None
    return SummaryWriter


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _figures(record: dict[str, Any], prefix: str, step: int) -> list[Scalar]:
    return [(f"{prefix}/{key}", float(value), step) for key, value in record.items()
            if key not in POSITION_KEYS and _number(value)]


def record_scalars(record: dict[str, Any], epoch_number: int) -> list[Scalar]:
    """The TensorBoard scalars of one log record (see the module's docs); ``epoch_number``: how
    many ``epoch`` records the run's log holds up to this one, this one included."""
    event = str(record.get("event"))
    task = int(record.get("task", 0))
    if event == "epoch":
        step = epoch_number
        scalars: list[tuple[str, Any, int]] = [
            ("loss/total", record.get("loss"), step), ("train/accuracy", record.get("train_accuracy"), step),
            ("train/lr", record.get("lr"), step), ("train/images_per_s", record.get("images_per_s"), step),
            ("train/task", task, step)]
        scalars += [(f"loss/{name}", value, step) for name, value in record.get("losses", {}).items()]
        scalars += [(f"loss_weight/{name}", value, step) for name, value in record.get("weights", {}).items()]
        return [(tag, float(value), at) for tag, value, at in scalars if _number(value)]
    if event in STEP_KEYS:
        return _figures(record, f"{event}/task_{task}", int(record[STEP_KEYS[event]]))
    if event == "phase_eval":
        return _figures(record, f"phase_eval/{record.get('phase')}", task)
    return _figures(record, event, task)


class TensorBoardSink:
    """Writes a run log's records as TensorBoard events into ``run_dir/tensorboard/`` (a
    :class:`dfcil.runlog.LogSink`). Replaces what the folder held: attach it to the run's log, which
    passes it every record kept, and the events are rebuilt from them."""

    def __init__(self, run_dir: Path) -> None:
        writer_class = require_tensorboard()
        self.run_dir = run_dir
        self.directory = run_dir / TENSORBOARD_DIR
        shutil.rmtree(self.directory, ignore_errors=True)
        self._writer = writer_class(log_dir=str(self.directory))
        self._epochs = 0

    def write(self, record: dict[str, Any]) -> None:
        """Add the record's scalars (and, at a task's evaluation, its sample grid)."""
        if record.get("event") == "epoch":
            self._epochs += 1
        for tag, value, step in record_scalars(record, self._epochs):
            self._writer.add_scalar(tag, value, step)
        if record.get("event") == "eval":
            self._add_samples(int(record["task"]))
            self._writer.flush()  # a task's figures show up in TensorBoard as the task ends

    def _add_samples(self, task: int) -> None:
        grid = RunDir(self.run_dir).sample_grid(task)
        if grid.is_file():
            with Image.open(grid) as image:
                pixels = np.asarray(image.convert("RGB"))
            self._writer.add_image("samples", pixels, task, dataformats="HWC")

    def close(self) -> None:
        """Write out what is pending and close the event file."""
        self._writer.close()
