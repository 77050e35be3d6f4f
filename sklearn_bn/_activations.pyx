"""Hidden-layer activations: forward (in place) and backward.

``forward(y, act)`` overwrites ``y`` with ``f(y)``; ``backward(a, delta, act)``
multiplies ``delta`` in place by ``f'`` evaluated from the output ``a = f(y)``.
The scalar versions are inline functions in ``_activations.pxd`` so that the
fused batch-norm kernels apply them without a call per element.
"""
from cython cimport floating

ACTIVATIONS = {
    "identity": IDENTITY,
    "relu": RELU,
    "tanh": TANH,
    "logistic": LOGISTIC,
}


cdef void cact_forward(floating* y, Py_ssize_t n, int act) noexcept nogil:
    cdef Py_ssize_t i
    if act == IDENTITY:
        return
    elif act == RELU:
        for i in range(n):
            y[i] = y[i] if y[i] > 0 else 0
    else:
        for i in range(n):
            y[i] = act_forward(y[i], act)


cdef void cact_backward(const floating* a, floating* delta, Py_ssize_t n,
                        int act) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating one = 1   # a literal 1 would make Cython compute in double
    if act == IDENTITY:
        return
    elif act == RELU:
        for i in range(n):
            delta[i] = delta[i] if a[i] > 0 else 0
    elif act == TANH:
        for i in range(n):
            delta[i] *= one - a[i] * a[i]
    else:
        for i in range(n):
            delta[i] *= a[i] * (one - a[i])


def activation_code(name):
    """Return the integer code of the activation called ``name``."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}"
        ) from None


def forward(floating[:, ::1] y, activation):
    """Apply the activation to ``y`` in place; return ``y``.

    Parameters
    ----------
    y : ndarray of shape (n_samples, n_units), float32 or float64, C-contiguous
        Pre-activations, overwritten by the activations.
    activation : {'identity', 'relu', 'tanh', 'logistic'}
    """
    cdef int act = activation_code(activation)
    cdef Py_ssize_t n = y.shape[0] * y.shape[1]
    if n:
        with nogil:
            cact_forward(&y[0, 0], n, act)
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
    activation : {'identity', 'relu', 'tanh', 'logistic'}
    """
    cdef int act = activation_code(activation)
    if a.shape[0] != delta.shape[0] or a.shape[1] != delta.shape[1]:
        raise ValueError(
            f"a and delta must have the same shape, got ({a.shape[0]}, {a.shape[1]}) "
            f"and ({delta.shape[0]}, {delta.shape[1]})")
    cdef Py_ssize_t n = a.shape[0] * a.shape[1]
    if n:
        with nogil:
            cact_backward(&a[0, 0], &delta[0, 0], n, act)
