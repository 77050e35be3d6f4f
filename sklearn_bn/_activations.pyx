"""Hidden-layer activations, for the Python layer and tests.

The activations themselves are written once, in ``_activations.pxd``, and
applied by the fused batch-norm kernels. ``forward(y, act)`` and
``backward(a, delta, act)`` apply one elementwise, through the same row
passes: ``forward`` overwrites ``y`` with ``f(y)``, ``backward`` multiplies
``delta`` in place by ``f'`` evaluated from the output ``a = f(y)``.
"""
from cython cimport floating

import numpy as np

from sklearn_bn._batchnorm cimport row_pass, FORWARD, GRADIENT_DZ

from sklearn_bn._activations cimport act_code

#: Name -> code of every activation.
ACTIVATIONS = {ACTIVATION_NAMES[k].decode("ascii"): k for k in range(N_ACTIVATIONS)}


def activation_code(name):
    """Return the integer code of the activation called ``name``."""
    return act_code(name)


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
    zeros_ = np.zeros(n_cols, dtype=np.asarray(y).dtype)
    ones_ = np.ones(n_cols, dtype=zeros_.dtype)
    cdef const floating[::1] zeros = zeros_
    cdef const floating[::1] ones = ones_
    if n_rows and n_cols:
        with nogil:
            # act((y - 0) * 1 + 0) is act(y).
            row_pass(act, FORWARD, &y[0, 0], NULL, NULL, &y[0, 0], n_rows, n_cols,
                     n_cols, n_cols, n_cols, NULL, &zeros[0], &ones[0], &zeros[0], NULL, NULL, NULL,
                     NULL)
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
    zeros_ = np.zeros(n_cols, dtype=np.asarray(delta).dtype)
    ones_ = np.ones(n_cols, dtype=zeros_.dtype)
    cdef const floating[::1] zeros = zeros_
    cdef const floating[::1] ones = ones_
    if n_rows and n_cols:
        with nogil:
            # The backward pass of the layer with center 0, scale 1, shift 0
            # and no batch-norm terms (q = r = 0): dz = g = delta * f'. ReLU's
            # mask from a is its mask from y: a > 0 exactly where y > 0.
            row_pass(act, GRADIENT_DZ, &a[0, 0], &delta[0, 0], &a[0, 0],
                     &delta[0, 0], n_rows, n_cols, n_cols, n_cols, n_cols, NULL, &zeros[0],
                     &ones[0], &zeros[0], &zeros[0], &zeros[0], NULL, NULL)
