"""Tests of the networks' own input handling (``input_preprocessing="auto"``).

The handled input is checked against plain-numpy references written from the
documented formulas (``handle_reference``): weighted quantiles by repeating
rows and numpy's ``"averaged_inverted_cdf"``, the robust scale, the smooth
clip, NaN with missing indicators, one-hot blocks. The network's output is
checked through ``reference.forward_from_attributes`` on that input.
"""

import contextlib
import pickle
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline

from sklearn_bn import MLPBNClassifier, MLPBNRegressor, _preprocessing

from reference import DTYPES, forward_from_attributes

CLIP = 3.0
IQR_PER_SD = 1.3489795003921634


def fit_quietly(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kwargs)


def make_numeric(n=120, seed=0, dtype=np.float64, nan_columns=(1,)):
    """Skewed, heavy-tailed, binary and constant columns; NaN in some."""
    rng = np.random.RandomState(seed)
    X = np.column_stack(
        [
            rng.normal(size=n),
            rng.lognormal(sigma=1.5, size=n),
            rng.standard_t(2, size=n) * 10 + 3,
            (rng.uniform(size=n) < 0.1).astype(float),  # IQR 0: the std
            np.full(n, 7.0),  # constant: scale 1
        ]
    )
    for j in nan_columns:
        X[rng.uniform(size=n) < 0.15, j] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.log1p(np.nan_to_num(X[:, 1])) > 0.5).astype(int)
    return X.astype(dtype), y


def quantile_reference(x, w, q):
    """numpy's averaged inverted CDF of the rows repeated ``w`` times."""
    keep = ~np.isnan(x)
    return np.quantile(np.repeat(x[keep], w[keep]), q, method="averaged_inverted_cdf")


def numeric_reference(X, w=None):
    """Centre, scale and indicator columns of the documented formulas."""
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(len(X), dtype=int) if w is None else np.asarray(w).astype(int)
    center, scale = [], []
    for x in X.T:
        q25, q50, q75 = (quantile_reference(x, w, q) for q in (0.25, 0.5, 0.75))
        rows = np.repeat(x[~np.isnan(x)], w[~np.isnan(x)])
        s = (q75 - q25) / IQR_PER_SD
        if not s > 0:
            s = rows.std()
        if rows.max() == rows.min():
            s = 1.0
        center.append(q50)
        scale.append(s)
    indicators = np.flatnonzero((np.isnan(X) & (w > 0)[:, None]).any(axis=0))
    return np.array(center), np.array(scale), indicators


def handle_reference(X, center, scale, indicators, categorical=(), categories=()):
    """The network's input: numeric, indicators, one-hot blocks (float64)."""
    X = np.asarray(X, dtype=np.float64)
    z = CLIP * np.tanh((X - center) / (scale * CLIP))
    z[np.isnan(z)] = 0
    blocks = [z, np.isnan(X[:, indicators]).astype(float)]
    for values, cats in zip(categorical, categories):
        blocks.append(
            np.array([[_same(v, c) for c in cats] for v in values], dtype=float)
        )
    return np.hstack(blocks)


def _same(v, c):
    missing_v = v is None or (isinstance(v, float) and np.isnan(v))
    missing_c = isinstance(c, float) and np.isnan(c)
    return missing_v and missing_c or (not missing_v and not missing_c and v == c)


def output(est, X):
    return est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X)


# ---------------------------------------------------------------------------
# The formulas


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_numeric_handling_is_the_documented_formula(dtype, weighted):
    X, y = make_numeric(dtype=dtype)
    w = np.random.RandomState(1).randint(0, 4, len(X)) if weighted else None
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0),
        X,
        y,
        sample_weight=w,
    )
    center, scale, indicators = numeric_reference(X, w)
    assert_allclose(est.input_center_, center, rtol=1e-12)
    assert_allclose(
        est.input_scale_, scale, rtol=1e-6 if dtype == np.float32 else 1e-12
    )
    assert_array_equal(est.input_missing_indicators_, indicators)
    assert est.input_clip_ == CLIP
    assert not est.is_categorical_.any()
    assert est.n_features_in_ == X.shape[1]
    assert est.coefs_[0].shape[0] == X.shape[1] + len(indicators)
    assert est.coefs_[0].dtype == dtype

    X_test, _ = make_numeric(n=50, seed=2, dtype=dtype, nan_columns=(0, 1, 2))
    X_test[:3, 2] = [1e6, -1e6, 0.0]  # far beyond the training range
    handled = handle_reference(X_test, est.input_center_, est.input_scale_, indicators)
    assert np.abs(handled[:, : X.shape[1]]).max() <= CLIP
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    assert_allclose(
        est.predict_proba(X_test)[:, 1:],
        forward_from_attributes(est, handled),
        rtol=rtol,
        atol=rtol,
    )


def test_weighted_quantiles_are_the_averaged_inverted_cdf_of_repeated_rows():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(37, 6))
    X[:, 2] = rng.randint(0, 3, 37)  # ties
    X[rng.uniform(size=X.shape) < 0.1] = np.nan
    w = rng.randint(0, 5, 37)
    qs = [0.0, 0.0001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.9999, 1.0]
    got, totals = _preprocessing.weighted_quantiles(X, w.astype(float), qs)
    for j in range(X.shape[1]):
        for k, q in enumerate(qs):
            # numpy averages the two sides with a lerp: a rounding apart.
            assert_allclose(got[k, j], quantile_reference(X[:, j], w, q), rtol=1e-15)
        assert totals[j] == w[~np.isnan(X[:, j])].sum()
    unweighted, _ = _preprocessing.weighted_quantiles(X, None, qs)
    for j in range(X.shape[1]):
        x = X[~np.isnan(X[:, j]), j]
        assert_allclose(
            unweighted[:, j],
            np.quantile(x, qs, method="averaged_inverted_cdf"),
            rtol=1e-15,
        )


def test_knot_levels_are_exact_fractions_of_the_total_weight():
    # 5/7 of 700 rows is 500: the knot is the mean of the 500th and 501st
    # values, which the float 5/7 (a little below) times 700 misses.
    x = np.arange(700.0)
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(2,), max_iter=1),
        x[:, None],
        np.arange(700) % 2,
    )
    center, scale = est.input_center_[0], est.input_scale_[0]
    levels = np.arange(8) / 7
    expected = np.quantile(x, levels, method="averaged_inverted_cdf")
    assert_array_equal(expected[1:-1], [99.5, 199.5, 299.5, 399.5, 499.5, 599.5])
    assert_allclose(
        est.input_spline_knots_[0],
        np.tanh((expected - center) / (scale * est.input_clip_)),
        rtol=1e-15,
    )


def test_knots_of_weights_summing_near_the_float64_range():
    # q W as num * W / den: W scaled by a power of two first, so that
    # num * W does not overflow for totals the weights' check accepts.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 1))
    y = (X[:, 0] > 0).astype(int)
    params = dict(hidden_layer_sizes=(2,), max_iter=1, random_state=0)
    plain = fit_quietly(MLPBNClassifier(**params), X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        heavy = fit_quietly(
            # 2**1012 (about 4.4e304): a total of 4.4e307, exactly 1000
            # weights' worth, so the quantiles are those of equal weights.
            MLPBNClassifier(**params),
            X,
            y,
            sample_weight=np.full(1000, 2.0**1012),
        )
    assert_array_equal(heavy.input_spline_knots_, plain.input_spline_knots_)


@pytest.mark.parametrize("magnitude", [1e-300, 2e-170, 1e200, 1e300])
def test_the_std_fallback_holds_at_any_magnitude(magnitude):
    # A zero interquartile range falls back on the standard deviation, whose
    # squares would overflow or vanish at such magnitudes.
    x = np.array([0.0, 0.0, 0.0, magnitude, -magnitude])
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(2,), max_iter=1),
        x[:, None],
        np.array([0, 1, 0, 1, 0]),
    )
    std = magnitude * np.sqrt(np.mean((x / magnitude) ** 2))
    assert_allclose(est.input_scale_[0], std, rtol=1e-12)


def test_knots_beyond_the_range_are_learned_without_warnings():
    # A tiny scale and huge values: their knots are +-1, with no overflow
    # warning from the division.
    x = np.r_[np.linspace(-1e-10, 1e-10, 598), 1e300, -1e300]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        est = fit_quietly(
            MLPBNClassifier(hidden_layer_sizes=(2,), max_iter=1),
            x[:, None],
            np.arange(600) % 2,
        )
    assert est.input_spline_knots_[0][0] == -1 and est.input_spline_knots_[0][-1] == 1


