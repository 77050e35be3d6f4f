"""Tests of the training engine (sklearn_bn._training) against plain numpy.

The reference below is written from the pinned math in DESIGN.md, not from the
engine: the training-mode objective (batch statistics weighted by
``sample_weight``, scikit-learn's losses and L2 term) and its central-difference
gradient. The engine must agree with it on the loss, on the gradient of every
parameter group, on the running statistics, and on whole optimizer steps as the
estimators take them (minibatching, the trailing single row, zero-weight
batches, SGD with and without momentum, Adam, the learning-rate schedules and
warm starts).
"""

import contextlib
import functools
import itertools
import multiprocessing
import os
import sys
import threading
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import expit, softmax
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_info, threadpool_limits

from sklearn_bn import MLPBNClassifier as _MLPBNClassifier
from sklearn_bn import MLPBNRegressor as _MLPBNRegressor
from sklearn_bn import _engine, _mlp, _team, _threads, _training
from sklearn_bn._engine import Engine, FoldedNetwork, Parameters
from sklearn_bn._utils import aligned_zeros

from reference import (
    ACTIVATIONS,
    optimizer_steps,
    ref_forward_train,
    ref_loss,
    ref_numeric_gradient,
    ref_per_sample_loss,
)
from reference import activation as ref_activation

# The engine's math takes X as the first layer's input: the estimators here
# run without input handling (tests/test_preprocessing.py covers it).
MLPBNClassifier = functools.partial(_MLPBNClassifier, input_preprocessing=None)
MLPBNRegressor = functools.partial(_MLPBNRegressor, input_preprocessing=None)

BN_EPSILON = 1e-5

# ---------------------------------------------------------------------------
# The numpy reference


# ---------------------------------------------------------------------------
# Calling the engine as _BaseMLPBN._fit_stochastic does


def engine_loss_and_gradient(
    X,
    Y,
    sw,
    coefs,
    gammas,
    intercepts,
    activation,
    out_activation,
    alpha,
    *,
    running_mean=None,
    running_var=None,
    update_running=False,
    bn_momentum=0.1,
    eps=BN_EPSILON,
    n_batches_tracked=0,
    **engine_options,
):
    """One call of ``Engine.loss_and_gradient`` on the whole of ``X``.

    Returns the loss, the gradient as (coefs, gammas, intercepts) lists and
    the running mean and variance (flat, updated in place when asked).
    """
    dtype = np.asarray(coefs[0]).dtype
    n = X.shape[0]
    units = [X.shape[1]] + [np.asarray(W).shape[1] for W in coefs]
    step = engine_options.pop("step", 0)
    engine = Engine(
        units,
        activation=activation,
        out_activation=out_activation,
        dtype=dtype,
        max_batch=max(n, 2),
        sparse=sp.issparse(X),
        weighted=sw is not None,
        alpha=alpha,
        bn_momentum=bn_momentum,
        bn_epsilon=eps,
        **engine_options,
    )
    n_hidden = sum(units[1:-1])
    if running_mean is None:
        running_mean = np.zeros(n_hidden, dtype=dtype)
    if running_var is None:
        running_var = np.ones(n_hidden, dtype=dtype)
    params = Parameters(
        engine.layout.pack(coefs, gammas, intercepts, dtype),
        running_mean,
        running_var,
        n_batches_tracked,
    )
    engine.network.grad[:] = np.nan  # must be overwritten
    loss, grad = engine.loss_and_gradient(
        data=engine.bind(X, Y, sw),
        params=params,
        update_running=update_running,
        step=step,
    )
    return loss, engine.layout.unpack(grad), running_mean, running_var


# ---------------------------------------------------------------------------
# Problems


PROBLEMS = ["binary", "multiclass", "multilabel", "squared_error", "poisson"]
OUT_ACTIVATION = {
    "binary": "logistic",
    "multiclass": "softmax",
    "multilabel": "logistic",
    "squared_error": "identity",
    "poisson": "exp",
}


def make_problem(problem, n=11, n_features=4, hidden=(5, 3), seed=0, dtype=np.float64):
    """Data, targets (as the engine sees them) and random parameters."""
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features))
    n_out = {
        "binary": 1,
        "multiclass": 3,
        "multilabel": 3,
        "squared_error": 2,
        "poisson": 2,
    }[problem]
    if problem == "binary":
        Y = (rng.uniform(size=(n, 1)) < 0.5).astype(float)
    elif problem == "multiclass":
        Y = np.eye(n_out)[rng.randint(n_out, size=n)]
    elif problem == "multilabel":
        Y = (rng.uniform(size=(n, n_out)) < 0.5).astype(float)
    elif problem == "squared_error":
        Y = rng.normal(size=(n, n_out))
    else:
        Y = rng.poisson(1.5, size=(n, n_out)).astype(float)  # zeros included
    units = [n_features, *hidden, n_out]
    coefs = [rng.normal(scale=0.7, size=(a, b)) for a, b in zip(units[:-1], units[1:])]
    gammas = [rng.uniform(0.5, 1.5, size=h) for h in hidden]
    intercepts = [rng.uniform(-0.5, 0.5, size=u) for u in units[1:]]
    cast = [
        [np.asarray(p, dtype=dtype) for p in group]
        for group in (coefs, gammas, intercepts)
    ]
    return X.astype(dtype), Y.astype(dtype), *cast


def sample_weights(n, seed=0):
    rng = np.random.RandomState(seed + 100)
    sw = rng.uniform(0.2, 3.0, size=n)
    sw[1] = 0.0  # a zero weight counts for nothing, in the statistics too
    return sw


def assert_grad_allclose(actual, expected, rtol, atol):
    for name, a_group, e_group in zip(
        ("coefs", "gammas", "intercepts"), actual, expected
    ):
        assert len(a_group) == len(e_group), name
        for l, (a, e) in enumerate(zip(a_group, e_group)):
            assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{name}[{l}]")


# ---------------------------------------------------------------------------
# Loss and whole-network gradient


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_matches_central_differences(activation, problem, alpha, weighted):
    # Seeds whose problems keep ReLU's kink away from every pre-activation.
    seed = {"identity": 0, "logistic": 1, "tanh": 2, "relu": 3}.get(activation, 4)
    X, Y, coefs, gammas, intercepts = make_problem(problem, seed=seed)
    sw = sample_weights(X.shape[0]) if weighted else None
    out = OUT_ACTIVATION[problem]
    # ReLU's kink must be farther than the step h from every pre-activation
    # (a zero-weight row's pre-activations do not move the loss).
    _, _, pre = ref_forward_train(X, coefs, gammas, intercepts, activation, sw)
    rows = slice(None) if sw is None else sw > 0
    if activation == "relu":
        assert min(np.abs(y[rows]).min() for y in pre) > 1e-4

    loss, grad, _, _ = engine_loss_and_gradient(
        X, Y, sw, coefs, gammas, intercepts, activation, out, alpha
    )
    expected_loss = ref_loss(
        X, Y, sw, coefs, gammas, intercepts, activation, out, alpha
    )
    assert loss == pytest.approx(expected_loss, rel=1e-12, abs=1e-13)

    numeric = ref_numeric_gradient(
        X, Y, sw, coefs, gammas, intercepts, activation, out, alpha
    )
    assert_grad_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
    # The check is not vacuous: every group has a non-zero gradient.
    for group in grad:
        assert max(np.abs(g).max() for g in group) > 1e-3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("problem", ["binary", "multiclass", "multilabel"])
def test_saturated_probabilities_are_clipped_as_scikit_learn_does(problem, dtype):
    # Logits far beyond log(1 / eps): probabilities round to 0 or 1, and the
    # loss clips them to [eps, 1 - eps] (eps of the dtype), as scikit-learn's
    # log losses do; the gradient (p - y at the output) needs no clipping.
    from sklearn.neural_network._base import binary_log_loss, log_loss

    X, Y, coefs, gammas, intercepts = make_problem(problem, dtype=dtype)
    coefs[-1] = coefs[-1] * dtype(300)
    out = OUT_ACTIVATION[problem]
    raw = ref_forward_train(X, coefs, gammas, intercepts, "relu")[0]
    assert np.abs(raw).max() > 100
    p = (expit(raw) if out == "logistic" else softmax(raw, axis=1)).astype(dtype)
    assert ((p == 0) | (p == 1)).any()
    sk_loss = binary_log_loss if out == "logistic" else log_loss
    expected = sk_loss(Y, p)
    loss, grad, _, _ = engine_loss_and_gradient(
        X, Y, None, coefs, gammas, intercepts, "relu", out, 0.0
    )
    assert loss == pytest.approx(expected, rel=1e-5 if dtype == np.float32 else 1e-10)
    assert all(np.isfinite(g).all() for group in grad for g in group)


@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_gradient_hand_checked_single_hidden_unit(problem):
    # A hand-checked case: with one hidden unit and identity activation, batch
    # norm makes the hidden layer exactly gamma * standardized(z) + beta, so the
    # output does not depend on the first layer's coefficient at all.
    X = np.array([[1.0], [2.0], [4.0]])
    Y = (
        np.eye(2)[[0, 1, 1]]
        if problem == "multiclass"
        else np.array([[0.5, -1.0], [1.0, 0.0], [2.0, 1.0]])
    )
    out = OUT_ACTIVATION[problem]
    coefs = [np.array([[0.7]]), np.array([[0.3, -0.2]])]
    gammas = [np.array([1.3])]
    intercepts = [np.array([0.1]), np.array([0.05, -0.05])]
    loss, grad, _, _ = engine_loss_and_gradient(
        X, Y, None, coefs, gammas, intercepts, "identity", out, 0.0
    )
    z = X[:, 0] * 0.7
    h = 1.3 * (z - z.mean()) / np.sqrt(z.var() + BN_EPSILON) + 0.1
    raw = h[:, None] * coefs[1] + intercepts[1]
    assert loss == pytest.approx(ref_per_sample_loss(raw, Y, out).mean(), rel=1e-13)
    # dL/dW0 ~ 0: only bn_epsilon makes the layer (slightly) scale dependent.
    assert abs(grad[0][0][0, 0]) < 1e-4
    # d(output)/d(beta) = W1, so dL/dbeta = sum_outputs dL/draw_k * W1_k.
    delta = (softmax(raw, axis=1) - Y if problem == "multiclass" else raw - Y) / 3
    assert_allclose(grad[2][0], [(delta @ coefs[1].T).sum()], rtol=1e-10)
    assert_allclose(grad[2][1], delta.sum(axis=0), rtol=1e-10)


