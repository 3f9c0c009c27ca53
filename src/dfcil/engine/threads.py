"""How many CPU threads torch uses: a fixed count, or ``auto``, which follows the CPU left free.

Why ``auto`` exists. torch runs each operator's CPU kernel as an OpenMP parallel region that ends
in a barrier: every thread must finish its share before the next operator starts. When another
process holds one of the cores, the thread that shares that core gets it only every few
milliseconds (the scheduler's time slice), and every barrier waits for it. A step of ResNet-32 is
hundreds of operators, so the step pays hundreds of waits. Measured on a 2-core CPU (AMD EPYC,
bf16 autocast, mini config's first task, 1000 images an epoch; ``benchmarks/under_load.py``, table
in ``benchmarks/results/under_load.md``), epoch seconds quiet -> with one CPU-bound process beside:

* batch 32: 2 threads 4.47 -> 12.13 s (the same 3.2x when the process starts mid-run), 1 thread
  5.18 -> 6.12 s, ``auto`` 3.78 -> 5.90 s (it chose 2 threads quiet, 1 loaded);
* batch 128: 2 threads 2.85 -> 9.75 s, 1 thread 5.02 -> 5.17 s, ``auto`` 3.47 -> 5.29 s.

The smaller the operators, the larger the collapse (an earlier measurement on the smoke config's
tiny epochs saw 40-60x). A single ResNet-32 training step at batch 32 measured alone: 90 ms quiet
with 2 threads, 590 ms loaded, 174 ms for 1 thread loaded.

``OMP_WAIT_POLICY=PASSIVE`` does not cure it (that step: 457 ms), because the waiting is for the
descheduled thread, not spinning. What does is to use no more threads than there are cores
left free. ``auto`` measures, from ``/proc/stat`` (the CPUs the process may run on) and
``/proc/self/stat``, the CPU time the
*other* processes of the machine used since the last measurement, and sets torch's threads to the
cores they left (at least one, at most torch's own default, which honours ``OMP_NUM_THREADS``).
It decides when training starts (from a short sample) and again every few seconds, between two
training steps or two generator / delegator steps, so a run slows in proportion to the CPU it
gets, whenever the competition starts or stops.

The price: the thread count changes how a kernel splits its reductions, so a run's last bits
depend on the load it met (like running on another machine). A run that must be reproduced bit
for bit, and the exact-resume guarantee, need a fixed ``runtime.num_threads``. Where there is no
``/proc`` (not Linux), ``auto`` keeps torch's default.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

ThreadSetting = int | Literal["auto"] | None
TORCH_DEFAULT_THREADS = torch.get_num_threads()  # before anything here sets it
# seconds between two decisions; the first one samples this long before training starts
DECISION_INTERVAL_S = 5.0
START_SAMPLE_S = 0.25


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU seconds: all CPUs busy (``machine``) and this process (``own``)."""

    machine: float
    own: float
    at: float  # time.monotonic() of the reading


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100


def read_cpu_times(proc: Path = Path("/proc"), cpus: frozenset[int] | None = None) -> CpuTimes | None:
    """Read the busy CPU time of ``cpus`` (the CPUs this process may run on; all when None) and
    this process's own from ``proc`` (None without it).

    Only the CPUs the process may use count: in a container pinned to 2 of a host's 64 CPUs,
    ``/proc/stat`` shows the whole host, whose other work does not compete with this process.
    Busy is every column but idle and iowait (user, nice, system, irq, softirq, steal); niced
    processes count, since with the kernel's per-session groups a niced process of another
    session still gets its session's full share."""
    try:
        lines = (proc / "stat").read_text().splitlines()
        own_fields = (proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    busy_ticks = 0
    counted = False
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or len(fields) < 5:
            continue
        name = fields[0]
        if cpus is None and name != "cpu":
            continue  # the first line sums every CPU
        if cpus is not None and (name == "cpu" or int(name[3:]) not in cpus):
            continue
        values = [int(v) for v in fields[1:9]]
        busy_ticks += sum(values) - values[3] - (values[4] if len(values) > 4 else 0)
        counted = True
    if not counted or len(own_fields) < 13:
        return None
    ticks = _clock_ticks()
    # fields after the command: state is [0], so utime and stime (fields 14 and 15) are [11], [12]
    own = int(own_fields[11]) + int(own_fields[12])
    return CpuTimes(machine=busy_ticks / ticks, own=own / ticks, at=time.monotonic())


def read_usable_cpu_times() -> CpuTimes | None:
    """:func:`read_cpu_times` of the CPUs this process may run on."""
    cpus = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return read_cpu_times(cpus=cpus)


def threads_for(free_cpus: float, ceiling: int) -> int:
    """Threads to use when ``free_cpus`` cores (fractional) are left by other processes."""
    return max(1, min(ceiling, int(free_cpus + 0.5)))


class ThreadPolicy:
    """Sets torch's intra-op threads from ``runtime.num_threads``: a count, ``auto``, or None
    (torch's default, untouched).

    Call :meth:`start` before training and :meth:`at_safe_point` where a change of thread count
    is harmless (between two steps); it decides at most every
    ``interval_s`` seconds and costs one clock read otherwise."""

    def __init__(self, setting: ThreadSetting, cpus: int | None = None,
                 reader: Callable[[], CpuTimes | None] = read_usable_cpu_times,
                 interval_s: float = DECISION_INTERVAL_S) -> None:
        self.setting = setting
        self.ceiling = default_threads()
        self.cpus = cpus if cpus is not None else _usable_cpus()
        self._read = reader
        self.interval_s = interval_s
        self._last: CpuTimes | None = None
        self.threads = self.ceiling

    @property
    def adaptive(self) -> bool:
        """Whether the count follows the load (``auto`` where /proc can be read)."""
        return self.setting == "auto" and self._last is not None

    def start(self, sample_s: float = START_SAMPLE_S) -> int:
        """Set the starting thread count (for ``auto``: from ``sample_s`` seconds of the load)."""
        if isinstance(self.setting, int):
            self._apply(self.setting)
        elif self.setting is None:
            self.threads = torch.get_num_threads()
        elif self.ceiling == 1:  # auto with nothing to decide (OMP_NUM_THREADS=1, one core)
            self._apply(1)
        else:
            self._last = self._read()
            if self._last is not None:
                time.sleep(sample_s)
                self._decide(self._read())
        return self.threads

    def at_safe_point(self) -> int:
        """For ``auto``: re-decide when the last decision is ``interval_s`` old; the thread count."""
        if self._last is not None and self.setting == "auto" and time.monotonic() - self._last.at >= self.interval_s:
            self._decide(self._read())
        return self.threads

    def others_cpus(self, now: CpuTimes) -> float:
        """Cores the other processes used on average since the last reading."""
        assert self._last is not None
        elapsed = now.at - self._last.at
        if elapsed <= 0:
            return 0.0
        return max(0.0, (now.machine - self._last.machine) - (now.own - self._last.own)) / elapsed

    def _decide(self, now: CpuTimes | None) -> None:
        if now is None or self._last is None:
            self._last = None  # /proc stopped answering: keep the count, stop adapting
            return
        others = self.others_cpus(now)
        self._last = now
        self._apply(threads_for(self.cpus - others, self.ceiling))

    def _apply(self, threads: int) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.threads = threads


def default_threads() -> int:
    """torch's own default thread count: ``OMP_NUM_THREADS`` where set, else torch's at import."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return TORCH_DEFAULT_THREADS


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