@pytest.mark.parametrize("Est", [MLPBNClassifier, MLPBNRegressor])
def test_integer_weights_learn_what_repeated_rows_learn(Est):
    pd = pytest.importorskip("pandas")
    X, y = make_numeric(n=90)
    rng = np.random.RandomState(3)
    w = rng.randint(0, 4, len(X))
    X[w == 0, 3] = np.nan  # NaN in rows of weight 0 only: no indicator
    cats = rng.choice(["a", "b", "c", "rare"], len(X))
    cats[w == 0] = "absent"  # a category of weight 0 only: not learned
    frame = pd.DataFrame(X, columns=list("pqrst")).assign(k=pd.Categorical(cats))
    target = y if Est is MLPBNClassifier else X[:, 0] * 0
    est = Est(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    weighted = fit_quietly(clone(est), frame, target, sample_weight=w)
    repeated = fit_quietly(
        clone(est), frame.iloc[np.repeat(np.arange(len(X)), w)], np.repeat(target, w)
    )
    for name in _preprocessing.ATTRIBUTES:
        a, b = getattr(weighted, name), getattr(repeated, name)
        if name == "input_categories_":
            assert [list(c) for c in a] == [list(c) for c in b]
        else:
            assert_array_equal(a, b)
    assert 3 not in weighted.input_missing_indicators_
    assert "absent" not in weighted.input_categories_[0]


# ---------------------------------------------------------------------------
# Bounds, NaN at predict


@pytest.mark.parametrize("Est", [MLPBNClassifier, MLPBNRegressor])
def test_far_rows_move_a_prediction_as_much_as_the_edge_of_the_range(Est):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(300, 4))
    y = X[:, 0] + np.abs(X[:, 1])
    if Est is MLPBNClassifier:
        y = (y > 1).astype(int)
    est = fit_quietly(Est(hidden_layer_sizes=(16,), max_iter=30, random_state=0), X, y)
    base = np.zeros((1, 4))
    spread = np.ptp(output(est, X), axis=0).max()
    for j in range(4):
        edge, far = base.copy(), base.copy()
        edge[0, j] = X[:, j].max()
        far[0, j] = est.input_center_[j] + 40 * est.input_scale_[j]
        farther = far.copy()
        farther[0, j] = 1e12
        out_edge, out_far, out_farther = (output(est, r) for r in (edge, far, farther))
        # Beyond the edge of the training range, a feature barely moves the
        # prediction any more: at most a fifth of its spread over the rows.
        assert np.abs(out_far - out_edge).max() <= 0.2 * spread
        assert_allclose(out_farther, out_far, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype, spread", [(np.float32, 2e38), (np.float64, 1.5e308)])
def test_a_feature_spread_near_the_dtypes_range_still_counts(dtype, spread):
    # scale * clip beyond the dtype's range made the divisor inf and the
    # feature 0: the model predicted a constant.
    rng = np.random.RandomState(0)
    u = rng.uniform(-1, 1, 200)
    X = (u * spread).astype(dtype)[:, None]
    y = (u > 0).astype(int)
    with np.errstate(over="ignore"):  # numpy's own sums of squares overflow
        est = fit_quietly(
            MLPBNClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0),
            X,
            y,
        )
        twin = est.to_sklearn()
    assert np.isfinite(est.input_scale_[0] * est.input_clip_)
    assert np.isfinite(dtype(est.input_scale_[0] * est.input_clip_))
    assert est.score(X, y) > 0.95
    assert_allclose(twin.predict_proba(X), est.predict_proba(X), atol=1e-6)


def test_the_robust_scale_of_large_valued_features_is_exact():
    # Identifiers or timestamps: a large offset, a small spread. The scale
    # is the difference of the quartiles over 1.349..., not a difference of
    # two large quotients (which lost up to 1% at 1e15).
    rng = np.random.RandomState(0)
    for offset in (1e12, 1e15):
        X = offset + rng.randint(0, 5, size=(300, 1)).astype(float)
        y = rng.normal(size=300)
        est = fit_quietly(MLPBNRegressor(hidden_layer_sizes=(4,), max_iter=1), X, y)
        q25, q75 = np.quantile(X[:, 0], [0.25, 0.75], method="averaged_inverted_cdf")
        assert est.input_scale_[0] == (q75 - q25) / _preprocessing._IQR_PER_SD


def test_nan_at_predict_in_a_clean_column_is_the_centre():
    X, y = make_numeric(nan_columns=())
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0), X, y
    )
    assert len(est.input_missing_indicators_) == 0
    X_nan, X_center = X[:10].copy(), X[:10].copy()
    X_nan[:, 2] = np.nan
    X_center[:, 2] = est.input_center_[2]
    assert_array_equal(est.predict_proba(X_nan), est.predict_proba(X_center))


def test_inf_is_still_rejected_with_scikit_learns_error():
    X, y = make_numeric()
    X_inf = X.copy()
    X_inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        MLPBNClassifier().fit(X_inf, y)
    est = fit_quietly(MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=2), X, y)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        est.predict(X_inf)


def test_input_preprocessing_none_is_the_network_alone():
    X, y = make_numeric(nan_columns=())
    params = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    plain = fit_quietly(MLPBNClassifier(input_preprocessing=None, **params), X, y)
    assert not hasattr(plain, "input_center_")
    assert plain.coefs_[0].shape[0] == X.shape[1]
    assert_allclose(
        plain.predict_proba(X)[:, 1:],
        forward_from_attributes(plain, X),
        rtol=1e-10,
        atol=1e-12,
    )
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLPBNClassifier(input_preprocessing=None).fit(X_nan, y)
    with pytest.raises(ValueError, match="NaN"):
        plain.predict(X_nan)
    assert MLPBNClassifier().__sklearn_tags__().input_tags.allow_nan
    assert (
        not MLPBNClassifier(input_preprocessing=None)
        .__sklearn_tags__()
        .input_tags.allow_nan
    )
    assert MLPBNRegressor().__sklearn_tags__().input_tags.allow_nan


# ---------------------------------------------------------------------------
# The piecewise-linear encoding of numeric features


def make_long(n=3600, seed=0, dtype=np.float64):
    """Two curved numeric features and a binary one, with rows enough per
    numeric feature for the encoding (``_SPLINE_ROWS_PER_FEATURE``)."""
    rng = np.random.RandomState(seed)
    X = np.column_stack(
        [
            rng.normal(size=n),
            rng.lognormal(sigma=1.0, size=n),
            (rng.uniform(size=n) < 0.3).astype(float),  # few values: no encoding
        ]
    )
    X[rng.uniform(size=n) < 0.1, 1] = np.nan
    y = (np.sin(2 * X[:, 0]) + np.nan_to_num(X[:, 1]) > 1).astype(int)
    return X.astype(dtype), y


def spline_reference(u, knots):
    """Hats of a feature at ``knots`` (1 at their knot, 0 at the next ones),
    the first held at 1 below the first knot, the last one dropped: written
    from the definition, point by point."""
    out = np.zeros((len(u), len(knots) - 1))
    for k in range(len(knots) - 1):
        for i, v in enumerate(u):
            if k == 0 and v <= knots[0]:
                out[i, k] = 1.0
            elif k > 0 and knots[k - 1] <= v <= knots[k]:
                out[i, k] = (v - knots[k - 1]) / (knots[k] - knots[k - 1])
            elif knots[k] <= v <= knots[k + 1]:
                out[i, k] = (knots[k + 1] - v) / (knots[k + 1] - knots[k])
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_spline_encoding_is_the_documented_formula(dtype, weighted):
    X, y = make_long(dtype=dtype)
    w = np.random.RandomState(1).randint(0, 3, len(X)) if weighted else None
    n_knots = _preprocessing._SPLINE_KNOTS
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0),
        X,
        y,
        sample_weight=w,
    )
    center, scale, indicators = numeric_reference(X, w)
    assert_array_equal(est.input_spline_features_, [0, 1])
    w_int = np.ones(len(X), dtype=int) if w is None else w
    levels = np.arange(n_knots) / (n_knots - 1)  # 0, 1/7, ..., 1
    for row, j in enumerate(est.input_spline_features_):
        quantiles = quantile_reference(X[:, j].astype(np.float64), w_int, levels)
        expected = np.tanh((quantiles - center[j]) / (scale[j] * CLIP))
        assert_allclose(est.input_spline_knots_[row], expected, rtol=1e-10)

    X_test, _ = make_long(n=60, seed=2, dtype=dtype)
    X_test[:3, 0] = [1e6, -1e6, np.nan]
    handled = handle_reference(X_test, center, scale, indicators)
    u = np.nan_to_num(np.tanh((X_test.astype(np.float64) - center) / (scale * CLIP)))
    hats = [
        spline_reference(u[:, j], knots)
        for j, knots in zip(est.input_spline_features_, est.input_spline_knots_)
    ]
    handled = np.hstack([handled, *hats])
    assert est.coefs_[0].shape[0] == handled.shape[1] == 3 + 1 + 2 * (n_knots - 1)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert_allclose(est._validate_X_predict(X_test), handled, rtol=tol, atol=tol)
    assert_allclose(
        est.predict_proba(X_test)[:, 1:],
        forward_from_attributes(est, handled),
        rtol=tol,
        atol=tol,
    )


def test_spline_encoding_is_scikit_learns_spline_transformer():
    from sklearn.preprocessing import SplineTransformer

    X, y = make_long()
    est = fit_quietly(
        MLPBNRegressor(hidden_layer_sizes=(8,), max_iter=2, random_state=0), X, y
    )
    cols = est.input_spline_features_
    u = np.tanh((X - est.input_center_) / (est.input_scale_ * CLIP))[:, cols]
    spline = SplineTransformer(
        degree=1,
        knots=est.input_spline_knots_.T,
        extrapolation="constant",
        include_bias=False,
    ).fit(np.nan_to_num(u))
    expected = spline.transform(np.nan_to_num(u))
    handled = est._validate_X_predict(X)
    assert_allclose(handled[:, -expected.shape[1] :], expected, rtol=1e-12, atol=1e-12)


def test_a_model_fitted_before_the_encoding_still_predicts():
    X, y = make_numeric()
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0), X, y
    )
    expected = est.predict_proba(X)
    old = pickle.loads(pickle.dumps(est))
    del old.input_spline_features_, old.input_spline_knots_
    assert_array_equal(old.predict_proba(X), expected)
    assert_allclose(old.to_sklearn().predict_proba(X), expected, rtol=1e-6)


