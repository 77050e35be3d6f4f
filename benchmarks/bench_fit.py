"""Benchmark: MLPBNClassifier fit / predict_proba against numpy's matrix-product floors.

Run from the repository root after building the extensions::

    python setup.py build_ext --inplace
    python benchmarks/bench_fit.py                  # everything, float32 and float64
    python benchmarks/bench_fit.py --quick          # smoke run, small sizes
    python benchmarks/bench_fit.py --what fit --dtype float32 --repeat 5

Sections (``--what``, comma-separated; default all):

fit
    ``make_classification`` 50 000 x 64 (the first 40 000 rows train), 10
    classes; hidden (256, 256), relu, adam, batch 256, 3 epochs. Seconds per
    epoch (``fit`` wall time / ``n_iter_``) of ``MLPBNClassifier`` with its
    default team of T threads (T: the lowest BLAS thread limit, capped by
    OpenMP's; 2 on a two-core machine) and on one thread
    (``threadpool_limits(1, user_api="blas")``, which the engine follows), of
    scikit-learn's ``MLPClassifier`` with the same settings (no batch norm),
    and of PyTorch CPU (``Linear(bias=False) -> BatchNorm1d -> ReLU`` x 2 ->
    ``Linear``, Adam, ``CrossEntropyLoss``, batch 256, run in a subprocess
    with ``torch.set_num_threads`` = T) when torch can be imported. torch is
    never a dependency of this project.

    Products floor: numpy doing only the fit's matrix products, same shapes
    and dtype, ``np.matmul`` into preallocated outputs: per minibatch the
    forward products ``A_l @ W_l`` of every layer, the weight gradients
    ``A_l.T @ D_l`` of every layer and the deltas ``D_l @ W_l.T`` of layers
    2.. . The minibatches are the engine's: slices of 256 rows, a trailing
    single row joining the previous slice. The products of all the epochs
    run, so that a floor runs as long as a fit; reported per epoch. Three
    ways:

    (a) numpy with BLAS's own threads (T of them);
    (b) numpy on one BLAS thread;
    (c) T Python threads with one BLAS thread each, each doing the products
        of its block of rows of every minibatch (the rows cut into T blocks
        of near-equal size; each thread has its own activations, deltas and
        weight-gradient buffers; the weights are shared). The threads meet
        at a ``threading.Barrier`` once per minibatch, after its last
        product: the one meeting no training step can avoid, since the next
        minibatch's forward products need weights updated from every row of
        this one. The further meetings of a real step (batch-norm statistics
        after each hidden layer's forward product and in its backward pass,
        the sum of the threads' weight gradients) are left to the engine, as
        is their work. A Python barrier costs tens of microseconds (an
        OpenMP one, a few): that cost, measured with the same threads and no
        products, is printed; it is part of (c).

    The products floor is the minimum of (a), (b) and (c) (with T = 2: the
    "two-core products floor"). Targets: ``MLPBNClassifier`` <= 1.3x the
    products floor; its speed-up from one thread to T threads >= 1.5x,
    printed beside numpy's own, (b) / (c); with ``dropout=0.1`` on every
    hidden layer, an epoch costs <= 1.1x one without. The engine on one
    thread is also compared with (b). For reference, (a) done through
    ``sklearn_bn._blas.gemm`` ("engine-BLAS (a)") runs the same products
    through scipy's OpenBLAS, which the engine calls (numpy and scipy each
    bundle their own OpenBLAS, possibly of different versions): it tells
    BLAS differences apart from engine overhead.

predict
    ``predict_proba`` on 100 000 rows with the network fitted in ``fit``
    (1 epoch if ``fit`` is not run) vs the GEMM floor of the folded network
    (``X @ W1``, ``A1 @ W2``, ``A2 @ W3`` with numpy on all 100 000 rows).
    ``to_sklearn().predict_proba`` (scikit-learn's forward pass on the same
    folded weights) is shown for reference. Target: <= 1.2x.

memory
    Peak extra memory of ``fit`` on 1 000 000 x 100 float32 (10 classes from a
    random linear model), hidden (32,), max_iter=1, batch 256: what matters
    are copies of the data, not the network. Measured in a fresh subprocess
    per estimator, after the data exist: ``tracemalloc`` peak minus baseline
    (numpy reports its allocations to tracemalloc) and the resident-set high
    water mark (``VmHWM`` after resetting it through ``/proc/self/clear_refs``)
    minus the resident set before ``fit``. Reported as a fraction of
    ``X.nbytes``; scikit-learn's ``MLPClassifier`` shown for reference. Always
    float32 (the target is stated for float32). Target: <= 25% of X's bytes.

scaling
    Seconds per epoch (fit time / ``n_iter_``) of ``MLPBNClassifier`` at 10k,
    100k and 1M rows (64 features, 10 classes from a random linear model;
    hidden (64, 64), relu, adam, batch 256, 3 epochs as in ``fit``, so that
    1M rows fit in well under a minute), and the ratio between consecutive
    sizes. A fit also has a fixed cost that does not grow with the data
    (input validation, label encoding, parameter checks: a few
    milliseconds), spread here over the 3 epochs. Target: each 10x more rows
    costs 8x-12x more time.

Every time is the best of ``--repeat`` runs (each a fresh ``fit`` or a full
pass) timed with ``time.perf_counter`` (``--clock cpu``: ``time.process_time``,
the CPU time of all the process's threads, which a busy machine disturbs less
than wall time when one thread runs; with more threads it counts their spinning
too). ``--threads N`` caps every BLAS/OpenMP pool with threadpoolctl (and
torch's) for the whole run, and so sets T. The header shows the BLAS libraries
and their threads, the load average (the ratios are measured in one run, so a
busy machine affects numerator and denominator alike, but not always equally)
and any ``OPENBLAS_*`` variables set in the environment: on some processors
``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are set to work around old
OpenBLAS builds, and they can slow current numpy and scipy; to compare, unset
both for one command only::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fit.py
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
import warnings

import numpy as np

try:
    import sklearn_bn
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import sklearn_bn
from sklearn_bn import MLPBNClassifier

SECTIONS = ("fit", "predict", "memory", "scaling")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]  # set from --clock
DTYPES = ("float32", "float64")

# Problem sizes: (full run, --quick).
FIT_ROWS = {False: (50_000, 40_000), True: (6_250, 5_000)}  # generated, training
FIT_EPOCHS = {False: 3, True: 1}
HIDDEN = (256, 256)
N_FEATURES = 64
N_CLASSES = 10
BATCH = 256
PREDICT_ROWS = {False: 100_000, True: 10_000}
MEMORY_SHAPE = {False: (1_000_000, 100), True: (100_000, 100)}
MEMORY_HIDDEN = (32,)
SCALING_ROWS = {False: (10_000, 100_000, 1_000_000), True: (1_000, 10_000, 100_000)}
SCALING_HIDDEN = (64, 64)
SCALING_EPOCHS = 3

TARGET_FIT = 1.3
TARGET_SPEEDUP = 1.5  # engine, one thread -> two threads
DROPOUT = 0.1
TARGET_DROPOUT = 1.1  # an epoch with dropout on every hidden layer / without
TARGET_PREDICT = 1.2
TARGET_MEMORY = 0.25
TARGET_SCALING = (8.0, 12.0)


# ---------------------------------------------------------------------------
# helpers


def best_of(func, repeat):
    """Best time of ``repeat`` calls of ``func``; also its last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = clock()
        result = func()
        best = min(best, clock() - t0)
    return best, result


