"""The default thread policy (tbps_runtime.threads): hand-computed loads, precedence, adaptation."""

from __future__ import annotations

import os
import sys

import pytest

from tbps_runtime import threads as policy


@pytest.mark.parametrize("others, cores, expected", [
    (0.0, 2, 2),     # idle: every core
    (0.3, 2, 2),     # background noise is not a busy core
    (0.35, 2, 2),
    (0.45, 2, 1),    # from 0.4 of a core on, a busy core
    (0.67, 2, 1),    # a competitor squeezed to 2/3 of a core by our 2 threads is one busy core
    (1.0, 2, 1),
    (2.0, 2, 1),     # never below 1
    (5.0, 16, 11),
    (None, 8, 8),    # cannot tell: every usable core
])
def test_threads_for_subtracts_the_cores_others_keep_busy(others, cores, expected):
    assert policy.threads_for(others, cores) == expected


def _fake_stat(tmp_path, monkeypatch, rows):
    """Serve successive /proc/stat first lines (user nice system idle iowait irq softirq steal)."""
    stat = tmp_path / "stat"
    lines = iter(rows)

    def busy_jiffies():
        stat.write_text("cpu " + " ".join(map(str, next(lines))) + "\n")
        monkeypatch.setattr(policy, "PROC_STAT", stat)
        return original()

    original = policy._busy_jiffies
    monkeypatch.setattr(policy, "_busy_jiffies", busy_jiffies)


def test_others_busy_is_the_machine_busy_time_minus_our_own(tmp_path, monkeypatch):
    # 2 s of wall time; 300 busy ticks at 100/s = 3 core-seconds, of which 1 is ours: others 1 core.
    _fake_stat(tmp_path, monkeypatch, [(100, 0, 0, 1000, 0, 0, 0, 0), (350, 0, 50, 1100, 0, 0, 0, 0)])
    clock = iter([10.0, 12.0])
    own = iter([5.0, 6.0])
    monkeypatch.setattr(policy.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(policy, "_own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(policy.os, "sysconf", lambda name: 100)
    load = policy.CpuLoad()
    assert load.others_busy() == pytest.approx(1.0)


def test_iowait_counts_as_idle(tmp_path, monkeypatch):
    # 200 ticks of iowait and 0 busy ticks over 1 s: nobody is computing.
    _fake_stat(tmp_path, monkeypatch, [(0, 0, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 200, 0, 0, 0)])
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(policy.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(policy, "_own_cpu_seconds", lambda: 0.0)
    monkeypatch.setattr(policy.os, "sysconf", lambda name: 100)
    assert policy.CpuLoad().others_busy() == 0.0


def test_without_proc_stat_the_load_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(policy, "PROC_STAT", tmp_path / "missing")
    assert policy.CpuLoad().others_busy() is None


@pytest.mark.parametrize("cpu_max, affinity, expected", [
    ("max 100000\n", 8, 8),
    ("150000 100000\n", 8, 2),   # 1.5 cores of quota: 2 threads
    ("50000 100000\n", 8, 1),
    ("400000 100000\n", 2, 2),   # the affinity mask is tighter
    (None, 3, 3),                # no cgroup v2 file
])
def test_usable_cores_respects_affinity_and_cgroup_quota(tmp_path, monkeypatch, cpu_max, affinity, expected):
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    monkeypatch.setattr(policy, "CGROUP_CPU_MAX", path)
    monkeypatch.setattr(policy.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    assert policy.usable_cores() == expected


def test_choose_threads_precedence(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(policy, "auto_threads", lambda: 7)
    assert policy.choose_threads(2) == policy.ThreadChoice(2, "--threads")
    assert policy.choose_threads(None) == policy.ThreadChoice(3, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # empty or junk: not a pin
    assert policy.choose_threads(None) == policy.ThreadChoice(7, "auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    assert policy.choose_threads(None).adaptive
    with pytest.raises(ValueError):
        policy.choose_threads(0)


def test_adaptive_threads_follows_the_load_every_n_steps(monkeypatch):
    loads = iter([0.0, 1.0, 1.0, 0.1])  # one look per 3 steps
    monkeypatch.setattr(policy, "usable_cores", lambda: 2)
    monkeypatch.setattr(policy.CpuLoad, "others_busy", lambda self: next(loads))
    applied = []
    adaptive = policy.AdaptiveThreads(applied.append, every=3, initial=2)
    counts = [adaptive.step() for _ in range(12)]
    assert counts == [2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 2]
    assert applied == [2, 1, 2]  # set only when the count changes
    assert dict(adaptive.steps_by_threads) == {2: 6, 1: 6}  # steps 1-6 ran at 2, 7-12 at 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_real_load_reading_is_within_the_machine():
    load = policy.CpuLoad()
    sum(i * i for i in range(200_000))  # our own work must not count as others'
    others = load.others_busy()
    assert others is not None and 0.0 <= others <= (os.cpu_count() or 1) + 0.5
    assert 1 <= policy.auto_threads(0.01) <= policy.usable_cores()


def _blas_threads() -> list[int]:
    """Thread counts of the pthreads-threaded BLAS libraries (numpy's): process-wide settings, unlike an
    OpenMP-threaded BLAS (faiss's), whose count is per calling thread."""
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info()
            if pool["user_api"] == "blas" and pool.get("threading_layer") == "pthreads"]


def test_blas_limit_holds_while_inside_and_restores_after_overlapping_callers():
    import numpy as np

    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS loaded
    before = _blas_threads()
    if not before:
        pytest.skip("no pthreads-threaded BLAS here that threadpoolctl can see")
    limit = policy.BlasLimit()
    # Two callers whose blocks overlap, the first leaving first (as two searching threads do).
    first, second = limit.limit(1), limit.limit(1)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert _blas_threads() == [1] * len(before)  # still held: the second caller is inside
    second.__exit__(None, None, None)
    assert _blas_threads() == before  # the last one out restores
    with limit.limit(None):  # None: unchanged
        assert _blas_threads() == before