def test_spline_encoding_needs_rows_per_numeric_feature():
    X, y = make_long()
    params = dict(hidden_layer_sizes=(4,), max_iter=1, random_state=0)
    rows = _preprocessing._SPLINE_ROWS_PER_FEATURE
    assert len(X) >= rows * X.shape[1]
    few = int(rows * X.shape[1]) - 1
    assert few < len(X)
    est = fit_quietly(MLPBNClassifier(**params), X[:few], y[:few])
    assert est.input_spline_features_.shape == (0,)
    assert est.input_spline_knots_.shape == (0, _preprocessing._SPLINE_KNOTS)
    assert est.coefs_[0].shape[0] == X.shape[1] + 1
    # Weights are repeat counts: the rows' total weight is what counts.
    w = np.ones(few)
    w[0] = 2
    est = fit_quietly(MLPBNClassifier(**params), X[:few], y[:few], sample_weight=w)
    assert_array_equal(est.input_spline_features_, [0, 1])
    # Not beyond _SPLINE_MAX_FEATURES numeric features, whatever the rows.
    d = _preprocessing._SPLINE_MAX_FEATURES + 1
    wide = np.random.RandomState(0).normal(size=(rows * d, d))
    est = fit_quietly(MLPBNClassifier(**params), wide, wide[:, 0] > 0)
    assert est.input_spline_features_.shape == (0,)
    assert est.coefs_[0].shape[0] == d
    narrow = wide[:, : d - 1]
    est = fit_quietly(MLPBNClassifier(**params), narrow, wide[:, 0] > 0)
    assert_array_equal(est.input_spline_features_, np.arange(d - 1))


# ---------------------------------------------------------------------------
# Input types


def test_object_arrays_of_numbers_are_numeric():
    X, y = make_numeric()
    params = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    a = fit_quietly(MLPBNClassifier(**params), X, y)
    b = fit_quietly(MLPBNClassifier(**params), X.astype(object), y)
    assert_array_equal(a.coefs_[0], b.coefs_[0])
    assert_array_equal(a.predict_proba(X), b.predict_proba(X.astype(object)))


def test_pandas_na_in_an_object_array_is_missing():
    # As None and NaN are, and as pd.NA is in a frame or beside a
    # categorical column: float() refuses it, the columns' reader does not.
    pd = pytest.importorskip("pandas")
    X, y = make_numeric()
    params = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with_na, with_nan = X.astype(object), X.copy()
    with_na[::5, 1], with_nan[::5, 1] = pd.NA, np.nan
    a = fit_quietly(MLPBNClassifier(**params), with_na, y)
    b = fit_quietly(MLPBNClassifier(**params), with_nan, y)
    assert_array_equal(a.input_missing_indicators_, b.input_missing_indicators_)
    assert_array_equal(a.coefs_[0], b.coefs_[0])
    assert_array_equal(a.predict_proba(with_na), b.predict_proba(with_nan))
    # Other objects float() refuses keep scikit-learn's TypeError.
    with_dict = X.astype(object)
    with_dict[0, 0] = {"foo": "bar"}
    with pytest.raises(TypeError, match="argument must be a string.* number"):
        MLPBNClassifier(**params).fit(with_dict, y)


@pytest.mark.parametrize("dtype", ["datetime64[s]", "timedelta64[ms]"])
def test_numpy_dates_and_durations_are_refused_as_in_frames(dtype):
    # scikit-learn's validation reads them as numbers; a frame's date column
    # is refused with the same advice.
    X = np.arange(40).reshape(20, 2).astype(dtype)
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=re.escape(f"dtype {dtype}, which")):
        MLPBNClassifier(max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="pass a DataFrame"):
        MLPBNClassifier(max_iter=2, categorical_features=[0]).fit(X, y)
    est = fit_quietly(MLPBNClassifier(max_iter=2), X.astype(np.float64), y)
    with pytest.raises(ValueError, match="convert it to numbers"):
        est.predict(X)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_input_stays_sparse_and_trains_as_today(fmt):
    rng = np.random.RandomState(0)
    X = sp.random(150, 8, density=0.3, format=fmt, random_state=0)
    y = (X @ rng.normal(size=8) > 0).astype(int)
    params = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    auto = fit_quietly(MLPBNClassifier(**params), X, y)
    plain = fit_quietly(MLPBNClassifier(input_preprocessing=None, **params), X, y)
    assert auto.input_clip_ == np.inf
    assert sp.issparse(auto._validate_X_predict(X))
    for a, b in zip(auto.coefs_, plain.coefs_):
        assert_array_equal(a, b)
    # Explicit NaN: 0 (the implicit value), with an indicator.
    X_nan = X.tocsr(copy=True)
    X_nan.data[::7] = np.nan
    est = fit_quietly(MLPBNClassifier(**params), X_nan, y)
    nan_cols = np.unique(X_nan.tocoo().col[np.isnan(X_nan.tocoo().data)])
    assert_array_equal(est.input_missing_indicators_, nan_cols)
    handled = est._validate_X_predict(X_nan)
    assert sp.issparse(handled)
    expected = np.hstack(
        [np.nan_to_num(X_nan.toarray()), np.isnan(X_nan.toarray())[:, nan_cols]]
    )
    assert_array_equal(handled.toarray(), expected)


def test_sparse_cells_stored_twice_read_as_their_sum():
    # A non-canonical matrix: row 0 stores column 0 twice (NaN + NaN), row 3
    # stores it as NaN + 1. The model read the entries one by one.
    data = np.array([np.nan, np.nan, 1.0, 2.0, 3.0, 4.0, np.nan, 1.0])
    indices = np.array([0, 0, 1, 0, 1, 1, 0, 0])
    indptr = np.array([0, 3, 5, 6, 8])
    doubled = sp.csr_matrix((data, indices, indptr), shape=(4, 2))
    canonical = doubled.copy()
    canonical.sum_duplicates()
    y = [0, 1, 0, 1]
    est = MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0)
    a = fit_quietly(clone(est), canonical, y)
    b = fit_quietly(clone(est), doubled, y)
    assert_array_equal(a.coefs_[0], b.coefs_[0])
    assert_array_equal(a.predict_proba(doubled), a.predict_proba(canonical))
    assert doubled.nnz == 8  # the caller's matrix is left as it was


@pytest.mark.parametrize("dtype", DTYPES)
def test_frames_of_pandas_sparse_columns(dtype):
    """A frame of sparse columns only is a sparse matrix with column names, as
    for scikit-learn's estimators; a frame mixing them with dense or category
    columns is read column by column, like its dense twin."""
    pd = pytest.importorskip("pandas")
    X = sp.random(150, 6, density=0.3, format="csr", random_state=0, dtype=dtype)
    y = (X @ np.arange(6.0) > 1).astype(int)
    names = [f"f{i}" for i in range(6)]
    sparse_frame = pd.DataFrame.sparse.from_spmatrix(X, columns=names)
    dense_frame = sparse_frame.sparse.to_dense()
    params = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)

    from_frame = fit_quietly(MLPBNClassifier(**params), sparse_frame, y)
    from_matrix = fit_quietly(MLPBNClassifier(**params), X, y)
    assert_array_equal(from_frame.feature_names_in_, names)
    assert from_frame.input_clip_ == np.inf
    assert from_frame.coefs_[0].dtype == dtype
    assert_array_equal(from_frame.coefs_[0], from_matrix.coefs_[0])
    assert_array_equal(from_frame.predict(dense_frame), from_matrix.predict(X))

    dense = fit_quietly(MLPBNClassifier(**params), dense_frame, y)
    assert_array_equal(
        dense.predict_proba(sparse_frame), dense.predict_proba(dense_frame)
    )
    mixed = sparse_frame.copy()
    mixed["f0"] = mixed["f0"].sparse.to_dense()
    from_mixed = fit_quietly(MLPBNClassifier(**params), mixed, y)
    assert from_mixed.coefs_[0].dtype == dtype
    assert_array_equal(from_mixed.coefs_[0], dense.coefs_[0])

    mixed["c"] = pd.Categorical(np.arange(150) % 3)
    with_category = fit_quietly(MLPBNClassifier(**params), mixed, y)
    assert with_category.is_categorical_.tolist() == [False] * 6 + [True]
    assert with_category.predict(mixed).shape == (150,)

    # Sparse columns that leave out NaN, not 0, hold NaN: read as values.
    with_nan = dense_frame.mask(dense_frame == 0)
    nan_filled = with_nan.astype(pd.SparseDtype(dtype, np.nan))
    a = fit_quietly(MLPBNClassifier(**params), with_nan, y)
    b = fit_quietly(MLPBNClassifier(**params), nan_filled, y)
    assert_array_equal(a.input_missing_indicators_, np.arange(6))
    assert_array_equal(a.coefs_[0], b.coefs_[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_are_kept(dtype):
    pd = pytest.importorskip("pandas")
    X, y = make_numeric(dtype=dtype)
    est = fit_quietly(MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=2), X, y)
    assert est.coefs_[0].dtype == dtype
    assert est._validate_X_predict(X).dtype == dtype
    frame = pd.DataFrame(X, columns=list("abcde"))
    est = fit_quietly(MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=2), frame, y)
    assert est.coefs_[0].dtype == dtype  # every numeric column float32: float32
    mixed = frame.assign(f=np.arange(len(X)))  # an int column: float64
    est = fit_quietly(MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=2), mixed, y)
    assert est.coefs_[0].dtype == np.float64


def _frame_with_categories(pd, n=200, seed=0, order=None):
    rng = np.random.RandomState(seed)
    values = rng.choice(["red", "green", "blue", None], n, p=[0.4, 0.3, 0.2, 0.1])
    categories = order or ["red", "green", "blue"]
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "color": pd.Categorical(values, categories=categories),
            "size": pd.Categorical(rng.choice([1, 2, 3], n)),  # numbers as categories
            "z": rng.lognormal(size=n),
        }
    )
    frame.loc[rng.uniform(size=n) < 0.1, "z"] = np.nan
    y = ((frame["x"] > 0) & (frame["color"] != "blue")).astype(int).to_numpy()
    return frame, y


