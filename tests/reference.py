"""Fixtures the test modules share: the dtypes and activations under test,
and plain-numpy references written from the pinned math (DESIGN.md), never
from the kernels.

The activations under test are the package's registry
(``sklearn_bn/_activation_registry.py``), whose numpy forms are the
references of the compiled kernels: a new activation is tested everywhere
once it is registered.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import strategies as st
from scipy.special import expit, softmax, xlogy

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
    for W, g, b, m, v in zip(
        est.coefs_, est.gammas_, est.intercepts_, est.running_means_, est.running_vars_
    ):
        z = a @ W.astype(np.float64)
        a = activation(
            est.activation,
            g * (z - m) / np.sqrt(v.astype(np.float64) + est.bn_epsilon) + b,
        )
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
    for W, g, b, m, v in zip(
        est.coefs_, est.gammas_, est.intercepts_, est.running_means_, est.running_vars_
    ):
        z = a @ W.astype(np.float64)
        values.append(z)
        a = activation(
            est.activation,
            g * (z - m) / np.sqrt(v.astype(np.float64) + est.bn_epsilon) + b,
        )
    return values


def weighted_mean_and_unbiased_var(z, sample_weight=None):
    """Column mean and unbiased variance of ``z`` (float64), weights acting
    as repeat counts: the correction is ``m / (m - 1)`` with ``m`` the weight
    sum, or the number of rows of positive weight when that sum is below 2
    (DESIGN.md's rule for the running variance)."""
    z = np.asarray(z, dtype=np.float64)
    w = (
        np.ones(z.shape[0])
        if sample_weight is None
        else np.asarray(sample_weight, np.float64)
    )
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
        st.lists(
            st.integers(1, n_rows - 1), unique=True, max_size=min(max_cuts, n_rows - 1)
        ),
        label="cuts",
    )
    return [0] + sorted(cuts) + [n_rows]


# ---------------------------------------------------------------------------
# The training-mode objective of one minibatch, from DESIGN.md: batch
# statistics weighted by sample_weight, scikit-learn's losses and L2 term,
# and the hidden layers' options (ghost batch norm's chunks, dropout).

BN_EPSILON = 1e-5

_activation_of = activation  # the parameters below named activation hide it


def _weights(sw, n):
    return np.ones(n) if sw is None else np.asarray(sw, dtype=np.float64)


def ref_forward_train(
    X,
    coefs,
    gammas,
    intercepts,
    activation,
    sw=None,
    eps=BN_EPSILON,
    *,
    chunks=1,
    dropout=None,
):
    """Training-mode forward in float64.

    ``chunks``: ghost batch norm's number of chunks (the rows split as
    ``numpy.array_split`` splits them, each normalized with its own
    statistics; a chunk whose weight lies on fewer than 2 rows has none: its
    rows get ``z_hat = 0``). ``dropout``: per hidden layer, ``(rate, keep)``
    with ``keep`` the boolean mask of kept units, or None.

    Returns the output layer's raw values, every hidden layer's chunks' batch
    means and (ddof=0) variances of ``z`` (a list of ``(mean, var)`` per
    chunk, None for a chunk without statistics; the whole batch's alone by
    default), and every hidden layer's pre-activation ``gamma * z_hat +
    beta`` (to keep ReLU's kink away from the checks).
    """
    a = X.toarray() if sp.issparse(X) else np.asarray(X)
    a = a.astype(np.float64)
    w = _weights(sw, a.shape[0])
    parts = np.array_split(np.arange(a.shape[0]), chunks)
    stats, pre = [], []
    for l, (W, g, b) in enumerate(zip(coefs[:-1], gammas, intercepts[:-1])):
        z = a @ np.asarray(W, dtype=np.float64)
        y = np.empty_like(z)
        layer_stats = []
        for rows in parts:
            if chunks > 1 and np.count_nonzero(w[rows] > 0) < 2:
                y[rows] = b
                layer_stats.append(None)
                continue
            mu = np.average(z[rows], axis=0, weights=w[rows])
            var = np.average((z[rows] - mu) ** 2, axis=0, weights=w[rows])
            y[rows] = g * (z[rows] - mu) / np.sqrt(var + eps) + b
            layer_stats.append((mu, var))
        a = _activation_of(activation, y)
        if dropout is not None and dropout[l] is not None:
            rate, keep = dropout[l]
            a = a * keep / (1 - rate)
        stats.append(layer_stats[0] if chunks == 1 else layer_stats)
        pre.append(y)
    raw = a @ np.asarray(coefs[-1], dtype=np.float64) + intercepts[-1]
    return raw, stats, pre


def ref_per_sample_loss(raw, Y, out_activation):
    Y = np.asarray(Y, dtype=np.float64).reshape(raw.shape)
    if out_activation == "identity":
        return 0.5 * ((raw - Y) ** 2).sum(axis=1)
    # scikit-learn's log losses clip the probabilities to [eps, 1 - eps].
    eps = np.finfo(np.float64).eps
    if out_activation == "logistic":
        p = np.clip(expit(raw), eps, 1 - eps)
        return -(xlogy(Y, p) + xlogy(1 - Y, 1 - p)).sum(axis=1)
    if out_activation == "softmax":
        p = np.clip(softmax(raw, axis=1), eps, 1 - eps)
        return -xlogy(Y, p).sum(axis=1)
    assert out_activation == "exp"
    p = np.exp(raw)
    return (xlogy(Y, Y / p) - Y + p).sum(axis=1)


