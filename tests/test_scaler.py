"""Tests of BatchNormScaler and of its kernels (sklearn_bn._scaling)."""

import multiprocessing
import pickle
import threading
import tracemalloc
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from scipy import sparse
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from threadpoolctl import threadpool_limits

from sklearn_bn import BatchNormScaler, _team, _threads
from sklearn_bn._scaling import affine_columns, has_infinity

from reference import DTYPES, draw_split, parametrize_with_checks

MOMENTA = [None, 0.1]


def _tol(dtype):
    """rtol/atol for outputs of order 1 computed in ``dtype``."""
    return (
        {"rtol": 1e-5, "atol": 1e-5}
        if dtype == np.float32
        else {"rtol": 1e-12, "atol": 1e-12}
    )


def _stat_tol(dtype):
    """rtol for statistics of data in ``dtype`` against float64 numpy.

    The statistics are accumulated in double, but deviations from a block's
    center may be formed in the data's dtype: float32 data give statistics
    accurate to about 1e-7 of their spread.
    """
    return 2e-6 if dtype == np.float32 else 1e-10


def _data(n=200, m=6, dtype=np.float64, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, m)) * rng.uniform(0.1, 10, size=m) + rng.uniform(
        -5, 5, size=m
    )
    return X.astype(dtype)


def _reference(X, mean, var, epsilon, gamma=1.0, beta=0.0):
    """The pinned formula, in float64."""
    X = np.asarray(X, dtype=np.float64)
    return gamma * (X - mean) / np.sqrt(var + epsilon) + beta


def _state(est):
    """A deep snapshot of the fitted state, comparable with ``_assert_same_state``."""
    return pickle.loads(pickle.dumps(est.__dict__))


def _assert_same_state(before, after):
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray) or np.isscalar(value):
            assert_array_equal(after[key], value, err_msg=key)
            assert np.asarray(after[key]).dtype == np.asarray(value).dtype, key
        else:
            assert after[key] == value, key


# ---------------------------------------------------------------------------
# scikit-learn compatibility


@parametrize_with_checks(
    [
        BatchNormScaler(),
        BatchNormScaler(momentum=0.1),
        BatchNormScaler(momentum=0.5, epsilon=0.0, gamma=2.0, beta=-1.0),
    ]
)
def test_sklearn_compatible(estimator, check, monkeypatch):
    # The array API check (with NumPy inputs) skips itself unless this is set;
    # set it only while the check runs so that no skip is left.
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)


