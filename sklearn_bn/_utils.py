"""Helpers shared by the estimators and the engine."""

import contextlib
import functools
import signal
import sys
import threading
import weakref

import numpy as np


def aligned_zeros(n, dtype):
    """A zero-filled 1-D array whose data start on a 64-byte boundary (the
    engine's threads write neighbouring ranges: no cache line is shared when
    their bounds are multiples of 16 elements)."""
    dtype = np.dtype(dtype)
    raw = np.zeros(n * dtype.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + n * dtype.itemsize].view(dtype)


def exponents_near(peak):
    """Per value of ``peak`` (magnitudes, float64), the exponent of a power
    of two near it, which scales it to [0.5, 1) exactly (``np.frexp``); 0
    where it is not positive. Statistics scaled so, and scaled back, keep
    their bits for moderate values and neither overflow nor vanish for
    extreme ones."""
    return np.frexp(np.where(peak > 0, peak, 1.0))[1]


def check_weight_range(weights, name, dtype, sum_dtype=None, seen=0.0):
    """Raise a ``ValueError`` naming ``name`` when non-negative ``weights``,
    for arithmetic in ``dtype``, are out of the range where weighted
    statistics stay finite and exact: as repeat counts, with the ``seen``
    of earlier batches, their sum must be below a quarter of the largest
    ``sum_dtype`` number (default ``dtype``: the merges of counts need the
    headroom), and the smallest positive weight a normal ``dtype`` number,
    whose products keep their precision."""
    info, sum_info = np.finfo(dtype), np.finfo(sum_dtype or dtype)
    with np.errstate(over="ignore"):
        total = float(np.sum(weights, dtype=np.float64)) + seen
    if not total < float(sum_info.max) / 4:
        earlier = " with those of earlier batches" if seen else ""
        raise ValueError(
            f"{name} is too large: the weights sum to {total:.3g}{earlier}, "
            f"beyond what {sum_info.dtype.name} arithmetic can hold (the weights "
            "act as repeat counts). Divide them by a common factor."
        )
    positive = weights[weights > 0]
    smallest = float(positive.min()) if positive.size else float(info.tiny)
    if smallest < float(info.tiny):
        raise ValueError(
            f"{name} is too small: its smallest positive weight, {smallest:.3g}, is "
            f"below the smallest normal {info.dtype.name} number "
            f"({float(info.tiny):.3g}). Multiply the weights by a common factor."
        )


# By a working copy's id, while ``_restore_on_failure`` runs a method on it:
# [the estimator it stands for, the estimator's state at the start, whether
# the copy was published already].
_WORKING_COPIES = {}

_MISSING = object()

# What scikit-learn's callbacks keep on the estimator during one call; it
# goes with the call and is never published (scikit-learn's own context
# around the estimator would act on it too).
_CALL_STATE = ("_callback_fit_ctx", "_skl_callbacks_to_teardown")


def _published_state(work):
    return {k: v for k, v in work.__dict__.items() if k not in _CALL_STATE}


# What an estimator's user sets, beside its parameters: the callbacks, the
# output container, the metadata requests. A method never sets them on its
# working copy.
_SETTING_ATTRIBUTES = ("_skl_callbacks", "_sklearn_output_config", "_metadata_request")

# Each class's settings (weakly: classes made on the fly may go).
_SETTINGS = weakref.WeakKeyDictionary()


def _settings(cls):
    """The names of ``cls``'s parameters, and of the setting attributes."""
    names = _SETTINGS.get(cls)
    if names is None:
        names = _SETTINGS[cls] = (*cls._get_param_names(), *_SETTING_ATTRIBUTES)
    return names


def _settings_changed_meanwhile(cls, now, start):
    """The settings (see :func:`_settings`) that ``now``, an estimator's
    ``__dict__`` as read at publication, holds other than ``start`` (its
    ``__dict__`` when the method began): set, or removed (``_MISSING``), by
    another thread meanwhile, and kept, as a ``set_params`` during a
    scikit-learn fit is. The method itself never sets them; fitted
    attributes stay the method's, so that a model is never a mix of two
    fits."""
    return {
        name: now.get(name, _MISSING)
        for name in _settings(cls)
        if now.get(name, _MISSING) is not start.get(name, _MISSING)
    }


def _set_or_remove(state, name, value):
    if value is _MISSING:
        state.pop(name, None)
    else:
        state[name] = value


