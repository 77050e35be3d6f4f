"""The thread policy in the user's world (sklearn_bn._threads): other
threads' threadpoolctl limits keep working, BLAS's limits are restored
exactly when fits and predictions overlap in several threads, a team of one
runs BLAS on one thread, forked children, the usable cores, and readers
that never see half of a refit."""

import contextlib
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
from numpy.testing import assert_array_equal
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_info, threadpool_limits

from sklearn_bn import (
    BatchNormScaler,
    MLPBNClassifier,
    MLPBNRegressor,
    _team,
    _threads,
    _utils,
)

needs_openmp = pytest.mark.skipif(
    _team.openmp_max_threads() < 2,
    reason="built without OpenMP, or limited to one thread",
)
needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs the fork start method",
)


def run_script(script):
    """The output of ``python -c script``, without the thread limits other
    tests may have left in the environment (Dask's workers set
    OMP_NUM_THREADS=1 in it)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_NUM_THREADS") and k != "OMP_THREAD_LIMIT"
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    return out.stdout


def blas_limits():
    return [
        lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
    ]


def data(seed=0, n=400, n_features=20):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features))
    y = X @ rng.normal(size=n_features) + 0.3 * rng.normal(size=n)
    return X, y


def big_regressor(seed=0, **params):
    """Minibatches large enough for the engine to run a team of threads."""
    params = {
        "hidden_layer_sizes": (64,),
        "batch_size": 200,
        "max_iter": 3,
        "random_state": seed,
        **params,
    }
    return MLPBNRegressor(**params)


def fit_quietly(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def in_thread(function):
    """Run ``function`` in a new thread; return its result (or raise its
    exception)."""
    box = {}

    def target():
        try:
            box["result"] = function()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def limits_in_a_block(n_threads):
    with threadpool_limits(n_threads, user_api="blas"):
        inside = blas_limits()
    return inside, blas_limits()


@pytest.mark.parametrize("where", ["main", "worker"])
def test_other_threads_limits_work_after_a_fit(where):
    # threadpoolctl >= 3.8 lets one thread at a time set OpenBLAS's limit,
    # the first that sets it, until it leaves a threadpool_limits block: the
    # package must never keep that role.
    X, y = data()
    before = blas_limits()
    fit = lambda: fit_quietly(big_regressor(), X, y).predict(X)  # noqa: E731
    fit() if where == "main" else in_thread(fit)
    assert blas_limits() == before
    # Another thread's limits take effect, and are undone at its exit.
    inside, after = in_thread(lambda: limits_in_a_block(1))
    assert set(inside) <= {1}
    assert after == before
    # And the main thread's too.
    inside, after = limits_in_a_block(1)
    assert set(inside) <= {1}
    assert after == before


def test_a_fit_in_a_worker_thread_limits_blas(monkeypatch):
    X, y = data()
    seen = []
    training_threads = _threads.training_threads

    @contextlib.contextmanager
    def recording(multiply_adds):
        with training_threads(multiply_adds) as team:
            seen.append((team.threads, blas_limits()))
            yield team

    monkeypatch.setattr(_threads, "training_threads", recording)
    before = blas_limits()
    fit_quietly(big_regressor(), X, y)  # in the main thread first
    in_thread(lambda: fit_quietly(big_regressor(), X, y))
    assert blas_limits() == before
    assert len(seen) == 2
    for n_threads, limits in seen:
        assert set(limits) <= {1}
        assert 1 <= n_threads <= _threads.max_threads()


def test_a_user_block_in_another_thread_is_respected(monkeypatch):
    # Another thread holds OpenBLAS at two threads in its own block: a fit
    # then leaves BLAS as that thread set it and trains on one thread of
    # its own (never more threads in all than asked for).
    X, y = data()
    seen = []
    training_threads = _threads.training_threads

    @contextlib.contextmanager
    def recording(multiply_adds):
        with training_threads(multiply_adds) as team:
            seen.append((team.threads, blas_limits()))
            yield team

    monkeypatch.setattr(_threads, "training_threads", recording)
    inside = threading.Event()
    done = threading.Event()

    def holding():
        with threadpool_limits(2, user_api="blas"):
            inside.set()
            done.wait(60)

    holder = threading.Thread(target=holding)
    holder.start()
    try:
        inside.wait(60)
        held = blas_limits()
        fit_quietly(big_regressor(), X, y)
        assert blas_limits() == held
    finally:
        done.set()
        holder.join()
    ((n_threads, limits),) = seen
    if set(limits) != {1}:  # threadpoolctl >= 3.8: the holder's limit stands
        assert n_threads == 1


def test_overlapping_fits_and_predictions_restore_the_limits_exactly():
    # Several threads fit and predict at once, many times: afterwards every
    # BLAS library is back at the limit it had, and no team is counted.
    X, y = data(n=600)
    model = fit_quietly(big_regressor(), X, y)
    X_big = np.tile(X, (40, 1))
    before = blas_limits()
    for round_ in range(4):
        start = threading.Barrier(3)
        errors = []

        def run(work):
            try:
                start.wait()
                work()
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        def fitting(seed):
            for _ in range(2):
                fit_quietly(big_regressor(seed=seed), X, y)

        def predicting():
            for _ in range(3):
                model.predict(X_big)

        works = [lambda: fitting(round_), lambda: fitting(round_ + 10), predicting]
        threads = [threading.Thread(target=run, args=(work,)) for work in works]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert blas_limits() == before
        assert _threads._TEAMS.threads == 0


def test_concurrent_fits_give_the_sequential_models():
    # Bit for bit: a fit that overlaps another may run on fewer threads, but
    # cuts its work in the same pieces.
    data_sets = [data(seed=s) for s in range(3)]
    sequential = [
        fit_quietly(big_regressor(seed=s), *d) for s, d in enumerate(data_sets)
    ]
    results = [None] * 3

    def fit(k):
        results[k] = fit_quietly(big_regressor(seed=k), *data_sets[k])

    threads = [threading.Thread(target=fit, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for one, other in zip(sequential, results):
        for a, b in zip(
            one.coefs_ + one.intercepts_ + one.gammas_ + one.running_vars_,
            other.coefs_ + other.intercepts_ + other.gammas_ + other.running_vars_,
        ):
            assert_array_equal(a, b)
        assert one.loss_curve_ == other.loss_curve_


def test_a_team_of_one_runs_blas_on_one_thread():
    big = 10 * _threads.MIN_MULTIPLY_ADDS_FOR_THREADS
    with threadpool_limits(2, user_api="blas"), threadpool_limits(1, user_api="openmp"):
        before = blas_limits()
        with _threads.training_threads(big) as team:
            assert team == (1, 1)
            assert set(blas_limits()) <= {1}
        assert blas_limits() == before


@pytest.mark.parametrize("user_api", ["blas", "openmp"])
def test_a_limit_of_one_makes_a_large_prediction_one_thread(user_api):
    # The prediction's threads stand in for BLAS's, as the engine's do.
    with threadpool_limits(1, user_api=user_api):
        with _threads.prediction_threads(4000, 10**5, 1024) as (n_threads, _):
            assert n_threads == 1
            assert set(blas_limits()) <= {1}
    if _threads.max_threads() > 1 and min(blas_limits()) > 1:
        with _threads.prediction_threads(4000, 10**5, 1024) as (n_threads, _):
            assert n_threads == 2


def test_a_blas_threadpoolctl_cannot_see_trains_on_one_thread(monkeypatch):
    # Apple's Accelerate (scipy's wheels for macOS 14 and later) is not a
    # library threadpoolctl knows: the user's limit cannot be read, nor its
    # threads held at one while a team runs, so the engine takes one thread,
    # and so does a large prediction.
    monkeypatch.setattr(_threads, "_blas_controllers", lambda: [])
    assert _threads._BLAS_OWNER.original_limit() == 1
    big = 10 * _threads.MIN_MULTIPLY_ADDS_FOR_THREADS
    with _threads.training_threads(big) as team:
        assert team == (1, 1)
    with _threads.prediction_threads(4000, 10**5, 1024) as (n_threads, _):
        assert n_threads == 1


def test_teams_running_at_once_share_the_cores(monkeypatch):
    monkeypatch.setattr(_threads, "max_threads", lambda: 2)
    teams = _threads._TEAMS
    with teams.reserve(2) as first:
        assert first == 2
        # In the same Python thread (early stopping's validation score
        # between two epochs): the outer team is idle, its cores are free.
        with teams.reserve(2) as nested:
            assert nested == 2
        # Another Python thread gets what is left, and at least one.
        assert in_thread(lambda: _reserve_once(teams, 2)) == 1
        assert teams.threads == 2
    assert teams.threads == 0
    assert in_thread(lambda: _reserve_once(teams, 2)) == 2


def _reserve_once(teams, wanted):
    with teams.reserve(wanted) as n_threads:
        return n_threads


def test_blas_owner_restores_only_what_it_changed():
    # A limit that someone else changed while the package's was on is left
    # as they set it.
    owner = _threads._BLAS_OWNER
    with threadpool_limits(2, user_api="blas"):
        before = blas_limits()
        if max(before, default=1) < 2:
            pytest.skip("no BLAS library whose limit can be raised")
        with owner.one_thread() as limited:
            assert limited
            assert set(blas_limits()) <= {1}
            assert owner.original_limit() == min(before)
            with owner.one_thread():  # a second user: nothing changes
                assert set(blas_limits()) <= {1}
            assert set(blas_limits()) <= {1}
        assert blas_limits() == before
        with owner.one_thread():
            for lib in _threads._blas_controllers():
                _threads._set_blas_threads(lib, 3)
        assert set(blas_limits()) == {3}


@pytest.mark.parametrize("together", [False, True])
@pytest.mark.parametrize("during", ["acquire", "release"])
def test_ctrl_c_while_blas_is_limited_or_restored_leaves_nothing_half_set(
    during, together, monkeypatch
):
    # A Ctrl-C that came while the package set BLAS's limits (a large
    # predict) left BLAS on one thread for the rest of the process.
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    import signal

    owner = _threads._BLAS_OWNER
    real = _threads._set_blas_threads
    calls = []

    def interrupted(lib, n_threads):
        real(lib, n_threads)
        if not calls and (n_threads == 1) == (during == "acquire"):
            calls.append(n_threads)
            os.kill(os.getpid(), signal.SIGINT)

    with threadpool_limits(2, user_api="blas"):
        before = blas_limits()
        if max(before, default=1) < 2:
            pytest.skip("no BLAS library whose limit can be raised")
        monkeypatch.setattr(_threads, "_set_blas_threads", interrupted)
        with pytest.raises(KeyboardInterrupt):
            if together:  # as fits and predictions enter them
                with _threads._team_and_one_blas_thread(2):
                    pass
            else:
                with _threads._TEAMS.reserve(2), owner.one_thread():
                    pass
        assert calls
        assert blas_limits() == before
        assert owner._users == 0
        assert _threads._TEAMS.threads == 0


@pytest.mark.parametrize("call", ["small fit", "small predict", "sparse predict"])
def test_a_forked_child_s_first_small_call_lifts_the_inherited_limit(call):
    # The state a child forked during a fit starts with: BLAS at 1, the
    # parent's limits pending. Calls too small for threads restored nothing.
    owner = _threads._BLAS_OWNER
    X, y = np.random.RandomState(0).normal(size=(20, 3)), np.arange(20) % 2
    est = MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    with threadpool_limits(2, user_api="blas"):
        before = blas_limits()
        if max(before, default=1) < 2:
            pytest.skip("no BLAS library whose limit can be raised")
        libs = _threads._blas_controllers()
        for lib in libs:
            _threads._set_blas_threads(lib, 1)
        owner._pending = [(lib, n) for lib, n in zip(libs, before)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if call == "small fit":
                est.fit(X, y)
            else:
                rows = X[:2] if call == "small predict" else sp.csr_matrix(X[:2])
                est.predict(rows)
        assert blas_limits() == before
        assert owner._pending == []


FORK_SCRIPT = """
import multiprocessing, warnings
import numpy as np
from sklearn_bn import BatchNormScaler, _threads