# ---------------------------------------------------------------------------
# momentum=None: exact statistics, StandardScaler's output at epsilon=0


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_standard_scaler(dtype):
    X = _data(dtype=dtype)
    X[:, 1] = 3.7  # zero variance (not exactly representable in float32)
    X[:, 4] = 0.0
    X_test = _data(n=50, dtype=dtype, seed=1)

    ours = BatchNormScaler(epsilon=0.0)
    ref = StandardScaler()
    Xt = ours.fit_transform(X)
    Xt_ref = ref.fit_transform(X)

    assert Xt.dtype == dtype
    assert_allclose(ours.running_mean_, ref.mean_, rtol=_stat_tol(dtype), atol=1e-12)
    assert_allclose(ours.running_var_, ref.var_, rtol=_stat_tol(dtype), atol=1e-12)
    assert ours.n_samples_seen_ == ref.n_samples_seen_ == X.shape[0]
    assert isinstance(ours.n_samples_seen_, np.integer)
    assert_allclose(Xt, Xt_ref, **_tol(dtype))
    assert_allclose(ours.transform(X_test), ref.transform(X_test), **_tol(dtype))
    # Constant features are centered, not scaled.
    assert_allclose(ours.transform(X_test)[:, 1], X_test[:, 1] - 3.7, rtol=1e-5)
    assert_allclose(ours.inverse_transform(Xt), X, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_standard_scaler_partial_fit_stream(dtype):
    X = _data(n=301, dtype=dtype)
    ours = BatchNormScaler(epsilon=0.0)
    ref = StandardScaler()
    for start in range(0, X.shape[0], 40):
        ours.partial_fit(X[start : start + 40])
        ref.partial_fit(X[start : start + 40])
    assert_allclose(ours.running_mean_, ref.mean_, rtol=_stat_tol(dtype))
    assert_allclose(ours.running_var_, ref.var_, rtol=_stat_tol(dtype))
    assert ours.n_samples_seen_ == ref.n_samples_seen_ == 301
    assert_allclose(ours.transform(X), ref.transform(X), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_standard_scaler_sample_weight(dtype):
    X = _data(dtype=dtype)
    X[:, 2] = -1.25
    w = np.random.RandomState(3).uniform(0, 3, size=X.shape[0]).astype(dtype)
    w[:20] = 0
    ours = BatchNormScaler(epsilon=0.0).fit(X, sample_weight=w)
    ref = StandardScaler().fit(X, sample_weight=w)
    assert_allclose(
        ours.running_mean_, ref.mean_, rtol=1e-6 if dtype == np.float32 else 1e-12
    )
    assert_allclose(
        ours.running_var_,
        ref.var_,
        rtol=1e-6 if dtype == np.float32 else 1e-10,
        atol=1e-20,
    )
    assert_allclose(ours.n_samples_seen_, ref.n_samples_seen_, rtol=1e-6)
    assert_allclose(ours.transform(X), ref.transform(X), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_ignored_by_statistics_and_kept(dtype):
    X = _data(dtype=dtype)
    rng = np.random.RandomState(7)
    X[rng.uniform(size=X.shape) < 0.2] = np.nan
    X[:, 5] = np.nan
    X[3:, 5] = 2.0  # a constant column with missing values
    ours = BatchNormScaler(epsilon=0.0).fit(X)
    ref = StandardScaler().fit(X)

    assert_allclose(
        ours.running_mean_[:5],
        np.nanmean(X[:, :5].astype(np.float64), axis=0),
        rtol=_stat_tol(dtype),
    )
    assert_allclose(
        ours.running_var_[:5],
        np.nanvar(X[:, :5].astype(np.float64), axis=0),
        rtol=_stat_tol(dtype),
    )
    assert_array_equal(ours.n_samples_seen_, ref.n_samples_seen_)
    assert_array_equal(ours.n_samples_seen_, np.sum(~np.isnan(X), axis=0))
    Xt = ours.transform(X)
    assert_array_equal(np.isnan(Xt), np.isnan(X))
    assert_allclose(Xt, ref.transform(X), **_tol(dtype))

    # With weights too.
    w = rng.uniform(0.5, 2, size=X.shape[0])
    ours.fit(X, sample_weight=w)
    ref.fit(X, sample_weight=w)
    assert_allclose(ours.n_samples_seen_, ref.n_samples_seen_)
    assert_allclose(ours.transform(X), ref.transform(X), **_tol(dtype))


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning:sklearn")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epsilon", [0.0, 1e-5])
def test_all_nan_feature_gives_nan_as_standard_scaler(dtype, epsilon):
    X = _data(n=20, m=3, dtype=dtype)
    X[:, 1] = np.nan
    new = _data(n=5, m=3, dtype=dtype, seed=1)  # finite everywhere
    ours = BatchNormScaler(epsilon=epsilon, gamma=2.0, beta=1.0).fit(X)
    ref = StandardScaler().fit(X)
    # Nothing is known about feature 1: its statistics are undefined.
    assert_array_equal(np.isnan(ours.running_mean_), np.isnan(ref.mean_))
    assert_array_equal(np.isnan(ours.running_var_), np.isnan(ref.var_))
    assert_array_equal(ours.n_samples_seen_, [20, 0, 20])
    for out in (
        ours.transform(new),
        ours.fit_transform(X),
        ours.inverse_transform(new),
    ):
        assert out.dtype == dtype
        assert np.all(np.isnan(out[:, 1]))
        assert not np.any(np.isnan(out[:, [0, 2]]))
    assert_array_equal(np.isnan(ours.transform(new)), np.isnan(ref.transform(new)))
    if epsilon == 0:
        assert_allclose(
            ours.transform(new)[:, [0, 2]],
            2.0 * ref.transform(new)[:, [0, 2]] + 1.0,
            **_tol(dtype),
        )
    # The first values seen later make the statistics, as fit on all rows does.
    ours.partial_fit(new)
    whole = BatchNormScaler(epsilon=epsilon).fit(np.vstack([X, new]))
    assert_allclose(ours.running_mean_, whole.running_mean_, rtol=_stat_tol(dtype))
    assert_allclose(ours.running_var_, whole.running_var_, rtol=_stat_tol(dtype))
    assert_allclose(
        ours.running_mean_[1],
        new[:, 1].astype(np.float64).mean(),
        rtol=_stat_tol(dtype),
    )
    assert_array_equal(ours.n_samples_seen_, [25, 5, 25])
    assert not np.any(np.isnan(ours.transform(new)))


def test_feature_with_weight_only_on_nan_gives_nan():
    X = _data(n=6, m=2)
    X[:3, 0] = np.nan
    w = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # feature 0: zero weight left
    scaler = BatchNormScaler().fit(X, sample_weight=w)
    assert_array_equal(scaler.n_samples_seen_, [0.0, 3.0])
    assert np.isnan(scaler.running_mean_[0]) and np.isnan(scaler.running_var_[0])
    out = scaler.transform(X)
    assert np.all(np.isnan(out[:, 0])) and not np.any(np.isnan(out[:, 1]))
    # Every feature unseen: the count is a scalar 0, everything is NaN.
    scaler = BatchNormScaler().fit(np.full((4, 2), np.nan))
    assert scaler.n_samples_seen_ == 0
    assert np.all(np.isnan(scaler.transform(np.ones((3, 2)))))
    scaler.partial_fit(np.ones((3, 2)))
    assert_array_equal(scaler.running_mean_, [1.0, 1.0])
    assert scaler.n_samples_seen_ == 3


def test_n_samples_seen_convention():
    X = _data(n=20, m=3)
    scaler = BatchNormScaler().fit(X)
    assert (
        isinstance(scaler.n_samples_seen_, np.integer) and scaler.n_samples_seen_ == 20
    )
    scaler.partial_fit(X[:5])
    assert scaler.n_samples_seen_ == 25
    scaler.partial_fit(X, sample_weight=np.full(20, 0.5))
    assert (
        isinstance(scaler.n_samples_seen_, np.floating) and scaler.n_samples_seen_ == 35
    )
    X[0, 1] = np.nan
    scaler.fit(X)
    assert_array_equal(scaler.n_samples_seen_, [20, 19, 20])
    # fit forgets what partial_fit accumulated.
    scaler.partial_fit(X)
    scaler.fit(X[1:5])
    assert scaler.n_samples_seen_ == 4


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_rows=st.integers(2, 40),
    n_cols=st.integers(1, 4),
    weighted=st.booleans(),
    with_nan=st.booleans(),
)
def test_fit_equals_any_split_into_partial_fit(
    data, n_rows, n_cols, weighted, with_nan
):
    rng = np.random.RandomState(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    X = rng.normal(size=(n_rows, n_cols)) * 10.0 ** rng.uniform(-3, 3, size=n_cols)
    X += rng.uniform(-100, 100, size=n_cols)
    if with_nan:
        X[rng.uniform(size=X.shape) < 0.3] = np.nan
    w = rng.uniform(0, 3, size=n_rows) if weighted else None
    bounds = draw_split(data, n_rows, max_cuts=5)

    whole = BatchNormScaler().fit(X, sample_weight=w)
    parts = BatchNormScaler()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        parts.partial_fit(
            X[start:stop], sample_weight=None if w is None else w[start:stop]
        )

    scale = np.nanmax(np.abs(X), initial=1.0)
    assert_allclose(
        parts.running_mean_, whole.running_mean_, rtol=1e-9, atol=1e-12 * scale
    )
    assert_allclose(
        parts.running_var_, whole.running_var_, rtol=1e-8, atol=1e-12 * scale**2
    )
    assert_allclose(parts.n_samples_seen_, whole.n_samples_seen_, rtol=1e-12)
    assert (
        np.asarray(parts.n_samples_seen_).shape
        == np.asarray(whole.n_samples_seen_).shape
    )


# ---------------------------------------------------------------------------
# momentum: PyTorch's running statistics


def _torch_like(batches, momentum, weights=None):
    """Running mean and var as torch.nn.BatchNorm1d keeps them, seeded by batch 1."""
    mean = var = None
    for k, B in enumerate(batches):
        w = np.ones(len(B)) if weights is None else weights[k]
        n = w.sum()
        mu = np.sum(w[:, None] * B, axis=0) / n
        v = np.sum(w[:, None] * (B - mu) ** 2, axis=0) / n * n / (n - 1)
        if mean is None:
            mean, var = mu, v
        else:
            mean = (1 - momentum) * mean + momentum * mu
            var = (1 - momentum) * var + momentum * v
    return mean, var


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
def test_momentum_follows_pytorch_convention(dtype, momentum):
    X = _data(n=90, dtype=dtype)
    batches = [X[:30], X[30:32], X[32:90]]
    scaler = BatchNormScaler(momentum=momentum)
    for B in batches:
        scaler.partial_fit(B)
    mean, var = _torch_like([B.astype(np.float64) for B in batches], momentum)
    assert scaler.running_mean_.dtype == np.float64
    assert_allclose(scaler.running_mean_, mean, rtol=_stat_tol(dtype), atol=1e-12)
    assert_allclose(scaler.running_var_, var, rtol=_stat_tol(dtype))
    assert scaler.n_samples_seen_ == 90
    assert_allclose(scaler.transform(X), _reference(X, mean, var, 1e-5), **_tol(dtype))
    # The first batch seeds the statistics with its mean and unbiased variance.
    first = BatchNormScaler(momentum=momentum).partial_fit(X[:30])
    assert_allclose(
        first.running_mean_,
        X[:30].astype(np.float64).mean(axis=0),
        rtol=_stat_tol(dtype),
    )
    assert_allclose(
        first.running_var_,
        X[:30].astype(np.float64).var(axis=0, ddof=1),
        rtol=_stat_tol(dtype),
    )


def test_momentum_fit_resets_and_uses_one_batch():
    X = _data(n=50)
    scaler = BatchNormScaler(momentum=0.1).partial_fit(X[:10]).partial_fit(X[10:])
    scaler.fit(X)
    assert_allclose(scaler.running_mean_, X.mean(axis=0), rtol=1e-12)
    assert_allclose(scaler.running_var_, X.var(axis=0, ddof=1), rtol=1e-10)
    assert scaler.n_samples_seen_ == 50


def test_momentum_weights_are_repeat_counts():
    X = _data(n=30)
    w = np.random.RandomState(0).randint(0, 4, size=30)
    w[:2] = 1
    X_rep = np.repeat(X, w, axis=0)
    a = BatchNormScaler(momentum=0.3).partial_fit(X[:15], sample_weight=w[:15])
    a.partial_fit(X[15:], sample_weight=w[15:])
    b = BatchNormScaler(momentum=0.3).partial_fit(X_rep[: w[:15].sum()])
    b.partial_fit(X_rep[w[:15].sum() :])
    assert_allclose(a.running_mean_, b.running_mean_, rtol=1e-12)
    assert_allclose(a.running_var_, b.running_var_, rtol=1e-10)
    mean, var = _torch_like([X[:15], X[15:]], 0.3, weights=[w[:15], w[15:]])
    assert_allclose(a.running_var_, var, rtol=1e-10)


def test_momentum_nan_uses_per_feature_counts():
    X = _data(n=40, m=3)
    X[:5, 1] = np.nan
    scaler = BatchNormScaler(momentum=0.2).partial_fit(X[:20]).partial_fit(X[20:])
    mean = np.nanmean(X[:20], axis=0)
    var = np.nanvar(X[:20], axis=0, ddof=1)
    mean = 0.8 * mean + 0.2 * X[20:].mean(axis=0)
    var = 0.8 * var + 0.2 * X[20:].var(axis=0, ddof=1)
    assert_allclose(scaler.running_mean_, mean, rtol=1e-12)
    assert_allclose(scaler.running_var_, var, rtol=1e-10)
    assert_array_equal(scaler.n_samples_seen_, [40, 35, 40])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_momentum_feature_without_values_keeps_its_statistics(dtype):
    # NaN is ignored when learning: a feature with no value in a batch is
    # not updated; never seen, its statistics are NaN (NaN output, as in
    # exact mode and StandardScaler) until a batch sets them as a first one.
    rng = np.random.default_rng(0)
    first, second, third = (rng.normal(size=(20, 3)).astype(dtype) for _ in range(3))
    first[:, 1] = np.nan
    third[:, 2] = np.nan
    scaler = BatchNormScaler(momentum=0.25).fit(first)
    assert np.isnan(scaler.running_mean_[1]) and np.isnan(scaler.running_var_[1])
    out = scaler.transform(first[:2])
    assert np.isnan(out[:, 1]).all() and np.isfinite(out[:, [0, 2]]).all()

    def batch_stats(X):
        X = X.astype(np.float64)
        return np.nanmean(X, axis=0), np.nanvar(X, axis=0, ddof=1)

    mean1, var1 = batch_stats(first)
    mean2, var2 = batch_stats(second)
    scaler.partial_fit(second)
    expected_mean = 0.75 * mean1 + 0.25 * mean2
    expected_var = 0.75 * var1 + 0.25 * var2
    expected_mean[1], expected_var[1] = mean2[1], var2[1]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert_allclose(scaler.running_mean_, expected_mean, rtol=rtol)
    assert_allclose(scaler.running_var_, expected_var, rtol=rtol)
    assert_array_equal(scaler.n_samples_seen_, [40, 20, 40])

    before = scaler.running_mean_[2], scaler.running_var_[2]
    scaler.partial_fit(third)
    assert (scaler.running_mean_[2], scaler.running_var_[2]) == before
    assert_array_equal(scaler.n_samples_seen_, [60, 40, 40])

    # Values on rows of zero weight only: no value either.
    weights = np.ones(20)
    weights[:10] = 0.0
    fourth = rng.normal(size=(20, 3)).astype(dtype)
    fourth[10:, 0] = np.nan
    kept = scaler.running_mean_[0], scaler.running_var_[0]
    scaler.partial_fit(fourth, sample_weight=weights)
    assert (scaler.running_mean_[0], scaler.running_var_[0]) == kept


@pytest.mark.parametrize(
    "batch, weight, match",
    [
        (np.ones((1, 3)), None, "n_samples=1"),
        # Weights below 2 in sum and on one row only: m = 1.
        (np.ones((4, 3)), np.array([1.5, 0.0, 0.0, 0.0]), "sum of sample weights"),
        (
            np.array([[1.0, np.nan, 2.0], [3.0, np.nan, 4.0], [5.0, 6.0, 7.0]]),
            None,
            r"feature\(s\) \[1\]",
        ),
    ],
)
def test_momentum_batch_too_small_raises_and_changes_nothing(batch, weight, match):
    X = _data(n=30, m=3)
    scaler = BatchNormScaler(momentum=0.1).fit(X)
    before = _state(scaler)
    with pytest.raises(ValueError, match=match):
        scaler.partial_fit(batch, sample_weight=weight)
    _assert_same_state(before, _state(scaler))
    with pytest.raises(ValueError, match=match):
        scaler.fit(batch, sample_weight=weight)
    _assert_same_state(before, _state(scaler))
    # Unfitted: stays unfitted.
    fresh = BatchNormScaler(momentum=0.1)
    with pytest.raises(ValueError, match=match):
        fresh.partial_fit(batch, sample_weight=weight)
    assert not hasattr(fresh, "n_samples_seen_") and not hasattr(
        fresh, "n_features_in_"
    )


def test_momentum_none_accepts_one_sample():
    scaler = BatchNormScaler(epsilon=0.0).fit([[1.0, 2.0]])
    assert_array_equal(scaler.transform([[1.0, 5.0]]), [[0.0, 3.0]])


def test_momentum_epsilon_zero_constant_feature_unscaled():
    X = _data(n=20, m=3)
    X[:, 0] = 4.0
    scaler = BatchNormScaler(momentum=0.1, epsilon=0.0).fit(X)
    Xt = scaler.transform(X)
    assert np.all(np.isfinite(Xt))
    assert_allclose(scaler.transform([[5.0, 0.0, 0.0]])[0, 0], 1.0)


@pytest.mark.parametrize("scale", [1e-16, 1.0, 1e16])
def test_momentum_epsilon_zero_scales_features_whatever_their_units(scale):
    # A feature is constant by StandardScaler's test, relative to its mean
    # and count, in both modes: not below a fixed spread.
    X = np.random.RandomState(0).normal(size=(100, 2)) * scale
    X[:, 1] = 4.0 * scale
    for momentum in (1.0, 0.1):
        out = BatchNormScaler(momentum=momentum, epsilon=0).fit_transform(X)
        assert_allclose(out[:, 0].std(), np.sqrt(99 / 100), rtol=1e-12)
        assert_array_equal(out[:, 1], 0.0)


def _unbiased_batch(B, w):
    """One batch's weighted mean and unbiased variance by the networks' rule
    (DESIGN.md), NaN ignored per feature, written out in numpy: m = the weight
    sum, or the number of rows with positive weight when that sum is below 2."""
    B = np.asarray(B, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    mean, var = [], []
    for j in range(B.shape[1]):
        keep = ~np.isnan(B[:, j])
        x, wj = B[keep, j], w[keep]
        total = wj.sum()
        m = total if total >= 2 else np.count_nonzero(wj > 0)
        mu = np.sum(wj * x) / total
        mean.append(mu)
        var.append(np.sum(wj * (x - mu) ** 2) / total * m / (m - 1))
    return np.array(mean), np.array(var)


@pytest.mark.parametrize("dtype", DTYPES)
# Per batch of 20 rows (17 or 18 of them weighted) the weights sum to about
# 0.5, 1.5, 3 and 20: the first two use the number of weighted rows.
@pytest.mark.parametrize("total", [1.0, 3.0, 6.0, 40.0])
def test_momentum_normalized_weights_follow_the_networks_rule(dtype, total):
    X = _data(n=40, m=3, dtype=dtype)
    rng = np.random.RandomState(1)
    w = rng.uniform(0.1, 1, size=40)
    w[[3, 17, 29]] = 0
    w = (w * (total / w.sum())).astype(dtype)
    scaler = BatchNormScaler(momentum=0.2)
    scaler.partial_fit(X[:20], sample_weight=w[:20])
    scaler.partial_fit(X[20:], sample_weight=w[20:])
    mean1, var1 = _unbiased_batch(X[:20], w[:20])
    mean2, var2 = _unbiased_batch(X[20:], w[20:])
    assert_allclose(
        scaler.running_mean_, 0.8 * mean1 + 0.2 * mean2, rtol=_stat_tol(dtype)
    )
    assert_allclose(scaler.running_var_, 0.8 * var1 + 0.2 * var2, rtol=_stat_tol(dtype))
    assert_allclose(scaler.n_samples_seen_, w.astype(np.float64).sum(), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_momentum_weights_summing_to_one_equal_weights_summing_to_n(dtype):
    # AdaBoost's normalized weights: every row weighted, so m = n_rows either way.
    X = _data(n=30, m=4, dtype=dtype)
    w = np.random.RandomState(2).uniform(0.1, 1, size=30)
    normalized = BatchNormScaler(momentum=0.1).fit(X, sample_weight=w / w.sum())
    counts = BatchNormScaler(momentum=0.1).fit(X, sample_weight=w * (30 / w.sum()))
    assert_allclose(normalized.running_var_, counts.running_var_, rtol=_stat_tol(dtype))
    assert_allclose(
        normalized.running_mean_, counts.running_mean_, rtol=_stat_tol(dtype)
    )
    Xd = X.astype(np.float64)
    mean = np.average(Xd, axis=0, weights=w)
    var = np.average((Xd - mean) ** 2, axis=0, weights=w) * 30 / 29
    assert_allclose(normalized.running_var_, var, rtol=_stat_tol(dtype))
    assert_allclose(normalized.transform(X), counts.transform(X), **_tol(dtype))


def test_momentum_weights_rule_per_feature_with_nan():
    # NaN rows do not count in a feature's weight sum nor in its weighted rows.
    X = _data(n=12, m=3)
    w = np.array([0.6, 0.4, 0.3, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0])
    X[[1, 4, 11], 1] = np.nan  # two weighted rows and the unweighted one
    X[0, 2] = np.nan  # the heaviest row

    def ddof0_var(j, weights):
        keep = ~np.isnan(X[:, j])
        mean = np.average(X[keep, j], weights=weights[keep])
        return np.average((X[keep, j] - mean) ** 2, weights=weights[keep])

    # Sums 2.2, 1.6 and 1.6: the weight sum for feature 0, the 11 - 2 and
    # 11 - 1 weighted rows that are not NaN for features 1 and 2.
    # Normalized to sum to 1: weighted rows for all three.
    for weights, m in [
        (w, np.array([2.2, 9, 10])),
        (w / w.sum(), np.array([11, 9, 10])),
    ]:
        scaler = BatchNormScaler(momentum=0.5).fit(X, sample_weight=weights)
        expected = np.array([ddof0_var(j, weights) for j in range(3)]) * m / (m - 1)
        assert_allclose(scaler.running_var_, expected, rtol=1e-10)
        assert_allclose(scaler.running_var_, _unbiased_batch(X, weights)[1], rtol=1e-10)


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_summing_to_zero_raise_and_change_nothing(momentum, dtype):
    # Whatever scikit-learn's own check of sample weights does.
    X = _data(n=10, m=3, dtype=dtype)
    scaler = BatchNormScaler(momentum=momentum).fit(X)
    before = _state(scaler)
    for call in (scaler.fit, scaler.partial_fit, scaler.fit_transform):
        with pytest.raises(ValueError, match="[Ss]ample weights"):
            call(X, sample_weight=np.zeros(10))
        _assert_same_state(before, _state(scaler))


@pytest.mark.parametrize("momentum", MOMENTA)
def test_weights_out_of_range_are_named_and_change_nothing(momentum):
    # The MLP's rule: as repeat counts the weights must sum below a quarter
    # of float64's largest number (the statistics are summed in float64),
    # and a positive weight must be a normal number of X's dtype.
    X = _data(n=10, m=3)
    scaler = BatchNormScaler(momentum=momentum).fit(X)
    before = _state(scaler)
    for weight, match in [
        (1e307, "sample_weight is too large: the weights sum to 1e\\+308"),
        (5e-324, "sample_weight is too small: .* smallest normal float64"),
    ]:
        for call in (scaler.fit, scaler.partial_fit, scaler.fit_transform):
            with pytest.raises(ValueError, match=match):
                call(X, sample_weight=np.full(10, weight))
            _assert_same_state(before, _state(scaler))
    # Checked before the rounding to float32, which would make 1e-300 a 0
    # (the row silently dropped) and 1e39 infinite.
    X32 = X.astype(np.float32)
    for weights in (np.full(10, 1e-40), np.r_[1e-300, np.ones(9)]):
        with pytest.raises(ValueError, match="smallest normal float32"):
            scaler.fit(X32, sample_weight=weights)
        _assert_same_state(before, _state(scaler))
    with pytest.raises(ValueError, match="sample_weight contains infinity"):
        scaler.fit(X32, sample_weight=np.r_[1e39, np.ones(9)])
    _assert_same_state(before, _state(scaler))
    # Weights whose sum overflows: the error alone, no numpy warning first.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match="the weights sum to inf"):
            scaler.fit(np.tile(X, (6, 1)), sample_weight=np.full(60, 1e307))
    _assert_same_state(before, _state(scaler))
    # n_samples_seen_ adds every batch's weights up.
    scaler.fit(X, sample_weight=np.full(10, 3e306))
    before = _state(scaler)
    with pytest.raises(ValueError, match="with those of earlier batches"):
        scaler.partial_fit(X, sample_weight=np.full(10, 3e306))
    _assert_same_state(before, _state(scaler))


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_weights_give_the_statistics_of_their_proportions(momentum, dtype):
    # The mean and variance depend on the weights' proportions only; the
    # sums of squares of large weights would overflow if not scaled first.
    X = _data(n=10, m=3, dtype=dtype) * 100
    weights = np.linspace(1.0, 3.0, 10)
    large = 3e37 if dtype == np.float32 else 1e306
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        big = BatchNormScaler(momentum=momentum).fit(X, sample_weight=weights * large)
    small = BatchNormScaler(momentum=momentum).fit(X, sample_weight=weights)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert_allclose(big.running_mean_, small.running_mean_, rtol=rtol)
    # With momentum, the unbiased correction m / (m - 1) counts the weights
    # as repeats: 1 for the large ones.
    m = weights.sum()
    correction = 1.0 if momentum is None else (m - 1) / m
    assert_allclose(big.running_var_, small.running_var_ * correction, rtol=rtol)
    assert_allclose(big.n_samples_seen_, small.n_samples_seen_ * large, rtol=1e-6)
    # The exact merge with an earlier batch multiplies variances by counts,
    # scaled alike first too.
    if momentum is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            big.partial_fit(X, sample_weight=weights * large)
        small.partial_fit(X, sample_weight=weights)
        assert_allclose(big.running_var_, small.running_var_, rtol=rtol)


def test_weights_spanning_a_wide_range_keep_their_proportions():
    # Scaling the largest weights down must not flush the smallest to 0 (the
    # first feature's only value has the smallest weight).
    X = np.array([[np.nan, 1.0], [5.0, 2.0], [np.nan, 3.0], [np.nan, 4.0]])
    weights = np.array([1e300, 1e-300, 1e300, 1e300])
    scaler = BatchNormScaler().fit(X, sample_weight=weights)
    assert_allclose(scaler.running_mean_, [5.0, 8.0 / 3.0])
    assert_allclose(scaler.n_samples_seen_, [1e-300, 3e300])
    scaler.partial_fit(X, sample_weight=weights)
    assert_allclose(scaler.running_mean_, [5.0, 8.0 / 3.0])
    assert_allclose(scaler.n_samples_seen_, [2e-300, 6e300])


# ---------------------------------------------------------------------------
# gamma, beta, epsilon, inverse_transform


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", MOMENTA)
def test_gamma_beta_scalars_and_arrays(dtype, momentum):
    X = _data(dtype=dtype)
    gamma = np.linspace(0.5, 2.0, X.shape[1])
    beta = np.linspace(-1, 1, X.shape[1])
    for g, b in [
        (0.5, 0.1),
        (gamma, 0.0),
        (1.0, beta),
        (gamma, beta),
        (list(gamma), tuple(beta)),
    ]:
        scaler = BatchNormScaler(momentum=momentum, gamma=g, beta=b, epsilon=1e-3).fit(
            X
        )
        expected = _reference(
            X,
            scaler.running_mean_,
            scaler.running_var_,
            1e-3,
            np.asarray(g),
            np.asarray(b),
        )
        Xt = scaler.transform(X)
        assert Xt.dtype == dtype
        assert_allclose(Xt, expected, **_tol(dtype))
        if momentum is None:
            # The output has mean beta and standard deviation close to gamma.
            assert_allclose(Xt.mean(axis=0), np.broadcast_to(b, 6), atol=1e-4)
            assert_allclose(Xt.std(axis=0), np.broadcast_to(g, 6), rtol=1e-3)
        assert_allclose(
            scaler.inverse_transform(Xt),
            X,
            rtol=1e-4 if dtype == np.float32 else 1e-12,
            atol=1e-4 if dtype == np.float32 else 1e-12,
        )


@pytest.mark.parametrize("name", ["gamma", "beta"])
@pytest.mark.parametrize(
    "value", [np.ones(5), np.ones((6, 1)), [1.0, 2.0], [np.nan] * 6, np.inf, "a"]
)
def test_bad_gamma_beta_raises_at_fit(name, value):
    X = _data()
    with pytest.raises((ValueError, TypeError)):
        BatchNormScaler(**{name: value}).fit(X)
    fitted = BatchNormScaler().fit(X)
    before = _state(fitted)
    fitted.set_params(**{name: value})
    with pytest.raises((ValueError, TypeError)):
        fitted.partial_fit(X)
    fitted.set_params(**{name: 1.0 if name == "gamma" else 0.0})
    _assert_same_state(before, _state(fitted))


@pytest.mark.parametrize("start", MOMENTA)
@pytest.mark.parametrize(
    "name, value",
    [
        ("momentum", np.nan),
        ("momentum", -1.0),
        ("momentum", 0),
        ("momentum", 5.0),
        ("momentum", "0.1"),
        ("epsilon", -1.0),
        ("epsilon", np.nan),
        ("epsilon", np.inf),
    ],
)
def test_bad_parameters_set_after_fit_raise_at_partial_fit(start, name, value):
    # scikit-learn validates the parameters at partial_fit of an unfitted
    # estimator only: a fitted scaler checks what set_params changed.
    X = _data()
    fitted = BatchNormScaler(momentum=start).fit(X)
    before = _state(fitted)
    fitted.set_params(**{name: value})
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        fitted.partial_fit(X + 1)
    fitted.set_params(momentum=start, epsilon=1e-5)
    _assert_same_state(before, _state(fitted))


@pytest.mark.parametrize(
    "name, value",
    [("epsilon", v) for v in (-1.0, -1e-300, np.nan, np.inf, "a")]
    + [("copy", v) for v in ("yes", 1, None)],
)
@pytest.mark.parametrize("method", ["transform", "inverse_transform"])
def test_bad_parameters_set_after_fit_raise_at_transform(name, value, method):
    X = _data()
    fitted = BatchNormScaler().fit(X)
    fitted.set_params(**{name: value})
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        getattr(fitted, method)(X)
    if name == "copy":
        getattr(fitted, method)(X, copy=True)  # the parameter is not read


def test_gamma_length_error_message():
    with pytest.raises(
        ValueError,
        match=r"gamma must be a float or an array of shape \(n_features,\) = \(6,\)",
    ):
        BatchNormScaler(gamma=np.ones(5)).fit(_data())


def test_gamma_and_beta_as_zero_dimensional_arrays():
    X = _data()
    ref = BatchNormScaler(gamma=2.0, beta=-1.0).fit(X)
    for gamma, beta in [
        (np.array(2.0), np.array(-1.0)),
        (np.float32(2.0), np.int64(-1)),
    ]:
        scaler = BatchNormScaler(gamma=gamma, beta=beta).fit(X)
        assert_array_equal(scaler.transform(X), ref.transform(X))


def _constant_column_data(value, dtype, nan=False):
    """Column 0 constant at `value`, columns 1 and 2 varied; NaN in column 0."""
    X = _data(n=64, m=3, dtype=dtype, seed=3)
    X[:, 0] = value
    if nan:
        X[::5, 0] = np.nan
    return X


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "value", [651.0, 1e4, 1e6, -3.3e7, 1.7e38, 3.4028235e38, 1e-30, 1e-45]
)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("nan", [False, True])
def test_constant_column_maps_to_beta(momentum, dtype, value, weighted, nan):
    # x * scale + shift cancels (651 * 316 - 651 * 316 in float32 is off by
    # 0.0156); (x - mean) * scale + shift does not.
    X = _constant_column_data(value, dtype, nan)
    w = np.random.RandomState(4).uniform(0.5, 2, size=64) if weighted else None
    beta = np.array([0.25, 0.0, -1.0])
    scaler = BatchNormScaler(momentum=momentum, beta=beta)
    for start in (0, 32):  # two batches: the moving average must stay exact
        scaler.partial_fit(
            X[start : start + 32],
            sample_weight=None if w is None else w[start : start + 32],
        )
    for out in (scaler.transform(X), clone(scaler).fit_transform(X, sample_weight=w)):
        assert out.dtype == dtype
        assert_array_equal(np.isnan(out[:, 0]), np.isnan(X[:, 0]))
        assert np.nanmax(np.abs(out[:, 0] - 0.25)) <= 1e-3
    back = scaler.inverse_transform(scaler.transform(X))
    assert_array_equal(back[:, 0], X[:, 0])


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(width=32, allow_nan=False, allow_infinity=False),
    momentum=st.sampled_from(MOMENTA),
)
def test_any_float32_constant_column_maps_to_beta(value, momentum):
    X = _constant_column_data(value, np.float32)
    scaler = BatchNormScaler(momentum=momentum, beta=0.5).fit(X)
    out = scaler.transform(X)
    assert np.max(np.abs(out[:, 0] - 0.5)) <= 1e-3
    assert_array_equal(scaler.inverse_transform(out)[:, 0], X[:, 0])


@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("spread", [1e-12, 1e-18, 1e-21, 1e-25, 1e-35, 1e-39, 1e-42])
def test_float32_features_of_tiny_spread_are_scaled_as_standard_scaler(
    spread, with_nan
):
    # Squares of float32 deviations below ~1e-19 would be subnormal numbers,
    # then 0: the statistics must not lose them. Below ~1e-38 the deviations
    # are subnormal themselves and 1 / std is beyond float32's range.
    rng = np.random.RandomState(0)
    X = np.column_stack([rng.normal(size=200) * spread, np.full(200, 3.0)])
    X = X.astype(np.float32)
    if with_nan:
        X[7, 0] = np.nan
    reference = X.astype(np.float64)
    ref_mean, ref_var = np.nanmean(reference, 0), np.nanvar(reference, 0)
    w = rng.randint(0, 3, size=200).astype(np.float32)
    for momentum in MOMENTA:
        exact = BatchNormScaler(momentum=momentum, epsilon=0).fit(X)
        assert_allclose(exact.running_mean_, ref_mean, rtol=1e-6)
        correction = 1.0 if momentum is None else 199 / 198 if with_nan else 200 / 199
        assert_allclose(exact.running_var_, ref_var * correction, rtol=1e-6)
        weighted = BatchNormScaler(momentum=momentum, epsilon=0).fit(X, sample_weight=w)
        repeated = np.repeat(reference, w.astype(int), axis=0)
        assert_allclose(weighted.running_mean_, np.nanmean(repeated, 0), rtol=1e-6)
    out = BatchNormScaler(epsilon=0).fit_transform(X)
    assert out.dtype == np.float32
    expected = StandardScaler().fit_transform(reference)
    assert_allclose(out, expected, atol=1e-6)
    if spread >= 1e-35:  # subnormal float32 divisions round more
        assert_allclose(out, StandardScaler().fit_transform(X), atol=1e-6)
    scaler = BatchNormScaler(epsilon=0, copy=False).fit(X)
    X_in_place = X.copy()
    assert scaler.transform(X_in_place) is X_in_place
    assert_allclose(X_in_place, expected, atol=1e-6)
    # Subnormal numbers have few digits: a round trip is within one unit.
    tiny = np.finfo(np.float32).smallest_subnormal
    assert_allclose(scaler.inverse_transform(X_in_place), X, rtol=1e-5, atol=tiny)


def test_float32_feature_of_tiny_spread_around_its_first_value():
    # Its float32 squares vanish and its mean is its first value, as for a
    # constant feature: it still has its variance.
    a, d = np.float32(1e-20), np.float32(1e-25)
    X = np.array([[a, 3], [a + d, 3], [a - d, 3]], dtype=np.float32)
    scaler = BatchNormScaler(epsilon=0).fit(X)
    reference = X.astype(np.float64)
    assert_allclose(scaler.running_var_, reference.var(0), rtol=1e-6)
    assert_allclose(
        scaler.transform(X), StandardScaler().fit_transform(reference), atol=1e-6
    )


def test_epsilon_enters_as_in_batch_norm():
    X = _data(n=100, m=2)
    X[:, 1] *= 1e-3
    for eps in [0.0, 1e-5, 1.0]:
        scaler = BatchNormScaler(epsilon=eps).fit(X)
        assert_allclose(
            scaler.transform(X),
            _reference(X, X.mean(0), X.var(0), eps),
            rtol=1e-10,
            atol=1e-12,
        )


def test_inverse_transform_with_gamma_zero_raises():
    scaler = BatchNormScaler(gamma=[1.0, 0.0]).fit(_data(m=2))
    with pytest.raises(ValueError, match="gamma is 0"):
        scaler.inverse_transform(np.zeros((3, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_transform_keeps_nan_and_checks_features(dtype):
    X = _data(dtype=dtype)
    X[::7, 2] = np.nan
    scaler = BatchNormScaler(gamma=2.0, beta=-1.0).fit(X)
    back = scaler.inverse_transform(scaler.transform(X))
    assert back.dtype == dtype
    assert_array_equal(np.isnan(back), np.isnan(X))
    assert_allclose(
        back,
        X,
        rtol=1e-5 if dtype == np.float32 else 1e-12,
        atol=1e-5 if dtype == np.float32 else 1e-12,
    )
    with pytest.raises(
        ValueError, match="X has 5 features, but BatchNormScaler is expecting 6"
    ):
        scaler.inverse_transform(X[:, :5])


# ---------------------------------------------------------------------------
# Input handling: dtypes, layouts, read-only and memory-mapped data, copies


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("momentum", MOMENTA)
def test_dtype_layout_readonly_grid(dtype, order, readonly, momentum):
    X = np.asarray(_data(dtype=dtype), order=order)
    X[::11, 3] = np.nan
    X_orig = X.copy()
    if readonly:
        X.setflags(write=False)
    scaler = BatchNormScaler(momentum=momentum, gamma=0.5, beta=0.1)
    Xt = scaler.fit_transform(X)
    X64 = X_orig.astype(np.float64)
    mean = np.nanmean(X64, axis=0)
    var = np.nanvar(X64, axis=0, ddof=0 if momentum is None else 1)
    assert_allclose(scaler.running_mean_, mean, rtol=_stat_tol(dtype))
    assert_allclose(scaler.running_var_, var, rtol=_stat_tol(dtype))
    assert Xt.dtype == dtype and Xt.flags.c_contiguous
    assert_allclose(Xt, _reference(X64, mean, var, 1e-5, 0.5, 0.1), **_tol(dtype))
    back_tol = (
        {"rtol": 1e-4, "atol": 1e-4}
        if dtype == np.float32
        else {"rtol": 1e-12, "atol": 1e-12}
    )
    assert_allclose(scaler.transform(X), Xt, **_tol(dtype))
    assert_allclose(scaler.inverse_transform(Xt), X_orig, **back_tol)
    assert_array_equal(X, X_orig)
    # copy=False overwrites only a writable C-contiguous float array.
    in_place = order == "C" and not readonly
    out = scaler.transform(X, copy=False)
    assert (out is X) == in_place
    assert_allclose(out, Xt, **_tol(dtype))
    back = scaler.inverse_transform(out, copy=False)
    assert (back is X) == in_place
    assert_allclose(back, X_orig, **back_tol)
    if not in_place:
        assert_array_equal(X, X_orig)


@pytest.mark.parametrize("dtype", DTYPES)
def test_memmap_input(tmp_path, dtype):
    X = _data(dtype=dtype)
    mm = np.memmap(tmp_path / "X.dat", dtype=dtype, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    ro = np.memmap(tmp_path / "X.dat", dtype=dtype, mode="r", shape=X.shape)
    scaler = BatchNormScaler().fit(ro)
    assert_allclose(
        scaler.running_mean_, X.astype(np.float64).mean(axis=0), rtol=_stat_tol(dtype)
    )
    assert_allclose(
        scaler.transform(ro), BatchNormScaler().fit_transform(X), **_tol(dtype)
    )
    assert_allclose(
        scaler.transform(ro, copy=False), scaler.transform(X), **_tol(dtype)
    )
    assert_array_equal(ro, X)


def _unaligned(array):
    """A C-contiguous copy of ``array`` whose data start one byte past an
    aligned address (as ``np.frombuffer(buf, offset=1)`` gives)."""
    raw = np.zeros(array.nbytes + 1, dtype=np.uint8)
    out = np.frombuffer(raw.data, dtype=array.dtype, offset=1, count=array.size)
    out = out.reshape(array.shape)
    out[...] = array
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", MOMENTA)
def test_unaligned_input_is_accepted(dtype, momentum):
    # Arrays that start at any byte pass scikit-learn's validation (Dask ships
    # blocks like this between workers); the scaler gives what it gives on an
    # aligned copy.
    X = _data(dtype=dtype)
    sw = np.random.RandomState(1).uniform(0.5, 2.0, X.shape[0]).astype(dtype)
    Xu, swu = _unaligned(X), _unaligned(sw)
    expected = BatchNormScaler(momentum=momentum).fit(X, sample_weight=sw)
    for fitted in (
        BatchNormScaler(momentum=momentum).fit(Xu, sample_weight=swu),
        BatchNormScaler(momentum=momentum).partial_fit(Xu, sample_weight=swu),
    ):
        assert_array_equal(fitted.running_mean_, expected.running_mean_)
        assert_array_equal(fitted.running_var_, expected.running_var_)
    assert_array_equal(
        BatchNormScaler(momentum=momentum).fit_transform(Xu, sample_weight=swu),
        expected.transform(X),
    )
    assert_array_equal(expected.transform(Xu), expected.transform(X))
    assert_array_equal(
        expected.transform(_unaligned(X), copy=False), expected.transform(X)
    )
    assert_array_equal(expected.inverse_transform(Xu), expected.inverse_transform(X))
    assert_array_equal(Xu, X)


def test_memmap_at_an_odd_offset(tmp_path):
    X = _data(dtype=np.float64)
    path = tmp_path / "X.dat"
    with open(path, "wb") as f:
        f.write(b"\0" + X.tobytes())
    mm = np.memmap(path, dtype=np.float64, mode="r", offset=1, shape=X.shape)
    assert not mm.flags.aligned
    scaler = BatchNormScaler().fit(mm)
    assert_array_equal(scaler.running_mean_, BatchNormScaler().fit(X).running_mean_)
    assert_array_equal(scaler.transform(mm), scaler.transform(X))


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_false_works_in_place(dtype):
    X = _data(dtype=dtype)
    expected = BatchNormScaler().fit_transform(X)
    scaler = BatchNormScaler(copy=False).fit(X)
    Xc = X.copy()
    out = scaler.transform(Xc)
    assert out is Xc
    assert_allclose(Xc, expected, **_tol(dtype))
    back = scaler.inverse_transform(Xc)
    assert back is Xc
    assert_allclose(
        Xc,
        X,
        rtol=1e-4 if dtype == np.float32 else 1e-12,
        atol=1e-4 if dtype == np.float32 else 1e-12,
    )
    # fit_transform with copy=False too.
    Xc = X.copy()
    assert BatchNormScaler(copy=False).fit_transform(Xc) is Xc
    assert_allclose(Xc, expected, **_tol(dtype))
    # copy=True (default) leaves X alone, and copy= overrides the parameter.
    Xc = X.copy()
    assert scaler.transform(Xc, copy=True) is not Xc
    assert_array_equal(Xc, X)
    assert BatchNormScaler().fit(X).transform(Xc, copy=False) is Xc


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_false_overwrites_an_unaligned_array_too(dtype):
    # numpy reads it as a writable C-contiguous float array without a copy
    # (StandardScaler(copy=False) overwrites it); the kernels need an
    # aligned one, and an inf found there leaves the input untouched.
    X = _data(dtype=dtype)
    scaler = BatchNormScaler(copy=False).fit(X)
    expected = scaler.transform(X.copy())
    buffer = np.zeros(X.nbytes + 1, dtype=np.uint8)
    X_unaligned = np.frombuffer(buffer[1:].data, dtype=dtype).reshape(X.shape)
    X_unaligned[...] = X
    assert not X_unaligned.flags.aligned and X_unaligned.flags.writeable
    assert scaler.transform(X_unaligned) is X_unaligned
    assert_array_equal(X_unaligned, expected)
    assert scaler.inverse_transform(X_unaligned) is X_unaligned
    assert_allclose(X_unaligned, X, **_tol(dtype))
    X_unaligned[0, 0] = np.inf
    before = X_unaligned.copy()
    with pytest.raises(ValueError, match="infinity"):
        scaler.transform(X_unaligned)
    assert_array_equal(X_unaligned, before)


class _ArrayLike:
    """Hands out its own data from ``__array__``, as xarray does."""

    def __init__(self, array):
        self._array = array

    def __array__(self, dtype=None, copy=None):
        return self._array


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "wrap",
    [memoryview, np.ctypeslib.as_ctypes, _ArrayLike],
    ids=["memoryview", "ctypes", "array_method"],
)
def test_copy_true_leaves_memory_seen_through_other_objects(wrap, dtype):
    # numpy reads these without a copy: the validated X is the caller's
    # memory although it is not the input object. (scikit-learn's
    # validation reads the first two as float64, as StandardScaler does.)
    X = _data(dtype=dtype)
    scaler = BatchNormScaler().fit(X)
    expected = {
        "transform": scaler.transform(X),
        "inverse_transform": scaler.inverse_transform(X),
        "fit_transform": BatchNormScaler().fit_transform(X),
    }
    calls = {
        "transform": scaler.transform,
        "inverse_transform": scaler.inverse_transform,
        "fit_transform": BatchNormScaler().fit_transform,
    }
    for name, call in calls.items():
        Xc = X.copy()
        assert_allclose(call(wrap(Xc)), expected[name], **_tol(dtype))
        assert_array_equal(Xc, X, err_msg=name)
    # copy=False writes into the memory, as StandardScaler(copy=False) does.
    Xc = X.copy()
    scaler.transform(wrap(Xc), copy=False)
    if dtype == np.float64:
        assert_allclose(Xc, expected["transform"], **_tol(dtype))


def test_float32_frames_stay_float32():
    # scikit-learn's validation reads a polars frame as float64.
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    X = _data(n=40, m=3).astype(np.float32)
    names = ["a", "b", "c"]
    expected = BatchNormScaler().fit_transform(X)
    for frame in (pd.DataFrame(X, columns=names), pl.DataFrame(X, schema=names)):
        scaler = BatchNormScaler().fit(frame)
        assert_array_equal(scaler.feature_names_in_, names)
        for out in (scaler.transform(frame), BatchNormScaler().fit_transform(frame)):
            assert out.dtype == np.float32
            assert_array_equal(out, expected)
        with pytest.raises(ValueError, match="feature names should match"):
            scaler.transform(frame[["b", "a", "c"]])
    scaler = BatchNormScaler().set_output(transform="polars")
    out = scaler.fit(pl.DataFrame(X, schema=names)).transform(
        pl.DataFrame(X, schema=names)
    )
    assert out.dtypes == [pl.Float32] * 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_stays_float32_without_float64_copy(dtype):
    X = _data(n=20000, m=20, dtype=dtype)
    scaler = BatchNormScaler().fit(X)
    tracemalloc.start()
    try:
        scaler.fit(X)
        _, fit_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        Xt = scaler.transform(X)
        _, transform_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert Xt.dtype == dtype
    # fit allocates vectors only; transform allocates its output only.
    assert fit_peak < 0.05 * X.nbytes
    assert transform_peak < 1.05 * X.nbytes


def test_integer_and_list_input_become_float64():
    X = np.arange(24).reshape(8, 3)
    scaler = BatchNormScaler(copy=False).fit(X)
    Xt = scaler.transform(X)
    assert Xt.dtype == np.float64
    assert_array_equal(X, np.arange(24).reshape(8, 3))
    assert_allclose(scaler.transform(X.tolist()), Xt)


def test_y_is_ignored_and_pipeline_works():
    X = _data()
    y = (X[:, 0] > X[:, 0].mean()).astype(int)
    pipe = make_pipeline(BatchNormScaler(gamma=0.5), LogisticRegression()).fit(X, y)
    assert pipe.score(X, y) > 0.9
    assert_allclose(
        BatchNormScaler().fit(X, y).transform(X), BatchNormScaler().fit_transform(X, y)
    )


@pytest.mark.parametrize("momentum", MOMENTA)
def test_fit_transform_equals_fit_then_transform(momentum):
    X = _data()
    X[5, 2] = np.nan
    w = np.random.RandomState(0).uniform(0.1, 2, size=X.shape[0])
    a = BatchNormScaler(momentum=momentum).fit_transform(X, sample_weight=w)
    b = BatchNormScaler(momentum=momentum).fit(X, sample_weight=w).transform(X)
    assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Errors, and failure atomicity


@pytest.mark.parametrize(
    "sparse_container", [sparse.csr_matrix, sparse.csr_array, sparse.csc_array]
)
def test_sparse_input_is_refused_with_the_reason(sparse_container):
    X = sparse_container(np.eye(4))
    msg = r"does not accept sparse input: centering .* would make a sparse matrix dense"
    with pytest.raises(TypeError, match=msg):
        BatchNormScaler().fit(X)
    scaler = BatchNormScaler().fit(np.eye(4))
    before = _state(scaler)
    for method in (
        scaler.partial_fit,
        scaler.fit,
        scaler.transform,
        scaler.inverse_transform,
    ):
        with pytest.raises(TypeError, match=msg):
            method(X)
    _assert_same_state(before, _state(scaler))


_OVERFLOWING = {
    # variance 1e600
    "+-1e300": np.array([[1e300, 1.0], [-1e300, 2.0], [1e300, 3.0], [-1e300, 4.0]]),
    # sums beyond 1.8e308
    "1.7e308": np.array([[1.7e308, 1.0], [1e308, 2.0], [1.7e308, 3.0], [1.2e308, 4.0]]),
    "+-1e300 and NaN": np.array(
        [[1e300, 1.0], [-1e300, 2.0], [np.nan, 3.0], [-1e300, 4.0]]
    ),
}


@pytest.mark.parametrize("epsilon", [0.0, 1e-5])
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("case", list(_OVERFLOWING))
def test_overflowing_statistics_warn(momentum, case, epsilon):
    X = _OVERFLOWING[case]
    # StandardScaler warns about it too (numpy's "overflow encountered").
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
        warnings.simplefilter("always")
        StandardScaler().fit(X)
    assert any("overflow" in str(w.message) for w in caught)
    with pytest.warns(
        RuntimeWarning,
        match=r"overflow encountered in the statistics of feature\(s\) \[0\]",
    ):
        scaler = BatchNormScaler(momentum=momentum, epsilon=epsilon).fit(X)
    assert not np.all(np.isfinite([scaler.running_mean_[0], scaler.running_var_[0]]))
    assert_allclose(scaler.running_mean_[1], 2.5)
    # Once, at fit: transform says nothing more, and the other feature is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = scaler.transform(X)
    assert np.all(np.isfinite(out[:, 1]))
    # A partial_fit on top of overflowing statistics warns again; the
    # warning names the caller's line, not the package's.
    with pytest.warns(RuntimeWarning, match="overflow") as record:
        scaler.partial_fit(X)
    assert {w.filename for w in record} == {__file__}


@pytest.mark.parametrize("momentum", MOMENTA)
def test_large_finite_statistics_do_not_warn(momentum):
    # The largest data whose statistics fit: no warning, and correct values.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for X in (
            np.array([[1e150], [-1e150], [1e150], [-1e150]]),
            np.array([[3e38], [-3e38], [3e38], [-3e38]], dtype=np.float32),
            np.full((5, 1), 1e300),
        ):
            scaler = BatchNormScaler(momentum=momentum).fit(X)
            Xd = X.astype(np.float64)
            assert_allclose(
                scaler.running_mean_, Xd.mean(axis=0), atol=1e-12 * np.abs(Xd).max()
            )
            assert_allclose(
                scaler.running_var_,
                Xd.var(axis=0, ddof=0 if momentum is None else 1),
                rtol=1e-6,
                atol=1e-300,
            )
            assert np.all(np.isfinite(scaler.transform(X)))


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize(
    "column",
    [
        # Deviations whose squares pass 1e308, a variance within range.
        np.array([1e160, 1e160 + 1e150, 1e160, 1e160, 1e160 + 2e150, 1e160]),
        np.random.default_rng(0).normal(size=60) * 1e153,
        # A constant whose shift (the mean of the first rows, rounded) is
        # one ulp off: the ulp's square is beyond the range.
        np.full(6, 1.2345e173),
        np.full(6, 1e284),
    ],
)
@pytest.mark.parametrize("nan_elsewhere", [False, True])
def test_statistics_of_huge_values_do_not_overflow(momentum, column, nan_elsewhere):
    # Squared deviations beyond float64's range: the features are scaled by
    # a power of two first. Another feature's NaN (the careful pass) must
    # not change that; nor must a partial_fit stream (the merge).
    other = np.arange(len(column), dtype=np.float64)
    if nan_elsewhere:
        other[1] = np.nan
    X = np.column_stack([column, other])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaler = BatchNormScaler(momentum=momentum, beta=0.5).fit(X)
        half = len(X) // 2
        stream = BatchNormScaler(momentum=momentum, beta=0.5)
        stream.partial_fit(X[:half]).partial_fit(X[half:])
        out = scaler.transform(X)
    # The reference: deviations from the first value (exact here), scaled
    # by a power of two so that numpy's squares stay in range.
    deviations = column - column[0]
    exponent = np.frexp(max(np.abs(deviations).max(), 1e-300))[1]
    scaled = np.ldexp(deviations, -exponent)
    ddof = 0 if momentum is None else 1
    assert_allclose(scaler.running_mean_[0], column.mean(), rtol=1e-14)
    assert_allclose(
        np.ldexp(scaler.running_var_[0], -2 * exponent),
        scaled.var(ddof=ddof),
        rtol=1e-12,
        atol=1e-300,
    )
    if momentum is None:
        # The merge reads float64 means: their rounding over the spread.
        conditioning = np.abs(column).max() / max(np.ldexp(scaled.std(), exponent), 1)
        assert_allclose(
            stream.running_var_[0],
            scaler.running_var_[0],
            rtol=1e-12 + 16 * np.finfo(float).eps * conditioning,
        )
    if np.ptp(column) == 0:
        assert_array_equal(out[:, 0], 0.5)
    else:
        expected = (scaled - scaled.mean()) / np.sqrt(scaled.var(ddof=ddof))
        assert_allclose(out[:, 0], expected + 0.5, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("position", [0, 100])
@pytest.mark.parametrize("big", [1e20, 1e100, 1e160, 1e300])
def test_a_huge_value_on_a_row_of_weight_0_is_absent(momentum, position, big):
    # A row of weight 0 is absent: its value, first in the block (where the
    # kernel's shift is taken) or anywhere, changes nothing.
    x = np.random.default_rng(0).normal(size=200)
    weights = np.ones(200)
    weights[position] = 0.0
    X = x[:, None].copy()
    X[position, 0] = big
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaler = BatchNormScaler(momentum=momentum).fit(X, sample_weight=weights)
    kept = np.delete(x, position)
    reference = BatchNormScaler(momentum=momentum).fit(kept[:, None])
    assert_allclose(scaler.running_mean_, reference.running_mean_, rtol=1e-12)
    assert_allclose(scaler.running_var_, reference.running_var_, rtol=1e-12)


@pytest.mark.parametrize("momentum", MOMENTA)
def test_infinity_raises_everywhere(momentum):
    X = _data(n=30, m=3)
    X_inf = X.copy()
    X_inf[4, 1] = np.inf
    X_ninf = X.copy()
    X_ninf[0, 0] = -np.inf
    scaler = BatchNormScaler(momentum=momentum).fit(X)
    for bad in (X_inf, X_ninf):
        with pytest.raises(ValueError, match="Input X contains infinity"):
            BatchNormScaler(momentum=momentum).fit(bad)
        for copy in (True, False):
            kept = bad.copy()
            with pytest.raises(ValueError, match="Input X contains infinity"):
                scaler.transform(kept, copy=copy)
            assert_array_equal(kept, bad)  # not even partly overwritten
            with pytest.raises(ValueError, match="Input X contains infinity"):
                scaler.inverse_transform(kept, copy=copy)
            assert_array_equal(kept, bad)
    # Infinity next to NaN, and in a zero-weight row.
    X_both = X_inf.copy()
    X_both[7, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains infinity"):
        BatchNormScaler(momentum=momentum).fit(X_both)
    w = np.ones(30)
    w[4] = 0
    with pytest.raises(ValueError, match="Input X contains infinity"):
        BatchNormScaler(momentum=momentum).fit(X_inf, sample_weight=w)
    # ... also when every row of the kernel's block around it weighs 0 (the
    # kernel skips such a block), in every fitting method.
    X_block = np.ones((1024, 64))
    X_block[::2] = 2.0
    X_block[0, 0] = np.inf
    w = np.ones(1024)
    w[:512] = 0
    for method in ("fit", "partial_fit", "fit_transform"):
        fitted = BatchNormScaler(momentum=momentum).fit(X)
        before = (fitted.running_mean_.copy(), fitted.running_var_.copy())
        with pytest.raises(ValueError, match="Input X contains infinity"):
            getattr(fitted, method)(X_block[:, :3], sample_weight=w)
        with pytest.raises(ValueError, match="Input X contains infinity"):
            getattr(BatchNormScaler(momentum=momentum), method)(
                X_block, sample_weight=w
            )
        assert_array_equal(fitted.running_mean_, before[0])
        assert_array_equal(fitted.running_var_, before[1])


def _failures(momentum):
    """(description, callable(scaler)) pairs that must raise on a fitted scaler."""
    X = _data(n=30, m=4)
    X_inf = X.copy()
    X_inf[3, 2] = np.inf
    X_one_value = X.copy()
    X_one_value[1:, 1] = np.nan
    cases = {
        "wrong n_features": lambda s: s.partial_fit(X[:, :3]),
        "infinity": lambda s: s.partial_fit(X_inf),
        "zero weights": lambda s: s.partial_fit(X, sample_weight=np.zeros(30)),
        "negative weights": lambda s: s.partial_fit(X, sample_weight=-np.ones(30)),
        "weights with NaN": lambda s: s.partial_fit(
            X, sample_weight=np.full(30, np.nan)
        ),
        "wrong weight length": lambda s: s.partial_fit(X, sample_weight=np.ones(29)),
        "empty": lambda s: s.partial_fit(X[:0]),
        "1d": lambda s: s.partial_fit(X[:, 0]),
        "complex": lambda s: s.partial_fit(X + 1j),
        "strings": lambda s: s.partial_fit(np.array([["a", "b", "c", "d"]] * 3)),
        "sparse": lambda s: s.partial_fit(sparse.csr_array(X)),
        "bad gamma length": lambda s: s.set_params(gamma=np.ones(3)).partial_fit(X),
        "bad beta length": lambda s: s.set_params(beta=np.ones(5)).fit(X),
        "bad momentum": lambda s: s.set_params(momentum=2.0).fit(X),
        "fit with infinity": lambda s: s.fit(X_inf),
        "fit with wrong weights": lambda s: s.fit(X, sample_weight=np.zeros(30)),
    }
    if momentum is not None:
        cases["one-row batch"] = lambda s: s.partial_fit(X[:1])
        cases["one-row fit"] = lambda s: s.fit(X[:1])
        cases["feature with one value in batch"] = lambda s: s.partial_fit(X_one_value)
        cases["weights summing to 1 on one row"] = lambda s: s.partial_fit(
            X, sample_weight=np.eye(30)[0]
        )
    return cases


@pytest.mark.parametrize("momentum", MOMENTA)
def test_failed_fit_leaves_fitted_scaler_unchanged(momentum):
    X = _data(n=30, m=4)
    X[2, 3] = np.nan  # per-feature n_samples_seen_
    for description, call in _failures(momentum).items():
        scaler = BatchNormScaler(momentum=momentum).fit(X).partial_fit(X[:10])
        params = scaler.get_params()
        before = _state(scaler)
        with pytest.raises((ValueError, TypeError)):
            call(scaler)
        scaler.set_params(**params)
        _assert_same_state(before, _state(scaler))
        # Still usable, with the same output.
        assert_allclose(
            scaler.transform(X),
            clone(scaler).fit(X).partial_fit(X[:10]).transform(X),
            err_msg=description,
        )


def test_failed_fit_with_feature_names_keeps_them():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(_data(n=10, m=3), columns=["a", "b", "c"])
    scaler = BatchNormScaler(momentum=0.1).fit(df)
    bad = pd.DataFrame(_data(n=1, m=2), columns=["x", "y"])
    with pytest.raises(ValueError):
        scaler.fit(bad)
    assert_array_equal(scaler.feature_names_in_, ["a", "b", "c"])
    assert scaler.n_features_in_ == 3
    scaler = BatchNormScaler().fit(df)
    with pytest.raises(ValueError):
        scaler.fit(np.ones((3, 3)), sample_weight=np.zeros(3))
    assert_array_equal(scaler.feature_names_in_, ["a", "b", "c"])


def test_fast_validation_path_behaves_like_validate_data():
    # Fitted scalers skip validate_data for plain C-contiguous float arrays;
    # the checks and messages must stay the same as on the general path.
    X = _data(n=10, m=3)
    scaler = BatchNormScaler().fit(X)
    messages = []
    for bad in (
        np.ones((4, 2)),
        np.ones((4, 2)).tolist(),
        np.asfortranarray(np.ones((4, 2))),
    ):
        for method in (scaler.transform, scaler.partial_fit):
            with pytest.raises(ValueError) as excinfo:
                method(bad)
            messages.append(str(excinfo.value))
    assert set(messages) == {
        "X has 2 features, but BatchNormScaler is expecting 3 features as input."
    }
    for bad in (np.ones((0, 3)), np.ones(3), np.ones((2, 3, 1))):
        with pytest.raises(ValueError):
            scaler.transform(bad)
    # Fitted with feature names: an array without them still warns.
    pd = pytest.importorskip("pandas")
    scaler = BatchNormScaler().fit(pd.DataFrame(X, columns=["a", "b", "c"]))
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        scaler.transform(X)
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        scaler.partial_fit(X)


def test_unfitted_raises_not_fitted():
    from sklearn.exceptions import NotFittedError

    for method in ("transform", "inverse_transform"):
        with pytest.raises(NotFittedError):
            getattr(BatchNormScaler(), method)(np.ones((2, 2)))


# ---------------------------------------------------------------------------
# Feature names, set_output, pickling


def test_get_feature_names_out():
    pd = pytest.importorskip("pandas")
    X = _data(m=3)
    assert_array_equal(
        BatchNormScaler().fit(X).get_feature_names_out(), ["x0", "x1", "x2"]
    )
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    scaler = BatchNormScaler().fit(df)
    assert_array_equal(scaler.feature_names_in_, ["a", "b", "c"])
    assert_array_equal(scaler.get_feature_names_out(), ["a", "b", "c"])


@pytest.mark.parametrize("output", ["pandas", "polars"])
def test_set_output(output):
    lib = pytest.importorskip(output)
    X = _data(m=3)
    X[4, 0] = np.nan
    frame = lib.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]})
    expected = BatchNormScaler(gamma=0.5).fit_transform(X)
    scaler = BatchNormScaler(gamma=0.5).set_output(transform=output)
    for out in (scaler.fit_transform(frame), scaler.fit(frame).transform(frame)):
        assert isinstance(out, lib.DataFrame)
        assert list(out.columns) == ["a", "b", "c"]
        assert_allclose(out.to_numpy(), expected, equal_nan=True)
    assert_allclose(scaler.inverse_transform(expected), X, rtol=1e-12, equal_nan=True)
    # The input frame is left alone, whatever copy says.
    scaler.set_params(copy=False).transform(frame)
    assert_allclose(frame.to_numpy(), X, equal_nan=True)


@pytest.mark.parametrize("momentum", MOMENTA)
def test_pickle_round_trip(momentum):
    X = _data()
    X[3, 1] = np.nan
    scaler = BatchNormScaler(
        momentum=momentum, gamma=np.arange(1.0, 7.0), beta=0.5
    ).fit(X)
    clone_ = pickle.loads(pickle.dumps(scaler))
    assert_array_equal(clone_.transform(X), scaler.transform(X))
    assert_array_equal(clone_.n_samples_seen_, scaler.n_samples_seen_)
    clone_.partial_fit(X)
    scaler.partial_fit(X)
    assert_array_equal(clone_.running_var_, scaler.running_var_)


# ---------------------------------------------------------------------------
# Threads: large inputs go through row blocks shared by an OpenMP team; the
# blocks depend on the shape only, so results do not depend on the threads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", MOMENTA)
def test_threaded_blocks_match_single_thread(dtype, momentum, monkeypatch):
    X = _data(n=9001, m=101, dtype=dtype)
    X[::97, 5] = np.nan
    w = np.random.RandomState(0).uniform(0, 2, size=X.shape[0])
    # Small blocks, so that this array is split (about 10 blocks).
    monkeypatch.setattr(_threads, "ELEMENTS_PER_BLOCK", 100_000)
    assert _threads.kernel_threads(*X.shape)[0] < 1000
    results = []
    for n_threads in (1, 4):
        with threadpool_limits(n_threads, user_api="openmp"):
            scaler = BatchNormScaler(momentum=momentum)
            Xt = scaler.fit_transform(X, sample_weight=w)
            results.append((scaler.running_mean_, scaler.running_var_, Xt))
    for a, b in zip(*results):
        assert_array_equal(a, b)
    X64 = X.astype(np.float64)
    w = w.astype(dtype).astype(np.float64)  # weights take X's dtype
    mask = ~np.isnan(X64)
    mean = np.nansum(w[:, None] * X64, axis=0) / (w[:, None] * mask).sum(axis=0)
    assert_allclose(results[1][0], mean, rtol=_stat_tol(dtype))


def test_kernel_threads_follow_the_openmp_limit(monkeypatch):
    monkeypatch.setattr(_threads, "ELEMENTS_PER_BLOCK", 1000)
    for limit in (1, 2, 3):
        with threadpool_limits(limit, user_api="openmp"):
            block_rows, n_threads = _threads.kernel_threads(4000, 50)
            # The limit itself within the usable cores, or 1 when built
            # without OpenMP.
            assert _team.openmp_max_threads() in (limit, 1)
            assert n_threads == min(_team.openmp_max_threads(), _threads.usable_cores())
        assert block_rows == 20
        # Never more threads than blocks.
        with threadpool_limits(limit, user_api="openmp"):
            assert _threads.kernel_threads(30, 50)[1] == min(2, n_threads)


def test_concurrent_transforms_from_many_threads(monkeypatch):
    # Python threads, each calling the kernels' own teams at once: every
    # result is what the call gives alone.
    monkeypatch.setattr(_threads, "ELEMENTS_PER_BLOCK", 50_000)
    rng = np.random.RandomState(0)
    arrays = [
        rng.normal(size=(n, 64)) for n in (4000, 6000, 9000, 12000, 5000, 7000, 8000)
    ]
    scaler = BatchNormScaler().fit(arrays[0])
    expected = [scaler.transform(X) for X in arrays]
    results = [None] * len(arrays)
    errors = []

    def work(k):
        try:
            for _ in range(5):
                results[k] = scaler.transform(arrays[k])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with threadpool_limits(8, user_api="openmp"):
        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(arrays))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for a, b in zip(results, expected):
        assert_array_equal(a, b)


def _threaded_fit_transform(X):
    return BatchNormScaler().fit_transform(X)


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs the fork start method",
)
def test_forked_child_works_after_the_parent_ran_a_team(monkeypatch):
    # GNU OpenMP's threads do not survive fork(): a child forked after the
    # parent ran a team works on one thread, and gets the same result.
    monkeypatch.setattr(_threads, "ELEMENTS_PER_BLOCK", 10_000)
    X = _data(n=4000, m=50)
    with threadpool_limits(2, user_api="openmp"):
        parent = _threaded_fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child = pool.apply_async(_threaded_fit_transform, (X,)).get(timeout=120)
    assert_array_equal(child, parent)


@pytest.mark.parametrize("method", ["transform", "inverse_transform", "fit_transform"])
@pytest.mark.parametrize("copy", [True, False])
def test_float32_results_beyond_range_warn_as_standard_scaler(method, copy):
    # X - mean (or a result) beyond float32's largest number is +-inf, as in
    # StandardScaler, where numpy warns of the overflow: never in silence.
    big = np.finfo(np.float32).max
    # One far row among many: X - mean passes the range where the scale is
    # a normal float32 number (the kernel's path; a subnormal scale is
    # computed in float64).
    column = np.r_[np.full(999, 0.9 * big), -0.9 * big]
    fit_X = np.column_stack([column, np.arange(1000.0)]).astype(np.float32)
    scaler = BatchNormScaler(copy=copy).fit(fit_X)
    X = {
        "transform": np.array([[-0.9 * big, 1.5], [0.86 * big, 2.5]]),
        "inverse_transform": np.array([[1e30, 0.5], [0.0, -0.5]]),
        "fit_transform": fit_X,
    }[method].astype(np.float32)
    twin = scaler.to_sklearn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's overflow warnings
        expected = getattr(twin, method.replace("fit_", ""))(X.copy())
    assert np.isinf(expected[:, 0]).any() and not np.isinf(expected).all()
    message = (
        rf"BatchNormScaler: overflow encountered in {method} of features "
        r"\[0\]: an intermediate value or the result passes float32's "
        "largest number and is \\+-inf there, as in StandardScaler; float64 "
        "data keeps them finite"
    )
    with pytest.warns(RuntimeWarning, match=message) as record:
        out = getattr(scaler, method)(X.copy())
    assert len(record) == 1
    assert out.dtype == np.float32
    assert_array_equal(np.isinf(out), np.isinf(expected))
    assert_allclose(out, expected, rtol=1e-5)
    # float64 data keeps them finite, without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = getattr(twin, method.replace("fit_", ""))(X.astype(np.float64))
        assert np.all(np.isfinite(exact))
        assert_allclose(getattr(scaler, method)(X.astype(np.float64)), exact)


@pytest.mark.parametrize("case", ["huge gamma", "tiny spread"])
def test_results_computed_in_float64_that_pass_float32_range_warn(case):
    # A scale beyond float32's range is computed in float64 and cast back:
    # the same warning, not numpy's bare "overflow encountered in cast".
    if case == "huge gamma":
        scaler = BatchNormScaler(gamma=1e39).fit(np.float32([[1], [2], [4]]))
        X = np.float32([[10], [2.3]])
    else:
        spread = np.float32([[0], [1e-40], [2e-40], [3e-40]])
        scaler = BatchNormScaler(epsilon=0.0).fit(spread)
        X = np.float32([[1.0], [2e-40]])
    expected = scaler.transform(X.astype(np.float64))
    assert np.isfinite(expected).all() and (np.abs(expected) > 3.4e38).any()
    with pytest.warns(RuntimeWarning, match="float64 data keeps them finite") as record:
        out = scaler.transform(X)
    assert len(record) == 1
    assert_array_equal(np.isinf(out), np.abs(expected) > np.finfo(np.float32).max)
    if case != "huge gamma":
        return
    # Results beyond float64's range too: no remedy offered.
    scaler.set_params(gamma=1e300)
    X = np.float32([[3e38], [2e-40]])
    with pytest.warns(
        RuntimeWarning, match=r"is \+-inf there, as in StandardScaler\.$"
    ):
        scaler.transform(X)


def _float64_reference(scaler, X):
    with np.errstate(all="ignore"):
        return (
            scaler.gamma
            * ((X.astype(np.float64) - scaler.running_mean_) / scaler._std())
            + scaler.beta
        )


def test_a_scale_that_float32_rounds_to_zero_or_subnormal_is_computed_in_float64():
    # gamma=5e-9 over a spread of 1e37: a scale of 6e-46, 0 in float32
    # (a constant output either at X=0 or at X=mean before); 1e-40, a
    # subnormal float32 number with few bits. float64 gives the reference.
    X = np.float32([[0.9e38], [1e38], [1.1e38]])
    for gamma in (5e-9, 1e-40 * 8.2e36):
        scaler = BatchNormScaler(gamma=gamma, beta=0.25).fit(X)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = scaler.transform(X)
        assert out.dtype == np.float32
        assert_allclose(out, _float64_reference(scaler, X), rtol=1e-6, atol=0)


@pytest.mark.parametrize("gamma", [1.0, 1e40])
def test_shifts_beyond_float64_range_give_inf_without_a_false_remedy(gamma):
    # A float64 fit with a mean of 1e306 used on float32 data: the center
    # is 0 there and the shift, -mean * scale, passes float64's range too.
    # No bare numpy warning, no NaN, and no "float64 data" remedy, which
    # would not help.
    scaler = BatchNormScaler(gamma=gamma).fit(np.full((3, 1), 1e306))
    X = np.float32([[1.0], [-3e38]])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = scaler.transform(X)
    assert [str(w.message)[:60] for w in record] == [
        "BatchNormScaler: overflow encountered in transform of featur"
    ]
    assert "float64 data" not in str(record[0].message)
    assert_array_equal(out, _float64_reference(scaler, X).astype(np.float32))
    assert np.all(np.isneginf(out))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("copy", [True, False])
def test_gamma_zero_maps_any_finite_value_to_beta(dtype, copy):
    # gamma=0 maps every finite value to beta, also one whose distance to
    # the mean passes the dtype's range (inf * 0 would be NaN); NaN stays.
    big = np.finfo(dtype).max
    X = np.array([[0.9 * big, 1.0], [0.9 * big, 2.0]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaler = BatchNormScaler(gamma=0.0, beta=3.0, copy=copy).fit(X)
        out = scaler.transform(
            np.array([[-0.9 * big, 5.0], [np.nan, 1.0]], dtype=dtype)
        )
    assert_array_equal(out, np.array([[3.0, 3.0], [np.nan, 3.0]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_values_whose_results_are_in_range_do_not_warn(dtype):
    # Values near the largest number, a result in range: no warning (the
    # kernel's bound flags the feature; the output decides).
    big = np.finfo(dtype).max
    X = np.array([[0.9 * big, 1.0], [0.9 * big, 2.0], [0.9 * big, 4.0]], dtype=dtype)
    scaler = BatchNormScaler(beta=0.5).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = scaler.transform(X)
        assert_array_equal(out[:, 0], 0.5)
        assert_allclose(scaler.inverse_transform(out), X, rtol=1e-6)


@pytest.mark.parametrize(
    "gamma, column",
    [
        (1e300, [0.0, 1e-40, 2e-40, 1.5e-40]),  # gamma / std: inf in float64
        (1e-300, [0.0, 2e30, 4e30, 3e30]),  # gamma / std: 0 in float64
    ],
)
def test_a_scale_beyond_float64_range_gives_the_formulas_values(gamma, column):
    # Multiplying by gamma / std gave inf, NaN (0 * inf at the mean) or beta
    # where the formula's values are finite and not beta; inverse_transform
    # gave the mean. (float64 only: in float32 these results are beyond the
    # dtype's range, which the overflow tests cover.)
    X = np.array(column)[:, None] * [1.0, -1.0]
    X = np.hstack([X, np.arange(4.0)[:, None]])
    scaler = BatchNormScaler(gamma=[gamma, gamma, 2.0], beta=[0, 0, 0.5], epsilon=0)
    scaler.fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = scaler.transform(X)
        back = scaler.inverse_transform(out)
    assert_allclose(out, _float64_reference(scaler, X), rtol=1e-14, atol=0)
    assert np.all(np.isfinite(out)) and np.all(out[:, :2] != 0)
    assert_allclose(back, X, rtol=1e-12, atol=1e-12 * np.abs(X[:, :2]).max())
    with pytest.raises(
        ValueError, match=r"cannot express features \[0, 1\]: .* scale_"
    ):
        scaler.to_sklearn()


def test_inverse_of_a_subnormal_gamma_is_finite_where_the_formula_is():
    # (X - beta) / gamma * std overflowed where the value is finite: the
    # ratio std / gamma is applied as a mantissa and powers of two.
    X = np.array([[0.0], [1e-10], [2e-10]])
    scaler = BatchNormScaler(gamma=1e-320, epsilon=0).fit(X)
    Y = np.array([[1e-5], [-3e-7], [1e-300], [0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = scaler.inverse_transform(Y)
    std, mean = Fraction(float(scaler._std()[0])), Fraction(scaler.running_mean_[0])
    expected = [float(Fraction(y) / Fraction(1e-320) * std + mean) for y in Y[:, 0]]
    assert_allclose(got[:, 0], expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "params, column",
    [
        # std / gamma = 1e-323, a subnormal scale_ of few bits
        ({"gamma": 1.5e300}, [0.0, 1.7e-23 * 1.2247, -1.7e-23 * 1.2247]),
        # mean_ = running_mean_ - beta * std / gamma: -inf
        ({"gamma": 1e-300, "beta": 1e10}, [0.0, 1.0, 2.0]),
    ],
)
def test_to_sklearn_refuses_a_twin_beyond_float64(params, column):
    scaler = BatchNormScaler(epsilon=0, **params).fit(np.array(column)[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"cannot express features \[0\]"):
            scaler.to_sklearn()


# ---------------------------------------------------------------------------
# Kernels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_cols", [5, 600])  # one column panel, and several
def test_affine_columns_kernel(dtype, n_cols):
    rng = np.random.RandomState(0)
    x = rng.normal(size=(7, n_cols)).astype(dtype)
    x[2, 3] = np.nan
    center = rng.normal(size=n_cols).astype(dtype)
    scale = rng.normal(size=n_cols).astype(dtype)
    shift = rng.normal(size=n_cols).astype(dtype)
    out = np.empty_like(x)
    assert affine_columns(x, center, scale, shift, out) is False
    assert_allclose(
        out, (x - center) * scale + shift, rtol=1e-6, atol=1e-6, equal_nan=True
    )
    assert np.isnan(out[2, 3])
    # x - center is exact near the center: no cancellation of large products.
    big = np.full((3, n_cols), 651.0, dtype=dtype)
    affine_columns(big, big[0], np.full(n_cols, 316.2, dtype=dtype), shift, big)
    assert_array_equal(big, np.broadcast_to(shift, big.shape))
    inplace = x.copy()
    affine_columns(inplace, center, scale, shift, inplace)
    assert_array_equal(inplace, out)
    # The columns whose results may pass the largest number are flagged
    # from their largest |x| and the coefficients, NaN ignored.
    may_overflow = np.full(n_cols, 7, dtype=np.uint8)
    huge = x.copy()
    huge[4, 1] = np.finfo(dtype).max / 2
    huge[5, 1] = np.nan
    scale_4 = np.where(np.arange(n_cols) == 1, 4, scale).astype(dtype)
    affine_columns(huge, center, scale_4, shift, out, may_overflow=may_overflow)
    assert_array_equal(may_overflow, np.arange(n_cols) == 1)
    ones = np.ones(n_cols, dtype=dtype)
    affine_columns(huge, 0 * ones, ones / 4, 0 * ones, out, 1, 2, may_overflow)
    assert not may_overflow.any()
    affine_columns(huge[:0], center, scale, shift, out[:0], may_overflow=may_overflow)
    assert not may_overflow.any()
    with pytest.raises(ValueError, match="may_overflow must have length"):
        affine_columns(x, center, scale, shift, out, may_overflow=may_overflow[:2])
    x[1, n_cols - 1] = -np.inf
    assert affine_columns(x, center, scale, shift, out) is True
    assert has_infinity(x) and not has_infinity(np.where(np.isinf(x), np.nan, x))
    assert affine_columns(x[:0], center, scale, shift, out[:0]) is False
    assert has_infinity(x[:0]) is False
    with pytest.raises(
        ValueError, match=f"center, scale and shift must have length {n_cols}"
    ):
        affine_columns(x, center, scale[:4], shift, out)
    with pytest.raises(
        ValueError, match=f"center, scale and shift must have length {n_cols}"
    ):
        affine_columns(x, center[:4], scale, shift, out)
    with pytest.raises(ValueError, match="out has shape"):
        affine_columns(x, center, scale, shift, out[:6])
    with pytest.raises((TypeError, ValueError)):
        affine_columns(
            x,
            center,
            scale.astype(np.float64 if dtype == np.float32 else np.float32),
            shift,
            out,
        )
    with pytest.raises((TypeError, ValueError)):
        affine_columns(np.asfortranarray(x), center, scale, shift, out)
    ro = x.copy()
    ro.setflags(write=False)
    affine_columns(ro, center, scale, shift, out)  # read-only input is fine
    with pytest.raises((TypeError, ValueError)):
        affine_columns(x, center, scale, shift, ro)  # read-only output is not


# ---------------------------------------------------------------------------
# to_sklearn: the StandardScaler twin


def _twin_tol(plain, X, out):
    """Elementwise bound on |ours - StandardScaler's| for ``transform(X)``.

    StandardScaler computes ``(X - mean_) / scale_``, whose ``mean_`` holds
    beta folded in (``running_mean - beta * scale_``): ``X - mean_`` cancels
    when ``|mean_|`` is large against ``scale_``, which costs it a few
    roundings of the larger term. ``transform`` computes ``(X - center) *
    scale + shift`` around the mean, a few roundings of the output.
    """
    eps = np.finfo(X.dtype).eps
    X = np.asarray(X, dtype=np.float64)
    return (
        4
        * eps
        * ((np.abs(X) + np.abs(plain.mean_)) / np.abs(plain.scale_) + np.abs(out))
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"epsilon": 0.0},
        {"gamma": 0.5, "beta": 1.0},
        {
            "gamma": [1.0, 2.0, -3.0, 0.5, 1.0, 4.0],
            "beta": [0.0, 1.0, 2.0, -3.0, 0.5, 0.0],
            "momentum": 0.1,
        },
    ],
)
def test_to_sklearn_transforms_as_the_scaler(dtype, params):
    X = _data(dtype=dtype)
    X[3, 1] = np.nan
    X[:, 4] = 7.0  # a constant feature
    scaler = BatchNormScaler(**params).fit(X)
    plain = scaler.to_sklearn()
    assert type(plain) is StandardScaler
    assert plain.n_features_in_ == 6
    assert_array_equal(
        plain.n_samples_seen_, scaler.n_samples_seen_
    )  # per feature (NaN)

    ours, theirs = scaler.transform(X), plain.transform(X)
    assert theirs.dtype == ours.dtype == dtype
    assert_array_equal(np.isnan(theirs), np.isnan(ours))
    diff = np.abs(theirs.astype(np.float64) - ours)
    assert np.all(np.nan_to_num(diff - _twin_tol(plain, X, ours)) <= 0)

    # inverse_transform of the same transformed data: back to X
    back_ours, back_theirs = (
        scaler.inverse_transform(ours),
        plain.inverse_transform(ours),
    )
    assert back_theirs.dtype == dtype
    assert_allclose(back_theirs, back_ours, **_tol(dtype), equal_nan=True)
    assert_allclose(
        back_theirs,
        X,
        rtol=1e-4 if dtype == np.float32 else 1e-10,
        atol=1e-4 if dtype == np.float32 else 1e-10,
        equal_nan=True,
    )


def test_to_sklearn_default_statistics_are_standard_scalers():
    # gamma=1, beta=0, epsilon=0, momentum=None: the same fitted attributes
    # as StandardScaler's own fit, constant feature included.
    X = _data()
    X[:, 2] = -1.5
    plain = BatchNormScaler(epsilon=0.0).fit(X).to_sklearn()
    reference = StandardScaler().fit(X)
    assert_allclose(plain.mean_, reference.mean_, rtol=1e-12, atol=1e-12)
    assert_allclose(plain.scale_, reference.scale_, rtol=1e-12)
    assert_allclose(plain.var_, reference.var_, rtol=1e-10, atol=1e-12)
    assert plain.n_samples_seen_ == reference.n_samples_seen_ == 200


def test_to_sklearn_reads_one_fitted_state(monkeypatch):
    # A refit (in another thread) that publishes its statistics while
    # to_sklearn runs: the twin is the scaler it started from.
    X = _data(n=50, m=3)
    scaler = BatchNormScaler().fit(X)
    expected = scaler.transform(X)
    other = BatchNormScaler().fit(X * 10 + 5)
    affine_params = BatchNormScaler._affine_params

    def refit_meanwhile(self, n_features):
        scaler.__dict__.update(other.__dict__)  # publishes as a fit does
        return affine_params(self, n_features)

    monkeypatch.setattr(BatchNormScaler, "_affine_params", refit_meanwhile)
    twin = scaler.to_sklearn()
    assert_allclose(twin.transform(X), expected, rtol=1e-12, atol=1e-12)


def test_to_sklearn_gamma_zero_raises():
    scaler = BatchNormScaler(gamma=[1.0, 0.0, 1.0, 0.0, 1.0, 1.0]).fit(_data())
    with pytest.raises(
        ValueError, match=r"gamma=0 or an infinite running_var_ \(features \[1, 3\]\)"
    ):
        scaler.to_sklearn()


def test_to_sklearn_needs_a_fitted_scaler():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        BatchNormScaler().to_sklearn()


def test_to_sklearn_keeps_feature_names_and_output_config():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(_data(m=3), columns=["a", "b", "c"])
    scaler = BatchNormScaler(gamma=2.0).set_output(transform="pandas").fit(X)
    plain = scaler.to_sklearn()
    assert list(plain.feature_names_in_) == ["a", "b", "c"]
    out = plain.transform(X)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["a", "b", "c"]
    assert_allclose(
        out.to_numpy(), scaler.transform(X).to_numpy(), rtol=1e-12, atol=1e-12
    )
    # The twin is independent of the scaler it came from.
    plain.mean_[:] = 0
    assert not np.all(scaler.running_mean_ == 0)
