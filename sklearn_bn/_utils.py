"""Helpers shared by the estimators and the engine."""

import contextlib
import functools
import signal
import threading



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
