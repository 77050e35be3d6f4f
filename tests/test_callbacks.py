"""scikit-learn's callbacks (``sklearn.callback``, scikit-learn >= 1.9) on the
three estimators: the task tree of a fit, the ``fitted_estimator`` each epoch
passes (compared with the fit that stops there), stopping by a callback,
ProgressBar and ScoringMonitor, failures; and, with an older scikit-learn,
estimators that work without ``set_callbacks``."""

import importlib.util
import pickle
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_bn import (
    BatchNormScaler,
    MLPBNClassifier,
    MLPBNRegressor,
    _callbacks,
    _mlp,
)
from sklearn_bn._callbacks import CALLBACKS_SUPPORTED

needs_callbacks = pytest.mark.skipif(
    not CALLBACKS_SUPPORTED, reason="scikit-learn < 1.9 has no callbacks"
)

FITTED_ARRAYS = ("coefs_", "gammas_", "intercepts_", "running_means_", "running_vars_")


def make_data(problem, n=80, seed=0):
    # A constant learning rate: a fit stopped after epoch k is then the fit
    # with max_iter=k + 1, which the tests compare it with (a cosine schedule
    # spans max_iter epochs).
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, 5))
    signal = X[:, :3] @ np.array([1.0, -2.0, 0.5])
    if problem == "classifier":
        y = np.digitize(signal + 0.3 * rng.normal(size=n), [-1.0, 1.0])
        est = MLPBNClassifier(
            hidden_layer_sizes=(8, 6),
            batch_size=16,
            max_iter=6,
            learning_rate="constant",
            learning_rate_init=0.01,
            random_state=0,
        )
    else:
        y = signal + 0.1 * rng.normal(size=n)
        est = MLPBNRegressor(
            hidden_layer_sizes=(8, 6),
            batch_size=16,
            max_iter=6,
            learning_rate="constant",
            learning_rate_init=0.01,
            random_state=0,
        )
    return X, y, est


def quietly(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return call(*args, **kwargs)


class Recorder:
    """Records every hook call, with the arguments a callback can ask for."""

    def __init__(self, stop_after=None, fail_at=None):
        self.calls = []
        self.stop_after = stop_after  # epochs after which to ask to stop
        self.fail_at = fail_at  # epoch whose end raises

    def setup(self, estimator, context):
        self.calls.append(("setup", context, {}))

    def teardown(self, estimator, context):
        self.calls.append(("teardown", context, {}))

    def on_fit_task_begin(
        self,
        estimator,
        context,
        *,
        X=None,
        y=None,
        metadata=None,
        fitted_estimator=None,
    ):
        self.calls.append(
            (
                "begin",
                context,
                dict(X=X, y=y, metadata=metadata, fitted_estimator=fitted_estimator),
            )
        )

    def on_fit_task_end(
        self,
        estimator,
        context,
        *,
        X=None,
        y=None,
        metadata=None,
        fitted_estimator=None,
    ):
        self.calls.append(
            (
                "end",
                context,
                dict(X=X, y=y, metadata=metadata, fitted_estimator=fitted_estimator),
            )
        )
        if context.task_name == "epoch":
            if self.fail_at == context.task_id:
                raise RuntimeError("callback failed")
            return (
                self.stop_after is not None and context.task_id + 1 >= self.stop_after
            )
        return False

    def hooks(self, name, task_name=None):
        return [
            (ctx, kw)
            for hook, ctx, kw in self.calls
            if hook == name and (task_name is None or ctx.task_name == task_name)
        ]


class Counter:
    """A callback that asks for no argument: no fitted estimator is built."""

    def __init__(self):
        self.ends = 0

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context):
        pass

    def on_fit_task_end(self, estimator, context):
        self.ends += 1


