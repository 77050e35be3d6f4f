"""Helpers shared by the estimators."""

import contextlib
import functools
import os

from threadpoolctl import ThreadpoolController

from sklearn_bn import _training


def _restore_on_failure(method):
    """Leave the estimator exactly as it was when ``method`` raises."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        saved = dict(self.__dict__)
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    return wrapper


_THREADPOOL_CONTROLLER = None


def _threadpool_controller():
    """One ``ThreadpoolController`` per process: finding the libraries takes
    tens of milliseconds, reading or setting their limits microseconds."""
    global _THREADPOOL_CONTROLLER
    if _THREADPOOL_CONTROLLER is None:
        _THREADPOOL_CONTROLLER = ThreadpoolController()
    return _THREADPOOL_CONTROLLER


# GNU OpenMP's thread pool does not survive fork(): in a child forked after
# the parent ran a team, the next parallel region waits forever for threads
# that are gone. Forked children (multiprocessing's "fork" start method)
# therefore train on one thread.
_IN_FORKED_CHILD = False


def _mark_forked_child():
    global _IN_FORKED_CHILD
    _IN_FORKED_CHILD = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_child)


# Below this many multiply-adds per minibatch (in the matrix products), the
# threads' barriers cost about what sharing the work saves.
_MIN_MULTIPLY_ADDS_FOR_THREADS = 1 << 16


@contextlib.contextmanager
def _engine_threads(multiply_adds):
    """Threads for the training engine; yields their number.

    The engine's threads replace BLAS's: it uses as many as BLAS may (the
    lowest ``threadpoolctl`` limit of the loaded BLAS libraries), capped by
    its OpenMP limit (``OMP_NUM_THREADS``, threadpoolctl's ``openmp``
    limits), and one thread when a minibatch has fewer than
    ``_MIN_MULTIPLY_ADDS_FOR_THREADS`` multiply-adds (``multiply_adds``).
    When that is more than one thread, each calls BLAS on its own share of
    every product, so BLAS is limited to one thread meanwhile (as
    scikit-learn's KMeans does). In a process forked from another, one
    thread (see ``_IN_FORKED_CHILD``).
    """
    if _IN_FORKED_CHILD or multiply_adds < _MIN_MULTIPLY_ADDS_FOR_THREADS:
        yield 1
        return
    blas = _threadpool_controller().select(user_api="blas")
    blas_threads = min((lib.num_threads for lib in blas.lib_controllers), default=1)
    n_threads = min(blas_threads, _training.openmp_max_threads())
    if n_threads <= 1:
        yield 1
        return
    limiter = blas.limit(limits=1)
    try:
        yield n_threads
    finally:
        limiter.restore_original_limits()