def test_pandas_frame_with_categories_and_nan():
    pd = pytest.importorskip("pandas")
    frame, y = _frame_with_categories(pd)
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(16,), max_iter=50, random_state=0), frame, y
    )
    assert est.n_features_in_ == 4
    assert_array_equal(est.feature_names_in_, ["x", "color", "size", "z"])
    assert_array_equal(
        est.is_categorical_,
        [False, True, False, False] | np.array([False, False, True, False]),
    )
    assert list(est.input_categories_[0][:3]) == ["blue", "green", "red"]
    assert np.isnan(est.input_categories_[0][3])  # NaN, a category of its own
    assert_array_equal(est.input_categories_[1], [1.0, 2.0, 3.0])
    assert_array_equal(est.input_missing_indicators_, [3])
    assert est.coefs_[0].shape[0] == 2 + 1 + 4 + 3
    assert est.score(frame, y) > 0.8
    # The reference of the handled input, and the network on it.
    numeric = frame[["x", "z"]].to_numpy()
    center, scale, _ = numeric_reference(numeric)
    assert_allclose(est.input_center_, center)
    handled = handle_reference(
        numeric,
        center,
        scale,
        [1],
        categorical=[
            frame["color"].astype(object).tolist(),
            frame["size"].astype(float),
        ],
        categories=[list(c) for c in est.input_categories_],
    )
    assert_allclose(
        est.predict_proba(frame)[:, 1:],
        forward_from_attributes(est, handled),
        rtol=1e-10,
        atol=1e-12,
    )


def test_categories_are_matched_by_value_not_by_code():
    pd = pytest.importorskip("pandas")
    frame, y = _frame_with_categories(pd)
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=10, random_state=0), frame, y
    )
    reordered, _ = _frame_with_categories(pd, order=["blue", "red", "green", "purple"])
    assert_array_equal(est.predict_proba(reordered), est.predict_proba(frame))
    # Fitted on the other order: the same model.
    other = fit_quietly(clone(est), reordered, y)
    for a, b in zip(est.coefs_, other.coefs_):
        assert_array_equal(a, b)
    as_strings = frame.assign(color=frame["color"].astype(object))
    assert_array_equal(est.predict_proba(as_strings), est.predict_proba(frame))


def test_unseen_categories_are_all_zeros():
    pd = pytest.importorskip("pandas")
    frame, y = _frame_with_categories(pd)
    frame["color"] = frame["color"].cat.add_categories(["purple"])
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=10, random_state=0),
        frame.dropna(subset=["color"]),
        y[frame["color"].notna().to_numpy()],
    )
    assert len(est.input_categories_[0]) == 3  # no NaN, no purple: not seen
    test = frame.iloc[:5].copy()
    test["color"] = pd.Categorical(["purple", None, "red", "mauve", "blue"])
    handled = est._validate_X_predict(test)
    block = handled[:, 3:6]
    assert_array_equal(block, [[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    est.predict(test)


def test_categories_beyond_the_cap_are_all_zeros(monkeypatch):
    pd = pytest.importorskip("pandas")
    monkeypatch.setattr(_preprocessing, "_MAX_CATEGORIES", 3)
    rng = np.random.RandomState(0)
    values = np.repeat(["a", "b", "c", "d", "e"], [40, 30, 20, 10, 5])
    frame = pd.DataFrame(
        {"k": pd.Categorical(values), "x": rng.normal(size=len(values))}
    )
    w = np.ones(len(values))
    w[values == "e"] = 20  # the heaviest by weight
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=2),
        frame,
        np.arange(len(values)) % 2,
        sample_weight=w,
    )
    assert list(est.input_categories_[0]) == ["a", "b", "e"]


def test_polars_frame_predicts_as_pandas():
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    frame, y = _frame_with_categories(pd)
    frame = frame.drop(columns="size")
    as_polars = pl.DataFrame(
        {
            "x": frame["x"].to_numpy(),
            "color": pl.Series(
                [None if v is np.nan else v for v in frame["color"].astype(object)],
                dtype=pl.Categorical,
            ),
            "z": frame["z"].to_numpy(),
        }
    )
    params = dict(hidden_layer_sizes=(8,), max_iter=10, random_state=0)
    a = fit_quietly(MLPBNClassifier(**params), frame, y)
    b = fit_quietly(MLPBNClassifier(**params), as_polars, y)
    assert_array_equal(b.is_categorical_, [False, True, False])
    for c1, c2 in zip(a.coefs_, b.coefs_):
        assert_array_equal(c1, c2)
    assert_array_equal(a.predict_proba(frame), b.predict_proba(as_polars))
    enum = as_polars.with_columns(
        pl.col("color").cast(pl.String).cast(pl.Enum(["red", "green", "blue"]))
    )
    assert_array_equal(b.predict_proba(enum), b.predict_proba(as_polars))


def test_categorical_features_by_index_name_and_mask():
    pd = pytest.importorskip("pandas")
    frame, y = _frame_with_categories(pd)
    strings = frame.assign(
        color=frame["color"].astype(object), size=frame["size"].astype(int)
    )
    params = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    ref = fit_quietly(MLPBNClassifier(**params), frame, y)
    for spec in (["color", "size"], [1, 2], [False, True, True, False]):
        est = fit_quietly(
            MLPBNClassifier(categorical_features=spec, **params), strings, y
        )
        assert_array_equal(est.is_categorical_, ref.is_categorical_)
        assert_array_equal(est.predict_proba(strings), ref.predict_proba(frame))
    # On a numpy array: indices, numbers or strings as categories.
    array = strings.to_numpy(dtype=object)
    est = fit_quietly(MLPBNClassifier(categorical_features=[1, 2], **params), array, y)
    assert_array_equal(est.predict_proba(array), ref.predict_proba(frame))
    with pytest.raises(ValueError, match="no feature names"):
        MLPBNClassifier(categorical_features=["color"]).fit(array, y)
    with pytest.raises(ValueError, match="out of range"):
        MLPBNClassifier(categorical_features=[7]).fit(frame, y)
    with pytest.raises(ValueError, match="not columns of X"):
        MLPBNClassifier(categorical_features=["colour"]).fit(frame, y)


@pytest.mark.parametrize("mask", [[False], [False] * 5, [[False] * 3]])
def test_a_mask_naming_no_column_is_still_checked(mask):
    # HistGradientBoosting's rule: a boolean mask has one entry per feature,
    # also when it marks none (on an array as on a frame).
    X, y = np.random.RandomState(0).normal(size=(40, 3)), np.arange(40) % 2
    with pytest.raises(ValueError, match="must have shape|1-dimensional"):
        MLPBNClassifier(categorical_features=mask).fit(X, y)
    est = fit_quietly(
        MLPBNClassifier(categorical_features=[False] * 3, max_iter=2), X, y
    )
    assert not est.is_categorical_.any()


def test_string_columns_not_marked_say_how_to_mark_them():
    pd = pytest.importorskip("pandas")
    frame, y = _frame_with_categories(pd)
    strings = frame.assign(color=frame["color"].astype(str))
    with pytest.raises(
        ValueError, match=r"'color'.*astype\(\"category\"\).*categorical_features"
    ) as error:
        MLPBNClassifier().fit(strings, y)
    assert type(error.value) is ValueError  # no private class in the traceback
    with pytest.raises(ValueError, match="input_preprocessing='auto'"):
        MLPBNClassifier(input_preprocessing=None, categorical_features=["color"]).fit(
            frame, y
        )
    # The default "from_dtype" is fine with None on numeric input.
    fit_quietly(MLPBNClassifier(input_preprocessing=None, max_iter=2), frame[["x"]], y)


def test_a_numeric_column_that_arrives_as_strings_says_so():
    # The fitted model's columns are fixed: the message of a new fit (mark
    # them as categorical) cannot help.
    pd = pytest.importorskip("pandas")
    frame, y = _frame_with_categories(pd)
    est = fit_quietly(MLPBNClassifier(max_iter=2, random_state=0), frame, y)
    for changed in (
        frame.assign(x=frame["x"].astype(str) + "!"),
        frame.assign(x=pd.Categorical(np.where(frame["x"] > 0, "a", "b"))),
    ):
        with pytest.raises(ValueError, match="'x' held numbers when the model was"):
            est.predict(changed)
    est.set_params(warm_start=True)
    for changed in (
        frame.assign(x=frame["x"].astype(str) + "!"),
        frame.assign(x=pd.Categorical(np.where(frame["x"] > 0, "a", "b"))),
    ):
        with pytest.raises(ValueError, match="'x' held numbers when the model was"):
            est.fit(changed, y)
    # A categorical column whose chunk comes as strings (read from a CSV)
    # trains as the fitted mask reads it, as predict does.
    est.fit(frame.assign(color=frame["color"].astype(object)), y)


def test_huge_spreads_warn_nothing_from_the_handling():
    X = np.random.RandomState(0).choice([-1.7e308, 0.0, 1.7e308], (200, 1))
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_quietly(MLPBNClassifier(max_iter=3, random_state=0), X, y)
    assert not [w for w in caught if "_preprocessing" in w.filename]


# ---------------------------------------------------------------------------
# Fitted once, then kept


def test_warm_start_and_partial_fit_keep_the_handling():
    X, y = make_numeric()
    shifted = X * 3 + 10
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0), X, y
    )
    learned = {name: getattr(est, name) for name in _preprocessing.ATTRIBUTES}
    fit_quietly(est.set_params(warm_start=True), shifted, y)
    for name, value in learned.items():
        assert getattr(est, name) is value
    fit_quietly(est.set_params(warm_start=False), shifted, y)  # a new fit learns again
    assert not np.array_equal(est.input_center_, learned["input_center_"])

    stream = MLPBNClassifier(hidden_layer_sizes=(8,), random_state=0)
    stream.partial_fit(X[:60], y[:60], classes=[0, 1])
    first = stream.input_center_
    assert_allclose(first, numeric_reference(X[:60])[0])
    stream.partial_fit(shifted[60:], y[60:])
    assert stream.input_center_ is first

    with pytest.raises(ValueError, match="input_preprocessing"):
        est.set_params(warm_start=True, input_preprocessing=None).fit(X, y)
    assert est.input_center_ is not None