def assert_same_model(a, b):
    for name in FITTED_ARRAYS:
        for p, q in zip(getattr(a, name), getattr(b, name)):
            assert_array_equal(p, q, err_msg=name)
    for name in (
        "n_iter_",
        "t_",
        "loss_curve_",
        "validation_scores_",
        "best_loss_",
        "best_validation_score_",
    ):
        assert getattr(a, name) == getattr(b, name), name


# ---------------------------------------------------------------------------
# The task tree of fit and partial_fit


@needs_callbacks
@pytest.mark.parametrize("problem", ["classifier", "regressor"])
def test_fit_is_one_task_with_one_subtask_per_epoch(problem):
    X, y, est = make_data(problem)
    rec = Recorder()
    quietly(est.set_callbacks(rec).fit, X, y)
    assert [hook for hook, _, _ in rec.calls].count("setup") == 1
    assert rec.calls[-1][0] == "teardown"
    ((root, root_begin),) = rec.hooks("begin", "fit")
    assert root.parent is None and root.max_subtasks == est.max_iter == est.n_iter_
    assert root_begin["X"].shape == X.shape and root_begin["fitted_estimator"] is None
    epochs = rec.hooks("end", "epoch")
    assert len(rec.hooks("begin", "epoch")) == len(epochs) == est.n_iter_
    assert [ctx.task_id for ctx, _ in epochs] == list(range(est.n_iter_))
    assert all(ctx.parent is root and ctx.max_subtasks == 0 for ctx, _ in epochs)
    # The epochs' data: the training rows, their labels, no weights.
    for _, kwargs in epochs:
        assert kwargs["X"] is not None and kwargs["X"].shape == X.shape
        assert_array_equal(kwargs["y"], y)
        assert kwargs["metadata"] is None
    # The root task ends after the model is published; its fitted estimator
    # is the model.
    ((_, root_end),) = rec.hooks("end", "fit")
    assert_same_model(root_end["fitted_estimator"], est)
    # Nothing of the callbacks' bookkeeping stays on the estimator.
    assert not hasattr(est, "_callback_fit_ctx")


class Annotator(Recorder):
    """Sets an attribute on the estimator its hooks receive."""

    def __init__(self, fail_at=None):
        super().__init__(fail_at=fail_at)
        self.estimators = []

    def on_fit_task_end(self, estimator, context, **kwargs):
        self.estimators.append(estimator)
        estimator.annotated_ = len(self.estimators)
        return super().on_fit_task_end(estimator, context, **kwargs)


@needs_callbacks
def test_attributes_a_callback_sets_are_published_with_the_fit():
    # The hooks get the fit's working copy, which the fit publishes at its
    # end: what a callback sets on it lands on the estimator, or is dropped
    # with a failed fit.
    X, y, est = make_data("classifier")
    annotator = Annotator()
    quietly(est.set_callbacks(annotator).fit, X, y)
    assert est.annotated_ == len(annotator.estimators) == est.n_iter_ + 1
    assert all(seen is not est for seen in annotator.estimators)
    failing = Annotator(fail_at=2)
    X2, y2, fresh = make_data("classifier")
    with pytest.raises(RuntimeError):
        quietly(fresh.set_callbacks(failing).fit, X2, y2)
    assert not hasattr(fresh, "annotated_")


@needs_callbacks
def test_epoch_data_exclude_the_validation_split_and_carry_the_weights():
    X, y, est = make_data("classifier")
    rec = Recorder()
    sw = np.random.RandomState(0).uniform(0.5, 2, len(y))
    quietly(
        est.set_params(
            early_stopping=True, validation_fraction=0.25, class_weight={0: 2.0}
        )
        .set_callbacks(rec)
        .fit,
        X,
        y,
        sample_weight=sw,
    )
    for _, kwargs in rec.hooks("end", "epoch"):
        n_train = kwargs["X"].shape[0]
        assert n_train == 60
        assert kwargs["y"].shape == (n_train,)
        weights = kwargs["metadata"]["sample_weight"]
        assert weights.shape == (n_train,)
        # The fit's weights: the user's times the class weights, row by row.
        users = weights / np.where(kwargs["y"] == 0, 2.0, 1.0)
        assert np.isin(np.round(users, 10), np.round(sw, 10)).all()


