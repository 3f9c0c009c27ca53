"""An experiment is resolved once: method class, typed options and scenario from one config."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfcil.config import RuntimeConfig, parse_config
from dfcil.errors import ConfigError
from dfcil.experiment import load_experiment, parse_experiment, resolve
from dfcil.methods.lwf import LwF
from dfcil.scenario import build_scenario

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_a_config_resolves_to_its_method_options_and_scenario():
    experiment = load_experiment(CONFIGS / "cifar100" / "b0_n5.yaml", ["method.name=lwf", "method.temperature=4"])
    assert experiment.method is LwF and isinstance(experiment.options, LwF.Options)
    assert experiment.options.temperature == 4
    assert experiment.dataset_classes == 100
    assert experiment.scenario == build_scenario(experiment.config.scenario, 100)
    assert experiment.scenario_for(100) is experiment.scenario  # not built again
    assert experiment.first_task_classes() == experiment.scenario.order[:20]
    # a stand-in dataset of another size gets the scenario over its own classes
    assert experiment.scenario_for(50) == build_scenario(experiment.config.scenario, 50)


def test_a_dataset_whose_data_tells_its_classes_resolves_its_scenario_later():
    experiment = parse_experiment({"data": {"dataset": "imagefolder"}, "scenario": {"order": "identity", "num_tasks": 2}})
    assert experiment.scenario is None and experiment.dataset_classes is None
    assert experiment.first_task_classes() is None
    assert [t.num_new for t in experiment.scenario_for(6).tasks] == [3, 3]
    with pytest.raises(ConfigError, match="5 classes cannot be split into 2 equal tasks"):
        experiment.scenario_for(5)
    with pytest.raises(ConfigError, match="scenario.num_tasks: 3 tasks for only 2 classes"):
        parse_experiment({"data": {"dataset": "imagefolder"}, "scenario": {"num_tasks": 3, "subset": 2}})


def test_the_config_alone_checks_no_method_and_no_split():
    data = {"method": {"name": "nope"}, "scenario": {"num_tasks": 7}}
    assert parse_config(data).method == {"name": "nope"}
    with pytest.raises(ConfigError, match=r"^method.name: unknown method 'nope' \(known: "):
        resolve(parse_config(data))  # the method section first, then the split
    with pytest.raises(ConfigError, match=r"^scenario: 100 classes cannot be split into 7 equal tasks \(B0\)$"):
        parse_experiment({"scenario": {"num_tasks": 7}})


def test_runtime_changes_resolve_to_nothing_new():
    experiment = parse_experiment({"method": {"name": "lwf"}})
    quiet = experiment.with_runtime(RuntimeConfig(progress=False))
    assert quiet.config.runtime.progress is False and quiet.config.train == experiment.config.train
    assert quiet.method is experiment.method and quiet.scenario is experiment.scenario