def _restore_on_failure(method):
    """Run ``method`` on a working copy of the estimator and publish the
    copy's state at once when it returns.

    The estimator's ``__dict__`` is replaced in one step, so that a reader
    in another thread (see :func:`_reads_fitted_state`) sees the state
    before the call or after it, never a mix of both; when ``method``
    raises, the estimator is left exactly as it was, unless ``method``
    published the state itself first (see :func:`_publish_now`).
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        start = dict(self.__dict__)
        work = object.__new__(type(self))
        work.__dict__.update(start)
        _WORKING_COPIES[id(work)] = entry = [self, start, False]
        try:
            result = method(work, *args, **kwargs)
        except BaseException:
            del _WORKING_COPIES[id(work)]
            if entry[2]:  # published by _publish_now: keep the fit
                _publish(self, work, start)
            raise
        del _WORKING_COPIES[id(work)]
        _publish(self, work, start)
        return self if result is work else result

    return wrapper


def _publish_now(work):
    """Publish the state of the working copy ``work`` (see
    :func:`_restore_on_failure`) before its method returns: what the method
    does from here on (a callback's last hook, the callbacks' teardown) acts
    on the published state, and an exception it raises no longer undoes it,
    as in scikit-learn, whose fit is done when those run. Nothing happens
    outside such a method."""
    entry = _WORKING_COPIES.get(id(work))
    if entry is not None and not entry[2]:
        estimator, start, _ = entry
        _publish(estimator, work, start)
        entry[2] = True


def _publish(estimator, work, start):
    """Replace ``estimator``'s state by the working copy's, in one step,
    keeping the settings another thread changed on the estimator since
    ``start``.

    No lock: a setting is an attribute write, which goes to whichever
    ``__dict__`` the estimator has when it runs. One that went to the old
    ``__dict__`` between the read here and the swap is carried over after
    the swap, unless the new one holds a newer value already. What this
    leaves open is a few bytecodes of this function wide (longer if its
    thread is switched out there): a setting written twice around the swap
    back to the very object published, or one written between the carry's
    test and its store, may be lost, and the two steps of a first
    ``set_output`` on either side of the swap raise ``AttributeError`` in
    its thread. A lock taken by every attribute write would close that, at
    the price of deadlocks (a finalizer run under it waiting for a lock of
    the application's): not taken.
    """
    state = _published_state(work)
    old = estimator.__dict__
    seen = dict(old)
    cls = type(estimator)
    for name, value in _settings_changed_meanwhile(cls, seen, start).items():
        _set_or_remove(state, name, value)
    names = _settings(cls)
    published = {name: state.get(name, _MISSING) for name in names}
    estimator.__dict__ = state
    for name in names:
        late = old.get(name, _MISSING)
        if late is not seen.get(name, _MISSING) and (
            state.get(name, _MISSING) is published[name]
        ):
            _set_or_remove(state, name, late)


def _callers_stacklevel():
    """The ``stacklevel`` of ``warnings.warn`` that names the first caller
    outside this package and scikit-learn (whose wrappers, and this
    package's, sit between a public method and where it warns, in numbers
    that depend on the call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        "sklearn"  # sklearn_bn's modules too
    ):
        frame, level = frame.f_back, level + 1
    return level


def _reads_fitted_state(method):
    """Run ``method`` on a snapshot of the estimator's state: a fit or a
    refit publishing a new state meanwhile (see :func:`_restore_on_failure`)
    does not change what the call reads."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        snapshot = object.__new__(type(self))
        snapshot.__dict__ = dict(self.__dict__)
        return method(snapshot, *args, **kwargs)

    return wrapper


class _Interrupt:
    """Whether Ctrl-C was pressed while :func:`deferred_interrupt` was active
    (``requested``), and whether it is held back now (``holding``: set it to
    False for a part of the block in which Ctrl-C should act as usual)."""

    requested = False
    holding = True


@contextlib.contextmanager
def deferred_interrupt():
    """Turn Ctrl-C into a request that long computations check between steps.

    While the context is active, SIGINT sets ``requested`` on the object it
    yields instead of raising ``KeyboardInterrupt`` at an arbitrary point,
    so that training stops between minibatches with its bookkeeping whole.
    A handler of the user's still runs when the signal comes; a
    ``KeyboardInterrupt`` it raises becomes the same request (so does
    Python's default handler). Only the main thread can install a handler:
    elsewhere, and where SIGINT is ignored or left to the system, Ctrl-C
    behaves as usual.
    """
    state = _Interrupt()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
    if callable(previous):

        def handler(signum, frame):
            if not state.holding:
                previous(signum, frame)
                return
            try:
                previous(signum, frame)
            except KeyboardInterrupt:
                state.requested = True

        signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        if callable(previous):
            signal.signal(signal.SIGINT, previous)