@needs_callbacks
def test_ctrl_c_in_the_fits_last_hook_keeps_the_model():
    # The model is published before the fit's end hook: Ctrl-C while that
    # hook runs (a checkpoint being written) must not undo the fit.
    import os
    import signal

    class InterruptedAtTheEnd(Recorder):
        def on_fit_task_end(self, estimator, context, **kwargs):
            if context.task_name == "fit":
                os.kill(os.getpid(), signal.SIGINT)
            return super().on_fit_task_end(estimator, context, **kwargs)

    X, y, est = make_data("classifier")
    expected = quietly(clone(est).fit, X, y)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.warns(UserWarning, match="after training; the model is fitted"):
            quietly(est.set_callbacks(InterruptedAtTheEnd()).fit, X, y)
    finally:
        signal.signal(signal.SIGINT, previous)
    for a, b in zip(est.coefs_, expected.coefs_):
        assert_array_equal(a, b)


@needs_callbacks
@pytest.mark.parametrize("early_stopping", [False, True])
def test_epoch_models_do_not_carry_the_training_rows(early_stopping):
    # A callback that saves each epoch's model (a checkpoint) must not save
    # the training data with it: the input handling's raw rows stay off the
    # estimator, which scikit-learn copies for every fitted_estimator.
    X, y, est = make_data("classifier", n=400)
    rec = Recorder()
    quietly(est.set_params(early_stopping=early_stopping).set_callbacks(rec).fit, X, y)

    def saved(model):  # what a checkpoint holds, scikit-learn's callbacks aside
        return pickle.dumps(
            {k: v for k, v in vars(model).items() if "callback" not in k}
        )

    final = saved(est)
    for _, kwargs in rec.hooks("end", "epoch"):
        model = kwargs["fitted_estimator"]
        assert not any(
            value is X or (isinstance(value, dict) and "X" in value)
            for value in vars(model).values()
        )
        assert len(saved(model)) < len(final) + X.nbytes // 4
    assert "X" in rec.hooks("end", "epoch")[0][1] and not any(
        name.startswith("_callback") for name in vars(est)
    )


@needs_callbacks
@pytest.mark.parametrize("problem", ["classifier", "regressor"])
def test_partial_fit_is_one_task_per_call(problem):
    X, y, est = make_data(problem)
    rec = Recorder()
    est.set_callbacks(rec)
    kwargs = {"classes": [0, 1, 2]} if problem == "classifier" else {}
    est.partial_fit(X, y, **kwargs)
    est.partial_fit(X, y)
    roots = rec.hooks("begin")
    assert [ctx.task_name for ctx, _ in roots] == ["partial_fit", "partial_fit"]
    assert all(ctx.max_subtasks == 0 and ctx.parent is None for ctx, _ in roots)
    assert len(rec.hooks("end")) == 2 and not rec.hooks("begin", "epoch")
    assert [hook for hook, _, _ in rec.calls].count("teardown") == 2


# ---------------------------------------------------------------------------
# fitted_estimator: the model as if fit stopped there


