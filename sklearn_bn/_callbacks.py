"""scikit-learn's callbacks (:mod:`sklearn.callback`, scikit-learn >= 1.9).

The estimators inherit :class:`CallbackSupportMixin` (``set_callbacks``) and
report their fit as a tree of tasks: ``fit`` is the root task, with one
subtask per epoch for the networks (:class:`EpochTasks`); ``partial_fit`` is
one task per call.

With an older scikit-learn, :class:`CallbackSupportMixin` is a stand-in
without ``set_callbacks`` whose contexts do nothing, so the estimators run the
same code with either release.
"""

try:
    from sklearn.callback import CallbackSupportMixin, with_callbacks

    CALLBACKS_SUPPORTED = True
except ImportError:  # scikit-learn < 1.9
    CALLBACKS_SUPPORTED = False

    class _NoContext:
        """A callback context with no callbacks: every hook is a no-op."""

        def subcontext(self, **kwargs):
            return self

        def call_on_fit_task_begin(self, **kwargs):
            return self

        def call_on_fit_task_end(self, **kwargs):
            return False

    _NO_CONTEXT = _NoContext()

    class CallbackSupportMixin:
        """Stand-in for scikit-learn's mixin: no ``set_callbacks``, and a
        root context whose hooks do nothing."""

        def _init_callback_context(
            self, task_name="fit", task_id=0, max_subtasks=0, sequential_subtasks=True
        ):
            return _NO_CONTEXT

    def with_callbacks(method):
        return method


def has_callbacks(estimator):
    """Whether callbacks are registered on ``estimator`` (by ``set_callbacks``
    or propagated from a meta-estimator)."""
    return bool(getattr(estimator, "_skl_callbacks", None))


class EpochTasks:
    """The epochs of a ``fit`` as subtasks of its root callback context.

    Built only when callbacks are registered, so that a fit without them does
    no per-epoch work. ``X``, ``y`` and ``metadata`` describe the training
    rows; any of them may be a callable, called only if a callback asks for
    that argument (scikit-learn's lazy arguments). ``fitted_attributes()``
    returns the fitted attributes of the model as if fit stopped now: the
    callbacks' ``fitted_estimator`` is a shallow copy of the estimator with
    them set, built only if a callback asks for it.
    """

    def __init__(self, context, estimator, *, X, y, metadata, fitted_attributes):
        self._root = context
        self._estimator = estimator
        self._arguments = dict(
            X=X, y=y, metadata=metadata, reconstruction_attributes=fitted_attributes
        )
        self._current = None

    def begin(self):
        """Open the next epoch's task."""
        self._current = self._root.subcontext(task_name="epoch")
        self._current.call_on_fit_task_begin(
            estimator=self._estimator, **self._arguments
        )

    def end(self):
        """Close the epoch's task, after its bookkeeping; whether a callback
        asked to stop training."""
        current, self._current = self._current, None
        return bool(
            current.call_on_fit_task_end(estimator=self._estimator, **self._arguments)
        )

    def abandon(self):
        """Close an epoch that stopped before its first minibatch, as an empty
        task (its hooks get no data and no fitted estimator)."""
        current, self._current = self._current, None
        current.call_on_fit_task_end(estimator=self._estimator)