@pytest.mark.parametrize("hidden", [(5, 3), ()], ids=["hidden", "no-hidden"])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
def test_sparse_first_layer_gives_the_dense_loss_and_gradient(
    problem, weighted, alpha, hidden
):
    # alpha = 0: the products write the gradient (grad starts as NaN); alpha
    # > 0: they add to the L2 term written first.
    X, Y, coefs, gammas, intercepts = make_problem(
        problem, n=13, n_features=6, seed=3, hidden=hidden
    )
    X[np.abs(X) < 0.8] = 0.0  # about half the entries are zero
    X[4] = 0.0  # an empty row
    sw = sample_weights(X.shape[0]) if weighted else None
    out = OUT_ACTIVATION[problem]
    dense = engine_loss_and_gradient(
        X, Y, sw, coefs, gammas, intercepts, "tanh", out, alpha, update_running=True
    )
    for fmt in ("csr", "csc"):
        Xs = sp.csr_matrix(X) if fmt == "csr" else sp.csc_matrix(X)
        sparse = engine_loss_and_gradient(
            Xs,
            Y,
            sw,
            coefs,
            gammas,
            intercepts,
            "tanh",
            out,
            alpha,
            update_running=True,
        )
        assert sparse[0] == pytest.approx(dense[0], rel=1e-12)
        assert_grad_allclose(sparse[1], dense[1], rtol=1e-10, atol=1e-12)
        assert_allclose(sparse[2], dense[2], rtol=1e-12, atol=1e-14)
        assert_allclose(sparse[3], dense[3], rtol=1e-12)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_float32_engine_stays_close_to_float64(problem):
    X, Y, coefs, gammas, intercepts = make_problem(problem, n=20, seed=5)
    args64 = (
        X,
        Y,
        None,
        coefs,
        gammas,
        intercepts,
        "tanh",
        OUT_ACTIVATION[problem],
        0.1,
    )
    cast = [
        [p.astype(np.float32) for p in group] for group in (coefs, gammas, intercepts)
    ]
    args32 = (
        X.astype(np.float32),
        Y.astype(np.float32),
        None,
        *cast,
        "tanh",
        OUT_ACTIVATION[problem],
        0.1,
    )
    loss64, grad64, _, _ = engine_loss_and_gradient(*args64)
    loss32, grad32, rm32, rv32 = engine_loss_and_gradient(*args32, update_running=True)
    for group in grad32:
        for g in group:
            assert g.dtype == np.float32
    assert rm32.dtype == rv32.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    scale = max(np.abs(g).max() for group in grad64 for g in group)
    assert_grad_allclose(grad32, grad64, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_running_statistics_follow_the_pinned_update(weighted):
    X, Y, coefs, gammas, intercepts = make_problem("squared_error", n=9, seed=7)
    sw = np.array([2.0, 0.0, 1.0, 3.0, 1.0, 0.5, 1.0, 2.0, 1.5]) if weighted else None
    rng = np.random.RandomState(0)
    rm0 = rng.normal(size=8)
    rv0 = rng.uniform(0.5, 2.0, size=8)
    _, stats, _ = ref_forward_train(X, coefs, gammas, intercepts, "relu", sw)
    m = X.shape[0] if sw is None else sw.sum()
    for momentum in (0.1, 0.35):
        _, _, rm, rv = engine_loss_and_gradient(
            X,
            Y,
            sw,
            coefs,
            gammas,
            intercepts,
            "relu",
            "identity",
            0.0,
            running_mean=rm0.copy(),
            running_var=rv0.copy(),
            update_running=True,
            bn_momentum=momentum,
        )
        mean = np.concatenate([mu for mu, _ in stats])
        var = np.concatenate([v for _, v in stats])
        assert_allclose(
            rm, (1 - momentum) * rm0 + momentum * mean, rtol=1e-12, atol=1e-14
        )
        assert_allclose(
            rv, (1 - momentum) * rv0 + momentum * var * m / (m - 1), rtol=1e-12
        )
    # update_running=False (the gradient checks) leaves them alone.
    _, _, rm, rv = engine_loss_and_gradient(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        "relu",
        "identity",
        0.0,
        running_mean=rm0.copy(),
        running_var=rv0.copy(),
    )
    assert_array_equal(rm, rm0)
    assert_array_equal(rv, rv0)


def test_gradient_does_not_depend_on_stale_workspace():
    # Two calls with the same workspace and parameters give the same answer
    # (nothing accumulates into grad or the statistics between calls).
    X, Y, coefs, gammas, intercepts = make_problem("multiclass", n=12, seed=8)
    first = engine_loss_and_gradient(
        X, Y, None, coefs, gammas, intercepts, "relu", "softmax", 0.2
    )
    second = engine_loss_and_gradient(
        X, Y, None, coefs, gammas, intercepts, "relu", "softmax", 0.2
    )
    assert first[0] == second[0]
    assert_grad_allclose(first[1], second[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Whole optimizer steps, as the estimators take them


def params_of(est):
    return (
        [c.copy() for c in est.coefs_],
        [g.copy() for g in est.gammas_],
        [b.copy() for b in est.intercepts_],
    )


def running_of(est):
    return (
        [m.copy() for m in est.running_means_],
        [v.copy() for v in est.running_vars_],
    )


def glorot_draws(units, activation, rs):
    """Draw scikit-learn's MLP initialization from ``rs``; the coefficients."""
    factor = 2.0 if activation == "logistic" else 6.0
    coefs = []
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        coefs.append(rs.uniform(-bound, bound, (fan_in, fan_out)))
        rs.uniform(-bound, bound, fan_out)  # the intercepts' draw
    return coefs


def stream_after_init(units, activation, seed):
    """The estimator's random stream once it has drawn its initialization."""
    rs = np.random.RandomState(seed)
    glorot_draws(units, activation, rs)
    return rs


def glorot_init(units, activation, seed):
    """scikit-learn's MLP initialization (same random stream)."""
    coefs = glorot_draws(units, activation, np.random.RandomState(seed))
    gammas = [np.ones(u) for u in units[1:-1]]
    intercepts = [np.zeros(u) for u in units[1:]]
    return coefs, gammas, intercepts


def sgd_step(params, grad, lr):
    return [[p - lr * g for p, g in zip(pg, gg)] for pg, gg in zip(params, grad)]


def assert_params_allclose(est, expected, rtol=1e-7, atol=1e-9):
    assert_grad_allclose(params_of(est), expected, rtol=rtol, atol=atol)


def regression_data(n=8, n_features=3, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features))
    y = X @ rng.normal(size=n_features) + 0.3 * rng.normal(size=n)
    return X, y


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("activation", ["relu", "logistic"])
def test_first_sgd_step_from_scikit_learn_initialization(activation, weighted):
    X, y = regression_data()
    n = X.shape[0]
    sw = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0, 2.0]) if weighted else None
    lr, alpha = 0.05, 0.01
    est = MLPBNRegressor(
        hidden_layer_sizes=(4, 3),
        activation=activation,
        solver="sgd",
        momentum=0.0,
        batch_size=n,
        shuffle=False,
        learning_rate_init=lr,
        alpha=alpha,
        random_state=0,
    )
    est.partial_fit(X, y, sample_weight=sw)

    units = [3, 4, 3, 1]
    params0 = glorot_init(units, activation, seed=0)
    grad = ref_numeric_gradient(X, y, sw, *params0, activation, "identity", alpha)
    assert_params_allclose(est, sgd_step(params0, grad, lr))

    # Running statistics start at 0 and 1 and took one step from the batch's
    # statistics at the initial parameters.
    _, stats, _ = ref_forward_train(X, *params0, activation, sw)
    m = n if sw is None else sw.sum()
    means, variances = running_of(est)
    for l, (mu, var) in enumerate(stats):
        assert_allclose(means[l], 0.1 * mu, rtol=1e-10, atol=1e-14)
        assert_allclose(variances[l], 0.9 + 0.1 * var * m / (m - 1), rtol=1e-10)

    expected_loss = ref_loss(X, y, sw, *params0, activation, "identity", alpha)
    assert est.loss_curve_ == [pytest.approx(expected_loss, rel=1e-10)]
    assert est.t_ == n
    assert est.n_iter_ == 1


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
def test_multi_output_loss_is_reported_as_scikit_learn_does(loss):
    # The gradient is that of the loss summed over outputs (for scikit-learn
    # too); loss_ reports the squared error as a mean over outputs and the
    # Poisson deviance as a sum, with scikit-learn's own functions.
    from sklearn.neural_network._base import poisson_loss, squared_loss

    rng = np.random.RandomState(5)
    n = 12
    X = rng.normal(size=(n, 3))
    Y = np.abs(X @ rng.normal(size=(3, 3))) + 0.1
    sw = rng.uniform(0.5, 2.0, n)
    lr, alpha = 0.05, 0.01
    est = MLPBNRegressor(
        hidden_layer_sizes=(4,),
        activation="tanh",
        solver="sgd",
        momentum=0.0,
        batch_size=n,
        shuffle=False,
        learning_rate_init=lr,
        alpha=alpha,
        loss=loss,
        random_state=0,
    )
    est.partial_fit(X, Y, sample_weight=sw)

    out = "identity" if loss == "squared_error" else "exp"
    params0 = glorot_init([3, 4, 3], "tanh", seed=0)
    raw = ref_forward_train(X, *params0, "tanh", sw)[0]
    pred = raw if loss == "squared_error" else np.exp(raw)
    sk_loss = squared_loss if loss == "squared_error" else poisson_loss
    l2 = sum((W**2).sum() for W in params0[0])
    expected = sk_loss(Y, pred, sample_weight=sw) + 0.5 * alpha * l2 / sw.sum()
    assert est.loss_curve_ == [pytest.approx(expected, rel=1e-10)]
    grad = ref_numeric_gradient(X, Y, sw, *params0, "tanh", out, alpha)
    assert_params_allclose(est, sgd_step(params0, grad, lr))


LABEL_SMOOTHING_CASES = {
    # problem: (labels, smoothed targets of the labels, output activation)
    "multiclass": (
        np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 1]),
        lambda Y, eps: (1 - eps) * Y + eps / 3,
        "softmax",
    ),
    "binary": (
        np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1]),
        lambda Y, eps: Y * (1 - eps) + eps / 2,
        "logistic",
    ),
    "multilabel": (
        np.array(
            [
                [0, 1],
                [1, 1],
                [1, 0],
                [0, 0],
                [1, 1],
                [0, 1],
                [1, 0],
                [0, 0],
                [1, 0],
                [0, 1],
            ]
        ),
        lambda Y, eps: Y * (1 - eps) + eps / 2,
        "logistic",
    ),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("problem", list(LABEL_SMOOTHING_CASES))
def test_label_smoothing_trains_on_the_smoothed_targets(problem, dtype):
    # One SGD step on one minibatch: the loss is the log loss against the
    # smoothed targets, and the step follows its gradient (central
    # differences of the float64 reference).
    labels, smooth, out = LABEL_SMOOTHING_CASES[problem]
    rng = np.random.RandomState(3)
    n = len(labels)
    X = rng.normal(size=(n, 3))
    sw = rng.uniform(0.5, 2.0, n)
    eps, lr, alpha = 0.2, 0.05, 0.01
    est = MLPBNClassifier(
        hidden_layer_sizes=(4,),
        activation="tanh",
        solver="sgd",
        momentum=0.0,
        batch_size=n,
        shuffle=False,
        learning_rate_init=lr,
        alpha=alpha,
        label_smoothing=eps,
        random_state=0,
    )
    classes = [0, 1] if problem == "multilabel" else np.unique(labels)
    est.partial_fit(X.astype(dtype), labels, sample_weight=sw, classes=classes)
    Y = (
        labels
        if labels.ndim == 2
        else np.eye(3)[labels]
        if problem == "multiclass"
        else labels[:, None]
    ).astype(float)
    Y_smooth = smooth(Y, eps)
    params0 = glorot_init([3, 4, Y.shape[1]], "tanh", seed=0)
    sw_used = sw.astype(dtype).astype(np.float64)
    expected = ref_loss(
        X.astype(dtype), Y_smooth, sw_used, *params0, "tanh", out, alpha
    )
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    assert est.loss_ == pytest.approx(expected, rel=rtol)
    grad = ref_numeric_gradient(
        X.astype(dtype), Y_smooth, sw_used, *params0, "tanh", out, alpha
    )
    if dtype == np.float64:
        assert_params_allclose(est, sgd_step(params0, grad, lr))
    else:
        assert_params_allclose(est, sgd_step(params0, grad, lr), rtol=1e-4, atol=1e-5)
    # The true labels come back out.
    assert est.predict(X).shape == labels.shape


def test_label_smoothing_matches_pytorch_cross_entropy():
    torch = pytest.importorskip("torch")
    labels, _, _ = LABEL_SMOOTHING_CASES["multiclass"]
    rng = np.random.RandomState(4)
    X = rng.normal(size=(len(labels), 3))
    eps = 0.3
    est = MLPBNClassifier(
        hidden_layer_sizes=(4,),
        activation="relu",
        solver="sgd",
        momentum=0.0,
        batch_size=len(labels),
        shuffle=False,
        learning_rate_init=1e-3,
        alpha=0.0,
        label_smoothing=eps,
        random_state=0,
    )
    est.partial_fit(X, labels, classes=[0, 1, 2])
    params0 = glorot_init([3, 4, 3], "relu", seed=0)
    raw = ref_forward_train(X, *params0, "relu")[0]
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(raw), torch.tensor(labels), label_smoothing=eps
    ).item()
    assert est.loss_ == pytest.approx(expected, rel=1e-10)


def test_label_smoothing_off_and_validation():
    X, y = regression_data(n=40)
    labels = (y > np.median(y)).astype(int)
    # The default is off: exactly label_smoothing=0.0, which the pinned fits
    # of test_reproducibility pass (the math before label smoothing).
    default = MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    zero = MLPBNClassifier(
        hidden_layer_sizes=(4,), max_iter=2, random_state=0, label_smoothing=0.0
    )
    smoothed = MLPBNClassifier(
        hidden_layer_sizes=(4,), max_iter=2, random_state=0, label_smoothing=0.1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b = default.fit(X, labels), zero.fit(X, labels)
        smoothed.fit(X, labels)
        # Early stopping scores the true labels: accuracies, not smoothed.
        stopped = MLPBNClassifier(
            hidden_layer_sizes=(4,),
            max_iter=3,
            random_state=0,
            early_stopping=True,
            validation_fraction=0.25,
            label_smoothing=0.4,
        ).fit(X, labels)
    for p, q in zip(a.coefs_, b.coefs_):
        assert_array_equal(p, q)
    assert not np.array_equal(a.coefs_[0], smoothed.coefs_[0])
    assert all(score in np.arange(11) / 10 for score in stopped.validation_scores_)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="label_smoothing"):
            MLPBNClassifier(label_smoothing=bad).fit(X, labels)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_steps(nesterov):
    # Two minibatches per epoch, two epochs via partial_fit: the velocity is
    # carried across minibatches and across partial_fit calls.
    X, y = regression_data(n=8)
    lr, mom = 0.05, 0.9
    est = MLPBNRegressor(
        hidden_layer_sizes=(4,),
        activation="tanh",
        solver="sgd",
        momentum=mom,
        nesterovs_momentum=nesterov,
        batch_size=4,
        shuffle=False,
        learning_rate_init=lr,
        alpha=0.0,
        random_state=1,
    )
    params = glorot_init([3, 4, 1], "tanh", seed=1)
    velocity = [[np.zeros_like(p) for p in group] for group in params]
    for _epoch in range(2):
        est.partial_fit(X, y)
        for rows in (slice(0, 4), slice(4, 8)):
            grad = ref_numeric_gradient(
                X[rows], y[rows], None, *params, "tanh", "identity", 0.0
            )
            new_params = []
            for pg, vg, gg in zip(params, velocity, grad):
                for i, (p, v, g) in enumerate(zip(pg, vg, gg)):
                    v = mom * v - lr * g
                    vg[i] = v
                    pg[i] = p + (mom * v - lr * g if nesterov else v)
                new_params.append(pg)
            params = new_params
        assert_params_allclose(est, params)


def adam_reference_step(params, m_state, v_state, grad, t, lr, b1, b2, eps):
    """Adam's step ``t`` (from 1) in numpy, in place on the nested lists."""
    lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    for pg, mg, vg, gg in zip(params, m_state, v_state, grad):
        for i in range(len(pg)):
            mg[i] = b1 * mg[i] + (1 - b1) * gg[i]
            vg[i] = b2 * vg[i] + (1 - b2) * gg[i] ** 2
            pg[i] = pg[i] - lr_t * mg[i] / (np.sqrt(vg[i]) + eps)