@needs_callbacks
@pytest.mark.parametrize("bn_stats", ["running", "population"])
@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("sparse_input", [False, True])
@pytest.mark.parametrize("problem", ["classifier", "regressor"])
def test_fitted_estimator_is_the_fit_that_stops_there(
    problem, sparse_input, early_stopping, bn_stats
):
    X, y, est = make_data(problem)
    if sparse_input:
        X[np.abs(X) < 0.5] = 0
        X = sp.csr_matrix(X)
    est.set_params(
        early_stopping=early_stopping, bn_stats=bn_stats, n_iter_no_change=100
    )
    rec = Recorder()
    quietly(clone(est).set_callbacks(rec).fit, X, y)
    ends = rec.hooks("end", "epoch")
    begins = rec.hooks("begin", "epoch")
    assert len(ends) == est.max_iter
    stopped = [
        quietly(clone(est).set_params(max_iter=k + 1).fit, X, y)
        for k in range(est.max_iter)
    ]
    for k, (_, kwargs) in enumerate(ends):
        model = kwargs["fitted_estimator"]
        assert type(model) is type(est)
        assert_same_model(model, stopped[k])
        assert all(not a.flags.writeable for a in model.coefs_ + model.running_vars_)
        if problem == "classifier":
            assert_array_equal(model.predict_proba(X), stopped[k].predict_proba(X))
        else:
            assert_array_equal(model.predict(X), stopped[k].predict(X))
        if k > 0:  # the start of an epoch is the end of the one before
            assert_same_model(begins[k][1]["fitted_estimator"], stopped[k - 1])


@needs_callbacks
def test_fitted_estimators_are_built_only_when_a_callback_asks(monkeypatch):
    X, y, est = make_data("classifier")
    calls = []
    real = _mlp._BaseMLPBN._fitted_attributes

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_mlp._BaseMLPBN, "_fitted_attributes", counting)
    counter = Counter()
    quietly(est.set_callbacks(counter).fit, X, y)
    assert counter.ends == est.n_iter_ + 1
    assert len(calls) == 1  # the model fit publishes


