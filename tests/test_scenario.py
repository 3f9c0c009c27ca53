"""Class orders (bit-for-bit with the published code) and task splits."""

import numpy as np
import pytest

from dfcil.config import ScenarioConfig
from dfcil.errors import ConfigError
from dfcil.scenario import Task, build_scenario, class_order, scenario_from_sizes


@pytest.mark.parametrize("seed, start", [(0, [23, 8, 11, 7, 48]), (1, [53, 37, 65, 51, 4]), (2, [0, 76, 61, 63, 1])])
def test_abd_orders(seed, start):
    assert class_order(ScenarioConfig(order="abd", order_seed=seed), 100)[:5] == start


def test_icarl_order_default_seed_1993():
    assert class_order(ScenarioConfig(order="icarl"), 100)[:6] == [68, 56, 78, 8, 23, 84]


def test_identity_and_explicit():
    assert class_order(ScenarioConfig(order="identity"), 10) == list(range(10))
    assert class_order(ScenarioConfig(order="explicit", class_order=[3, 1, 2, 0]), 4) == [3, 1, 2, 0]
    with pytest.raises(ConfigError, match="repeated"):
        class_order(ScenarioConfig(order="explicit", class_order=[1, 1]), 4)
    with pytest.raises(ConfigError, match="outside"):
        class_order(ScenarioConfig(order="explicit", class_order=[9]), 4)


def test_b0_and_b50_splits():
    b0 = build_scenario(ScenarioConfig(num_tasks=5), 100)
    assert [t.num_new for t in b0.tasks] == [20] * 5
    b50 = build_scenario(ScenarioConfig(num_tasks=11, base_classes=50), 100)
    assert [t.num_new for t in b50.tasks] == [50] + [5] * 10
    assert b50.tasks[3].num_old == 60 and b50.tasks[3].num_seen == 65
    assert b50.offsets[:3] == [0, 50, 55]


def test_subset_and_remap():
    scenario = build_scenario(ScenarioConfig(order="abd", order_seed=0, subset=20, num_tasks=4), 100)
    assert scenario.order[:5] == [23, 8, 11, 7, 48] and len(scenario.order) == 20
    labels = np.array([23, 8, 99, 48])
    remapped = scenario.remap(labels)
    assert remapped[0] == 0 and remapped[1] == 1 and remapped[3] == 4
    assert remapped[2] == (scenario.order.index(99) if 99 in scenario.order else -1)
    assert list(scenario.class_to_task()[:6]) == [0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize(
    "kwargs, classes, message",
    [
        ({"num_tasks": 3}, 20, "cannot be split into 3 equal tasks"),
        ({"num_tasks": 30}, 20, "30 tasks for only 20 classes"),
        ({"num_tasks": 1, "base_classes": 10}, 20, "needs at least one more task"),
        ({"num_tasks": 4, "base_classes": 10}, 20, "cannot be split into 3 equal tasks"),
    ],
)
def test_impossible_splits(kwargs, classes, message):
    with pytest.raises(ConfigError, match=message):
        build_scenario(ScenarioConfig(**kwargs), classes)


def test_a_scenario_from_class_sizes():
    scenario = scenario_from_sizes([3, 2, 4])
    assert scenario.order == list(range(9)) and scenario.offsets == [0, 3, 5, 9]
    assert scenario.tasks[1] == Task(index=1, start=3, stop=5)
    assert scenario_from_sizes([2, 1], [7, 3, 5]).order == [7, 3, 5]
    with pytest.raises(ValueError, match="2 classes in the order, 3 in the tasks"):
        scenario_from_sizes([2, 1], [7, 3])
