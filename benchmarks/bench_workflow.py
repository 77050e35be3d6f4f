"""Benchmark: MLPBNClassifier where users train it: fits that follow other
calls, grid searches, small networks, two threads, Ctrl-C.

Run from the repository root after building the extensions::

    python setup.py build_ext --inplace
    python benchmarks/bench_workflow.py                     # every section
    python benchmarks/bench_workflow.py --quick             # smoke run, small sizes
    python benchmarks/bench_workflow.py --what after,small --repeat 15 --json out.json

Sections (``--what``, comma-separated; default all but ``cores``, which
``--what all`` adds). Every ratio is measured in the same run; each time is
reported as the best and the median of ``--repeat`` runs, and ratios are
taken between bests and between medians. The targets are those of issue #14.

after
    Digits (standardized with ``StandardScaler``), one fold (the first of
    ``StratifiedKFold(5)``: 1437 rows train, 360 test),
    ``MLPBNClassifier(hidden_layer_sizes=(64, 64), max_iter=20,
    batch_size=200, random_state=0)``. The time of one ``fit`` of a fresh
    estimator right after something else ran; each case first pauses 0.3 s
    (so that nothing from the previous case is still running), fits a
    previous model, does its call, then times the fit:

    - after fit: nothing between the two fits (the reference);
    - after score: ``previous.score(X_test, y_test)``, as cross-validation
      does between two fits;
    - after a numpy matmul: a 512 x 512 float64 ``np.matmul``, multi-threaded
      by numpy's OpenBLAS (another BLAS library than the engine's), and the
      same matmul under ``threadpool_limits(1, user_api="blas")``;
    - in a pipeline after PCA: ``make_pipeline(PCA(40), MLPBNClassifier)``
      fitted after the previous pipeline's ``score``; the time is the MLP
      step's ``fit`` alone (PCA's ``fit_transform`` with numpy's BLAS runs
      right before it), against the MLP's fit-after-fit on the
      PCA-transformed rows; and the same with PCA's ``fit_transform`` under
      ``threadpool_limits(1, user_api="blas")``;
    - diagnostics: after score with BLAS limited to one thread during the
      score, and after score followed by a 0.3 s pause.

    Target (issue #14): a fit after the package's own call (``score``)
    <= 1.15x fit-after-fit. The cases after numpy's products measure what
    another library's BLAS threads, still spinning, do to the next fit, and
    what limiting that library's threads changes: no target, since the
    package cannot stop those threads.

grid
    ``GridSearchCV(cv=5, refit=True)`` on the standardized digits (1797
    rows), 8 candidates: ``hidden_layer_sizes`` (64,) or (64, 64), ``alpha``
    1e-4 or 1e-2, ``learning_rate_init`` 1e-3 or 1e-2, ``max_iter=20``,
    ``batch_size=200``, ``random_state=0``, other parameters default, for
    ``MLPBNClassifier`` and scikit-learn's ``MLPClassifier``, at
    ``n_jobs=1`` and ``n_jobs=2`` (joblib's process pool; one untimed
    round of searches first, which starts the workers and their imports, a
    few seconds). Target: MLPBNClassifier >= 2x faster at both.

small
    The ``after`` section's fit-after-fit with the default thread team
    against the same with ``threadpool_limits(1, user_api="blas")``, which
    makes the engine train on one thread. Target: default / one thread
    <= 1.05.

speedup
    The network of ``bench_fit.py`` (``make_classification`` 40 000 x 64
    training rows, 10 classes, hidden (256, 256), relu, adam, batch 256,
    3 epochs), seconds per epoch on one thread and with the default team of
    T threads, beside numpy's products alone on one BLAS thread and split
    by rows over T Python threads (floors (b) and (c) of ``bench_fit.py``,
    imported from it). Target: the engine's speed-up >= 1.5x (T = 2).

ctrlc
    A subprocess generates float32 rows (64 features, 10 classes from a
    random linear model) and fits the ``speedup`` network with
    ``max_iter=1000``; the parent sends SIGINT at a random moment between
    0.1 and 1.5 epochs into the fit (an epoch's length is measured by a
    one-epoch fit first) and takes the time from the signal to ``fit``
    returning (the child reads ``time.monotonic`` when ``fit`` returns;
    scikit-learn-style fits catch ``KeyboardInterrupt`` and return). 300 000
    rows and 1 200 000 rows, several trials each (one child per size). A
    signal that comes before the engine's first call (during the input
    handling, which takes most of a second on 300 000 rows) makes ``fit``
    raise ``KeyboardInterrupt``, as scikit-learn's fit does there: nothing
    was trained; such a trial counts as consistent.
    After each interrupt the child checks the fitted state:
    ``len(loss_curve_) == n_iter_``; ``n_iter_`` is the number of whole
    epochs in ``t_`` (samples seen), or that plus one when a partial epoch
    counts as an iteration; the optimizer's step count (the private
    ``_optimizer_state["step"]``, when present) equals the steps that ``t_``
    stands for; weights, batch-norm statistics and ``predict_proba``
    finite. Then whether the record matches the steps actually applied: if
    ``t_`` counts whole epochs, a fresh fit of ``n_iter_`` epochs must give
    the same ``coefs_`` (the fit is deterministic for a given
    ``random_state`` and thread count; replays estimated above 60 s are
    skipped), and if nothing is recorded, ``coefs_`` must still be the
    initial ones (those of a one-epoch fit with ``learning_rate_init=1e-30``,
    too small to move a float32 weight); a partial epoch is checked against
    the step count. A trial none of these can check is marked unverified.
    Also shown: the epochs ``t_`` records against those the elapsed time
    predicts (a rough guide on a busy machine). Target: latency <= 0.2 s
    (max over trials) and no inconsistent state.

cores (no target; ``--what cores`` or ``--what all``)
    The ``speedup`` network (float32 unless ``--dtype`` says otherwise) at
    every thread count from 1 to the machine's CPUs (``threadpool_limits``
    on BLAS, which the engine follows): the engine's seconds per epoch,
    speed-up and parallel efficiency, beside numpy's products with BLAS's
    own threads (floor (a)) and split over as many Python threads (floor
    (c)).

``--quick`` shrinks every section (fewer epochs, a smaller grid, smaller
Ctrl-C sizes, one repeat, no warm-up round, no pauses) for a smoke run; its
numbers mean nothing. The
machine's load matters: the header shows the load average, BLAS/OpenMP
pools and versions as ``bench_fit.py`` does.
"""

