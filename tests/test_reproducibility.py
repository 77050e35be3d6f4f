"""Fits pinned bit for bit: a change that is not meant to move the numbers
(a refactoring of the engine, a new option left off) must leave them alone.

``tests/data/pinned_fits.npz`` holds, for each case below, every fitted
array and the loss curve, recorded with the BLAS library named in it.
The pinned fits pass ``input_preprocessing=None`` (X straight into the
network) and the round-2 recipe (``reference.ROUND_2``: constant learning
rate, no label smoothing, no early stopping unless asked), so that later
defaults do not move them.
Bit-identity holds for one BLAS build on one kind of CPU (its kernels round
differently elsewhere) and for the optimized build: with another BLAS, or in
the bounds-checked debug build, the fits are compared with a tolerance
instead. A change that moves the numbers on purpose re-records
them, and its commit says why::

    python tests/test_reproducibility.py --record
"""

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_info, threadpool_limits

from sklearn_bn import MLPBNClassifier, MLPBNRegressor, _debug, _threads

from reference import round_2

PINS = Path(__file__).parent / "data" / "pinned_fits.npz"
FITTED = ("coefs_", "gammas_", "intercepts_", "running_means_", "running_vars_")


def _data(seed, n=157, n_features=11):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features)) * rng.uniform(0.5, 3.0, n_features)
    return rng, X


def _classification(seed, n_classes=3, **kw):
    rng, X = _data(seed, **kw)
    score = X[:, 0] + np.abs(X[:, 1]) - X[:, 2] + rng.normal(scale=0.5, size=len(X))
    return X, np.searchsorted(
        np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]), score
    )


def _regression(seed, n_outputs=2, **kw):
    rng, X = _data(seed, **kw)
    Y = np.column_stack(
        [np.tanh(X[:, k]) + 0.1 * X[:, k + 1] for k in range(n_outputs)]
    )
    return X, Y


def _fit_dense_adam(dtype):
    X, y = _classification(0)
    est = round_2(
        MLPBNClassifier,
        hidden_layer_sizes=(48, 40),
        batch_size=32,
        max_iter=3,
        alpha=1e-3,
        random_state=0,
        input_preprocessing=None,
    )
    return est.fit(X.astype(dtype), y)


def _fit_sparse_sgd_weighted(dtype):
    X, y = _classification(1, n_classes=2)
    X[np.abs(X) < 0.7] = 0
    sw = np.random.RandomState(2).uniform(0.1, 2.0, X.shape[0])
    est = round_2(
        MLPBNClassifier,
        hidden_layer_sizes=(12,),
        activation="tanh",
        solver="sgd",
        learning_rate="invscaling",
        learning_rate_init=0.05,
        batch_size=40,
        max_iter=3,
        random_state=1,
        input_preprocessing=None,
    )
    return est.fit(sp.csr_matrix(X.astype(dtype)), y, sample_weight=sw)


def _fit_regressor_early_stopping(dtype):
    X, Y = _regression(3)
    est = round_2(
        MLPBNRegressor,
        hidden_layer_sizes=(10, 20, 7),
        activation="logistic",
        batch_size=25,
        max_iter=4,
        early_stopping=True,
        validation_fraction=0.2,
        n_iter_no_change=2,
        random_state=2,
        input_preprocessing=None,
    )
    return est.fit(X.astype(dtype), Y)


def _fit_poisson_no_hidden(dtype):
    X, Y = _regression(4, n_outputs=1)
    est = round_2(
        MLPBNRegressor,
        loss="poisson",
        hidden_layer_sizes=(),
        batch_size=30,
        max_iter=3,
        shuffle=False,
        random_state=3,
        input_preprocessing=None,
    )
    return est.fit(X.astype(dtype), np.exp(Y.ravel()))