@pytest.mark.parametrize("continue_with", ["warm_start", "partial_fit"])
def test_a_continued_fit_refuses_other_categorical_features(continue_with):
    # categorical_features changed after the first fit was silently ignored.
    pd = pytest.importorskip("pandas")
    frame, y = _frame_with_categories(pd)
    est = MLPBNClassifier(max_iter=2, random_state=0)
    if continue_with == "warm_start":
        fit_quietly(est.set_params(warm_start=True), frame, y)
        call = est.fit
    else:
        est.partial_fit(frame, y, classes=np.unique(y))
        call = est.partial_fit
    names = list(frame.columns[est.is_categorical_])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        call(frame, y)  # the same columns, by name: fine
        est.set_params(categorical_features=names)
        call(frame, y)
    before = pickle.dumps(est)
    est.set_params(categorical_features=None)
    with pytest.raises(ValueError, match="picks other columns"):
        call(frame, y)
    assert pickle.dumps(est.set_params(categorical_features=names)) == before


def test_a_failed_fit_leaves_the_handling_unchanged():
    pd = pytest.importorskip("pandas")
    frame, y = _frame_with_categories(pd)
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0), frame, y
    )
    before = pickle.dumps(est.__dict__)
    with pytest.raises(ValueError):
        est.fit(frame.assign(color=frame["color"].astype(str)), y)
    with pytest.raises(ValueError):
        est.fit(frame, y, sample_weight=np.zeros(len(y)))
    assert pickle.dumps(est.__dict__) == before


def test_ctrl_c_in_the_handling_leaves_the_model_as_it_was(monkeypatch):
    X, y = make_numeric()
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0), X, y
    )
    before = pickle.dumps(est.__dict__)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_preprocessing, "learn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X * 2, y)
    assert pickle.dumps(est.__dict__) == before


# ---------------------------------------------------------------------------
# The scikit-learn twin and ONNX


def _fitted_models():
    """(name, model, X) with input handling: numeric with NaN (both dtypes),
    a frame with categories, sparse."""
    pd = pytest.importorskip("pandas")
    X, y = make_numeric()
    frame, fy = _frame_with_categories(pd)
    Xs = sp.random(100, 6, density=0.4, format="csr", random_state=0)
    Xs.data[::5] = np.nan
    params = dict(hidden_layer_sizes=(8, 4), max_iter=10, random_state=0)
    yield "numeric", fit_quietly(MLPBNClassifier(**params), X, y), X
    yield (
        "numeric32",
        fit_quietly(
            MLPBNRegressor(**params), X.astype(np.float32), np.nan_to_num(X[:, 0])
        ),
        X.astype(np.float32),
    )
    yield "frame", fit_quietly(MLPBNClassifier(**params), frame, fy), frame
    long, ly = make_long()
    yield "splines", fit_quietly(MLPBNClassifier(**params), long, ly), long
    long_frame = pd.DataFrame(long, columns=["a", "b", "c"]).assign(
        color=pd.Categorical(np.where(ly == 1, "red", "blue"))
    )
    yield (
        "splines frame",
        fit_quietly(MLPBNRegressor(**params), long_frame, long[:, 0]),
        long_frame,
    )
    yield "sparse", fit_quietly(MLPBNRegressor(**params), Xs, np.arange(100) % 3), Xs


def test_to_sklearn_pipeline_predicts_the_same():
    models = list(_fitted_models())
    encoded = {name for name, m, _ in models if len(m.input_spline_features_)}
    assert encoded == {"splines", "splines frame"}
    for name, est, X in models:
        twin = est.to_sklearn()
        assert isinstance(twin, Pipeline)
        assert type(twin.steps[-1][1]).__module__.startswith("sklearn.")
        X_test = X.copy()
        if not sp.issparse(X) and not hasattr(X, "columns"):
            X_test[:5, 0] = np.nan  # NaN in a column without an indicator
            X_test[5:10, 2] = 1e9
        rtol = 1e-4 if name == "numeric32" else 1e-6
        assert_allclose(
            output(twin, X_test),
            output(est, X_test),
            rtol=rtol,
            atol=rtol * 1e-3,
            err_msg=name,
        )
    plain = fit_quietly(
        MLPBNClassifier(input_preprocessing=None, max_iter=2),
        *make_numeric(nan_columns=()),
    )
    assert type(plain.to_sklearn()).__name__ == "MLPClassifier"


def test_the_twin_of_a_sparse_fit_takes_counts_and_bools():
    # Word counts (a CountVectorizer's int64 CSR) and bools: the network
    # reads them as floats, and so must the twin (its imputer alone refuses
    # integers and bools).
    rng = np.random.RandomState(0)
    counts = rng.poisson(0.5, size=(80, 6))
    y = (counts[:, 0] > 0).astype(int)
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0),
        sp.csr_matrix(counts.astype(np.float64)),
        y,
    )
    twin = est.to_sklearn()
    for X in (sp.csr_matrix(counts), counts, counts > 0, sp.csr_matrix(counts > 0)):
        assert_allclose(
            twin.predict_proba(X), est.predict_proba(X), rtol=1e-12, atol=1e-15
        )


def test_the_twin_loads_without_sklearn_bn(tmp_path):
    for name, est, X in _fitted_models():
        twin = est.to_sklearn()
        path = tmp_path / f"{name}.pkl"
        with open(path, "wb") as f:
            pickle.dump((twin, X, output(est, X)), f)
        script = textwrap.dedent(f"""
            import pickle, sys
            import numpy as np
            sys.modules["sklearn_bn"] = None  # importing it fails
            with open({str(path)!r}, "rb") as f:
                twin, X, expected = pickle.load(f)
            if hasattr(twin, "predict_proba"):
                got = twin.predict_proba(X)
            else:
                got = twin.predict(X)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
            loaded = [m for m in sys.modules if sys.modules[m]]
            assert not any(m.startswith("sklearn_bn") for m in loaded)
        """)
        run = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
        )
        assert run.returncode == 0, (name, run.stderr)


