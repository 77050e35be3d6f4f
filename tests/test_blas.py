"""Tests of the row-major BLAS helpers (sklearn_bn._blas) through their twins.

``gemm(a, b, c_out, trans_a, trans_b, alpha, beta)`` computes
``c_out = alpha * op(a) @ op(b) + beta * c_out`` on C-contiguous arrays and
``axpy(alpha, x, y_out)`` computes ``y_out += alpha * x``; both are compared
with numpy for float32 and float64, every transpose combination and odd
shapes (empty products included).

Malformed input is rejected by Cython's buffer checks and the wrappers' shape
checks: int arrays match no specialization (``TypeError``), mixed float
dtypes raise ``ValueError`` (buffer dtype mismatch), as do non C-contiguous
arrays, a read-only output, inner dimensions that differ and an output of
the wrong shape.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from sklearn_bn import _blas

from reference import DTYPES

# (m, k, n): op(a) is (m, k), op(b) is (k, n).
SHAPES = [
    (1, 1, 1),
    (2, 3, 4),
    (7, 1, 5),
    (1, 9, 1),
    (5, 4, 1),
    (33, 17, 65),
    (3, 0, 4),
    (0, 3, 4),
    (3, 4, 0),
]


def operands(m, k, n, trans_a, trans_b, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    return a, b, c


def reference(a, b, c, trans_a, trans_b, alpha, beta):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    out = alpha * (op_a @ op_b)
    if beta != 0:
        out += beta * c.astype(np.float64)
    return out


def tol(dtype, k):
    if dtype == np.float32:
        return {"rtol": 1e-5, "atol": 1e-5 * max(k, 1)}
    return {"rtol": 1e-12, "atol": 1e-13 * max(k, 1)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)])
def test_gemm_matches_numpy(dtype, shape, trans_a, trans_b, alpha, beta):
    m, k, n = shape
    a, b, c = operands(m, k, n, trans_a, trans_b, dtype)
    expected = reference(a, b, c, trans_a, trans_b, alpha, beta)
    a.setflags(write=False)
    b.setflags(write=False)
    out = c.copy()
    _blas.gemm(a, b, out, trans_a, trans_b, alpha, beta)
    assert out.dtype == dtype
    assert_allclose(out, expected, **tol(dtype, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_beta_zero_ignores_garbage_in_c(dtype):
    # beta = 0 overwrites c_out, NaN included (BLAS semantics), also when the
    # product is empty (k = 0).
    for k in (0, 3):
        a, b, _ = operands(4, k, 5, False, False, dtype)
        out = np.full((4, 5), np.nan, dtype=dtype)
        _blas.gemm(a, b, out)
        assert_allclose(out, a.astype(np.float64) @ b, **tol(dtype, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_hand_checked(dtype):
    a = np.array([[1, 2], [3, 4], [5, 6]], dtype=dtype)  # (3, 2)
    b = np.array([[1, 0, -1], [2, 1, 0]], dtype=dtype)  # (2, 3)
    out = np.zeros((3, 3), dtype=dtype)
    _blas.gemm(a, b, out)
    assert_array_equal(out, [[5, 2, -1], [11, 4, -3], [17, 6, -5]])
    out = np.zeros((2, 2), dtype=dtype)
    _blas.gemm(a, a, out, trans_a=True)  # a.T @ a
    assert_array_equal(out, [[35, 44], [44, 56]])
    out = np.ones((3, 3), dtype=dtype)
    _blas.gemm(a, a, out, trans_b=True, alpha=1.0, beta=-1.0)  # a @ a.T - 1
    assert_array_equal(out, a.astype(np.float64) @ a.T - 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 5, 10_000])
def test_axpy_matches_numpy(dtype, n):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    expected = y.astype(np.float64) + 0.75 * x
    x.setflags(write=False)
    _blas.axpy(0.75, x, y)
    assert y.dtype == dtype
    assert_allclose(y, expected, **tol(dtype, 1))


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(0, 20),
    k=st.integers(0, 20),
    n=st.integers(0, 20),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    alpha=st.floats(-3, 3),
    beta=st.sampled_from([0.0, 1.0, -0.5]),
    seed=st.integers(0, 1000),
)
def test_property_gemm(m, k, n, trans_a, trans_b, dtype, alpha, beta, seed):
    a, b, c = operands(m, k, n, trans_a, trans_b, dtype, seed)
    expected = reference(a, b, c, trans_a, trans_b, alpha, beta)
    out = c.copy()
    _blas.gemm(a, b, out, trans_a, trans_b, alpha, beta)
    scale = np.abs(a).max(initial=0) * np.abs(b).max(initial=0) * abs(alpha) + np.abs(
        c
    ).max(initial=0)
    assert_allclose(
        out,
        expected,
        rtol=tol(dtype, k)["rtol"],
        atol=tol(dtype, k)["atol"] * (scale + 1),
    )


# ---------------------------------------------------------------------------
# Malformed input


def test_gemm_rejects_bad_input():
    a = np.ones((3, 4))
    b = np.ones((4, 2))
    c = np.zeros((3, 2))
    with pytest.raises(ValueError, match="inner dimensions"):
        _blas.gemm(a, b, c, trans_b=True)
    with pytest.raises(ValueError, match="inner dimensions"):
        _blas.gemm(a, np.ones((3, 2)), c)
    with pytest.raises(ValueError, match="c_out has shape"):
        _blas.gemm(a, b, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="c_out has shape"):
        _blas.gemm(a, b, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="dtype mismatch"):
        _blas.gemm(a, b.astype(np.float32), c)
    with pytest.raises(ValueError, match="dtype mismatch"):
        _blas.gemm(a, b, c.astype(np.float32))
    with pytest.raises(TypeError, match="No matching signature"):
        _blas.gemm(a.astype(int), b.astype(int), c.astype(int))
    with pytest.raises(ValueError, match="contiguous"):
        _blas.gemm(a, np.ones((2, 4)).T, c)
    with pytest.raises(ValueError, match="contiguous"):
        _blas.gemm(a, b, np.zeros((3, 4))[:, ::2])
    ro = c.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _blas.gemm(a, b, ro)
    assert_array_equal(c, 0)


def test_axpy_rejects_bad_input():
    x = np.ones(4)
    with pytest.raises(ValueError, match="same length"):
        _blas.axpy(1.0, x, np.ones(5))
    with pytest.raises(ValueError, match="dtype mismatch"):
        _blas.axpy(1.0, x, np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        _blas.axpy(1.0, x, np.ones(8)[::2])
    with pytest.raises(TypeError, match="No matching signature"):
        _blas.axpy(1.0, np.ones((2, 2)), np.ones((2, 2)))
