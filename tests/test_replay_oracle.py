"""benchmarks/replay_oracle.py: the methods replay real old-class images, and nothing else changes."""

from __future__ import annotations

import json

import pytest
import torch

from dfcil.engine.trainer import Trainer
from dfcil.experiment import parse_experiment

from conftest import coloured_dataset, load_benchmark


def load_script():
    return load_benchmark("replay_oracle")


def _config(method: str):
    return parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": [],
                  "precision": "fp32"},
        "method": {"name": method, "synthesis": {"steps": 2, "batch_size": 8, "log_every": 1},
                   **({"refine_epochs": 1} if method == "rdfcil" else {})},
        "runtime": {"progress": False, "device": "cpu", "num_threads": 1},
    })


@pytest.mark.parametrize("method", ["abd", "rdfcil"])
def test_the_oracle_replays_real_old_class_images_in_place_of_synthetic_ones(method, tmp_path):
    oracle = load_script()
    dataset = coloured_dataset()
    trainer = Trainer(_config(method), tmp_path / method, dataset)
    replay = oracle.RealReplay(trainer.train_data, trainer.normalizer, trainer.device, trainer.env.autocast, 0)
    trainer.method.synthesizer = replay
    drawn: list[torch.Tensor] = []
    generate = replay.generate
    replay.generate = lambda count: drawn.append(generate(count)) or drawn[-1]
    metrics = trainer.run()
    assert metrics["complete"]
    records = [json.loads(line) for line in (tmp_path / method / "log.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["event"] == "synthesis"]  # no generator was trained
    [scored] = [r for r in records if r["event"] == "replay_oracle"]
    assert scored["task"] == 2 and scored["old_classes"] == 2 and scored["old_images"] == 48
    # every replayed image is one of the old classes' (0 and 1) training images, normalised
    old = trainer.normalizer(torch.from_numpy(dataset.train.images[dataset.train.labels < 2]))
    assert drawn and all(len(batch) for batch in drawn)
    for batch in drawn:
        largest_difference = (batch.flatten(1)[:, None] - old.flatten(1)[None]).abs().amax(dim=2)
        assert torch.all(largest_difference.min(dim=1).values == 0)  # the very same pixels
