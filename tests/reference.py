"""Fixtures the test modules share: the dtypes and activations under test,
and plain-numpy references written from the pinned math (DESIGN.md), never
from the kernels.

The activations under test are the package's own list: a new activation is
tested everywhere once it has a reference here (a missing one is a KeyError,
not a skipped test).
"""

import numpy as np
import scipy.sparse as sp
from scipy.special import expit, softmax

from sklearn_bn._activations import ACTIVATIONS as _CODES

DTYPES = [np.float32, np.float64]

ACTIVATIONS = sorted(_CODES, key=_CODES.get)

_FORWARD = {
    "identity": lambda y: y,
    "relu": lambda y: np.maximum(y, 0),
    "tanh": np.tanh,
    "logistic": lambda y: 0.5 * (1 + np.tanh(0.5 * y)),  # no overflow
}

_DERIVATIVE = {
    "identity": np.ones_like,
    "relu": lambda y: (y > 0).astype(np.float64),
    "tanh": lambda y: 1 - np.tanh(y) ** 2,
    "logistic": lambda y: 0.25 * (1 - np.tanh(0.5 * y) ** 2),
}

OUT_ACTIVATIONS = {
    "identity": lambda v: v,
    "logistic": expit,
    "exp": np.exp,
    "softmax": lambda v: softmax(v, axis=1),
}


def activation(name, y):
    """``f(y)`` in float64."""
    return _FORWARD[name](np.asarray(y, dtype=np.float64))


def activation_derivative(name, y):
    """``f'(y)`` from the pre-activation ``y``, in float64."""
    return _DERIVATIVE[name](np.asarray(y, dtype=np.float64))


def forward_from_attributes(est, X):
    """The inference network of a fitted MLPBN from its public attributes
    (``coefs_``, ``gammas_``, ``intercepts_``, running statistics), in
    float64: the output layer's activations."""
    a = X.toarray() if sp.issparse(X) else np.asarray(X)
    a = a.astype(np.float64)
    for W, g, b, m, v in zip(est.coefs_, est.gammas_, est.intercepts_,
                             est.running_means_, est.running_vars_):
        z = a @ W.astype(np.float64)
        a = activation(est.activation,
                       g * (z - m) / np.sqrt(v.astype(np.float64) + est.bn_epsilon) + b)
    raw = a @ est.coefs_[-1].astype(np.float64) + est.intercepts_[-1]
    return OUT_ACTIVATIONS[est.out_activation_](raw)


def forward_sklearn_mlp(mlp, X):
    """Inference with a scikit-learn MLP's ``coefs_`` and ``intercepts_``, in
    float64."""
    a = X.toarray() if sp.issparse(X) else np.asarray(X)
    a = a.astype(np.float64)
    for W, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1]):
        a = activation(mlp.activation, a @ W.astype(np.float64) + b)
    raw = a @ mlp.coefs_[-1].astype(np.float64) + mlp.intercepts_[-1]
    return OUT_ACTIVATIONS[mlp.out_activation_](raw)
