"""Fixtures the test modules share: the dtypes and activations under test,
and plain-numpy references written from the pinned math (DESIGN.md), never
from the kernels.

The activations under test are the package's registry
(``sklearn_bn/_activation_registry.py``), whose numpy forms are the
references of the compiled kernels: a new activation is tested everywhere
once it is registered.
"""

import numpy as np
import scipy.sparse as sp
from hypothesis import strategies as st

from sklearn_bn._activation_registry import ACTIVATIONS as _HIDDEN
from sklearn_bn._activation_registry import OUT_ACTIVATIONS as _OUTPUT

DTYPES = [np.float32, np.float64]

ACTIVATIONS = list(_HIDDEN)

OUT_ACTIVATIONS = {name: a.forward for name, a in _OUTPUT.items()}


def activation(name, y):
    """``f(y)`` in float64."""
    return _HIDDEN[name].forward(np.asarray(y, dtype=np.float64))


def activation_derivative(name, y):
    """``f'(y)`` from the pre-activation ``y``, in float64."""
    return _HIDDEN[name].derivative(np.asarray(y, dtype=np.float64))


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


def hidden_pre_normalization(est, X):
    """Each hidden layer's values before normalization, ``z = a @ coefs_[i]``,
    over the rows of ``X``, from a fitted MLPBN's public attributes (the
    inference network, in float64): a list of arrays of shape (n_samples,
    units)."""
    a = X.toarray() if sp.issparse(X) else np.asarray(X)
    a = a.astype(np.float64)
    values = []
    for W, g, b, m, v in zip(est.coefs_, est.gammas_, est.intercepts_,
                             est.running_means_, est.running_vars_):
        z = a @ W.astype(np.float64)
        values.append(z)
        a = activation(est.activation,
                       g * (z - m) / np.sqrt(v.astype(np.float64) + est.bn_epsilon) + b)
    return values


def weighted_mean_and_unbiased_var(z, sample_weight=None):
    """Column mean and unbiased variance of ``z`` (float64), weights acting
    as repeat counts: the correction is ``m / (m - 1)`` with ``m`` the weight
    sum, or the number of rows of positive weight when that sum is below 2
    (DESIGN.md's rule for the running variance)."""
    z = np.asarray(z, dtype=np.float64)
    w = np.ones(z.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    total = w.sum()
    mean = (w @ z) / total
    var = (w @ (z - mean) ** 2) / total
    m = total if total >= 2 else np.count_nonzero(w > 0)
    return mean, var * m / (m - 1)


def draw_split(data, n_rows, max_cuts):
    """Bounds ``[0, ..., n_rows]`` of a split of ``n_rows`` rows into
    consecutive batches at up to ``max_cuts`` distinct cut points drawn by
    hypothesis (``data`` is ``st.data()``); ``zip(bounds[:-1], bounds[1:])``
    gives the batches."""
    cuts = data.draw(
        st.lists(st.integers(1, n_rows - 1), unique=True,
                 max_size=min(max_cuts, n_rows - 1)),
        label="cuts",
    )
    return [0] + sorted(cuts) + [n_rows]
