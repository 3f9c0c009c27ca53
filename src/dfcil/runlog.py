"""The per-epoch ``log.jsonl`` of a run, rewritten atomically on every append, and the sinks
that also receive its records (e.g. :class:`dfcil.tensorboard_sink.TensorBoardSink`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from dfcil.atomic import write_text


class LogSink(Protocol):
    """Another destination of a run log's records."""

    def write(self, record: dict[str, Any]) -> None:
        """Take one record (called in log order)."""

    def close(self) -> None:
        """Finish writing (the run's session ends)."""


class RunLog:
    """JSON-lines log; each append atomically rewrites the (small) file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.exists():
            self.records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self._sinks: list[LogSink] = []

    def append(self, record: dict[str, Any]) -> None:
        """Add one record (and pass it to the attached sinks)."""
        self.records.append(record)
        self._write()
        for sink in self._sinks:
            sink.write(record)

    def attach(self, sink: LogSink) -> None:
        """Pass the records kept so far, then every record appended, to ``sink`` too. Attach after
        :meth:`truncate_after`: a sink cannot take records back."""
        for record in self.records:
            sink.write(record)
        self._sinks.append(sink)

    def close(self) -> None:
        """Close and detach the attached sinks."""
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()

    def truncate_after(self, position: Any) -> None:
        """Drop records written after the checkpoint ``position`` (they will be redone)."""
        if self._sinks:
            raise RuntimeError("truncate_after with sinks attached: attach them after truncating")
        kept = []
        for record in self.records:
            if record.get("event") == "epoch":
                task = record["task"] - 1
                later = task > position.task or (
                    task == position.task
                    and not position.task_done
                    and (record["phase_index"], record["epoch"]) > (position.phase, position.epoch)
                )
            elif record.get("event") == "phase_eval":  # written after the phase's last checkpoint
                task = record["task"] - 1
                later = task > position.task or (
                    task == position.task and not position.task_done and record["phase_index"] >= position.phase
                )
            elif record.get("event") == "eval":
                task = record["task"] - 1
                later = task > position.task or (task == position.task and not position.task_done)
            elif record.get("finish_task"):  # a method's finish_task: after the task's last epoch checkpoint
                task = record["task"] - 1
                later = task > position.task or (task == position.task and not position.task_done)
            elif "task" in record:  # e.g. synthesis records, written before the task's first epoch
                task = record["task"] - 1
                later = task > position.task or (
                    # inside the task's preparation: only the records of the steps done are kept
                    task == position.task and not position.task_done and position.preparing is not None
                    and record.get("step", record.get("iteration", math.inf)) > position.preparing
                )
            else:
                later = False
            if not later:
                kept.append(record)
        if len(kept) != len(self.records):
            self.records = kept
            self._write()

    def _write(self) -> None:
        write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records))
