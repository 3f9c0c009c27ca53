"""The per-epoch ``log.jsonl`` of a run, rewritten atomically on every append."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dfcil.atomic import write_text


class RunLog:
    """JSON-lines log; each append atomically rewrites the (small) file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.exists():
            self.records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        """Add one record."""
        self.records.append(record)
        self._write()

    def truncate_after(self, position: Any) -> None:
        """Drop records written after the checkpoint ``position`` (they will be redone)."""
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
