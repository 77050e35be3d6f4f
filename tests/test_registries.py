"""The registries walked: every activation, output activation, optimizer and
layer option the package declares must reach every site that needs it.

CONTRIBUTING.md's recipes ("Adding an activation", "Adding an optimizer",
"Adding a layer option") list the sites; each test below fails, naming the
entry, when one is missed: a parameter constraint or docstring, a compiled
dispatch (it writes NaN for a code it does not know), a numpy reference of
the tests (a KeyError), the folded network and its fallback, the exports.
"""

import inspect
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from test_training import engine_loss_and_gradient, make_problem

from sklearn_bn import (
    MLPBNClassifier,
    MLPBNRegressor,
    _activation_registry,
    _activations,
    _batchnorm,
    _engine,
    _mlp,
    _optimizers,
    _training,
)

import reference

ESTIMATORS = [MLPBNClassifier, MLPBNRegressor]
DOCS = Path(__file__).parents[1] / "docs"


def _documented_options(cls, parameter):
    """The options of ``parameter`` in the estimator's docstring, ``{'a',
    'b'}`` on the line that introduces it."""
    line = next(
        line
        for line in cls.__doc__.splitlines()
        if line.strip().startswith(f"{parameter} :")
    )
    braces = line[line.index("{") + 1 : line.index("}")]
    return {option.strip().strip("'") for option in braces.split(",")}


def _fit(est, X, y, **fit_params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **fit_params)


def _data(seed=0, n=40, n_features=5):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features))
    return X, (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int), X[:, :2] @ [1.0, -0.5]


# ---------------------------------------------------------------------------
# Hidden activations


def test_the_compiled_activations_are_the_registry():
    # setup.py renders the codes, names and tags from the registry.
    registered = [a.name for a in _activation_registry.HIDDEN]
    assert list(_activations.ACTIVATIONS) == registered
    assert list(_activations.ACTIVATIONS.values()) == list(range(len(registered)))
    outputs = [a.name for a in _activation_registry.OUTPUT]
    assert list(_activations.OUT_ACTIVATIONS) == outputs
    assert list(_activations.OUT_ACTIVATIONS.values()) == list(range(len(outputs)))
    assert reference.ACTIVATIONS == registered


@pytest.mark.parametrize("name", list(_activation_registry.ACTIVATIONS))
def test_every_site_of_an_activation(name):
    # The estimators' parameter, its documentation and the demo's choices.
    for cls in ESTIMATORS:
        assert name in cls._parameter_constraints["activation"][0].options
        assert name in _documented_options(cls, "activation")
    if (DOCS / "user_guide" / "mlp.rst").exists():
        assert f"``'{name}'``" in (DOCS / "user_guide" / "mlp.rst").read_text()
    # to_sklearn() and ONNX go through scikit-learn's MLP: it must have it.
    from sklearn.neural_network._base import ACTIVATIONS as SKLEARN

    assert name in SKLEARN

    # Every compiled kernel that takes an activation's code (each turns it
    # into its tag: a missing line gives NaN), against the registry's numpy
    # forms, in both dtypes.
    act = _activation_registry.ACTIVATIONS[name]
    rng = np.random.default_rng(0)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        y = rng.normal(size=(7, 1100)).astype(dtype)  # two column tiles
        y64 = y.astype(np.float64)
        a = _activations.forward(y.copy(), name)
        assert_allclose(a, act.forward(y64), rtol=tol, atol=tol)
        delta = np.ones_like(y)
        _activations.backward(a, delta, name)
        assert_allclose(delta, act.derivative(y64), rtol=10 * tol, atol=10 * tol)
        # The batch-norm kernels: forward and backward on batch statistics.
        gamma, beta = np.full(1100, 1.5, dtype), np.full(1100, 0.25, dtype)
        out, mean, var = np.empty_like(y), np.empty(1100), np.empty(1100)
        _batchnorm.bn_forward_train(y, gamma, beta, out, mean, var, None, 1e-5, name)
        pre = 1.5 * (y64 - y64.mean(0)) / np.sqrt(y64.var(0) + 1e-5) + 0.25
        assert_allclose(out, act.forward(pre), rtol=100 * tol, atol=100 * tol)
        dz, dgamma, dbeta = np.empty_like(y), np.empty_like(gamma), np.empty_like(gamma)
        _batchnorm.bn_backward(
            np.ones_like(y),
            out,
            y,
            gamma,
            beta,
            mean,
            var,
            dz,
            dgamma,
            dbeta,
            None,
            1e-5,
            name,
        )
        assert_allclose(dbeta, act.derivative(pre).sum(0), rtol=100 * tol, atol=1e-3)
        # The folded network, its compiled pass and its extended-precision
        # fallback.
        W = rng.normal(size=(1100, 3)).astype(dtype) / 30
        folded = _engine.FoldedNetwork(
            [np.eye(1100, dtype=dtype), W], [beta, np.zeros(3, dtype)], name, "identity"
        )
        expected = act.forward(y64 + 0.25) @ W.astype(np.float64)
        assert_allclose(folded.predict(y), expected, rtol=100 * tol, atol=100 * tol)
        assert_allclose(
            folded._predict_wide(y).astype(np.float64),
            expected,
            rtol=100 * tol,
            atol=100 * tol,
        )


