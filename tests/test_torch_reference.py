"""Fits against PyTorch autograd: decoupled weight decay and the cosine
schedule (issue #23's pinned math), for both solvers, in float32 and float64.

The reference is the network written in PyTorch: each hidden layer a linear
map without bias, batch norm with the minibatch's mean and biased variance,
then the activation; the output layer with its intercept; scikit-learn's
loss and its L2 term ``alpha / (2 * n_rows) * sum(W ** 2)``. Its gradients come
from autograd. SGD's step is scikit-learn's momentum update written out (the
momentum convention of ``torch.optim.SGD`` differs), after the decay of the
coefficients; Adam's is ``torch.optim.AdamW`` with the learning rate set at
every step, the coefficients in a group with ``weight_decay``, the gammas
and intercepts in one without. (AdamW adds epsilon to ``sqrt(v) /
sqrt(1 - beta_2 ** s)``, scikit-learn to ``sqrt(v)``: with a small epsilon
the difference is far below the tolerances.)

Skipped when PyTorch is not installed (it is no dependency of the package).
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.exceptions import ConvergenceWarning

from sklearn_bn import MLPBNClassifier, MLPBNRegressor

torch = pytest.importorskip("torch")

N_ROWS, N_FEATURES, BATCH, MAX_ITER = 24, 3, 8, 2
HIDDEN = (5, 4)
BN_EPSILON = 1e-5
ADAM_EPSILON = 1e-14


def glorot(units, seed, dtype):
    """scikit-learn's MLP initialization, as the estimators draw it; gammas
    at 1, intercepts at 0."""
    rs = np.random.RandomState(seed)
    coefs = []
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        coefs.append(rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype))
        rs.uniform(-bound, bound, fan_out)  # the intercepts' draw
    gammas = [np.ones(u, dtype=dtype) for u in units[1:-1]]
    intercepts = [np.zeros(u, dtype=dtype) for u in units[1:]]
    return coefs, gammas, intercepts


def torch_loss(params, Xb, Yb, classifier, alpha):
    coefs, gammas, intercepts = params
    a = Xb
    for W, gamma, beta in zip(coefs[:-1], gammas, intercepts[:-1]):
        z = a @ W
        mean = z.mean(dim=0)
        var = ((z - mean) ** 2).mean(dim=0)  # biased, as batch norm in training
        a = torch.tanh(gamma * (z - mean) / torch.sqrt(var + BN_EPSILON) + beta)
    raw = a @ coefs[-1] + intercepts[-1]
    if classifier:
        data = -(Yb * torch.log_softmax(raw, dim=1)).sum(dim=1).mean()
    else:
        data = 0.5 * ((raw - Yb) ** 2).sum(dim=1).mean()
    l2 = sum((W**2).sum() for W in coefs)
    return data + alpha / (2 * Xb.shape[0]) * l2


def torch_fit(
    X,
    Y,
    init,
    *,
    classifier,
    solver,
    schedule,
    lr,
    weight_decay,
    alpha,
    nesterov=True,
    momentum=0.9,
):
    dtype = {np.float32: torch.float32, np.float64: torch.float64}[X.dtype.type]
    params = [
        [torch.tensor(p, dtype=dtype, requires_grad=True) for p in group]
        for group in init
    ]
    coefs = params[0]
    others = params[1] + params[2]
    batches = [(start, start + BATCH) for start in range(0, N_ROWS, BATCH)] * MAX_ITER
    T = len(batches)
    if solver == "adam":
        optimizer = torch.optim.AdamW(
            [
                {"params": coefs, "weight_decay": weight_decay},
                {"params": others, "weight_decay": 0.0},
            ],
            lr=lr,
            betas=(0.9, 0.999),
            eps=ADAM_EPSILON,
        )
    velocity = [torch.zeros_like(p) for p in coefs + others]
    Xt, Yt = torch.tensor(X), torch.tensor(Y, dtype=dtype)
    for t, (start, stop) in enumerate(batches):
        lr_t = lr * (1 + np.cos(np.pi * t / T)) / 2 if schedule == "cosine" else lr
        loss = torch_loss(params, Xt[start:stop], Yt[start:stop], classifier, alpha)
        for p in coefs + others:
            p.grad = None
        loss.backward()
        if solver == "adam":
            for group in optimizer.param_groups:
                group["lr"] = lr_t
            optimizer.step()
            continue
        with torch.no_grad():
            for k, p in enumerate(coefs + others):
                v = momentum * velocity[k] - lr_t * p.grad
                velocity[k] = v
                update = momentum * v - lr_t * p.grad if nesterov else v
                if k < len(coefs):
                    p.mul_(1 - lr_t * weight_decay)
                p.add_(update)
    return [[p.detach().numpy() for p in group] for group in params]


CASES = {
    "decay": dict(schedule="constant", weight_decay=0.3),
    "cosine": dict(schedule="cosine", weight_decay=0.0),
    "cosine-decay": dict(schedule="cosine", weight_decay=0.3),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "solver, nesterov", [("sgd", True), ("sgd", False), ("adam", True)]
)
@pytest.mark.parametrize("classifier", [False, True], ids=["regressor", "classifier"])
def test_fit_matches_pytorch(classifier, solver, nesterov, case, dtype):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(N_ROWS, N_FEATURES)).astype(dtype)
    lr = 0.05 if solver == "sgd" else 0.02
    alpha = 1e-3
    if classifier:
        y = rng.randint(0, 3, N_ROWS)
        Y = np.eye(3)[y]
        # torch_fit's cross-entropy has no label smoothing (its own test
        # is test_training's test_label_smoothing_matches_pytorch_cross_entropy).
        est = MLPBNClassifier(label_smoothing=0.0)
    else:
        y = np.column_stack([np.sin(X[:, 0]) + X[:, 1], X[:, 2] ** 2])
        Y = y
        est = MLPBNRegressor()
    est.set_params(
        hidden_layer_sizes=HIDDEN,
        activation="tanh",
        solver=solver,
        nesterovs_momentum=nesterov,
        momentum=0.9,
        batch_size=BATCH,
        shuffle=False,
        max_iter=MAX_ITER,
        tol=0.0,
        n_iter_no_change=100,
        alpha=alpha,
        learning_rate=CASES[case]["schedule"],
        early_stopping=False,
        learning_rate_init=lr,
        weight_decay=CASES[case]["weight_decay"],
        epsilon=ADAM_EPSILON,
        bn_epsilon=BN_EPSILON,
        random_state=0,
        input_preprocessing=None,
    )  # X straight into the first layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    init = glorot([N_FEATURES, *HIDDEN, Y.shape[1]], 0, dtype)
    expected = torch_fit(
        X,
        Y,
        init,
        classifier=classifier,
        solver=solver,
        lr=lr,
        alpha=alpha,
        nesterov=nesterov,
        **CASES[case],
    )
    rtol, atol = (3e-4, 3e-5) if dtype == np.float32 else (1e-9, 1e-11)
    for name, got, want in zip(
        ("coefs", "gammas", "intercepts"),
        (est.coefs_, est.gammas_, est.intercepts_),
        expected,
    ):
        for l, (a, b) in enumerate(zip(got, want)):
            assert a.dtype == dtype
            assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name}[{l}]")