def test_fit_without_callbacks_builds_no_epoch_tasks(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("per-epoch callback work without callbacks")

    monkeypatch.setattr(_mlp, "EpochTasks", refuse)
    X, y, est = make_data("classifier")
    quietly(est.fit, X, y)
    assert est.n_iter_ == est.max_iter


# ---------------------------------------------------------------------------
# Stopping, failures


@needs_callbacks
@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("problem", ["classifier", "regressor"])
def test_a_callback_returning_true_stops_after_that_epoch(problem, early_stopping):
    X, y, est = make_data(problem)
    est.set_params(early_stopping=early_stopping, n_iter_no_change=100)
    stopped = clone(est).set_callbacks(Recorder(stop_after=3)).fit(X, y)
    assert stopped.n_iter_ == 3 and len(stopped.loss_curve_) == 3
    if early_stopping:
        assert len(stopped.validation_scores_) == 3
    assert_same_model(stopped, quietly(clone(est).set_params(max_iter=3).fit, X, y))


@needs_callbacks
@pytest.mark.parametrize("problem", ["classifier", "regressor"])
def test_a_failing_callback_leaves_the_model_unchanged(problem):
    X, y, est = make_data(problem)
    quietly(est.fit, X, y)
    before = pickle.loads(pickle.dumps(est))
    rec = Recorder(fail_at=2)
    est.set_callbacks(rec)
    with pytest.raises(RuntimeError, match="callback failed"):
        est.set_params(warm_start=True).fit(X, y)
    # Torn down all the same, and nothing of the failed fit left.
    assert [hook for hook, _, _ in rec.calls].count("teardown") == 1
    est.set_params(warm_start=False).set_callbacks()
    assert est.__dict__.keys() == before.__dict__.keys()
    assert_same_model(est, before)


class FailsAfterTraining(Counter):
    """Raises in the root task's end hook or in teardown: after the fit."""

    def __init__(self, where):
        super().__init__()
        self.where = where

    def teardown(self, estimator, context):
        if self.where == "teardown":
            raise RuntimeError("callback failed after training")

    def on_fit_task_end(self, estimator, context):
        super().on_fit_task_end(estimator, context)
        if self.where == "end" and context.parent is None:
            raise RuntimeError("callback failed after training")


@needs_callbacks
@pytest.mark.parametrize("where", ["end", "teardown"])
@pytest.mark.parametrize("problem", ["classifier", "regressor", "scaler"])
def test_a_callback_failing_after_training_keeps_the_fit(problem, where):
    # As in scikit-learn (LogisticRegression, say): the error propagates,
    # and the estimator is fitted, since the fit was done when it came.
    if problem == "scaler":
        X = np.random.RandomState(0).normal(size=(30, 4))
        est, y, expected = BatchNormScaler(), None, BatchNormScaler().fit(X)
        fitted = ("running_mean_", "running_var_")
    else:
        X, y, est = make_data(problem)
        expected = quietly(clone(est).fit, X, y)
        fitted = FITTED_ARRAYS
    est.set_callbacks(FailsAfterTraining(where))
    with pytest.raises(RuntimeError, match="after training"):
        quietly(est.fit, X, y)
    for name in fitted:
        got, want = getattr(est, name), getattr(expected, name)
        if problem == "scaler":  # one array, not one per layer
            got, want = [got], [want]
        for a, b in zip(got, want, strict=True):
            assert_array_equal(a, b, err_msg=name)
    assert not hasattr(est, "_callback_fit_ctx")
    assert not hasattr(est, "_skl_callbacks_to_teardown")


class CountsTeardowns(Counter):
    def __init__(self, interrupt):
        super().__init__()
        self.interrupt = interrupt
        self.teardowns = 0

    def teardown(self, estimator, context):
        self.teardowns += 1
        if self.interrupt:
            raise KeyboardInterrupt


@needs_callbacks
@pytest.mark.parametrize("problem", ["classifier", "scaler"])
def test_ctrl_c_in_a_teardown_tears_each_callback_down_once(problem):
    # scikit-learn's teardown loop stops at a KeyboardInterrupt, and leaves
    # its bookkeeping on the estimator it tears down: that is the working
    # copy, never the published estimator, around which scikit-learn's own
    # fit context would tear the callbacks down a second time.
    if problem == "scaler":
        X, y, est = np.random.RandomState(0).normal(size=(30, 4)), None, None
        est = BatchNormScaler()
    else:
        X, y, est = make_data(problem)
    quiet, interrupting = CountsTeardowns(False), CountsTeardowns(True)
    est.set_callbacks(quiet, interrupting)
    with pytest.raises(KeyboardInterrupt):
        quietly(est.fit, X, y)
    assert (quiet.teardowns, interrupting.teardowns) == (1, 1)
    assert not hasattr(est, "_callback_fit_ctx")
    assert not hasattr(est, "_skl_callbacks_to_teardown")
    assert hasattr(est, "n_features_in_")  # fitted: the fit was done


# ---------------------------------------------------------------------------
# scikit-learn's ProgressBar and ScoringMonitor


@needs_callbacks
def test_progress_bar_shows_the_epochs(capsys):
    pytest.importorskip("rich")
    from sklearn.callback import ProgressBar

    X, y, est = make_data("classifier")
    est.set_params(max_iter=50).set_callbacks(ProgressBar())
    est.fit(X, y)  # stops before max_iter: the stopping rule
    out = capsys.readouterr().out
    assert "MLPBNClassifier - fit" in out
    assert "100%" in out


@needs_callbacks
def test_progress_bar_in_a_pipeline(capsys):
    pytest.importorskip("rich")
    from sklearn.callback import ProgressBar

    X, y, est = make_data("regressor")
    pipe = make_pipeline(BatchNormScaler(), est)
    pipe.set_callbacks(ProgressBar(max_propagation_depth=None))
    quietly(pipe.fit, X, y)
    out = capsys.readouterr().out
    assert "MLPBNRegressor - fit" in out and "BatchNormScaler - fit" in out


@needs_callbacks
@pytest.mark.parametrize("problem", ["classifier", "regressor"])
def test_scoring_monitor_logs_one_score_per_epoch(problem):
    from sklearn.callback import ScoringMonitor

    X, y, est = make_data(problem)
    scoring = "accuracy" if problem == "classifier" else "r2"
    monitor = ScoringMonitor(scoring=scoring)
    quietly(est.set_callbacks(monitor).fit, X, y)
    rows = [row for row in monitor.get_logs().data if row["task_name"] == "epoch"]
    assert [row["task_id"] for row in rows] == list(range(est.n_iter_))
    # The last epoch's model is the fitted one, scored on the training rows.
    assert rows[-1][scoring] == est.score(X, y)
    for k, row in enumerate(rows[:-1]):
        assert row[scoring] == quietly(
            clone(est).set_params(max_iter=k + 1).fit, X, y
        ).score(X, y)


# ---------------------------------------------------------------------------
# BatchNormScaler: one task per fit, partial_fit and fit_transform call


@needs_callbacks
def test_scaler_calls_are_one_task_each():
    X = np.random.RandomState(0).normal(size=(30, 4))
    sw = np.linspace(0.5, 2, 30)
    rec = Recorder()
    scaler = BatchNormScaler().set_callbacks(rec)
    scaler.fit(X, sample_weight=sw)
    scaler.partial_fit(X)
    scaler.fit_transform(X)
    roots = rec.hooks("end")
    # StandardScaler names each of these calls' task "fit".
    reference = Recorder()
    standard = StandardScaler().set_callbacks(reference)
    standard.fit(X, sample_weight=sw)
    standard.partial_fit(X)
    standard.fit_transform(X)
    expected = [ctx.task_name for ctx, _ in reference.hooks("end")]
    assert [ctx.task_name for ctx, _ in roots] == expected == ["fit"] * 3
    assert all(ctx.max_subtasks == 0 and ctx.parent is None for ctx, _ in roots)
    first = roots[0][1]
    assert_array_equal(first["metadata"]["sample_weight"], sw)
    assert first["X"].shape == X.shape
    assert [hook for hook, _, _ in rec.calls].count("teardown") == 3
    # The fitted estimator of the end of each call transforms as the scaler
    # did then (the last one as it does now).
    assert_array_equal(
        roots[-1][1]["fitted_estimator"].transform(X), scaler.transform(X)
    )


@needs_callbacks
def test_failed_scaler_fit_tears_down_and_leaves_it_unchanged():
    X = np.random.RandomState(0).normal(size=(30, 4))
    rec = Recorder()
    scaler = BatchNormScaler(momentum=0.1).fit(X)
    before = pickle.dumps(scaler.__dict__)
    scaler.set_callbacks(rec)
    with pytest.raises(ValueError, match="2 samples"):
        scaler.partial_fit(X[:1])
    assert [hook for hook, _, _ in rec.calls].count("teardown") == 1
    scaler.set_callbacks()
    assert_array_equal(scaler.running_mean_, pickle.loads(before)["running_mean_"])
    assert not hasattr(scaler, "_callback_fit_ctx")


# ---------------------------------------------------------------------------
# scikit-learn < 1.9


@pytest.mark.skipif(CALLBACKS_SUPPORTED, reason="scikit-learn >= 1.9 has callbacks")
def test_estimators_work_without_sklearn_callbacks():
    X, y, est = make_data("classifier")
    for estimator in (est, MLPBNRegressor(), BatchNormScaler()):
        assert not hasattr(estimator, "set_callbacks")
    quietly(est.fit, X, y)
    assert est.n_iter_ == est.max_iter


def test_stand_in_without_sklearn_callback(monkeypatch):
    # The module as an older scikit-learn sees it: no sklearn.callback.
    monkeypatch.setitem(sys.modules, "sklearn.callback", None)
    spec = importlib.util.spec_from_file_location("_callbacks_old", _callbacks.__file__)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    assert not old.CALLBACKS_SUPPORTED
    assert not hasattr(old.CallbackSupportMixin, "set_callbacks")
    context = old.CallbackSupportMixin()._init_callback_context(max_subtasks=3)
    child = context.subcontext(task_name="epoch")
    assert child.call_on_fit_task_begin(estimator=None, X=1) is child
    assert child.call_on_fit_task_end(estimator=None) is False

    def method(self):
        return "called"

    assert old.with_callbacks(method) is method