def _fit_partial_and_warm(dtype):
    X, y = _classification(5, n_classes=4)
    X = X.astype(dtype)
    est = round_2(
        MLPBNClassifier,
        hidden_layer_sizes=(8,),
        activation="identity",
        solver="sgd",
        learning_rate="adaptive",
        nesterovs_momentum=False,
        batch_size=20,
        random_state=4,
        input_preprocessing=None,
    )
    for start in range(0, 150, 50):
        est.partial_fit(
            X[start : start + 50], y[start : start + 50], classes=np.arange(4)
        )
    est.set_params(warm_start=True, max_iter=2).fit(X, y)
    return est


CASES = {
    "dense-adam": _fit_dense_adam,
    "sparse-sgd-weighted": _fit_sparse_sgd_weighted,
    "regressor-early-stopping": _fit_regressor_early_stopping,
    "poisson-no-hidden": _fit_poisson_no_hidden,
    "partial-fit-then-warm-start": _fit_partial_and_warm,
}
THREADS = {"dense-adam": (1, 2), "regressor-early-stopping": (1, 2)}
DTYPES = {"float32": np.float32, "float64": np.float64}


@contextlib.contextmanager
def _engine_threads(n_threads):
    """The engine's team fixed at ``n_threads`` (with BLAS on one thread, as
    the engine runs it), whatever the machine and the size of the network."""
    with threadpool_limits(1, user_api="blas"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            _threads,
            "training_threads",
            lambda work: contextlib.nullcontext(
                _threads.TeamSize(n_threads, n_threads)
            ),
        )
        yield


def _fitted_arrays(est):
    arrays = {}
    for name in FITTED:
        for k, a in enumerate(getattr(est, name)):
            arrays[f"{name}{k}"] = np.asarray(a)
    arrays["loss_curve_"] = np.asarray(est.loss_curve_, dtype=np.float64)
    arrays["t_"] = np.asarray(est.t_)
    return arrays


def _runs():
    for case in CASES:
        for n_threads in THREADS.get(case, (1,)):
            for dtype_name in DTYPES:
                yield case, n_threads, dtype_name


def _fit(case, n_threads, dtype_name):
    with _engine_threads(n_threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return CASES[case](DTYPES[dtype_name])


def _blas():
    """The BLAS the engine calls (scipy's), by version and kernel family."""
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS)

    for lib in threadpool_info():
        if lib["user_api"] == "blas" and "scipy.libs" in lib["filepath"].replace(
            "\\", "/"
        ):
            return f"{lib['internal_api']} {lib['version']} {lib.get('architecture')}"
    libs = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    return " / ".join(f"{lib['internal_api']} {lib['version']}" for lib in libs)


def _record():
    pins = {"blas": np.asarray(_blas())}
    for case, n_threads, dtype_name in _runs():
        for key, value in _fitted_arrays(_fit(case, n_threads, dtype_name)).items():
            pins[f"{case}/{n_threads}/{dtype_name}/{key}"] = value
    PINS.parent.mkdir(exist_ok=True)
    np.savez_compressed(PINS, **pins)


@pytest.fixture(scope="module")
def pins():
    with np.load(PINS) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("case, n_threads, dtype_name", list(_runs()))
def test_fit_is_pinned(case, n_threads, dtype_name, pins):
    fitted = _fitted_arrays(_fit(case, n_threads, dtype_name))
    prefix = f"{case}/{n_threads}/{dtype_name}/"
    expected = {k[len(prefix) :]: v for k, v in pins.items() if k.startswith(prefix)}
    assert sorted(fitted) == sorted(expected)
    # The optimized build with the recording's BLAS is bit-identical; another
    # BLAS, or the debug build (compiled without optimization, so without
    # fused multiply-adds), rounds differently.
    exact = str(pins["blas"]) == _blas() and not _debug.build_checks()["boundscheck"]
    for key, value in fitted.items():
        assert value.dtype == expected[key].dtype, key
        if exact:
            assert_array_equal(value, expected[key], err_msg=key)
        else:
            # A few epochs keep the difference at the level of the rounding.
            rtol = 1e-3 if dtype_name == "float32" else 1e-9
            assert_allclose(value, expected[key], rtol=rtol, atol=rtol, err_msg=key)


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(__doc__)
    _record()
    print(f"recorded {PINS} with {_blas()}")
