"""An experiment resolved once: a config turned into its method, that method's typed options and
its scenario.

:func:`resolve` is the one place that checks what :mod:`dfcil.config` cannot know: that the
``method`` section names a registered method (:mod:`dfcil.methods`, entry points included) with
options it accepts, and that the scenario's split fits the dataset's classes (their number from
:mod:`dfcil.data.registry`). It raises the same one-line :class:`~dfcil.errors.ConfigError` with
the config path as any other config check. Everything after it (``dfcil run``, suites, the engine,
the workflow) takes the :class:`Experiment` and parses nothing again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfcil.config import Config, RuntimeConfig, load_config, parse_config
from dfcil.data.registry import class_count
from dfcil.methods import Method, RunEnv, resolve_method
from dfcil.scenario import Scenario, build_scenario, check_split

if TYPE_CHECKING:
    from dfcil.data import DatasetArrays


@dataclass(frozen=True)
class Experiment:
    """A checked config and what it resolves to; made by :func:`resolve`."""

    config: Config
    method: type[Method]  # the registered class that ``config.method["name"]`` names
    options: Any  # its typed options: an instance of ``method.Options``
    # the scenario over the dataset's classes where the registry knows how many there are;
    # None where only the data tells (imagefolder): see :meth:`scenario_for`
    scenario: Scenario | None

    @property
    def dataset_classes(self) -> int | None:
        """The number of classes of the config's dataset, as the registry knows it (None: the data tells)."""
        return class_count(self.config.data.dataset)

    def scenario_for(self, num_classes: int) -> Scenario:
        """The scenario over a dataset of ``num_classes`` classes: the resolved one where it is over
        that many, else resolved now for them (a folder's classes, a smaller stand-in dataset)."""
        if self.scenario is not None and num_classes == self.dataset_classes:
            return self.scenario
        return build_scenario(self.config.scenario, num_classes)

    def load_data(self) -> tuple[DatasetArrays, Scenario]:
        """The config's dataset as it is on disk (never downloaded, no progress bar) and the
        scenario over it: for tools that read a finished run's data (reports, benchmarks)."""
        from dfcil.data import default_cache_dir, load_dataset, resolve_data_root

        data = self.config.data
        dataset = load_dataset(data.dataset, resolve_data_root(data.root), default_cache_dir(),
                               image_size=data.image_size, progress=False)
        return dataset, self.scenario_for(dataset.num_classes)

    def first_task_classes(self) -> list[int] | None:
        """The original classes of the first task in class order (None: scenario not resolved yet)."""
        if self.scenario is None:
            return None
        first = self.scenario.tasks[0]
        return self.scenario.order[first.start : first.stop]

    def build_method(self, env: RunEnv) -> Method:
        """A new instance of the method, with its options, for the run of ``env``."""
        return self.method(self.options, env)

    def with_runtime(self, runtime: RuntimeConfig) -> Experiment:
        """The same experiment with another ``runtime`` section (which resolves to nothing)."""
        return replace(self, config=replace(self.config, runtime=runtime))


def resolve(config: Config) -> Experiment:
    """Check ``config``'s method section and split, and resolve its method, options and scenario.

    The method section is checked first, then the split (over the registry's class count of the
    dataset; where there is none, only what holds for any number of classes)."""
    method, options = resolve_method(config.method)
    num_classes = class_count(config.data.dataset)
    if num_classes is None:
        check_split(config.scenario, None)
        return Experiment(config, method, options, None)
    return Experiment(config, method, options, build_scenario(config.scenario, num_classes))


def parse_experiment(data: dict[str, Any]) -> Experiment:
    """:func:`resolve` the config of a raw dict (:func:`dfcil.config.parse_config`)."""
    return resolve(parse_config(data))


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """:func:`resolve` a config file with ``KEY=VALUE`` overrides (:func:`dfcil.config.load_config`)."""
    return resolve(load_config(path, overrides))
