"""Scale-out on Dask: joblib's dask backend, dask-ml's Incremental, Dask arrays.

Skipped when dask (or distributed, or dask-ml for its test) is not installed.
One small LocalCluster (2 worker processes, one thread each) serves the whole
module: starting it takes a few seconds, each test well under one.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from threadpoolctl import threadpool_limits

from sklearn_bn import BatchNormScaler, MLPBNClassifier

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")


@pytest.fixture(scope="module")
def client():
    """A client of a LocalCluster with 2 worker processes, for this module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a busy default dashboard port
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def test_grid_search_on_joblibs_dask_backend(client, digits):
    X, y = digits
    X, y = X[:600], y[:600]
    search = GridSearchCV(
        MLPBNClassifier(max_iter=5, random_state=0),
        {"hidden_layer_sizes": [(16,), (32,)], "bn_momentum": [0.1, 0.5]},
        cv=2,
    )
    with warnings.catch_warnings(), distributed.get_task_stream(client) as tasks:
        warnings.simplefilter("ignore", ConvergenceWarning)
        with joblib.parallel_backend("dask"):
            search.fit(X, y)
    assert tasks.data, "no task ran on the cluster"
    assert {t["worker"] for t in tasks.data} <= set(client.scheduler_info()["workers"])

    # The same search in this process (one thread, as each worker has).
    local = clone(search)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        local.fit(X, y)
    assert search.best_params_ == local.best_params_
    assert_allclose(
        search.cv_results_["mean_test_score"],
        local.cv_results_["mean_test_score"],
        atol=1 / 300,
    )
    assert search.best_estimator_.predict(X).shape == (600,)


def test_incremental_over_a_chunked_dask_array(client, digits):
    dask_ml_wrappers = pytest.importorskip("dask_ml.wrappers")
    X, y = digits
    X_dask = da.from_array(X, chunks=(450, X.shape[1]))
    y_dask = da.from_array(y, chunks=450)
    classes = np.unique(y)
    params = dict(hidden_layer_sizes=(32,), learning_rate_init=0.01, random_state=0)
    inc = dask_ml_wrappers.Incremental(
        MLPBNClassifier(**params), scoring="accuracy", shuffle_blocks=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        inc.fit(X_dask, y_dask, classes=classes)
    assert isinstance(inc.estimator_, MLPBNClassifier)

    # The same partial_fit calls, block by block, in this process.
    reference = MLPBNClassifier(**params)
    with threadpool_limits(1):
        for k in range(X_dask.numblocks[0]):
            reference.partial_fit(
                X_dask.blocks[k].compute(), y_dask.blocks[k].compute(), classes=classes
            )
    assert inc.estimator_.t_ == reference.t_ == X.shape[0]  # every block, once
    for got, expected in zip(inc.estimator_.coefs_, reference.coefs_):
        assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert_array_equal(inc.predict(X_dask).compute(), inc.estimator_.predict(X))
    score = inc.score(X_dask, y_dask)
    assert score == pytest.approx(np.mean(inc.estimator_.predict(X) == y))
    assert score > 0.5  # one pass over the data, well above chance (0.1)


@pytest.mark.parametrize("momentum", [None, 0.3])
def test_scaler_partial_fit_over_dask_blocks(client, momentum):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 5)) * [1.0, 10.0, 1e-2, 1e3, 5.0] + [
        0.0,
        5.0,
        -1.0,
        1e4,
        2.0,
    ]
    X_dask = da.from_array(X, chunks=(230, 5))  # 5 blocks, the last one shorter
    scaler = BatchNormScaler(momentum=momentum)
    blocks = []
    for k in range(X_dask.numblocks[0]):
        block = X_dask.blocks[k].compute()  # computed on a worker, sent back
        blocks.append(block)
        scaler.partial_fit(block)
    assert scaler.n_samples_seen_ == 1000
    if momentum is None:
        whole = BatchNormScaler().fit(X)
        assert_allclose(
            scaler.running_mean_, whole.running_mean_, rtol=1e-12, atol=1e-12
        )
        assert_allclose(scaler.running_var_, whole.running_var_, rtol=1e-10)
    else:
        mean = blocks[0].mean(axis=0)
        var = blocks[0].var(axis=0, ddof=1)
        for block in blocks[1:]:
            mean = (1 - momentum) * mean + momentum * block.mean(axis=0)
            var = (1 - momentum) * var + momentum * block.var(axis=0, ddof=1)
        assert_allclose(scaler.running_mean_, mean, rtol=1e-12, atol=1e-12)
        assert_allclose(scaler.running_var_, var, rtol=1e-10)
    # transform block by block, lazily, equals transform of the whole.
    out = X_dask.map_blocks(scaler.transform, dtype=X.dtype).compute()
    assert_allclose(out, scaler.transform(X), rtol=0, atol=0)
