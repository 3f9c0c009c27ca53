"""Run directories: create or resume one, check it belongs to the config, record provenance."""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from dfcil import __version__
from dfcil.atomic import write_json, write_text
from dfcil.config import Config, apply_overrides, config_to_dict, fingerprint, first_difference, without_runtime
from dfcil.data import data_root, default_cache_dir, load_dataset
from dfcil.distributed import SINGLE, Distributed
from dfcil.engine import checkpoint as ckpt
from dfcil.errors import ConfigError, RunDirError
from dfcil.experiment import Experiment, load_experiment, parse_experiment
from dfcil.methods import METHODS
from dfcil.precision import fast_bf16_available
from dfcil.rundir import CONFIG_FILE, RUN_FILE, RunDir
from dfcil.runlock import hold_run_lock
from dfcil.scenario import Scenario
from dfcil.tensorboard_sink import require_tensorboard

logger = logging.getLogger(__name__)


def git_commit(path: Path) -> str | None:
    """Commit of the git checkout containing ``path``, or None.

    ``+dirty`` is appended when tracked files under ``path`` (the package's source) differ from
    that commit; results files elsewhere in the checkout do not count.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=path, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else None."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_description(device: str) -> dict[str, Any]:
    """What the run ran on (with the CPU model and whether it has native bf16, which decides
    ``train.precision: auto`` and the speed on a CPU)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_native_bf16": fast_bf16_available(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available() and device != "cpu":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def default_run_dir(config_path: Path | None, config: Config) -> Path:
    """``runs/<config>-<method>-<seed>-<timestamp>`` under the current directory."""
    stem = config_path.stem if config_path else "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stem}-{config.method_name}-s{config.seed}-{stamp}"


def load_upper_bound(path: str | None) -> dict[str, Any] | None:
    """The ``metrics.json`` of a complete ``joint`` run (a run directory or the file itself)."""
    if path is None:
        return None
    file = Path(path)
    if file.is_dir():
        file = RunDir(file).metrics
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"runtime.upper_bound: cannot read {file}: {error}") from None
    method = METHODS.get(str(data.get("method")))
    if method is None or not method.upper_bound or not data.get("complete"):
        raise ConfigError(f"runtime.upper_bound: {file} is not the result of a complete joint run")
    return data


def prepare(
    config_path: Path | None, run_dir: Path | None, overrides: list[str], resume: Path | None
) -> tuple[Experiment, Path, ckpt.Checkpoint | None]:
    """Resolve the experiment and run directory of ``dfcil run``; refuse mismatched resumes."""
    if resume is not None:
        saved_file = resume / CONFIG_FILE
        if not saved_file.exists():
            raise RunDirError(f"{resume} is not a dfcil run directory (no {CONFIG_FILE})")
        saved = load_experiment(saved_file).config  # checked whole, as the requested one
        if config_path is not None:
            experiment = load_experiment(config_path, overrides)
        else:
            experiment = parse_experiment(apply_overrides(config_to_dict(saved), overrides))
        config = experiment.config
        if fingerprint(config) != fingerprint(saved):
            diff = first_difference(without_runtime(saved), without_runtime(config), ("in the run directory", "requested"))
            raise RunDirError(f"refusing to resume {resume} with a different config ({diff})")
        return experiment, resume, ckpt.load(resume, config)
    if config_path is None:
        raise ConfigError("dfcil run: give a CONFIG file or --resume RUN_DIR")
    experiment = load_experiment(config_path, overrides)
    run_dir = run_dir or default_run_dir(config_path, experiment.config)
    if (run_dir / CONFIG_FILE).exists():
        raise RunDirError(f"{run_dir} already holds a run: continue it with `dfcil run --resume {run_dir}` or choose another -o")
    return experiment, run_dir, None