def test_adam_steps():
    X, y = regression_data(n=6)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    est = MLPBNRegressor(
        hidden_layer_sizes=(3,),
        activation="relu",
        solver="adam",
        batch_size=6,
        shuffle=False,
        learning_rate_init=lr,
        alpha=0.05,
        random_state=2,
    )
    params = glorot_init([3, 3, 1], "relu", seed=2)
    m_state = [[np.zeros_like(p) for p in group] for group in params]
    v_state = [[np.zeros_like(p) for p in group] for group in params]
    for t in (1, 2, 3):
        est.partial_fit(X, y)
        grad = ref_numeric_gradient(X, y, None, *params, "relu", "identity", 0.05)
        adam_reference_step(params, m_state, v_state, grad, t, lr, b1, b2, eps)
        # Adam divides by sqrt(v): finite-difference noise in tiny gradient
        # components is amplified, so compare a little more loosely.
        assert_params_allclose(est, params, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_adam_steps_of_a_deep_network(n_threads, monkeypatch):
    # Each engine thread steps the parameters whose gradient it computed, a
    # hidden layer's coefficients only once the delta below is complete:
    # three hidden layers exercise every place a step happens, and widths
    # over 16 give the second thread a share of each layer.
    monkeypatch.setattr(
        _threads, "training_threads", lambda work: forced_engine_threads(n_threads)
    )
    X, y = regression_data(n=16, n_features=3, seed=3)
    lr, b1, b2, eps, alpha = 0.01, 0.9, 0.999, 1e-8, 0.05
    est = MLPBNRegressor(
        hidden_layer_sizes=(20, 18, 17),
        activation="tanh",
        solver="adam",
        batch_size=8,
        shuffle=False,
        learning_rate_init=lr,
        alpha=alpha,
        random_state=4,
    )
    params = glorot_init([3, 20, 18, 17, 1], "tanh", seed=4)
    m_state = [[np.zeros_like(p) for p in group] for group in params]
    v_state = [[np.zeros_like(p) for p in group] for group in params]
    t = 0
    for _epoch in range(2):
        est.partial_fit(X, y)
        for rows in (slice(0, 8), slice(8, 16)):
            t += 1
            grad = ref_numeric_gradient(
                X[rows], y[rows], None, *params, "tanh", "identity", alpha
            )
            adam_reference_step(params, m_state, v_state, grad, t, lr, b1, b2, eps)
        assert_params_allclose(est, params, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "n, batch_size, expected_batches",
    [
        (5, 2, [(0, 2), (2, 5)]),  # 2 + 1: the single row joins -> 2, 3
        (7, 3, [(0, 3), (3, 7)]),  # 3 + 3 + 1 -> 3, 4
        (6, 2, [(0, 2), (2, 4), (4, 6)]),  # no trailing single row
        (3, 2, [(0, 3)]),  # 2 + 1 -> one batch of 3
    ],
)
def test_trailing_single_row_joins_the_previous_minibatch(
    n, batch_size, expected_batches
):
    X, y = regression_data(n=n, seed=n)
    lr = 0.1
    est = MLPBNRegressor(
        hidden_layer_sizes=(3,),
        activation="tanh",
        solver="sgd",
        momentum=0.0,
        batch_size=batch_size,
        shuffle=False,
        learning_rate_init=lr,
        alpha=0.01,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN, no clipping warning
        est.partial_fit(X, y)
    params = glorot_init([3, 3, 1], "tanh", seed=0)
    rm, rv = np.zeros(3), np.ones(3)
    loss_sum = 0.0
    for start, stop in expected_batches:
        Xb, yb = X[start:stop], y[start:stop]
        m = stop - start
        loss_sum += m * ref_loss(Xb, yb, None, *params, "tanh", "identity", 0.01)
        _, stats, _ = ref_forward_train(Xb, *params, "tanh")
        mu, var = stats[0]
        rm = 0.9 * rm + 0.1 * mu
        rv = 0.9 * rv + 0.1 * var * m / (m - 1)
        grad = ref_numeric_gradient(Xb, yb, None, *params, "tanh", "identity", 0.01)
        params = sgd_step(params, grad, lr)
    assert_params_allclose(est, params)
    assert_allclose(est.running_means_[0], rm, rtol=1e-9, atol=1e-12)
    assert_allclose(est.running_vars_[0], rv, rtol=1e-9)
    assert est.loss_curve_[-1] == pytest.approx(loss_sum / n, rel=1e-10)
    assert est.t_ == n


def test_minibatch_with_zero_weight_is_skipped():
    X, y = regression_data(n=6, seed=4)
    sw = np.array([0.0, 0.0, 1.0, 2.0, 0.5, 1.0])
    lr = 0.1
    est = MLPBNRegressor(
        hidden_layer_sizes=(3,),
        activation="relu",
        solver="sgd",
        momentum=0.0,
        batch_size=2,
        shuffle=False,
        learning_rate_init=lr,
        alpha=0.0,
        random_state=0,
    )
    est.partial_fit(X, y, sample_weight=sw)
    params = glorot_init([3, 3, 1], "relu", seed=0)
    rm, rv = np.zeros(3), np.ones(3)
    loss_sum = 0.0
    for start, stop in [(2, 4), (4, 6)]:  # the first batch has no weight
        Xb, yb, wb = X[start:stop], y[start:stop], sw[start:stop]
        loss_sum += 2 * ref_loss(Xb, yb, wb, *params, "relu", "identity", 0.0)
        _, stats, _ = ref_forward_train(Xb, *params, "relu", wb)
        mu, var = stats[0]
        rm = 0.9 * rm + 0.1 * mu
        # m of the unbiased correction: the weight sum (repeat counts), or the
        # number of weighted rows when the weights sum to less than 2.
        m = wb.sum() if wb.sum() >= 2 else np.count_nonzero(wb)
        rv = 0.9 * rv + 0.1 * var * m / (m - 1)
        grad = ref_numeric_gradient(Xb, yb, wb, *params, "relu", "identity", 0.0)
        params = sgd_step(params, grad, lr)
    assert_params_allclose(est, params)
    assert_allclose(est.running_means_[0], rm, rtol=1e-9, atol=1e-12)
    assert_allclose(est.running_vars_[0], rv, rtol=1e-9)
    # The mean over the minibatches trained: the skipped one's rows do not
    # count.
    assert est.loss_ == pytest.approx(loss_sum / 4, rel=1e-10)


def test_invscaling_learning_rate_after_each_epoch():
    X, y = regression_data(n=6, seed=5)
    lr, power_t = 0.2, 0.5
    est = MLPBNRegressor(
        hidden_layer_sizes=(3,),
        activation="tanh",
        solver="sgd",
        momentum=0.0,
        batch_size=6,
        shuffle=False,
        learning_rate="invscaling",
        learning_rate_init=lr,
        power_t=power_t,
        alpha=0.0,
        random_state=0,
    )
    params = glorot_init([3, 3, 1], "tanh", seed=0)
    for epoch in range(3):
        est.partial_fit(X, y)
        # scikit-learn: after the epoch that brings t to n * epoch samples,
        # lr = learning_rate_init / (t + 1) ** power_t.
        lr_epoch = lr if epoch == 0 else lr / (6 * epoch + 1) ** power_t
        grad = ref_numeric_gradient(X, y, None, *params, "tanh", "identity", 0.0)
        params = sgd_step(params, grad, lr_epoch)
        assert_params_allclose(est, params)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_warm_start_continues_from_the_previous_weights(solver):
    X, y = regression_data(n=10, seed=6)
    kwargs = dict(
        hidden_layer_sizes=(4,),
        activation="relu",
        solver=solver,
        momentum=0.0,
        batch_size=10,
        shuffle=False,
        learning_rate="constant",
        learning_rate_init=0.05,
        alpha=0.0,
        random_state=0,
        tol=0.0,
        n_iter_no_change=100,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached
        est = MLPBNRegressor(max_iter=3, **kwargs).fit(X, y)
        before = params_of(est)
        running = running_of(est)
        curve = list(est.loss_curve_)
        est.set_params(warm_start=True, max_iter=1)
        est.fit(X, y)
    # One more full-batch step from where it was (a warm-started fit starts
    # a fresh optimizer, as scikit-learn's does).
    grad = ref_numeric_gradient(X, y, None, *before, "relu", "identity", 0.0)
    step = (
        sgd_step(before, grad, 0.05)
        if solver == "sgd"
        else [
            [
                p
                - 0.05
                * np.sign(g)
                * np.abs(g)
                / (np.abs(g) + 1e-8 / np.sqrt(1 - 0.999))
                for p, g in zip(pg, gg)
            ]
            for pg, gg in zip(before, grad)
        ]
    )
    assert_params_allclose(est, step, rtol=1e-6, atol=1e-7)
    _, stats, _ = ref_forward_train(X, *before, "relu")
    assert_allclose(
        est.running_means_[0],
        0.9 * running[0][0] + 0.1 * stats[0][0],
        rtol=1e-9,
        atol=1e-12,
    )
    assert len(est.loss_curve_) == 4 and est.loss_curve_[:3] == curve
    assert est.t_ == 40

    if solver == "sgd":
        # Warm-started 3 + 1 epochs equal 4 cold epochs (momentum=0, constant lr).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cold = MLPBNRegressor(max_iter=4, **kwargs).fit(X, y)
        assert_grad_allclose(params_of(est), params_of(cold), rtol=1e-12, atol=1e-14)
        assert cold.loss_curve_ == pytest.approx(est.loss_curve_, rel=1e-12)


# ---------------------------------------------------------------------------
# Decoupled weight decay and the cosine schedule (issue #23's pinned math)


def cosine_rate(lr, t, T):
    return lr * (1 + np.cos(np.pi * t / T)) / 2


def reference_steps(
    params,
    batches,
    lr_of_step,
    *,
    solver,
    weight_decay=0.0,
    momentum=0.0,
    nesterov=False,
    alpha=0.0,
    activation="tanh",
    b1=0.9,
    b2=0.999,
    eps=1e-8,
):
    """The pinned steps of ``solver`` in numpy (reference.optimizer_steps),
    on central-difference gradients of the minibatches ``batches``."""
    hyper = {
        "momentum": momentum,
        "nesterovs_momentum": nesterov,
        "beta_1": b1,
        "beta_2": b2,
        "epsilon": eps,
    }

    def gradient(params, t):
        Xb, yb = batches[t]
        return ref_numeric_gradient(
            Xb, yb, None, *params, activation, "identity", alpha
        )

    return optimizer_steps(
        solver, hyper, params, gradient, len(batches), lr_of_step, weight_decay
    )


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_weight_decay_shrinks_the_coefficients_only(solver):
    # One full-batch step: the coefficients are decayed by lr * weight_decay
    # and stepped from the gradient at the undecayed weights; gammas and
    # intercepts only take the step. alpha keeps its L2 term.
    X, y = regression_data(n=8)
    lr, wd, alpha = 0.05, 0.3, 0.01
    est = MLPBNRegressor(
        hidden_layer_sizes=(4, 3),
        activation="tanh",
        solver=solver,
        momentum=0.0,
        batch_size=8,
        shuffle=False,
        learning_rate_init=lr,
        alpha=alpha,
        weight_decay=wd,
        random_state=0,
    )
    est.partial_fit(X, y)
    params0 = glorot_init([3, 4, 3, 1], "tanh", seed=0)
    expected = reference_steps(
        params0, [(X, y)], lambda t: lr, solver=solver, weight_decay=wd, alpha=alpha
    )
    rtol, atol = (1e-7, 1e-9) if solver == "sgd" else (1e-6, 1e-7)
    assert_params_allclose(est, expected, rtol=rtol, atol=atol)
    # Without the decay, the coefficients differ by lr * wd * W exactly where
    # the decay acts, and nothing else moves.
    plain = clone_params(est, weight_decay=0.0)
    plain.partial_fit(X, y)
    for k, (a, b, p0) in enumerate(zip(params_of(est), params_of(plain), params0)):
        for got, other, w0 in zip(a, b, p0):
            if k == 0:
                assert_allclose(other - got, lr * wd * w0, rtol=1e-9, atol=1e-12)
            else:
                assert_array_equal(got, other)


def clone_params(est, **changes):
    from sklearn.base import clone

    return clone(est).set_params(**changes)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_cosine_schedule_steps(solver, nesterov):
    # Two epochs of two minibatches with max_iter=3: T = 3 * 2 steps, step t
    # (from 0, over the whole fit) at lr * (1 + cos(pi * t / T)) / 2; with
    # weight decay at the same rate.
    X, y = regression_data(n=8)
    lr, wd, max_iter = 0.05, 0.1, 3
    est = MLPBNRegressor(
        hidden_layer_sizes=(4,),
        activation="tanh",
        solver=solver,
        momentum=0.9,
        nesterovs_momentum=nesterov,
        batch_size=4,
        shuffle=False,
        learning_rate="cosine",
        learning_rate_init=lr,
        alpha=0.0,
        weight_decay=wd,
        max_iter=max_iter,
        tol=0.0,
        n_iter_no_change=100,
        random_state=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert est.n_iter_ == max_iter
    batches = [(X[:4], y[:4]), (X[4:], y[4:])] * max_iter
    expected = reference_steps(
        glorot_init([3, 4, 1], "tanh", seed=1),
        batches,
        lambda t: cosine_rate(lr, t, 6),
        solver=solver,
        weight_decay=wd,
        momentum=0.9,
        nesterov=nesterov,
    )
    assert_params_allclose(est, expected, rtol=1e-6, atol=1e-7)
    assert est._optimizer_state["step"] == 6


def test_cosine_schedule_restarts_with_warm_start_and_not_in_partial_fit():
    # T = 1 step: the first step is at lr, a second step of the same fit
    # would be at lr * (1 + cos(pi)) / 2 = 0. A warm-started fit starts the
    # schedule again; partial_fit steps at learning_rate_init.
    X, y = regression_data(n=6, seed=7)
    lr = 0.1
    kwargs = dict(
        hidden_layer_sizes=(3,),
        activation="tanh",
        solver="sgd",
        momentum=0.0,
        batch_size=6,
        shuffle=False,
        learning_rate="cosine",
        learning_rate_init=lr,
        max_iter=1,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPBNRegressor(**kwargs).fit(X, y)
        first = params_of(est)
        est.set_params(warm_start=True).fit(X, y)
    grad = ref_numeric_gradient(X, y, None, *first, "tanh", "identity", est.alpha)
    assert_params_allclose(est, sgd_step(first, grad, lr))
    before = params_of(est)
    est.partial_fit(X, y)
    grad = ref_numeric_gradient(X, y, None, *before, "tanh", "identity", est.alpha)
    assert_params_allclose(est, sgd_step(before, grad, lr))


@pytest.mark.parametrize("early_stopping", [False, True])
def test_cosine_horizon_counts_the_training_minibatches(early_stopping):
    # T = max_iter * the minibatches of an epoch over the training rows
    # (after early stopping's split); a trailing single row joins the
    # previous minibatch.
    from sklearn_bn._optimizers import batches_per_epoch

    X, y = regression_data(n=41, seed=8)
    est = MLPBNRegressor(
        hidden_layer_sizes=(3,),
        batch_size=10,
        learning_rate="cosine",
        max_iter=2,
        early_stopping=early_stopping,
        validation_fraction=0.25,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    n_train = 30 if early_stopping else 41  # 41 = 4 * 10 + 1: four minibatches
    assert batches_per_epoch(n_train, 10) == (3 if early_stopping else 4)
    assert est._optimizer_state["horizon"] == 2 * batches_per_epoch(n_train, 10)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("sparse_input", [False, True], ids=["dense", "sparse"])
def test_shuffled_epoch_equals_training_on_the_permuted_rows(sparse_input, weighted):
    # With shuffle=True the engine gathers each minibatch through the epoch's
    # permutation. Drawn as the estimator draws it (initialization first, then
    # sklearn.utils.shuffle on the same stream), the permutation applied to
    # the data up front with shuffle=False must give the same epoch.
    from sklearn.utils import shuffle as sk_shuffle

    X, y = regression_data(n=21, n_features=4, seed=9)
    if sparse_input:
        X[np.abs(X) < 0.5] = 0.0
    sw = np.random.RandomState(3).uniform(0.5, 2.0, size=21) if weighted else None
    rs = stream_after_init([4, 5, 1], "tanh", seed=0)
    perm = sk_shuffle(np.arange(21), random_state=rs)
    assert not np.array_equal(perm, np.arange(21))

    kwargs = dict(
        hidden_layer_sizes=(5,),
        activation="tanh",
        solver="adam",
        batch_size=8,
        learning_rate_init=0.05,
        alpha=0.01,
        random_state=0,
    )
    as_input = sp.csr_matrix if sparse_input else np.asarray
    shuffled = MLPBNRegressor(shuffle=True, **kwargs).partial_fit(
        as_input(X), y, sample_weight=sw
    )
    permuted = MLPBNRegressor(shuffle=False, **kwargs).partial_fit(
        as_input(X[perm]), y[perm], sample_weight=None if sw is None else sw[perm]
    )
    assert_grad_allclose(
        params_of(shuffled), params_of(permuted), rtol=1e-12, atol=1e-14
    )
    for a, b in zip(running_of(shuffled), running_of(permuted)):
        assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-14)
    assert shuffled.loss_ == pytest.approx(permuted.loss_, rel=1e-12)


def test_epoch_orders_are_sklearns_successive_shuffles(monkeypatch):
    # Each epoch reshuffles the previous epoch's order, as MLPClassifier does
    # (sample_idx = shuffle(sample_idx, random_state)), on the same stream.
    from sklearn.utils import shuffle as sk_shuffle

    X, y = regression_data(n=23, n_features=4, seed=2)
    orders = []
    train_epoch = Engine.train_epoch

    def record(self, **kwargs):
        orders.append(np.array(kwargs["order"], copy=True))  # sample_idx
        return train_epoch(self, **kwargs)

    monkeypatch.setattr(Engine, "train_epoch", record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPBNRegressor(
            hidden_layer_sizes=(5,),
            batch_size=8,
            max_iter=3,
            tol=0.0,
            n_iter_no_change=100,
            random_state=0,
        ).fit(X, y)
    rs = stream_after_init([4, 5, 1], "relu", seed=0)
    expected = np.arange(23)
    assert len(orders) == 3
    for order in orders:
        expected = sk_shuffle(expected, random_state=rs)
        assert_array_equal(order, expected)


# ---------------------------------------------------------------------------
# Threads: an OpenMP team shares every minibatch


@contextlib.contextmanager
def forced_engine_threads(n_threads, pieces=None):
    """What ``_threads.training_threads`` does, with the number of threads
    and of pieces (default: as many as threads) fixed (the machine running
    the tests may have a single core)."""
    with threadpool_limits(1, user_api="blas"):
        yield _threads.TeamSize(n_threads if pieces is None else pieces, n_threads)


def assert_same_fit(a, b):
    """The same model, bit for bit: its parameters, running statistics and
    loss curve."""
    for p, q in zip(
        sum(params_of(a) + running_of(a), []), sum(params_of(b) + running_of(b), [])
    ):
        assert_array_equal(p, q)
    assert a.loss_curve_ == b.loss_curve_


THREAD_CASES = {
    # Widths that leave threads uneven or empty shares (they share units in
    # multiples of 16 and rows in multiples of 8).
    "dense-adam": dict(
        est=MLPBNClassifier,
        hidden=(40, 33),
        activation="relu",
        solver="adam",
        sparse=False,
        weighted=False,
        shuffle=True,
    ),
    "sparse-sgd-weighted": dict(
        est=MLPBNClassifier,
        hidden=(17,),
        activation="tanh",
        solver="sgd",
        sparse=True,
        weighted=True,
        shuffle=True,
    ),
    "deep-unshuffled": dict(
        est=MLPBNRegressor,
        hidden=(8, 20, 8),
        activation="logistic",
        solver="adam",
        sparse=False,
        weighted=True,
        shuffle=False,
    ),
    "no-hidden-dense": dict(
        est=MLPBNRegressor,
        hidden=(),
        activation="relu",
        solver="adam",
        sparse=False,
        weighted=False,
        shuffle=True,
    ),
    "no-hidden-sparse": dict(
        est=MLPBNClassifier,
        hidden=(),
        activation="relu",
        solver="sgd",
        sparse=True,
        weighted=True,
        shuffle=True,
    ),
    # Minibatches of 10 rows against units wide enough that pieces beyond
    # two sum the coefficient gradients by columns rather than from shares.
    "small-batches-wide": dict(
        est=MLPBNRegressor,
        hidden=(150, 40),
        activation="relu",
        solver="adam",
        sparse=False,
        weighted=True,
        shuffle=True,
        extra=dict(batch_size=10),
    ),
    # Ghost batches (pieces hold whole chunks of rows) and dropout.
    "ghost-dropout-sparse": dict(
        est=MLPBNClassifier,
        hidden=(40, 33),
        activation="tanh",
        solver="adam",
        sparse=True,
        weighted=True,
        shuffle=True,
        extra=dict(virtual_batch_size=16, dropout=0.2),
    ),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("case", list(THREAD_CASES))
def test_threads_give_the_single_thread_result(case, n_threads, dtype, monkeypatch):
    cfg = THREAD_CASES[case]
    rng = np.random.RandomState(0)
    X = rng.normal(size=(203, 37)).astype(dtype)
    if cfg["sparse"]:
        X[np.abs(X) < 0.8] = 0
        X = sp.csr_matrix(X)
    if cfg["est"] is MLPBNClassifier:
        y = rng.randint(0, 4, size=203)
    else:
        y = rng.normal(size=(203, 3))
    sw = rng.uniform(0.2, 2.0, size=203) if cfg["weighted"] else None
    fits = []
    for threads in (1, n_threads):
        monkeypatch.setattr(
            _threads,
            "training_threads",
            lambda work, t=threads: forced_engine_threads(t),
        )
        est = cfg["est"](
            hidden_layer_sizes=cfg["hidden"],
            activation=cfg["activation"],
            solver=cfg["solver"],
            max_iter=3,
            shuffle=cfg["shuffle"],
            alpha=1e-3,
            random_state=0,
            **{"batch_size": 50, **cfg.get("extra", {})},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits.append(est.fit(X, y, sample_weight=sw))
    one, many = fits
    # Splitting a product across threads may round differently (BLAS may take
    # another kernel for a narrower panel of columns).
    rtol, atol = (1e-9, 1e-12) if dtype == np.float64 else (2e-4, 2e-5)
    assert_grad_allclose(params_of(many), params_of(one), rtol=rtol, atol=atol)
    for a, b in zip(running_of(many), running_of(one)):
        assert_grad_allclose(a, b, rtol=rtol, atol=atol)
    assert_allclose(many.loss_curve_, one.loss_curve_, rtol=rtol)
    assert many.coefs_[0].dtype == dtype


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pieces", [2, 3])
@pytest.mark.parametrize("case", list(THREAD_CASES))
def test_the_threads_do_not_change_the_result(case, pieces, dtype, monkeypatch):
    # The pieces fix the decomposition: one thread, as many threads as
    # pieces, more or fewer, take them in any order and give the same bits.
    cfg = THREAD_CASES[case]
    rng = np.random.RandomState(1)
    X = rng.normal(size=(203, 37)).astype(dtype)
    if cfg["sparse"]:
        X[np.abs(X) < 0.8] = 0
        X = sp.csr_matrix(X)
    y = (
        rng.randint(0, 4, size=203)
        if cfg["est"] is MLPBNClassifier
        else rng.normal(size=(203, 3))
    )
    sw = rng.uniform(0.2, 2.0, size=203) if cfg["weighted"] else None
    fits = []
    for threads in (pieces, 1, pieces - 1, pieces + 1):
        monkeypatch.setattr(
            _threads,
            "training_threads",
            lambda work, t=threads: forced_engine_threads(t, pieces),
        )
        est = cfg["est"](
            hidden_layer_sizes=cfg["hidden"],
            activation=cfg["activation"],
            solver=cfg["solver"],
            max_iter=3,
            shuffle=cfg["shuffle"],
            alpha=1e-3,
            random_state=0,
            **{"batch_size": 50, **cfg.get("extra", {})},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits.append(est.fit(X, y, sample_weight=sw))
    for other in fits[1:]:
        assert_same_fit(other, fits[0])


TEAM, PINNED, ONE = (
    _threads.TeamChoice(2),
    _threads.TeamChoice(2, pinned=True),
    _threads.TeamChoice(1),
)


def test_a_fit_whose_calls_change_threads_is_the_same_fit(monkeypatch):
    # The pace of the team (_threads.TEAM_PACE) may run any call of the
    # compiled loop on one thread instead of the team's, or on the team's
    # threads kept to their CPUs: the pieces stay, and so do the bits.
    X, y = regression_data(n=300, n_features=24)
    monkeypatch.setattr(
        _threads, "training_threads", lambda work: forced_engine_threads(2)
    )
    monkeypatch.setattr(_engine, "CHUNK_SECONDS", 1e-9)  # a minibatch per call
    fits, used = [], []
    for alternate in (False, True):
        calls = iter(range(10**6))

        def pick(
            network, team_threads, now, pinnable, alternate=alternate, calls=calls
        ):
            choice = (TEAM, PINNED, ONE)[next(calls) % 3] if alternate else TEAM
            used.append((alternate, choice))
            return choice

        monkeypatch.setattr(_threads.TEAM_PACE, "choose", pick)
        est = MLPBNRegressor(
            hidden_layer_sizes=(32, 16), batch_size=30, max_iter=3, random_state=0
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits.append(est.fit(X, y))
    assert set(used) == {(False, TEAM), (True, TEAM), (True, PINNED), (True, ONE)}
    assert_same_fit(fits[1], fits[0])


def quiet_fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def thread_affinities():
    """{thread id: its CPU affinity} for this process's threads (Linux)."""
    return {
        int(tid): frozenset(os.sched_getaffinity(int(tid)))
        for tid in os.listdir("/proc/self/task")
    }


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and hasattr(os, "sched_getaffinity")),
    reason="threads' CPU affinity is read from Linux's /proc",
)
def test_a_fit_on_pinned_threads_leaves_every_thread_s_affinity(monkeypatch):
    # The pinned way keeps the caller and the engine's workers to one CPU
    # each for the length of a call, and gives each its own affinity back.
    X, y = regression_data(n=300, n_features=24)
    monkeypatch.setattr(
        _threads, "training_threads", lambda work: forced_engine_threads(2)
    )
    monkeypatch.setattr(_engine, "CHUNK_SECONDS", 1e-9)
    monkeypatch.setattr(_threads.TEAM_PACE, "choose", lambda *args: PINNED)
    est = MLPBNRegressor(hidden_layer_sizes=(32,), batch_size=30, max_iter=2)
    cpus = os.sched_getaffinity(0)
    masks = [cpus] if len(cpus) < 2 else [cpus, {min(cpus)}]
    try:
        for mask in masks:  # the team fills the CPUs, then has more threads
            os.sched_setaffinity(0, mask)
            quiet_fit(est, X, y)  # starts the workers
            before = thread_affinities()
            quiet_fit(est, X, y)
            after = thread_affinities()
            assert {tid: after[tid] for tid in before if tid in after} == {
                tid: before[tid] for tid in before if tid in after
            }
            assert after[threading.get_native_id()] == frozenset(mask)
    finally:
        os.sched_setaffinity(0, cpus)


def test_the_pace_skips_a_fit_s_first_call_and_counts_one_thread_s(monkeypatch):
    # A fit's first call (one minibatch, caches cold) would charge its way
    # with the fit's start, unless it is all of the epoch (a partial_fit of
    # a minibatch); a team's call that the pool ran on one thread (another
    # Python thread's job held it) measured one thread.
    X, y = regression_data(n=300, n_features=24)
    monkeypatch.setattr(
        _threads, "training_threads", lambda work: forced_engine_threads(2)
    )
    monkeypatch.setattr(_engine, "CHUNK_SECONDS", 1e-9)  # a minibatch a call
    monkeypatch.setattr(_threads.TEAM_PACE, "choose", lambda *args: TEAM)
    recorded = []
    monkeypatch.setattr(
        _threads.TEAM_PACE, "record", lambda *args: recorded.append(args)
    )
    train_epoch, threads_run = _training.train_epoch, []

    def with_the_pool_busy_every_third_call(*args):
        out = train_epoch(*args)
        threads_run.append(out[-1])
        return out[:-1] + (1,) if len(threads_run) % 3 == 0 else out

    est = MLPBNRegressor(hidden_layer_sizes=(32,), batch_size=30, max_iter=2)
    quiet_fit(est, X, y)
    assert [args[2] for args in recorded] == [TEAM] * (20 - 1)
    monkeypatch.setattr(_training, "train_epoch", with_the_pool_busy_every_third_call)
    del recorded[:]
    quiet_fit(est, X, y)
    assert threads_run == [2] * 20  # the pool was free: the team ran
    assert [args[2] for args in recorded] == [
        ONE if k % 3 == 2 else TEAM for k in range(1, 20)
    ]
    assert all(args[1] == 2 and args[4] == 30 for args in recorded)
    monkeypatch.setattr(_training, "train_epoch", train_epoch)
    del recorded[:]
    for _ in range(3):
        est.partial_fit(X[:30], y[:30])  # one call each, all of the epoch
    assert [args[2] for args in recorded] == [TEAM] * 3


NET, OTHER_NET = ((5, 8, 1), 30, "d"), ((5, 9, 1), 30, "d")


def paced_calls(pace, t, until, seconds, step=0.01, pinnable=True, net=NET, noise=None):
    """Calls of 100 rows, one every ``step`` s (or as soon as the last one
    ends) until ``until``, each taking ``seconds[way]`` (times ``noise()``)
    for the way the pace picks: [(time, way)], the end."""
    calls = []
    while t < until - 1e-9:
        way = pace.choose(net, 2, t, pinnable)
        taken = seconds[way] * (noise() if noise else 1.0)
        calls.append((t, way))
        pace.record(net, 2, way, taken, 100, t, pinnable)
        t += max(step, taken)
    return calls, t


def runs_of(calls):
    return [
        (way, len(list(run))) for way, run in itertools.groupby(w for _, w in calls)
    ]


def test_team_pace_measures_each_way_once_it_settles():
    pace = _threads._TeamPace(warmup_seconds=0.0)
    assert pace.choose(NET, 1, 0.0, True) == ONE  # a team of one has no choice
    # Each way runs a try in turn (its stints measured once it has run
    # its settle_seconds, then TRY_MEASURED of them), then the fastest stays.
    seconds = {TEAM: 0.010, PINNED: 0.012, ONE: 0.015}
    calls, t = paced_calls(pace, 0.0, 0.3, seconds)
    runs = runs_of(calls)
    assert [way for way, _ in runs] == [TEAM, PINNED, ONE, TEAM]
    for way, length in runs[:3]:
        settle = int(np.ceil(pace.settle_seconds(way) / seconds[way] - 1e-9))
        assert length == settle + pace.TRY_MEASURED
        assert len(pace._networks[NET, 2, True].measured[way]) >= pace.TRY_MEASURED
    assert pace.choose(OTHER_NET, 2, t, True) == TEAM  # each network its own
    # A team that would not be kept to CPUs: the free team or one thread.
    assert pace.choices(2, False) == (TEAM, ONE)
    calls, _ = paced_calls(pace, 0.0, 0.3, {TEAM: 0.030, ONE: 0.015}, pinnable=False)
    assert [way for way, _ in runs_of(calls)] == [TEAM, ONE]
    pace.record(NET, 2, PINNED, 0.001, 100, 0.4, False)  # not one of its ways
    assert pace.choose(NET, 2, 0.41, False) == ONE
    # Calls too short to time are not measured; nor are times not finite.
    for k in range(40):
        pace.record(OTHER_NET, 2, TEAM, pace.MIN_SECONDS / 3, 100, 1.0 * k, True)
        pace.record(OTHER_NET, 2, TEAM, float("nan"), 100, 1.0 * k + 0.5, True)
    assert pace.choose(OTHER_NET, 2, 41.0, True) == TEAM
    assert pace._networks[OTHER_NET, 2, True].measured == {}


def test_team_pace_switches_when_the_way_in_use_slows_down():
    pace = _threads._TeamPace(warmup_seconds=0.0)
    calls, t = paced_calls(pace, 0.0, 0.4, {TEAM: 0.010, PINNED: 0.012, ONE: 0.015})
    assert calls[-1][1] == TEAM
    calls, t = paced_calls(pace, t, t + 0.2, {TEAM: 0.030, PINNED: 0.012, ONE: 0.015})
    ways = [way for _, way in calls]
    assert ways[:2] == [TEAM] * 2  # one slow stint does not switch, a few do
    switched = ways.index(PINNED)
    assert switched <= 3 and ways[switched : switched + 5] == [PINNED] * 5
    assert pace._networks[NET, 2, True].best == PINNED


def test_team_pace_keeps_its_way_through_one_slow_call():
    pace = _threads._TeamPace(warmup_seconds=0.0)
    seconds = {TEAM: 0.010, PINNED: 0.012, ONE: 0.015}
    _, t = paced_calls(pace, 0.0, 0.4, seconds)
    pace.record(NET, 2, TEAM, 0.050, 100, t, True)  # one call the machine slowed
    assert pace.choose(NET, 2, t + 0.05, True) == TEAM  # the median of the recent
    state = pace._networks[NET, 2, True]
    assert len(state.measured[TEAM]) == pace.KEEP
    assert state.measured[TEAM][-1][0] == 0.050 / 100


def test_team_pace_keeps_its_way_through_one_slow_call_of_calls_far_apart():
    # Calls 0.3 s apart (a partial_fit loop with other work between them),
    # the other ways tried now and then: the way in use keeps its recent
    # stints' median through one slow one.
    pace = _threads._TeamPace(warmup_seconds=0.0)
    seconds = {TEAM: 0.010, PINNED: 0.012, ONE: 0.015}
    calls, t = paced_calls(pace, 0.0, 60.0, seconds, step=0.3)
    assert {PINNED, ONE} <= {way for _, way in calls[20:]}  # tries
    while pace.choose(NET, 2, t, True) != TEAM:
        calls, t = paced_calls(pace, t, t + 0.3, seconds, step=0.3)
    pace.record(NET, 2, TEAM, 0.016, 100, t, True)
    assert pace.choose(NET, 2, t + 0.3, True) == TEAM
    assert pace._networks[NET, 2, True].best == TEAM


def test_team_pace_switches_only_for_a_clear_gain():
    # A way measured 3% faster than the one in use does not take over; 20%
    # faster does (SWITCH_MARGIN = 5%).
    pace = _threads._TeamPace(warmup_seconds=0.0)
    calls, t = paced_calls(pace, 0.0, 0.4, {TEAM: 0.010, PINNED: 0.012, ONE: 0.015})
    assert calls[-1][1] == TEAM
    calls, t = paced_calls(pace, t, t + 3.0, {TEAM: 0.010, PINNED: 0.0097, ONE: 0.015})
    assert PINNED in {way for _, way in calls}  # tried
    assert [way for _, way in calls[-20:]] == [TEAM] * 20
    calls, _ = paced_calls(pace, t, t + 6.0, {TEAM: 0.010, PINNED: 0.008, ONE: 0.015})
    assert [way for _, way in calls[-20:]] == [PINNED] * 20


def test_team_pace_finds_the_fastest_way_through_noise():
    # Stints of the pinned way 13% faster than one thread's, the free team
    # 10% slower, each stint's time off by a lognormal factor (sigma 0.1):
    # most calls run pinned.
    rng = np.random.default_rng(0)
    pace = _threads._TeamPace(warmup_seconds=0.0)
    calls, _ = paced_calls(
        pace,
        0.0,
        30.0,
        {TEAM: 0.022, PINNED: 0.0174, ONE: 0.020},
        noise=lambda: rng.lognormal(0.0, 0.1),
    )
    ways = [way for _, way in calls[50:]]
    assert ways.count(PINNED) > 0.85 * len(ways)


def test_team_pace_drops_a_stint_left_unfinished():
    # Calls of 1 ms, one every 0.3 s (a gap longer than GAP_SECONDS): no
    # stint is ever finished, so nothing is measured and the way stays.
    pace = _threads._TeamPace(warmup_seconds=0.0)
    calls, _ = paced_calls(
        pace, 0.0, 10.0, {TEAM: 0.001, PINNED: 0.0005, ONE: 0.001}, step=0.3
    )
    assert {way for _, way in calls} == {TEAM}
    assert pace._networks[NET, 2, True].measured == {}


def test_can_pin_needs_one_thread_per_cpu_of_the_calling_thread():
    assert not _threads.can_pin(1)
    if not (_team.pinning_available() and hasattr(os, "sched_getaffinity")):
        assert not _threads.can_pin(2)
        return
    cpus = os.sched_getaffinity(0)
    assert _threads.can_pin(len(cpus)) == (len(cpus) >= 2)
    assert not _threads.can_pin(len(cpus) + 1)
    # Minibatches too small for waits that sleep: never kept to CPUs.
    enough = _threads.MIN_MULTIPLY_ADDS_FOR_PINNING
    assert _threads.can_pin(len(cpus), enough) == (len(cpus) >= 2)
    assert not _threads.can_pin(len(cpus), enough - 1)


def test_the_pace_offers_the_pinned_way_for_large_minibatches_only(monkeypatch):
    X, y = regression_data(n=300, n_features=24)
    monkeypatch.setattr(
        _threads, "training_threads", lambda work: forced_engine_threads(2)
    )
    monkeypatch.setattr(_threads, "can_pin", lambda n, work=None: work >= 10**6)
    offered = []

    def pick(network, team_threads, now, pinnable):
        offered.append(pinnable)
        return TEAM

    monkeypatch.setattr(_threads.TEAM_PACE, "choose", pick)
    for hidden, expected in (((32, 16), False), ((256, 256), True)):
        offered.clear()
        est = MLPBNRegressor(hidden_layer_sizes=hidden, batch_size=30, max_iter=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
        # 30 rows x (24*32 + 32*16 + 16) and x (24*256 + 256*256 + 256)
        assert offered and set(offered) == {expected}


def test_team_pace_tries_the_slower_ways_less_often_while_they_stay_slower():
    # A busy neighbour: both team ways 10% slower (their tries cheap). Each
    # try that does not take over doubles the network's interval, up to 4 s:
    # each way's tries thin out to one every 4 s or so.
    pace = _threads._TeamPace(warmup_seconds=0.0)
    calls, t = paced_calls(pace, 0.0, 40.0, {TEAM: 0.011, PINNED: 0.011, ONE: 0.01})
    for tried in (TEAM, PINNED):
        starts, at = [], 0
        for way, length in runs_of(calls):
            if way == tried:
                starts.append(calls[at][0])
            at += length
        gaps = np.diff(starts)
        assert gaps[0] < 2.1 and len(gaps) >= 6
        assert_allclose(gaps[-4:], pace.MAX_PROBE_SECONDS, atol=0.6)
    # Pinned gets faster: the next try (within 8 s) finds it, and keeps it.
    calls, _ = paced_calls(pace, t, t + 10.0, {TEAM: 0.011, PINNED: 0.005, ONE: 0.01})
    first = next(c for c, way in calls if way == PINNED)
    assert first - t < 2 * pace.MAX_PROBE_SECONDS + 0.1
    after = [way for c, way in calls if c > first]
    assert after.count(PINNED) > 0.95 * len(after)


def test_team_pace_tries_a_far_slower_way_after_more_training():
    # Short fits among other work (a call of 30 ms every 0.1 s): a way is
    # tried again once its interval has passed and the try (settling and
    # TRY_MEASURED stints at its slowdown, at most MAX_SLOWDOWN) costs at
    # most TRY_BUDGET of the time trained since its last measure.
    pace = _threads._TeamPace(warmup_seconds=0.0)
    seconds = {TEAM: 0.09, PINNED: 0.042, ONE: 0.03}
    calls, _ = paced_calls(pace, 0.0, 600.0, seconds, step=0.1)
    for way, slower in ((TEAM, 2.0), (PINNED, 0.4)):
        cost = (pace.settle_seconds(way) + pace.TRY_MEASURED * seconds[way]) * min(
            slower, pace.MAX_SLOWDOWN
        )
        least = cost / pace.TRY_BUDGET  # seconds of training between tries
        trained = np.cumsum([0.0] + [seconds[w] for _, w in calls])
        starts, at = [], 0
        for w, length in runs_of(calls):
            if w == way:
                starts.append(at)
            at += length
        gaps = np.diff(trained[starts[1:]])
        assert len(gaps) >= 2
        assert least <= gaps.min() <= gaps.max() <= least + 12 * seconds[TEAM]


def test_team_pace_times_short_calls_together():
    # The calls of a small network's epochs (1-2 ms each here) are timed in
    # stints of at least MIN_SECONDS: a way changes only between stints,
    # and the fastest one is found.
    pace = _threads._TeamPace(warmup_seconds=0.0)
    seconds = {TEAM: 0.0011, PINNED: 0.0016, ONE: 0.0013}
    per_stint = {way: int(np.ceil(pace.MIN_SECONDS / t)) for way, t in seconds.items()}
    assert per_stint == {TEAM: 4, PINNED: 3, ONE: 4}
    calls, _ = paced_calls(pace, 0.0, 2.0, seconds, step=0.002)
    runs = runs_of(calls)
    assert [way for way, _ in runs[:4]] == [TEAM, PINNED, ONE, TEAM]
    assert all(length % per_stint[way] == 0 for way, length in runs[:-1])
    assert [way for _, way in calls[-50:]] == [TEAM] * 50


def test_team_pace_tries_a_way_again_soon_after_its_first_measure():
    # A network's first measures often come as its process starts (threads
    # created, a core waking): until a way has run UNBUDGETED_RUNS times, it
    # is tried again once the interval has passed, whatever the try costs.
    pace = _threads._TeamPace(warmup_seconds=0.0)
    _, t = paced_calls(pace, 0.0, 0.3, {TEAM: 0.03, PINNED: 0.03, ONE: 0.01})
    assert pace.choose(NET, 2, t, True) == ONE
    calls, t = paced_calls(pace, t, t + 1.0, {TEAM: 0.008, PINNED: 0.03, ONE: 0.01})
    first = next(c for c, way in calls if way == TEAM)
    trained = sum(0.01 for c, way in calls if c < first)
    budgeted = pace.TRY_MEASURED * 0.03 * pace.MAX_SLOWDOWN / pace.TRY_BUDGET
    assert trained < pace.PROBE_SECONDS + 0.1 < budgeted
    assert pace._networks[NET, 2, True].best == TEAM
    runs = pace._networks[NET, 2, True].runs  # the pinned way's second try too
    assert runs[TEAM] >= 2 and runs[PINNED] == 2


def test_team_pace_does_not_measure_the_process_warming_up():
    # The process's first calls run slower, whichever way runs them: the
    # first WARMUP_SECONDS of calls (of any network) are not measured, so a
    # free team that warms up does not lose to the pinned way for good.
    pace = _threads._TeamPace()
    assert pace.WARMUP_SECONDS > 0
    warming = {TEAM: 0.05, PINNED: 0.012, ONE: 0.015}
    calls, t = paced_calls(pace, 0.0, pace.WARMUP_SECONDS - 1e-6, warming)
    assert {way for _, way in calls} == {TEAM}  # the first way, unmeasured
    assert pace._networks == {}
    pace.record(OTHER_NET, 2, TEAM, 0.05, 100, t, True)  # any network's calls
    calls, _ = paced_calls(pace, t + 0.05, t + 1.0, {**warming, TEAM: 0.010})
    assert [way for way, _ in runs_of(calls)] == [TEAM, PINNED, ONE, TEAM]
    assert pace._networks[NET, 2, True].best == TEAM
    # Measured while warming up, the free team loses to the pinned way.
    cold = _threads._TeamPace(warmup_seconds=0.0)
    _, t = paced_calls(cold, 0.0, 0.3, warming)
    calls, _ = paced_calls(cold, t, t + 0.4, {**warming, TEAM: 0.010})
    assert cold._networks[NET, 2, True].best == PINNED
    assert TEAM not in {way for _, way in calls}


def test_team_pace_measures_each_team_size_on_its_own():
    pace = _threads._TeamPace(warmup_seconds=0.0)
    _, t = paced_calls(pace, 0.0, 0.3, {TEAM: 0.03, PINNED: 0.03, ONE: 0.01})
    four = _threads.TeamChoice(4)
    assert pace.choose(NET, 4, t, True) == four  # a team of 4 on its own
    assert pace.choose(NET, 2, t, True) == ONE  # a team of 2 keeps its own


def test_team_pace_tries_again_soon_when_the_fastest_way_changes():
    pace = _threads._TeamPace(warmup_seconds=0.0)
    slow_team = {TEAM: 0.011, PINNED: 0.011, ONE: 0.01}
    _, t = paced_calls(pace, 0.0, 20.0, slow_team)  # tries back off to 4 s
    assert pace._networks[NET, 2, True].interval == pace.MAX_PROBE_SECONDS
    # One thread slows down in its own calls: the team is faster now, and
    # one thread is tried again within about a second (the interval starts
    # again at PROBE_SECONDS; a try of the pinned way may double it).
    calls, _ = paced_calls(pace, t, t + 3.0, {TEAM: 0.011, PINNED: 0.011, ONE: 0.013})
    ways = [way for _, way in calls]
    switched = next(k for k, way in enumerate(ways) if way != ONE)
    back = next(k for k in range(switched, len(ways)) if ways[k] == ONE)
    assert calls[back][0] - calls[switched][0] < 2 * pace.PROBE_SECONDS + 0.2


def test_a_team_larger_than_the_cores_is_deterministic(monkeypatch):
    # Four threads on a machine that may have one or two cores: threads wait
    # for each other's pieces, sleeping when they wait long, and the
    # model is still the same from run to run (and the single thread's, up
    # to rounding).
    X, y = regression_data(n=300, n_features=24)
    fits = []
    for threads in (1, 4, 4):
        monkeypatch.setattr(
            _threads,
            "training_threads",
            lambda work, t=threads: forced_engine_threads(t),
        )
        est = MLPBNRegressor(
            hidden_layer_sizes=(48, 40, 33), batch_size=40, max_iter=3, random_state=0
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits.append(est.fit(X, y))
    one, four, again = fits
    for a, b in zip(sum(params_of(four), []), sum(params_of(again), [])):
        assert_array_equal(a, b)
    assert four.loss_curve_ == again.loss_curve_
    assert_grad_allclose(params_of(four), params_of(one), rtol=1e-9, atol=1e-12)


def _blas_limits():
    return [
        lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
    ]


def test_engine_threads_follow_threadpoolctl_limits():
    big = 10 * _threads.MIN_MULTIPLY_ADDS_FOR_THREADS
    with threadpool_limits(1):
        with _threads.training_threads(big) as team:
            assert team == (1, 1)
    with threadpool_limits(1, user_api="blas"):
        with _threads.training_threads(big) as team:
            assert team == (1, 1)
    with threadpool_limits(2, user_api="blas"), threadpool_limits(1, user_api="openmp"):
        with _threads.training_threads(big) as team:
            assert team == (1, 1)
    if _team.openmp_max_threads() < 2 or _threads.usable_cores() < 2:
        pytest.skip(
            "built without OpenMP, or OpenMP limited to one thread, or one core"
        )
    with threadpool_limits(2, user_api="blas"), threadpool_limits(2, user_api="openmp"):
        before = _blas_limits()
        with _threads.training_threads(big) as team:
            assert team == (2, 2)
            # Each engine thread calls BLAS on its own pieces.
            assert set(_blas_limits()) == {1}
        assert _blas_limits() == before
        # Small minibatches: one thread, BLAS untouched.
        with _threads.training_threads(big // 100) as team:
            assert team == (1, 1)
            assert _blas_limits() == before


def test_fit_restores_the_blas_limits(monkeypatch):
    # Big enough minibatches for the engine to run its own threads.
    X, y = regression_data(n=300, n_features=20)
    seen = []
    training_threads = _threads.training_threads

    def spy(multiply_adds):
        seen.append(multiply_adds)
        return training_threads(multiply_adds)

    monkeypatch.setattr(_threads, "training_threads", spy)
    with threadpool_limits(2, user_api="blas"):
        before = _blas_limits()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            MLPBNRegressor(hidden_layer_sizes=(64,), max_iter=2, random_state=0).fit(
                X, y
            )
        assert _blas_limits() == before
    assert seen[0] >= _threads.MIN_MULTIPLY_ADDS_FOR_THREADS


def test_train_epoch_rejects_a_bad_number_of_threads(monkeypatch):
    est = MLPBNRegressor(hidden_layer_sizes=(3,), max_iter=1, random_state=0)
    X, y = regression_data(n=10)
    calls = []

    def bad_threads(multiply_adds):
        calls.append(multiply_adds)
        return forced_engine_threads(0)

    monkeypatch.setattr(_threads, "training_threads", bad_threads)
    with pytest.raises(ValueError, match="threads"):
        est.fit(X, y)
    # Multiply-adds of a minibatch: batch_size (all 10 rows) x (3*3 + 3*1).
    assert calls == [10 * (3 * 3 + 3 * 1)]


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan])
def test_engine_rejects_a_bad_data_loss_scale(scale, monkeypatch):
    X, y = regression_data(n=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPBNRegressor(hidden_layer_sizes=(3,), max_iter=2, random_state=0).fit(
            X, y
        )
    before = params_of(est), est.loss_curve_.copy(), est.t_

    class BadScale(Engine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "data_loss_scale": scale})

    monkeypatch.setattr(_mlp, "Engine", BadScale)
    with pytest.raises(ValueError, match="data_loss_scale"):
        est.partial_fit(X, y)
    # The failed call left the fitted model as it was.
    assert_grad_allclose(params_of(est), before[0], rtol=0, atol=0)
    assert est.loss_curve_ == before[1]
    assert est.t_ == before[2]


def bound_engine(sparse, solver="adam"):
    """An engine, its bound data (a weighted regression with two hidden
    layers, some zeros in X), its parameters, optimizer and a valid epoch's
    arguments, as ``_fit`` builds them."""
    X, y = regression_data(n=30, n_features=4)
    X[np.abs(X) < 0.5] = 0
    est = MLPBNRegressor(
        hidden_layer_sizes=(5, 3), batch_size=10, solver=solver, random_state=0
    )
    units = [4, 5, 3, 1]
    engine = Engine(
        units,
        activation="relu",
        out_activation="identity",
        dtype=np.float64,
        max_batch=11,
        sparse=sparse,
        weighted=True,
        alpha=1e-4,
        bn_momentum=0.1,
        bn_epsilon=1e-5,
    )
    Xs = sp.csr_matrix(X) if sparse else X
    data = engine.bind(Xs, y, np.ones(30))
    params = engine.parameters(
        *est._init_params(units, np.float64, np.random.RandomState(0))
    )
    optimizer = est._make_optimizer(engine.layout.n_params, np.float64, False)
    epoch = dict(
        data=data,
        params=params,
        optimizer=optimizer,
        order=np.arange(30, dtype=np.intp),
        order_is_identity=True,
        batch_size=10,
    )
    return engine, (Xs, y, np.ones(30)), epoch


def _short(a):
    return np.ascontiguousarray(a[:-1])


# What a call gets wrong, how, and the error it must give.
BIND_BAD_ARGS = {
    "X columns": (0, lambda X: X[:, :-1], "features"),
    "Y columns": (1, lambda y: np.column_stack([y, y]), "Y has shape"),
    "Y rows": (1, _short, "Y has shape"),
    "sample_weight": (2, _short, "sample_weight"),
    "no sample_weight": (2, lambda sw: None, "sample_weight"),
}
EPOCH_BAD_ARGS = {
    "one row": (
        "order",
        lambda order: np.ascontiguousarray(order[:1]),
        "at least 2 samples",
    ),
    "row index": ("order", lambda order: order + 1, "out of range"),
    "order dtype": ("order", lambda order: order.astype(np.int32), "intp"),
    "batch_size 1": ("batch_size", lambda b: 1, "batch_size"),
    "batch_size": ("batch_size", lambda b: b + 5, "workspace too small"),
    "theta": (
        "params",
        lambda p: Parameters(_short(p.theta), p.running_mean, p.running_var),
        "theta",
    ),
    "theta dtype": (
        "params",
        lambda p: Parameters(p.theta.astype(np.float32), p.running_mean, p.running_var),
        "theta",
    ),
    "running_mean": (
        "params",
        lambda p: Parameters(p.theta, _short(p.running_mean), p.running_var),
        "running_mean",
    ),
    "first_moment": ("optimizer", "first_moment", "first_moment"),
    "second_moment": ("optimizer", "second_moment", "second_moment"),
    "X rows": (
        "data",
        lambda d: _engine.TrainingData(**{**vars(d), "X": _short(d.X)}),
        "rows",
    ),
}
SPARSE_BAD_ARGS = {
    "indptr start": (lambda X: X.indptr.__iadd__(1), "malformed CSR"),
    "indptr end": (
        lambda X: X.indptr.__setitem__(-1, X.indptr[-1] - 1),
        "malformed CSR",
    ),
    "indptr order": (
        lambda X: X.indptr.__setitem__(slice(1, 3), X.indptr[2:0:-1].copy()),
        "malformed CSR",
    ),
    "column index": (lambda X: X.indices.__iadd__(4), "column index out of range"),
    "negative column": (lambda X: X.indices.__isub__(4), "column index out of range"),
}


@pytest.mark.parametrize(
    "case", list(BIND_BAD_ARGS) + list(EPOCH_BAD_ARGS) + list(SPARSE_BAD_ARGS)
)
def test_engine_rejects_arguments_that_do_not_fit(case):
    # The estimators always pass consistent arguments; the engine checks them
    # anyway, before its unchecked compiled loops, and leaves everything
    # untouched.
    engine, bind_args, epoch = bound_engine(sparse=case in SPARSE_BAD_ARGS)
    theta = epoch["params"].theta
    before = theta.copy()
    engine.train_epoch(**epoch)  # the valid call itself is fine
    theta_after = theta.copy()
    assert not np.array_equal(before, theta_after)
    if case in BIND_BAD_ARGS:
        position, spoil, message = BIND_BAD_ARGS[case]
        bind_args = list(bind_args)
        bind_args[position] = spoil(bind_args[position])
        with pytest.raises(ValueError, match=message):
            engine.bind(*bind_args)
        return
    if case in SPARSE_BAD_ARGS:
        spoil, message = SPARSE_BAD_ARGS[case]
        X = bind_args[0].copy()
        spoil(X)
        with pytest.raises(ValueError, match=message):
            engine.bind(X, *bind_args[1:])
        return
    name, spoil, message = EPOCH_BAD_ARGS[case]
    if name == "optimizer":
        setattr(epoch["optimizer"], spoil, _short(getattr(epoch["optimizer"], spoil)))
    else:
        epoch[name] = spoil(epoch[name])
    with pytest.raises(ValueError, match=message):
        engine.train_epoch(**epoch)
    assert_array_equal(theta, theta_after)


def test_loss_and_gradient_and_the_folded_network_check_their_arguments():
    X, Y, coefs, gammas, intercepts = make_problem("multiclass")
    with pytest.raises(ValueError, match="sample weights sum to zero"):
        engine_loss_and_gradient(
            X, Y, np.zeros(len(X)), coefs, gammas, intercepts, "relu", "softmax", 0.0
        )
    # Weight on a single row: no minibatch is normalized with one row's
    # statistics (training skips such a minibatch).
    one_row = np.zeros(len(X))
    one_row[3] = 2.0
    with pytest.raises(ValueError, match="fewer than 2 rows have positive weight"):
        engine_loss_and_gradient(
            X, Y, one_row, coefs, gammas, intercepts, "relu", "softmax", 0.0
        )
    # A workspace one row short.
    engine = Engine(
        [4, 5, 3, 3],
        activation="relu",
        out_activation="softmax",
        dtype=np.float64,
        max_batch=len(X) - 1,
        sparse=False,
        weighted=False,
        alpha=0.0,
        bn_momentum=0.1,
        bn_epsilon=1e-5,
    )
    params = engine.parameters(
        coefs, gammas, intercepts, [np.zeros(5), np.zeros(3)], [np.ones(5), np.ones(3)]
    )
    with pytest.raises(ValueError, match="between one row"):
        engine.loss_and_gradient(data=engine.bind(X, Y), params=params)

    est = MLPBNClassifier(hidden_layer_sizes=(5, 3), max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, np.arange(len(X)) % 3)
    folded = est._folded_network(np.float64)
    assert_allclose(folded.predict(X), est.predict_proba(X), rtol=1e-12)
    assert folded.predict(X[:0]).shape == (0, 3)  # no rows: nothing to do
    with pytest.raises(ValueError, match="columns"):
        folded.predict(np.ascontiguousarray(X[:, :3]))
    with pytest.raises(ValueError, match="chain"):
        FoldedNetwork(
            [folded.coefs[0], folded.coefs[2]],
            folded.intercepts[::2],
            "relu",
            "softmax",
        )
    with pytest.raises(ValueError, match="chain"):
        FoldedNetwork(
            folded.coefs,
            [folded.intercepts[0][:-1]] + folded.intercepts[1:],
            "relu",
            "softmax",
        )


# Inference-mode batch norm is the folded network: one hidden layer between
# identity matrices is that layer alone (products by 1 and 0 are exact).
FOLDED_SHAPES = [
    (2, 1),
    (1, 5),
    (2, 3),
    (7, 1),
    (37, 13),
    (3, 2100),
    (600, 70),
    (40, 1030),
]


def _one_layer(gamma, beta, mean, var, activation, dtype, epsilon=BN_EPSILON):
    eye = np.eye(gamma.shape[0])
    return FoldedNetwork.fold(
        [eye, eye],
        [gamma],
        [beta, np.zeros_like(beta)],
        [mean],
        [var],
        epsilon,
        activation,
        "identity",
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", FOLDED_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_folded_layer_is_batch_norm_in_inference_mode(dtype, shape, activation):
    rng = np.random.default_rng(6)
    z = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, shape[1]).astype(dtype)
    beta = rng.uniform(-0.5, 0.5, shape[1]).astype(dtype)
    mean = rng.standard_normal(shape[1]).astype(dtype)
    var = rng.uniform(0, 3, shape[1]).astype(dtype)
    var[0] = 0  # epsilon keeps it positive
    z.setflags(write=False)
    a = _one_layer(gamma, beta, mean, var, activation, dtype).predict(z)
    m64, v64 = mean.astype(np.float64), var.astype(np.float64)
    expected = ref_activation(
        activation,
        gamma * (z.astype(np.float64) - m64) / np.sqrt(v64 + BN_EPSILON) + beta,
    )
    assert a.dtype == dtype
    rtol, atol = (2e-5, 2e-4) if dtype == np.float32 else (1e-10, 1e-10)
    assert_allclose(a, expected, rtol=rtol, atol=atol)


def test_folded_layer_with_batch_statistics_is_the_training_layer():
    from sklearn_bn import _batchnorm

    rng = np.random.default_rng(0)
    z = rng.standard_normal((64, 10)) * 2 + 1
    gamma, beta = rng.uniform(0.5, 1.5, 10), rng.uniform(-0.5, 0.5, 10)
    a_train, mean, var = np.empty_like(z), np.empty(10), np.empty(10)
    _batchnorm.bn_forward_train(
        z, gamma, beta, a_train, mean, var, None, BN_EPSILON, "tanh"
    )
    a_infer = _one_layer(gamma, beta, mean, var, "tanh", np.float64).predict(z)
    assert_allclose(a_infer, a_train, rtol=1e-14, atol=1e-15)


def test_folded_network_rejects_bad_input():
    gamma = np.ones(3)
    with pytest.raises(ValueError, match="var"):
        _one_layer(gamma, gamma, gamma, -np.ones(3), "relu", np.float64)
    with pytest.raises(ValueError, match="var"):
        _one_layer(gamma, gamma, gamma, np.zeros(3), "relu", np.float64, epsilon=0.0)
    with pytest.raises(ValueError, match="chain"):
        _one_layer(gamma, gamma, gamma[:2], gamma, "relu", np.float64)
    with pytest.raises(ValueError, match="activation"):
        _one_layer(gamma, gamma, gamma, gamma, "gelu", np.float64)
    folded = _one_layer(gamma, gamma, gamma, gamma, "relu", np.float64)
    assert folded.predict(np.ones((0, 3))).shape == (0, 3)  # no rows: nothing to do


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_aligned_zeros(n, dtype):
    a = aligned_zeros(n, dtype)
    assert a.shape == (n,) and a.dtype == dtype and a.flags.c_contiguous
    assert a.ctypes.data % 64 == 0
    assert_array_equal(a, 0)


@pytest.mark.parametrize("pieces", [1, 3])
@pytest.mark.parametrize("dropout", [None, [0.2, 0.0]])
@pytest.mark.parametrize("sparse", [False, True])
def test_workspace_blocks_start_on_cache_lines(sparse, dropout, pieces):
    # Threads write neighbouring blocks of rows of these buffers, and each
    # piece its own blocks: each starts at a multiple of 16 elements, and
    # the blocks do not overlap.
    network = _training.Network(
        (37, 33, 17, 3),
        activation="relu",
        out_activation="softmax",
        dtype=np.float32,
        max_batch=51,
        sparse=sparse,
        weighted=True,
        alpha=0.0,
        bn_momentum=0.1,
        bn_epsilon=1e-5,
        virtual_batch_size=8,
        dropout=dropout,
    )
    network.use_pieces(pieces)
    assert network.pieces == pieces
    buffers = network.buffers()
    blocks = [
        (buffers["xb"], 0 if sparse else 51 * 37),
        (buffers["yb"], 51 * 3),
        (buffers["swb"], 51),
        (buffers["p"], 51 * 3),
        (buffers["gtmp"], pieces * 80),  # per piece: 2 x 33, rounded up
    ]
    for l, h in enumerate((33, 17)):
        layer = network.layer(l)
        blocks += [
            (layer["z"], 51 * h),
            (layer["out"], 51 * h),
            (layer["delta"], 51 * h),
        ]
        if layer["dropout"] > 0:
            blocks += [(layer["dropped"], 51 * h), (layer["keep"], -(-51 * h // 4))]
        else:
            assert layer["dropped"] == layer["out"]
    starts = sorted(blocks)
    assert all(start % 16 == 0 for start, _ in starts)
    assert all(a + size <= b for (a, size), (b, _) in zip(starts, starts[1:]))
    assert starts[-1][0] + starts[-1][1] <= network.work.size
    # dwork: slots of statistics (means, variances, weights): one per ghost
    # chunk, or two per piece; each piece's backward sums and scratch; the
    # rows' losses; each piece's sum of W ** 2.
    slots = max(7, 2 * pieces)  # chunks: min(ceil(51 / 8), 51 // 2)
    stride = buffers["stats_stride"]
    assert stride >= 33 + 17 and stride % 16 == 0
    assert buffers["scratch_stride"] >= 10 * 33
    dblocks = [
        (0, slots * stride),
        (buffers["var_base"], slots * stride),
        (buffers["slot_weight"], slots * 2),  # per slot and hidden layer
        (buffers["sums"], pieces * 2 * stride),
        (buffers["scratch"], pieces * buffers["scratch_stride"]),
        (buffers["row_loss"], 51),
        (buffers["l2_sums"], pieces),
    ]
    dstarts = sorted(dblocks)
    assert all(start % 16 == 0 for start, _ in dstarts)
    assert all(a + size <= b for (a, size), (b, _) in zip(dstarts, dstarts[1:]))
    assert dstarts[-1][0] + dstarts[-1][1] <= network.dwork.size
    for buffer in (network.work, network.dwork, network.grad, network.shares):
        assert buffer.ctypes.data % 64 == 0
    # The parameters: each layer's coefficients, gamma and beta (hidden) or
    # intercept (output), one after another.
    offsets = [
        (network.layer(l)["coef"], network.layer(l)["gamma"], network.layer(l)["bias"])
        for l in range(3)
    ]
    assert offsets == [
        (0, 37 * 33, 37 * 33 + 33),
        (37 * 33 + 66, 37 * 33 + 66 + 33 * 17, 37 * 33 + 66 + 33 * 17 + 17),
        (37 * 33 + 66 + 33 * 17 + 34, 0, 37 * 33 + 66 + 33 * 17 + 34 + 17 * 3),
    ]
    assert network.n_params == 37 * 33 + 66 + 33 * 17 + 34 + 17 * 3 + 3
    # The pieces' shares of the gradient: every layer's gamma and beta or
    # intercept; the coefficients whose shares stay small against the rows
    # (the sparse first layer's never).
    share_blocks = []
    for l, (fan_in, fan_out) in enumerate(((37, 33), (33, 17), (17, 3))):
        layer = network.layer(l)
        by_rows = (
            pieces > 1
            and not (l == 0 and sparse)
            and (pieces - 1) * fan_in * fan_out <= 4 * 51 * (fan_in + fan_out)
        )
        assert (layer["share_coef"] >= 0) == by_rows
        if by_rows:
            share_blocks.append((layer["share_coef"], fan_in * fan_out))
        share_blocks.append((layer["share_rest"], (2 if l < 2 else 1) * fan_out))
    share_starts = sorted(share_blocks)
    assert all(start % 16 == 0 for start, _ in share_starts)
    assert all(
        a + size <= b for (a, size), (b, _) in zip(share_starts, share_starts[1:])
    )
    assert share_starts[-1][0] + share_starts[-1][1] <= buffers["share_stride"]
    assert network.shares.size >= (pieces - 1) * buffers["share_stride"]


def test_the_workspace_layout_follows_the_pieces_of_the_call():
    # Laid out for more pieces before, the network sums the same layers by
    # columns as a fresh one for fewer: the results depend on the call's
    # pieces only.
    kwargs = dict(
        activation="relu",
        out_activation="identity",
        dtype=np.float64,
        max_batch=10,
        sparse=False,
        weighted=False,
        alpha=0.0,
        bn_momentum=0.1,
        bn_epsilon=1e-5,
    )

    def share_coefs(network):
        return [network.layer(l)["share_coef"] >= 0 for l in range(3)]

    fresh = _training.Network((40, 40, 40, 1), **kwargs)
    fresh.use_pieces(2)
    used = _training.Network((40, 40, 40, 1), **kwargs)
    used.use_pieces(4)
    assert share_coefs(used) != share_coefs(fresh)
    used.use_pieces(2)
    assert used.pieces == 2 and share_coefs(used) == share_coefs(fresh)
    assert used.buffers() == fresh.buffers()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_pieces_merge_the_same_batch_statistics(dtype, monkeypatch):
    # Each piece merges the batch statistics of a layer from the pieces'
    # own; all of them must get the same bits (a layer 400 wide adds its
    # rows' weights in blocks of another size than a layer 10 wide).
    rng = np.random.RandomState(0)
    X = rng.normal(size=(200, 6)).astype(dtype)
    y = rng.normal(size=200).astype(dtype)
    sw = rng.uniform(0.1, 2.0, size=200)
    monkeypatch.setattr(
        _threads, "training_threads", lambda work: forced_engine_threads(1, 2)
    )
    engines = []
    train_epoch = _engine.Engine.train_epoch

    def keep(self, *args, **kwargs):
        engines.append(self)
        return train_epoch(self, *args, **kwargs)

    monkeypatch.setattr(_engine.Engine, "train_epoch", keep)
    est = MLPBNRegressor(
        hidden_layer_sizes=(400, 10),
        batch_size=200,
        max_iter=1,
        shuffle=False,
        input_preprocessing=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y, sample_weight=sw)
    network = engines[-1].network
    buffers = network.buffers()
    stride, var_base = buffers["stats_stride"], buffers["var_base"]
    for l, width in enumerate((400, 10)):
        stat = network.layer(l)["stat"]
        merged = [
            network.dwork[start : start + width]
            for k in (2, 3)  # slots pieces + k: each piece's merge
            for start in (k * stride + stat, var_base + k * stride + stat)
        ]
        assert_array_equal(merged[0], merged[2])
        assert_array_equal(merged[1], merged[3])


def _fit_and_score(X, y):
    est = MLPBNRegressor(hidden_layer_sizes=(64,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y).score(X, y)


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs the fork start method",
)
def test_forked_child_trains_after_the_parent_ran_threads():
    # GNU OpenMP's thread pool does not survive fork(): a child forked after
    # the parent ran a team must not start one (it would wait forever).
    X, y = regression_data(n=600, n_features=20)
    with threadpool_limits(2, user_api="blas"), threadpool_limits(2, user_api="openmp"):
        parent = _fit_and_score(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child = pool.apply_async(_fit_and_score, (X, y)).get(timeout=120)
    assert child == pytest.approx(parent, rel=1e-6)


# ---------------------------------------------------------------------------
# Ghost batch norm, the cumulative running average, dropout


def assert_ghost_loss_and_gradient_match_the_reference(
    X,
    Y,
    sw,
    coefs,
    gammas,
    intercepts,
    activation,
    out,
    virtual_batch_size,
    chunks,
    eps,
):
    """The engine's ghost batch norm loss (L2 term 0.3) equals the
    reference's, and its gradient the reference's central differences."""
    loss, grad, _, _ = engine_loss_and_gradient(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        activation,
        out,
        0.3,
        eps=eps,
        virtual_batch_size=virtual_batch_size,
    )
    options = dict(chunks=chunks, eps=eps)
    expected = ref_loss(
        X, Y, sw, coefs, gammas, intercepts, activation, out, 0.3, **options
    )
    assert loss == pytest.approx(expected, rel=1e-12, abs=1e-13)
    numeric = ref_numeric_gradient(
        X, Y, sw, coefs, gammas, intercepts, activation, out, 0.3, **options
    )
    assert_grad_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("problem", ["multiclass", "squared_error"])
@pytest.mark.parametrize("activation", ["identity", "tanh", "logistic", "relu"])
@pytest.mark.parametrize(
    "virtual_batch_size, chunks, eps",
    [(4, 3, BN_EPSILON), (2, 5, 0.5), (5, 3, BN_EPSILON)],
)
def test_ghost_batch_norm_gradient_matches_central_differences(
    virtual_batch_size, chunks, eps, activation, problem, weighted
):
    # 11 rows: ceil(11 / 4) = 3 chunks of 4, 4, 3 rows; virtual_batch_size=2
    # would give 6 chunks, capped at 11 // 2 = 5 (none below two rows). Two
    # rows (one with weight 0) can have a variance far below epsilon: a large
    # epsilon keeps the central differences accurate there.
    X, Y, coefs, gammas, intercepts = make_problem(problem, seed=7)
    sw = sample_weights(X.shape[0]) if weighted else None
    out = OUT_ACTIVATION[problem]
    options = dict(chunks=chunks, eps=eps)
    if activation == "relu":
        _, _, pre = ref_forward_train(
            X, coefs, gammas, intercepts, "relu", sw, eps, chunks=chunks
        )
        assert min(np.abs(y).min() for y in pre) > 1e-4
    assert_ghost_loss_and_gradient_match_the_reference(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        activation,
        out,
        virtual_batch_size,
        **options,
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_ghost_batch_norm_updates_running_stats_once_per_chunk(weighted, dtype):
    # What applying PyTorch's BatchNorm1d to each chunk in turn does: the
    # running statistics move once per chunk, in order, with the unbiased
    # variance of that chunk (weights as repeat counts).
    X, Y, coefs, gammas, intercepts = make_problem(
        "multiclass", n=11, seed=3, dtype=dtype
    )
    sw = sample_weights(11) if weighted else None
    _, stats, _ = ref_forward_train(X, coefs, gammas, intercepts, "tanh", sw, chunks=3)
    w = np.ones(11) if sw is None else sw
    _, _, rm, rv = engine_loss_and_gradient(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        "tanh",
        "softmax",
        0.0,
        update_running=True,
        bn_momentum=0.2,
        virtual_batch_size=4,
    )
    offsets = np.cumsum([0] + [g.size for g in gammas])
    for l, layer_stats in enumerate(stats):
        mean, var = np.zeros(gammas[l].size), np.ones(gammas[l].size)
        for rows, (mu, v) in zip(np.array_split(np.arange(11), 3), layer_stats):
            m = w[rows].sum() if w[rows].sum() >= 2 else np.count_nonzero(w[rows])
            mean = 0.8 * mean + 0.2 * mu
            var = 0.8 * var + 0.2 * v * m / (m - 1)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        assert_allclose(rm[offsets[l] : offsets[l + 1]], mean, rtol=tol, atol=tol)
        assert_allclose(rv[offsets[l] : offsets[l + 1]], var, rtol=tol, atol=tol)


@pytest.mark.parametrize("chunks", [1, 3])
def test_cumulative_running_average(chunks):
    # bn_momentum=None: after the k-th update, running += (batch - running) / k.
    X, Y, coefs, gammas, intercepts = make_problem("squared_error", n=12, seed=5)
    _, stats, _ = ref_forward_train(X, coefs, gammas, intercepts, "relu", chunks=chunks)
    rm0, rv0 = np.full(8, 0.5), np.full(8, 2.0)
    _, _, rm, rv = engine_loss_and_gradient(
        X,
        Y,
        None,
        coefs,
        gammas,
        intercepts,
        "relu",
        "identity",
        0.0,
        running_mean=rm0.copy(),
        running_var=rv0.copy(),
        update_running=True,
        bn_momentum=None,
        n_batches_tracked=4,
        virtual_batch_size=4 if chunks == 3 else None,
    )
    offsets = [0, 5, 8]
    for l in range(2):
        mean, var = rm0[offsets[l] : offsets[l + 1]], rv0[offsets[l] : offsets[l + 1]]
        layer_stats = stats[l] if chunks > 1 else [stats[l]]
        for k, (mu, v) in enumerate(layer_stats, start=5):
            n = 12 // chunks
            mean = mean + (mu - mean) / k
            var = var + (v * n / (n - 1) - var) / k
        assert_allclose(rm[offsets[l] : offsets[l + 1]], mean, rtol=1e-12)
        assert_allclose(rv[offsets[l] : offsets[l + 1]], var, rtol=1e-12)


def _dropout_option(seed, step, rates, X, coefs):
    """The reference's dropout: each hidden layer's rate and the mask the
    engine draws for it."""
    return [
        None
        if rate == 0
        else (rate, _training.dropout_mask(seed, step, l, X.shape[0], W.shape[1], rate))
        for l, (rate, W) in enumerate(zip(rates, coefs[:-1]))
    ]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("activation", ["identity", "tanh", "logistic", "relu"])
@pytest.mark.parametrize("rates", [(0.3, 0.5), (0.0, 0.6)])
def test_dropout_gradient_matches_central_differences(rates, activation, weighted):
    X, Y, coefs, gammas, intercepts = make_problem(
        "multiclass", n=14, seed=9, hidden=(6, 5)
    )
    sw = sample_weights(14) if weighted else None
    dropout = _dropout_option(11, 3, rates, X, coefs)
    if activation == "relu":
        _, _, pre = ref_forward_train(
            X, coefs, gammas, intercepts, "relu", sw, dropout=dropout
        )
        assert min(np.abs(y).min() for y in pre) > 1e-4
    loss, grad, _, _ = engine_loss_and_gradient(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        activation,
        "softmax",
        0.1,
        dropout=rates,
        dropout_seed=11,
        step=3,
        virtual_batch_size=5,
    )
    options = dict(dropout=dropout, chunks=3)
    expected = ref_loss(
        X, Y, sw, coefs, gammas, intercepts, activation, "softmax", 0.1, **options
    )
    assert loss == pytest.approx(expected, rel=1e-12, abs=1e-13)
    numeric = ref_numeric_gradient(
        X, Y, sw, coefs, gammas, intercepts, activation, "softmax", 0.1, **options
    )
    assert_grad_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_dropout_masks():
    # Each unit is kept with probability 1 - p, independently of the other
    # units, layers and steps (counts within five standard deviations).
    n, p = 400 * 256, 0.3
    masks = [
        _training.dropout_mask(5, step, layer, 400, 256, p)
        for step in (0, 1)
        for layer in (0, 1)
    ]
    for keep in masks:
        assert abs(keep.sum() - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))
        assert abs(keep[:, :128].mean() - keep[:, 128:].mean()) < 0.01
        assert abs(keep[::2].mean() - keep[1::2].mean()) < 0.01
    for a, b in [(0, 1), (0, 2), (1, 3)]:
        both = (masks[a] & masks[b]).mean()
        assert abs(both - (1 - p) ** 2) < 0.01
    assert_array_equal(_training.dropout_mask(5, 1, 0, 400, 256, p), masks[2])
    assert (
        not _training.dropout_mask(6, 0, 0, 400, 256, p).tolist() == masks[0].tolist()
    )
    assert _training.dropout_mask(5, 0, 0, 10, 10, 0.0).all()


@pytest.mark.parametrize(
    "problem, activation",
    [("squared_error", "tanh"), ("multiclass", "relu"), ("poisson", "logistic")],
)
def test_ghost_chunk_with_weight_on_one_row_matches_central_differences(
    problem, activation
):
    # Rows 0-2 of the first chunk (rows 0-3) weigh nothing: its statistics,
    # those of row 3 alone, normalize nothing (z_hat = 0 on the chunk), but
    # row 3 is in the loss, and beta gets its gradient through act(beta).
    X, Y, coefs, gammas, intercepts = make_problem(problem, n=11, seed=3)
    sw = np.ones(11)
    sw[:3] = 0
    assert_ghost_loss_and_gradient_match_the_reference(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        activation,
        OUT_ACTIVATION[problem],
        4,
        chunks=3,
        eps=BN_EPSILON,
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("zero_rows", [slice(0, 4), slice(0, 3)])
def test_ghost_chunk_rows_without_weight_stay_out_of_a_poisson_loss(dtype, zero_rows):
    # Rows of no weight in a chunk with fewer than 2 weighted rows were
    # normalized by 1 / sqrt(bn_epsilon) per layer: exp() of their outputs
    # overflowed, and 0 * inf made the loss and the gradient NaN.
    X, Y, coefs, gammas, intercepts = make_problem(
        "poisson", n=12, hidden=(64, 64), dtype=dtype
    )
    sw = np.ones(12, dtype=dtype)
    sw[zero_rows] = 0
    loss, grad, _, _ = engine_loss_and_gradient(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        "relu",
        "exp",
        0.0,
        virtual_batch_size=4,
    )
    assert np.isfinite(loss)
    assert all(np.isfinite(part).all() for group in grad for part in group)
    if zero_rows.stop == 4 and dtype == np.float64:
        # A whole chunk of no weight: as if its rows were dropped.
        keep = sw > 0
        loss_without, grad_without, _, _ = engine_loss_and_gradient(
            X[keep],
            Y[keep],
            None,
            coefs,
            gammas,
            intercepts,
            "relu",
            "exp",
            0.0,
            virtual_batch_size=4,
        )
        assert loss == pytest.approx(loss_without, rel=1e-12)
        assert_grad_allclose(grad, grad_without, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "problem, activation, sw, chunks, scale_output",
    [
        # A chunk weighted on one row, whose weightless row's output overflows.
        ("poisson", "identity", [1.0, 1.0, 0.0, 1.0], 2, 1),
        # A chunk of no weight.
        ("squared_error", "tanh", [1.0, 1.0, 0.0, 0.0], 2, 1),
        # Saturated probabilities, clipped as scikit-learn's log loss clips.
        ("binary", "relu", None, 1, 300),
    ],
)
def test_the_engine_and_the_reference_agree_at_the_edges(
    problem, activation, sw, chunks, scale_output
):
    # Minimal cases from a fuzzing of the engine against the reference, where
    # the reference (not the engine) was wrong: NaN, ZeroDivisionError, inf.
    seed = 10 if problem == "poisson" else 0
    X, Y, coefs, gammas, intercepts = make_problem(
        problem, n=4, n_features=1, hidden=(1,), seed=seed
    )
    coefs[-1] = coefs[-1] * scale_output
    sw = None if sw is None else np.array(sw)
    out = OUT_ACTIVATION[problem]
    vbs = 2 if chunks > 1 else None
    loss = engine_loss_and_gradient(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        activation,
        out,
        0.0,
        virtual_batch_size=vbs,
    )[0]
    expected = ref_loss(
        X, Y, sw, coefs, gammas, intercepts, activation, out, 0.0, chunks=chunks
    )
    assert np.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-12)


def test_ghost_chunk_without_weight_is_skipped():
    # A chunk whose rows all have weight 0 gives no statistics: the running
    # statistics skip it, and nothing of it reaches the gradient.
    X, Y, coefs, gammas, intercepts = make_problem("multiclass", n=12, seed=2)
    sw = np.ones(12)
    sw[4:8] = 0  # the second of three chunks
    _, grad, rm, rv = engine_loss_and_gradient(
        X,
        Y,
        sw,
        coefs,
        gammas,
        intercepts,
        "tanh",
        "softmax",
        0.0,
        update_running=True,
        bn_momentum=None,
        virtual_batch_size=4,
    )
    keep = sw > 0
    _, grad_without, rm_without, rv_without = engine_loss_and_gradient(
        X[keep],
        Y[keep],
        None,
        coefs,
        gammas,
        intercepts,
        "tanh",
        "softmax",
        0.0,
        update_running=True,
        bn_momentum=None,
        virtual_batch_size=4,
    )
    assert_allclose(rm, rm_without, rtol=1e-12)
    assert_allclose(rv, rv_without, rtol=1e-12)
    assert_grad_allclose(grad, grad_without, rtol=1e-10, atol=1e-13)