def child():
    return _threads.max_threads()

if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        before = pool.apply(child)
    # The parent runs a team: the scaler's kernels share 2 row blocks.
    BatchNormScaler().fit(np.ones((2 * 1024, 1024)))
    with ctx.Pool(1) as pool:
        after = pool.apply(child)
    print(before, after, _threads.max_threads())
"""


@needs_openmp
@needs_fork
def test_forked_children_are_single_threaded_only_after_a_team():
    before, after, parent = map(int, run_script(FORK_SCRIPT).split())
    assert before == parent >= 2
    assert after == 1


POOL_FORK_SCRIPT = """
import multiprocessing, warnings
import numpy as np
from sklearn_bn import MLPBNRegressor, _threads

def fit():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(400, 20))
    y = X @ rng.normal(size=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MLPBNRegressor(hidden_layer_sizes=(64,), batch_size=200, max_iter=3,
                             random_state=0).fit(X, y)
    return est.coefs_[0].tobytes(), _threads.engine_threads()

if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    parent = fit()   # the engine's pool runs in the parent
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply(fit)
    print(parent == child, child[1])
"""


AFFINITY_SCRIPT = """
import os
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from sklearn_bn import _threads
print(_threads.max_threads(), _threads.usable_cores())
"""


AFFINITY_CHANGE_SCRIPT = """
import os
from sklearn_bn import _threads
cpus = os.sched_getaffinity(0)
before = _threads.usable_cores()
os.sched_setaffinity(0, {min(cpus)})
narrowed = _threads.usable_cores()
os.sched_setaffinity(0, cpus)
print(before, narrowed, _threads.usable_cores())
"""


@needs_openmp
@needs_fork
def test_a_forked_child_trains_on_the_engine_s_threads():
    # The engine's pool of threads starts afresh in a forked child: it
    # trains there on as many threads, to the same model.
    same, threads = run_script(POOL_FORK_SCRIPT).split()
    assert same == "True"
    assert int(threads) >= 2


@needs_openmp
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity")
def test_the_cores_follow_the_cpu_affinity():
    assert run_script(AFFINITY_SCRIPT).split() == ["1", "1"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity")
def test_the_cores_follow_a_cpu_affinity_changed_between_calls():
    # Counted again when the affinity changes, narrowed or widened.
    before, narrowed, after = run_script(AFFINITY_CHANGE_SCRIPT).split()
    assert narrowed == "1" and after == before


def test_the_cores_follow_the_cgroup_quota(monkeypatch):
    # joblib.cpu_count reads the CPU affinity and the cgroup quota, again at
    # every call that may start a team: a quota lowered between two calls
    # (``docker update --cpus``) counts at the next one.
    import joblib

    big = 10 * _threads.MIN_MULTIPLY_ADDS_FOR_THREADS
    with _threads.training_threads(big):
        pass
    monkeypatch.setattr(joblib, "cpu_count", lambda *args, **kwargs: 1)
    assert _threads.usable_cores() == 1
    assert _threads.max_threads() == 1
    with _threads.training_threads(big) as team:
        assert team == (1, 1)
    with _threads.prediction_threads(4000, 10**5, 1024) as (n_threads, _):
        assert n_threads == 1
    assert _threads.kernel_threads(10**6, 100)[1] == 1


@needs_openmp
def test_a_quota_lowered_between_two_fits_gives_the_one_core_model(monkeypatch):
    import joblib

    X, y = data()
    fit_quietly(big_regressor(), X, y)
    monkeypatch.setattr(joblib, "cpu_count", lambda *args, **kwargs: 1)
    quota = fit_quietly(big_regressor(), X, y)
    with threadpool_limits(1, user_api="blas"):
        one = fit_quietly(big_regressor(), X, y)
    for a, b in zip(quota.coefs_, one.coefs_):
        assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# A refit publishes the new model at once


def _refit_while_reading(make, data_a, data_b, read, n_refits=12):
    """Refit ``make()`` alternately on two data sets while other threads
    call ``read(model, X)``; return what the readers saw."""
    X_a, y_a = data_a
    X_b, y_b = data_b
    model = fit_quietly(make(), X_a, y_a)
    seen, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(read(model, X_a))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for k in range(n_refits):
            fit_quietly(model, *((X_b, y_b) if k % 2 == 0 else (X_a, y_a)))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors, errors[:3]
    return seen


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score"])
def test_a_refit_is_atomic_for_readers_classifier(method):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(300, 8))
    y_a = np.digitize(X[:, 0], [-0.5, 0.5])  # classes 0, 1, 2
    y_b = 10 + np.digitize(X[:, 1] - X[:, 2], [-1, 0, 1])  # classes 10..13

    def make():
        return MLPBNClassifier(hidden_layer_sizes=(16,), max_iter=2, random_state=0)

    expected = [
        getattr(fit_quietly(make(), X, y), method)(
            X, *([y] if method == "score" else [])
        )
        for y in (y_a, y_b)
    ]

    def read(model, X_read):
        if method == "score":
            return model.score(X_read, y_a)
        return getattr(model, method)(X_read)

    seen = _refit_while_reading(make, (X, y_a), (X, y_b), read)
    assert seen
    if method == "score":
        expected = [fit_quietly(make(), X, y).score(X, y_a) for y in (y_a, y_b)]
        assert all(s in expected for s in seen)
        return
    for result in seen:
        assert any(
            result.shape == e.shape and np.array_equal(result, e) for e in expected
        )


def test_a_refit_is_atomic_for_readers_regressor_and_scaler():
    X, y = data(n=300)
    X_b = X[:, :10]

    def make():
        return MLPBNRegressor(hidden_layer_sizes=(16,), max_iter=2, random_state=0)

    expected = [
        fit_quietly(make(), Xs, y).predict(X_b if Xs is X_b else X) for Xs in (X, X_b)
    ]
    model = fit_quietly(make(), X, y)
    seen, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(model.predict(X if model.n_features_in_ == 20 else X_b))
            except ValueError as exc:
                # The reader picked its X before the refit published: the
                # model it then read was the other one. That is the old or
                # the new model, and the message says the right count.
                assert "features" in str(exc)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(10):
            fit_quietly(model, X_b if k % 2 == 0 else X, y)
    finally:
        stop.set()
        thread.join()
    assert not errors
    for result in seen:
        assert any(np.array_equal(result, e) for e in expected)

    # The scaler's statistics are published together too.
    scaler = BatchNormScaler().fit(X)
    expected = [BatchNormScaler().fit(Xs).transform(X) for Xs in (X, 3 * X + 1)]
    seen, stop = [], threading.Event()

    def transforming():
        while not stop.is_set():
            seen.append(scaler.transform(X))

    thread = threading.Thread(target=transforming)
    thread.start()
    try:
        for k in range(40):
            scaler.fit(3 * X + 1 if k % 2 == 0 else X)
    finally:
        stop.set()
        thread.join()
    for result in seen:
        assert any(np.array_equal(result, e) for e in expected)


def test_a_failed_refit_leaves_the_model_for_readers():
    X, y = data()
    model = fit_quietly(big_regressor(), X, y)
    before = model.predict(X)
    with pytest.raises(ValueError):
        model.fit(X[:, :5], y[:-1])
    assert_array_equal(model.predict(X), before)


class _SilentCallback:
    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context, **kwargs):
        pass

    def on_fit_task_end(self, estimator, context, **kwargs):
        return False


@pytest.mark.parametrize(
    "kind",
    ["classifier", "scaler", "callbacks cleared", "output and requests"],
)
def test_parameters_set_during_a_fit_in_another_thread_are_kept(kind, monkeypatch):
    # A fit works on a copy and publishes it at its end; a set_params (or a
    # set_callbacks) that another thread makes meanwhile is kept, as with
    # scikit-learn's estimators, while the fitted attributes are the fit's.
    X, y = data(n=100)
    y = y > np.median(y)
    params = {"hidden_layer_sizes": (4,), "max_iter": 2, "random_state": 0}
    cls, hook = MLPBNClassifier, "_run_epochs"
    est = cls(**params)
    if kind == "classifier":

        def change(est):
            est.set_params(alpha=0.5)

    elif kind == "scaler":
        cls, hook, params = BatchNormScaler, "_affine_params", {}
        est = cls()

        def change(est):
            est.set_params(beta=2.0)

    elif kind == "output and requests":
        cls, hook, params = BatchNormScaler, "_affine_params", {}
        est = cls()

        def change(est):
            est.set_output(transform="pandas")
            with sklearn.config_context(enable_metadata_routing=True):
                est.set_fit_request(sample_weight=True)

    else:
        if not hasattr(est, "set_callbacks"):
            pytest.skip("scikit-learn < 1.9 has no callbacks")
        est.set_callbacks(_SilentCallback())

        def change(est):
            est.set_callbacks()  # none: the attribute goes

    inside, resume = threading.Event(), threading.Event()
    original = getattr(cls, hook)

    def paused(self, *args, **kwargs):
        inside.set()
        assert resume.wait(10)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, hook, paused)
    fitting = threading.Thread(target=fit_quietly, args=(est, X, y))
    fitting.start()
    assert inside.wait(10)
    change(est)
    expected = dict(vars(est))
    resume.set()
    fitting.join()
    monkeypatch.setattr(cls, hook, original)
    for name in _utils._settings(cls):
        assert vars(est).get(name, "absent") is expected.get(name, "absent"), name
    reference = fit_quietly(cls(**params), X, y)  # what the fit ran with
    if cls is MLPBNClassifier:
        for got, want in zip(est.coefs_, reference.coefs_):
            assert_array_equal(got, want)
    else:
        assert_array_equal(est.running_mean_, reference.running_mean_)


@pytest.mark.parametrize("setting", ["set_params", "set_output", "set_fit_request"])
def test_a_setting_racing_the_publication_is_kept(setting, monkeypatch):
    # The publication reads what changed, then swaps the state in: a
    # setting made in between went to the old state, and is carried over.
    X, _ = data()
    est = BatchNormScaler()
    real = _utils._settings_changed_meanwhile
    reading = threading.Event()

    def slow(*args):
        changed = real(*args)
        reading.set()
        time.sleep(0.2)  # the other thread's setting comes now
        return changed

    def change():
        assert reading.wait(10)
        if setting == "set_params":
            est.set_params(beta=2.0)
        elif setting == "set_output":
            est.set_output(transform="pandas")
        else:
            with sklearn.config_context(enable_metadata_routing=True):
                est.set_fit_request(sample_weight=True)

    monkeypatch.setattr(_utils, "_settings_changed_meanwhile", slow)
    setter = threading.Thread(target=change)
    setter.start()
    est.fit(X)
    setter.join()
    if setting == "set_params":
        assert est.beta == 2.0
    elif setting == "set_output":
        assert est.get_params() and est._sklearn_output_config["transform"] == "pandas"
    else:
        assert "_metadata_request" in vars(est)


class _ScaledMLP(MLPBNClassifier):
    """A subclass with an estimator among its parameters."""

    def __init__(self, scaler=None, hidden_layer_sizes=(4,)):
        super().__init__(hidden_layer_sizes=hidden_layer_sizes)
        self.scaler = scaler


def test_nested_set_params_of_the_package_s_estimators_returns():
    # A component's parameters are set through its own set_params: nothing
    # on that path may wait for what the outer call holds (a lock taken by
    # publications and attribute writes once did).
    est = _ScaledMLP(scaler=BatchNormScaler())
    setting = threading.Thread(
        target=est.set_params, kwargs={"scaler__epsilon": 1e-3}, daemon=True
    )
    setting.start()
    setting.join(10)
    assert not setting.is_alive()
    assert est.scaler.epsilon == 1e-3


@needs_fork
@pytest.mark.filterwarnings("ignore:This process .* fork:DeprecationWarning")
def test_a_fork_while_the_pace_is_locked_leaves_the_child_a_free_pace():
    # Another thread of the parent may hold the pace's lock at the fork (for
    # microseconds, at each compiled call): the child gets a lock of its own.
    with _threads.TEAM_PACE._lock:
        pid = os.fork()
        if pid == 0:  # the child
            free = _threads.TEAM_PACE._lock.acquire(timeout=5)
            os._exit(0 if free else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _exit_child(ok):
    os._exit(0 if ok else 1)


@needs_fork
@pytest.mark.filterwarnings("ignore:This process .* fork:DeprecationWarning")
def test_a_fork_inside_a_team_block_leaves_the_child_s_counts_at_zero():
    # A callback may fork during a fit, inside the fit's team block. The
    # child's counts start at zero: the block's exit there must not take them
    # below (a negative count left BLAS unlimited and teams oversized).
    owner = _threads._BLAS_OWNER
    with threadpool_limits(2, user_api="blas"):
        before = blas_limits()
        if max(before, default=1) < 2:
            pytest.skip("no BLAS library whose limit can be raised")
        with _threads._team_and_one_blas_thread(2):
            pid = os.fork()
        if pid == 0:  # the child, after the block
            ok = False
            try:
                ok = owner._users == 0 and _threads._TEAMS.threads == 0
                with owner.one_thread() as limited:  # the next call limits BLAS
                    ok = ok and limited and max(blas_limits()) == 1
                ok = ok and blas_limits() == before
            finally:
                _exit_child(ok)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert blas_limits() == before
        assert owner._users == 0 and _threads._TEAMS.threads == 0