@pytest.mark.parametrize("name", list(_activation_registry.OUT_ACTIVATIONS))
def test_every_site_of_an_output_activation(name):
    # The engine's loss (the tests' numpy losses know it) and gradient, the
    # folded network's output and its fallback, scikit-learn's twin.
    from sklearn.neural_network._base import ACTIVATIONS as SKLEARN

    assert name in SKLEARN
    problem = {
        "identity": "squared_error",
        "logistic": "multilabel",
        "softmax": "multiclass",
        "exp": "poisson",
    }[name]
    X, Y, coefs, gammas, intercepts = make_problem(problem)
    loss, grad, _, _ = engine_loss_and_gradient(
        X, Y, None, coefs, gammas, intercepts, "tanh", name, 0.01
    )
    assert loss == pytest.approx(
        reference.ref_loss(X, Y, None, coefs, gammas, intercepts, "tanh", name, 0.01),
        rel=1e-10,
    )
    numeric = reference.ref_numeric_gradient(
        X, Y, None, coefs, gammas, intercepts, "tanh", name, 0.01
    )
    for got, want in zip(grad, numeric):
        for g, w in zip(got, want):
            assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    folded = _engine.FoldedNetwork([coefs[-1]], [intercepts[-1]], "relu", name)
    a = np.random.default_rng(0).normal(size=(9, coefs[-1].shape[0]))
    expected = reference.OUT_ACTIVATIONS[name](a @ coefs[-1] + intercepts[-1])
    assert_allclose(folded.predict(a), expected, rtol=1e-12)
    assert_allclose(folded._predict_wide(a).astype(np.float64), expected, rtol=1e-12)


# ---------------------------------------------------------------------------
# Optimizers


def test_the_solvers_are_the_registry():
    for cls in ESTIMATORS:
        assert set(cls._parameter_constraints["solver"][0].options) == set(
            _optimizers.OPTIMIZERS
        )
        assert _documented_options(cls, "solver") == set(_optimizers.OPTIMIZERS)
        assert _documented_options(cls, "learning_rate") == set(_optimizers.SCHEDULES)


