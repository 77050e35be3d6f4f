"""Tests of the thread team (sklearn_bn._team, _team.h) and of the package's
thread policy (sklearn_bn._threads)."""

import multiprocessing
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from sklearn_bn import BatchNormScaler, _team, _threads

needs_openmp = pytest.mark.skipif(
    _team.openmp_max_threads() < 2,
    reason="built without OpenMP, or limited to one thread",
)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
@pytest.mark.parametrize("pieces", [1, 2, 5])
def test_work_queue_makes_every_write_visible(n_threads, pieces):
    # More threads than pieces, and than cores, too: threads that wait long
    # sleep, and wake; each piece is taken once.
    size, stale, not_once = _team.work_check(n_threads, pieces, 2000)
    assert (stale, not_once) == (0, 0)
    assert size == (n_threads if _team.openmp_max_threads() > 1 else 1)


@needs_openmp
def test_work_queue_under_a_busy_core():
    # Another process keeps a core busy: the team still goes through every
    # phase, each piece taken once.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert _team.work_check(2, 2, 5000) == (2, 0, 0)
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.parametrize("pieces", [1, 2, 3, 5])
@pytest.mark.parametrize("tid", [0, 1, 2, 7])
def test_a_thread_claims_the_piece_of_its_own_index_first(pieces, tid):
    # Then the ones after it, wrapping around: in every task of every phase,
    # so that on a quiet machine each thread takes the same rows throughout.
    first = tid % pieces
    expected = list(range(first, pieces)) + list(range(first))
    order = _team.claim_order(pieces, tid, n_tasks=2, n_phases=3)
    assert order == [expected] * 6


def test_the_helpers_refuse_phases_of_more_pieces_than_the_queue_holds():
    # A phase beyond the queue's claim words would never end.
    with pytest.raises(ValueError, match="at most 1024 pieces"):
        _team.work_check(1, 600, 1)
    with pytest.raises(ValueError, match="at most 1024 pieces"):
        _team.claim_order(100, 0, n_tasks=11)
    assert _team.claim_order(512, 0, n_tasks=2)[1][:2] == [0, 1]


def test_work_check_rejects_bad_arguments():
    for args in [(0, 1, 1), (65, 1, 1), (2, 0, 1), (2, 1, -1)]:
        with pytest.raises(ValueError):
            _team.work_check(*args)


linux_affinity = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and hasattr(os, "sched_getaffinity")),
    reason="threads keep to CPUs on Linux only",
)


def pool_threads_affinities():
    return {
        int(tid): os.sched_getaffinity(int(tid))
        for tid in os.listdir("/proc/self/task")
    }


@linux_affinity
def test_a_pinned_job_keeps_each_thread_to_its_own_cpu():
    cpus = os.sched_getaffinity(0)
    if not 2 <= len(cpus) <= 64:
        pytest.skip("needs 2 to 64 CPUs")
    _team.job_affinities(len(cpus), False)  # starts the pool's workers
    before = pool_threads_affinities()
    seen = _team.job_affinities(len(cpus), True)
    if len(seen) < len(cpus):
        pytest.skip("a worker did not take the job within a second")
    # Each thread ran on one CPU of its own, the caller on the one it was on.
    assert [allowed for _, _, allowed in seen] == [1] * len(cpus)
    assert {cpu for _, cpu, _ in seen} == cpus
    # Every thread has its own affinity back, the caller's included.
    assert pool_threads_affinities() == before
    assert os.sched_getaffinity(0) == cpus


@linux_affinity
def test_a_pinned_job_keeps_an_affinity_set_by_someone_else_meanwhile():
    cpus = os.sched_getaffinity(0)
    if not 2 <= len(cpus) <= 64:
        pytest.skip("needs 2 to 64 CPUs")
    try:
        for target in sorted(cpus)[:2]:  # the pinned CPU or another one
            seen = _team.job_affinities(len(cpus), True, move_caller_to=target)
            assert seen[0][2] == 1
            assert os.sched_getaffinity(0) == (
                cpus if target == seen[0][1] else {target}
            )
            os.sched_setaffinity(0, cpus)
    finally:
        os.sched_setaffinity(0, cpus)


@linux_affinity
def test_a_job_is_pinned_only_when_it_has_one_thread_per_cpu():
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 63:
        pytest.skip("needs at most 63 CPUs")
    # Not pinned: asked not to, more threads than CPUs, or (the caller
    # kept to one of its CPUs) fewer CPUs than threads.
    for n_threads in (len(cpus), len(cpus) + 1):
        seen = _team.job_affinities(n_threads, n_threads > len(cpus))
        assert [allowed for _, _, allowed in seen] == [len(cpus)] * len(seen)
    if len(cpus) >= 2:
        try:
            os.sched_setaffinity(0, {min(cpus)})
            seen = _team.job_affinities(2, True)
            assert seen[0][1:] == (min(cpus), 1)
            assert [allowed for _, _, allowed in seen[1:]] == [len(cpus)] * (
                len(seen) - 1
            )
            assert os.sched_getaffinity(0) == {min(cpus)}
        finally:
            os.sched_setaffinity(0, cpus)
    assert os.sched_getaffinity(0) == cpus
    with pytest.raises(ValueError):
        _team.job_affinities(0, True)


def test_max_threads_follows_the_openmp_limit():
    with threadpool_limits(1, user_api="openmp"):
        assert _threads.max_threads() == 1
    if _team.openmp_max_threads() > 1:
        with threadpool_limits(2, user_api="openmp"):
            assert _threads.max_threads() == 2


def test_kernel_blocks_depend_on_the_shape_only():
    with threadpool_limits(1, user_api="openmp"):
        one = _threads.kernel_threads(10**6, 100)
    with threadpool_limits(2, user_api="openmp"):
        two = _threads.kernel_threads(10**6, 100)
    assert one[0] == two[0] == _threads.ELEMENTS_PER_BLOCK // 100
    assert one[1] == 1
    assert _threads.kernel_threads(0, 5) == (_threads.ELEMENTS_PER_BLOCK // 5, 1)


def test_prediction_threads():
    def blas_threads():
        return {
            lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
        }

    with threadpool_limits(2, user_api="blas"):
        # Products BLAS runs on one thread anyway: nothing changes.
        with _threads.prediction_threads(1, 1000, 1024) as (n, block_rows):
            assert (n, block_rows) == (1, 128)
            assert blas_threads() == {2}
        # Larger: BLAS on one thread; the team when each thread gets enough.
        with _threads.prediction_threads(4000, 10**5, 1024) as (n, block_rows):
            assert block_rows == 500
            assert n == min(_threads.max_threads(), 2, 8)
            assert blas_threads() == {1}
        with _threads.prediction_threads(300, 10**3, 1024) as (n, block_rows):
            assert (n, block_rows) == (1, 128)
            assert blas_threads() == {1}
        assert blas_threads() == {2}
        with _threads.prediction_threads(10**6, 10**3, 1024) as (n, block_rows):
            assert block_rows == 1024


def _max_threads_in_child():
    return _threads.max_threads()


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs the fork start method",
)
def test_forked_children_run_on_one_thread():
    # The parent has run a team (the scaler's kernels share 2 row blocks).
    BatchNormScaler().fit(np.ones((2 * 1024, 1024)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(_max_threads_in_child) == 1
    assert _threads.max_threads() == _team.openmp_max_threads()
