"""Tests of the thread team (sklearn_bn._team, _team.h) and of the package's
thread policy (sklearn_bn._threads)."""

import multiprocessing
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


def test_work_check_rejects_bad_arguments():
    for args in [(0, 1, 1), (65, 1, 1), (2, 0, 1), (2, 1, -1)]:
        with pytest.raises(ValueError):
            _team.work_check(*args)


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
            assert n == min(_threads.max_threads(), 8)
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
