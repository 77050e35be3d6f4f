"""Tests of MLPBNClassifier and MLPBNRegressor as scikit-learn estimators.

The engine's math (loss, gradients, optimizer steps, running statistics,
minibatching) is checked against numpy in test_training.py; scikit-learn's
estimator checks run in test_sklearn_compat.py. This module covers the
behaviour scikit-learn's MLPs have (messages, early stopping, schedules, warm
start, partial_fit, warnings, errors), the inference path (folded weights,
``to_sklearn``), input types and dtypes, and what batch normalization is for.
"""

import contextlib
import copy
import functools
import os
import pickle
import re
import signal
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    make_classification,
    make_regression,
)
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.class_weight import compute_sample_weight
from threadpoolctl import threadpool_info, threadpool_limits

from sklearn_bn import MLPBNClassifier, MLPBNRegressor, _engine, _mlp, _threads
from sklearn_bn._engine import Engine

from reference import (
    DTYPES,
    forward_from_attributes,
    forward_sklearn_mlp,
    hidden_pre_normalization,
    round_2,
    weighted_mean_and_unbiased_var,
)

PROBLEMS = ["binary", "multiclass", "multilabel", "squared_error", "poisson"]


def make_data(problem, n=60, n_features=5, seed=0, dtype=np.float64):
    """X, y and a matching (unfitted) estimator for a problem type."""
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features)).astype(dtype)
    signal = X[:, :3] @ np.array([1.0, -2.0, 0.5])
    if problem == "binary":
        y = (signal + 0.3 * rng.normal(size=n) > 0).astype(int)
    elif problem == "multiclass":
        y = np.digitize(signal, [-1.0, 1.0])  # 3 classes
    elif problem == "multilabel":
        y = np.column_stack([signal > 0, X[:, 3] > 0, X[:, 0] + X[:, 4] > 0]).astype(
            int
        )
    elif problem == "squared_error":
        y = np.column_stack([signal, X[:, 3] ** 2]) + 0.1 * rng.normal(size=(n, 2))
    else:
        y = rng.poisson(np.exp(0.5 * np.tanh(signal)))
    # X goes straight into the first layer, trained with the round-2 recipe
    # (a constant learning rate, no label smoothing): these tests pin the
    # network's own math (tests/test_preprocessing.py covers the input
    # handling; test_defaults_* the defaults).
    if problem in ("squared_error", "poisson"):
        est = round_2(
            MLPBNRegressor,
            loss=problem,
            hidden_layer_sizes=(8, 6),
            max_iter=20,
            learning_rate_init=0.01,
            random_state=0,
            input_preprocessing=None,
        )
    else:
        est = round_2(
            MLPBNClassifier,
            hidden_layer_sizes=(8, 6),
            max_iter=20,
            learning_rate_init=0.01,
            random_state=0,
            input_preprocessing=None,
        )
    return X, y, est


def fit_quietly(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kwargs)


def raw_output(est, X):
    """What the output layer produces: probabilities or predictions, 2-D."""
    if hasattr(est, "predict_proba"):  # ours or scikit-learn's classifier
        proba = est.predict_proba(X)
        return proba[:, 1:] if est.n_outputs_ == 1 else proba
    return est.predict(X).reshape(X.shape[0], -1)


# ---------------------------------------------------------------------------
# Snapshots of the fitted state


def snapshot(est):
    """A deep copy of everything the estimator holds."""
    return pickle.loads(pickle.dumps(est.__dict__))


def assert_same(a, b, path="state"):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype, path
        assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        assert type(a) is type(b), path
        assert_same(a.__dict__, b.__dict__, f"{path}.__dict__")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------
# Numpy inference forward passes


