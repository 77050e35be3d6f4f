"""Hidden-layer activations on whole rows, for the folded network, the
Python layer and the tests.

The activations themselves are written once, in ``_activations.pxd`` (rendered
from ``_activations.pxd.tp`` with the list of ``_activation_registry.py``).
:func:`act_rows` applies one in place, after an optional bias (the folded
network's ``act(a @ W + b)``); :func:`act_gradient_rows` multiplies a
gradient by its derivative. ``forward`` and ``backward`` are their ``def``
wrappers.
"""
from libc.math cimport NAN
from cython cimport floating

from sklearn_bn._simd cimport simd_void
from sklearn_bn._tiles cimport TILE, n_tiles, tile_width

#: Name -> code of every hidden activation.
ACTIVATIONS = {ACTIVATION_NAMES[k].decode("ascii"): k for k in range(N_ACTIVATIONS)}

#: Name -> code of every output activation.
OUT_ACTIVATIONS = {OUT_ACTIVATION_NAMES[k].decode("ascii"): k
                   for k in range(N_OUT_ACTIVATIONS)}

cdef enum:
    # Rows per tile when the rows are wider than one tile (the local bias is
    # reloaded per tile).
    TILE_ROWS = 32


def activation_code(name):
    """Return the integer code of the activation called ``name``."""
    return act_code(name)


cdef void act_rows(floating* y, Py_ssize_t n_rows, Py_ssize_t n_cols,
                   const floating* bias, int act) noexcept nogil:
    """``y = act(y + bias)`` in place on C-contiguous rows (``bias`` NULL:
    ``y = act(y)``); an unknown ``act`` writes NaN."""
    if act == IDENTITY:
        _act_rows(y, n_rows, n_cols, bias, <Identity*> NULL)
    elif act == RELU:
        _act_rows(y, n_rows, n_cols, bias, <Relu*> NULL)
    elif act == TANH:
        _act_rows(y, n_rows, n_cols, bias, <Tanh*> NULL)
    elif act == LOGISTIC:
        _act_rows(y, n_rows, n_cols, bias, <Logistic*> NULL)
    else:
        _fill_nan(y, n_rows * n_cols)


cdef simd_void _act_rows(floating* y, Py_ssize_t n_rows, Py_ssize_t n_cols,
                         const floating* bias_in, activation_t* act) noexcept nogil:
    cdef floating bias[TILE]
    cdef Py_ssize_t i, j, tile, j0, width, start, stop
    cdef Py_ssize_t block_rows = n_rows if n_cols <= TILE else TILE_ROWS
    cdef floating* row
    if bias_in == NULL:
        for i in range(n_rows * n_cols):
            y[i] = act_forward(y[i], act)
        return
    start = 0
    while start < n_rows:
        stop = min(start + block_rows, n_rows)
        for tile in range(n_tiles(n_cols)):
            j0 = tile * TILE
            width = tile_width(j0, n_cols)
            for j in range(width):
                bias[j] = bias_in[j0 + j]
            for i in range(start, stop):
                row = y + i * n_cols + j0
                for j in range(width):
                    row[j] = act_forward(row[j] + bias[j], act)
        start = stop


cdef void act_gradient_rows(const floating* a, floating* delta, Py_ssize_t n_rows,
                            Py_ssize_t n_cols, int act) noexcept nogil:
    """``delta *= f'`` in place, ``f'`` from the activation's output ``a``
    (ReLU's mask from ``a > 0``, which is ``y > 0``); an unknown ``act``
    writes NaN."""
    if act == IDENTITY:
        _act_gradient_rows(a, delta, n_rows * n_cols, <Identity*> NULL)
    elif act == RELU:
        _act_gradient_rows(a, delta, n_rows * n_cols, <Relu*> NULL)
    elif act == TANH:
        _act_gradient_rows(a, delta, n_rows * n_cols, <Tanh*> NULL)
    elif act == LOGISTIC:
        _act_gradient_rows(a, delta, n_rows * n_cols, <Logistic*> NULL)
    else:
        _fill_nan(delta, n_rows * n_cols)


cdef simd_void _act_gradient_rows(const floating* a, floating* delta, Py_ssize_t n,
                                  activation_t* act) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        delta[i] = act_gradient(delta[i], a[i], a[i], act)


cdef void _fill_nan(floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = NAN


cdef int _code(activation) except? -1:
    # A name, or a raw code: tests send an unknown code through the kernels.
    if isinstance(activation, int) and not isinstance(activation, bool):
        return activation
    return act_code(activation)


def forward(floating[:, ::1] y, activation):
    """Apply the activation to ``y`` in place; return ``y``.

    Parameters
    ----------
    y : ndarray of shape (n_samples, n_units), float32 or float64, C-contiguous
        Pre-activations, overwritten by the activations.
    activation : {'identity', 'relu', 'tanh', 'logistic'} or int
        Its name, or its code; an unknown code gives NaN (the kernels never
        run another activation's code for it).
    """
    cdef int act = _code(activation)
    cdef Py_ssize_t n_rows = y.shape[0], n_cols = y.shape[1]
    if n_rows and n_cols:
        with nogil:
            act_rows(&y[0, 0], n_rows, n_cols, NULL, act)
    return y.base if y.base is not None else y


def backward(const floating[:, ::1] a, floating[:, ::1] delta, activation):
    """Multiply ``delta`` in place by the activation's derivative.

    Parameters
    ----------
    a : ndarray of shape (n_samples, n_units)
        Outputs of the activation (what :func:`forward` returned).
    delta : ndarray of shape (n_samples, n_units), same dtype as ``a``
        Gradient with respect to the activation output; overwritten by the
        gradient with respect to its input.
    activation : {'identity', 'relu', 'tanh', 'logistic'} or int
        As in :func:`forward`.
    """
    cdef int act = _code(activation)
    if a.shape[0] != delta.shape[0] or a.shape[1] != delta.shape[1]:
        raise ValueError(
            f"a and delta must have the same shape, got ({a.shape[0]}, {a.shape[1]}) "
            f"and ({delta.shape[0]}, {delta.shape[1]})")
    cdef Py_ssize_t n_rows = a.shape[0], n_cols = a.shape[1]
    if n_rows and n_cols:
        with nogil:
            act_gradient_rows(&a[0, 0], &delta[0, 0], n_rows, n_cols, act)
