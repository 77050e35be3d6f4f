"""Property-based tests (hypothesis) of what must hold for any input.

* ``BatchNormScaler(epsilon=0)`` equals ``StandardScaler``, with NaN and
  sample weights;
* ``partial_fit`` over any split of the rows equals ``fit``;
* ``inverse_transform(transform(X))`` gives ``X`` back (float32: within its
  rounding);
* any finite input within its dtype's range gives finite MLP probabilities
  that sum to one.

Each test is bounded in examples and has no deadline (a shared CI machine
must not turn a slow example into a failure); the module runs in about half
a minute. The extreme inputs of the last property are also tried one by one.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from sklearn_bn import BatchNormScaler, MLPBNClassifier

from reference import DTYPES, draw_split

# derandomize: the same examples on every run, so that CI never turns red by
# the luck of a draw; a failure found is then found again.
SETTINGS = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def grid_data(draw, min_rows=1, max_rows=30, max_cols=4, nan=True):
    """(X, dtype): columns of small integers times a power of two around an
    offset, exact in float32 and float64, so that a column's variance is
    either exactly 0 or far above rounding (the two scalers then agree on
    which features are constant); NaN anywhere when ``nan``."""
    dtype = draw(st.sampled_from(DTYPES))
    n_rows = draw(st.integers(min_rows, max_rows))
    n_cols = draw(st.integers(1, max_cols))
    ints = draw(hnp.arrays(np.int64, (n_rows, n_cols), elements=st.integers(-64, 64)))
    offset = draw(hnp.arrays(np.int64, n_cols, elements=st.integers(-(2**16), 2**16)))
    exponent = draw(hnp.arrays(np.int64, n_cols, elements=st.integers(-30, 30)))
    X = ((ints + offset) * 2.0**exponent).astype(dtype)
    if nan:
        X[draw(hnp.arrays(bool, (n_rows, n_cols)))] = np.nan
    return X, dtype


def weights(n_rows):
    """None, or non-negative weights (some zero) that are not all zero."""
    element = st.one_of(st.just(0.0), st.floats(0.01, 8.0))
    return st.one_of(
        st.none(),
        hnp.arrays(np.float64, n_rows, elements=element).filter(lambda w: w.sum() > 0),
    )


def _scale(X):
    """Largest magnitude in X, at least 1e-300 (NaN ignored)."""
    return max(float(np.nanmax(np.abs(X), initial=0.0)), 1e-300)


# ---------------------------------------------------------------------------
# BatchNormScaler


@settings(max_examples=80, **SETTINGS)
@given(data=st.data(), X_dtype=grid_data())
def test_scaler_equals_standard_scaler_at_epsilon_zero(data, X_dtype):
    X, dtype = X_dtype
    w = data.draw(weights(X.shape[0]), label="sample_weight")
    ours = BatchNormScaler(epsilon=0.0).fit(X, sample_weight=w)
    # float32: against StandardScaler in float64, which is exact here; its
    # float32 transform is not (X - mean_ in float32 loses the mean's
    # rounding: 513 in [512, 513, 513] gives 0.707064 for 0.707107).
    # Both scalers round the weights to X's dtype.
    X64 = X.astype(np.float64)
    w64 = None if w is None else w.astype(dtype).astype(np.float64)
    with warnings.catch_warnings():
        # StandardScaler's numpy warnings on all-NaN (or weightless) features.
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = StandardScaler().fit(X64, sample_weight=w64)
        expected = ref.transform(X64)
    assert_allclose(ours.n_samples_seen_, ref.n_samples_seen_, rtol=1e-12)
    # Statistics: float32 data give them to about 1e-7 of the data's scale.
    tol = 2e-6 if dtype == np.float32 else 1e-12
    scale = _scale(X)
    assert_allclose(ours.running_mean_, ref.mean_, rtol=tol, atol=tol * scale)
    assert_allclose(ours.running_var_, ref.var_, rtol=tol, atol=tol * scale**2)
    out = ours.transform(X)
    assert out.dtype == dtype
    assert_array_equal(np.isnan(out), np.isnan(expected))
    # Constant features are only centered: there StandardScaler's weighted
    # mean may be off by a rounding of the data (ours is exact).
    out_scale = max(1.0, _scale(expected))
    tol = 2e-5 if dtype == np.float32 else 1e-10
    atol = tol * out_scale + 4 * np.finfo(dtype).eps * _scale(X)
    assert_allclose(out, expected, rtol=tol, atol=atol)


@settings(max_examples=80, **SETTINGS)
@given(data=st.data(), X_dtype=grid_data(min_rows=2))
def test_partial_fit_over_any_split_equals_fit(data, X_dtype):
    X, dtype = X_dtype
    n_rows = X.shape[0]
    w = data.draw(weights(n_rows), label="sample_weight")
    bounds = draw_split(data, n_rows, max_cuts=6)
    whole = BatchNormScaler().fit(X, sample_weight=w)
    parts = BatchNormScaler()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if w is not None and not w[start:stop].sum() > 0:
            continue  # a batch of zero weight is refused, and adds nothing
        parts.partial_fit(
            X[start:stop], sample_weight=None if w is None else w[start:stop]
        )
    tol = 2e-6 if dtype == np.float32 else 1e-9
    scale = _scale(X)
    assert_allclose(
        parts.running_mean_, whole.running_mean_, rtol=tol, atol=tol * scale
    )
    assert_allclose(
        parts.running_var_, whole.running_var_, rtol=tol, atol=tol * scale**2
    )
    assert_allclose(parts.n_samples_seen_, whole.n_samples_seen_, rtol=1e-12)
    assert np.shape(parts.n_samples_seen_) == np.shape(whole.n_samples_seen_)
    assert_allclose(
        parts.transform(X),
        whole.transform(X),
        rtol=100 * tol,
        atol=100 * tol * max(1.0, _scale(whole.transform(X))),
    )


@st.composite
def affine_params(draw, n_cols):
    """gamma away from 0 (either sign) and beta, each a float or a vector."""
    magnitude = st.floats(0.1, 10.0)
    gamma_elem = st.builds(lambda m, s: m * s, magnitude, st.sampled_from([-1.0, 1.0]))
    beta_elem = st.floats(-5.0, 5.0)
    gamma = draw(
        st.one_of(gamma_elem, hnp.arrays(np.float64, n_cols, elements=gamma_elem))
    )
    beta = draw(
        st.one_of(beta_elem, hnp.arrays(np.float64, n_cols, elements=beta_elem))
    )
    return gamma, beta


@settings(max_examples=80, **SETTINGS)
@given(
    data=st.data(),
    X_dtype=grid_data(min_rows=2),
    momentum=st.sampled_from([None, 0.1, 1.0]),
    epsilon=st.sampled_from([0.0, 1e-5, 1.0]),
)
def test_inverse_transform_undoes_transform(data, X_dtype, momentum, epsilon):
    X, dtype = X_dtype
    if momentum is not None:
        # Momentum needs two values per feature in every batch.
        assume(np.all(np.sum(~np.isnan(X), axis=0) >= 2))
    gamma, beta = data.draw(affine_params(X.shape[1]), label="gamma, beta")
    scaler = BatchNormScaler(momentum=momentum, epsilon=epsilon, gamma=gamma, beta=beta)
    scaler.fit(X)
    back = scaler.inverse_transform(scaler.transform(X))
    assert back.dtype == dtype
    assert_array_equal(np.isnan(back), np.isnan(X))
    # The round trip loses a few roundings of x, of the mean and of
    # std * beta / gamma (the output's offset, seen from the input's side).
    std = np.sqrt(scaler.running_var_ + epsilon)
    std = np.where(std > 0, std, 1.0)
    mean = np.abs(scaler.running_mean_)
    reach = np.abs(X) + mean + std * (1 + np.abs(beta) / np.abs(gamma))
    tol = 16 * np.finfo(dtype).eps * np.where(np.isnan(reach), 0, reach)
    error = np.abs(back.astype(np.float64) - X.astype(np.float64))
    assert np.all(np.nan_to_num(error) <= tol)


# ---------------------------------------------------------------------------
# MLPBNClassifier


@pytest.fixture(scope="module")
def classifiers():
    """Fitted classifiers: {(model dtype, n_classes): estimator}."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(200, 4))
    labels = {
        2: (X[:, 0] + X[:, 1] > 0).astype(int),
        3: (X[:, 0] > 0).astype(int) + (X[:, 2] > 0.5),
    }
    fitted = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for dtype in DTYPES:
            for n_classes, y in labels.items():
                est = MLPBNClassifier(
                    hidden_layer_sizes=(8,), max_iter=20, random_state=0
                )
                fitted[dtype, n_classes] = est.fit(X.astype(dtype), y)
    return fitted


