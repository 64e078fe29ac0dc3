"""The default thread policy: use the cores nobody else is using.

A fixed intra-op thread count is wrong on a busy box: with 2 threads on 2
cores and one competing process, each parallel region waits for the thread
that lost its core, and PyTorch runs 5-6x slower than at 1 thread. The
policy here counts the cores this process may use (CPU affinity and the
cgroup CPU quota) and subtracts the cores other processes keep busy, read
from ``/proc/stat`` minus this process's own CPU time:

- onnxruntime sessions get that count when they are created (with spin-waiting
  off when it is below the usable cores: a spinning thread takes a core a
  competitor needs);
- numpy's BLAS (ranking) is held to the same count while a search ranks (:class:`BlasLimit`);
- training re-checks it every few steps (:class:`AdaptiveThreads`).

An explicit ``--threads N`` (or ``OMP_NUM_THREADS``) pins the count. Pin it
for bit-identical training runs: float sums round differently per thread count.
Where ``/proc/stat`` does not exist the policy uses every usable core.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PROC_STAT = Path("/proc/stat")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
# Another process's share of a core counts as a busy core from this fraction
# on: a competitor holding 0.67 of a core (3 runnable threads on 2 cores) is one.
BUSY_ROUNDING = 0.6
SAMPLE_SECONDS = 0.05


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def pinned_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int, else None (an explicit user choice wins over the policy)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks over all CPUs since boot, or None without /proc/stat."""
    try:
        with PROC_STAT.open() as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class CpuLoad:
    """Cores kept busy by other processes between two calls of :meth:`others_busy`."""

    def __init__(self) -> None:
        self._ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._snapshot()

    def _snapshot(self) -> tuple[float, tuple[int, int] | None, float]:
        return time.monotonic(), _busy_jiffies(), _own_cpu_seconds()

    def others_busy(self) -> float | None:
        """Mean number of cores other processes used since the last call (None: cannot tell)."""
        now = self._snapshot()
        (t0, ticks0, own0), (t1, ticks1, own1) = self._last, now
        self._last = now
        if ticks0 is None or ticks1 is None or t1 - t0 <= 0:
            return None
        busy_seconds = (ticks1[0] - ticks0[0]) / self._ticks_per_second
        return max(0.0, (busy_seconds - (own1 - own0)) / (t1 - t0))


def threads_for(others_busy: float | None, cores: int) -> int:
    """The policy: usable cores minus the ones others keep busy, at least 1."""
    if others_busy is None:
        return cores
    return max(1, min(cores, cores - int(others_busy + BUSY_ROUNDING)))


def auto_threads(sample_seconds: float = SAMPLE_SECONDS) -> int:
    """Threads to use now: a ``sample_seconds`` look at what other processes keep busy."""
    load = CpuLoad()
    time.sleep(sample_seconds)
    return threads_for(load.others_busy(), usable_cores())


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and where it came from (``"--threads"``, ``"OMP_NUM_THREADS"`` or ``"auto"``)."""

    threads: int
    source: str

    @property
    def adaptive(self) -> bool:
        return self.source == "auto"


def choose_threads(threads: int | None) -> ThreadChoice:
    """``--threads`` if given, else ``OMP_NUM_THREADS``, else :func:`auto_threads`."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        return ThreadChoice(threads, "--threads")
    pinned = pinned_threads()
    if pinned is not None:
        return ThreadChoice(pinned, "OMP_NUM_THREADS")
    return ThreadChoice(auto_threads(), "auto")


class AdaptiveThreads:
    """Re-applies the policy every ``every`` calls of :meth:`step` (training loops).

    ``apply`` sets the count (e.g. ``torch.set_num_threads``); it is called only
    when the count changes. :attr:`steps_by_threads` counts the steps run at each count.
    """

    def __init__(self, apply: Callable[[int], None], every: int = 10, initial: int | None = None):
        self._apply, self._every = apply, max(1, every)
        self._cores, self._load, self._steps = usable_cores(), CpuLoad(), 0
        self.threads = initial if initial is not None else self._cores
        self._apply(self.threads)
        self.steps_by_threads: Counter[int] = Counter()

    def step(self) -> int:
        """Count one step; every ``every`` steps re-read the load and set the thread count."""
        self._steps += 1
        self.steps_by_threads[self.threads] += 1
        if self._steps % self._every == 0:
            wanted = threads_for(self._load.others_busy(), self._cores)
            if wanted != self.threads:
                self.threads = wanted
                self._apply(wanted)
        return self.threads


class BlasLimit:
    """Hold numpy's BLAS to a thread count while any caller is inside (threadpoolctl).

    numpy's BLAS (pthreads) thread count is process-wide: the first caller in sets
    the limit and the last one out restores it, so concurrent searches never leave it
    changed. An OpenMP-threaded BLAS (faiss's) keeps a count per thread; it is held in
    the threads that entered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._controller: object | None = None
        self._restore: object | None = None

    @contextlib.contextmanager
    def limit(self, threads: int | None):
        """Within the block BLAS uses at most ``threads`` threads (None: unchanged)."""
        if threads is None:
            yield
            return
        with self._lock:
            if self._inside == 0:
                if self._controller is None:
                    from threadpoolctl import ThreadpoolController

                    self._controller = ThreadpoolController()
                self._restore = self._controller.limit(limits=threads, user_api="blas")
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._restore is not None:
                    self._restore.restore_original_limits()
                    self._restore = None


BLAS = BlasLimit()