@pytest.mark.parametrize("name", list(_optimizers.OPTIMIZERS))
def test_every_site_of_an_optimizer(name):
    cls = _optimizers.OPTIMIZERS[name]
    assert cls.name == name and issubclass(cls, _optimizers.Optimizer)
    # Its hyper-parameters come from the estimators' parameters.
    for est_cls in ESTIMATORS:
        params = est_cls().get_params()
        assert set(cls.estimator_parameters.values()) <= set(params)
    # Its state: aligned moments of the parameters' size, plain values.
    opt = cls(5, np.float32)
    for moment in opt.moments().values():
        assert moment.shape == (5,) and moment.dtype == np.float32
        assert moment.ctypes.data % 64 == 0
    state = opt.state_dict()
    assert all(
        isinstance(v, (int, float, str, bool, np.ndarray)) for v in state.values()
    )
    assert (
        _optimizers.from_state_dict(state, np.float32).state_dict().keys()
        == state.keys()
    )

    # Its compiled update, with decay and the cosine schedule, in fit and in
    # partial_fit, against the tests' numpy step (reference.OPTIMIZER_STEPS).
    X, _, y = _data(n=12, n_features=3)
    lr, wd = 0.05, 0.2
    est = MLPBNRegressor(
        hidden_layer_sizes=(4,),
        activation="tanh",
        solver=name,
        batch_size=6,
        shuffle=False,
        alpha=0.0,
        learning_rate="cosine",
        learning_rate_init=lr,
        weight_decay=wd,
        max_iter=2,
        tol=0.0,
        n_iter_no_change=99,
        random_state=0,
        input_preprocessing=None,
    )
    _fit(est, X, y)
    rs = np.random.RandomState(0)
    init = []
    for fan_in, fan_out in ((3, 4), (4, 1)):
        bound = np.sqrt(6 / (fan_in + fan_out))
        init.append(rs.uniform(-bound, bound, (fan_in, fan_out)))
        rs.uniform(-bound, bound, fan_out)
    params = (init, [np.ones(4)], [np.zeros(4), np.zeros(1)])
    batches = [(X[:6], y[:6]), (X[6:], y[6:])] * 2

    def gradient(params, t):
        Xb, yb = batches[t]
        return reference.ref_numeric_gradient(
            Xb, yb, None, *params, "tanh", "identity", 0.0
        )

    expected = reference.optimizer_steps(
        name,
        est.get_params(),
        params,
        gradient,
        4,
        lambda t: lr * (1 + math.cos(math.pi * t / 4)) / 2,
        wd,
    )
    for got, want in zip((est.coefs_, est.gammas_, est.intercepts_), expected):
        for g, w in zip(got, want):
            assert_allclose(g, w, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Layer options

# A value that turns each option on, and what the tests' training reference
# (reference.ref_forward_train) needs for it: (Engine keywords, reference
# keywords) for a minibatch of m rows and the given hidden sizes.
OPTION_EXAMPLES = {"dropout": 0.3, "virtual_batch_size": 4}


def _dropout_reference(rate, m, hidden, seed=7, step=0):
    masks = [
        _training.dropout_mask(seed, step, l, m, h, rate) for l, h in enumerate(hidden)
    ]
    return (
        {"dropout": [rate] * len(hidden), "dropout_seed": seed},
        {"dropout": [(rate, keep) for keep in masks]},
    )


TRAINING_REFERENCE = {
    "dropout": _dropout_reference,
    "virtual_batch_size": lambda v, m, hidden: (
        {"virtual_batch_size": v},
        {"chunks": max(1, min(-(-m // v), m // 2))},
    ),
}

# Options that change inference: the tests' inference reference of a fitted
# model with the option (reference.forward_from_attributes' counterpart).
INFERENCE_REFERENCE = {}


def test_the_layer_options_are_parameters():
    for name in _engine.LAYER_OPTIONS:
        for cls in ESTIMATORS:
            assert name in cls._parameter_constraints, name
            assert name in cls().get_params(), name
            assert f"\n{name} :" in inspect.getdoc(cls), name
        assert name in inspect.signature(_engine.Engine).parameters, name


@pytest.mark.parametrize("name", list(_engine.LAYER_OPTIONS))
def test_every_site_of_a_layer_option(name):
    option = _engine.LAYER_OPTIONS[name]
    value = OPTION_EXAMPLES[name]
    X, Y, coefs, gammas, intercepts = make_problem("multiclass", n=12, hidden=(5, 3))
    hidden = [5, 3]
    engine_kwargs, ref_kwargs = TRAINING_REFERENCE[name](value, X.shape[0], hidden)

    # The compiled network carries it: a field of each layer's descriptor,
    # or of the network's settings.
    engine = _engine.Engine(
        [4, 5, 3, 3],
        activation="tanh",
        out_activation="softmax",
        dtype=np.float64,
        max_batch=12,
        sparse=False,
        weighted=False,
        alpha=0.0,
        bn_momentum=0.1,
        bn_epsilon=1e-5,
        **engine_kwargs,
    )
    given = engine_kwargs[name]
    if option.per_layer:
        assert [engine.network.layer(l)[option.field] for l in range(2)] == given
    else:
        assert engine.network.settings()[option.field] == given

    # Training applies it as the tests' numpy reference does: the loss and
    # the gradient of a minibatch.
    loss, grad, _, _ = engine_loss_and_gradient(
        X, Y, None, coefs, gammas, intercepts, "tanh", "softmax", 0.01, **engine_kwargs
    )
    assert loss == pytest.approx(
        reference.ref_loss(
            X, Y, None, coefs, gammas, intercepts, "tanh", "softmax", 0.01, **ref_kwargs
        ),
        rel=1e-10,
    )
    numeric = reference.ref_numeric_gradient(
        X, Y, None, coefs, gammas, intercepts, "tanh", "softmax", 0.01, **ref_kwargs
    )
    for got, want in zip(grad, numeric):
        for g, w in zip(got, want):
            assert_allclose(g, w, rtol=1e-5, atol=1e-7)

    # Inference: a fitted model predicts what the inference network of its
    # attributes gives (with the option, when it changes inference), by the
    # folded network, its fallback, population statistics and the exports.
    Xf, y, _ = _data()
    est = _fit(
        MLPBNClassifier(
            hidden_layer_sizes=(6, 5),
            batch_size=16,
            max_iter=3,
            random_state=0,
            input_preprocessing=None,
            **{name: value},
        ),
        Xf,
        y,
    )
    if option.changes_inference:
        expected = INFERENCE_REFERENCE[name](est, Xf)
    else:
        expected = reference.forward_from_attributes(est, Xf)
    proba = est.predict_proba(Xf)[:, 1:]
    assert_allclose(proba, expected, rtol=1e-9, atol=1e-12)
    wide = est._folded_network(np.float64)._predict_wide(Xf).astype(np.float64)
    assert_allclose(wide, expected, rtol=1e-9, atol=1e-12)
    assert_allclose(
        est.predict_proba(sp.csr_matrix(Xf))[:, 1:], expected, rtol=1e-9, atol=1e-12
    )
    population = clone(est).set_params(bn_stats="population")
    _fit(population, Xf, y)
    for z, mean, var in zip(
        reference.hidden_pre_normalization(population, Xf),
        population.running_means_,
        population.running_vars_,
    ):
        ref_mean, ref_var = reference.weighted_mean_and_unbiased_var(z)
        assert_allclose(mean, ref_mean, rtol=1e-9, atol=1e-12)
        assert_allclose(var, ref_var, rtol=1e-9, atol=1e-12)
    # scikit-learn's twin predicts the same, or the export is refused.
    try:
        twin = est.to_sklearn()
    except ValueError:
        assert option.changes_inference
    else:
        assert_allclose(twin.predict_proba(Xf)[:, 1:], expected, rtol=1e-6, atol=1e-9)


def test_the_recipes_name_the_registries():
    contributing = Path(__file__).parents[1] / "CONTRIBUTING.md"
    if not contributing.exists():
        pytest.skip("not run from a clone")
    text = contributing.read_text()
    for heading in (
        "## Adding an activation",
        "## Adding an optimizer",
        "## Adding a layer option",
    ):
        assert heading in text
    for site in (
        "_activation_registry.py",
        "OPTIMIZERS",
        "LAYER_OPTIONS",
        "test_registries.py",
    ):
        assert site in text
    assert _mlp.ACTIVATIONS is _activation_registry.ACTIVATIONS
