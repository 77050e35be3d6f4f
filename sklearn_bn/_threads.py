"""How many threads the package's compiled code runs, in one place.

Every parallel kernel of the package is an OpenMP team whose size is decided
here and passed down explicitly:

* the training engine (:func:`training_threads`) and the prediction of a
  large batch (:func:`prediction_threads`) replace BLAS's threads with their
  own: each of their threads calls BLAS on its own share of every product,
  with BLAS limited to one thread meanwhile (as scikit-learn's KMeans does);
* the scaler's kernels (:func:`kernel_threads`) share row blocks of the data.

The package may use as many threads as its OpenMP runtime allows
(``OMP_NUM_THREADS``, threadpoolctl's ``openmp`` limits); the engine also
stays within BLAS's threadpoolctl limit, since its threads stand in for
BLAS's. Work too small to pay for a team runs on the calling thread.

A process forked from one that has run an OpenMP team cannot start another
(GNU OpenMP's threads do not survive ``fork()``: the next team would wait
forever for them), so forked children (multiprocessing's "fork" start
method) run everything on the calling thread.
"""

import contextlib
import os

from threadpoolctl import ThreadpoolController

from sklearn_bn._team import openmp_max_threads

# Below this many multiply-adds per minibatch (in the matrix products), the
# team's barriers cost about what sharing the work saves.
MIN_MULTIPLY_ADDS_FOR_THREADS = 1 << 16

# Elements per row block of the scaler's kernels: a block is worth a thread.
ELEMENTS_PER_BLOCK = 1 << 20

# OpenBLAS runs a product on one thread below this many multiply-adds
# (SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD in its sources).
BLAS_THREADING_MULTIPLY_ADDS = 1 << 18

# Multiply-adds a prediction thread must get for the team to pay.
MIN_MULTIPLY_ADDS_PER_PREDICTION_THREAD = 1 << 22

_IN_FORKED_CHILD = False


def _mark_forked_child():
    global _IN_FORKED_CHILD
    _IN_FORKED_CHILD = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_child)


_CONTROLLER = None


def _threadpool_controller():
    """One ``ThreadpoolController`` per process: finding the libraries takes
    tens of milliseconds, reading or setting their limits microseconds."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def max_threads():
    """Threads the package may run: its OpenMP limit, 1 in a forked child."""
    return 1 if _IN_FORKED_CHILD else openmp_max_threads()


def kernel_threads(n_rows, n_cols):
    """Row blocks and threads for a kernel streaming an ``(n_rows, n_cols)``
    array: ``(block_rows, n_threads)``.

    The blocks depend on the shape only (about ``ELEMENTS_PER_BLOCK``
    elements each), so a result does not depend on the number of threads.
    """
    block_rows = max(1, ELEMENTS_PER_BLOCK // max(n_cols, 1))
    n_blocks = -(-n_rows // block_rows) if n_rows else 1
    return block_rows, max(1, min(max_threads(), n_blocks))


@contextlib.contextmanager
def training_threads(multiply_adds):
    """The engine's team for minibatches of ``multiply_adds`` multiply-adds
    (in the matrix products); yields its size.

    As many threads as BLAS may run (the lowest threadpoolctl limit of the
    loaded BLAS libraries) within :func:`max_threads`; one thread below
    ``MIN_MULTIPLY_ADDS_FOR_THREADS``. With more than one, BLAS is limited to
    one thread until the context exits.
    """
    if multiply_adds < MIN_MULTIPLY_ADDS_FOR_THREADS:
        yield 1
        return
    with _replacing_blas_threads() as n_threads:
        yield n_threads


@contextlib.contextmanager
def prediction_threads(n_rows, multiply_adds_per_row, max_block_rows):
    """The team for a prediction of ``n_rows`` rows; yields ``(n_threads,
    block_rows)``.

    The rows go through in blocks whose size depends on ``n_rows`` only
    (from 128 rows to ``max_block_rows``), so that a row's result does not
    depend on the number of threads. BLAS runs on one thread during the
    prediction whenever its products are large enough for it to start its own
    threads, which would keep spinning into whatever the user runs next (a
    fit after a ``score`` is the usual case); the package's team takes the
    blocks in turn instead, when there is enough work for it.
    """
    block_rows = min(max_block_rows, max(128, -(-n_rows // 8)))
    work = n_rows * multiply_adds_per_row
    if work < BLAS_THREADING_MULTIPLY_ADDS:
        yield 1, block_rows
        return
    n_blocks = -(-n_rows // block_rows)
    n_threads = min(max_threads(), n_blocks, work // MIN_MULTIPLY_ADDS_PER_PREDICTION_THREAD)
    with _one_blas_thread():
        yield max(1, n_threads), block_rows


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS limited to one thread (restored on exit) unless it already is."""
    blas = _threadpool_controller().select(user_api="blas")
    if all(lib.num_threads <= 1 for lib in blas.lib_controllers):
        yield
        return
    limiter = blas.limit(limits=1)
    try:
        yield
    finally:
        limiter.restore_original_limits()


@contextlib.contextmanager
def _replacing_blas_threads():
    if _IN_FORKED_CHILD:
        yield 1
        return
    blas = _threadpool_controller().select(user_api="blas")
    blas_threads = min((lib.num_threads for lib in blas.lib_controllers), default=1)
    n_threads = min(blas_threads, max_threads())
    if n_threads <= 1:
        yield 1
        return
    # Set per call: a BLAS library may wake its threads when its limit is
    # raised again.
    limiter = blas.limit(limits=1)
    try:
        yield n_threads
    finally:
        limiter.restore_original_limits()