@pytest.mark.parametrize("dtype", DTYPES)
def test_onnx_export_applies_the_numeric_handling(dtype):
    skl2onnx = pytest.importorskip("skl2onnx")
    ort = pytest.importorskip("onnxruntime")
    from sklearn_bn.onnx import register_converters

    register_converters()
    tol = 1e-5 if dtype == np.float32 else 1e-10
    for make, est in (
        (make_numeric, MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=10)),
        (make_numeric, MLPBNRegressor(hidden_layer_sizes=(8,), max_iter=10)),
        (make_long, MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=2)),
        (make_long, MLPBNRegressor(hidden_layer_sizes=(8,), max_iter=2)),
    ):
        X, y = make(dtype=dtype)
        X_test = X.copy()
        X_test[:5, 0] = np.nan
        X_test[5:10, 2] = 1e9
        X_test[10:15, 1] = -1e9
        est.set_params(random_state=0)
        target = y if isinstance(est, MLPBNClassifier) else np.nan_to_num(X[:, 0])
        fit_quietly(est, X, target)
        assert (len(est.input_spline_features_) > 0) == (make is make_long)
        options = {"zipmap": False} if isinstance(est, MLPBNClassifier) else None
        onx = skl2onnx.to_onnx(est, X[:1], options=options)
        session = ort.InferenceSession(
            onx.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        got = session.run(None, {"X": X_test})
        if isinstance(est, MLPBNClassifier):
            assert_allclose(got[1], est.predict_proba(X_test), rtol=0, atol=tol)
        else:
            expected = est.predict(X_test)
            assert_allclose(
                got[0].ravel(), expected, rtol=tol, atol=tol * np.abs(expected).max()
            )


def test_onnx_refuses_categorical_features_with_a_message():
    pd = pytest.importorskip("pandas")
    skl2onnx = pytest.importorskip("skl2onnx")
    pytest.importorskip("onnxruntime")
    from sklearn_bn.onnx import register_converters

    register_converters()
    frame, y = _frame_with_categories(pd)
    array = frame.to_numpy(dtype=object)
    est = fit_quietly(
        MLPBNClassifier(categorical_features=[1, 2], max_iter=2), array, y
    )
    with pytest.raises(NotImplementedError, match="categorical features"):
        skl2onnx.to_onnx(
            est, frame[["x", "x", "x", "z"]].to_numpy()[:1], options={"zipmap": False}
        )
    # A frame with category columns comes as one input per column: the same
    # message, not skl2onnx's about the number of inputs.
    for Est, target in ((MLPBNClassifier, y), (MLPBNRegressor, np.arange(len(y)))):
        est = fit_quietly(Est(max_iter=2), frame, target)
        with pytest.raises(NotImplementedError, match="categorical features"):
            skl2onnx.to_onnx(est, frame.iloc[:1])


# ---------------------------------------------------------------------------
# Unusual category values and input kinds


def test_boolean_categories_are_numbers_and_export():
    # scikit-learn's encoder reads a boolean category column (pandas
    # category of bools, nullable boolean) as 0.0 and 1.0: so do the
    # categories, and the twin takes the same columns.
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    flags = pd.array(rng.rand(100) > 0.5, dtype="boolean")
    flags[::5] = pd.NA
    y = rng.randint(0, 2, 100)
    for frame, mark in [
        (
            pd.DataFrame(
                {"a": rng.randn(100), "b": pd.Categorical(rng.rand(100) > 0.5)}
            ),
            "from_dtype",
        ),
        (pd.DataFrame({"a": rng.randn(100), "b": flags}), ["b"]),
    ]:
        est = fit_quietly(
            MLPBNClassifier(max_iter=5, random_state=0, categorical_features=mark),
            frame,
            y,
        )
        cats = est.input_categories_[0]
        assert cats.dtype == np.float64
        assert_array_equal(cats[:2], [0.0, 1.0])
        assert_allclose(
            est.to_sklearn().predict_proba(frame), est.predict_proba(frame), atol=1e-12
        )


def test_mixed_categories_put_numbers_first_by_value():
    pd = pytest.importorskip("pandas")
    values = ["b", 1, 2.5, 3, 0.5, None, "a", np.float32(1.5)]
    X = pd.DataFrame({"m": pd.Series(values * 20, dtype=object)})
    y = np.arange(len(X)) % 2
    est = fit_quietly(MLPBNClassifier(max_iter=1, categorical_features=["m"]), X, y)
    categories = est.input_categories_[0].tolist()
    assert categories[:-1] == [0.5, 1, 1.5, 2.5, 3, "a", "b"]
    assert np.isnan(categories[-1])


def test_integer_categories_beyond_float64_stay_distinct():
    pd = pytest.importorskip("pandas")
    ids = np.array([2**53, 2**53 + 1, 2**53 + 2], dtype=np.int64)
    X = pd.DataFrame({"x": np.arange(60.0), "id": pd.Categorical(np.tile(ids, 20))})
    y = np.tile([0, 1, 1], 20)
    est = fit_quietly(MLPBNClassifier(max_iter=30, random_state=0), X, y)
    assert est.input_categories_[0].tolist() == ids.tolist()
    assert_allclose(est.to_sklearn().predict_proba(X), est.predict_proba(X), atol=1e-12)
    assert est.predict(X.iloc[:3]).tolist() == [0, 1, 1]


@pytest.mark.parametrize("dtype_name", ["Int64", "UInt64"])
def test_polars_integer_ids_with_nulls_stay_distinct(dtype_name):
    # polars makes an integer column with nulls float64 in to_numpy(),
    # which merged IDs beyond 2**53 into a few categories.
    pl = pytest.importorskip("polars")
    ids = [2**56 + k % 20 for k in range(200)]
    ids[5] = None
    X = pl.DataFrame(
        {
            "x": np.arange(200.0),
            "id": pl.Series(ids, dtype=getattr(pl, dtype_name)),
        }
    )
    y = np.array([0 if v is None else v % 2 for v in ids])
    est = fit_quietly(
        MLPBNClassifier(max_iter=30, random_state=0, categorical_features=["id"]), X, y
    )
    assert len(est.input_categories_[0]) == 21  # 20 IDs and the missing one
    assert est.score(X, y) == 1.0


def test_temporal_categories_read_alike_from_pandas_and_polars():
    # polars gave nanosecond datetimes as integers and dates as dates (pandas:
    # Timestamps); pandas' NaT was a category of its own, not missing.
    pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    import datetime

    base = datetime.datetime(2020, 1, 1)
    days = np.arange(200) % 5
    times = [
        None if k % 10 == 0 else base + datetime.timedelta(days=int(d))
        for k, d in enumerate(days)
    ]
    y = (days % 2 == 0).astype(int)
    est = MLPBNClassifier(max_iter=5, random_state=0, categorical_features=["t"])
    for column in (
        pl.Series(times),
        pl.Series(times).cast(pl.Datetime("ns")),
        pl.Series([t.date() if t else None for t in times]),
    ):
        X = pl.DataFrame({"x": np.arange(200.0), "t": column})
        a = fit_quietly(clone(est), X, y)
        b = fit_quietly(clone(est), X.to_pandas(), y)
        assert len(a.input_categories_[0]) == len(b.input_categories_[0]) == 6
        assert_array_equal(a.predict_proba(X.to_pandas()), a.predict_proba(X))
        assert_array_equal(b.predict_proba(X), a.predict_proba(X))
        with pytest.raises(ValueError, match="dates or times with missing values"):
            a.to_sklearn()


def test_the_twin_matches_temporal_categories_of_any_unit():
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    import datetime

    if hash(np.datetime64("2020-01-01", "ms")) != hash(pd.Timestamp("2020-01-01")):
        pytest.skip("this numpy's datetime64 does not hash as Python's datetimes")

    base = datetime.datetime(2020, 1, 1)
    days = np.arange(200) % 5
    times = [base + datetime.timedelta(days=int(d)) for d in days]
    y = (days % 2 == 0).astype(int)
    est = MLPBNClassifier(max_iter=5, random_state=0, categorical_features=["t"])
    for column in (
        pl.Series([t.date() for t in times]),
        pl.Series(times).cast(pl.Datetime("ns")),
        pl.Series([t - base for t in times]).cast(pl.Duration("ns")),
    ):
        X = pl.DataFrame({"x": np.arange(200.0), "t": column})
        # Before polars 2, scikit-learn hands the encoder a polars Date
        # column as datetime64[D] values, which match no Timestamp: the docs
        # say to give the twin X.to_pandas().
        given_frames = [X.to_pandas()]
        if int(pl.__version__.split(".")[0]) >= 2:
            given_frames.append(X)
        for frame in (X, X.to_pandas()):
            model = fit_quietly(clone(est), frame, y)
            twin = model.to_sklearn()
            for given in given_frames:
                assert_allclose(
                    twin.predict_proba(given), model.predict_proba(X), atol=1e-12
                )


def test_nested_polars_columns_raise_a_clear_error():
    pl = pytest.importorskip("polars")
    X = pl.DataFrame({"x": np.arange(20.0), "a": pl.Series([[1, 2]] * 20)})
    y = np.arange(20) % 2
    for features in ("from_dtype", ["a"]):
        with pytest.raises(ValueError, match="lists or records"):
            MLPBNClassifier(max_iter=2, categorical_features=features).fit(X, y)


def test_polars_names_scikit_learn_cannot_read_get_a_clear_error():
    # scikit-learn before 1.8 reads a frame's column names through the
    # interchange protocol, which polars 2 frames lack: named categorical
    # features then have no names to match, and the error says why.
    pl = pytest.importorskip("polars")
    X = pl.DataFrame({"x": np.arange(4.0), "c": ["a", "b", "a", "b"]})
    with pytest.raises(
        ValueError,
        match=r"reads no column names from this polars DataFrame \(those of "
        r"polars 2 need scikit-learn >= 1.8\): give indices or a boolean mask",
    ):
        _preprocessing.categorical_mask(["c"], X, 2, None, None)
    assert_array_equal(
        _preprocessing.categorical_mask([1], X, 2, None, None), [False, True]
    )


def test_unsigned_categories_beyond_int64_export():
    # uint64 IDs from 2**63 overflowed the int64 export (OverflowError).
    pd = pytest.importorskip("pandas")
    ids = np.array([2**63, 2**63 + 1, 2**64 - 1], dtype=np.uint64)
    X = pd.DataFrame({"x": np.arange(60.0), "id": np.tile(ids, 20)})
    y = np.tile([0, 1, 1], 20)
    est = fit_quietly(
        MLPBNClassifier(max_iter=30, random_state=0, categorical_features=["id"]), X, y
    )
    twin = est.to_sklearn()
    assert_allclose(twin.predict_proba(X), est.predict_proba(X), atol=1e-12)
    assert twin[0].transform(X)[:, -3:].sum(axis=0).tolist() == [20, 20, 20]
    # Below 2**63 they export as int64: the twin takes them as int64 (the
    # documented conversion; numpy would compare uint64 with them as floats).
    below = np.array([2**62, 2**62 + 1, 2**62 + 2], dtype=np.uint64)
    X = X.assign(id=np.tile(below, 20))
    est = fit_quietly(clone(est), X, y)
    twin = est.to_sklearn()
    as_int64 = X.assign(id=X["id"].astype("int64"))
    assert_allclose(twin.predict_proba(as_int64), est.predict_proba(X), atol=1e-12)


def test_a_list_of_numbers_and_strings_reads_as_an_object_array():
    # numpy turns such a list into an array of strings: the numbers come
    # back from their text.
    X = [[1.0, "a"], [2.0, "b"], [3.0, "a"], [4.0, "b"]] * 10
    y = [0, 1, 1, 0] * 10
    params = dict(categorical_features=[1], max_iter=3, random_state=0)
    from_list = fit_quietly(MLPBNClassifier(**params), X, y)
    from_objects = fit_quietly(MLPBNClassifier(**params), np.array(X, dtype=object), y)
    assert_array_equal(from_list.predict_proba(X), from_objects.predict_proba(X))
    assert_array_equal(
        from_objects.predict_proba(X),
        from_objects.predict_proba(np.array(X, dtype=object)),
    )
    with pytest.raises(ValueError, match="must be numbers"):
        MLPBNClassifier(**params).fit([["x", "a"], ["y", "b"]] * 5, [0, 1] * 5)


def test_bad_values_in_columns_raise():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    y = rng.randint(0, 2, 40)
    est = MLPBNClassifier(max_iter=3, random_state=0)
    complex_frame = pd.DataFrame({"a": rng.randn(40) + 1j * rng.randn(40)})
    with pytest.raises(ValueError, match="Complex data not supported"):
        est.fit(complex_frame, y)
    infinite = np.column_stack([rng.randn(40), rng.choice([1.0, 2.0, np.inf], 40)])
    with pytest.raises(ValueError, match="contains infinity in a categorical"):
        clone(est).set_params(categorical_features=[1]).fit(infinite, y)
    frame = pd.DataFrame(
        {"a": rng.randn(40), "c": pd.Categorical(rng.choice([1.0, np.inf], 40))}
    )
    with pytest.raises(ValueError, match="contains infinity in a categorical"):
        clone(est).fit(frame, y)
    with pytest.raises(ValueError, match="0 feature"):
        clone(est).fit(pd.DataFrame(index=range(40)), y)
    # A fitted model is left as it was.
    good = pd.DataFrame(
        {"a": rng.randn(40), "c": pd.Categorical(rng.choice([1, 2], 40))}
    )
    fit_quietly(est, good, y)
    before = est.predict_proba(good)
    with pytest.raises(ValueError, match="contains infinity in a categorical"):
        est.fit(frame, y)
    assert_array_equal(est.predict_proba(good), before)


def test_errors_say_what_to_do_with_unusual_columns():
    pd = pytest.importorskip("pandas")
    y = [0, 1] * 20
    frame = pd.DataFrame(
        {"i": [0, 1, 2, 0] * 10, "c": pd.Categorical(list("xyzx") * 10)}
    )
    with pytest.raises(ValueError, match="have a categorical dtype but are not in"):
        MLPBNClassifier(categorical_features=["i"]).fit(frame, y)
    objects = np.array([[1.0, "a"], [2.0, "b"]] * 20, dtype=object)
    with pytest.raises(ValueError, match=r"categorical_features=\[their indices\]"):
        MLPBNClassifier().fit(objects, y)
    pl = pytest.importorskip("polars")
    import datetime

    dates = pl.DataFrame(
        {"d": [datetime.date(2020, 1, 1 + k % 28) for k in range(40)], "x": range(40)}
    )
    with pytest.raises(ValueError, match="has dtype Date, which the input handling"):
        MLPBNClassifier().fit(dates, y)


def test_the_twin_takes_none_as_the_nan_category():
    # The handling takes None (object arrays, polars' null) as NaN; the
    # twin's encoder gets a None category weighed as NaN's.
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    n = 200
    c = rng.choice(["x", "y", "z"], n).astype(object)
    c[::4] = None
    c[1::8] = np.nan
    y = (np.arange(n) % 4 == 0).astype(int)
    X = np.empty((n, 2), dtype=object)
    X[:, 0], X[:, 1] = rng.randn(n), c
    inputs = [
        (X, [1]),
        (pd.DataFrame({"a": X[:, 0].astype(float), "s": c}), ["s"]),
    ]
    try:
        import polars as pl

        inputs.append(
            (
                pl.DataFrame(
                    {
                        "a": X[:, 0].astype(float),
                        "s": pl.Series(
                            [None if v is None or v != v else v for v in c],
                            dtype=pl.Categorical,
                        ),
                    }
                ),
                "from_dtype",
            )
        )
    except ImportError:
        pass
    for data, mark in inputs:
        est = fit_quietly(
            MLPBNClassifier(
                hidden_layer_sizes=(8,),
                max_iter=30,
                random_state=0,
                categorical_features=mark,
            ),
            data,
            y,
        )
        twin = est.to_sklearn()
        assert_allclose(twin.predict_proba(data), est.predict_proba(data), atol=1e-12)
        names = twin[0].get_feature_names_out().tolist()
        assert names[-2:] == [names[-2][:-4] + "None", names[-1][:-3] + "nan"]


def test_the_twin_of_boolean_categories_with_none_takes_floats():
    # A column of booleans with None reaches the twin's encoder as objects,
    # where None is not NaN: the documented fix gives it floats.
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    n = 200
    flag = rng.randint(0, 2, n).astype(bool).astype(object)
    flag[::6] = None
    X = pd.DataFrame({"a": rng.randn(n), "flag": flag})
    y = (np.arange(n) % 3 == 0).astype(int)
    est = fit_quietly(
        MLPBNClassifier(
            hidden_layer_sizes=(8,),
            max_iter=30,
            random_state=0,
            categorical_features=["flag"],
        ),
        X,
        y,
    )
    twin = est.to_sklearn()
    as_floats = X.assign(flag=X["flag"].astype(float))
    assert_allclose(twin.predict_proba(as_floats), est.predict_proba(X), atol=1e-12)


def test_categories_mixing_strings_and_numbers_cannot_be_exported():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    zip_codes = pd.Series(
        [1000 + v if v % 5 else "unknown" for v in rng.randint(0, 10, 100)],
        dtype=object,
    )
    X = pd.DataFrame({"a": rng.randn(100), "zip": zip_codes.astype("category")})
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0),
        X,
        np.arange(100) % 2,
    )
    assert est.predict(X).shape == (100,)
    with pytest.raises(ValueError, match="all strings or all numbers.*to strings"):
        est.to_sklearn()


