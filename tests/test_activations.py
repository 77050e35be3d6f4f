"""Tests of the activation kernels (sklearn_bn._activations).

``forward(y, activation)`` overwrites ``y`` with ``f(y)``; ``backward(a,
delta, activation)`` multiplies ``delta`` in place by ``f'`` evaluated from the
output ``a = f(y)``. Both are compared with plain numpy on float32 and
float64, and ``backward`` with central differences of ``forward``.

The wrappers take typed memoryviews, so malformed input is rejected by
Cython's buffer checks: an int, complex or 1-D array matches no
specialization (``TypeError: No matching signature found``); ``a`` and
``delta`` of different dtypes raise ``ValueError`` (buffer dtype mismatch),
as do non C-contiguous arrays, a read-only array to be written, arrays of
different shapes and an unknown activation.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose, assert_array_equal

from sklearn_bn import _activations

from reference import ACTIVATIONS, DTYPES
from reference import activation as ref_activation
from reference import activation_derivative as ref_derivative

SHAPES = [(1, 1), (2, 3), (1, 7), (9, 1), (3, 10_000), (0, 4)]


def tol(dtype):
    return (
        {"rtol": 1e-6, "atol": 1e-7}
        if dtype == np.float32
        else {"rtol": 1e-14, "atol": 1e-15}
    )


def test_activation_codes():
    codes = {name: _activations.activation_code(name) for name in ACTIVATIONS}
    assert codes == {"identity": 0, "relu": 1, "tanh": 2, "logistic": 3}


@pytest.mark.parametrize("name", ["softmax", "Relu", "", None, 3, ["relu"]])
def test_unknown_activation_code(name):
    with pytest.raises(ValueError, match="activation must be one of"):
        _activations.activation_code(name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_matches_numpy(dtype, shape, activation):
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(shape) * 3).astype(dtype)
    expected = ref_activation(activation, y)
    out = _activations.forward(y, activation)
    assert out is y  # in place, the same array returned
    assert y.dtype == dtype
    assert_allclose(y, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_hand_checked(dtype):
    y = np.array([[-2.0, 0.0, 3.0]], dtype=dtype)
    assert_array_equal(_activations.forward(y.copy(), "relu"), [[0, 0, 3]])
    assert_array_equal(_activations.forward(y.copy(), "identity"), y)
    assert_allclose(
        _activations.forward(y.copy(), "logistic"),
        [[1 / (1 + np.exp(2)), 0.5, 1 / (1 + np.exp(-3))]],
        **tol(dtype),
    )
    assert_allclose(
        _activations.forward(y.copy(), "tanh"), [np.tanh([-2, 0, 3])], **tol(dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_and_tanh_saturate_without_overflow(dtype):
    # exp would overflow on a naive 1 / (1 + exp(-y)) for very negative y in
    # some formulations; the kernel branches so that it never does.
    big = np.finfo(dtype).max
    y = np.array([[-big, -1000, -100, 100, 1000, big]], dtype=dtype)
    with np.errstate(all="raise"):
        out = _activations.forward(y.copy(), "logistic")
    assert_array_equal(out[0, :2], 0)
    assert 0 < out[0, 2] < 1e-40 or out[0, 2] == 0
    assert_array_equal(out[0, 3:], 1)
    out = _activations.forward(y.copy(), "tanh")
    assert_array_equal(out, [[-1, -1, -1, 1, 1, 1]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_keeps_nan(dtype, activation):
    y = np.array([[np.nan, 1.0]], dtype=dtype)
    out = _activations.forward(y, activation)
    assert np.isnan(out[0, 0])  # relu too, as numpy's maximum


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_matches_numpy(dtype, shape, activation):
    rng = np.random.default_rng(1)
    y = (rng.standard_normal(shape) * 3).astype(dtype)
    a = _activations.forward(y.copy(), activation)
    a.setflags(write=False)  # read-only input
    delta = rng.standard_normal(shape).astype(dtype)
    expected = delta.astype(np.float64) * ref_derivative(activation, y)
    out = delta.copy()
    assert _activations.backward(a, out, activation) is None
    assert out.dtype == dtype
    # f' is evaluated from the rounded output: for float32 tanh and logistic
    # near saturation, 1 - a**2 carries an absolute error of about 1e-7.
    assert_allclose(
        out,
        expected,
        **(tol(dtype) if dtype == np.float64 else {"rtol": 1e-6, "atol": 1e-6}),
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_gradient_check(activation):
    # Central differences of forward, float64, away from the ReLU kink.
    rng = np.random.default_rng(2)
    y = rng.standard_normal((7, 5)) * 2
    y[np.abs(y) < 1e-3] = 0.5
    delta = rng.standard_normal((7, 5))
    h = 1e-6
    up = _activations.forward(y + h, activation)
    down = _activations.forward(y - h, activation)
    numeric = delta * (up - down) / (2 * h)
    a = _activations.forward(y.copy(), activation)
    out = delta.copy()
    _activations.backward(a, out, activation)
    assert_allclose(out, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_hand_checked(dtype):
    a = np.array([[0.0, 0.5, 2.0]], dtype=dtype)
    delta = np.array([[3.0, 3.0, 3.0]], dtype=dtype)
    out = delta.copy()
    _activations.backward(a, out, "relu")
    assert_array_equal(out, [[0, 3, 3]])
    out = delta.copy()
    _activations.backward(a, out, "tanh")
    assert_allclose(out, [[3, 3 * 0.75, 3 * -3]], **tol(dtype))
    out = delta.copy()
    _activations.backward(a, out, "logistic")
    assert_allclose(out, [[0, 3 * 0.25, 3 * -2]], **tol(dtype))
    out = delta.copy()
    _activations.backward(a, out, "identity")
    assert_array_equal(out, delta)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40),
        elements=st.floats(-50, 50, width=32),
    ),
    st.sampled_from(ACTIVATIONS),
)
def test_property_forward_backward(y, activation):
    dtype = y.dtype.type
    expected = ref_activation(activation, y)
    a = _activations.forward(y.copy(), activation)
    assert_allclose(a, expected, **tol(dtype))
    # Outputs stay in the activation's range.
    if activation == "relu":
        assert np.all(a >= 0)
    elif activation in ("tanh", "logistic"):
        low = -1 if activation == "tanh" else 0
        assert np.all((a >= low) & (a <= 1))
    delta = np.ones_like(y)
    _activations.backward(a, delta, activation)
    # f' evaluated from the output (float32 output rounding of a saturated
    # tanh/logistic changes f' at the 1e-7 level only).
    f32 = dtype == np.float32
    assert_allclose(
        delta,
        ref_derivative(activation, y),
        rtol=1e-5 if f32 else 1e-12,
        atol=1e-6 if f32 else 1e-14,
    )
    assert np.all(delta >= 0)


# ---------------------------------------------------------------------------
# Malformed input


def test_forward_rejects_bad_input():
    y = np.ones((3, 4))
    with pytest.raises(TypeError, match="No matching signature"):
        _activations.forward(y.astype(np.int64), "relu")
    with pytest.raises(TypeError, match="No matching signature"):
        _activations.forward(y.astype(np.complex128), "relu")
    with pytest.raises(TypeError, match="No matching signature"):
        _activations.forward(np.ones(3), "relu")
    with pytest.raises(TypeError, match="No matching signature"):
        _activations.forward([[1.0, 2.0]], "relu")
    with pytest.raises(ValueError, match="contiguous"):
        _activations.forward(np.ones((3, 8))[:, ::2], "relu")
    with pytest.raises(ValueError, match="contiguous"):
        _activations.forward(np.asfortranarray(y), "relu")
    ro = y.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _activations.forward(ro, "relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        _activations.forward(y, "gelu")
    assert_array_equal(y, 1)  # nothing written by the failed calls


def test_backward_rejects_bad_input():
    a = np.ones((3, 4))
    delta = np.ones((3, 4))
    with pytest.raises(ValueError, match="same shape"):
        _activations.backward(a, np.ones((3, 5)), "relu")
    with pytest.raises(ValueError, match="same shape"):
        _activations.backward(a, np.ones((4, 3)), "relu")
    with pytest.raises(ValueError, match="dtype mismatch"):
        _activations.backward(a, delta.astype(np.float32), "relu")
    with pytest.raises(TypeError, match="No matching signature"):
        _activations.backward(a.astype(np.int32), delta.astype(np.int32), "relu")
    with pytest.raises(ValueError, match="contiguous"):
        _activations.backward(a, np.ones((3, 8))[:, ::2], "relu")
    ro = delta.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _activations.backward(a, ro, "relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        _activations.backward(a, delta, "softplus")
    assert_array_equal(delta, 1)


@pytest.mark.parametrize("code", [-1, len(ACTIVATIONS), 99])
@pytest.mark.parametrize("dtype", DTYPES)
def test_an_unknown_code_never_runs_another_activation(code, dtype):
    # The kernels dispatch on the code in one place; a code no activation
    # has gives NaN there, never another activation's values or gradient.
    y = np.array([[-1.0, 0.5, 2.0]], dtype=dtype)
    assert np.isnan(_activations.forward(y.copy(), code)).all()
    delta = np.ones_like(y)
    _activations.backward(_activations.forward(y.copy(), "tanh"), delta, code)
    assert np.isnan(delta).all()
    for name, known in _activations.ACTIVATIONS.items():
        assert_array_equal(
            _activations.forward(y.copy(), known), _activations.forward(y.copy(), name)
        )