def ref_loss(
    X,
    Y,
    sw,
    coefs,
    gammas,
    intercepts,
    activation,
    out_activation,
    alpha,
    eps=BN_EPSILON,
    **options,
):
    """The training-mode objective of one minibatch, in float64 (``options``:
    those of :func:`ref_forward_train`)."""
    raw = ref_forward_train(
        X, coefs, gammas, intercepts, activation, sw, eps, **options
    )[0]
    w = _weights(sw, raw.shape[0])
    # Rows of no weight count for nothing, even where their loss overflows.
    weighted = w > 0
    with np.errstate(over="ignore"):
        per_row = ref_per_sample_loss(raw, Y, out_activation)
    data_loss = np.average(per_row[weighted], weights=w[weighted])
    l2 = sum((np.asarray(W, dtype=np.float64) ** 2).sum() for W in coefs)
    return data_loss + 0.5 * alpha * l2 / w.sum()


def ref_numeric_gradient(
    X,
    Y,
    sw,
    coefs,
    gammas,
    intercepts,
    activation,
    out_activation,
    alpha,
    h=1e-6,
    **options,
):
    """Central differences of ``ref_loss`` for every parameter."""
    params = [
        [np.array(p, dtype=np.float64) for p in group]
        for group in (coefs, gammas, intercepts)
    ]
    grads = [[np.zeros_like(p) for p in group] for group in params]
    for group, ggroup in zip(params, grads):
        for p, g in zip(group, ggroup):
            flat, gflat = p.reshape(-1), g.reshape(-1)
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + h
                up = ref_loss(
                    X, Y, sw, *params, activation, out_activation, alpha, **options
                )
                flat[i] = old - h
                down = ref_loss(
                    X, Y, sw, *params, activation, out_activation, alpha, **options
                )
                flat[i] = old
                gflat[i] = (up - down) / (2 * h)
    return grads


# ---------------------------------------------------------------------------
# The optimizers' steps (issue #23's pinned math): each one's update from a
# gradient, keyed by the estimators' solver.


def _sgd_update(g, moments, t, lr_t, hyper):
    """scikit-learn's SGD with (Nesterov's) momentum."""
    v = hyper["momentum"] * moments[0] - lr_t * g
    moments[0] = v
    return hyper["momentum"] * v - lr_t * g if hyper["nesterovs_momentum"] else v


def _adam_update(g, moments, t, lr_t, hyper):
    """scikit-learn's Adam, at its (t + 1)-th step."""
    b1, b2 = hyper["beta_1"], hyper["beta_2"]
    m = moments[0] = b1 * moments[0] + (1 - b1) * g
    v = moments[1] = b2 * moments[1] + (1 - b2) * g**2
    size = lr_t * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
    return -size * m / (np.sqrt(v) + hyper["epsilon"])


#: solver -> (its update, its number of moments)
OPTIMIZER_STEPS = {"sgd": (_sgd_update, 1), "adam": (_adam_update, 2)}


def optimizer_steps(
    solver, hyper, params, gradient, n_steps, lr_of_step, weight_decay=0.0
):
    """``n_steps`` steps from ``params`` (coefs, gammas, intercepts): at step
    ``t``, ``g = gradient(params, t)``, then every coefficient ``W * (1 -
    lr_t * weight_decay) + update`` and every other parameter ``p + update``,
    with ``lr_t = lr_of_step(t)`` and ``hyper`` the estimator's
    hyper-parameters (by their names)."""
    update, n_moments = OPTIMIZER_STEPS[solver]
    params = [[np.array(p, dtype=np.float64) for p in group] for group in params]
    moments = [
        [[np.zeros_like(p) for _ in range(n_moments)] for p in group]
        for group in params
    ]
    for t in range(n_steps):
        lr_t = lr_of_step(t)
        grad = gradient(params, t)
        for k, (pg, gg, mg) in enumerate(zip(params, grad, moments)):
            for i, (p, g) in enumerate(zip(pg, gg)):
                decay = 1 - lr_t * weight_decay if k == 0 else 1.0
                pg[i] = p * decay + update(g, mg[i], t, lr_t, hyper)
    return params


# The training recipe of the round-2 estimators (scikit-learn's MLP's), before
# the tabular defaults (issue #23): tests of the math against references
# (numpy, PyTorch, scikit-learn's MLP) and the pinned fits pass it, so that a
# change of the defaults does not move what they pin.
ROUND_2 = {
    "hidden_layer_sizes": (100,),
    "alpha": 1e-4,
    "learning_rate": "constant",
    "learning_rate_init": 1e-3,
    "max_iter": 200,
    "batch_size": "auto",
    "early_stopping": False,
}
ROUND_2_CLASSIFIER = {**ROUND_2, "label_smoothing": 0.0}


def round_2(estimator_class, **params):
    """``estimator_class(**params)`` with the round-2 recipe for the
    parameters not given."""
    recipe = (
        ROUND_2_CLASSIFIER
        if "label_smoothing" in estimator_class().get_params()
        else ROUND_2
    )
    return estimator_class(**{**recipe, **params})


def parametrize_with_checks(estimators, **kwargs):
    """scikit-learn's ``parametrize_with_checks``, its parameters as a list.

    scikit-learn before 1.8 hands pytest a generator, which pytest 9.2
    deprecates and pytest 10 refuses; a list works with every release.
    """
    from sklearn.utils import estimator_checks

    mark = estimator_checks.parametrize_with_checks(estimators, **kwargs).mark
    argnames, argvalues = mark.args
    return pytest.mark.parametrize(argnames, list(argvalues), **mark.kwargs)