@pytest.mark.parametrize("output", ["pandas", "polars"])
def test_a_twin_built_for_frame_output_predicts_without_warnings(output):
    # Its steps then hand the MLP a frame: the MLP knows its column names.
    pd = pytest.importorskip("pandas")
    pytest.importorskip(output)
    from sklearn import config_context

    rng = np.random.RandomState(0)
    X = pd.DataFrame({"x": rng.randn(100), "c": pd.Categorical(["a", "b"] * 50)})
    est = fit_quietly(
        MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0),
        X,
        np.arange(100) % 2,
    )
    with config_context(transform_output=output):
        twin = est.to_sklearn()
    for context in (config_context(transform_output=output), contextlib.nullcontext()):
        # Under the configuration it was built in, and under the default one
        # (a twin saved from a notebook that set pandas output).
        with context, warnings.catch_warnings():
            # The feature names' warning; older scikit-learn also warns that
            # polars deprecates the interchange protocol it reads frames by.
            warnings.simplefilter("error", UserWarning)
            proba = pickle.loads(pickle.dumps(twin)).predict_proba(X)
        assert_allclose(proba, est.predict_proba(X), atol=1e-12)
    assert twin[-1].feature_names_in_.tolist() == [
        "numeric__x",
        "categorical__c_a",
        "categorical__c_b",
    ]


# ---------------------------------------------------------------------------
# The regressor's target standardization


