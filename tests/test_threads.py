"""runtime.num_threads: a fixed count, torch's default, or auto (the cores other processes leave)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfcil.config import ConfigError, parse_config
from dfcil.engine.threads import CpuTimes, ThreadPolicy, read_cpu_times, threads_for


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    """A policy sets torch's process-wide thread count: put it back after each test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_for_rounds_the_free_cores_within_one_and_the_ceiling():
    assert threads_for(2.0, 2) == 2
    assert threads_for(1.0, 2) == 1
    assert threads_for(1.49, 2) == 1 and threads_for(1.5, 2) == 2
    assert threads_for(0.1, 2) == 1  # never below one
    assert threads_for(-3.0, 8) == 1
    assert threads_for(14.2, 8) == 8  # never above torch's default
    assert threads_for(5.6, 8) == 6


def test_cpu_times_are_read_from_proc_stat_and_the_process_own_stat(tmp_path: Path):
    (tmp_path / "self").mkdir()
    # user nice system idle iowait irq softirq steal (clock ticks of 1/100 s)
    (tmp_path / "stat").write_text("cpu  1000 200 300 5000 100 10 20 30 0 0\ncpu0 1 2 3 4 5 6 7 8\n"
                                   "cpu1 100 0 50 900 9 0 0 0 0 0\nintr 5 6\n")
    # pid (comm with ) and spaces) state ... utime is field 14 and stime field 15
    fields = ["S"] + ["0"] * 10 + ["150", "50"] + ["0"] * 30
    (tmp_path / "self" / "stat").write_text("42 (a) b) " + " ".join(fields))
    times = read_cpu_times(tmp_path)
    assert times is not None
    assert times.machine == pytest.approx((1000 + 200 + 300 + 10 + 20 + 30) / 100)  # idle and iowait left out
    assert times.own == pytest.approx((150 + 50) / 100)
    # only the CPUs the process may run on (a container pinned to some of the host's)
    pinned = read_cpu_times(tmp_path, cpus=frozenset({0, 1}))
    assert pinned is not None and pinned.machine == pytest.approx((1 + 2 + 3 + 6 + 7 + 8 + 100 + 50) / 100)
    assert read_cpu_times(tmp_path, cpus=frozenset({1})).machine == pytest.approx(150 / 100)
    assert read_cpu_times(tmp_path, cpus=frozenset({7})) is None  # none of its CPUs listed
    assert read_cpu_times(tmp_path / "missing") is None


class FakeClock:
    """CPU readings made up by the test: ``others`` cores busy besides this process."""

    def __init__(self, others: float) -> None:
        self.others, self.machine, self.own, self.at = others, 0.0, 0.0, 1000.0

    def advance(self, seconds: float, own: float = 1.0) -> None:
        """``seconds`` pass with this process busy on ``own`` cores."""
        self.at += seconds
        self.own += own * seconds
        self.machine += (self.others + own) * seconds

    def __call__(self) -> CpuTimes:
        return CpuTimes(machine=self.machine, own=self.own, at=self.at)


def test_auto_uses_the_cores_that_others_leave_and_follows_them(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    clock = FakeClock(others=1.0)
    policy = ThreadPolicy("auto", cpus=2, reader=clock, interval_s=5.0)
    monkeypatch.setattr("dfcil.engine.threads.time.sleep", lambda s: clock.advance(s, own=0.0))
    assert policy.start() == 1 and torch.get_num_threads() == 1 and policy.adaptive
    clock.others = 0.0  # the competitor stopped
    clock.advance(2.0)
    monkeypatch.setattr("dfcil.engine.threads.time.monotonic", lambda: clock.at)
    assert policy.at_safe_point() == 1  # only every interval_s
    clock.advance(4.0)
    assert policy.at_safe_point() == 2 and torch.get_num_threads() == 2
    clock.others = 0.8  # one mostly busy competitor: 1.2 free cores round to 1
    clock.advance(6.0)
    assert policy.at_safe_point() == 1


def test_auto_never_exceeds_torch_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    clock = FakeClock(others=0.0)
    monkeypatch.setattr("dfcil.engine.threads.time.sleep", lambda s: clock.advance(s, own=0.0))
    assert ThreadPolicy("auto", cpus=8, reader=clock).start() == 1


def test_a_count_is_set_and_none_leaves_torch_alone(monkeypatch):
    assert ThreadPolicy(1).start() == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    policy = ThreadPolicy(None)
    policy.start()
    assert torch.get_num_threads() == 2 and not policy.adaptive


def test_auto_without_proc_keeps_torch_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    policy = ThreadPolicy("auto", reader=lambda: None)
    assert policy.start() == 2 and not policy.adaptive and policy.at_safe_point() == 2


@pytest.mark.skipif(read_cpu_times() is None, reason="no /proc to read the load from")
def test_auto_drops_a_thread_when_a_busy_process_holds_a_core(monkeypatch):
    """The real reading: a CPU-bound process beside us takes (at least most of) one of two cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        assert ThreadPolicy("auto", cpus=2).start(sample_s=1.0) == 1
    finally:
        busy.kill()
        busy.wait()


def test_the_config_takes_a_count_auto_or_null_and_defaults_to_auto():
    assert parse_config({}).runtime.num_threads == "auto"
    assert parse_config({"runtime": {"num_threads": 3}}).runtime.num_threads == 3
    assert parse_config({"runtime": {"num_threads": None}}).runtime.num_threads is None
    for bad in (0, "many"):
        with pytest.raises(ConfigError, match="runtime.num_threads"):
            parse_config({"runtime": {"num_threads": bad}})
