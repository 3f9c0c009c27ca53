"""Experiment suites: a grid of runs (methods x protocols x seeds, any config key as an axis).

A suite file::

    name: mini
    config: ../configs/mini.yaml        # base config, relative to the suite file
    set: {method.synthesis.steps: 300}  # optional overrides for every run (skipped where the
                                        # run's method has no such option: see below)
    axes:
      method:                           # labelled points: label -> overrides (may switch `config`)
        lwf: {method.name: lwf}
        rdfcil: {method.name: rdfcil, method.refine_epochs: 5}
      seed: [0, 1, 2]                   # a list: the axis name is the config key

Every point of the product is one run directory ``<out>/<axis>-<label>__<axis>-<label>...``
(with a ``suite.json`` naming its labels). Running the suite again skips complete runs and
resumes interrupted ones, so a suite killed halfway finishes by running the same command again.
``joint`` runs (the upper bound) go first, and every other run with the same labels on the other
axes gets ``runtime.upper_bound`` for Omega. Runs are separate ``dfcil run`` processes; ``jobs``
of them at once; a failed run is reported and does not stop the others.

Complete runs made elsewhere (e.g. by ``benchmarks/run_mini.py``) can be adopted instead of being
run again: :func:`adopt_runs` copies a run directory into the suite when its config has the same
fingerprint as a suite run's (everything but ``runtime``), and records where it came from.

The package has three parts: :mod:`dfcil.suite.grid` (the suite file and its runs),
:mod:`dfcil.suite.status` (where every run stands, the time left) and
:mod:`dfcil.suite.execute` (adopting complete runs, the ``dfcil run`` processes).
"""

from __future__ import annotations

from dfcil.rundir import SUITE_FILE, run_state
from dfcil.suite.execute import adopt_runs, command_for, execute_suite, threads_per_job
from dfcil.suite.grid import Suite, SuiteRun, load_suite, select_runs
from dfcil.suite.status import TimeLeft, estimate_time_left, run_progress, status_table

__all__ = [
    "SUITE_FILE",
    "Suite",
    "SuiteRun",
    "TimeLeft",
    "adopt_runs",
    "command_for",
    "estimate_time_left",
    "execute_suite",
    "load_suite",
    "run_progress",
    "run_state",
    "select_runs",
    "status_table",
    "threads_per_job",
]
