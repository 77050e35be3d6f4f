"""Tests of the batch-norm kernels (sklearn_bn._batchnorm).

Every kernel is compared with an independent plain-numpy reference computed in
float64 (weighted statistics with ``np.average``; the forward pass written
from its definition; the backward pass in closed form), on float32 and
float64, read-only inputs, odd shapes and awkward data. The backward kernel
is also checked against central differences of the forward kernel.

Malformed input to the ``def`` wrappers raises before any C loop runs:
``TypeError`` for something that is not a numpy array, a dtype other than
float32/float64, or arrays whose dtypes differ (``mean``/``var`` of the
training kernels must be float64); ``ValueError`` for wrong shapes, non
C-contiguous data, read-only outputs, no rows, ``epsilon < 0`` (or NaN),
weights that do not sum to a positive number, an unknown activation,
``var + epsilon <= 0`` and, with ``epsilon = 0``, a zero-variance column.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from sklearn_bn import _batchnorm

from reference import ACTIVATIONS, DTYPES
from reference import activation as ref_activation
from reference import activation_derivative as ref_derivative

EPS = 1e-5

# Shapes with one column, two rows, one row, many columns (several panels of
# columns), many rows (several statistics blocks).
SHAPES = [(2, 1), (1, 5), (2, 3), (7, 1), (37, 13), (3, 10_000), (600, 70), (40, 1030)]


# ---------------------------------------------------------------------------
# Plain numpy references, in float64.


def ref_stats(x, w=None, ignore_nan=False):
    x = np.asarray(x, dtype=np.float64)
    w = np.ones(x.shape[0]) if w is None else np.asarray(w, dtype=np.float64)
    if not ignore_nan:
        # Shift by the median first: np.average sums rows one after the other,
        # which loses digits on data with a large offset.
        shift = np.median(x, axis=0)
        mean = np.average(x - shift, axis=0, weights=w)
        var = np.average((x - shift - mean) ** 2, axis=0, weights=w)
        return mean + shift, var, np.full(x.shape[1], w.sum())
    mean, var, wsum = [], [], []
    for col in x.T:
        keep = ~np.isnan(col)
        if w[keep].sum() == 0:
            mean.append(0.0), var.append(0.0), wsum.append(0.0)
            continue
        m = np.average(col[keep], weights=w[keep])
        mean.append(m)
        var.append(np.average((col[keep] - m) ** 2, weights=w[keep]))
        wsum.append(w[keep].sum())
    return np.array(mean), np.array(var), np.array(wsum)


def ref_forward(z, gamma, beta, epsilon, activation, w=None):
    mean, var, _ = ref_stats(z, w)
    z = np.asarray(z, dtype=np.float64)
    y = gamma * (z - mean) / np.sqrt(var + epsilon) + beta
    return ref_activation(activation, y), mean, var, y


def ref_backward(da, z, gamma, beta, epsilon, activation, w=None):
    """Closed form: with y = gamma * z_hat + beta and g = dL/dy,

    dbeta = sum g, dgamma = sum g z_hat,
    dz = gamma / std * (g - w / W * (dbeta + z_hat * dgamma)).
    """
    z = np.asarray(z, dtype=np.float64)
    n = z.shape[0]
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    mean, var, _ = ref_stats(z, w)
    std = np.sqrt(var + epsilon)
    z_hat = (z - mean) / std
    y = gamma * z_hat + beta
    g = np.asarray(da, dtype=np.float64) * ref_derivative(activation, y)
    dbeta = g.sum(axis=0)
    dgamma = (g * z_hat).sum(axis=0)
    dz = gamma / std * (g - w[:, None] / w.sum() * (dbeta + z_hat * dgamma))
    return dz, dgamma, dbeta


# ---------------------------------------------------------------------------
# Helpers.


def make_layer(shape, dtype, seed=0, offset=1.0, scale=2.0):
    rng = np.random.default_rng(seed)
    n_rows, n_cols = shape
    z = (rng.standard_normal(shape) * scale + offset).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, n_cols).astype(dtype)
    beta = rng.uniform(-0.5, 0.5, n_cols).astype(dtype)
    da = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0, 2, n_rows).astype(dtype)
    w[::3] = 0  # zero weights are allowed
    if w.sum() == 0:
        w[-1] = 1
    return z, gamma, beta, da, w


def readonly(*arrays):
    out = []
    for a in arrays:
        a = a.copy()
        a.setflags(write=False)
        out.append(a)
    return out


def forward(z, gamma, beta, w=None, epsilon=EPS, activation="identity", a_out=None):
    n_cols = z.shape[1]
    a = np.empty_like(z) if a_out is None else a_out
    mean = np.empty(n_cols)
    var = np.empty(n_cols)
    _batchnorm.bn_forward_train(z, gamma, beta, a, mean, var, w, epsilon, activation)
    return a, mean, var


def backward(
    da,
    a,
    z,
    gamma,
    beta,
    mean,
    var,
    w=None,
    epsilon=EPS,
    activation="identity",
    dz_out=None,
):
    dz = np.empty_like(z) if dz_out is None else dz_out
    dgamma = np.empty_like(gamma)
    dbeta = np.empty_like(gamma)
    _batchnorm.bn_backward(
        da, a, z, gamma, beta, mean, var, dz, dgamma, dbeta, w, epsilon, activation
    )
    return dz, dgamma, dbeta


def stats_tol(dtype, scale=1.0):
    """Statistics are accumulated in double; in float32 the deviations from
    the shift and their sums over runs of 32 rows are formed in float32:
    relative errors of order 1e-7 that do not grow with the number of rows."""
    if dtype == np.float32:
        return {
            "mean": {"rtol": 1e-7, "atol": 1e-7 * scale},
            "var": {"rtol": 2e-6, "atol": 1e-12 * scale**2},
        }
    return {
        "mean": {"rtol": 1e-12, "atol": 1e-13 * scale},
        "var": {"rtol": 1e-10, "atol": 1e-13 * scale**2},
    }


def tol(dtype, scale=1.0):
    if dtype == np.float32:
        return {"rtol": 2e-5, "atol": 2e-5 * scale}
    return {"rtol": 1e-10, "atol": 1e-11 * scale}


# ---------------------------------------------------------------------------
# batch_stats


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_batch_stats_matches_numpy(dtype, shape, weighted):
    z, _, _, _, w = make_layer(shape, dtype)
    w = w if weighted else None
    (x_ro,) = readonly(z)
    w_ro = None if w is None else readonly(w)[0]
    mean, var, wsum = _batchnorm.batch_stats(x_ro, w_ro)
    ref_mean, ref_var, ref_wsum = ref_stats(z, w)
    for arr in (mean, var, wsum):
        assert arr.dtype == np.float64 and arr.shape == (shape[1],)
    # Accumulated in double precision from the (exact) float32 values.
    st_tol = stats_tol(dtype, scale=10)
    assert_allclose(mean, ref_mean, **st_tol["mean"])
    assert_allclose(var, ref_var, **st_tol["var"])
    assert_allclose(wsum, ref_wsum, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_stats_constant_columns_are_exact(dtype):
    x = np.empty((1000, 4), dtype=dtype)
    x[:] = np.array([3.1, -1e4, 0.0, 1e-30], dtype=dtype)
    mean, var, _ = _batchnorm.batch_stats(x)
    assert_array_equal(mean, x[0].astype(np.float64))
    assert_array_equal(var, 0.0)
    one_row = x[:1].copy()
    mean, var, wsum = _batchnorm.batch_stats(one_row)
    assert_array_equal(mean, one_row[0].astype(np.float64))
    assert_array_equal(var, 0.0)
    assert_array_equal(wsum, 1.0)


@pytest.mark.parametrize("n_rows", [100, 20_000])
def test_batch_stats_float32_large_offset(n_rows):
    # mean 1e4, std 1: a float32 accumulation would lose most digits of the
    # variance; the kernel accumulates in double.
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((n_rows, 64))).astype(np.float32)
    mean, var, _ = _batchnorm.batch_stats(x)
    ref_mean, ref_var, _ = ref_stats(x)
    # The deviations from the shift are exact here (Sterbenz), the variance
    # is as accurate as in float64.
    assert_allclose(mean, ref_mean, rtol=1e-13)
    assert_allclose(var, ref_var, rtol=1e-6)


def test_batch_stats_outliers_and_drift_float64():
    # The first row (the first block's shift) is far from the mean, and the
    # data drift from block to block: still as accurate as two passes.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30_000, 8))
    x[0] = 1e8
    x[:, 1] += np.linspace(0, 1e6, x.shape[0])
    x[:, 2] = 1e9 + rng.standard_normal(x.shape[0]) * 1e-3
    mean, var, _ = _batchnorm.batch_stats(x)
    ref_mean, ref_var, _ = ref_stats(x)
    assert_allclose(mean, ref_mean, rtol=1e-13)
    assert_allclose(var, ref_var, rtol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_stats_weights_act_as_repeat_counts(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 6)).astype(dtype)
    counts = rng.integers(0, 4, 50)
    counts[0] = 1
    mean, var, wsum = _batchnorm.batch_stats(x, counts.astype(dtype))
    ref_mean, ref_var, _ = _batchnorm.batch_stats(np.repeat(x, counts, axis=0))
    st_tol = stats_tol(dtype)
    assert_allclose(mean, ref_mean, **st_tol["mean"])
    assert_allclose(var, ref_var, **st_tol["var"])
    assert_array_equal(wsum, counts.sum())


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_stats_zero_weights_drop_rows(dtype):
    z, _, _, _, w = make_layer((200, 9), dtype, seed=3)
    keep = w != 0
    mean, var, _ = _batchnorm.batch_stats(z, w)
    ref_mean, ref_var, _ = _batchnorm.batch_stats(z[keep], w[keep])
    st_tol = stats_tol(dtype, scale=10)
    assert_allclose(mean, ref_mean, **st_tol["mean"])
    assert_allclose(var, ref_var, **st_tol["var"])


def test_batch_stats_zero_sum_weights_give_zeros():
    # Documented: columns with no weight get mean 0, variance 0, weight sum 0
    # (the estimators decide whether that is an error).
    x = np.ones((4, 3))
    mean, var, wsum = _batchnorm.batch_stats(x, np.zeros(4))
    assert_array_equal(mean, 0)
    assert_array_equal(var, 0)
    assert_array_equal(wsum, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_batch_stats_ignore_nan(dtype, weighted):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 6)).astype(dtype)
    x[::3, 1] = np.nan
    x[:, 2] = np.nan  # an all-NaN column
    x[5:, 3] = np.nan  # a column with five values
    w = rng.uniform(0.5, 2, 300).astype(dtype) if weighted else None
    mean, var, wsum = _batchnorm.batch_stats(x, w, True)
    ref_mean, ref_var, ref_wsum = ref_stats(x, w, ignore_nan=True)
    assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-14)
    assert_allclose(var, ref_var, rtol=1e-11)
    assert_allclose(wsum, ref_wsum, rtol=1e-12)
    assert mean[2] == var[2] == wsum[2] == 0
    # Without ignore_nan, NaN propagates to exactly the columns that have one.
    mean, var, _ = _batchnorm.batch_stats(x, w)
    assert_array_equal(np.isnan(mean), [False, True, True, True, False, False])
    assert_array_equal(np.isnan(var), [False, True, True, True, False, False])


def test_batch_stats_no_rows():
    mean, var, wsum = _batchnorm.batch_stats(np.empty((0, 3)))
    assert_array_equal(mean, 0)
    assert_array_equal(var, 0)
    assert_array_equal(wsum, 0)


# ---------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_train_matches_numpy(dtype, shape, activation, weighted):
    z, gamma, beta, _, w = make_layer(shape, dtype)
    w = w if weighted else None
    z_ro, gamma_ro, beta_ro = readonly(z, gamma, beta)
    w_ro = None if w is None else readonly(w)[0]
    a, mean, var = forward(z_ro, gamma_ro, beta_ro, w_ro, EPS, activation)
    ref_a, ref_mean, ref_var, _ = ref_forward(z, gamma, beta, EPS, activation, w)
    assert a.dtype == dtype
    st_tol = stats_tol(dtype, scale=10)
    assert_allclose(mean, ref_mean, **st_tol["mean"])
    assert_allclose(var, ref_var, **st_tol["var"])
    assert_allclose(a, ref_a, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_train_in_place(dtype, activation):
    z, gamma, beta, _, w = make_layer((33, 700), dtype)
    a, mean, var = forward(z, gamma, beta, w, EPS, activation)
    z2 = z.copy()
    a2, mean2, var2 = forward(z2, gamma, beta, w, EPS, activation, a_out=z2)
    assert a2 is z2
    assert_array_equal(a2, a)
    assert_array_equal(mean2, mean)
    assert_array_equal(var2, var)


def test_forward_train_float32_large_offset():
    # mean 1e4, std 1: z * scale + (beta - mean * scale) would cancel in
    # float32; the kernel centers first.
    rng = np.random.default_rng(5)
    z = (1e4 + rng.standard_normal((256, 32))).astype(np.float32)
    gamma = np.ones(32, np.float32)
    beta = np.zeros(32, np.float32)
    a, _, _ = forward(z, gamma, beta)
    ref_a, *_ = ref_forward(z, gamma, beta, EPS, "identity")
    assert_allclose(a, ref_a, atol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_train_constant_columns(dtype, activation):
    z, gamma, beta, _, _ = make_layer((20, 4), dtype)
    z[:, 1] = 7.25
    z[:, 3] = 0
    a, mean, var = forward(z, gamma, beta, None, EPS, activation)
    assert var[1] == var[3] == 0
    assert mean[1] == 7.25
    # A constant column normalizes to 0: the output is act(beta).
    ref = ref_activation(activation, beta.astype(np.float64))
    assert_allclose(a[:, 1], np.full(20, ref[1]), **tol(dtype))
    assert_allclose(a[:, 3], np.full(20, ref[3]), **tol(dtype))


# Inference-mode batch norm is the folded network's: see test_training.py
# (test_folded_layer_is_batch_norm_in_inference_mode and those after it).


# ---------------------------------------------------------------------------
# Backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_backward_matches_numpy(dtype, shape, activation, weighted):
    z, gamma, beta, da, w = make_layer(shape, dtype)
    w = w if weighted else None
    a, mean, var = forward(z, gamma, beta, w, EPS, activation)
    args = readonly(da, a, z, gamma, beta, mean, var)
    w_ro = None if w is None else readonly(w)[0]
    dz, dgamma, dbeta = backward(*args, w_ro, EPS, activation)
    ref_dz, ref_dgamma, ref_dbeta = ref_backward(da, z, gamma, beta, EPS, activation, w)
    for out in (dz, dgamma, dbeta):
        assert out.dtype == dtype
    n = shape[0]
    assert_allclose(dbeta, ref_dbeta, **tol(dtype, scale=np.sqrt(n)))
    assert_allclose(dgamma, ref_dgamma, **tol(dtype, scale=np.sqrt(n)))
    # dz is of order gamma / std; a single row gives dz = 0 up to rounding.
    assert_allclose(dz, ref_dz, **tol(dtype, scale=10))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 13), (40, 1030)])
@pytest.mark.parametrize("weighted", [False, True])
def test_backward_relu_mask_is_the_forward_one(dtype, shape, weighted):
    # ReLU's backward recomputes y = (z - center) * scale + shift from z,
    # gamma and beta, and never reads a: its mask must be exactly a > 0, also
    # where y is within rounding of 0 (beta puts row 0 on the kink).
    z, gamma, beta, da, w = make_layer(shape, dtype, seed=12)
    w = w if weighted else None
    _, mean, var = forward(z, gamma, beta, w, EPS, "relu")
    x_hat0 = (z[0] - mean) / np.sqrt(var + EPS)
    beta = (-gamma * x_hat0).astype(dtype)
    a, mean, var = forward(z, gamma, beta, w, EPS, "relu")
    assert 0 < np.count_nonzero(a[0]) < shape[1]  # both sides of the kink
    garbage = np.full_like(a, np.nan)
    dz, dgamma, dbeta = backward(da, garbage, z, gamma, beta, mean, var, w, EPS, "relu")
    # The identity's backward on da * (a > 0) is the same computation.
    masked = np.where(a > 0, da, 0).astype(dtype)
    dz2, dgamma2, dbeta2 = backward(
        masked, a, z, gamma, beta, mean, var, w, EPS, "identity"
    )
    close = (
        {"rtol": 1e-5, "atol": 1e-5}
        if dtype == np.float32
        else {"rtol": 1e-12, "atol": 1e-12}
    )
    assert_allclose(dbeta, dbeta2, **close)
    assert_allclose(dgamma, dgamma2, **close)
    assert_allclose(dz, dz2, **close)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_backward_in_place(dtype, activation, weighted):
    z, gamma, beta, da, w = make_layer((41, 600), dtype)
    w = w if weighted else None
    a, mean, var = forward(z, gamma, beta, w, EPS, activation)
    dz, dgamma, dbeta = backward(da, a, z, gamma, beta, mean, var, w, EPS, activation)
    buf = da.copy()
    dz2, dgamma2, dbeta2 = backward(
        buf, a, z, gamma, beta, mean, var, w, EPS, activation, dz_out=buf
    )
    assert dz2 is buf
    assert_array_equal(dz2, dz)
    assert_array_equal(dgamma2, dgamma)
    assert_array_equal(dbeta2, dbeta)


def test_backward_float32_large_offset():
    rng = np.random.default_rng(7)
    shape = (128, 16)
    z = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    gamma = np.ones(16, np.float32)
    beta = np.full(16, 0.1, np.float32)
    da = rng.standard_normal(shape).astype(np.float32)
    a, mean, var = forward(z, gamma, beta, None, EPS, "relu")
    dz, dgamma, dbeta = backward(da, a, z, gamma, beta, mean, var, None, EPS, "relu")
    ref_dz, ref_dgamma, ref_dbeta = ref_backward(da, z, gamma, beta, EPS, "relu")
    assert_allclose(dgamma, ref_dgamma, rtol=1e-4, atol=1e-4)
    assert_allclose(dbeta, ref_dbeta, rtol=1e-4, atol=1e-4)
    assert_allclose(dz, ref_dz, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_backward_column_sums_of_dz_vanish(dtype, weighted):
    # sum_i dz_i = gamma / std * (dbeta - dbeta - dgamma * mean_w(z_hat)) = 0.
    z, gamma, beta, da, w = make_layer((300, 20), dtype, seed=8)
    w = w if weighted else None
    a, mean, var = forward(z, gamma, beta, w, EPS, "tanh")
    dz, _, _ = backward(da, a, z, gamma, beta, mean, var, w, EPS, "tanh")
    scale = np.abs(dz).sum(axis=0)
    assert np.all(np.abs(dz.astype(np.float64).sum(axis=0)) <= 1e-5 * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_columns_are_independent_across_tiles(dtype):
    # Reductions run over tiles of at most 512 columns of a block of rows:
    # the columns of a wide layer give what they give on their own.
    z, gamma, beta, da, w = make_layer((301, 1100), dtype, seed=9)
    a, mean, var = forward(z, gamma, beta, w, EPS, "relu")
    dz, dgamma, dbeta = backward(da, a, z, gamma, beta, mean, var, w, EPS, "relu")
    cols = slice(500, 530)
    sub = [np.ascontiguousarray(x[:, cols]) for x in (z, da)]
    a2, mean2, var2 = forward(
        sub[0], gamma[cols].copy(), beta[cols].copy(), w, EPS, "relu"
    )
    dz2, dgamma2, dbeta2 = backward(
        sub[1],
        a2,
        sub[0],
        gamma[cols].copy(),
        beta[cols].copy(),
        mean2,
        var2,
        w,
        EPS,
        "relu",
    )
    # Not bit-identical: a column may fall in a vectorized loop or its tail.
    close = (
        {"rtol": 1e-5, "atol": 1e-5}
        if dtype == np.float32
        else {"rtol": 1e-13, "atol": 1e-13}
    )
    st_tol = stats_tol(dtype, scale=10)
    assert_allclose(mean2, mean[cols], **st_tol["mean"])
    assert_allclose(var2, var[cols], **st_tol["var"])
    assert_allclose(a2, a[:, cols], **close)
    assert_allclose(dgamma2, dgamma[cols], **close)
    assert_allclose(dbeta2, dbeta[cols], **close)
    assert_allclose(dz2, dz[:, cols], **close)


# ---------------------------------------------------------------------------
# Central-difference gradient checks (float64), through the forward kernel.


def _loss(z, gamma, beta, da, w, activation):
    a, _, _ = forward(z, gamma, beta, w, EPS, activation)
    return float(np.sum(da * a))


def _numeric_gradient(f, x, h=1e-6):
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        up = f()
        flat[k] = old - h
        down = f()
        flat[k] = old
        gflat[k] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(6, 4), (2, 3), (9, 1)])
def test_backward_gradient_check(activation, weighted, shape):
    z, gamma, beta, da, w = make_layer(shape, np.float64, seed=10)
    w = w if weighted else None
    a, mean, var = forward(z, gamma, beta, w, EPS, activation)
    _, _, _, y = ref_forward(z, gamma, beta, EPS, activation, w)
    # Keep away from the ReLU kink, where differences are not derivatives.
    assert np.min(np.abs(y)) > 1e-4
    dz, dgamma, dbeta = backward(da, a, z, gamma, beta, mean, var, w, EPS, activation)

    def loss():
        return _loss(z, gamma, beta, da, w, activation)

    assert_allclose(dz, _numeric_gradient(loss, z), rtol=1e-6, atol=1e-8)
    assert_allclose(dgamma, _numeric_gradient(loss, gamma), rtol=1e-6, atol=1e-8)
    assert_allclose(dbeta, _numeric_gradient(loss, beta), rtol=1e-6, atol=1e-8)
    # The closed-form numpy reference agrees with the differences too.
    ref_dz, ref_dgamma, ref_dbeta = ref_backward(da, z, gamma, beta, EPS, activation, w)
    assert_allclose(ref_dz, dz, rtol=1e-9, atol=1e-12)
    assert_allclose(ref_dgamma, dgamma, rtol=1e-9, atol=1e-12)
    assert_allclose(ref_dbeta, dbeta, rtol=1e-9, atol=1e-12)


def test_backward_gradient_check_zero_epsilon():
    # epsilon = 0 is allowed when no column is constant.
    z, gamma, beta, da, _ = make_layer((5, 3), np.float64, seed=11)
    a, mean, var = forward(z, gamma, beta, None, 0.0, "tanh")
    dz, dgamma, dbeta = backward(da, a, z, gamma, beta, mean, var, None, 0.0, "tanh")

    def loss():
        a, _, _ = forward(z, gamma, beta, None, 0.0, "tanh")
        return float(np.sum(da * a))

    assert_allclose(dz, _numeric_gradient(loss, z), rtol=1e-6, atol=1e-8)
    assert_allclose(dgamma, _numeric_gradient(loss, gamma), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# Running statistics


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("n_samples", [1.0, 2.0, 37.0, 12.5])
def test_update_running_stats(dtype, momentum, n_samples):
    rng = np.random.default_rng(12)
    running_mean = rng.standard_normal(7).astype(dtype)
    running_var = rng.uniform(0.5, 2, 7).astype(dtype)
    mean = rng.standard_normal(7)
    var = rng.uniform(0, 3, 7)
    mean_ro, var_ro = readonly(mean, var)
    expected_mean = (1 - momentum) * running_mean + momentum * mean
    correction = n_samples / (n_samples - 1) if n_samples > 1 else 1.0
    expected_var = (1 - momentum) * running_var + momentum * var * correction
    _batchnorm.update_running_stats(
        running_mean, running_var, mean_ro, var_ro, momentum, n_samples
    )
    assert running_mean.dtype == running_var.dtype == dtype
    assert_allclose(running_mean, expected_mean, **tol(dtype))
    assert_allclose(running_var, expected_var, **tol(dtype))


def test_update_running_stats_pytorch_convention():
    # The first batch with momentum 1 sets the unbiased batch variance.
    x = np.random.default_rng(13).standard_normal((10, 3))
    mean, var, wsum = _batchnorm.batch_stats(x)
    running_mean, running_var = np.zeros(3), np.ones(3)
    _batchnorm.update_running_stats(running_mean, running_var, mean, var, 1.0, 10)
    assert_allclose(running_mean, x.mean(axis=0), rtol=1e-14)
    assert_allclose(running_var, x.var(axis=0, ddof=1), rtol=1e-14)


def test_unbiased_counts_rule():
    # m = the weight sum, or below 2 the number of rows with positive weight.
    weight_sum = np.array([0.0, 0.5, 1.0, 1.99, 2.0, 2.5, 10.0, 7.0])
    n_positive = np.array([0.0, 3.0, 1.0, 40.0, 5.0, 1.0, 10.0, 7.0])
    m = _batchnorm.unbiased_counts(weight_sum, n_positive)
    assert m.dtype == np.float64
    assert_array_equal(m, [0.0, 3.0, 1.0, 40.0, 2.0, 2.5, 10.0, 7.0])
    ro = weight_sum.copy()
    ro.flags.writeable = False
    assert_array_equal(_batchnorm.unbiased_counts(ro, n_positive), m)
    assert _batchnorm.unbiased_counts(np.zeros(0), np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="same length"):
        _batchnorm.unbiased_counts(weight_sum, n_positive[:3])


# ---------------------------------------------------------------------------
# Property-based tests


@st.composite
def layers(draw):
    n_rows = draw(st.integers(1, 40))
    n_cols = draw(st.integers(1, 70))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    offset = draw(st.sampled_from([0.0, 1.0, -50.0, 1e3]))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    weighted = draw(st.booleans())
    activation = draw(st.sampled_from(ACTIVATIONS))
    rng = np.random.default_rng(seed)
    z = (offset + scale * rng.standard_normal((n_rows, n_cols))).astype(dtype)
    if draw(st.booleans()):
        z[:, rng.integers(n_cols)] = dtype(offset)  # a constant column
    w = rng.uniform(0, 3, n_rows).astype(dtype) if weighted else None
    if w is not None and w.sum() == 0:
        w[0] = 1
    gamma = rng.uniform(-2, 2, n_cols).astype(dtype)
    beta = rng.uniform(-1, 1, n_cols).astype(dtype)
    da = rng.standard_normal((n_rows, n_cols)).astype(dtype)
    return z, gamma, beta, da, w, activation


@settings(max_examples=60, deadline=None)
@given(layers())
def test_property_forward_backward_match_numpy(layer):
    z, gamma, beta, da, w, activation = layer
    dtype = z.dtype.type
    mean, var, _ = _batchnorm.batch_stats(z, w)
    ref_mean, ref_var, _ = ref_stats(z, w)
    spread = np.abs(z.astype(np.float64)).max(axis=0) + 1
    st_tol = stats_tol(dtype, scale=spread.max())
    assert_allclose(mean, ref_mean, **st_tol["mean"])
    assert_allclose(var, ref_var, **st_tol["var"])

    a, mean, var = forward(z, gamma, beta, w, EPS, activation)
    ref_a, *_ = ref_forward(z, gamma, beta, EPS, activation, w)
    # Normalized values reach |z - mean| / sqrt(eps) when var << eps... but
    # never more than about sqrt(n); float32 rounding is relative to that.
    bound = 4 * np.sqrt(z.shape[0]) + 4
    f32 = dtype == np.float32
    assert_allclose(
        a, ref_a, rtol=1e-4 if f32 else 1e-9, atol=(3e-5 if f32 else 1e-11) * bound
    )

    dz, dgamma, dbeta = backward(da, a, z, gamma, beta, mean, var, w, EPS, activation)
    ref_dz, ref_dgamma, ref_dbeta = ref_backward(da, z, gamma, beta, EPS, activation, w)
    if activation == "relu":
        # Rounding can flip a ReLU mask where y is within rounding of 0.
        _, _, _, y = ref_forward(z, gamma, beta, EPS, activation, w)
        if np.min(np.abs(y)) < (1e-4 if f32 else 1e-10) * bound:
            return
    g_scale = np.abs(da).sum(axis=0).max() * bound + 1
    assert_allclose(
        dbeta,
        ref_dbeta,
        rtol=1e-4 if f32 else 1e-9,
        atol=(3e-5 if f32 else 1e-11) * g_scale,
    )
    assert_allclose(
        dgamma,
        ref_dgamma,
        rtol=1e-4 if f32 else 1e-9,
        atol=(3e-5 if f32 else 1e-11) * g_scale,
    )
    dz_scale = np.abs(gamma).max() / np.sqrt(var.min() + EPS) * g_scale
    assert_allclose(
        dz, ref_dz, rtol=1e-4 if f32 else 1e-8, atol=(3e-5 if f32 else 1e-11) * dz_scale
    )
    # Invariant: each column of dz sums to zero (up to rounding of its terms).
    column_sums = np.abs(dz.astype(np.float64).sum(axis=0))
    assert np.all(column_sums <= (3e-5 if f32 else 1e-11) * dz_scale * z.shape[0])


# ---------------------------------------------------------------------------
# Malformed input


def _good(dtype=np.float64, shape=(5, 3)):
    z, gamma, beta, da, w = make_layer(shape, dtype)
    a = np.empty_like(z)
    mean = np.empty(shape[1])
    var = np.empty(shape[1])
    return dict(
        z=z,
        gamma=gamma,
        beta=beta,
        a_out=a,
        mean_out=mean,
        var_out=var,
        sample_weight=w,
    )


def _call_forward(**kw):
    args = _good()
    args.update(kw)
    epsilon = args.pop("epsilon", EPS)
    activation = args.pop("activation", "relu")
    _batchnorm.bn_forward_train(
        args["z"],
        args["gamma"],
        args["beta"],
        args["a_out"],
        args["mean_out"],
        args["var_out"],
        args["sample_weight"],
        epsilon,
        activation,
    )


def _call_backward(**kw):
    g = _good()
    a, mean, var = forward(g["z"], g["gamma"], g["beta"], None, EPS, "relu")
    args = dict(
        da=g["z"].copy(),
        a=a,
        z=g["z"],
        gamma=g["gamma"],
        beta=g["beta"],
        mean=mean,
        var=var,
        dz_out=np.empty_like(a),
        dgamma_out=np.empty(3),
        dbeta_out=np.empty(3),
        sample_weight=None,
        epsilon=EPS,
        activation="relu",
    )
    args.update(kw)
    _batchnorm.bn_backward(**args)


def test_well_formed_calls_pass():
    _call_forward()
    _call_backward()


@pytest.mark.parametrize(
    "kw",
    [
        dict(z=np.ones((5, 4))),
        dict(z=np.ones(5)),
        dict(gamma=np.ones(4)),
        dict(beta=np.ones((3, 1))),
        dict(a_out=np.empty((5, 4))),
        dict(a_out=np.empty((4, 3))),
        dict(mean_out=np.empty(2)),
        dict(var_out=np.empty(4)),
        dict(sample_weight=np.ones(4)),
    ],
)
def test_forward_wrong_shapes(kw):
    with pytest.raises(ValueError, match="shape|2-D"):
        _call_forward(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(z=np.ones((5, 3), dtype=np.int64)),
        dict(z=np.ones((5, 3), dtype=np.float16)),
        dict(z=np.ones((5, 3), dtype=np.complex128)),
        dict(gamma=np.ones(3, dtype=np.float32)),
        dict(beta=np.ones(3, dtype=np.int32)),
        dict(a_out=np.empty((5, 3), dtype=np.float32)),
        dict(mean_out=np.empty(3, dtype=np.float32)),
        dict(sample_weight=np.ones(5, dtype=np.int64)),
        dict(z=[[1.0, 2.0, 3.0]] * 5),
        dict(gamma=[1.0, 1.0, 1.0]),
    ],
)
def test_forward_wrong_dtypes_or_types(kw):
    with pytest.raises(TypeError):
        _call_forward(**kw)


def test_forward_float32_needs_float32_everywhere_but_statistics():
    g = _good(np.float32)
    _batchnorm.bn_forward_train(
        g["z"],
        g["gamma"],
        g["beta"],
        g["a_out"],
        g["mean_out"],
        g["var_out"],
        g["sample_weight"],
    )
    with pytest.raises(TypeError, match="gamma"):
        _batchnorm.bn_forward_train(
            g["z"],
            g["gamma"].astype(np.float64),
            g["beta"],
            g["a_out"],
            g["mean_out"],
            g["var_out"],
        )
    with pytest.raises(TypeError, match="var_out"):
        _batchnorm.bn_forward_train(
            g["z"],
            g["gamma"],
            g["beta"],
            g["a_out"],
            g["mean_out"],
            g["var_out"].astype(np.float32),
        )


@pytest.mark.parametrize(
    "kw",
    [
        dict(z=np.ones((3, 5)).T),
        dict(z=np.ones((10, 3))[::2]),
        dict(a_out=np.asfortranarray(np.empty((5, 3)))),
        dict(gamma=np.ones(6)[::2]),
        dict(mean_out=np.empty(6)[::2]),
    ],
)
def test_forward_non_contiguous(kw):
    with pytest.raises(ValueError, match="contiguous"):
        _call_forward(**kw)


def test_forward_read_only_output():
    a = np.empty((5, 3))
    a.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _call_forward(a_out=a)
    m = np.empty(3)
    m.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _call_forward(mean_out=m)


def test_forward_byte_swapped():
    with pytest.raises(ValueError, match="byte order"):
        _call_forward(z=np.ones((5, 3), dtype=">f8"))


@pytest.mark.parametrize("activation", ["softmax", "ReLU", "", None, 1, ["relu"]])
def test_unknown_activation(activation):
    with pytest.raises(ValueError, match="activation"):
        _call_forward(activation=activation)
    with pytest.raises(ValueError, match="activation"):
        _call_backward(activation=activation)


@pytest.mark.parametrize("epsilon", [-1e-5, -np.inf, np.nan])
def test_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        _call_forward(epsilon=epsilon)
    with pytest.raises(ValueError, match="epsilon"):
        _call_backward(epsilon=epsilon)


@pytest.mark.parametrize(
    "weights",
    [np.zeros(5), np.array([1.0, -1, 0, 0, 0]), np.array([np.nan, 1, 1, 1, 1])],
)
def test_weights_not_summing_to_a_positive_number(weights):
    with pytest.raises(ValueError, match="sample weights"):
        _call_forward(sample_weight=weights)
    with pytest.raises(ValueError, match="sample weights"):
        _call_backward(sample_weight=weights)


def test_no_rows():
    z = np.empty((0, 3))
    v = np.ones(3)
    with pytest.raises(ValueError, match="at least one row"):
        _batchnorm.bn_forward_train(z, v, v, z.copy(), v.copy(), v.copy())
    with pytest.raises(ValueError, match="at least one row"):
        _batchnorm.bn_backward(z, z, z, v, v, v, v, z.copy(), v.copy(), v.copy())


def test_no_columns_is_a_no_op():
    z = np.empty((4, 0))
    e = np.empty(0)
    _batchnorm.bn_forward_train(z, e, e, z.copy(), e.copy(), e.copy())
    _batchnorm.bn_backward(z, z, z, e, e, e, e, z.copy(), e.copy(), e.copy())


def test_zero_epsilon_with_a_constant_column():
    g = _good()
    g["z"][:, 1] = 2.0
    a_before = g["a_out"].copy()
    with pytest.raises(ValueError, match="zero variance"):
        _batchnorm.bn_forward_train(
            g["z"],
            g["gamma"],
            g["beta"],
            g["a_out"],
            g["mean_out"],
            g["var_out"],
            None,
            0.0,
        )
    assert_array_equal(g["a_out"], a_before)  # nothing written


def test_backward_rejects_non_positive_variance():
    with pytest.raises(ValueError, match="var"):
        _call_backward(var=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="var"):
        _call_backward(var=np.array([1.0, 0.0, 1.0]), epsilon=0.0)
    with pytest.raises(ValueError, match="var"):
        _call_backward(var=np.array([1.0, np.nan, 1.0]))


@pytest.mark.parametrize(
    "kw",
    [
        dict(da=np.ones((5, 4))),
        dict(a=np.ones((4, 3))),
        dict(dz_out=np.empty((5, 2))),
        dict(gamma=np.ones(2)),
        dict(beta=np.ones(4)),
        dict(mean=np.ones(4)),
        dict(var=np.ones(2)),
        dict(dgamma_out=np.empty(4)),
        dict(dbeta_out=np.empty(2)),
        dict(sample_weight=np.ones(6)),
    ],
)
def test_backward_wrong_shapes(kw):
    with pytest.raises(ValueError, match="shape"):
        _call_backward(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(da=np.ones((5, 3), dtype=np.float32)),
        dict(beta=np.ones(3, dtype=np.float32)),
        dict(mean=np.ones(3, dtype=np.float32)),
        dict(dz_out=np.empty((5, 3), dtype=np.int64)),
        dict(dbeta_out=np.empty(3, dtype=np.float32)),
        dict(sample_weight=np.ones(5, dtype=np.float32)),
        dict(a=None),
    ],
)
def test_backward_wrong_dtypes_or_types(kw):
    with pytest.raises(TypeError):
        _call_backward(**kw)


def test_backward_non_contiguous_and_read_only():
    with pytest.raises(ValueError, match="contiguous"):
        _call_backward(da=np.ones((5, 6))[:, ::2])
    out = np.empty((5, 3))
    out.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _call_backward(dz_out=out)


def test_batch_stats_rejects_bad_input():
    x = np.ones((4, 3))
    with pytest.raises(TypeError):
        _batchnorm.batch_stats(x.astype(int))
    with pytest.raises(TypeError):
        _batchnorm.batch_stats(x, np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        _batchnorm.batch_stats(x, np.ones(5))
    with pytest.raises(ValueError, match="2-D"):
        _batchnorm.batch_stats(np.ones(4))
    with pytest.raises(ValueError, match="contiguous"):
        _batchnorm.batch_stats(np.asfortranarray(np.ones((4, 3))))


def test_update_running_stats_rejects_bad_input():
    rm, rv, m, v = np.zeros(3), np.ones(3), np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="momentum"):
        _batchnorm.update_running_stats(rm, rv, m, v, 1.5, 10)
    with pytest.raises(ValueError, match="momentum"):
        _batchnorm.update_running_stats(rm, rv, m, v, np.nan, 10)
    with pytest.raises(ValueError, match="shape"):
        _batchnorm.update_running_stats(rm, np.ones(4), m, v, 0.1, 10)
    with pytest.raises(TypeError):
        _batchnorm.update_running_stats(rm.astype(np.float32), rv, m, v, 0.1, 10)
    with pytest.raises(TypeError):
        _batchnorm.update_running_stats(rm, rv, m.astype(np.float32), v, 0.1, 10)
    ro = np.zeros(3)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _batchnorm.update_running_stats(ro, rv, m, v, 0.1, 10)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        _batchnorm.update_running_stats([0.0, 0.0, 0.0], rv, m, v, 0.1, 10)
    with pytest.raises(TypeError, match="float32 or float64"):
        _batchnorm.update_running_stats(rm.astype(np.int64), rv, m, v, 0.1, 10)
    with pytest.raises(ValueError, match="1-D"):
        _batchnorm.update_running_stats(np.zeros(()), rv, m, v, 0.1, 10)
    with pytest.raises(ValueError, match="1-D"):
        _batchnorm.update_running_stats(np.zeros((1, 3)), rv, m, v, 0.1, 10)
    e = np.empty(0)
    _batchnorm.update_running_stats(
        e, e.copy(), e.copy(), e.copy(), 0.1, 10
    )  # no columns


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_epsilon_checks_the_variance_before_writing(dtype):
    # With epsilon=0 the statistics are computed and checked first (float32
    # and float64 take separate paths).
    g = _good()
    z = g["z"].astype(dtype)
    z[:, 2] = -1.5
    a = np.full_like(z, 7.0)
    mean, var = np.empty(z.shape[1]), np.empty(z.shape[1])
    gamma, beta = g["gamma"].astype(dtype), g["beta"].astype(dtype)
    with pytest.raises(ValueError, match="column 2 has zero variance"):
        _batchnorm.bn_forward_train(z, gamma, beta, a, mean, var, None, 0.0)
    assert (a == 7.0).all()
    z[:, 2] = np.arange(z.shape[0])
    _batchnorm.bn_forward_train(z, gamma, beta, a, mean, var, None, 0.0)
    assert_allclose(mean, z.astype(np.float64).mean(axis=0), rtol=1e-6)


def test_batch_stats_of_no_columns():
    for ignore_nan in (False, True):
        mean, var, wsum = _batchnorm.batch_stats(
            np.empty((5, 0)), ignore_nan=ignore_nan
        )
        assert mean.shape == var.shape == wsum.shape == (0,)