import argparse
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_fit  # also puts an uninstalled checkout on sys.path
from bench_fit import blas_limit, fmt_s, fmt_x, table, verdict

from sklearn_bn import MLPBNClassifier

SECTIONS = ("after", "grid", "small", "speedup", "ctrlc", "cores")
DEFAULT_SECTIONS = ("after", "grid", "small", "speedup", "ctrlc")
DTYPES = ("float32", "float64")

SMALL_HIDDEN = (64, 64)
SMALL_EPOCHS = {False: 20, True: 3}
SETTLE_SECONDS = 0.3
MATMUL_SIZE = 512
PCA_COMPONENTS = 40
GRID = {
    False: {
        "hidden_layer_sizes": [(64,), (64, 64)],
        "alpha": [1e-4, 1e-2],
        "learning_rate_init": [1e-3, 1e-2],
    },
    True: {"hidden_layer_sizes": [(16,)], "alpha": [1e-4, 1e-2]},
}
GRID_EPOCHS = {False: 20, True: 2}
GRID_FOLDS = {False: 5, True: 2}
CTRLC_ROWS = {False: (300_000, 1_200_000), True: (20_000,)}
CTRLC_TRIALS = {False: (6, 3), True: (2,)}
CTRLC_HIDDEN = {False: bench_fit.HIDDEN, True: (64, 64)}
CTRLC_WINDOW = (0.1, 1.5)  # the signal's moment, in epochs after fit starts
CTRLC_REPLAY_BUDGET = 60.0  # seconds a replay may take (by the epoch time measured)
CTRLC_TIMEOUT = 120.0  # seconds to wait for fit to return after the signal

TARGET_AFTER = 1.15
TARGET_GRID = 2.0
TARGET_SMALL = 1.05
TARGET_SPEEDUP = bench_fit.TARGET_SPEEDUP
TARGET_CTRLC = 0.2


# ---------------------------------------------------------------------------
# helpers