@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "3-classes"])
@pytest.mark.parametrize("model_dtype", DTYPES, ids=["model32", "model64"])
@pytest.mark.parametrize("input_dtype", DTYPES, ids=["input32", "input64"])
@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_any_finite_input_gives_probabilities(
    classifiers, model_dtype, input_dtype, n_classes, data
):
    est = classifiers[model_dtype, n_classes]
    width = 32 if input_dtype == np.float32 else 64
    X = data.draw(
        hnp.arrays(
            input_dtype,
            st.tuples(st.integers(1, 5), st.just(4)),
            elements=st.floats(width=width, allow_nan=False, allow_infinity=False),
        ),
        label="X",
    )
    proba = est.predict_proba(X)
    assert proba.shape == (X.shape[0], n_classes)
    assert np.all(np.isfinite(proba)), f"non-finite probabilities for X={X!r}"
    assert np.all((proba >= 0) & (proba <= 1))
    atol = 1e-5 if proba.dtype == np.float32 else 1e-12
    assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=atol)


@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "3-classes"])
@pytest.mark.parametrize("model_dtype", DTYPES, ids=["model32", "model64"])
@pytest.mark.parametrize("input_dtype", DTYPES, ids=["input32", "input64"])
def test_extreme_finite_inputs_give_probabilities(
    classifiers, model_dtype, input_dtype, n_classes
):
    info = np.finfo(input_dtype)
    big, tiny = info.max, info.smallest_subnormal
    X = np.array(
        [
            [big, big, big, big],
            [-big, -big, -big, -big],
            [big, -big, big, -big],
            [tiny, -tiny, 0.0, -0.0],
            [big / 2, 1.0, -1.0, 0.0],
        ],
        dtype=input_dtype,
    )
    proba = classifiers[model_dtype, n_classes].predict_proba(X)
    finite = np.all(np.isfinite(proba), axis=1)
    assert np.all(finite), (
        f"non-finite probabilities for rows {np.flatnonzero(~finite)}: {proba}"
    )
    atol = 1e-5 if proba.dtype == np.float32 else 1e-12
    assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=atol)