def _raw_regression(n_outputs=1, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(120, 4)
    Y = X @ rng.randn(4, n_outputs) + 0.1 * rng.randn(120, n_outputs)
    return X, 1000.0 + 500.0 * Y  # far from unit scale


def _quiet_regressor(**params):
    params = {"hidden_layer_sizes": (8,), "max_iter": 5, "random_state": 0, **params}
    return MLPBNRegressor(**params)


def _fit_quietly(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_the_regressor_trains_on_the_standardized_target(dtype, n_outputs):
    # The target is standardized with the fit's weighted mean and standard
    # deviation, and the output layer scaled back: a raw target gives the
    # model that its standardized copy gives, in the raw target's units.
    X, Y = _raw_regression(n_outputs)
    X = X.astype(dtype)
    y = Y.ravel() if n_outputs == 1 else Y
    sw = np.random.RandomState(1).randint(1, 4, size=X.shape[0]).astype(float)
    raw = _fit_quietly(_quiet_regressor(), X, y, sample_weight=sw)
    mean = np.average(Y, axis=0, weights=sw)
    scale = np.sqrt(np.average((Y - mean) ** 2, axis=0, weights=sw))
    assert raw.target_mean_.dtype == raw.target_scale_.dtype == np.float64
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert_allclose(raw.target_mean_, mean, rtol=rtol)
    assert_allclose(raw.target_scale_, scale, rtol=rtol)
    standardized = _fit_quietly(
        _quiet_regressor(),
        X,
        (y - raw.target_mean_.squeeze()) / raw.target_scale_.squeeze(),
        sample_weight=sw,
    )
    assert_allclose(
        standardized.target_mean_, 0, atol=1e-6 if dtype == np.float32 else 1e-12
    )
    assert_allclose(standardized.target_scale_, 1, rtol=rtol)
    expected = (
        standardized.predict(X).reshape(len(X), -1) * raw.target_scale_
        + raw.target_mean_
    )
    assert_allclose(
        raw.predict(X).reshape(len(X), -1),
        expected,
        rtol=1e-4 if dtype == np.float32 else 1e-9,
    )
    assert raw.coefs_[-1].dtype == raw.intercepts_[-1].dtype == dtype
    # The fitted output layer is in the target's units: the network's
    # forward pass from the attributes predicts.
    assert_allclose(
        forward_from_attributes(raw, _preprocessing.InputHandling.of(raw).transform(X)),
        raw.predict(X).reshape(len(X), -1),
        rtol=1e-5 if dtype == np.float32 else 1e-12,
    )


def test_the_target_standardization_weighs_rows_as_repeat_counts():
    X, y = _raw_regression()
    y = y.ravel()
    counts = np.random.RandomState(2).randint(0, 3, size=X.shape[0])
    weighted = _fit_quietly(_quiet_regressor(), X, y, sample_weight=counts)
    repeated = _fit_quietly(
        _quiet_regressor(), np.repeat(X, counts, axis=0), np.repeat(y, counts)
    )
    assert_allclose(weighted.target_mean_, repeated.target_mean_, rtol=1e-12)
    assert_allclose(weighted.target_scale_, repeated.target_scale_, rtol=1e-12)


def test_a_constant_target_keeps_its_spread():
    X, Y = _raw_regression(n_outputs=2)
    Y[:, 1] = 7.5
    est = _fit_quietly(_quiet_regressor(), X, Y)
    assert_allclose(est.target_mean_, [Y[:, 0].mean(), 7.5])
    assert est.target_scale_[1] == 1.0
    assert np.isfinite(est.predict(X)).all()


@pytest.mark.parametrize("params", [{"input_preprocessing": None}, {"loss": "poisson"}])
def test_no_target_standardization_without_input_handling_or_for_poisson(params):
    X, y = _raw_regression()
    y = np.abs(y.ravel())
    est = _fit_quietly(_quiet_regressor(**params), X, y)
    assert not hasattr(est, "target_mean_") and not hasattr(est, "target_scale_")
    # A refit with the input handling learns it; one without drops it.
    est.set_params(input_preprocessing="auto", loss="squared_error")
    assert hasattr(_fit_quietly(est, X, y), "target_mean_")
    est.set_params(input_preprocessing=None)
    assert not hasattr(_fit_quietly(est, X, y), "target_mean_")


def test_continued_fits_keep_the_target_standardization():
    X, y = _raw_regression()
    y = y.ravel()
    est = _quiet_regressor()
    est.partial_fit(X[:60], y[:60])
    mean, scale = est.target_mean_.copy(), est.target_scale_.copy()
    assert_allclose(mean, y[:60].mean())
    est.partial_fit(X[60:], y[60:] + 1e4)
    assert_array_equal(est.target_mean_, mean)
    assert_array_equal(est.target_scale_, scale)
    warm = _fit_quietly(_quiet_regressor(warm_start=True), X, y)
    mean = warm.target_mean_.copy()
    _fit_quietly(warm, X, 2 * y)
    assert_array_equal(warm.target_mean_, mean)
    # A continued fit takes up the network where it was: with the weights'
    # steps and the running statistics' updates at (about) 0, the
    # predictions stay as they were.
    frozen = _fit_quietly(_quiet_regressor(), X, y)
    before = frozen.predict(X)
    frozen.set_params(
        warm_start=True,
        learning_rate_init=1e-300,
        learning_rate="constant",
        alpha=0.0,
        bn_momentum=0.0,
        max_iter=1,
    )
    _fit_quietly(frozen, X, y)
    assert_allclose(frozen.predict(X), before, rtol=1e-12)


def test_a_raw_target_scores_as_its_standardized_copy():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    params = {"random_state": 0, "max_iter": 20}
    raw = _fit_quietly(MLPBNRegressor(**params), X, y)
    standardized = _fit_quietly(MLPBNRegressor(**params), X, (y - y.mean()) / y.std())
    assert raw.score(X, y) > 0.4
    assert raw.score(X, y) == pytest.approx(
        standardized.score(X, (y - y.mean()) / y.std()), abs=1e-9
    )


def test_a_continued_fit_with_other_outputs_is_refused():
    X, Y = _raw_regression(n_outputs=2)
    est = _fit_quietly(_quiet_regressor(), X, Y)
    before = pickle.dumps(est)
    for y in (Y[:, 0], np.c_[Y, Y[:, :1]]):
        with pytest.raises(ValueError, match="output units"):
            est.partial_fit(X, y)
    est.set_params(warm_start=True)
    with pytest.raises(ValueError, match="output units"):
        est.fit(X, Y[:, 0])
    est.set_params(warm_start=False)
    assert pickle.dumps(est) == before


def test_a_float32_stream_far_from_zero_trains_as_one_near_zero():
    # The network's own output layer is kept between calls: scaled into the
    # target's units and back in float32, its intercept would lose every
    # step smaller than the rounding of a mean of 1e5.
    rng = np.random.RandomState(0)
    X = rng.randn(1200, 3).astype(np.float32)
    s = np.round((X[:, 0] + 0.5 * X[:, 1]) * 64) / 64  # exact near 1e5 too
    near, far = s.astype(np.float32), (1e5 + s).astype(np.float32)
    assert_array_equal(far.astype(np.float64) - 1e5, near)
    streams = []
    for y in (near, far):
        est = _quiet_regressor(hidden_layer_sizes=(16,), batch_size=200, shuffle=False)
        for i in range(0, len(X), 200):
            est.partial_fit(X[i : i + 200], y[i : i + 200])
        streams.append(est)
    near_est, far_est = streams
    assert_allclose(far_est.target_scale_, near_est.target_scale_, rtol=1e-9)
    for a, b in zip(near_est.coefs_[:-1], far_est.coefs_[:-1]):
        assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert_allclose(far_est.predict(X) - 1e5, near_est.predict(X), rtol=1e-3, atol=2e-2)


@pytest.mark.parametrize("dtype, spread", [(np.float64, 1e-30), (np.float32, 1e-7)])
def test_a_target_of_tiny_spread_is_standardized(dtype, spread):
    X, y = _raw_regression()
    y = (y.ravel() - y.mean()) / y.std()
    est = _fit_quietly(_quiet_regressor(), X.astype(dtype), (spread * y).astype(dtype))
    assert_allclose(est.target_scale_, spread, rtol=1e-5)


def test_a_target_of_huge_spread_is_standardized_without_overflow():
    X, y = _raw_regression()
    y = (y.ravel() - y.mean()) / y.std() * 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow inside
        est = _fit_quietly(_quiet_regressor(), X, y)
    assert_allclose(est.target_scale_, 1e300, rtol=1e-9)
    assert np.isfinite(est.predict(X)).all()


def test_a_target_range_beyond_float64_is_refused_by_name():
    # Finite targets of either sign near float64's largest number: y minus
    # its mean overflows, and so would the predictions in y's units.
    X, _ = _raw_regression()
    y = np.where(np.arange(len(X)) == 0, -1.7e308, 1.7e308)
    fitted = _fit_quietly(_quiet_regressor(max_iter=2), X, np.arange(len(X)) * 1.0)
    before = pickle.dumps(fitted)
    for call, message in (
        (lambda: _quiet_regressor(max_iter=2).fit(X, y), "targets' range is beyond"),
        # Centred on the fitted mean they are finite; their loss would
        # overflow.
        (lambda: fitted.partial_fit(X, y), "targets are too far from those"),
    ):
        with pytest.raises(ValueError, match=message):
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                call()
    assert pickle.dumps(fitted) == before


def test_a_float32_regressor_streams_targets_far_from_its_first_ones():
    # The loss is float64: targets 1e22 times the first fit's scale train
    # (finite weights); near float32's largest number, which the network's
    # outputs would pass, they are refused, by name.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3)).astype(np.float32)
    y = X[:, 0].astype(np.float64)
    est = _quiet_regressor(hidden_layer_sizes=(8,)).partial_fit(X, y)
    est.partial_fit(X, 1e22 + y * 1e21)
    assert np.isfinite(est.predict(X)).all()
    with pytest.raises(ValueError, match="beyond what the loss \\(or float32\\)"):
        est.partial_fit(X, 3e38 + y * 1e36)


def test_the_sklearn_twin_of_a_standardized_target_warm_starts_afresh():
    # The model's losses are the standardized target's; the twin's warm
    # start compares its own, in the target's units, from afresh.
    X, y = _raw_regression()
    est = _fit_quietly(_quiet_regressor(max_iter=20), X, y.ravel())
    twin = est.to_sklearn()
    mlp = twin[-1]
    assert mlp.best_loss_ == np.inf and mlp._no_improvement_count == 0
    mlp.set_params(warm_start=True, max_iter=12, n_iter_no_change=3, tol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        twin.fit(X, y.ravel())
    assert mlp.n_iter_ == 12  # not stopped after n_iter_no_change epochs


def test_arrays_of_other_libraries_go_through_sklearns_validation():
    # Only numpy dtypes are looked at before validation: a tensor's dtype
    # or a pandas extension dtype is scikit-learn's to read or refuse.
    torch = pytest.importorskip("torch")
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    X = rng.randn(60, 3)
    y = (X[:, 0] > 0).astype(int)
    params = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0)
    est = fit_quietly(MLPBNClassifier(**params), torch.tensor(X), y)
    reference = fit_quietly(MLPBNClassifier(**params), X, y)
    assert_array_equal(est.predict_proba(torch.tensor(X)), reference.predict_proba(X))
    for one_dimensional in (
        pd.Series([1.0, 2.0], dtype="Float64"),
        pd.Series(pd.Categorical(["a", "b"])),
        pd.array([1.0, None], dtype="Float64"),
    ):
        with pytest.raises(ValueError):
            reference.predict(one_dimensional)


@pytest.mark.parametrize("dtype", ["string", "string[pyarrow]", object])
def test_the_twin_takes_pandas_na_given_as_nan(dtype):
    # pandas' NA (nullable strings) is the handling's NaN category but an
    # unknown category to the twin's encoder; the deployment page's fix,
    # NaN in its place, gives the model's predictions.
    pd = pytest.importorskip("pandas")
    if dtype == "string[pyarrow]":
        pytest.importorskip("pyarrow")
    rng = np.random.RandomState(0)
    n = 300
    values = pd.Series(rng.choice(["x", "y"], n), dtype=object)
    values[::4] = pd.NA
    X = pd.DataFrame({"a": rng.randn(n), "c": values.astype(dtype)})
    y = (rng.rand(n) < 0.5).astype(int)
    est = fit_quietly(
        MLPBNClassifier(
            hidden_layer_sizes=(8,),
            max_iter=5,
            random_state=0,
            categorical_features=["c"],
        ),
        X,
        y,
    )
    fixed = X.astype(object).where(X.notna(), np.nan)
    assert_allclose(
        est.to_sklearn().predict_proba(fixed), est.predict_proba(X), atol=1e-12
    )


def test_a_frame_without_rows_is_refused_with_its_own_shape():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(
        {
            "a": [1.0, 2.0, 3.0, 4.0],
            "b": [1.0, 2, 3, 5],
            "c": pd.Categorical(list("xyxy")),
        }
    )
    y = np.array([0, 1, 0, 1])
    message = r"0 sample\(s\) \(shape=\(0, 3\)\) while a minimum of 1"
    with pytest.raises(ValueError, match=message):
        MLPBNClassifier().fit(X[:0], y[:0])
    est = fit_quietly(MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=2), X, y)
    for method in (est.predict, est.predict_proba):
        with pytest.raises(ValueError, match=message):
            method(X[:0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_whose_distance_to_the_center_overflows_enter_as_the_twin(dtype):
    # x - center beyond the dtype's range for finite x enters as +-c, as
    # to_sklearn()'s (and the ONNX graph's) arithmetic in that dtype gives.
    big = float(np.finfo(dtype).max)
    X = np.array([[-0.3 * big]] * 6 + [[0.75 * big]] * 4, dtype=dtype)
    est = fit_quietly(
        MLPBNRegressor(hidden_layer_sizes=(), max_iter=3, random_state=0),
        X,
        np.arange(10.0),
    )
    got = _preprocessing.InputHandling.of(est).transform(X)[:, 0]
    assert_array_equal(got[-4:], est.input_clip_)
    assert_allclose(est.predict(X), est.to_sklearn().predict(X), rtol=1e-6)
