"""Helpers shared by the estimators and the engine."""

import contextlib
import functools
import signal
import threading

import numpy as np


def aligned_zeros(n, dtype):
    """A zero-filled 1-D array whose data start on a 64-byte boundary (the
    engine's threads write neighbouring ranges: no cache line is shared when
    their bounds are multiples of 16 elements)."""
    dtype = np.dtype(dtype)
    raw = np.zeros(n * dtype.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + n * dtype.itemsize].view(dtype)


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


class _Interrupt:
    """Whether Ctrl-C was pressed while :func:`deferred_interrupt` was active."""

    requested = False


@contextlib.contextmanager
def deferred_interrupt():
    """Turn Ctrl-C into a request that long computations check between steps.

    While the context is active, SIGINT sets ``requested`` on the object it
    yields instead of raising ``KeyboardInterrupt`` at an arbitrary point,
    so that training stops between minibatches with its bookkeeping whole.
    Only the main thread can install a handler, and only Python's default
    handler is replaced: elsewhere (another thread, a handler of the user's)
    Ctrl-C behaves as usual.
    """
    state = _Interrupt()
    installed = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if installed:
        def handler(signum, frame):
            state.requested = True

        signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        if installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