def quiet_fit(est, X, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def stats(times):
    return {"best": min(times), "median": statistics.median(times), "runs": list(times)}


def ratio(num, den):
    return {"best": num["best"] / den["best"], "median": num["median"] / den["median"]}


def fmt_pair(st):
    return f"{fmt_s(st['best'])} / {fmt_s(st['median'])}"


def fmt_ratio(r):
    return f"{fmt_x(r['best'])} / {fmt_x(r['median'])}"


QUICK = False  # set by --quick: no warm-up round, short pauses


def rounds(cases, repeat, settle=SETTLE_SECONDS, warmup=True):
    """Run every case once per round, ``repeat`` rounds (one untimed round
    first if ``warmup``); each case is a callable returning a time in
    seconds and runs after ``gc.collect()`` and a pause of ``settle``
    seconds. Returns {name: stats}."""
    if QUICK:
        settle, warmup = min(settle, 0.02), False
    times = {name: [] for name in cases}
    for r in range(repeat + bool(warmup)):
        for name, case in cases.items():
            gc.collect()
            time.sleep(settle)
            t = case()
            if r or not warmup:
                times[name].append(t)
    return {name: stats(t) for name, t in times.items()}


def digits():
    """Standardized digits and the first fold of ``StratifiedKFold(5)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    train, test = next(StratifiedKFold(5).split(X, y))
    return X, y, X[train], y[train], X[test], y[test]


def small_model(quick, cls=MLPBNClassifier):
    return cls(
        hidden_layer_sizes=SMALL_HIDDEN,
        max_iter=SMALL_EPOCHS[quick],
        batch_size=200,
        random_state=0,
    )


class TimedMLPBNClassifier(MLPBNClassifier):
    """MLPBNClassifier that records how long its own ``fit`` took (to time
    the MLP step inside a Pipeline)."""

    def fit(self, X, y, sample_weight=None):
        t0 = time.perf_counter()
        super().fit(X, y, sample_weight=sample_weight)
        self.fit_seconds_ = time.perf_counter() - t0
        return self


def timed_fit(make, X, y):
    est = make()
    t0 = time.perf_counter()
    quiet_fit(est, X, y)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------
# sections


def section_after(args, state):
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    _, _, Xtr, ytr, Xte, yte = digits()
    epochs = SMALL_EPOCHS[args.quick]
    make = lambda: small_model(args.quick)  # noqa: E731
    rng = np.random.default_rng(0)
    M = rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE))
    M_out = np.empty_like(M)
    Xpca = PCA(PCA_COMPONENTS).fit_transform(Xtr)

    def make_pipe():
        return make_pipeline(
            PCA(PCA_COMPONENTS),
            TimedMLPBNClassifier(
                hidden_layer_sizes=SMALL_HIDDEN,
                max_iter=epochs,
                batch_size=200,
                random_state=0,
            ),
        )

    def after(between, X=Xtr):
        def case():
            prev = quiet_fit(make(), X, ytr)
            between(prev)
            return timed_fit(make, X, ytr)

        return case

    def score_one_thread(prev):
        with blas_limit(1):
            prev.score(Xte, yte)

    def score_pause(prev):
        prev.score(Xte, yte)
        time.sleep(SETTLE_SECONDS)

    def matmul_one_thread(prev):
        with blas_limit(1):
            np.matmul(M, M, out=M_out)

    def pipeline_after_score(one_blas_thread=False):
        def case():
            prev = quiet_fit(make_pipe(), Xtr, ytr)
            prev.score(Xte, yte)
            pipe = make_pipe()
            if one_blas_thread:
                # The remedy the user guide gives: PCA's products on one
                # BLAS thread leave no thread spinning.
                with blas_limit(1):
                    Xt = pipe[0].fit_transform(Xtr)
                quiet_fit(pipe[-1], Xt, ytr)
            else:
                quiet_fit(pipe, Xtr, ytr)
            return pipe[-1].fit_seconds_

        return case

    # name: (case, reference case or None, has a target). Another library's
    # BLAS threads are outside the package's reach: measured, no target.
    cases = {
        "after fit": (after(lambda prev: None), None, False),
        "after score": (after(lambda prev: prev.score(Xte, yte)), "after fit", True),
        "after a numpy matmul (another library's threads)": (
            after(lambda prev: np.matmul(M, M, out=M_out)),
            "after fit",
            False,
        ),
        "after a numpy matmul under threadpool_limits(1) (remedy)": (
            after(matmul_one_thread),
            "after fit",
            False,
        ),
        "PCA rows: after fit": (after(lambda prev: None, Xpca), None, False),
        "pipeline PCA -> MLPBN after its score: MLP step (another library's threads)": (
            pipeline_after_score(),
            "PCA rows: after fit",
            False,
        ),
        "same, PCA under threadpool_limits(1) (remedy)": (
            pipeline_after_score(one_blas_thread=True),
            "PCA rows: after fit",
            False,
        ),
        "after score under threadpool_limits(1) (diagnostic)": (
            after(score_one_thread),
            "after fit",
            False,
        ),
        "after score and a 0.3 s pause (diagnostic)": (
            after(score_pause),
            "after fit",
            False,
        ),
    }
    print(
        f"## after: fit of MLPBNClassifier(hidden {SMALL_HIDDEN}, "
        f"max_iter={epochs}) on digits ({Xtr.shape[0]} train rows, "
        f"{Xte.shape[0]} test rows), right after another call; seconds best / "
        f"median of {args.repeat}\n"
    )
    t = rounds({name: c[0] for name, c in cases.items()}, args.repeat)
    rows, results = [], {}
    for name, (_, ref, has_target) in cases.items():
        if ref is None:
            rows.append([name, fmt_pair(t[name]), "1.00x (reference)", "", ""])
            results[name] = {"seconds": t[name]}
            continue
        r = ratio(t[name], t[ref])
        results[name] = {"seconds": t[name], "ratio": r, "reference": ref}
        rows.append(
            [
                name,
                fmt_pair(t[name]),
                fmt_ratio(r),
                f"<= {TARGET_AFTER}x {ref}" if has_target else "",
                verdict(r["best"] <= TARGET_AFTER) if has_target else "",
            ]
        )
    table(
        ["fit", "seconds best / median", "ratio best / median", "target", "pass/fail"],
        rows,
    )
    state["after"] = results


def section_grid(args, state):
    from sklearn.model_selection import GridSearchCV
    from sklearn.neural_network import MLPClassifier

    X, y, *_ = digits()
    grid = GRID[args.quick]
    epochs = GRID_EPOCHS[args.quick]
    folds = GRID_FOLDS[args.quick]
    n_candidates = int(np.prod([len(v) for v in grid.values()]))
    estimators = {"MLPBNClassifier": MLPBNClassifier, "MLPClassifier": MLPClassifier}

    best_scores = {}

    def search(name, n_jobs):
        def run():
            gs = GridSearchCV(
                estimators[name](max_iter=epochs, batch_size=200, random_state=0),
                grid,
                cv=folds,
                n_jobs=n_jobs,
            )
            t0 = time.perf_counter()
            quiet_fit(gs, X, y)
            seconds = time.perf_counter() - t0
            best_scores[name] = gs.best_score_
            return seconds

        return run

    values = ", ".join(f"{k} in {v}" for k, v in grid.items())
    print(
        f"## grid: GridSearchCV(cv={folds}, refit=True) on digits ({X.shape[0]} rows), "
        f"{n_candidates} candidates ({values}), "
        f"max_iter={epochs}, random_state=0; seconds best / median of {args.repeat}\n"
    )
    rows, results = [], {}
    for n_jobs in (1, 2):
        cases = {name: search(name, n_jobs) for name in estimators}
        for case in cases.values():  # untimed, even with --quick: the workers' imports
            case()
        t = rounds(cases, args.repeat, warmup=False)
        bn, sk = t["MLPBNClassifier"], t["MLPClassifier"]
        gain = ratio(sk, bn)
        rows.append(
            [
                n_jobs,
                fmt_pair(bn),
                fmt_pair(sk),
                fmt_ratio(gain),
                f"{best_scores['MLPBNClassifier']:.3f} / "
                f"{best_scores['MLPClassifier']:.3f}",
                f">= {TARGET_GRID}x",
                verdict(gain["best"] >= TARGET_GRID),
            ]
        )
        results[n_jobs] = {"MLPBNClassifier": bn, "MLPClassifier": sk, "speedup": gain}
    table(
        [
            "n_jobs",
            "MLPBNClassifier s",
            "MLPClassifier s",
            "MLPBN faster by (best / median)",
            "best CV accuracy (BN / sk)",
            "target",
            "pass/fail",
        ],
        rows,
    )
    state["grid"] = results


def section_small(args, state):
    _, _, Xtr, ytr, _, _ = digits()
    make = lambda: small_model(args.quick)  # noqa: E731

    def fit_after_fit(n_threads):
        def case():
            with blas_limit(n_threads):
                quiet_fit(make(), Xtr, ytr)
                return timed_fit(make, Xtr, ytr)

        return case

    print(
        f"## small: MLPBNClassifier(hidden {SMALL_HIDDEN}, "
        f"max_iter={SMALL_EPOCHS[args.quick]}) on digits ({Xtr.shape[0]} rows), "
        f"fit after fit, default team ({bench_fit.team_threads()} threads) vs one "
        f"thread; seconds best / median of {args.repeat}\n"
    )
    t = rounds({"default": fit_after_fit(None), "one": fit_after_fit(1)}, args.repeat)
    r = ratio(t["default"], t["one"])
    table(
        [
            "default team s",
            "one thread s",
            "default / one (best / median)",
            "target",
            "pass/fail",
        ],
        [
            [
                fmt_pair(t["default"]),
                fmt_pair(t["one"]),
                fmt_ratio(r),
                f"<= {TARGET_SMALL}x",
                verdict(r["best"] <= TARGET_SMALL),
            ]
        ],
    )
    state["small"] = {"default": t["default"], "one_thread": t["one"], "ratio": r}


def bench_network_timers(quick, dt, n_threads, floors=("b", "c"), one_thread=False):
    """Per-epoch timers on the bench_fit network: the engine under a BLAS
    limit of ``n_threads`` (and of 1, as "one", if ``one_thread``), and the
    numpy floors named in
    ``floors`` ("a" at ``n_threads`` BLAS threads, "b", "c" with
    ``n_threads`` Python threads)."""
    X64, y = bench_fit.fit_data(quick)
    X = np.ascontiguousarray(X64, dtype=dt)
    epochs = bench_fit.FIT_EPOCHS[quick]
    params = bench_fit.mlp_params(bench_fit.HIDDEN, epochs)
    units = [bench_fit.N_FEATURES, *bench_fit.HIDDEN, bench_fit.N_CLASSES]
    sizes = bench_fit.engine_batches(X.shape[0], bench_fit.BATCH)
    fl = bench_fit.floor_timers(units, sizes, dt, epochs, n_threads)
    fit = bench_fit.fit_timer(lambda: MLPBNClassifier(**params), X, y)
    timers = {"engine": bench_fit.limited(fit, n_threads)}
    if one_thread:
        # A limit of its own: an outer limit of 1 would be lifted again by
        # the inner limit of n_threads.
        timers["one"] = bench_fit.limited(fit, 1)
    for k in floors:
        timers[k] = bench_fit.limited(fl[k], n_threads) if k == "a" else fl[k]
    return timers


def section_speedup(args, state):
    team = bench_fit.team_threads()
    X64, _ = bench_fit.fit_data(args.quick)
    print(
        f"## speedup: bench_fit network ({X64.shape[0]} x {X64.shape[1]}, hidden "
        f"{bench_fit.HIDDEN}, batch {bench_fit.BATCH}, "
        f"{bench_fit.FIT_EPOCHS[args.quick]} epoch(s)), s/epoch on one thread and on "
        f"T = {team}; numpy's products: (b) one BLAS thread, (c) {team} Python "
        f"threads x 1 BLAS thread; best / median of {args.repeat}\n"
    )
    rows, results = [], {}
    for dt in args.dtype:
        timers = bench_network_timers(args.quick, dt, team, one_thread=True)
        t = rounds(
            {
                "one": timers["one"],
                "team": timers["engine"],
                "b": timers["b"],
                "c": timers["c"],
            },
            args.repeat,
            settle=0.25,
        )
        eng, npy = ratio(t["one"], t["team"]), ratio(t["b"], t["c"])
        rows.append(
            [
                dt,
                fmt_pair(t["one"]),
                fmt_pair(t["team"]),
                fmt_ratio(eng),
                fmt_pair(t["b"]),
                fmt_pair(t["c"]),
                fmt_ratio(npy),
                f">= {TARGET_SPEEDUP}x" if team > 1 else "n/a (T = 1)",
                verdict(eng["best"] >= TARGET_SPEEDUP) if team > 1 else "",
            ]
        )
        results[dt] = {
            "threads": team,
            **t,
            "engine_speedup": eng,
            "numpy_speedup": npy,
        }
    table(
        [
            "dtype",
            "MLPBN one thread",
            f"MLPBN {team} threads",
            "MLPBN speed-up",
            "numpy (b)",
            "numpy (c)",
            "numpy speed-up (b)/(c)",
            "target",
            "pass/fail",
        ],
        rows,
    )
    state["speedup"] = results


def section_cores(args, state):
    n_cpu = os.cpu_count() or 1
    dtypes = args.dtype if args.dtype_given else ["float32"]
    X64, _ = bench_fit.fit_data(args.quick)
    print(
        f"## cores: bench_fit network ({X64.shape[0]} x {X64.shape[1]}, hidden "
        f"{bench_fit.HIDDEN}, batch {bench_fit.BATCH}), threads 1..{n_cpu}; s/epoch "
        f"best of {args.repeat}; speed-up against one thread, efficiency = "
        "speed-up / threads; numpy (a): BLAS's own threads, (c): Python threads x "
        "1 BLAS thread\n"
    )
    rows, results = [], []
    for dt in dtypes:
        cases = {}
        for n in range(1, n_cpu + 1):
            timers = bench_network_timers(args.quick, dt, n, floors=("a", "c"))
            for k, timer in timers.items():
                cases[(k, n)] = timer
        t = rounds(cases, args.repeat, settle=0.25)
        base = {k: t[(k, 1)]["best"] for k in ("engine", "a", "c")}
        for n in range(1, n_cpu + 1):
            best = {k: t[(k, n)]["best"] for k in ("engine", "a", "c")}
            sp = {k: base[k] / best[k] for k in best}
            rows.append(
                [
                    dt,
                    n,
                    fmt_s(best["engine"]),
                    fmt_x(sp["engine"]),
                    f"{sp['engine'] / n:.0%}",
                    fmt_s(best["a"]),
                    fmt_x(sp["a"]),
                    fmt_s(best["c"]),
                    fmt_x(sp["c"]),
                ]
            )
            results.append({"dtype": dt, "threads": n, **{k: t[(k, n)] for k in best}})
    table(
        [
            "dtype",
            "threads",
            "MLPBN s/epoch",
            "MLPBN speed-up",
            "MLPBN efficiency",
            "numpy (a) s/epoch",
            "numpy (a) speed-up",
            "numpy (c) s/epoch",
            "numpy (c) speed-up",
        ],
        rows,
    )
    state["cores"] = results


# ---------------------------------------------------------------------------
# Ctrl-C: the child process and the parent's side


def ctrlc_params(hidden, max_iter):
    return dict(
        hidden_layer_sizes=hidden,
        activation="relu",
        solver="adam",
        batch_size=bench_fit.BATCH,
        max_iter=max_iter,
        tol=0.0,
        n_iter_no_change=100_000,
        random_state=0,
    )


def send(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def check_state(est, X, y, n, hidden, epoch_seconds, elapsed):
    """The fitted state after an interrupted fit: what it records and
    whether that is consistent."""
    nb = len(bench_fit.engine_batches(n, bench_fit.BATCH))
    n_iter = int(est.n_iter_)
    t_ = int(est.t_)
    curve = len(est.loss_curve_)
    state = getattr(est, "_optimizer_state", {})
    steps = state.get("step", state.get("t"))
    res = {
        "n_iter_": n_iter,
        "len_loss_curve_": curve,
        "t_": t_,
        "n_samples": n,
        "optimizer_steps": None if steps is None else int(steps),
        "epochs_by_time": elapsed / epoch_seconds,
        "epochs_recorded": t_ / n,
    }
    problems = []
    if curve != n_iter:
        problems.append("len(loss_curve_) != n_iter_")
    # A partial epoch may count in n_iter_ or not; t_ says how far it went.
    if not t_ // n <= n_iter <= -(-t_ // n):
        problems.append("n_iter_ is neither the whole epochs in t_ nor those plus one")
    if steps is not None:
        full, rest = divmod(int(steps), nb)
        if t_ != full * n + rest * bench_fit.BATCH:
            problems.append(f"t_ is not the samples of the {steps} optimizer steps")
    arrays = [
        *est.coefs_,
        *est.intercepts_,
        *getattr(est, "gammas_", []),
        *getattr(est, "running_means_", []),
        *getattr(est, "running_vars_", []),
    ]
    res["finite"] = all(bool(np.isfinite(a).all()) for a in arrays)
    if not res["finite"]:
        problems.append("non-finite weights")
    proba = est.predict_proba(X[:1000])
    res["predict_ok"] = bool(
        np.isfinite(proba).all() and np.allclose(proba.sum(1), 1, atol=1e-3)
    )
    if not res["predict_ok"]:
        problems.append("predict_proba not finite")
    res["replay"] = "n/a"
    verified = False
    if steps is not None and t_ % n:
        verified = (
            True  # a partial epoch recorded: checked against the step count above
        )
    if t_ == 0 and n_iter == 0:
        # Nothing recorded: the weights must still be the initial ones, which
        # a one-epoch fit with a learning rate too small to move a float32
        # weight gives (the initialization depends on the network's shape
        # and random_state only, so a few rows with every class suffice).
        rows = min(n, 2000)
        init = quiet_fit(
            MLPBNClassifier(**{**ctrlc_params(hidden, 1), "learning_rate_init": 1e-30}),
            X[:rows],
            y[:rows],
        )
        if [c.shape for c in init.coefs_] == [c.shape for c in est.coefs_]:
            same = all(np.array_equal(a, b) for a, b in zip(init.coefs_, est.coefs_))
            res["replay"] = "initial" if same else "moved"
            verified = True
            if not same:
                problems.append(
                    "coefs_ moved from their initial values while n_iter_ = t_ = 0"
                )
    elif t_ == n_iter * n and n_iter * epoch_seconds <= CTRLC_REPLAY_BUDGET:
        ref = quiet_fit(MLPBNClassifier(**ctrlc_params(hidden, n_iter)), X, y)
        same = all(np.array_equal(a, b) for a, b in zip(ref.coefs_, est.coefs_))
        res["replay"] = "same" if same else "differs"
        verified = True
        if not same:
            problems.append(f"coefs_ differ from a fit of n_iter_={n_iter} epochs")
    res["problems"] = problems
    res["verified"] = verified
    return res


def worker_ctrlc(p):
    """The child: fit, get interrupted, report; ``p["trials"]`` times."""
    warnings.filterwarnings("ignore", message="Training interrupted")
    # Python's own SIGINT handler, as in a terminal: a child of a shell that
    # runs in the background starts with SIGINT ignored, and fit then leaves
    # Ctrl-C alone.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    n, hidden = p["n"], tuple(p["hidden"])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, bench_fit.N_FEATURES), dtype=np.float32)
    y = bench_fit.linear_labels(X, bench_fit.N_CLASSES, 1)
    # When the engine's first call begins: a signal before it (during the
    # input handling) raises KeyboardInterrupt, as scikit-learn's fit does.
    from sklearn_bn import _engine

    training = {}
    train_epoch = _engine.Engine.train_epoch

    def timed_train_epoch(self, *args, **kwargs):
        training.setdefault("t", time.monotonic())
        return train_epoch(self, *args, **kwargs)

    _engine.Engine.train_epoch = timed_train_epoch
    t0 = time.perf_counter()
    quiet_fit(MLPBNClassifier(**ctrlc_params(hidden, 1)), X, y)
    epoch_seconds = time.perf_counter() - t0
    send("ready", epoch_seconds=epoch_seconds)
    for _ in range(p["trials"]):
        if sys.stdin.readline().strip() != "go":
            return
        est = MLPBNClassifier(**ctrlc_params(hidden, 1000))
        raised = False
        training.clear()
        t_start = time.monotonic()
        send("fit", t=t_start)
        try:
            quiet_fit(est, X, y)
        except KeyboardInterrupt:
            raised = True
        t_return = time.monotonic()
        if raised or not hasattr(est, "n_iter_"):
            send("returned", t=t_return, raised=raised, training_at=training.get("t"))
            continue
        res = check_state(est, X, y, n, hidden, epoch_seconds, t_return - t_start)
        send("returned", t=t_return, raised=raised, **res)


def run_ctrlc_child(n, trials, hidden, threads):
    payload = {"n": n, "trials": trials, "hidden": list(hidden), "threads": threads}
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "ctrlc",
        "--worker-args",
        json.dumps(payload),
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    out = []

    def read():
        # A fit that ignored the signal would otherwise be waited for until
        # its max_iter epochs end: the child is killed after CTRLC_TIMEOUT.
        silent = threading.Event()

        def give_up():
            silent.set()
            proc.kill()

        watchdog = threading.Timer(CTRLC_TIMEOUT, give_up)
        watchdog.start()
        try:
            while True:
                line = proc.stdout.readline()
                if not line:
                    why = (
                        f"sent nothing for {CTRLC_TIMEOUT:.0f} s (a fit did not stop "
                        "after SIGINT) and was killed"
                        if silent.is_set()
                        else f"exited (code {proc.wait()})"
                    )
                    raise RuntimeError(f"the Ctrl-C child {why}")
                if line.startswith("{"):
                    return json.loads(line)
        finally:
            watchdog.cancel()

    try:
        ready = read()
        epoch = ready["epoch_seconds"]
        rnd = random.Random()
        for _ in range(trials):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            start = read()
            delay = rnd.uniform(*CTRLC_WINDOW) * epoch
            time.sleep(max(0.0, start["t"] + delay - time.monotonic()))
            t_sig = time.monotonic()
            os.kill(proc.pid, signal.SIGINT)
            res = read()
            res.update(
                latency=res["t"] - t_sig,
                t_signal=t_sig,
                signal_epochs=(t_sig - start["t"]) / epoch,
                epoch_seconds=epoch,
            )
            out.append(res)
            time.sleep(SETTLE_SECONDS)
        proc.stdin.close()
        proc.wait(timeout=CTRLC_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def before_training(r):
    """Whether a trial's signal came before the engine's first call (during
    the input handling), where fit raises KeyboardInterrupt as scikit-learn's
    fit does: nothing was trained to keep."""
    return r.get("training_at") is None or r["t_signal"] < r["training_at"]


def section_ctrlc(args, state):
    sizes, trials = CTRLC_ROWS[args.quick], CTRLC_TRIALS[args.quick]
    hidden = CTRLC_HIDDEN[args.quick]
    print(
        f"## ctrlc: SIGINT during fit (float32, {bench_fit.N_FEATURES} features, "
        f"hidden {hidden}, batch {bench_fit.BATCH}, adam), at a random moment "
        f"{CTRLC_WINDOW[0]}-{CTRLC_WINDOW[1]} epochs into the fit; latency = signal "
        f"to fit returning\n"
    )
    rows, trial_rows, results = [], [], {}
    for n, k in zip(sizes, trials):
        res = run_ctrlc_child(n, k, hidden, args.threads)
        lat = [r["latency"] for r in res]
        ok_state = all(
            (before_training(r) if r.get("raised") else not r.get("problems"))
            for r in res
        )
        unverified = sum(
            1 for r in res if ok_state and not r.get("raised") and not r.get("verified")
        )
        rows.append(
            [
                n,
                f"{res[0]['epoch_seconds']:.2f}",
                len(res),
                f"{max(lat):.3f}",
                f"{statistics.median(lat):.3f}",
                f"{min(lat):.3f}",
                ("yes" if ok_state else "NO")
                + (f" ({unverified} trial(s) unverified)" if unverified else ""),
                f"<= {TARGET_CTRLC} s (max)",
                verdict(max(lat) <= TARGET_CTRLC and ok_state),
            ]
        )
        for i, r in enumerate(res):
            if r.get("raised") or "n_iter_" not in r:
                early = r.get("raised") and before_training(r)
                trial_rows.append(
                    [
                        n,
                        i + 1,
                        f"{r['signal_epochs']:.2f}",
                        f"{r['latency']:.3f}",
                        "fit raised KeyboardInterrupt"
                        + (", before training began" if early else ""),
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "yes (as scikit-learn)" if early else "NO",
                    ]
                )
                continue
            steps = "n/a" if r["optimizer_steps"] is None else r["optimizer_steps"]
            trial_rows.append(
                [
                    n,
                    i + 1,
                    f"{r['signal_epochs']:.2f}",
                    f"{r['latency']:.3f}",
                    r["n_iter_"],
                    r["len_loss_curve_"],
                    f"{r['epochs_recorded']:.3f}",
                    f"{r['epochs_by_time']:.2f}",
                    steps,
                    "yes" if r["finite"] and r["predict_ok"] else "NO",
                    r["replay"],
                    (
                        "NO: " + "; ".join(r["problems"])
                        if r["problems"]
                        else "yes"
                        if r["verified"]
                        else "unverified: no replay"
                    ),
                ]
            )
        results[n] = res
    table(
        [
            "rows",
            "s/epoch",
            "trials",
            "latency max s",
            "median s",
            "min s",
            "state consistent",
            "target",
            "pass/fail",
        ],
        rows,
    )
    print(
        "Per trial: signal moment in epochs into the fit; epochs recorded = t_ / "
        "n_samples; epochs by time = (return - fit start) / epoch seconds; optimizer "
        "steps: private _optimizer_state['step']\n"
    )
    table(
        [
            "rows",
            "trial",
            "signal at (epochs)",
            "latency s",
            "n_iter_",
            "len(loss_curve_)",
            "epochs recorded",
            "epochs by time",
            "optimizer steps",
            "finite, predicts",
            "replay of n_iter_ epochs / initial weights",
            "consistent",
        ],
        trial_rows,
    )
    state["ctrlc"] = results


WORKERS = {"ctrlc": worker_ctrlc}


# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Sections are described in the module docstring of this script.",
    )
    parser.add_argument(
        "--what",
        default=",".join(DEFAULT_SECTIONS),
        type=lambda v: (
            list(SECTIONS)
            if v == "all"
            else bench_fit.parse_list(v, SECTIONS, "section")
        ),
        help=f"comma-separated sections: {','.join(SECTIONS)}, or all "
        f"(default: {','.join(DEFAULT_SECTIONS)})",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        type=lambda v: bench_fit.parse_list(v, DTYPES, "dtype"),
        help="dtypes of speedup (default float32,float64) and cores (default float32)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed repeats (default 7 for after/small, 3 for the others; "
        "1 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: a smoke run, not a measurement",
    )
    parser.add_argument("--json", metavar="FILE", help="also write raw results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        from threadpoolctl import threadpool_limits

        payload = json.loads(args.worker_args)
        with threadpool_limits(limits=payload.get("threads")):
            WORKERS[args.worker](payload)
        return

    global QUICK
    QUICK = args.quick
    args.dtype_given = args.dtype is not None
    if args.dtype is None:
        args.dtype = list(DTYPES)
    args.threads, args.clock = None, "wall"  # for bench_fit.header
    repeat_given = args.repeat
    args.repeat = repeat_given or (1 if args.quick else 3)
    bench_fit.header(args, title="workflow (" + ", ".join(args.what) + ")")
    state = {"command": sys.argv, "load_average_before": os.getloadavg()}
    t0 = time.perf_counter()
    for name in SECTIONS:
        if name in args.what:
            args.repeat = repeat_given or (
                1 if args.quick else 7 if name in ("after", "small") else 3
            )
            globals()["section_" + name](args, state)
    bench_fit.footer(state, time.perf_counter() - t0, args.json)


if __name__ == "__main__":
    main()