# ---------------------------------------------------------------------------
# Inference: folded weights, to_sklearn, one row, blocks


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
@pytest.mark.parametrize("problem", PROBLEMS)
def test_predict_and_to_sklearn_match_the_running_statistics_network(
    problem, activation
):
    X, y, est = make_data(problem)
    fit_quietly(est.set_params(activation=activation), X, y)
    X_test = make_data(problem, n=30, seed=1)[0]
    expected = forward_from_attributes(est, X_test)
    out = raw_output(est, X_test)
    assert_allclose(out, expected, rtol=1e-9, atol=1e-12)

    mlp = est.to_sklearn()
    assert type(mlp) is (
        MLPClassifier if isinstance(est, MLPBNClassifier) else MLPRegressor
    )
    assert len(mlp.coefs_) == len(est.coefs_)
    for W, W_bn in zip(mlp.coefs_, est.coefs_):
        assert W.shape == W_bn.shape and W.dtype == W_bn.dtype
    # predict runs on the folded weights: scikit-learn's forward pass on them
    # (in numpy) gives what predict gives, to rounding.
    assert_allclose(forward_sklearn_mlp(mlp, X_test), out, rtol=1e-12, atol=1e-13)
    # The scikit-learn MLP itself: same predictions within 1e-6 in float64.
    if isinstance(est, MLPBNClassifier):
        assert_allclose(
            mlp.predict_proba(X_test), est.predict_proba(X_test), atol=1e-6, rtol=0
        )
        assert_array_equal(mlp.predict(X_test), est.predict(X_test))
        assert_array_equal(mlp.classes_, est.classes_)
    else:
        assert_allclose(mlp.predict(X_test), est.predict(X_test), atol=1e-6, rtol=1e-6)
    assert mlp.n_features_in_ == est.n_features_in_
    assert mlp.n_layers_ == est.n_layers_ and mlp.n_outputs_ == est.n_outputs_
    assert mlp.out_activation_ == est.out_activation_
    assert mlp.get_params()["hidden_layer_sizes"] == est.hidden_layer_sizes
    # The result is independent of the batch-norm model.
    mlp.coefs_[0][...] = 0
    assert_allclose(raw_output(est, X_test), out, rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_nan_set_in_the_weights_comes_out_as_in_scikit_learn(activation):
    # Weights are the user's to set: a NaN among them gives NaN out, ReLU's
    # included (numpy's maximum keeps NaN), as the to_sklearn model does.
    X, y, est = make_data("squared_error")
    fit_quietly(est.set_params(activation=activation), X, y)
    W = est.coefs_[0].copy()
    W[0, :] = np.nan
    est.coefs_ = [W, *est.coefs_[1:]]
    assert np.isnan(est.predict(X[:3])).all()
    assert np.isnan(est.to_sklearn().predict(X[:3])).all()


def test_to_sklearn_reads_one_fitted_state(monkeypatch):
    # A refit (in another thread) that publishes its model while to_sklearn
    # runs: the twin is the model it started from, not a mix of the two.
    from sklearn_bn import _preprocessing

    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    expected = est.predict_proba(X)
    other = fit_quietly(clone(est).set_params(random_state=1), X, y[::-1])
    of = _preprocessing.InputHandling.of

    def refit_meanwhile(model):
        est.__dict__.update(other.__dict__)  # publishes as a fit does
        return of(model)

    monkeypatch.setattr(_preprocessing.InputHandling, "of", refit_meanwhile)
    twin = est.to_sklearn()
    assert_allclose(twin.predict_proba(X), expected, atol=1e-6)


@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_to_sklearn_float32(problem):
    X, y, est = make_data(problem, dtype=np.float32)
    fit_quietly(est, X, y)
    mlp = est.to_sklearn()
    for W, b in zip(mlp.coefs_, mlp.intercepts_):
        assert W.dtype == b.dtype == np.float32
    if problem == "multiclass":
        assert_allclose(mlp.predict_proba(X), est.predict_proba(X), atol=1e-5)
    else:
        assert_allclose(mlp.predict(X), est.predict(X), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_to_sklearn_result_can_keep_training(problem, early_stopping):
    # A fitted scikit-learn MLP can continue with partial_fit or a warm-started
    # fit; so must the one to_sklearn returns.
    X, y, est = make_data(problem, n=80)
    fit_quietly(est.set_params(early_stopping=early_stopping), X, y)
    mlp = est.to_sklearn()
    if not early_stopping:
        mlp.partial_fit(X, y)
        assert len(mlp.loss_curve_) == len(est.loss_curve_) + 1
    mlp = est.to_sklearn().set_params(warm_start=True, max_iter=3, tol=1e6)
    fit_quietly(mlp, X, y)
    assert np.isfinite(mlp.coefs_[0]).all()
    # The batch-norm model is not touched.
    assert_allclose(est.to_sklearn().coefs_[0], est._folded_network().coefs[0])


def test_to_sklearn_needs_a_fitted_model():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        MLPBNClassifier().to_sklearn()


@pytest.mark.parametrize("sparse_format", [None, "csr", "csc"])
@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_one_row_predicts_as_among_others(problem, sparse_format):
    X, y, est = make_data(problem)
    fit_quietly(est, X, y)
    X_test = make_data(problem, n=25, seed=2)[0]
    if sparse_format:
        X_test[np.abs(X_test) < 0.7] = 0
        X_test = sp.csr_matrix(X_test).asformat(sparse_format)
    together = raw_output(est, X_test)
    for i in (0, 7, 24):
        alone = raw_output(est, X_test[i : i + 1])
        assert_allclose(alone[0], together[i], rtol=1e-12, atol=1e-14)
        if problem == "multiclass":
            assert_array_equal(
                est.predict(X_test[i : i + 1]), est.predict(X_test)[i : i + 1]
            )


@pytest.mark.parametrize("sparse_input", [False, True])
def test_prediction_across_row_blocks(sparse_input):
    # More rows than one block of the folded forward pass (1024 rows).
    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    X_big = make_data("multiclass", n=2500, seed=3)[0]
    if sparse_input:
        X_big[np.abs(X_big) < 0.5] = 0
        X_big = sp.csr_matrix(X_big)
    whole = est.predict_proba(X_big)
    parts = np.vstack(
        [
            est.predict_proba(X_big[a:b])
            for a, b in [(0, 1000), (1000, 1030), (1030, 2500)]
        ]
    )
    assert_allclose(whole, parts, rtol=1e-12, atol=1e-15)
    assert_allclose(whole, forward_from_attributes(est, X_big), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_rows", [3500, 700])
@pytest.mark.parametrize("dtype", DTYPES)
def test_prediction_does_not_depend_on_the_threads(dtype, n_rows, monkeypatch):
    # The team's threads take blocks of rows in turn, each calling BLAS on one
    # thread; the blocks depend on the number of rows only: a row's result
    # depends only on its block, so any number of threads gives the same bits.
    X, y, est = make_data("multiclass", dtype=dtype)
    fit_quietly(est, X, y)
    X_big = make_data("multiclass", n=n_rows, seed=4, dtype=dtype)[0]
    monkeypatch.setattr(_threads, "MIN_MULTIPLY_ADDS_PER_PREDICTION_THREAD", 1)
    monkeypatch.setattr(_threads, "BLAS_THREADING_MULTIPLY_ADDS", 1)
    seen, results = [], []
    prediction_threads = _threads.prediction_threads
    for n_threads in (1, 2, 3):

        @contextlib.contextmanager
        def spy(*args):
            with prediction_threads(*args) as (team, block_rows):
                seen.append((team, block_rows))
                # BLAS is on one thread while the team runs.
                assert all(
                    lib["num_threads"] == 1
                    for lib in threadpool_info()
                    if lib["user_api"] == "blas"
                )
                yield team, block_rows

        monkeypatch.setattr(_threads, "max_threads", lambda n=n_threads: n)
        monkeypatch.setattr(_threads, "prediction_threads", spy)
        # The team stays within BLAS's limit, whose threads it stands in for.
        with threadpool_limits(3, user_api="blas"):
            results.append(est.predict_proba(X_big))
    for other in results[1:]:
        assert_array_equal(other, results[0])
    block_rows = min(1024, max(128, -(-n_rows // 8)))  # from the number of rows only
    assert seen == [(1, block_rows), (2, block_rows), (3, block_rows)]
    assert_allclose(
        results[0],
        forward_from_attributes(est, X_big),
        rtol=1e-9 if dtype == np.float64 else 1e-4,
        atol=1e-6,
    )


def test_prediction_leaves_blas_threads_alone():
    # Small products: BLAS keeps its own limit (it runs them on one thread
    # anyway); larger ones run with BLAS on one thread, restored afterwards.
    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    with threadpool_limits(2, user_api="blas"):
        before = [
            lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
        ]
        est.predict_proba(X[:1])
        est.predict_proba(make_data("multiclass", n=5000)[0])
        after = [
            lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
        ]
    assert after == before


def test_predict_does_not_cache_or_change_state():
    X, y, est = make_data("binary")
    fit_quietly(est, X, y)
    before = snapshot(est)
    est.predict(X)
    est.predict_proba(X)
    est.predict_log_proba(X)
    est.score(X, y)
    assert_same(before, snapshot(est))


def test_predict_log_proba_and_proba_shapes():
    for problem, n_cols in [("binary", 2), ("multiclass", 3), ("multilabel", 3)]:
        X, y, est = make_data(problem)
        fit_quietly(est, X, y)
        proba = est.predict_proba(X)
        assert proba.shape == (X.shape[0], n_cols)
        assert ((proba >= 0) & (proba <= 1)).all()
        if problem != "multilabel":
            assert_allclose(proba.sum(axis=1), 1, rtol=1e-12)
        with np.errstate(divide="ignore"):
            assert_allclose(est.predict_log_proba(X), np.log(proba), rtol=1e-12)
        pred = est.predict(X)
        assert pred.shape == np.shape(y)
        if problem == "multilabel":
            assert_array_equal(pred, (proba > 0.5).astype(int))
        else:
            assert_array_equal(pred, est.classes_[proba.argmax(axis=1)])


# ---------------------------------------------------------------------------
# Population statistics: bn_stats='population' and recompute_bn_stats


def assert_population_statistics(est, X, sample_weight=None):
    """Each hidden layer's stored statistics are the weighted mean and
    unbiased variance of its values before normalization over the rows of
    ``X``, as a numpy forward pass of the inference network computes them
    (whose layers below normalize with the stored statistics)."""
    float64 = (
        est.coefs_[0].dtype == np.float64
        and np.asarray(X.data if sp.issparse(X) else X).dtype == np.float64
    )
    # float32 models compute z in float32: rounding of about 1e-7 of its
    # scale, grown a little through the layers below.
    rtol = 1e-10 if float64 else 2e-5
    for i, z in enumerate(hidden_pre_normalization(est, X)):
        mean, var = weighted_mean_and_unbiased_var(z, sample_weight)
        assert est.running_means_[i].dtype == est.coefs_[0].dtype
        assert est.running_vars_[i].dtype == est.coefs_[0].dtype
        # A mean near 0 is compared on the scale of its unit.
        assert_allclose(
            est.running_means_[i],
            mean,
            rtol=rtol,
            atol=rtol * np.sqrt(var).max(),
            err_msg=f"mean of layer {i}",
        )
        assert_allclose(
            est.running_vars_[i], var, rtol=rtol, err_msg=f"variance of layer {i}"
        )
        # The inference network standardizes these rows: z_hat has mean 0 and
        # unbiased variance 1 (before bn_epsilon).
        m, v = (
            np.asarray(a, dtype=np.float64)
            for a in (est.running_means_[i], est.running_vars_[i])
        )
        z_mean, z_var = weighted_mean_and_unbiased_var(
            (z - m) / np.sqrt(v), sample_weight
        )
        assert_allclose(z_mean, 0, atol=100 * rtol)
        assert_allclose(z_var, 1, rtol=100 * rtol)


def small_blocks(monkeypatch):
    """Row blocks of 7 rows: many blocks, a ragged last one."""
    monkeypatch.setattr(_engine, "POPULATION_MIN_ROWS", 7)
    monkeypatch.setattr(_engine, "POPULATION_MAX_ROWS", 7)


@pytest.mark.parametrize("blocks", ["default", "small"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("sparse_format", [None, "csr", "csc"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_recompute_bn_stats_gives_the_exact_statistics(
    dtype, sparse_format, weighted, blocks, monkeypatch
):
    X, y, est = make_data("multiclass", n=300, dtype=dtype)
    est.set_params(hidden_layer_sizes=(9, 7, 5), activation="tanh", max_iter=5)
    fit_quietly(est, X, y)
    # Fresh rows of another scale: statistics unlike the running ones.
    X_new = (1.5 * make_data("multiclass", n=230, seed=1)[0] + 0.5).astype(dtype)
    X_new[np.abs(X_new) < 0.8] = 0
    sw = np.random.RandomState(2).uniform(0, 3, len(X_new)) if weighted else None
    if sw is not None:
        sw[::5] = 0
    X_in = (
        X_new if sparse_format is None else sp.csr_matrix(X_new).asformat(sparse_format)
    )
    if blocks == "small":
        small_blocks(monkeypatch)
    before = [est.running_means_, est.running_vars_]
    assert est.recompute_bn_stats(X_in, sample_weight=sw) is est
    assert_population_statistics(est, X_new, sw)
    for new, old in zip([est.running_means_, est.running_vars_], before):
        assert new is not old and not np.allclose(new[0], old[0])
        assert all(not a.flags.writeable for a in new)


@pytest.mark.parametrize("dtype", DTYPES)
def test_recompute_bn_stats_does_not_depend_on_the_blocks(dtype, monkeypatch):
    # Blocks change the order of the float64 sums only.
    X, y, est = make_data("squared_error", n=500, dtype=dtype)
    fit_quietly(est, X, y)
    est.recompute_bn_stats(X)
    means, variances = est.running_means_, est.running_vars_
    small_blocks(monkeypatch)
    est.recompute_bn_stats(X)
    for a, b in zip(means + variances, est.running_means_ + est.running_vars_):
        assert_allclose(a, b, rtol=1e-12 if dtype == np.float64 else 1e-6)


def test_recompute_bn_stats_on_normalized_and_integer_weights():
    # Integer weights are repeat counts; weights summing to 1 take the number
    # of rows of positive weight as m (the running variance's rule).
    X, y, est = make_data("binary", n=80)
    fit_quietly(est, X, y)
    counts = np.random.RandomState(0).randint(0, 4, len(X))
    repeated = pickle.loads(pickle.dumps(est))
    est.recompute_bn_stats(X, sample_weight=counts)
    repeated.recompute_bn_stats(np.repeat(X, counts, axis=0))
    for a, b in zip(
        est.running_means_ + est.running_vars_,
        repeated.running_means_ + repeated.running_vars_,
    ):
        assert_allclose(a, b, rtol=1e-10)
    normalized = counts / counts.sum()
    est.recompute_bn_stats(X, sample_weight=normalized)
    assert_population_statistics(est, X, normalized)


def test_float64_rows_for_a_float32_model_are_standardized_as_predict_computes():
    # predict computes float64 input in float64 (the folded weights too):
    # the statistics are computed that way and stored in float32.
    X, y, est = make_data("multiclass", n=200, dtype=np.float32)
    fit_quietly(est, X, y)
    est.recompute_bn_stats(X.astype(np.float64) * 2)
    assert est.running_means_[0].dtype == np.float32
    for i, z in enumerate(hidden_pre_normalization(est, X.astype(np.float64) * 2)):
        mean, var = weighted_mean_and_unbiased_var(z)
        assert_allclose(
            est.running_means_[i], mean, rtol=1e-6, atol=1e-6 * np.sqrt(var).max()
        )
        assert_allclose(est.running_vars_[i], var, rtol=1e-6)


@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_predict_and_to_sklearn_use_the_recomputed_statistics(problem):
    X, y, est = make_data(problem)
    fit_quietly(est, X, y)
    before = raw_output(est, X)
    est.recompute_bn_stats(X[: len(X) // 2] * 3)
    after = raw_output(est, X)
    assert not np.allclose(after, before)
    assert_allclose(after, forward_from_attributes(est, X), rtol=1e-9, atol=1e-12)
    assert_allclose(raw_output(est.to_sklearn(), X), after, rtol=1e-9, atol=1e-12)


def test_population_statistics_without_hidden_layers():
    X, y, est = make_data("multiclass")
    est.set_params(hidden_layer_sizes=(), bn_stats="population")
    fit_quietly(est, X, y)
    assert est.running_means_ == [] and est.running_vars_ == []
    assert est.recompute_bn_stats(X).running_means_ == []


def test_failed_recompute_bn_stats_leaves_the_model_unchanged():
    X, y, est = make_data("binary")
    with pytest.raises(NotFittedError):
        clone(est).recompute_bn_stats(X)
    fit_quietly(est, X, y)
    before = snapshot(est)
    X_nan, X_inf = X.copy(), X.copy()
    X_nan[0, 0], X_inf[0, 0] = np.nan, np.inf
    cases = [
        (X[:, :4], None, "features"),
        (X_nan, None, "NaN"),
        (X_inf, None, "infinity"),
        (X[:1], None, "n_samples=1"),
        (X, np.zeros(len(X)), "zero"),
        (X, -np.ones(len(X)), "[Nn]egative"),
        (X, np.ones(len(X) - 1), "sample_weight|shape|samples"),
        (X[:3], [0.5, 0, 0], "unbiased variance"),
        (X * 1e300, None, "not finite"),
    ]
    for X_bad, sw, message in cases:
        with pytest.raises(ValueError, match=message):
            est.recompute_bn_stats(X_bad, sample_weight=sw)
        assert_same(before, snapshot(est), message)


def test_failed_warm_fit_that_trains_nothing_leaves_the_model_unchanged():
    # One row of positive weight: no minibatch can be trained (nor could
    # the population statistics have an unbiased variance). A warm fit
    # fails as a new one does, and the model stays as it was.
    X, y, est = make_data("squared_error", n=10)
    fit_quietly(est, X, y)
    before = snapshot(est)
    sw = np.zeros(len(y))
    sw[3] = 0.5
    for bn_stats in ("running", "population"):
        est.set_params(bn_stats=bn_stats, warm_start=True)
        with pytest.raises(ValueError, match="No minibatch could be trained"):
            fit_quietly(est, X, y, sample_weight=sw)
        est.set_params(bn_stats="running", warm_start=False)
        assert_same(before, snapshot(est))


def test_recompute_bn_stats_checks_feature_names():
    pd = pytest.importorskip("pandas")
    X, y, est = make_data("binary")
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    fit_quietly(est, frame, y)
    before = snapshot(est)
    with pytest.raises(ValueError, match="feature names"):
        est.recompute_bn_stats(frame[frame.columns[::-1]])
    assert_same(before, snapshot(est))
    est.recompute_bn_stats(frame)


def recorded_split(monkeypatch):
    """Record what early stopping's train/validation split returns."""
    calls = []
    real = _mlp.train_test_split

    def recording(*arrays, **kwargs):
        calls.append(real(*arrays, **kwargs))
        return calls[-1]

    monkeypatch.setattr(_mlp, "train_test_split", recording)
    return calls


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("sparse_format", [None, "csr"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "problem, weighted",
    [
        ("multiclass", "none"),
        ("multiclass", "sample_weight"),
        ("multiclass", "class_weight"),
        ("squared_error", "none"),
        ("squared_error", "sample_weight"),
    ],
)
def test_population_fit_equals_running_fit_then_recompute_on_the_training_rows(
    problem, weighted, dtype, sparse_format, early_stopping, monkeypatch
):
    X, y, est = make_data(problem, n=120, dtype=dtype)
    if sparse_format:
        X[np.abs(X) < 0.5] = 0
        X = sp.csr_matrix(X)
    est.set_params(
        early_stopping=early_stopping,
        validation_fraction=0.25,
        hidden_layer_sizes=(8, 6, 4),
    )
    sw = None
    if weighted == "sample_weight":
        sw = np.random.RandomState(3).uniform(0.2, 2.0, len(y))
    elif weighted == "class_weight":
        est.set_params(class_weight="balanced")
        sw = compute_sample_weight("balanced", y)
    split = recorded_split(monkeypatch)
    population = fit_quietly(
        clone(est).set_params(bn_stats="population"),
        X,
        y,
        sample_weight=None if weighted == "class_weight" else sw,
    )
    running = fit_quietly(
        clone(est), X, y, sample_weight=None if weighted == "class_weight" else sw
    )
    # Training is the same; only the running statistics differ.
    for name in ("coefs_", "gammas_", "intercepts_"):
        for a, b in zip(getattr(population, name), getattr(running, name)):
            assert_array_equal(a, b)
    assert population.loss_curve_ == running.loss_curve_
    X_train, sw_train = X, sw
    if early_stopping:
        # The rows trained on: the validation split is excluded.
        arrays = split[0]
        X_train = arrays[0]
        sw_train = arrays[4] if len(arrays) > 4 else None
        assert X_train.shape[0] == 90
    sw_train_model = None if sw_train is None else np.asarray(sw_train, dtype=dtype)
    running.recompute_bn_stats(X_train, sample_weight=sw_train_model)
    for a, b in zip(
        population.running_means_ + population.running_vars_,
        running.running_means_ + running.running_vars_,
    ):
        assert_array_equal(a, b)
    assert_population_statistics(population, X_train, sw_train_model)
    if early_stopping:
        # Not the statistics of every row given to fit.
        everything = pickle.loads(pickle.dumps(running)).recompute_bn_stats(
            X, sample_weight=sw
        )
        assert not np.allclose(everything.running_vars_[0], population.running_vars_[0])


def test_partial_fit_keeps_the_running_statistics():
    # bn_stats applies to fit; after a partial_fit stream, recompute_bn_stats
    # does it on the rows one chooses.
    X, y, est = make_data("multiclass")
    a = (
        clone(est)
        .set_params(bn_stats="population")
        .partial_fit(X, y, classes=[0, 1, 2])
    )
    b = clone(est).partial_fit(X, y, classes=[0, 1, 2])
    for p, q in zip(
        a.running_means_ + a.running_vars_, b.running_means_ + b.running_vars_
    ):
        assert_array_equal(p, q)


def test_population_statistics_help_a_model_with_stale_running_statistics():
    # With bn_momentum tiny, the running statistics barely leave their start
    # (0 and 1): predictions from them are poor; the population statistics
    # repair the model without training it further.
    X, y = load_digits(return_X_y=True)
    X = X / 16
    # X straight in: its uncentred pixels are what leaves the stale running
    # means far from the layer's (the input handling would centre them).
    est = round_2(
        MLPBNClassifier,
        hidden_layer_sizes=(32,),
        bn_momentum=1e-4,
        max_iter=15,
        random_state=0,
        input_preprocessing=None,
    )
    running = fit_quietly(clone(est), X, y)
    population = fit_quietly(clone(est).set_params(bn_stats="population"), X, y)
    assert population.score(X, y) > running.score(X, y) + 0.1
    assert population.score(X, y) > 0.9


# ---------------------------------------------------------------------------
# Input types and dtypes


@pytest.mark.parametrize("problem", PROBLEMS)
def test_float32_stays_float32(problem):
    X, y, est = make_data(problem, dtype=np.float32)
    fit_quietly(est, X, y)
    for name in ("coefs_", "intercepts_", "gammas_", "running_means_", "running_vars_"):
        for arr in getattr(est, name):
            assert arr.dtype == np.float32, name
    out = est.predict_proba(X) if isinstance(est, MLPBNClassifier) else est.predict(X)
    assert out.dtype == np.float32
    if isinstance(est, MLPBNClassifier):
        assert est.predict_log_proba(X).dtype == np.float32
    # partial_fit keeps the dtype of the weights.
    est.partial_fit(X.astype(np.float64), y)
    assert est.coefs_[0].dtype == np.float32
    assert isinstance(est.loss_, float)


@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_float32_training_tracks_float64(problem):
    X, y, est = make_data(problem)
    est.set_params(max_iter=3)
    est64 = fit_quietly(clone(est), X, y)
    est32 = fit_quietly(clone(est), X.astype(np.float32), y)
    assert est64.coefs_[0].dtype == np.float64
    assert_allclose(est32.loss_curve_, est64.loss_curve_, rtol=1e-4)
    assert_allclose(
        raw_output(est32, X.astype(np.float32)),
        raw_output(est64, X),
        rtol=1e-3,
        atol=1e-3,
    )


def test_integer_input_trains_in_float64():
    X, y, est = make_data("binary")
    fit_quietly(est, np.round(X * 3).astype(np.int64), y)
    assert est.coefs_[0].dtype == np.float64


@pytest.mark.parametrize("sparse_format", ["csr", "csc"])
@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_sparse_input_trains_as_dense(problem, sparse_format):
    X, y, est = make_data(problem)
    X[np.abs(X) < 0.6] = 0
    dense = fit_quietly(clone(est), X, y)
    Xs = sp.csr_matrix(X).asformat(sparse_format)
    sparse = fit_quietly(clone(est), Xs, y)
    for a, b in zip(sparse.coefs_, dense.coefs_):
        assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    assert_allclose(sparse.loss_curve_, dense.loss_curve_, rtol=1e-10)
    assert_allclose(raw_output(sparse, Xs), raw_output(dense, X), rtol=1e-9, atol=1e-11)
    assert_allclose(raw_output(dense, Xs), raw_output(dense, X), rtol=1e-12, atol=1e-14)


def test_readonly_and_noncontiguous_input():
    X, y, est = make_data("multiclass")
    ref = fit_quietly(clone(est), X, y)
    X_ro = np.asfortranarray(X)
    X_ro.setflags(write=False)
    y_ro = y.copy()
    y_ro.setflags(write=False)
    other = fit_quietly(clone(est), X_ro, y_ro)
    assert_allclose(other.coefs_[0], ref.coefs_[0], rtol=1e-12)
    assert_allclose(other.predict_proba(X_ro), ref.predict_proba(X), rtol=1e-12)


def test_multilabel_targets():
    X, y, est = make_data("multilabel")
    fit_quietly(est, X, y)
    assert est.out_activation_ == "logistic"
    assert est.n_outputs_ == 3
    assert_array_equal(est.classes_, [0, 1, 2])
    assert est.predict(X).shape == y.shape
    assert est.score(X, y) > 0.3  # subset accuracy, well above chance (1/8)
    # partial_fit with an indicator matrix (classes are required, as in scikit-learn).
    inc = clone(est)
    inc.partial_fit(X, y, classes=[0, 1, 2])
    inc.partial_fit(X, y)
    assert inc.predict(X).shape == y.shape


@pytest.mark.parametrize("continue_with", ["warm_start", "partial_fit"])
@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_continuing_on_indicator_targets_raises_sklearns_error(kind, continue_with):
    # The direct encoding of the targets must keep LabelBinarizer's check (it
    # gave numpy's IndexError), and leave the model as it was.
    X, y, est = make_data(kind)
    k = len(np.unique(y))
    indicator = np.eye(k, dtype=int)[np.arange(len(y)) % k]
    if continue_with == "warm_start":
        est.set_params(warm_start=True)
        fit_quietly(est, X, y)
        call = functools.partial(est.fit, X, indicator)
    else:
        est.partial_fit(X, y, classes=np.unique(y))
        call = functools.partial(est.partial_fit, X, indicator)
    before = pickle.dumps(est)
    with pytest.raises(ValueError, match="not fitted with multilabel input"):
        call()
    assert pickle.dumps(est) == before


def test_the_twin_shares_no_array_with_the_model():
    # classes_ and feature_names_in_ were the model's own arrays: an edit of
    # the twin changed the model's labels and broke its predictions.
    pd = pytest.importorskip("pandas")
    X, y, est = make_data("multiclass")
    X = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    est.set_params(input_preprocessing=None)
    fit_quietly(est, X, y)
    before = est.predict(X)
    twin = est.to_sklearn()
    twin.classes_[:] = twin.classes_ + 10
    twin.feature_names_in_[0] = "renamed"
    assert_array_equal(est.predict(X), before)


def test_string_labels():
    X, y, est = make_data("multiclass")
    labels = np.array(["ant", "bee", "cat"])[y]
    fit_quietly(est, X, labels)
    assert_array_equal(est.classes_, ["ant", "bee", "cat"])
    assert set(est.predict(X)) <= {"ant", "bee", "cat"}
    assert_array_equal(est.to_sklearn().predict(X), est.predict(X))


def test_feature_names():
    pd = pytest.importorskip("pandas")
    X, y, est = make_data("binary")
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    fit_quietly(est, df, y)
    assert_array_equal(est.feature_names_in_, df.columns)
    assert_array_equal(est.to_sklearn().feature_names_in_, df.columns)
    with pytest.warns(UserWarning, match="feature names"):
        from_array = est.predict_proba(X)
    assert_allclose(est.predict_proba(df), from_array)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_no_hidden_layer(problem):
    # hidden_layer_sizes=() is a (batch-norm free) linear model, as in
    # scikit-learn; sparse input goes through its own path for every output
    # activation (softmax, logistic, identity, exp).
    X, y, est = make_data(problem)
    X[np.abs(X) < 0.5] = 0
    fit_quietly(est.set_params(hidden_layer_sizes=()), X, y)
    assert est.gammas_ == [] and est.running_means_ == [] and len(est.coefs_) == 1
    dense = raw_output(est, X)
    assert_allclose(raw_output(est.to_sklearn(), X), dense, rtol=1e-12, atol=1e-12)
    assert_allclose(raw_output(est, sp.csr_matrix(X)), dense, rtol=1e-12, atol=1e-12)
    assert_allclose(raw_output(est, sp.csc_matrix(X)), dense, rtol=1e-12, atol=1e-12)


def test_hidden_layer_sizes_int_or_sequence_of_positive_ints():
    X, y, est = make_data("binary")
    fit_quietly(est.set_params(hidden_layer_sizes=7), X, y)
    assert [c.shape for c in est.coefs_] == [(5, 7), (7, 1)]
    fit_quietly(est.set_params(hidden_layer_sizes=[3, 4]), X, y)
    assert [c.shape for c in est.coefs_] == [(5, 3), (3, 4), (4, 1)]
    for bad in [(5, 0), [5, -1], (2.5,), 0]:
        with pytest.raises(ValueError, match="hidden_layer_sizes"):
            clone(est).set_params(hidden_layer_sizes=bad).fit(X, y)


def test_sparse_input_with_unsorted_indices():
    X, y, est = make_data("multiclass")
    X[np.abs(X) < 0.6] = 0
    Xs = sp.csr_matrix(X)
    unsorted = Xs.copy()
    for i in range(X.shape[0]):  # reverse each row's entries
        row = slice(unsorted.indptr[i], unsorted.indptr[i + 1])
        unsorted.indices[row] = unsorted.indices[row][::-1]
        unsorted.data[row] = unsorted.data[row][::-1]
    unsorted.has_sorted_indices = False
    ref = fit_quietly(clone(est), Xs, y)
    other = fit_quietly(clone(est), unsorted, y)
    for a, b in zip(other.coefs_, ref.coefs_):
        assert_array_equal(a, b)
    assert_allclose(ref.predict_proba(unsorted), ref.predict_proba(X), rtol=1e-12)
    assert not unsorted.has_sorted_indices  # the caller's matrix is left alone


# ---------------------------------------------------------------------------
# Sample weights


def test_unit_sample_weights_change_nothing():
    X, y, est = make_data("multiclass")
    a = fit_quietly(clone(est), X, y)
    b = fit_quietly(clone(est), X, y, sample_weight=np.ones(len(y)))
    for p, q in zip(
        a.coefs_ + a.gammas_ + a.running_vars_, b.coefs_ + b.gammas_ + b.running_vars_
    ):
        assert_allclose(p, q, rtol=1e-12, atol=1e-14)
    assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_integer_sample_weights_act_as_repeat_counts(solver):
    # With one full batch per epoch and no shuffling, weighting a row by k is
    # training on it k times: loss, gradient and running statistics (whose
    # unbiased correction uses the weight sum) coincide.
    X, y, est = make_data("squared_error", n=20)
    sw = np.random.RandomState(0).randint(0, 4, size=20)
    rep = np.repeat(np.arange(20), sw)
    est.set_params(
        solver=solver, batch_size=1000, shuffle=False, max_iter=5, alpha=0.01
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # batch_size clipped; max_iter reached
        weighted = clone(est).fit(X, y, sample_weight=sw)
        repeated = clone(est).fit(X[rep], y[rep])
    for name in ("coefs_", "intercepts_", "gammas_", "running_means_", "running_vars_"):
        for p, q in zip(getattr(weighted, name), getattr(repeated, name)):
            assert_allclose(p, q, rtol=1e-9, atol=1e-12, err_msg=name)
    assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-10)


def test_normalized_sample_weights_give_a_usable_model():
    # Weights that sum to one (a common normalization) must not break the
    # unbiased correction m / (m - 1) of the running variance: with alpha=0
    # the optimization is the same as unweighted, so the model should be too.
    X, y, est = make_data("squared_error", n=40)
    est.set_params(alpha=0.0)
    unweighted = fit_quietly(clone(est), X, y)
    normalized = fit_quietly(clone(est), X, y, sample_weight=np.full(40, 1 / 40))
    for v_n, v_u in zip(normalized.running_vars_, unweighted.running_vars_):
        assert np.all(np.isfinite(v_n))
        assert_allclose(v_n, v_u, rtol=0.1)
    assert normalized.score(X, y) > unweighted.score(X, y) - 0.05


def test_sparse_regression_targets_raise_a_clear_error():
    X = np.random.RandomState(0).normal(size=(30, 3))
    with pytest.raises(ValueError, match="dense y"):
        MLPBNRegressor(max_iter=2).fit(X, sp.csr_matrix(np.ones((30, 2))))


def test_bad_sample_weights():
    X, y, est = make_data("binary")
    with pytest.raises(ValueError, match="[Nn]egative"):
        est.fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="zero"):
        est.fit(X, y, sample_weight=np.zeros(len(y)))
    with pytest.raises(ValueError):
        est.fit(X, y, sample_weight=np.ones(len(y) - 1))


@pytest.mark.parametrize("container", [np.asarray, list])
def test_infinite_sample_weights_get_scikit_learns_message(container):
    # Dividing cannot make an infinite weight finite: the message is the one
    # MLPClassifier and StandardScaler give.
    X, y, est = make_data("binary")
    weights = np.ones(len(y))
    weights[3] = np.inf
    message = "Input sample_weight contains infinity"
    with pytest.raises(ValueError, match=message):
        est.fit(X, y, sample_weight=container(weights))
    with pytest.raises(ValueError, match=message):
        MLPClassifier().fit(X, y, sample_weight=container(weights))
    with pytest.raises(ValueError, match=message):
        clone(est).set_params(class_weight="balanced").fit(
            X, y, sample_weight=container(weights)
        )


@pytest.mark.parametrize(
    "weights", [np.ones(1, dtype=object), np.array(["1"])], ids=["object", "str"]
)
def test_sample_weights_of_any_dtype_sklearn_accepts(weights):
    # Object and numeric-string arrays, which scikit-learn's validation
    # converts, once failed in the infinity check with numpy's TypeError.
    X, y, est = make_data("binary")
    weights = np.repeat(weights, len(y))
    fit_quietly(est, X, y, sample_weight=weights)
    expected = fit_quietly(clone(est), X, y, sample_weight=np.ones(len(y)))
    assert_array_equal(est.coefs_[0], expected.coefs_[0])


# ---------------------------------------------------------------------------
# Class weights


def assert_same_fit(a, b):
    """Two fits equal bit for bit: parameters, statistics and history."""
    for name in FITTED_ARRAYS:
        for p, q in zip(getattr(a, name), getattr(b, name)):
            assert p.dtype == q.dtype
            assert_array_equal(p, q, err_msg=name)
    assert a.loss_curve_ == b.loss_curve_
    assert a.validation_scores_ == b.validation_scores_
    assert a.n_iter_ == b.n_iter_


def imbalanced_classes(n_classes, n=150, dtype=np.float64):
    """Data whose classes have very different sizes."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(n, 5)).astype(dtype)
    score = X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.normal(size=n)
    cuts = [0.9] if n_classes == 2 else [-0.2, 1.1]
    return X, np.digitize(score, cuts)


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("sparse_input", [False, True])
@pytest.mark.parametrize("user_weights", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("class_weight", ["balanced", {0: 0.3, 1: 2.5}])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_class_weight_is_compute_sample_weight(
    n_classes, class_weight, dtype, user_weights, sparse_input, early_stopping
):
    # The fit equals, bit for bit, the same fit given compute_sample_weight's
    # weights (times the user's) as sample_weight; validation scores included.
    X, y = imbalanced_classes(n_classes, dtype=dtype)
    if sparse_input:
        X[np.abs(X) < 0.6] = 0
        X = sp.csr_matrix(X)
    sw = np.random.RandomState(1).uniform(0.1, 3.0, len(y)) if user_weights else None
    est = MLPBNClassifier(
        hidden_layer_sizes=(7, 5),
        max_iter=8,
        batch_size=32,
        early_stopping=early_stopping,
        n_iter_no_change=3,
        random_state=0,
    )
    weighted = fit_quietly(
        clone(est).set_params(class_weight=class_weight), X, y, sample_weight=sw
    )
    expected = compute_sample_weight(class_weight, y)
    reference = fit_quietly(
        clone(est), X, y, sample_weight=expected if sw is None else sw * expected
    )
    assert_same_fit(weighted, reference)
    plain = fit_quietly(clone(est), X, y, sample_weight=sw)
    assert not np.array_equal(weighted.coefs_[0], plain.coefs_[0])


def test_class_weight_with_string_labels_and_missing_classes():
    # Classes absent from the dict weigh 1.
    X, y = imbalanced_classes(3)
    labels = np.array(["low", "mid", "high"])[y]
    cw = {"high": 4.0}
    est = MLPBNClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0)
    weighted = fit_quietly(clone(est).set_params(class_weight=cw), X, labels)
    reference = fit_quietly(
        clone(est), X, labels, sample_weight=np.where(labels == "high", 4.0, 1.0)
    )
    assert_same_fit(weighted, reference)


def test_balanced_class_weight_for_multilabel_targets():
    # scikit-learn's meaning for several outputs: per label, the balanced
    # weight of each row's 0 or 1, multiplied over the labels.
    X, Y, est = make_data("multilabel")
    weighted = fit_quietly(clone(est).set_params(class_weight="balanced"), X, Y)
    expected = np.ones(len(Y))
    for k in range(Y.shape[1]):
        counts = np.bincount(Y[:, k])
        expected *= (len(Y) / (2 * counts))[Y[:, k]]
    assert_allclose(compute_sample_weight("balanced", Y), expected, rtol=1e-15)
    reference = fit_quietly(clone(est), X, Y, sample_weight=expected)
    assert_same_fit(weighted, reference)
    with pytest.raises(ValueError, match="multilabel"):
        fit_quietly(clone(est).set_params(class_weight={0: 1.0, 1: 2.0}), X, Y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_partial_fit_weighs_each_batch_by_its_classes(dtype):
    # A batch need not hold every class: the dict is looked up over classes_.
    X, y = imbalanced_classes(3, dtype=dtype)
    cw = {0: 0.5, 2: 3.0}
    est = MLPBNClassifier(hidden_layer_sizes=(6,), random_state=0)
    weighted = clone(est).set_params(class_weight=cw)
    reference = clone(est)
    batches = [np.flatnonzero(y != 2)[:60], np.arange(60, 150)]
    for rows in batches:
        weighted.partial_fit(X[rows], y[rows], classes=[0, 1, 2])
        reference.partial_fit(
            X[rows],
            y[rows],
            classes=[0, 1, 2],
            sample_weight=np.array([cw.get(c, 1.0) for c in y[rows]]),
        )
    assert_same_fit(weighted, reference)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_goes_on_with_the_optimizer_of_the_latest_fit(solver):
    # As scikit-learn's MLP: optimizer settings changed since take effect at
    # the next fit; the loss's alpha at once.
    X, y, _ = make_data("multiclass")
    params = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0, solver=solver)
    a, b, c = (fit_quietly(MLPBNClassifier(**params), X, y) for _ in range(3))
    b.set_params(weight_decay=10.0, learning_rate_init=1e-9, momentum=0.1)
    c.set_params(alpha=10.0)
    for est in (a, b, c):
        est.partial_fit(X, y)
    assert all(np.array_equal(p, q) for p, q in zip(a.coefs_, b.coefs_))
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])
    fit_quietly(a, X, y)
    fit_quietly(b, X, y)
    assert not np.array_equal(a.coefs_[0], b.coefs_[0])


def test_partial_fit_refuses_balanced_class_weight():
    X, y = imbalanced_classes(2)
    est = MLPBNClassifier(hidden_layer_sizes=(6,), random_state=0).partial_fit(
        X, y, classes=[0, 1]
    )
    before = snapshot(est)
    est.set_params(class_weight="balanced")
    with pytest.raises(ValueError, match="balanced.*partial_fit"):
        est.partial_fit(X, y)
    est.set_params(class_weight=None)
    assert_same(before, snapshot(est))
    with pytest.raises(ValueError, match="balanced.*partial_fit"):
        clone(est).set_params(class_weight="balanced").partial_fit(X, y, classes=[0, 1])


@pytest.mark.parametrize(
    "class_weight, message",
    [
        ({0: 1.0, 7: 2.0}, r"not classes: \[7\]"),
        ({"a": 1.0}, "not classes"),
        ({0: -1.0}, "non-negative"),
        ({0: np.nan}, "non-negative"),
        ({0: "heavy"}, "non-negative"),
        ({0: 0.0, 1: 0.0}, "zero"),
    ],
)
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_bad_class_weight_raises_and_leaves_the_model_unchanged(
    class_weight, message, method
):
    X, y = imbalanced_classes(2)
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(6,), max_iter=3, random_state=0), X, y
    )
    before = snapshot(est)
    est.set_params(class_weight=class_weight)
    with pytest.raises(ValueError, match=message):
        getattr(est, method)(X, y)
    est.set_params(class_weight=None)
    assert_same(before, snapshot(est))


def test_class_weight_is_validated_and_is_the_classifiers_only():
    X, y = imbalanced_classes(2)
    with pytest.raises(ValueError, match="class_weight"):
        MLPBNClassifier(class_weight="equal").fit(X, y)
    assert "class_weight" not in MLPBNRegressor().get_params()


# ---------------------------------------------------------------------------
# Batches


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
@pytest.mark.parametrize("problem", ["binary", "squared_error"])
def test_one_sample_raises_n_samples_1(problem, method):
    X, y, est = make_data(problem)
    kwargs = (
        {"classes": [0, 1]} if method == "partial_fit" and problem == "binary" else {}
    )
    # A classifier fitted on one row also has one class: scikit-learn's checks
    # accept either message then.
    message = (
        "n_samples=1|1 class"
        if method == "fit" and problem == "binary"
        else "n_samples=1"
    )
    with pytest.raises(ValueError, match=message):
        getattr(est, method)(X[:1], y[:1], **kwargs)


def test_one_sample_on_fitted_model_partial_fit():
    X, y, est = make_data("binary")
    fit_quietly(est, X, y)
    before = snapshot(est)
    with pytest.raises(ValueError, match="n_samples=1"):
        est.partial_fit(X[:1], y[:1])
    assert_same(before, snapshot(est))


def test_batch_size_larger_than_data_is_clipped():
    X, y, est = make_data("squared_error", n=30)
    est.set_params(shuffle=False, max_iter=3)
    with pytest.warns(UserWarning, match="clipped"):
        big = fit_quietly(clone(est).set_params(batch_size=500), X, y)
    exact = fit_quietly(clone(est).set_params(batch_size=30), X, y)
    for p, q in zip(big.coefs_, exact.coefs_):
        assert_array_equal(p, q)
    # scikit-learn warns alike.
    with pytest.warns(UserWarning, match="clipped"):
        fit_quietly(MLPRegressor(batch_size=500, max_iter=1), X, y)


def test_batch_size_below_two_is_rejected():
    X, y, est = make_data("binary")
    with pytest.raises(ValueError, match="batch_size"):
        est.set_params(batch_size=1).fit(X, y)


@pytest.mark.parametrize("batch_size", [1, 0, -5, 2.0, True])
def test_partial_fit_rejects_a_batch_size_below_two_set_after_the_first_call(
    batch_size,
):
    # The parameter validation runs on partial_fit's first call only (as
    # scikit-learn's does); a batch_size set later is still rejected, with
    # that validation's error, and the model stays as it was.
    X, y, est = make_data("binary")
    est.partial_fit(X, y, classes=np.unique(y))
    before = pickle.dumps(est)
    est.set_params(batch_size=batch_size)
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter"):
        est.partial_fit(X, y)
    est.set_params(batch_size=make_data("binary")[2].batch_size)
    assert pickle.dumps(est) == before


def test_two_samples_train():
    X, y, est = make_data("squared_error")
    fit_quietly(est, X[:2], y[:2])
    assert np.isfinite(est.predict(X)).all()


# ---------------------------------------------------------------------------
# Bad input: scikit-learn's errors, fitted models left unchanged


def bad_inputs(problem):
    X, y, _ = make_data(problem)
    n = len(y)
    X_nan = X.copy()
    X_nan[3, 1] = np.nan
    X_inf = X.copy()
    X_inf[5, 0] = np.inf
    cases = [
        ("nan", X_nan, y, "NaN"),
        ("inf", X_inf, y, "infinity"),
        ("n_features", X[:, :4], y, "features"),
        ("empty", X[:0], y[:0], "0 sample"),
        ("strings", np.array([["a", "b", "c", "d", "e"]] * n), y, "string|float"),
        ("complex", X + 1j, y, "[Cc]omplex"),
        ("n_rows", X, y[:-1], "inconsistent numbers of samples"),
        ("one_row", X[:1], y[:1], "n_samples=1|class"),
    ]
    if problem == "binary":
        cases.append(("one_class", X, np.zeros(n, dtype=int), "class"))
    else:
        cases.append(("string_y", X, np.array(["a"] * n), "[Ff]loat|numeric|string"))
        cases.append(("y_inf", X, np.full(n, np.inf), "infinity|NaN"))
    return cases


@pytest.mark.parametrize("problem", ["binary", "squared_error"])
def test_bad_input_errors_and_fitted_model_unchanged(problem):
    X, y, est = make_data(problem)
    for warm_start in (False, True):
        fitted = fit_quietly(clone(est).set_params(warm_start=warm_start), X, y)
        for name, X_bad, y_bad, message in bad_inputs(problem):
            for method in ("fit", "partial_fit"):
                if name == "one_class" and (method == "partial_fit" or not warm_start):
                    # A single-class batch is fine once classes_ is known, and
                    # a cold fit on one class fits it (as MLPClassifier does);
                    # warm start refuses a change of classes.
                    continue
                if name == "n_features" and method == "fit" and not warm_start:
                    continue  # a cold refit may change the number of features
                before = snapshot(fitted)
                with pytest.raises(ValueError, match=message):
                    getattr(fitted, method)(X_bad, y_bad)
                assert_same(before, snapshot(fitted), f"{name}/{method}/{warm_start}")
        # Predicting on bad input is refused alike.
        with pytest.raises(ValueError, match="features"):
            fitted.predict(X[:, :4])
        with pytest.raises(ValueError, match="NaN"):
            fitted.predict(bad_inputs(problem)[0][1])


def test_negative_poisson_target():
    X, y, est = make_data("poisson")
    with pytest.raises(ValueError, match="negative"):
        est.fit(X, y - 1.0)


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_a_single_class_fits_and_predicts_it(method):
    # As MLPClassifier: a cross-validation fold may hold one class only.
    X, y, est = make_data("binary")
    y_one = np.full(len(y), "only")
    kwargs = {"classes": ["only"]} if method == "partial_fit" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        getattr(est, method)(X, y_one, **kwargs)
    sk = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        getattr(sk, method)(X, y_one, **kwargs)
    assert_array_equal(est.classes_, sk.classes_)
    assert_array_equal(est.predict(X), sk.predict(X))
    assert est.predict_proba(X).shape == sk.predict_proba(X).shape == (len(y), 2)
    assert_allclose(est.predict_proba(X).sum(axis=1), 1.0)
    assert est.n_outputs_ == sk.n_outputs_ == 1
    assert est.to_sklearn().predict(X).tolist() == ["only"] * len(y)


def test_unseen_labels_in_partial_fit():
    X, y, est = make_data("multiclass")
    est.partial_fit(X, y, classes=[0, 1, 2])
    before = snapshot(est)
    with pytest.raises(ValueError, match="classes"):
        est.partial_fit(X, np.where(y == 2, 5, y))
    assert_same(before, snapshot(est))
    with pytest.raises(ValueError, match="classes"):
        est.partial_fit(X, y, classes=[0, 1, 2, 3])  # classes changed
    assert_same(before, snapshot(est))


def test_partial_fit_requires_classes_on_first_call():
    X, y, est = make_data("multiclass")
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        est.partial_fit(X, y)
    assert not hasattr(est, "coefs_")
    # Classes missing from the first batch are still known.
    est.partial_fit(X[y < 2], y[y < 2], classes=[0, 1, 2, 3])
    assert_array_equal(est.classes_, [0, 1, 2, 3])
    assert est.predict_proba(X).shape == (len(y), 4)
    est.partial_fit(X, y)  # classes may be omitted afterwards
    assert est.n_iter_ >= 1


def test_partial_fit_rejects_early_stopping():
    # As scikit-learn's MLPs do.
    X, y, est = make_data("binary")
    with pytest.raises(ValueError, match="early_stopping"):
        est.set_params(early_stopping=True).partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1])


@pytest.mark.parametrize("n_samples", [10_000, 10_001])
def test_auto_early_stopping_is_on_above_ten_thousand_samples(n_samples):
    # HistGradientBoosting's rule: on for a fit on more than 10,000 samples.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(n_samples, 3))
    y = (X[:, 0] > 0).astype(int)
    params = dict(hidden_layer_sizes=(4,), max_iter=2, batch_size=2000, random_state=0)
    auto = fit_quietly(MLPBNClassifier(early_stopping="auto", **params), X, y)
    on = n_samples > 10_000
    same = fit_quietly(MLPBNClassifier(early_stopping=on, **params), X, y)
    assert (auto.validation_scores_ is not None) == on
    assert auto.validation_scores_ == same.validation_scores_
    for a, b in zip(auto.coefs_, same.coefs_):
        assert_array_equal(a, b)
    # The export says what the fit did; partial_fit never stops early.
    exported = auto.set_params(input_preprocessing=None).fit(X, y).to_sklearn()
    assert exported.early_stopping is on
    inc = MLPBNClassifier(early_stopping="auto", **params)
    inc.partial_fit(X, y, classes=[0, 1])
    assert inc.validation_scores_ is None


def test_warm_start_with_other_classes_raises():
    X, y, est = make_data("multiclass")
    fit_quietly(est.set_params(warm_start=True), X, y)
    before = snapshot(est)
    with pytest.raises(ValueError, match="warm_start"):
        est.fit(X, np.where(y == 2, 1, y))
    assert_same(before, snapshot(est))


def test_shape_change_with_warm_start_raises():
    X, y, est = make_data("squared_error")
    fit_quietly(est.set_params(warm_start=True), X, y)
    before = snapshot(est)
    est.set_params(hidden_layer_sizes=(4,))
    with pytest.raises(ValueError):
        est.fit(X, y)
    est.set_params(hidden_layer_sizes=(8, 6))
    assert_same(before, snapshot(est))


# ---------------------------------------------------------------------------
# Divergence


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_non_finite_weights_raise_and_leave_model_unchanged(method):
    X, y, est = make_data("squared_error")
    est.set_params(solver="sgd")
    fit_quietly(est, X, y)
    before = snapshot(est)
    # The loss overflows; the weights have not yet: the message says so
    # (it does not blame the learning rate).
    with pytest.raises(ValueError, match="loss overflowed.*targets reaching") as error:
        getattr(est, method)(X, y * 1e300)
    assert "weights too large" not in str(error.value)  # none were given
    assert_same(before, snapshot(est))
    with pytest.raises(ValueError, match="non-finite"):
        getattr(est, method)(X * 1e154, y)  # z**2 overflows in the batch variance
    assert_same(before, snapshot(est))
    # An unfitted model stays unfitted.
    fresh = clone(est)
    with pytest.raises(ValueError, match="loss overflowed"):
        fresh.fit(X, y * 1e300)
    assert not hasattr(fresh, "coefs_")


@pytest.mark.parametrize("seed", range(5))
def test_fold_bound_bounds_the_folded_weights(seed):
    # fit checks the folded network layer by layer only when this bound,
    # taken over the flat parameters, exceeds the dtype's range.
    rng = np.random.RandomState(seed)
    units = [5, 7, 3, 2]
    coefs = [rng.normal(size=(a, b)) * 10.0**seed for a, b in zip(units, units[1:])]
    intercepts = [rng.normal(size=b) for b in units[1:]]
    gammas = [rng.normal(size=b) for b in units[1:-1]]
    means = [rng.normal(size=b) * 100 for b in units[1:-1]]
    variances = [rng.uniform(0, 2, size=b) ** 4 for b in units[1:-1]]
    theta = np.concatenate([a.ravel() for a in coefs + gammas + intercepts])
    params = _engine.Parameters(theta, np.concatenate(means), np.concatenate(variances))
    folded = _engine.folded_layers(coefs, gammas, intercepts, means, variances, 1e-5)
    largest = max(max(np.abs(W).max(), np.abs(b).max()) for W, b in folded)
    assert largest <= params.fold_bound(1e-5)


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_that_fold_beyond_range_raise(method, dtype):
    # One step at a huge rate leaves finite weights and gammas of about 1e200
    # (1e30 in float32); folded into one matrix (W * gamma / std) they
    # overflow, and every prediction would be NaN: the fit fails instead.
    X, y, est = make_data("binary")
    X = X.astype(dtype)
    rate = 1e200 if dtype == np.float64 else 1e30
    est.set_params(max_iter=1, learning_rate_init=rate)
    with pytest.raises(ValueError, match="non-finite.*learning_rate_init"):
        fit_quietly(est, X, y) if method == "fit" else est.partial_fit(
            X, y, classes=[0, 1]
        )
    assert not hasattr(est, "coefs_")


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e30), (np.float64, 1e300)])
@pytest.mark.parametrize("sparse", [False, True])
def test_non_finite_weights_from_huge_input_name_the_input(dtype, scale, sparse):
    # The squares of these inputs overflow in the first layer's batch
    # variance: the message names the input, not the (default) learning rate.
    X, y, est = make_data("binary")
    X = (X * scale).astype(dtype)
    est.set_params(input_preprocessing=None, max_iter=3)
    with pytest.raises(ValueError, match=r"non-finite.*input's values reach"):
        fit_quietly(est, sp.csr_matrix(X) if sparse else X, y)
    assert not hasattr(est, "coefs_")


@pytest.mark.parametrize("input_preprocessing", [None, "auto"])
def test_non_finite_weights_from_far_targets_name_the_targets(input_preprocessing):
    # Without the handling the targets are trained raw; with it they are
    # standardized, and one row of a huge weight makes the others far.
    rng = np.random.RandomState(0)
    X, y = rng.randn(20, 4), rng.randn(20)
    sw = None
    if input_preprocessing is None:
        y = y * 1e20
    else:
        sw = np.ones(20)
        sw[2] = 1e12
    est = MLPBNRegressor(
        hidden_layer_sizes=(8,),
        solver="sgd",
        max_iter=3,
        batch_size=8,
        random_state=0,
        input_preprocessing=input_preprocessing,
    )
    remedy = (
        "use input_preprocessing='auto', which standardizes them"
        if input_preprocessing is None
        else "sample weights concentrated on one row"
    )
    with pytest.raises(ValueError, match=rf"non-finite.*targets reaching .*{remedy}"):
        fit_quietly(est, X, y, sample_weight=sw)


@pytest.mark.parametrize("input_preprocessing", [None, "auto"])
def test_non_finite_weights_from_far_poisson_targets_advise_dividing_y(
    input_preprocessing,
):
    # The handling does not standardize the Poisson loss's targets (and
    # standardized counts would be negative): divide them by a constant.
    rng = np.random.RandomState(0)
    X, y = rng.randn(40, 4), np.abs(rng.randn(40)) * 1e20
    est = MLPBNRegressor(
        hidden_layer_sizes=(8,),
        loss="poisson",
        solver="sgd",
        max_iter=3,
        batch_size=8,
        random_state=0,
        input_preprocessing=input_preprocessing,
    )
    with pytest.raises(ValueError, match=r"targets reaching .*\(divide y") as error:
        fit_quietly(est, X, y)
    assert "input_preprocessing" not in str(error.value)
    assert "weights too large" not in str(error.value)  # none were given


def test_non_finite_weights_message_names_only_what_applies():
    # The input is blamed only where the handling does not scale it and it
    # is large; weights only when given; the remedy fits the input's kind.
    X, y, est = make_data("binary")
    est.set_params(max_iter=1, learning_rate_init=1e200, input_preprocessing="auto")
    with pytest.raises(ValueError) as handled:
        fit_quietly(est, X, y)
    assert str(handled.value).endswith(
        "Possible cause: learning_rate_init=1e+200 too large for this network."
    )
    est.set_params(input_preprocessing=None)
    # Weights are named only for what they do: a small sum (the L2 term is
    # divided by it), or one row carrying most of it.
    for weights, named in [
        (np.full(len(y), 2.0), None),
        (np.full(len(y), 1e-4), "sample weights summing to"),
        (np.r_[1e6, np.ones(len(y) - 1)], "sample weights concentrated on one row"),
    ]:
        with pytest.raises(ValueError) as error:
            fit_quietly(est, X, y, sample_weight=weights)
        assert "input values" not in str(error.value)
        if named is None:
            assert "weights" not in str(error.value).split("weights.", 1)[1]
        else:
            assert named in str(error.value)
            assert str(error.value).endswith("Try a smaller learning_rate_init first.")
    with pytest.raises(ValueError, match=r"input values too large \(they reach"):
        fit_quietly(est, X * 1e4, y)
    # Input whose squares overflow: dense without the handling, and sparse
    # (which the handling passes through).
    huge = (X * 1e19).astype(np.float32)
    for preprocessing, data, remedy in [
        (None, huge, "Scale the input down, or use input_preprocessing='auto'."),
        ("auto", sp.csr_matrix(huge), "(the input handling passes sparse input"),
        (None, sp.csr_matrix(huge), "Scale the input down."),
    ]:
        est.set_params(input_preprocessing=preprocessing, learning_rate_init=1e-3)
        with pytest.raises(ValueError, match=re.escape(remedy)):
            fit_quietly(est, data, y)


def test_non_finite_weights_in_a_stream_name_the_first_fits_standardization():
    rng = np.random.RandomState(0)
    X = rng.rand(200, 3)
    est = MLPBNRegressor(hidden_layer_sizes=(8,), solver="sgd", random_state=0)
    est.partial_fit(X, rng.randn(200))
    with pytest.raises(ValueError, match="in the units of the first fit's target"):
        est.partial_fit(X, 1e100 * (X.sum(1) + 1))


def test_diverging_learning_rate_raises():
    X, y, est = make_data("poisson")
    est.set_params(solver="sgd", learning_rate_init=50.0, momentum=0.9, max_iter=50)
    with pytest.raises(ValueError, match="non-finite"):
        fit_quietly(est, X, y * 1000)


# ---------------------------------------------------------------------------
# scikit-learn parity: messages, stopping, schedules, warnings


def test_verbose_prints_each_iteration(capsys):
    X, y, est = make_data("multiclass")
    fit_quietly(est.set_params(verbose=True, max_iter=4), X, y)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"Iteration {i + 1:d}, loss = {loss:.8f}"
        for i, loss in enumerate(est.loss_curve_)
    ]
    est.partial_fit(X, y)
    out = capsys.readouterr().out
    assert re.fullmatch(r"Iteration \d+, loss = \d+\.\d{8}\n", out)


def test_verbose_with_early_stopping(capsys):
    X, y, est = make_data("binary", n=80)
    fit_quietly(
        est.set_params(
            verbose=True, early_stopping=True, max_iter=3, n_iter_no_change=50
        ),
        X,
        y,
    )
    lines = capsys.readouterr().out.splitlines()
    expected = []
    for i, (loss, score) in enumerate(zip(est.loss_curve_, est.validation_scores_)):
        expected += [
            f"Iteration {i + 1:d}, loss = {loss:.8f}",
            f"Validation score: {score:f}",
        ]
    assert lines == expected


def schedule_messages(out):
    return [line for line in out.splitlines() if not line.startswith("Iteration")]


@pytest.mark.parametrize("learning_rate", ["constant", "invscaling", "adaptive"])
def test_stopping_and_schedule_messages_match_scikit_learn(learning_rate, capsys):
    # tol is so large that no epoch after the first counts as an improvement:
    # when training stops and what it prints no longer depend on the losses,
    # so scikit-learn's MLP must take the same decisions at the same epochs.
    X, y, _ = make_data("multiclass", n=30)
    params = dict(
        hidden_layer_sizes=(4,),
        solver="sgd",
        learning_rate=learning_rate,
        learning_rate_init=0.1,
        tol=1e6,
        n_iter_no_change=2,
        max_iter=100,
        verbose=True,
        random_state=0,
    )
    ours = MLPBNClassifier(**params).fit(X, y)
    ours_out = capsys.readouterr().out
    theirs = MLPClassifier(**params).fit(X, y)
    theirs_out = capsys.readouterr().out
    assert ours.n_iter_ == theirs.n_iter_ < 100
    assert schedule_messages(ours_out) == schedule_messages(theirs_out)
    if learning_rate == "adaptive":
        # Each stop divides the learning rate by 5 until it falls to 1e-6.
        rates = [0.1 / 5**k for k in range(1, 9)]
        msgs = schedule_messages(ours_out)
        assert msgs[:-1] == [
            "Training loss did not improve more than tol=1000000.000000 for 2 "
            f"consecutive epochs. Setting learning rate to {r:f}"
            for r in rates
        ]
        assert msgs[-1].endswith("Learning rate too small. Stopping.")
        # Stops after epochs 4, 7, ..., 28: the first epoch sets best_loss_,
        # then every third epoch is the third without improvement.
        assert ours.n_iter_ == 1 + 3 * 9
        quiet = MLPBNClassifier(**{**params, "verbose": False}).fit(X, y)
        assert capsys.readouterr().out == ""
        assert quiet.n_iter_ == ours.n_iter_
    else:
        assert schedule_messages(ours_out) == [
            "Training loss did not improve more than tol=1000000.000000 for 2 "
            "consecutive epochs. Stopping."
        ]
        assert ours.n_iter_ == 4


def expected_stop(values, tol, n_iter_no_change, higher_is_better):
    """Epoch at which scikit-learn's rule stops, or None."""
    best = -np.inf if higher_is_better else np.inf
    count = 0
    for i, v in enumerate(values):
        worse = v < best + tol if higher_is_better else v > best - tol
        count = count + 1 if worse else 0
        if (v > best) if higher_is_better else (v < best):
            best = v
        if count > n_iter_no_change:
            return i + 1
    return None


def test_training_loss_stopping_rule():
    X, y, est = make_data("squared_error")
    est.set_params(tol=1e-2, n_iter_no_change=3, max_iter=300, learning_rate_init=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(X, y)
    assert est.n_iter_ < 300
    assert (
        expected_stop(est.loss_curve_, 1e-2, 3, higher_is_better=False) == est.n_iter_
    )
    assert est.best_loss_ == min(est.loss_curve_)
    assert est.loss_ == est.loss_curve_[-1]
    assert est.validation_scores_ is None and est.best_validation_score_ is None
    assert est.t_ == est.n_iter_ * X.shape[0]


def validation_split(est, X, y, units):
    """The held-out rows of early stopping, drawn as the estimator draws them:
    weight initialization first, then train_test_split on the same stream."""
    rs = np.random.RandomState(est.random_state)
    factor = 2.0 if est.activation == "logistic" else 6.0
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        rs.uniform(-bound, bound, (fan_in, fan_out))
        rs.uniform(-bound, bound, fan_out)
    binary = (
        isinstance(est, MLPBNClassifier) and np.ndim(y) == 1 and len(np.unique(y)) == 2
    )
    idx = np.arange(len(y))
    _, val = train_test_split(
        idx,
        random_state=rs,
        test_size=est.validation_fraction,
        stratify=y if binary else None,
    )
    return val


@pytest.mark.parametrize("bad_score", [-np.inf, np.nan])
def test_early_stopping_without_a_finite_score_raises(monkeypatch, bad_score):
    # Predictions on the validation rows that overflow (a far-out row with
    # input_preprocessing=None) give no best epoch: the parameters before the
    # first epoch must not be published as the fit's result.
    X, y = make_regression(n_samples=80, n_features=4, random_state=0)
    params = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    fitted = fit_quietly(MLPBNRegressor(**params), X, y)
    before = snapshot(fitted)
    monkeypatch.setattr(
        MLPBNRegressor,
        "_score_function",
        staticmethod(lambda y, y_pred, sample_weight=None: bad_score),
    )
    fitted.set_params(early_stopping=True)
    before["early_stopping"] = True
    with pytest.raises(ValueError, match="no epoch with a finite validation score"):
        fitted.fit(X, y)
    assert_same(snapshot(fitted), before)


def test_early_stopping_restores_the_best_weights():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 5))
    y = X[:, 0] + rng.normal(size=60)  # noisy: the validation score peaks early
    # A constant rate, so that a fit of best_epoch + 1 epochs retraces it.
    est = round_2(
        MLPBNRegressor,
        hidden_layer_sizes=(32,),
        solver="adam",
        learning_rate_init=0.05,
        early_stopping=True,
        validation_fraction=0.3,
        n_iter_no_change=4,
        tol=0.0,
        max_iter=200,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(X, y)
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_) < 200
    assert est.best_validation_score_ == max(scores)
    assert est.best_loss_ is None
    assert expected_stop(scores, 0.0, 4, higher_is_better=True) == est.n_iter_
    best_epoch = int(np.argmax(scores))
    assert best_epoch < est.n_iter_ - 1  # so that restoring is observable
    val = validation_split(est, X, y, [5, 32, 1])
    assert len(val) == 18
    # The model kept is the best one: its score on the held-out rows is the
    # best validation score, not the last.
    assert est.score(X[val], y[val]) == pytest.approx(
        est.best_validation_score_, abs=1e-12
    )
    assert est.score(X[val], y[val]) > scores[-1]
    # And it is reproducible by training for exactly best_epoch + 1 epochs.
    again = clone(est).set_params(n_iter_no_change=1000, max_iter=best_epoch + 1)
    fit_quietly(again, X, y)
    assert again.validation_scores_ == pytest.approx(
        scores[: best_epoch + 1], abs=1e-12
    )
    for p, q in zip(est.coefs_ + est.running_vars_, again.coefs_ + again.running_vars_):
        assert_allclose(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("problem", ["binary", "multiclass"])
def test_early_stopping_classifier_validation_scores(problem):
    X, y, est = make_data(problem, n=100)
    est.set_params(
        early_stopping=True, validation_fraction=0.2, n_iter_no_change=3, max_iter=60
    )
    fit_quietly(est, X, y)
    val = validation_split(est, X, y, [5, 8, 6, est.n_outputs_])
    assert (
        est.score(X[val], y[val])
        == est.best_validation_score_
        == max(est.validation_scores_)
    )
    if problem == "binary":  # stratified, as scikit-learn does for one output
        assert np.bincount(y[val]).min() >= 9


def test_regressor_output_layer_overflowing_float32_raises():
    # The network trains on standardized targets and its own output layer is
    # finite; scaled back to targets spread over float32's range, it is not.
    rng = np.random.RandomState(0)
    X = rng.randn(400, 5).astype(np.float32)
    y = (rng.uniform(-1, 1, 400) * 3e38).astype(np.float32)
    est = MLPBNRegressor(learning_rate_init=0.05, max_iter=5, random_state=0)
    fit_quietly(est, X, y)
    est.set_params(learning_rate_init=1.0, max_iter=40)
    before = snapshot(est)
    with pytest.raises(ValueError, match="non-finite.*overflows float32"):
        fit_quietly(est, X, y)
    assert_same(before, snapshot(est))
    # In float64 the same fit is finite.
    fit_quietly(est, X.astype(np.float64), y.astype(np.float64))
    assert all(np.isfinite(c).all() for c in est.coefs_ + est.intercepts_)


def test_non_finite_validation_output_is_no_improvement(monkeypatch):
    # Finite weights can still overflow on the validation rows (float32, exp
    # output): the score is NaN, which must count against the epoch rather
    # than reset the no-improvement count.
    # With no finite score at all, the fit then has no best epoch to
    # return: it raises (see test_early_stopping_without_a_finite_score_raises)
    # after the epochs the stopping rule allows.
    X, y, est = make_data("squared_error", n=80)
    est.set_params(early_stopping=True, max_iter=50, n_iter_no_change=2, tol=0.0)
    validations = []

    def overflowing(self, X, params):
        validations.append(len(X))
        return np.full((len(X), 2), np.inf)

    monkeypatch.setattr(Engine, "predict", overflowing)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ValueError, match="last score: nan"):
            est.fit(X, y)
    assert len(validations) == 3


def test_early_stopping_with_sample_weight():
    X, y, est = make_data("binary", n=100)
    sw = np.random.RandomState(1).uniform(0.5, 2, size=100)
    est.set_params(early_stopping=True, validation_fraction=0.2, max_iter=10)
    fit_quietly(est, X, y, sample_weight=sw)
    val = validation_split(est, X, y, [5, 8, 6, 1])
    assert (
        est.score(X[val], y[val], sample_weight=sw[val]) == est.best_validation_score_
    )


def test_early_stopping_validation_set_too_small():
    X, y, est = make_data("squared_error", n=10)
    with pytest.raises(ValueError, match="validation set is too small"):
        est.set_params(early_stopping=True, validation_fraction=0.1).fit(X, y)


def test_early_stopping_leaving_one_training_sample():
    X, y, est = make_data("squared_error", n=3)
    with pytest.raises(ValueError, match="n_samples=1"):
        est.set_params(early_stopping=True, validation_fraction=0.5).fit(X, y)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_keyboard_interrupt_keeps_the_epochs_done(early_stopping, monkeypatch):
    # As scikit-learn's MLPs do, Ctrl-C ends training with a warning and the
    # model keeps the epochs it finished (Python raises KeyboardInterrupt once
    # the engine returns, at the end of an epoch: simulated here before the
    # third).
    X, y, est = make_data("multiclass", n=80)
    est.set_params(
        max_iter=10, tol=0.0, n_iter_no_change=100, early_stopping=early_stopping
    )
    two_epochs = fit_quietly(clone(est).set_params(max_iter=2), X, y)
    train_epoch = Engine.train_epoch
    calls = []

    def interrupted_before_the_third_epoch(self, **kwargs):
        calls.append(len(calls) + 1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return train_epoch(self, **kwargs)

    monkeypatch.setattr(Engine, "train_epoch", interrupted_before_the_third_epoch)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        est.fit(X, y)
    assert est.n_iter_ == 2 and est.loss_curve_ == two_epochs.loss_curve_
    assert est.validation_scores_ == two_epochs.validation_scores_
    for a, b in zip(
        est.coefs_ + est.gammas_ + est.running_vars_,
        two_epochs.coefs_ + two_epochs.gammas_ + two_epochs.running_vars_,
    ):
        assert_array_equal(a, b)
    assert_array_equal(est.predict_proba(X), two_epochs.predict_proba(X))


def test_convergence_warning():
    X, y, est = make_data("multiclass")
    est.set_params(max_iter=3, tol=0.0)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        est.fit(X, y)
    assert est.n_iter_ == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.partial_fit(X, y)  # one epoch is no promise of convergence
        est.set_params(tol=1e6, n_iter_no_change=1, max_iter=10).fit(
            X, y
        )  # stops: no warning
    assert est.n_iter_ == 3


def test_warm_start_keeps_weights_and_history():
    X, y, est = make_data("multiclass")
    est.set_params(warm_start=True, max_iter=5, tol=0.0)
    fit_quietly(est, X, y)
    coefs = [c.copy() for c in est.coefs_]
    curve = list(est.loss_curve_)
    est.set_params(max_iter=1)
    fit_quietly(est, X, y)
    assert est.loss_curve_[:5] == curve and len(est.loss_curve_) == 6
    assert est.t_ == 6 * len(y)
    # One Adam step (of at most learning_rate_init per weight) away from the
    # previous weights, not a fresh start.
    fresh = fit_quietly(clone(est).set_params(warm_start=False, max_iter=1), X, y)
    moved = max(np.abs(a - b).max() for a, b in zip(est.coefs_, coefs))
    restart = max(np.abs(a - b).max() for a, b in zip(fresh.coefs_, coefs))
    assert 0 < moved <= 0.01 * (1 + 1e-6) < 2 * 0.01 < restart
    # warm_start=False starts over.
    est.set_params(warm_start=False)
    fit_quietly(est, X, y)
    assert len(est.loss_curve_) == 1 and est.t_ == len(y)


@pytest.mark.parametrize("early_stopping_before", [False, True])
def test_warm_start_may_switch_early_stopping(early_stopping_before):
    # The new stopping rule starts afresh, with the attributes it keeps on a
    # first fit (scikit-learn's MLPs raise AttributeError / TypeError here).
    X, y, est = make_data("binary", n=80)
    est.set_params(early_stopping=early_stopping_before, max_iter=3, tol=0.0)
    fit_quietly(est, X, y)
    est.set_params(warm_start=True, early_stopping=not early_stopping_before)
    fit_quietly(est, X, y)
    assert len(est.loss_curve_) == 6 and est.n_iter_ == 3
    if early_stopping_before:
        assert est.validation_scores_ is None and est.best_validation_score_ is None
        assert est.best_loss_ == min(est.loss_curve_[3:])
    else:
        assert len(est.validation_scores_) == 3 and est.best_loss_ is None
        assert est.best_validation_score_ == max(est.validation_scores_)
    assert np.isfinite(est.predict_proba(X)).all()


def test_partial_fit_after_a_fit_with_early_stopping():
    X, y, est = make_data("binary", n=80)
    fit_quietly(est.set_params(early_stopping=True, max_iter=3), X, y)
    est.set_params(early_stopping=False).partial_fit(X, y)
    assert len(est.loss_curve_) == 4 and est.best_loss_ == est.loss_curve_[-1]
    assert est.validation_scores_ is None


def test_partial_fit_accumulates():
    X, y, est = make_data("squared_error")
    for i in range(1, 4):
        est.partial_fit(X, y)
        assert est.t_ == i * len(y)
        assert len(est.loss_curve_) == i
    assert est.loss_curve_[-1] < est.loss_curve_[0]


# ---------------------------------------------------------------------------
# Meta-estimators, pickling, reproducibility


def test_pipeline_and_grid_search():
    X, y, _ = make_data("multiclass", n=80)
    pipe = make_pipeline(
        StandardScaler(),
        MLPBNClassifier(
            hidden_layer_sizes=(8,),
            learning_rate_init=0.05,
            max_iter=30,
            random_state=0,
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X, y)
        assert pipe.score(X, y) > 0.8
        search = GridSearchCV(
            pipe, {"mlpbnclassifier__alpha": [1e-4, 1e-1]}, cv=2, n_jobs=2
        )
        search.fit(X, y)
    assert set(search.best_params_) == {"mlpbnclassifier__alpha"}
    assert search.best_estimator_.predict(X).shape == (80,)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


@pytest.mark.parametrize("problem", ["multiclass", "poisson"])
def test_pickle_round_trip(problem):
    X, y, est = make_data(problem)
    fit_quietly(est, X, y)
    restored = pickle.loads(pickle.dumps(est))
    assert_allclose(raw_output(restored, X), raw_output(est, X), rtol=0, atol=0)
    assert_same(snapshot(est), snapshot(restored))
    # Training continues identically (the optimizer state is part of the model).
    kwargs = {}
    est.partial_fit(X, y, **kwargs)
    restored.partial_fit(X, y, **kwargs)
    for p, q in zip(est.coefs_, restored.coefs_):
        assert_array_equal(p, q)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_random_state_reproducible(early_stopping):
    X, y, est = make_data("multiclass", n=80)
    est.set_params(early_stopping=early_stopping, shuffle=True, max_iter=5)
    a = fit_quietly(clone(est), X, y)
    b = fit_quietly(clone(est), X, y)
    assert_same(snapshot(a), snapshot(b))
    c = fit_quietly(clone(est).set_params(random_state=1), X, y)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])
    # A RandomState instance works too, and is not consumed at construction.
    d = fit_quietly(clone(est).set_params(random_state=np.random.RandomState(0)), X, y)
    assert_allclose(d.coefs_[0], a.coefs_[0])


def test_initialization_draws_like_scikit_learn():
    # Same random stream as scikit-learn's MLP: before any step, the
    # coefficients are scikit-learn's (checked with a zero learning rate
    # stand-in: one SGD step of size ~0 changes nothing measurable).
    X, y, _ = make_data("multiclass")
    ours = MLPBNClassifier(
        hidden_layer_sizes=(7, 4),
        solver="sgd",
        learning_rate_init=1e-12,
        random_state=3,
        max_iter=1,
    )
    theirs = MLPClassifier(
        hidden_layer_sizes=(7, 4),
        solver="sgd",
        learning_rate_init=1e-12,
        random_state=3,
        max_iter=1,
    )
    fit_quietly(ours, X, y)
    fit_quietly(theirs, X, y)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        assert_allclose(a, b, atol=1e-9)
    assert_allclose(ours.gammas_[0], 1, atol=1e-9)
    assert_allclose(ours.intercepts_[0], 0, atol=1e-9)


# ---------------------------------------------------------------------------
# What batch normalization is for


def _digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16, y, random_state=0)


def test_deep_sigmoid_network_trains_with_batch_norm():
    # 8 hidden logistic layers of 64 units, 40 epochs: scikit-learn's MLP does
    # not get off the ground (vanishing gradients); batch norm trains it.
    X_train, X_test, y_train, y_test = _digits_split()
    params = dict(
        hidden_layer_sizes=(64,) * 8, activation="logistic", max_iter=40, random_state=0
    )
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPBNClassifier(**params).fit(X_train, y_train).score(X_test, y_test)
        theirs = MLPClassifier(**params).fit(X_train, y_train).score(X_test, y_test)
    print(
        f"\ndigits, 8 x 64 logistic, 40 epochs: MLPBNClassifier {ours:.3f}, "
        f"MLPClassifier {theirs:.3f}"
    )
    assert ours >= 0.93
    assert ours > theirs + 0.3


@pytest.mark.parametrize("max_iter", [10, 30])
@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
def test_accuracy_not_worse_than_scikit_learn(dataset, max_iter):
    if dataset == "digits":
        X_train, X_test, y_train, y_test = _digits_split()
    else:
        X, y = load_breast_cancer(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, random_state=0, stratify=y
        )
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    ours, theirs = [], []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for seed in range(5):
            params = dict(
                hidden_layer_sizes=(64,), max_iter=max_iter, random_state=seed
            )
            # The two networks on the same input (X scaled above, straight in).
            ours.append(
                MLPBNClassifier(**params, input_preprocessing=None)
                .fit(X_train, y_train)
                .score(X_test, y_test)
            )
            theirs.append(
                MLPClassifier(**params).fit(X_train, y_train).score(X_test, y_test)
            )
    print(
        f"\n{dataset}, (64,) relu adam, {max_iter} epochs, mean of 5 seeds: "
        f"MLPBNClassifier {np.mean(ours):.4f}, MLPClassifier {np.mean(theirs):.4f}"
    )
    # Mean over seeds, allowing one test sample of noise.
    assert np.mean(ours) >= np.mean(theirs) - 1 / len(y_test)


# ---------------------------------------------------------------------------
# Predictions follow the public fitted attributes


FITTED_ARRAYS = ["coefs_", "gammas_", "intercepts_", "running_means_", "running_vars_"]


@pytest.mark.parametrize("name", FITTED_ARRAYS)
@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_reassigned_attributes_take_effect(problem, name):
    X, y, est = make_data(problem)
    fit_quietly(est, X, y)
    before = raw_output(est, X)
    rng = np.random.RandomState(0)
    # A new list, and a new array in the existing list: both take effect.
    setattr(
        est, name, [a * rng.uniform(1.5, 2.0, size=a.shape) for a in getattr(est, name)]
    )
    after = raw_output(est, X)
    assert not np.allclose(after, before)
    assert_allclose(after, forward_from_attributes(est, X), rtol=1e-9, atol=1e-12)
    getattr(est, name)[0] = getattr(est, name)[0] * 0.5
    assert_allclose(
        raw_output(est, X), forward_from_attributes(est, X), rtol=1e-9, atol=1e-12
    )
    assert_allclose(
        raw_output(est.to_sklearn(), X),
        forward_from_attributes(est, X),
        rtol=1e-9,
        atol=1e-12,
    )


@pytest.mark.parametrize("problem", ["binary", "multiclass", "multilabel"])
def test_a_reassigned_classes_takes_effect(problem):
    X, y, est = make_data(problem)
    fit_quietly(est, X, y)
    proba = est.predict_proba(X)
    labels = np.array([f"label {c}" for c in est.classes_])
    est.classes_ = labels
    if problem == "multilabel":
        # The labels are the output columns: the indicator matrix stays.
        assert_array_equal(est.predict(X), (proba > 0.5).astype(int))
    else:
        assert_array_equal(est.predict(X), labels[proba.argmax(axis=1)])
        assert est.score(X, labels[np.searchsorted(np.unique(y), y)]) > 0.5
    assert_array_equal(est.to_sklearn().predict(X), est.predict(X))
    est.classes_ = labels[:-1]
    if problem == "multilabel":
        # partial_fit's classes may name more labels than the outputs.
        assert_array_equal(est.predict(X), (proba > 0.5).astype(int))
        return
    # A classes_ that does not fit the network's outputs: a clear error.
    with pytest.raises(ValueError, match="classes_ must be a 1-D array of"):
        est.predict(X)
    with pytest.raises(ValueError, match="classes_ must be a 1-D array of"):
        est.to_sklearn()


def test_continued_training_reads_a_reassigned_classes():
    # Relabelled (in any order), partial_fit and warm_start fits train on
    # the new labels.
    X, y, est = make_data("binary")
    fit_quietly(est, X, y)
    reference = clone(est).set_params(warm_start=True)
    fit_quietly(reference, X, y)
    mixed = copy.deepcopy(est)
    mixed.classes_ = ["z", 1]  # a list of labels; numbers stay numbers
    expected = np.array(["z", 1], dtype=object)[est.predict(X)]
    assert list(mixed.predict(X)) == list(expected)
    est.classes_ = ["z", "a"]  # 0 -> "z", 1 -> "a": not sorted
    relabel = np.array(["z", "a"])
    for call in ("partial_fit", "warm_start"):
        a = copy.deepcopy(est)
        b = copy.deepcopy(reference)
        if call == "partial_fit":
            a.partial_fit(X, relabel[y])
            b.partial_fit(X, y)
        else:
            fit_quietly(a.set_params(warm_start=True), X, relabel[y])
            fit_quietly(b, X, y)
        for ca, cb in zip(a.coefs_, b.coefs_):
            assert_array_equal(ca, cb)
        assert list(a.predict(X)) == list(relabel[b.predict(X)])


@pytest.mark.parametrize("name", FITTED_ARRAYS)
def test_in_place_edits_are_refused_or_take_effect(name):
    X, y, est = make_data("binary")
    fit_quietly(est, X, y)
    array = getattr(est, name)[0]
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 3.0
    # Nor can a fitted array be made writable again (numpy would allow it
    # of an array that owns its values, and a cached fold would go stale).
    with pytest.raises(ValueError, match="WRITEABLE"):
        array.setflags(write=True)
    # An array of one's own, edited in place after assigning it, takes
    # effect (it owns its values: it is never cached), also once it is made
    # read-only again.
    own = array.copy()
    getattr(est, name)[0] = own
    for freeze in (False, True):
        before = est.predict_proba(X)
        own.setflags(write=True)
        own[0] = own[0] * 3 + 1
        own.setflags(write=not freeze)
        assert not np.allclose(est.predict_proba(X), before)
        assert_allclose(
            est.predict_proba(X)[:, 1],
            forward_from_attributes(est, X).ravel(),
            rtol=1e-9,
            atol=1e-12,
        )


def test_repeated_predictions_reuse_the_folded_network():
    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    first = est._folded_network(np.float64)
    assert est._folded_network(np.float64) is first
    est.intercepts_ = list(est.intercepts_)  # the same arrays in a new list
    assert est._folded_network(np.float64) is first
    est.gammas_[0] = est.gammas_[0].copy()  # a new array: folded again
    assert est._folded_network(np.float64) is not first
    # Pickling keeps the arrays read-only, so the copy caches too.
    copy = pickle.loads(pickle.dumps(est))
    assert copy._folded_network(np.float64) is copy._folded_network(np.float64)
    # Input dtypes that compute alike share one fold (a float64 model).
    folds = [copy._folded_network(d) for d in (np.float32, np.float64, None)]
    assert folds[0] is folds[1] is folds[2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_cached_network_holds_one_copy_of_its_weights(dtype):
    # A server keeps the fold as long as the model: its layers are views of
    # the packed vector the compiled forward pass reads, not a second copy.
    X, y, est = make_data("multiclass")
    fit_quietly(est, X.astype(dtype), y)
    folded = est._folded_network(dtype)
    layers = [*folded.coefs, *folded.intercepts]
    assert all(a.base is folded.params and a.dtype == dtype for a in layers)
    assert sum(a.nbytes for a in layers) == folded.params.nbytes
    assert not folded.params.flags.writeable
    assert_allclose(folded.predict(X.astype(dtype)), est.predict_proba(X.astype(dtype)))
    assert_array_equal(est.to_sklearn().coefs_[0], folded.coefs[0])


def test_only_arrays_nothing_can_change_are_cached():
    # The fitted arrays hold their values in bytes: no writable array is
    # reachable from them. A read-only view of a writable buffer (a
    # bytearray behind a read-only memoryview) is folded at every call.
    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    base = est.coefs_[0]
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, bytes)
    buffer = bytearray(est.coefs_[0].tobytes())
    view = np.frombuffer(memoryview(buffer).toreadonly(), dtype=est.coefs_[0].dtype)
    est.coefs_[0] = view.reshape(est.coefs_[0].shape)
    before = est.predict_proba(X)
    buffer[:] = bytes(len(buffer))  # every coefficient of the first layer 0
    assert not np.allclose(est.predict_proba(X), before)
    assert_allclose(
        est.predict_proba(X), forward_from_attributes(est, X), rtol=1e-9, atol=1e-12
    )


def test_read_only_views_of_writable_arrays_are_not_cached():
    # Such a view changes when its base does: a cached folded network would
    # keep predicting with the old values.
    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    bases = [c.copy() for c in est.coefs_]
    views = [b[:] for b in bases]
    for v in views:
        v.setflags(write=False)
    est.coefs_ = views
    before = est.predict_proba(X)
    bases[0] *= 0.5
    after = est.predict_proba(X)
    assert not np.array_equal(after, before)
    est.coefs_ = [b.copy() for b in bases]
    assert_array_equal(after, est.predict_proba(X))


def test_an_item_assigned_during_a_fold_is_not_cached_under_the_old_key(
    monkeypatch,
):
    # A predict reads the attribute lists, then folds; another thread swaps
    # coefs_[1] in between and puts it back. The fold must be of the arrays
    # the cache key names, or the swapped array's fold would be served for
    # the restored one from then on.
    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    reference = est.predict_proba(X)
    _mlp._FOLDED_NETWORKS.clear()
    folding, swapped = threading.Event(), threading.Event()
    fold = _mlp.FoldedNetwork.fold

    def paused_fold(*args, **kwargs):
        folding.set()
        swapped.wait(10)
        return fold(*args, **kwargs)

    monkeypatch.setattr(_mlp.FoldedNetwork, "fold", paused_fold)
    reader = threading.Thread(target=est.predict_proba, args=(X,))
    reader.start()
    assert folding.wait(10)
    original = est.coefs_[1]
    est.coefs_[1] = _mlp._read_only(np.zeros_like(original))
    swapped.set()
    reader.join()
    est.coefs_[1] = original
    monkeypatch.setattr(_mlp.FoldedNetwork, "fold", fold)
    assert_array_equal(est.predict_proba(X), reference)


def test_a_model_memory_mapped_read_only_caches_its_network(tmp_path):
    # joblib.load(..., mmap_mode="r"), a common way to serve models: the
    # arrays are read-only views of a read-only map.
    joblib = pytest.importorskip("joblib")
    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    joblib.dump(est, tmp_path / "model.joblib")
    served = joblib.load(tmp_path / "model.joblib", mmap_mode="r")
    assert served._folded_network(np.float64) is served._folded_network(np.float64)
    assert_array_equal(served.predict_proba(X), est.predict_proba(X))
    assert served.coefs_[0].base is not None and not served.coefs_[0].flags.writeable
    # Writable maps (copy-on-write, or r+) and plain loads: the arrays are
    # copied into read-only buffers as they load, and cached too.
    for mode in ("c", "r+", None):
        loaded = joblib.load(tmp_path / "model.joblib", mmap_mode=mode)
        assert loaded._folded_network(np.float64) is loaded._folded_network(np.float64)
        assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
        with pytest.raises(ValueError):
            loaded.coefs_[0][0, 0] = 1.0


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda e: e.coefs_.__setitem__(1, e.coefs_[1].T.copy()),
        lambda e: e.coefs_.pop(),
        lambda e: e.gammas_.__setitem__(0, e.gammas_[0][:-1].copy()),
        lambda e: e.running_vars_.append(np.ones(3)),
        lambda e: e.running_means_.__setitem__(0, e.running_means_[0].astype(np.int64)),
        lambda e: setattr(e, "intercepts_", None),
        lambda e: e.intercepts_.__setitem__(2, np.ones((1, 3))),
        lambda e: setattr(e, "coefs_", []),
        # numpy's longdouble is beyond the kernels.
        lambda e: e.coefs_.__setitem__(0, e.coefs_[0].astype(np.longdouble)),
    ],
)
def test_wrong_shapes_give_a_clear_error(corrupt):
    X, y, est = make_data("multiclass")
    fit_quietly(est.set_params(hidden_layer_sizes=(8, 6)), X, y)
    corrupt(est)
    for call in (est.predict, est.predict_proba, lambda X: est.to_sklearn()):
        with pytest.raises(ValueError, match="fitted attributes|coefs_"):
            call(X)


def test_mixed_dtypes_of_attributes_compute_in_the_widest():
    # A float16 array assigned to a float64 model: computed in float64 (the
    # widest, float32 at least), the twin's weights too.
    X, y, est = make_data("multiclass")
    fit_quietly(est, X, y)
    est.coefs_[0] = est.coefs_[0].astype(np.float16)
    reference = forward_from_attributes(est, X)
    got = est.predict_proba(X)
    assert got.dtype == np.float64
    assert_allclose(got, reference, rtol=1e-9, atol=1e-12)
    twin = est.to_sklearn()
    assert [c.dtype for c in twin.coefs_] == [np.float64] * len(twin.coefs_)
    assert_allclose(twin.predict_proba(X), got, rtol=1e-6, atol=1e-9)


def test_concurrent_predictions_agree():
    import threading

    X, y, est = make_data("multiclass", n=2000)
    fit_quietly(est, X, y)
    expected = est.predict_proba(X)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(est.predict_proba(X))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80
    for r in results:
        assert_array_equal(r, expected)


@pytest.mark.parametrize("problem", ["binary", "multiclass", "squared_error"])
def test_float64_input_to_a_float32_model_computes_in_float64(problem):
    # As scikit-learn's MLP does: the input's dtype wins, so huge finite
    # inputs give finite outputs where float32 would overflow.
    X, y, est = make_data(problem, dtype=np.float32)
    fit_quietly(est, X, y)
    X_big = np.full((3, X.shape[1]), 1e300)
    X_big[1] *= -1
    out = raw_output(est, X_big)
    assert out.dtype == np.float64 and np.isfinite(out).all()
    twin = est.to_sklearn()
    assert_allclose(out, raw_output(twin, X_big), rtol=1e-5)
    if problem != "squared_error":
        assert_array_equal(est.predict(X_big), twin.predict(X_big))
        assert_allclose(est.predict_proba(X_big).sum(axis=1), 1)
    # float32 in, float32 out; float64 in, float64 out, within float32's
    # rounding of the weights.
    assert raw_output(est, X).dtype == np.float32
    assert_allclose(
        raw_output(est, X.astype(np.float64)), raw_output(est, X), rtol=1e-4, atol=1e-5
    )


def test_a_bn_epsilon_too_small_for_float32_is_named():
    # 1 / sqrt(1e-80) is beyond float32: a constant hidden unit cannot be
    # normalized. The warning and the error say so, instead of blaming the
    # data or the learning rate.
    X = np.full((100, 2), 7.0, dtype=np.float32)
    y = np.arange(100) % 2
    est = MLPBNClassifier(
        hidden_layer_sizes=(5,), bn_epsilon=1e-80, max_iter=5, random_state=0
    )
    with pytest.warns(
        RuntimeWarning, match=r"bn_epsilon=1e-80 is too small for float32"
    ):
        with pytest.raises(
            ValueError, match=r"non-finite .* bn_epsilon=1e-80 is too small"
        ):
            est.fit(X, y)
    assert not hasattr(est, "coefs_")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit_quietly(clone(est), X.astype(np.float64), y)  # float64 holds it
        fit_quietly(clone(est).set_params(bn_epsilon=1e-60), X, y)
    # A continued float32 model stays float32: float64 input would not help.
    stream = clone(est).set_params(bn_epsilon=1e-5)
    stream.partial_fit(X, y, classes=[0, 1])
    stream.set_params(bn_epsilon=1e-80)
    with pytest.warns(RuntimeWarning, match="fit a new model on float64 input"):
        with pytest.raises(ValueError, match="fit a new model on float64 input"):
            stream.partial_fit(X.astype(np.float64), y)


def test_non_finite_weights_from_large_sparse_input_say_it_is_passed_through():
    rng = np.random.RandomState(0)
    X = sp.random(60, 5, density=0.5, random_state=0, format="csr") * 1e4
    y = rng.randint(0, 2, 60)
    est = MLPBNClassifier(
        hidden_layer_sizes=(4,), max_iter=3, learning_rate_init=1e300, random_state=0
    )
    with pytest.raises(ValueError) as error:
        fit_quietly(est, X, y)
    assert "(they reach 9.9e+03, and the input handling passes sparse input " in str(
        error.value
    )


@pytest.fixture
def python_handles_sigint():
    """Python's own SIGINT handler, as in an interactive session: a shell that
    runs the tests in the background ignores SIGINT, Python keeps that, and
    fit then leaves Ctrl-C alone (it installs its handler only over Python's)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def sigint_after_calls(monkeypatch, n):
    """Make each compiled call of the engine run one minibatch and send
    SIGINT after the ``n``-th; return the list of the calls' results (it
    grows as they run)."""
    from sklearn_bn import _engine, _training

    monkeypatch.setattr(_engine, "CHUNK_SECONDS", 1e-9)
    train_epoch, calls = _training.train_epoch, []

    def interrupting(*args, **kwargs):
        out = train_epoch(*args, **kwargs)
        calls.append(out)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(_training, "train_epoch", interrupting)
    return calls


@pytest.mark.parametrize("Estimator", [MLPBNClassifier, MLPBNRegressor])
def test_ctrl_c_after_training_keeps_the_trained_model(
    Estimator, python_handles_sigint, monkeypatch
):
    # A SIGINT while the trained parameters become the fitted attributes
    # (after the last epoch, before the model is published) used to undo the
    # whole fit; the model is now published, with the warning.
    rng = np.random.RandomState(0)
    X, y = rng.randn(80, 4), rng.randint(0, 2, 80)
    params = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    expected = fit_quietly(Estimator(**params), X, y)
    fitted_attributes = Estimator._fitted_attributes

    def interrupted(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return fitted_attributes(self, *args, **kwargs)

    monkeypatch.setattr(Estimator, "_fitted_attributes", interrupted)
    est = Estimator(**params)
    with pytest.warns(UserWarning, match="Interrupted by user after training"):
        fit_quietly(est, X, y)
    for a, b in zip(est.coefs_, expected.coefs_):
        assert_array_equal(a, b)
    assert est.n_iter_ == expected.n_iter_


def test_ctrl_c_stops_between_minibatches_and_records_the_partial_epoch(
    python_handles_sigint,
):
    # A real SIGINT in the middle of an epoch: fit returns (with a warning),
    # the epoch under way counts with the minibatches it ran, and t_ and the
    # optimizer's step count agree with them. The input goes straight to the
    # engine: a SIGINT during the input handling, before training, is a
    # KeyboardInterrupt like anywhere else in Python code.
    import threading

    rng = np.random.RandomState(0)
    n, batch = 64_000, 32
    X = rng.normal(size=(n, 20))
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    est = MLPBNClassifier(
        input_preprocessing=None,
        hidden_layer_sizes=(32,),
        batch_size=batch,
        max_iter=200,
        tol=0.0,
        n_iter_no_change=1000,
        random_state=0,
    )
    timer = threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            est.fit(X, y)
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert 1 <= est.n_iter_ < 200
    assert len(est.loss_curve_) == est.n_iter_ and np.isfinite(est.loss_curve_).all()
    assert est.t_ % batch == 0 and est.t_ <= est.n_iter_ * n
    assert est._optimizer_state["step"] == est.t_ // batch
    assert all(np.isfinite(c).all() for c in est.coefs_)
    assert est.score(X[:1000], y[:1000]) > 0.6


@pytest.mark.parametrize("early_stopping", [False, True])
def test_a_partial_epoch_is_recorded_as_the_minibatches_it_ran(
    early_stopping, monkeypatch, python_handles_sigint
):
    # Ctrl-C after the fifth minibatch of the first epoch (each compiled call
    # runs one minibatch here): the model is what training on those rows for
    # one epoch gives, bit for bit, and is recorded as such.

    X, y, est = make_data("multiclass", n=400)
    est.set_params(
        batch_size=20,
        shuffle=False,
        max_iter=10,
        early_stopping=early_stopping,
        validation_fraction=0.5,
    )
    calls = sigint_after_calls(monkeypatch, 5)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        est.fit(X, y)
    assert len(calls) == 5 and est.n_iter_ == 1 and est.t_ == 100
    assert est._optimizer_state["step"] == 5
    if early_stopping:
        assert len(est.validation_scores_) == 1 and np.isfinite(
            est.best_validation_score_
        )
        return
    # The same five minibatches as a whole epoch of their own.
    monkeypatch.undo()
    reference = fit_quietly(clone(est).set_params(max_iter=1), X[:100], y[:100])
    assert est.loss_curve_ == reference.loss_curve_
    for a, b in zip(
        est.coefs_ + est.running_means_, reference.coefs_ + reference.running_means_
    ):
        assert_array_equal(a, b)


@pytest.mark.parametrize("raises", [True, False])
def test_a_sigint_handler_of_the_users_runs_and_its_interrupt_stops_cleanly(
    raises, monkeypatch
):
    # A handler of the user's runs when SIGINT comes (after the fifth
    # minibatch here); the KeyboardInterrupt it raises stops training as
    # Ctrl-C does with Python's handler (the partial epoch recorded whole).
    # One that does not raise lets training go on. Its handler is back after.

    X, y, est = make_data("multiclass", n=400)
    est.set_params(batch_size=20, shuffle=False, max_iter=2)
    calls, seen = sigint_after_calls(monkeypatch, 5), []

    def users_handler(signum, frame):
        seen.append(signum)
        if raises:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, users_handler)
    try:
        if raises:
            with pytest.warns(UserWarning, match="Training interrupted by user"):
                est.fit(X, y)
        else:
            fit_quietly(est, X, y)
        assert signal.getsignal(signal.SIGINT) is users_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIGINT] and len(calls) >= 5
    if raises:
        assert est.n_iter_ == 1 and est.t_ == 100
        assert est._optimizer_state["step"] == 5
        monkeypatch.undo()
        reference = fit_quietly(clone(est).set_params(max_iter=1), X[:100], y[:100])
        assert est.loss_curve_ == reference.loss_curve_
        for a, b in zip(est.coefs_, reference.coefs_):
            assert_array_equal(a, b)
    else:
        assert est.n_iter_ == 2 and est.t_ == 800


@pytest.mark.parametrize("warm_start", [False, True])
def test_ctrl_c_before_any_minibatch_trained_ends_without_an_epoch(
    warm_start, monkeypatch, python_handles_sigint
):
    # The first minibatches are skipped (weight on one row of each); Ctrl-C
    # comes after three of them: no epoch is recorded, as with Ctrl-C before
    # the first minibatch, and nothing was trained (the data could have
    # been: not the error of a fit that can train nothing).

    X, y, est = make_data("multiclass", n=400)
    sw = np.r_[np.tile([1.0, 0.0], 50), np.ones(300)]
    est.set_params(batch_size=2, shuffle=False, max_iter=10)
    curve = []
    if warm_start:  # a warm fit starts a new optimizer too, at step 0
        fit_quietly(est.set_params(max_iter=2, warm_start=True), X, y)
        curve = est.loss_curve_
    calls = sigint_after_calls(monkeypatch, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the skipped minibatches
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            est.fit(X, y, sample_weight=sw)
    assert len(calls) == 3 and est.n_iter_ == 0 and est.loss_curve_ == curve
    assert est._optimizer_state["step"] == 0


def test_ctrl_c_in_the_population_pass_keeps_the_trained_model(
    monkeypatch, python_handles_sigint
):
    # The pass after the epochs can take a while on many rows: Ctrl-C there
    # waits for it, and fit ends with its warning, the model fitted.
    X, y, est = make_data("multiclass", n=200)
    est.set_params(bn_stats="population", max_iter=3)
    expected = fit_quietly(clone(est), X, y)
    population_statistics = _mlp.population_statistics

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return population_statistics(*args, **kwargs)

    monkeypatch.setattr(_mlp, "population_statistics", interrupted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            est.fit(X, y)
    assert_same(
        {k: v for k, v in snapshot(est).items() if "callback" not in k},
        {k: v for k, v in snapshot(expected).items() if "callback" not in k},
    )


# ---------------------------------------------------------------------------
# Ghost batch norm, the cumulative running average, dropout (the engine's
# arithmetic is checked against numpy in test_training.py)


def _fitted_state(est):
    return [
        np.asarray(a)
        for a in (
            est.coefs_
            + est.gammas_
            + est.intercepts_
            + est.running_means_
            + est.running_vars_
        )
    ] + [np.asarray(est.loss_curve_)]


@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_options_left_off_change_nothing(problem):
    # virtual_batch_size >= batch_size is plain batch norm, and a dropout of
    # 0 is none: bit for bit.
    X, y, est = make_data(problem, n=90)
    est.set_params(batch_size=20, max_iter=4)
    plain = _fitted_state(fit_quietly(clone(est), X, y))
    for options in [
        dict(virtual_batch_size=20),
        dict(virtual_batch_size=21),
        dict(virtual_batch_size=1000),
        dict(dropout=0.0),
        dict(dropout=[0.0, 0.0]),
    ]:
        state = _fitted_state(fit_quietly(clone(est).set_params(**options), X, y))
        for a, b in zip(state, plain):
            assert_array_equal(a, b, err_msg=str(options))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparse", [False, True])
def test_dropout_and_ghost_batch_norm_train(sparse, dtype):
    X, y, est = make_data("multiclass", n=300, dtype=dtype)
    sw = np.random.RandomState(3).uniform(0.5, 2, 300)
    est.set_params(
        dropout=[0.2, 0.4],
        virtual_batch_size=16,
        batch_size=64,
        max_iter=30,
        learning_rate_init=0.01,
    )
    Xs = sp.csr_matrix(X) if sparse else X
    fit_quietly(est, Xs, y, sample_weight=sw)
    assert all(np.isfinite(a).all() for a in _fitted_state(est))
    assert est.coefs_[0].dtype == dtype
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    assert est.score(Xs, y) > 0.8
    # Prediction drops nothing: the inference network of the attributes.
    assert_allclose(
        raw_output(est, X),
        forward_from_attributes(est, X),
        rtol=1e-9 if dtype == np.float64 else 1e-4,
        atol=1e-6,
    )
    # The same random_state, the same model; another one, another model.
    again = fit_quietly(clone(est), Xs, y, sample_weight=sw)
    for a, b in zip(_fitted_state(again), _fitted_state(est)):
        assert_array_equal(a, b)
    other = fit_quietly(clone(est).set_params(random_state=1), Xs, y, sample_weight=sw)
    assert not np.array_equal(other.coefs_[0], est.coefs_[0])


def test_dropout_changes_training():
    X, y, est = make_data("multiclass", n=200)
    plain = fit_quietly(clone(est).set_params(max_iter=3), X, y)
    dropped = fit_quietly(clone(est).set_params(max_iter=3, dropout=0.5), X, y)
    assert not np.allclose(dropped.coefs_[1], plain.coefs_[1])


@pytest.mark.parametrize(
    "dropout", [[0.1], [0.1, 0.2, 0.3], [0.1, 1.0], [-0.1, 0.0], "high"]
)
def test_dropout_needs_one_valid_rate_per_hidden_layer(dropout):
    X, y, est = make_data("binary")
    with pytest.raises(InvalidParameterError, match="dropout"):
        est.set_params(dropout=dropout).fit(X, y)


@pytest.mark.parametrize("value", [1.0, -0.5, 1.5])
def test_dropout_rate_out_of_range(value):
    X, y, est = make_data("binary")
    with pytest.raises(InvalidParameterError, match="dropout"):
        est.set_params(dropout=value).fit(X, y)
    # partial_fit of a fitted model skips scikit-learn's parameter validation;
    # the rates are checked there too, with the same error.
    fit_quietly(est.set_params(dropout=0.0), X, y)
    before = snapshot(est.set_params(dropout=value))
    with pytest.raises(InvalidParameterError, match="dropout"):
        est.partial_fit(X, y)
    assert_same(before, snapshot(est))


def test_cumulative_running_average_continues_over_partial_fit():
    # bn_momentum=None: the running statistics are the average of every
    # minibatch's statistics so far; partial_fit goes on counting, fit starts
    # again. Weights kept still (a negligible learning rate), so that the
    # minibatches' statistics can be computed beforehand.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(120, 4)) * [1, 2, 3, 4] + [0, 1, -2, 5]
    y = rng.normal(size=120)
    est = MLPBNRegressor(
        hidden_layer_sizes=(6,),
        bn_momentum=None,
        solver="sgd",
        momentum=0.0,
        learning_rate_init=1e-14,
        batch_size=30,
        shuffle=False,
        random_state=0,
        input_preprocessing=None,
    )
    est.partial_fit(X[:60], y[:60])
    est.partial_fit(X[60:], y[60:])
    W = est.coefs_[0]
    z = X @ W
    means = [z[k : k + 30].mean(axis=0) for k in range(0, 120, 30)]
    variances = [z[k : k + 30].var(axis=0, ddof=1) for k in range(0, 120, 30)]
    # running starts at 0 and 1; the first update replaces them.
    assert_allclose(est.running_means_[0], np.mean(means, axis=0), rtol=1e-9)
    assert_allclose(est.running_vars_[0], np.mean(variances, axis=0), rtol=1e-9)
    assert est._n_batches_tracked == 4
    refit = fit_quietly(clone(est).set_params(max_iter=1), X[60:], y[60:])
    assert refit._n_batches_tracked == 2
    assert_allclose(refit.running_means_[0], np.mean(means[2:], axis=0), rtol=1e-9)


# ---------------------------------------------------------------------------
# Messages that name the real cause


def test_weights_out_of_range_are_named_as_weights():
    X, y, est = make_data("binary")
    n = len(y)
    with pytest.raises(ValueError, match="sample_weight is too large"):
        clone(est).fit(X, y, sample_weight=np.full(n, 1e306))
    with pytest.raises(ValueError, match="class_weight is too large"):
        clone(est).set_params(class_weight={0: 1e308, 1: 1e308}).fit(X, y)
    with pytest.raises(ValueError, match="class_weight is too small"):
        clone(est).set_params(class_weight={0: 1e-320, 1: 1e-320}).fit(X, y)
    with pytest.raises(
        ValueError, match="sample_weight times class_weight is too large"
    ):
        clone(est).set_params(class_weight={0: 1e300, 1: 1e300}).fit(
            X, y, sample_weight=np.full(n, 1e10)
        )
    # A class_weight that zeroes every row: the package's own message.
    with pytest.raises(ValueError, match="class weights .class_weight. sum to zero"):
        clone(est).set_params(class_weight={0: 0.0, 1: 0.0}).fit(X, y)
    # float32: the weights' sum must fit float32.
    with pytest.raises(ValueError, match="too large.*float32"):
        clone(est).fit(X.astype(np.float32), y, sample_weight=np.full(n, 1e37))
    fitted = fit_quietly(clone(est), X, y)
    before = snapshot(fitted)
    with pytest.raises(ValueError, match="sample_weight is too large"):
        fitted.recompute_bn_stats(X, sample_weight=np.full(n, 1e306))
    assert_same(before, snapshot(fitted))


def test_divergence_names_the_learning_rate():
    X, y, est = make_data("squared_error")
    est.set_params(solver="sgd", learning_rate_init=1e10)
    with pytest.raises(ValueError, match=r"non-finite.*learning_rate_init=1e\+10"):
        est.fit(X, y)


def test_messages_name_the_real_cause():
    X, y, est = make_data("binary")
    with pytest.raises(ValueError, match="hidden_layer_sizes must hold integers"):
        clone(est).set_params(hidden_layer_sizes=(4.0,)).fit(X, y)
    fitted = fit_quietly(clone(est), X, y)
    fitted.running_vars_ = [
        np.ones_like(v, dtype=np.int64) for v in fitted.running_vars_
    ]
    with pytest.raises(
        ValueError, match=r"running_vars_ .*got dtypes \[int64, int64\]"
    ):
        fitted.predict(X)
    streamed = clone(est).partial_fit(X, y, classes=[0, 1])
    streamed.set_params(hidden_layer_sizes=(3,))
    with pytest.raises(ValueError, match="partial_fit continues the fitted network"):
        streamed.partial_fit(X, y)
    warm = fit_quietly(clone(est).set_params(warm_start=True), X, y)
    warm.set_params(hidden_layer_sizes=(3,))
    with pytest.raises(ValueError, match="warm_start=False"):
        warm.fit(X, y)


@pytest.mark.parametrize("incremental", [False, True])
def test_a_float32_model_names_float64_x_beyond_its_range(incremental):
    # The engine reads X in the model's dtype: 1e39 would be inf in float32,
    # and the fit would end in "non-finite weights" instead.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(50, 3))
    y = X[:, 0].copy()
    est = MLPBNRegressor(
        hidden_layer_sizes=(4,), max_iter=3, warm_start=True, input_preprocessing=None
    )
    fit_quietly(est, X.astype(np.float32), y)
    before = snapshot(est)
    X[0, 0] = 1e39
    for bad in (X, sp.csr_matrix(X)):
        with pytest.raises(ValueError, match="too large for dtype\\('float32'\\)"):
            est.partial_fit(bad, y) if incremental else est.fit(bad, y)
        assert_same(snapshot(est), before)


@pytest.mark.parametrize("incremental", [False, True])
def test_a_continued_fit_refuses_a_loss_with_another_output(incremental):
    # Continuing a squared-error network with loss="poisson" would train its
    # identity output on the squared error while claiming Poisson's loss.
    X, y = make_regression(n_samples=60, n_features=4, random_state=0)
    y = np.abs(y) / 100
    est = MLPBNRegressor(hidden_layer_sizes=(5,), max_iter=3, warm_start=True)
    est = est.partial_fit(X, y) if incremental else fit_quietly(est, X, y)
    est.set_params(loss="poisson")
    before = snapshot(est)
    match = "loss='poisson' needs the output activation 'exp'.*" + (
        "partial_fit continues" if incremental else "warm_start=False"
    )
    with pytest.raises(ValueError, match=match):
        est.partial_fit(X, y) if incremental else est.fit(X, y)
    assert_same(snapshot(est), before)
    est.set_params(loss="squared_error")
    est.partial_fit(X, y) if incremental else fit_quietly(est, X, y)
    assert est.out_activation_ == "identity"


@pytest.mark.parametrize("n, batch_size", [(201, 200), (401, 200), (11, 10)])
def test_a_virtual_batch_of_at_least_batch_size_is_plain_batch_norm(n, batch_size):
    # The trailing single row joins the last minibatch, which then has one
    # row more than batch_size: still one chunk, the same bits as without
    # ghost batch norm.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] > 0).astype(int)
    fits = []
    for vbs in (None, batch_size, batch_size + 7):
        est = MLPBNClassifier(
            hidden_layer_sizes=(6,),
            batch_size=batch_size,
            max_iter=3,
            virtual_batch_size=vbs,
            random_state=0,
        )
        fits.append(fit_quietly(est, X, y))
    plain = fits[0]
    for other in fits[1:]:
        for name in (
            "coefs_",
            "gammas_",
            "intercepts_",
            "running_means_",
            "running_vars_",
        ):
            for a, b in zip(getattr(plain, name), getattr(other, name)):
                assert_array_equal(a, b)
        assert other._n_batches_tracked == plain._n_batches_tracked


@pytest.mark.parametrize("virtual_batch_size", [None, 2])
def test_weight_on_a_single_row_is_skipped_with_a_warning(virtual_batch_size):
    # Weights [1, 0] repeated over the first 20 rows: every minibatch of 2
    # there (or every ghost chunk of 2 rows) has its weight on one row, whose
    # own statistics normalize nothing. They are skipped, with one warning,
    # and the running statistics do not decay towards 0.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 4))
    y = np.tile([0, 1, 2, 1], 10)
    sw = np.r_[np.tile([1.0, 0.0], 10), np.ones(20)]
    if virtual_batch_size is not None:
        sw = np.tile([1.0, 0.0], 20)
    params = dict(
        hidden_layer_sizes=(8,),
        batch_size=2 if virtual_batch_size is None else 8,
        virtual_batch_size=virtual_batch_size,
        max_iter=3,
        shuffle=False,
        learning_rate="constant",
        random_state=0,
        input_preprocessing=None,
    )
    est = MLPBNClassifier(**params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, y, sample_weight=sw)
    messages = [
        str(w.message) for w in caught if "fewer than two rows" in str(w.message)
    ]
    assert len(messages) == 1
    # 10 minibatches x 3 epochs, or 5 minibatches x 4 chunks x 3 epochs
    assert messages[0].startswith("30 " if virtual_batch_size is None else "60 ")
    if virtual_batch_size is None:
        # The model and its loss are those of a fit on the rows trained:
        # the skipped minibatches change nothing, not even the running
        # statistics, and their rows do not dilute the mean loss.
        alone = fit_quietly(MLPBNClassifier(**params), X[20:], y[20:])
        for name in ("coefs_", "intercepts_", "running_means_", "running_vars_"):
            for a, b in zip(getattr(est, name), getattr(alone, name)):
                assert_array_equal(a, b)
        assert_allclose(est.loss_curve_, alone.loss_curve_, rtol=1e-12)
    else:
        for var in est.running_vars_:
            assert np.all(var > 0.5)
    # Rows with weight on two rows or more per minibatch: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.set_params(shuffle=True).fit(X, y, sample_weight=np.ones(40))


def test_a_fit_that_can_train_no_minibatch_raises_and_changes_nothing():
    # Every minibatch of 2 has its weight on one row: nothing can be
    # trained. A ValueError says so; a fitted model stays as it was.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 4))
    y = np.tile([0, 1, 2, 1], 10)
    sw = np.tile([1.0, 0.0], 20)
    est = MLPBNClassifier(
        hidden_layer_sizes=(8,),
        batch_size=2,
        max_iter=3,
        shuffle=False,
        random_state=0,
        input_preprocessing=None,
    )
    with pytest.raises(ValueError, match="No minibatch could be trained"):
        est.fit(X, y, sample_weight=sw)
    with pytest.raises(ValueError, match="No minibatch could be trained"):
        clone(est).partial_fit(X, y, classes=[0, 1, 2], sample_weight=sw)
    fit_quietly(est, X, y)
    before = snapshot(est)
    with pytest.raises(ValueError, match="No minibatch could be trained"):
        est.fit(X, y, sample_weight=sw)
    assert_same(est.__dict__, before)
    # A later partial_fit that trains nothing is an epoch that changed
    # nothing: its loss is the last one.
    est.partial_fit(X, y)
    loss = est.loss_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est.partial_fit(X, y, sample_weight=sw)
    assert est.loss_curve_[-2:] == [loss, loss]


def test_early_stopping_with_no_training_weight_raises():
    # Every row with weight falls in the validation split (its rows for
    # random_state=0).
    X, y = make_regression(n_samples=40, n_features=5, random_state=0)
    sw = np.zeros(40)
    sw[[22, 27, 16, 13]] = 1
    est = MLPBNRegressor(
        hidden_layer_sizes=(4,),
        max_iter=3,
        early_stopping=True,
        random_state=0,
        input_preprocessing=None,
    )
    with pytest.raises(ValueError, match="validation split of early stopping sum"):
        est.fit(X, y / y.std(), sample_weight=sw)


@pytest.mark.parametrize("Estimator", [MLPBNClassifier, MLPBNRegressor])
def test_early_stopping_with_no_validation_weight_raises_before_training(
    Estimator, monkeypatch
):
    # Only rows of the training split have weight: no score to stop on.
    # scikit-learn's MLP raises from the first score, naming no split.
    X, y = make_classification(n_samples=40, n_features=5, random_state=0)
    est = Estimator(
        hidden_layer_sizes=(4,),
        max_iter=3,
        early_stopping=True,
        random_state=0,
        validation_fraction=0.2,
        input_preprocessing=None,
    )
    split = recorded_split(monkeypatch)
    row_ids = np.arange(1.0, 41.0)  # as weights: the split names its rows
    fit_quietly(est, X, y, sample_weight=row_ids)
    train_rows = split[0][4].astype(int) - 1
    sw = np.zeros(40)
    sw[train_rows] = 1
    with pytest.raises(ValueError, match="validation rows of early stopping sum"):
        est.fit(X, y, sample_weight=sw)


TABULAR_DEFAULTS = {
    "hidden_layer_sizes": (512,),
    "alpha": 0.01,
    "learning_rate": "cosine",
    "learning_rate_init": 0.002,
    "max_iter": 40,
    "batch_size": 128,
}


@pytest.mark.parametrize(
    "ours, theirs", [(MLPBNClassifier, MLPClassifier), (MLPBNRegressor, MLPRegressor)]
)
def test_defaults_differ_from_scikit_learns_only_where_measured(ours, theirs):
    # The user guide's table "Defaults that differ from MLPClassifier" lists
    # exactly these, with the measurement behind each.
    mine, sklearns = ours().get_params(), theirs().get_params()
    differ = {
        name: mine[name]
        for name in sklearns.keys() & mine.keys()
        if mine[name] != sklearns[name]
    }
    assert differ == TABULAR_DEFAULTS
    guide = (Path(__file__).parents[1] / "docs" / "user_guide" / "mlp.rst").read_text()
    table = guide.split("Defaults that differ from MLPClassifier")[1].split("Measured")[
        0
    ]
    assert set(re.findall(r"   \* - ``(\w+)``", table)) == set(TABULAR_DEFAULTS)


def test_a_continued_fit_says_which_part_of_the_network_changed():
    X, Y = make_regression(n_samples=60, n_features=5, n_targets=2, random_state=0)
    est = MLPBNRegressor(hidden_layer_sizes=(8,), input_preprocessing=None)
    est.partial_fit(X, Y)
    with pytest.raises(ValueError, match="y gives 1 output units, the fitted network"):
        est.partial_fit(X, Y[:, 0])
    est.set_params(hidden_layer_sizes=(9,), warm_start=True, max_iter=2)
    with pytest.raises(ValueError, match=r"hidden layers \[9\], the fitted network"):
        est.fit(X, Y)


def test_targets_too_large_for_float32_raise_a_clear_error():
    X, y = make_regression(n_samples=60, n_features=5, random_state=0)
    est = MLPBNRegressor(hidden_layer_sizes=(4,), max_iter=2, input_preprocessing=None)
    with pytest.raises(ValueError, match="y has values too large for float32"):
        est.fit(X.astype(np.float32), np.r_[1e39, y[1:]])
    fit_quietly(est, X, np.r_[1e39, y[1:]] / 1e39)  # float64: fine


@pytest.mark.parametrize(
    "name, value",
    [
        ("label_smoothing", 1.5),
        ("label_smoothing", -0.5),
        ("class_weight", "weird"),
        ("early_stopping", "sometimes"),
        ("alpha", -1.0),
        ("batch_size", 1),
        ("shuffle", "yes"),
        ("activation", "gelu"),
    ],
)
def test_partial_fit_rechecks_the_parameters_it_reads(name, value):
    # A label_smoothing of 1.5 set after the first partial_fit trained on
    # inverted labels (accuracy 0.97 down to 0.05); an unknown class_weight
    # raised a TypeError from deep inside. Every parameter partial_fit reads
    # is checked again, with scikit-learn's validation error.
    rng = np.random.RandomState(0)
    X, y = rng.randn(60, 5), rng.randint(0, 2, 60)
    est = MLPBNClassifier(hidden_layer_sizes=(4,), batch_size=20, random_state=0)
    est.partial_fit(X, y, classes=np.unique(y))
    before = pickle.dumps(est.set_params(**{name: value}))
    with pytest.raises(InvalidParameterError, match=name):
        est.partial_fit(X, y)
    assert pickle.dumps(est) == before


@pytest.mark.parametrize("name, value", [("loss", "huber"), ("dropout", [0.5, 0.5])])
def test_regressor_partial_fit_rechecks_the_parameters_it_reads(name, value):
    rng = np.random.RandomState(0)
    X, y = rng.randn(60, 5), rng.randn(60)
    est = MLPBNRegressor(hidden_layer_sizes=(4,), batch_size=20, random_state=0)
    est.partial_fit(X, y)
    before = pickle.dumps(est.set_params(**{name: value}))
    with pytest.raises(InvalidParameterError, match=name):
        est.partial_fit(X, y)
    assert pickle.dumps(est) == before


@pytest.mark.parametrize("virtual_batch_size", [1.5, 1, 2.5, True])
def test_partial_fit_rejects_a_virtual_batch_size_set_after_the_first_call(
    virtual_batch_size,
):
    # scikit-learn validates the parameters at the first partial_fit only; a
    # bad value set later still gets that validation's error, which names it,
    # and the model stays as it was.
    rng = np.random.RandomState(0)
    X, y = rng.randn(60, 5), rng.randint(0, 2, 60)
    est = MLPBNClassifier(hidden_layer_sizes=(4,), batch_size=20, random_state=0)
    est.partial_fit(X, y, classes=np.unique(y))
    before = pickle.dumps(est)
    est.set_params(virtual_batch_size=virtual_batch_size)
    with pytest.raises(
        InvalidParameterError, match=f"virtual_batch_size.*Got {virtual_batch_size!r}"
    ):
        est.partial_fit(X, y)
    est.set_params(virtual_batch_size=None)
    assert pickle.dumps(est) == before


@pytest.mark.parametrize("Estimator", [MLPBNClassifier, MLPBNRegressor])
def test_recorded_losses_are_numpy_floats_as_in_scikit_learn(Estimator):
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    est = fit_quietly(Estimator(hidden_layer_sizes=(4,), max_iter=3), X, y)
    reference = fit_quietly(
        (MLPClassifier if Estimator is MLPBNClassifier else MLPRegressor)(
            hidden_layer_sizes=(4,), max_iter=3
        ),
        X,
        y,
    )
    for name in ("loss_", "best_loss_"):
        assert type(getattr(est, name)) is type(getattr(reference, name))
    assert {type(loss) for loss in est.loss_curve_} == {np.float64}
    est.partial_fit(X, y)
    assert type(est.loss_curve_[-1]) is np.float64


def test_divergence_messages_follow_what_the_fit_ran_with():
    rng = np.random.RandomState(0)
    X = rng.randn(200, 3)
    y = X[:, 0] + 0.1 * rng.randn(200)
    common = dict(hidden_layer_sizes=(4,), solver="sgd", random_state=0)
    # partial_fit keeps the first fit's optimizer, so its learning rate.
    est = MLPBNRegressor(
        learning_rate_init=1e-3, batch_size=10, input_preprocessing=None, **common
    ).partial_fit(X, y)
    est.set_params(learning_rate_init=1e-12)
    with pytest.raises(ValueError) as error:
        est.partial_fit(X, y * 1e6)
    assert "the learning rate partial_fit keeps from the first fit (0.001)" in str(
        error.value
    )
    assert "Try a smaller learning_rate_init" not in str(error.value)
    # The L2 term is divided by each minibatch's weight sum, not the total.
    est = MLPBNRegressor(
        alpha=1.0,
        learning_rate_init=0.5,
        momentum=0,
        max_iter=3,
        input_preprocessing=None,
        batch_size=20,
        **common,
    )
    with pytest.raises(ValueError, match="about 0.02 per minibatch"):
        fit_quietly(est, X, y, sample_weight=np.full(200, 1e-3))
    # A row carrying most of the weight is named beside far targets.
    est = MLPBNRegressor(
        learning_rate_init=1e200, max_iter=2, input_preprocessing=None, **common
    )
    weights = np.r_[1e6, np.ones(199)]
    with pytest.raises(ValueError, match="targets reaching .*concentrated on one row"):
        fit_quietly(est, X, y * 1e4, sample_weight=weights)
    # Poisson targets are not standardized by the handling: no advice to use it.
    est = MLPBNRegressor(loss="poisson", max_iter=3, input_preprocessing=None, **common)
    fit_quietly(est, X, np.abs(y))
    est.set_params(warm_start=True, learning_rate_init=1e200)
    with pytest.raises(ValueError) as error:
        fit_quietly(est, X, np.abs(y) * 1e5)
    assert "else fit a new model on y divided by a constant)" in str(error.value)
