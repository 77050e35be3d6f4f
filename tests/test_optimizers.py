"""Tests of the optimizers (sklearn_bn._optimizers): the rates of each step
as the compiled update sees them (schedules, the decay factor, Adam's bias
corrections), against the pinned formulas in numpy; their state between
calls. Whole steps of training are checked against numpy in test_training.py
and against PyTorch in test_torch_reference.py.
"""

import pickle

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_bn import MLPBNClassifier, MLPBNRegressor
from sklearn_bn._optimizers import (
    OPTIMIZERS,
    SCHEDULES,
    AdamOptimizer,
    SGDOptimizer,
    batches_per_epoch,
    from_state_dict,
)


def cosine(lr, t, T):
    return lr * (1 + np.cos(np.pi * t / T)) / 2


@pytest.mark.parametrize("cls", [SGDOptimizer, AdamOptimizer])
def test_cosine_rates_and_decay(cls):
    lr, wd, T = 0.01, 0.05, 37
    opt = cls(
        10, np.float64, learning_rate_init=lr, lr_schedule="cosine", weight_decay=wd
    )
    opt.plan(T)
    for t in [0, 1, 5, 18, 36]:
        rates = opt.step_rates(t)
        assert rates["lr"] == pytest.approx(cosine(lr, t, T), rel=1e-15, abs=1e-18)
        assert rates["decay"] == pytest.approx(1 - rates["lr"] * wd, rel=1e-15)
        if cls is AdamOptimizer:
            s = t + 1  # Adam's own step count
            expected = rates["lr"] * np.sqrt(1 - 0.999**s) / (1 - 0.9**s)
            assert rates["rate"] == pytest.approx(expected, rel=1e-14)
        else:
            assert rates["rate"] == rates["lr"]
    assert opt.step_rates(0)["lr"] == lr
    # Without a horizon (partial_fit), every step at learning_rate_init.
    opt.plan(0)
    assert {opt.step_rates(t)["lr"] for t in (0, 7, 100)} == {lr}


@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
def test_rates_of_the_other_schedules(schedule):
    # The decay factor uses the schedule's rate, never Adam's bias-corrected
    # step size; Adam ignores the epoch schedules.
    lr, wd = 0.02, 0.5
    sgd = SGDOptimizer(
        4,
        np.float32,
        learning_rate_init=lr,
        lr_schedule=schedule,
        weight_decay=wd,
        power_t=0.5,
    )
    adam = AdamOptimizer(
        4, np.float32, learning_rate_init=lr, lr_schedule=schedule, weight_decay=wd
    )
    for opt in (sgd, adam):
        opt.plan(50)  # no effect but for 'cosine'
        opt.iteration_ends(99)
        if not opt.trigger_stopping("", verbose=False):
            assert schedule == "adaptive" and opt is sgd
    expected_sgd = {"constant": lr, "invscaling": lr / 100**0.5, "adaptive": lr / 5}[
        schedule
    ]
    assert sgd.step_rates(3)["lr"] == pytest.approx(expected_sgd, rel=1e-15)
    assert sgd.step_rates(3)["decay"] == pytest.approx(1 - expected_sgd * wd, rel=1e-15)
    assert adam.step_rates(3)["lr"] == lr
    assert adam.step_rates(3)["decay"] == pytest.approx(1 - lr * wd, rel=1e-15)
    assert adam.step_rates(3)["rate"] != lr


@pytest.mark.parametrize(
    "n, batch_size, expected",
    [
        (10, 5, 2),
        (11, 5, 2),
        (12, 5, 3),
        (3, 2, 1),
        (2, 2, 1),
        (5, 10, 1),
        (201, 200, 1),
        (202, 200, 2),
    ],
)
def test_batches_per_epoch(n, batch_size, expected):
    # Consecutive slices of batch_size; a trailing single row joins the
    # previous one.
    assert batches_per_epoch(n, batch_size) == expected
    bounds, start = [], 0
    while start < n:
        m = min(batch_size, n - start)
        m += 1 if n - start - m == 1 else 0
        bounds.append(m)
        start += m
    assert len(bounds) == expected


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip(name):
    cls = OPTIMIZERS[name]
    opt = cls(
        6, np.float32, learning_rate_init=0.3, lr_schedule="cosine", weight_decay=0.2
    )
    opt.plan(40)
    opt.step = 7
    for k, moment in enumerate(opt.moments().values()):
        moment[:] = np.arange(6) + k
    state = opt.state_dict()
    # Plain values only: pickle and skops store them as they are.
    assert all(
        isinstance(v, (int, float, str, bool, np.ndarray)) for v in state.values()
    )
    state = pickle.loads(pickle.dumps(state))
    again = from_state_dict(state, np.float32)
    assert type(again) is cls and again.state_dict().keys() == state.keys()
    for key, value in again.state_dict().items():
        if isinstance(value, np.ndarray):
            assert_array_equal(value, state[key])
            assert value.dtype == np.float32
        else:
            assert value == state[key], key
    assert again.step_rates(9) == opt.step_rates(9)
    assert all(m.ctypes.data % 64 == 0 for m in again.moments().values())
    # Fresh copies: the saved state is left alone by training.
    for moment in again.moments().values():
        moment += 1
    assert_array_equal(state[cls.moment_names[0]], np.arange(6))


def test_a_state_saved_before_weight_decay_and_cosine_loads():
    # The keys of the optimizers' state before the optimizer objects.
    old = {
        "learning_rate_init": 0.01,
        "learning_rate": 0.002,
        "step": 4,
        "dtype": "float64",
        "n_params": 3,
        "lr_schedule": "adaptive",
        "momentum": 0.8,
        "nesterov": False,
        "power_t": 0.5,
        "velocity": np.ones(3),
        "solver": "sgd",
    }
    opt = from_state_dict(old, np.float64)
    assert (opt.step, opt.learning_rate, opt.weight_decay, opt.horizon) == (
        4,
        0.002,
        0.0,
        0,
    )
    assert opt.step_rates(4) == {"lr": 0.002, "decay": 1.0, "rate": 0.002}


def test_estimator_parameters():
    for cls in (MLPBNClassifier, MLPBNRegressor):
        params = cls().get_params()
        assert params["weight_decay"] == 0.0 and params["learning_rate"] == "cosine"
        assert set(cls._parameter_constraints["learning_rate"][0].options) == set(
            SCHEDULES
        )
    X, y = np.random.RandomState(0).normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(InvalidParameterError, match="weight_decay"):
        MLPBNClassifier(weight_decay=-0.1).fit(X, y)
    with pytest.raises(InvalidParameterError, match="learning_rate"):
        MLPBNClassifier(learning_rate="linear").fit(X, y)