def execute(experiment: Experiment, run_dir: Path, checkpoint: ckpt.Checkpoint | None,
            dist: Distributed = SINGLE, first_task_from: Path | None = None) -> dict[str, Any]:
    """Load data, write the run's config and provenance, train, and return the metrics.

    ``first_task_from``: a new run starts at task 2 from that run's first task
    (:mod:`dfcil.first_task`; checked to be the same first task).

    In a multi-process run (``dist``) rank 0 writes ``run_dir``; the other ranks train into a
    scratch directory that is deleted at the end.  Rank 0 holds the run directory's lock
    (:mod:`dfcil.runlock`) throughout: a second process on the same directory stops at once."""
    if experiment.config.runtime.tensorboard:
        require_tensorboard()  # before anything is loaded or written
    if dist.is_main:
        with hold_run_lock(run_dir):
            return _execute(experiment, run_dir, checkpoint, dist, first_task_from)
    with tempfile.TemporaryDirectory(prefix=f"dfcil-rank{dist.rank}-") as scratch:
        return _execute(experiment, Path(scratch), checkpoint, dist, first_task_from)


def _execute(experiment: Experiment, run_dir: Path, checkpoint: ckpt.Checkpoint | None, dist: Distributed,
             first_task_from: Path | None = None) -> dict[str, Any]:
    from dfcil.engine.trainer import Trainer
    from dfcil.first_task import adopt_first_task

    config = experiment.config
    metrics_file = RunDir(run_dir).metrics
    if checkpoint is not None and metrics_file.exists():
        done = json.loads(metrics_file.read_text())
        if done.get("complete"):
            logger.info("%s is already complete", run_dir)
            return done
    upper = load_upper_bound(config.runtime.upper_bound)
    root, default_root = data_root(config.data.root)
    # no data root given: CIFAR-100 is fetched into the default data directory on first use
    download = config.data.download or (default_root and config.data.dataset == "cifar100")

    def load() -> Any:
        return load_dataset(
            config.data.dataset, root, default_cache_dir(), image_size=config.data.image_size,
            download=download, progress=config.runtime.progress and dist.is_main,
        )

    # rank 0 decodes (and caches) the data first; the others then read its cache
    dataset = load() if dist.is_main else None
    dist.barrier()
    if dataset is None:
        dataset = load()
    scenario: Scenario | None = None  # None: the engine takes the experiment's over the data
    upper_bound: list[float] | None = None
    if upper is not None:  # checked against the scenario over the data before the engine starts
        scenario = experiment.scenario_for(dataset.num_classes)
        upper_bound = _upper_accuracies(upper, scenario)
    trainer = Trainer(experiment, run_dir, dataset, upper_bound=upper_bound, scenario=scenario, dist=dist)
    adopted = False
    if checkpoint is None and first_task_from is not None:
        checkpoint = adopt_first_task(first_task_from, trainer)
        adopted = True
    if not dist.is_main:
        return trainer.run(resume=checkpoint)
    if checkpoint is None or adopted:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    run_file = run_dir / RUN_FILE
    sessions = _sessions(run_file)
    sessions.append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "commit": git_commit(Path(__file__).resolve().parent),
            "dfcil": __version__,
            "machine": machine_description(str(trainer.device)),
            "device": str(trainer.device),
            "precision": trainer.env.precision,
            "data": dataset.source,
            "resumed_from": None if checkpoint is None or adopted else vars(checkpoint.position),
            "processes": dist.world_size,
        }
    )
    if adopted:
        assert first_task_from is not None and checkpoint is not None  # adopted above
        donor_sessions = _sessions(first_task_from / RUN_FILE)
        sessions[-1]["first_task_from"] = {
            "run_dir": str(first_task_from.resolve()),
            "commit": donor_sessions[0].get("commit") if donor_sessions else None,
            "wall_time_s": checkpoint.wall_time_s,
        }
    write_json(run_file, {"fingerprint": fingerprint(config), "sessions": sessions})
    logger.info("%s %s", "resuming" if checkpoint is not None and not adopted else "run directory", run_dir)
    return trainer.run(resume=checkpoint)


def _sessions(run_file: Path) -> list[dict[str, Any]]:
    """The ``sessions`` of a ``run.json`` (none when the file does not exist)."""
    if not run_file.exists():
        return []
    return json.loads(run_file.read_text()).get("sessions", [])


def _upper_accuracies(upper: dict[str, Any], scenario: Scenario) -> list[float]:
    """The upper bound's accuracy after each task, checked to be over ``scenario``'s order and split."""
    tasks = [scenario.order[t.start : t.stop] for t in scenario.tasks]
    if upper.get("class_order") != scenario.order or upper.get("tasks") != tasks:
        raise ConfigError("runtime.upper_bound: that joint run used a different class order or split")
    return [float(a) for a in upper["accuracy_per_step"]]