def table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()


def fmt_s(t):
    return "n/a" if t is None else f"{t:.4g}"


def fmt_x(r):
    return "n/a" if r is None else f"{r:.2f}x"


def verdict(ok):
    return "PASS" if ok else "FAIL"


def engine_batches(n, batch):
    """Minibatch sizes as the engine cuts them (a trailing single row joins
    the previous minibatch)."""
    sizes, start = [], 0
    while start < n:
        m = min(batch, n - start)
        if n - start - m == 1:
            m += 1
        sizes.append(m)
        start += m
    return sizes


def blas_threads():
    from threadpoolctl import threadpool_info

    return max(
        (i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
        default=1,
    )


def team_threads():
    """Threads of the engine's default team: the lowest BLAS thread limit,
    capped by the engine's OpenMP limit (what ``sklearn_bn`` uses)."""
    from threadpoolctl import threadpool_info

    n = min(
        (i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
        default=1,
    )
    try:
        from sklearn_bn._training import openmp_max_threads

        n = min(n, openmp_max_threads())
    except ImportError:
        pass
    return max(n, 1)


_CONTROLLER = None


def blas_limit(n):
    """Context manager: every loaded BLAS library limited to ``n`` threads
    (None: unchanged). One threadpoolctl controller per process: finding the
    libraries takes tens of milliseconds, setting a limit microseconds."""
    global _CONTROLLER
    if n is None:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=n, user_api="blas")


def limited(timer, n):
    """``timer`` run with BLAS limited to ``n`` threads (the engine follows
    that limit: ``n=1`` trains on one thread)."""

    def run():
        with blas_limit(n):
            return timer()

    return run


def linear_labels(X, n_classes, seed):
    """Labels from a random linear model (argmax), computed in row blocks."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((X.shape[1], n_classes)).astype(X.dtype)
    y = np.empty(X.shape[0], dtype=np.int64)
    for s in range(0, X.shape[0], 65536):
        y[s : s + 65536] = np.argmax(X[s : s + 65536] @ W, axis=1)
    return y


def fit_data(quick):
    from sklearn.datasets import make_classification

    n_total, n_train = FIT_ROWS[quick]
    X, y = make_classification(
        n_samples=n_total,
        n_features=N_FEATURES,
        n_informative=40,
        n_redundant=10,
        n_classes=N_CLASSES,
        random_state=0,
    )
    return X[:n_train], y[:n_train]


def mlp_params(hidden, epochs):
    """The benchmark network: the engine alone (input_preprocessing=None;
    the generated data are already standardized), a fixed number of epochs."""
    params = dict(
        hidden_layer_sizes=hidden,
        activation="relu",
        solver="adam",
        batch_size=BATCH,
        max_iter=epochs,
        tol=0.0,
        n_iter_no_change=10_000,
        learning_rate="constant",
        early_stopping=False,
        random_state=0,
    )
    if "input_preprocessing" in MLPBNClassifier().get_params():
        params["input_preprocessing"] = None
    return params


def sklearn_params(params):
    """``params`` without sklearn_bn's own, for scikit-learn's MLP."""
    from sklearn.neural_network import MLPClassifier

    return {k: v for k, v in params.items() if k in MLPClassifier().get_params()}


def fit_timer(make_estimator, X, y, keep=None):
    """A callable that fits a fresh estimator and returns seconds per epoch
    (the fitted estimator goes to ``keep[0]`` if ``keep`` is a list)."""
    from sklearn.exceptions import ConvergenceWarning

    def run():
        est = make_estimator()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = clock()
            est.fit(X, y)
            seconds = clock() - t0
        if keep is not None:
            keep[:] = [est]
        return seconds / est.n_iter_

    return run


def call_timer(func):
    """A callable that runs ``func`` once and returns its time (on ``clock``)."""

    def run():
        t0 = clock()
        func()
        return clock() - t0

    return run


# Pause before each timed run: OpenBLAS's idle worker threads keep spinning
# for about 0.1 s after their last product, and would otherwise compete for
# the cores with whatever runs next (numpy's floor, the engine's threads).
SETTLE_SECONDS = 0.25


def per_epoch(timer, epochs):
    """``timer``'s time divided by ``epochs``."""

    def run():
        return timer() / epochs

    return run


def interleaved_best(timers, repeat, warmup=()):
    """Best time of each named timer over ``repeat`` rounds. Each round runs
    every timer once, in turn, so that a change in the machine's load hits all
    of them alike (the machine may be shared); each run starts after
    ``SETTLE_SECONDS``, once the previous run's BLAS threads are idle. Timers
    named in ``warmup`` run once, untimed, first."""
    for name in warmup:
        if timers.get(name) is not None:
            timers[name]()
    best = {name: float("inf") for name, t in timers.items() if t is not None}
    for _ in range(repeat):
        for name in best:
            gc.collect()
            time.sleep(SETTLE_SECONDS)
            best[name] = min(best[name], timers[name]())
    return {name: best.get(name) for name in timers}


# ---------------------------------------------------------------------------
# products floors


def make_weights(units, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((units[l], units[l + 1])).astype(dtype)
        for l in range(len(units) - 1)
    ]


def batch_products(units, batch_sizes, dtype, seed=0, weights=None):
    """Per minibatch (of each size in ``batch_sizes``), the list of
    ``(a, b, out)`` operand triples of its products, in a training step's
    order. Minibatches of the same size share their operands."""
    rng = np.random.default_rng(seed)
    L = len(units) - 1
    W = make_weights(units, dtype, seed) if weights is None else weights
    cache = {}

    def for_batch(m):
        if m not in cache:
            A = [rng.standard_normal((m, units[l])).astype(dtype) for l in range(L)]
            D = [rng.standard_normal((m, units[l + 1])).astype(dtype) for l in range(L)]
            Z = [np.empty((m, units[l + 1]), dtype) for l in range(L)]
            G = [np.empty((units[l], units[l + 1]), dtype) for l in range(L)]
            DA = [np.empty((m, units[l]), dtype) for l in range(L)]
            prods = [(A[l], W[l], Z[l]) for l in range(L)]  # forward
            for l in range(L - 1, -1, -1):  # backward
                prods.append((A[l].T, D[l], G[l]))  # weight gradient
                if l > 0:
                    prods.append((D[l], W[l].T, DA[l]))  # delta of the layer below
            cache[m] = prods
        return cache[m]

    return [for_batch(m) for m in batch_sizes]


def make_epoch_products(units, batch_sizes, dtype, seed=0):
    """List of (a, b, out) operand triples of one training epoch's products."""
    return [
        p for prods in batch_products(units, batch_sizes, dtype, seed) for p in prods
    ]


def numpy_floor(products):
    matmul = np.matmul

    def run():
        for a, b, out in products:
            matmul(a, b, out=out)

    return run


def row_blocks(m, n_threads):
    """``m`` rows cut into ``n_threads`` blocks of near-equal size."""
    q, r = divmod(m, n_threads)
    return [q + (j < r) for j in range(n_threads)]


def team_floor(per_thread):
    """A timer: ``len(per_thread)`` Python threads (the caller is thread 0),
    BLAS on one thread; thread ``j`` runs the products of
    ``per_thread[j][k]`` for every minibatch ``k``, then waits at a barrier
    for the others."""
    n_threads = len(per_thread)

    def body(j, barrier):
        matmul = np.matmul
        for prods in per_thread[j]:
            for a, b, out in prods:
                matmul(a, b, out=out)
            barrier.wait()

    def run():
        barrier = threading.Barrier(n_threads)
        with blas_limit(1):
            helpers = [
                threading.Thread(target=body, args=(j, barrier))
                for j in range(1, n_threads)
            ]
            for t in helpers:
                t.start()
            try:
                body(0, barrier)
            except BaseException:
                barrier.abort()
                raise
            finally:
                for t in helpers:
                    t.join()

    return run


def split_floor(units, batch_sizes, dtype, n_threads, products=True):
    """Floor (c): ``n_threads`` Python threads, one BLAS thread each, each
    doing the products of its block of rows of every minibatch, one barrier
    per minibatch. ``products=False``: the barriers alone."""
    W = make_weights(units, dtype)
    per_thread = []
    for j in range(n_threads):
        if products:
            blocks = [row_blocks(m, n_threads)[j] for m in batch_sizes]
            per_thread.append(
                batch_products(units, blocks, dtype, seed=1 + j, weights=W)
            )
        else:
            per_thread.append([()] * len(batch_sizes))
    return team_floor(per_thread)


def floor_timers(units, batch_sizes, dtype, epochs, n_threads):
    """Per-epoch timers of the three products floors for ``epochs`` epochs
    of minibatches of ``batch_sizes``: {"a": BLAS's threads, "b": one BLAS
    thread, "c": ``n_threads`` Python threads}, and "sync": the barriers of
    (c) alone."""
    sizes = list(batch_sizes) * epochs
    flat = numpy_floor(make_epoch_products(units, batch_sizes, dtype) * epochs)
    return {
        "a": per_epoch(call_timer(flat), epochs),
        "b": per_epoch(call_timer(limited(flat, 1)), epochs),
        "c": per_epoch(call_timer(split_floor(units, sizes, dtype, n_threads)), epochs),
        "sync": per_epoch(
            call_timer(split_floor(units, sizes, dtype, n_threads, products=False)),
            epochs,
        ),
    }


def engine_blas_floor(products):
    """The same products through scipy's OpenBLAS (the engine's), by way of
    the package's thin ``gemm`` wrapper; None if that wrapper is missing."""
    try:
        from sklearn_bn._blas import gemm
    except ImportError:
        return None
    calls = []
    for a, b, out in products:
        ta = not a.flags.c_contiguous
        tb = not b.flags.c_contiguous
        calls.append((a.T if ta else a, b.T if tb else b, out, ta, tb))

    def run():
        for a, b, out, ta, tb in calls:
            gemm(a, b, out, ta, tb)

    return run


# ---------------------------------------------------------------------------
# subprocess workers (torch; memory)


def run_worker(name, payload, timeout=1800):
    """Run ``--worker name`` in a fresh interpreter; return its JSON result."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--worker-args",
        json.dumps(payload),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_torch(p):
    try:
        import torch
    except ImportError:
        return {"error": "torch not installed"}
    from torch import nn

    if p["threads"]:
        torch.set_num_threads(p["threads"])
    X, y = fit_data(p["quick"])
    tdtype = {"float32": torch.float32, "float64": torch.float64}[p["dtype"]]
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=p["dtype"]))
    yt = torch.from_numpy(y.astype(np.int64))
    n = Xt.shape[0]
    sizes = engine_batches(n, BATCH)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    h1, h2 = HIDDEN
    torch.manual_seed(0)

    def run():
        model = nn.Sequential(
            nn.Linear(N_FEATURES, h1, bias=False),
            nn.BatchNorm1d(h1),
            nn.ReLU(),
            nn.Linear(h1, h2, bias=False),
            nn.BatchNorm1d(h2),
            nn.ReLU(),
            nn.Linear(h2, N_CLASSES),
        ).to(tdtype)
        model.train()
        opt = torch.optim.Adam(
            model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8
        )
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(p["epochs"]):
            perm = torch.randperm(n)
            for s, m in zip(starts, sizes):
                idx = perm[s : s + m]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(Xt[idx]), yt[idx])
                loss.backward()
                opt.step()

    best, _ = best_of(run, p["repeat"])
    return {
        "s_per_epoch": best / p["epochs"],
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
    }


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def worker_memory(p):
    import tracemalloc

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    n, d = p["shape"]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    y = linear_labels(X, N_CLASSES, 1)
    params = mlp_params(MEMORY_HIDDEN, 1)
    if p["model"] == "MLPBNClassifier":
        est = MLPBNClassifier(**params)
    else:
        est = MLPClassifier(**sklearn_params(params))
    gc.collect()
    try:  # reset the resident-set high-water mark (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_ok = True
    except OSError:
        hwm_ok = False
    rss0 = _rss_kib("VmRSS")
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _rss_kib("VmHWM")
    return {
        "x_bytes": X.nbytes,
        "tracemalloc_extra": peak - base,
        "rss_extra": (hwm - rss0) * 1024 if hwm_ok and hwm and rss0 else None,
        "seconds": seconds,
    }


WORKERS = {"torch": worker_torch, "memory": worker_memory}


# ---------------------------------------------------------------------------
# sections


def section_fit(args, dtypes, state):
    from sklearn.neural_network import MLPClassifier

    X64, y = fit_data(args.quick)
    epochs = FIT_EPOCHS[args.quick]
    params = mlp_params(HIDDEN, epochs)
    units = [N_FEATURES, *HIDDEN, N_CLASSES]
    sizes = engine_batches(X64.shape[0], BATCH)
    team = team_threads()
    print(
        f"## fit: {X64.shape[0]} x {X64.shape[1]} training rows, {N_CLASSES} classes, "
        f"hidden {HIDDEN}, relu, adam, batch {BATCH}, {epochs} epoch(s); "
        f"{len(sizes)} minibatches per epoch; s/epoch = fit time / n_iter_, "
        f"best of {args.repeat}; T = {team} threads\n"
    )
    rows, speed_rows = [], []
    for dt in dtypes:
        X = np.ascontiguousarray(X64, dtype=dt)
        # The floors run the products of all the epochs, as long as a fit.
        floors = floor_timers(units, sizes, dt, epochs, team)
        eng = engine_blas_floor(make_epoch_products(units, sizes, dt) * epochs)
        keep = []
        t = interleaved_best(
            {
                "a": floors["a"],
                "b": floors["b"],
                "c": floors["c"],
                "sync": floors["sync"],
                "eng": None if eng is None else per_epoch(call_timer(eng), epochs),
                "bn": fit_timer(lambda: MLPBNClassifier(**params), X, y, keep),
                "bn1": limited(fit_timer(lambda: MLPBNClassifier(**params), X, y), 1),
                "drop": fit_timer(
                    lambda: MLPBNClassifier(**params, dropout=DROPOUT), X, y
                ),
                "sk": fit_timer(lambda: MLPClassifier(**sklearn_params(params)), X, y),
            },
            args.repeat,
            warmup=("a", "b", "c", "eng"),
        )
        state.setdefault("fitted", {})[dt] = keep[0]
        floor_name = min("abc", key=lambda k: t[k])
        floor = t[floor_name]
        t_bn, t_bn1, t_sk = t["bn"], t["bn1"], t["sk"]
        torch_res = run_worker(
            "torch",
            {
                "dtype": dt,
                "quick": args.quick,
                "epochs": epochs,
                "repeat": args.repeat,
                "threads": args.threads or team,
                "clock": args.clock,
            },
        )
        t_torch = torch_res.get("s_per_epoch")

        def floor_row(key, what):
            mark = " <- products floor" if key == floor_name else ""
            return [
                f"({key}) {what}{mark}",
                dt,
                fmt_s(t[key]),
                fmt_x(t[key] / floor),
                "",
                "",
                "",
            ]

        n_sync = len(sizes)
        rows.append(floor_row("a", f"numpy, BLAS's own threads ({blas_threads()})"))
        rows.append(floor_row("b", "numpy, one BLAS thread"))
        rows.append(
            floor_row(
                "c",
                f"{team} Python threads x 1 BLAS thread, rows split, one barrier per "
                f"minibatch (barriers alone: {fmt_s(t['sync'])} s/epoch, "
                f"{t['sync'] / n_sync * 1e6:.0f} us each)",
            )
        )
        if t["eng"] is not None:
            rows.append(
                [
                    "engine-BLAS (a): scipy's OpenBLAS, its own threads",
                    dt,
                    fmt_s(t["eng"]),
                    fmt_x(t["eng"] / floor),
                    "",
                    "reference",
                    "",
                ]
            )
        rows.append(
            [
                f"MLPBNClassifier ({team} threads)",
                dt,
                fmt_s(t_bn),
                fmt_x(t_bn / floor),
                "1.00x",
                f"<= {TARGET_FIT}x floor",
                verdict(t_bn / floor <= TARGET_FIT),
            ]
        )
        rows.append(
            [
                f"MLPBNClassifier, dropout={DROPOUT} ({team} threads)",
                dt,
                fmt_s(t["drop"]),
                fmt_x(t["drop"] / floor),
                fmt_x(t["drop"] / t_bn),
                f"<= {TARGET_DROPOUT}x MLPBN",
                verdict(t["drop"] / t_bn <= TARGET_DROPOUT),
            ]
        )
        rows.append(
            [
                "MLPBNClassifier (one thread), ratio to (b)",
                dt,
                fmt_s(t_bn1),
                fmt_x(t_bn1 / t["b"]),
                fmt_x(t_bn1 / t_bn),
                "reference",
                "",
            ]
        )
        rows.append(
            [
                "MLPClassifier (no BN)",
                dt,
                fmt_s(t_sk),
                fmt_x(t_sk / floor),
                fmt_x(t_sk / t_bn),
                "reference",
                "",
            ]
        )
        if t_torch is None:
            rows.append(
                [
                    "PyTorch CPU, BatchNorm1d",
                    dt,
                    torch_res["error"],
                    "n/a",
                    "n/a",
                    "reference",
                    "",
                ]
            )
        else:
            rows.append(
                [
                    f"PyTorch {torch_res['version']} CPU, BatchNorm1d "
                    f"({torch_res['threads']} threads)",
                    dt,
                    fmt_s(t_torch),
                    fmt_x(t_torch / floor),
                    fmt_x(t_torch / t_bn),
                    "reference",
                    "",
                ]
            )
        speedup, numpy_speedup = t_bn1 / t_bn, t["b"] / t["c"]
        speed_rows.append(
            [
                dt,
                fmt_s(t_bn1),
                fmt_s(t_bn),
                fmt_x(speedup),
                fmt_x(numpy_speedup),
                f">= {TARGET_SPEEDUP}x" if team > 1 else "n/a (T = 1)",
                verdict(speedup >= TARGET_SPEEDUP) if team > 1 else "",
            ]
        )
        state.setdefault("results", []).append(
            {
                "section": "fit",
                "dtype": dt,
                "threads": team,
                "floor_a": t["a"],
                "floor_b": t["b"],
                "floor_c": t["c"],
                "floor_c_barriers": t["sync"],
                "floor": floor,
                "floor_is": floor_name,
                "engine_blas_floor": t["eng"],
                "MLPBNClassifier": t_bn,
                "MLPBNClassifier_1thread": t_bn1,
                "MLPBNClassifier_dropout": t["drop"],
                "MLPClassifier": t_sk,
                "torch": t_torch,
            }
        )
    table(
        [
            "what",
            "dtype",
            "s/epoch",
            "ratio to products floor",
            "ratio to MLPBN",
            "target",
            "pass/fail",
        ],
        rows,
    )
    print(
        f"Speed-up from one thread to T = {team} threads (s/epoch); numpy's products "
        f"alone: (b) / (c)\n"
    )
    table(
        [
            "dtype",
            "MLPBN one thread",
            f"MLPBN {team} threads",
            "MLPBN speed-up",
            "numpy products speed-up (b)/(c)",
            "target",
            "pass/fail",
        ],
        speed_rows,
    )


def section_predict(args, dtypes, state):
    n = PREDICT_ROWS[args.quick]
    print(
        f"## predict_proba: {n} x {N_FEATURES} rows, hidden {HIDDEN} (folded), "
        f"best of {args.repeat}\n"
    )
    rows = []
    rng = np.random.default_rng(1)
    Xp64 = rng.standard_normal((n, N_FEATURES))
    for dt in dtypes:
        est = state.get("fitted", {}).get(dt)
        if est is None:
            X64, y = fit_data(args.quick)
            keep = []
            fit_timer(
                lambda: MLPBNClassifier(**mlp_params(HIDDEN, 1)),
                np.ascontiguousarray(X64, dtype=dt),
                y,
                keep,
            )()
            est = keep[0]
        Xp = np.ascontiguousarray(Xp64, dtype=dt)
        mlp = est.to_sklearn()
        if hasattr(mlp, "steps"):  # input handling on: the MLP ends the pipeline
            mlp = mlp.steps[-1][1]
        Ws = [np.ascontiguousarray(W, dtype=dt) for W in mlp.coefs_]
        a, prods = Xp, []
        for W in Ws:
            out = np.empty((n, W.shape[1]), dtype=dt)
            out[...] = 1  # touch the pages once
            prods.append((a, W, out))
            a = out
        t = interleaved_best(
            {
                "floor": call_timer(numpy_floor(prods)),
                "bn": call_timer(lambda: est.predict_proba(Xp)),
                "sk": call_timer(lambda: mlp.predict_proba(Xp)),
            },
            args.repeat,
            warmup=("floor", "bn", "sk"),
        )
        floor, t_bn, t_sk = t["floor"], t["bn"], t["sk"]
        rows.append(
            ["GEMM floor, folded network (numpy)", dt, fmt_s(floor), "1.00x", "", ""]
        )
        rows.append(
            [
                "MLPBNClassifier.predict_proba",
                dt,
                fmt_s(t_bn),
                fmt_x(t_bn / floor),
                f"<= {TARGET_PREDICT}x floor",
                verdict(t_bn / floor <= TARGET_PREDICT),
            ]
        )
        rows.append(
            [
                "to_sklearn().predict_proba",
                dt,
                fmt_s(t_sk),
                fmt_x(t_sk / floor),
                "reference",
                "",
            ]
        )
        state.setdefault("results", []).append(
            {
                "section": "predict",
                "dtype": dt,
                "floor": floor,
                "MLPBNClassifier": t_bn,
                "sklearn": t_sk,
            }
        )
    table(["what", "dtype", "seconds", "ratio to floor", "target", "pass/fail"], rows)


def section_memory(args, dtypes, state):
    shape = MEMORY_SHAPE[args.quick]
    print(
        f"## fit peak extra memory: X {shape[0]} x {shape[1]} float32, {N_CLASSES} "
        f"classes, hidden {MEMORY_HIDDEN}, max_iter=1, batch {BATCH}; fresh "
        f"subprocess per row\n"
    )
    rows = []
    for model in ("MLPBNClassifier", "MLPClassifier"):
        r = run_worker(
            "memory", {"shape": shape, "model": model, "threads": args.threads}
        )
        if "error" in r:
            rows.append([model, "float32", r["error"], "", "", "", "", ""])
            continue
        xb = r["x_bytes"]
        tm = r["tracemalloc_extra"] / xb
        rss = None if r["rss_extra"] is None else r["rss_extra"] / xb
        worst = max(tm, rss or 0.0)
        is_bn = model == "MLPBNClassifier"
        rows.append(
            [
                model,
                "float32",
                f"{xb / 2**20:.0f} MiB",
                f"{r['tracemalloc_extra'] / 2**20:.1f} MiB ({tm:.1%})",
                "n/a"
                if rss is None
                else f"{r['rss_extra'] / 2**20:.1f} MiB ({rss:.1%})",
                f"{r['seconds']:.2f}",
                f"<= {TARGET_MEMORY:.0%} of X" if is_bn else "reference",
                verdict(worst <= TARGET_MEMORY) if is_bn else "",
            ]
        )
        state.setdefault("results", []).append(
            {"section": "memory", "model": model, **r}
        )
    table(
        [
            "what",
            "dtype",
            "X bytes",
            "extra (tracemalloc peak)",
            "extra (RSS high-water)",
            "fit s",
            "target",
            "pass/fail",
        ],
        rows,
    )


def section_scaling(args, dtypes, state):
    sizes = SCALING_ROWS[args.quick]
    units = [N_FEATURES, *SCALING_HIDDEN, N_CLASSES]
    print(
        f"## scaling: n_samples {', '.join(str(s) for s in sizes)} x {N_FEATURES}, "
        f"{N_CLASSES} classes (random linear labels), hidden {SCALING_HIDDEN}, relu, "
        f"adam, batch {BATCH}, {SCALING_EPOCHS} epochs; s/epoch = fit time / n_iter_, "
        f"best of {args.repeat}\n"
    )
    rows = []
    rng = np.random.default_rng(2)
    X_all = rng.standard_normal((max(sizes), N_FEATURES), dtype=np.float32)
    y_all = linear_labels(X_all, N_CLASSES, 3)
    params = mlp_params(SCALING_HIDDEN, SCALING_EPOCHS)
    for dt in dtypes:
        X_dt = X_all if dt == "float32" else X_all.astype(dt)
        timers = {}
        for n in sizes:
            timers[("floor", n)] = per_epoch(
                call_timer(
                    numpy_floor(
                        make_epoch_products(units, engine_batches(n, BATCH), dt)
                        * SCALING_EPOCHS
                    )
                ),
                SCALING_EPOCHS,
            )
            timers[("bn", n)] = fit_timer(
                lambda n=n: MLPBNClassifier(**params), X_dt[:n], y_all[:n]
            )
        t_all = interleaved_best(
            timers, args.repeat, warmup=[("floor", n) for n in sizes]
        )
        prev = None
        for n in sizes:
            t, floor = t_all[("bn", n)], t_all[("floor", n)]
            ratio = None if prev is None else t / prev
            ok = (
                None
                if ratio is None
                else TARGET_SCALING[0] <= ratio <= TARGET_SCALING[1]
            )
            rows.append(
                [
                    f"MLPBNClassifier n={n}",
                    dt,
                    fmt_s(t),
                    fmt_s(floor),
                    fmt_x(t / floor),
                    "" if ratio is None else fmt_x(ratio),
                    ""
                    if ratio is None
                    else f"{TARGET_SCALING[0]:g}x-{TARGET_SCALING[1]:g}x",
                    "" if ok is None else verdict(ok),
                ]
            )
            state.setdefault("results", []).append(
                {
                    "section": "scaling",
                    "dtype": dt,
                    "n": n,
                    "s_per_epoch": t,
                    "floor": floor,
                }
            )
            prev = t
        del X_dt
    table(
        [
            "what",
            "dtype",
            "s/epoch",
            "GEMM floor s/epoch",
            "ratio to floor",
            "ratio to previous size",
            "target",
            "pass/fail",
        ],
        rows,
    )


# ---------------------------------------------------------------------------


def header(args, title="fit / predict_proba / memory / scaling"):
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    print(f"# sklearn_bn benchmark: {title}")
    print()
    print(
        "command: `"
        + " ".join(
            [os.path.basename(sys.executable)]
            + [os.path.relpath(sys.argv[0])]
            + sys.argv[1:]
        )
        + "`"
    )
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                l.split(":", 1)[1].strip() for l in f if l.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    print(
        f"machine: {cpu}, {os.cpu_count()} CPUs; python {platform.python_version()}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn "
        f"{sklearn.__version__}, sklearn_bn {sklearn_bn.__version__} "
        f"({os.path.dirname(sklearn_bn.__file__)})"
    )
    for info in threadpool_info():
        owner = os.path.basename(os.path.dirname(info["filepath"]))
        extra = f", {info['architecture']} kernels" if info.get("architecture") else ""
        print(
            f"threadpool: {info['internal_api']} {info.get('version') or ''} "
            f"({owner}/{os.path.basename(info['filepath'])}{extra}), "
            f"{info['num_threads']} threads"
        )
    print(
        "note: numpy's OpenBLAS runs the products floors and MLPClassifier; the engine "
        "of MLPBNClassifier calls scipy's (scipy.linalg.cython_blas)"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("OPENBLAS", "OMP_", "MKL_"))
    }
    if env:
        print("environment: " + ", ".join(f"{k}={v}" for k, v in sorted(env.items())))
        if "OPENBLAS_CORETYPE" in env:
            print(
                "note: OPENBLAS_CORETYPE is set; it can select slower kernels in "
                "current numpy/scipy. Compare with `env -u OPENBLAS_CORETYPE "
                "-u OPENBLAS_L2_SIZE python benchmarks/bench_fit.py ...`"
            )
    else:
        print("environment: no OPENBLAS_*/OMP_*/MKL_* variables set")
    load = os.getloadavg()
    busy = load[0] > 0.5 * (os.cpu_count() or 1)
    print(
        f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        + (
            " -- the machine is busy with other jobs; timings are noisy (best of "
            f"{args.repeat})"
            if busy
            else ""
        )
    )
    if args.threads:
        print(f"threads: limited to {args.threads} with threadpoolctl")
    clock = "time.perf_counter" if args.clock == "wall" else "time.process_time"
    print(f"clock: {args.clock} ({clock})")
    print()


def footer(state, seconds, json_path=None):
    """The end of a run that keeps its results in ``state`` (bench_workflow.py,
    bench_features.py): the load after it, its time, and ``state`` as JSON."""
    state["load_average_after"] = os.getloadavg()
    print(
        f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"total benchmark time: {seconds:.0f} s")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(state, f, indent=1, default=str)


def parse_list(value, allowed, what):
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {bad}; choose from {', '.join(allowed)}"
        )
    return items


def main(argv=None):
    global clock
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Sections are described in the module docstring of this script.",
    )
    parser.add_argument(
        "--what",
        default=",".join(SECTIONS),
        type=lambda v: parse_list(v, SECTIONS, "section"),
        help="comma-separated sections: fit,predict,memory,scaling (default: all)",
    )
    parser.add_argument(
        "--dtype",
        default=",".join(DTYPES),
        type=lambda v: parse_list(v, DTYPES, "dtype"),
        help="comma-separated dtypes (default: float32,float64)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed repeats, best of (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes and 1 epoch: a smoke run, not a measurement",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit BLAS/OpenMP (and torch) threads to this number",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (default) or cpu (process CPU time; steadier on a "
        "busy machine with --threads 1)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write raw results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        from threadpoolctl import threadpool_limits

        payload = json.loads(args.worker_args)
        clock = CLOCKS[payload.get("clock", "wall")]
        with threadpool_limits(limits=payload.get("threads")):
            print(json.dumps(WORKERS[args.worker](payload)))
        return

    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    clock = CLOCKS[args.clock]
    from threadpoolctl import threadpool_limits

    state = {}
    with threadpool_limits(limits=args.threads):
        header(args)
        t0 = time.perf_counter()
        for name in SECTIONS:
            if name in args.what:
                globals()["section_" + name](args, args.dtype, state)
        print(f"total benchmark time: {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(state.get("results", []), f, indent=1)


if __name__ == "__main__":
    main()
