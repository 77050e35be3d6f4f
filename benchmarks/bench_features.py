"""Benchmark: what dropout, ghost batch norm and population statistics change
in the test accuracy of MLPBNClassifier, against its defaults (issue #15).

Run from the repository root after building the extensions::

    python setup.py build_ext --inplace
    python benchmarks/bench_features.py            # 5 seeds, every data set
    python benchmarks/bench_features.py --quick    # smoke run: 2 seeds, 2 epochs
    python benchmarks/bench_features.py --seeds 10 --datasets digits,wine \
        --json out.json

What is measured. For each data set and each seed ``s`` (``s = 0 .. seeds-1``):

- a stratified train/test split, ``train_test_split(test_size=0.25,
  stratify=y, random_state=s)``;
- for every configuration below, ``make_pipeline(StandardScaler(),
  MLPBNClassifier(hidden_layer_sizes=(128, 128), random_state=s, **config))``
  fitted on the training rows, and its accuracy on the test rows. The
  training recipe is ``RECIPE`` (scikit-learn's MLP's, which were the
  estimator's defaults when this was measured): adam, a constant
  ``learning_rate_init=1e-3``, ``alpha=1e-4``, ``batch_size="auto"``
  (``min(200, n_samples)``), ``max_iter=200`` epochs at
  most, ``early_stopping=False`` (training stops when the training loss has
  not improved by ``tol=1e-4`` for ``n_iter_no_change=10`` epochs, as in
  scikit-learn), ``bn_momentum=0.1``, and X straight into the network
  (``input_preprocessing=None``: the StandardScaler scales it).

Within a seed every configuration sees the same split and the same initial
weights, so the differences are paired: the table gives, per data set and
configuration, the mean test accuracy over the seeds +- its standard
deviation (over seeds, ddof=1), the mean of the per-seed differences against
the defaults +- their standard deviation, and how many seeds got a higher /
equal / lower accuracy than the defaults. The ghost batch norm rows are also
compared with ``batch_size=128`` without ghost batch norm (the same
minibatches, only the normalization differs), which isolates its effect from
that of the batch size.

Configurations:

defaults
    ``MLPBNClassifier`` as above (``batch_size='auto'``: 200 rows, or all of
    them when fewer).
dropout=0.1, dropout=0.2
    Inverted dropout after every hidden layer's activation.
bn_stats=population
    The same training as the defaults (bit for bit: the same random draws),
    then the running statistics replaced by the exact statistics of the
    training rows; only prediction changes.
batch_size=128
    The reference of the next row.
batch_size=128, virtual_batch_size=32
    Ghost batch norm: each minibatch of 128 normalized in 4 chunks of 32.
combined
    ``dropout=0.1, batch_size=128, virtual_batch_size=32,
    bn_stats='population'``.

Data sets (``--datasets``, comma-separated; default all): ``digits``
(``load_digits``, 1797 x 64, 10 classes), ``breast_cancer``
(``load_breast_cancer``, 569 x 30, 2 classes), ``wine`` (``load_wine``,
178 x 13, 3 classes), all shipped with scikit-learn (no download), and
``synthetic``: ``make_classification(n_samples=3000, n_features=40,
n_informative=10, n_redundant=10, n_classes=4, flip_y=0.05,
random_state=0)``, generated data, the same rows for every seed (only the
split changes). Wine's test set has 45 rows: one row is 2.2 points of
accuracy.

A fit is reproducible for a given ``random_state`` and number of threads;
``--threads N`` limits the engine (and BLAS) to N threads with threadpoolctl,
otherwise the default team is used (the header shows the pools).
``--quick`` (2 seeds, ``max_iter=2``) is a smoke run; its numbers mean
nothing.
"""

import argparse
import os
import statistics
import sys
import time
import types
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_fit  # also puts an uninstalled checkout on sys.path
from bench_fit import table

from sklearn_bn import MLPBNClassifier

HIDDEN = (128, 128)
RECIPE = dict(
    learning_rate="constant",
    learning_rate_init=1e-3,
    alpha=1e-4,
    batch_size="auto",
    early_stopping=False,
    input_preprocessing=None,
)
MAX_ITER = {False: 200, True: 2}
SEEDS = {False: 5, True: 2}
TEST_SIZE = 0.25
GHOST_BATCH = 128
GHOST_VIRTUAL = 32

# name: (parameters, reference for an extra comparison or None)
CONFIGS = {
    "defaults": ({}, None),
    "dropout=0.1": ({"dropout": 0.1}, None),
    "dropout=0.2": ({"dropout": 0.2}, None),
    "bn_stats=population": ({"bn_stats": "population"}, None),
    f"batch_size={GHOST_BATCH}": ({"batch_size": GHOST_BATCH}, None),
    f"batch_size={GHOST_BATCH}, virtual_batch_size={GHOST_VIRTUAL}": (
        {"batch_size": GHOST_BATCH, "virtual_batch_size": GHOST_VIRTUAL},
        f"batch_size={GHOST_BATCH}",
    ),
    "combined": (
        {
            "dropout": 0.1,
            "batch_size": GHOST_BATCH,
            "virtual_batch_size": GHOST_VIRTUAL,
            "bn_stats": "population",
        },
        f"batch_size={GHOST_BATCH}",
    ),
}
BASELINE = "defaults"

SYNTHETIC = dict(
    n_samples=3000,
    n_features=40,
    n_informative=10,
    n_redundant=10,
    n_classes=4,
    flip_y=0.05,
    random_state=0,
)


def load_digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


def load_breast_cancer():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


def load_wine():
    from sklearn.datasets import load_wine

    return load_wine(return_X_y=True)


def load_synthetic():
    from sklearn.datasets import make_classification

    return make_classification(**SYNTHETIC)


DATASETS = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "wine": load_wine,
    "synthetic": load_synthetic,
}


# ---------------------------------------------------------------------------
# helpers


def mean_std(values):
    """Mean and standard deviation over seeds (ddof=1; 0 for one value)."""
    values = list(values)
    return statistics.fmean(values), (
        statistics.stdev(values) if len(values) > 1 else 0.0
    )


def fmt_acc(values):
    m, s = mean_std(values)
    return f"{100 * m:.2f} ± {100 * s:.2f}"


def fmt_diff(values):
    m, s = mean_std(values)
    return f"{100 * m:+.2f} ± {100 * s:.2f}"


def fmt_signs(values):
    """Seeds with a higher / equal / lower accuracy than the reference."""
    return (
        f"{sum(v > 0 for v in values)} / {sum(v == 0 for v in values)} / "
        f"{sum(v < 0 for v in values)}"
    )


def fit_score(params, Xtr, ytr, Xte, yte, seed, max_iter):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        MLPBNClassifier(
            hidden_layer_sizes=HIDDEN,
            max_iter=max_iter,
            random_state=seed,
            **{**RECIPE, **params},
        ),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(Xtr, ytr)
        seconds = time.perf_counter() - t0
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {
        "accuracy": float(model.score(Xte, yte)),
        "n_iter": int(model[-1].n_iter_),
        "converged": converged,
        "seconds": seconds,
    }


def header(args):
    # The machine, versions, thread pools and load, as bench_fit.py prints them
    # (its timing-only lines, clock and repeats, do not matter here).
    bench_fit.header(
        types.SimpleNamespace(repeat=1, clock="wall", threads=args.threads),
        title="test accuracy of dropout, ghost batch norm and population "
        "statistics against the defaults",
    )
    print(
        f"model: make_pipeline(StandardScaler(), MLPBNClassifier(hidden_layer_sizes="
        f"{HIDDEN}, max_iter={args.max_iter}, random_state=seed, **RECIPE, "
        f"**config)), RECIPE={RECIPE}; seeds 0..{args.seeds - 1}; stratified split, "
        f"test_size={TEST_SIZE}"
    )
    if args.quick:
        print("--quick: a smoke run; the numbers mean nothing")
    print()


# ---------------------------------------------------------------------------


def run_dataset(name, args):
    from sklearn.model_selection import train_test_split

    X, y = DATASETS[name]()
    runs = {config: [] for config in CONFIGS}
    n_test = None
    for seed in range(args.seeds):
        Xtr, Xte, ytr, yte = train_test_split(
            X, y, test_size=TEST_SIZE, stratify=y, random_state=seed
        )
        n_test = len(yte)
        for config, (params, _) in CONFIGS.items():
            runs[config].append(
                fit_score(params, Xtr, ytr, Xte, yte, seed, args.max_iter)
            )
    label = name + (" (generated: make_classification)" if name == "synthetic" else "")
    print(
        f"## {label}: {X.shape[0]} rows x {X.shape[1]} features, "
        f"{len(np.unique(y))} classes; {X.shape[0] - n_test} train / "
        f"{n_test} test rows; {args.seeds} seeds\n"
    )
    acc = {c: [r["accuracy"] for r in rs] for c, rs in runs.items()}
    rows, summary = [], {}
    for config, (_, ref) in CONFIGS.items():
        d_base = [a - b for a, b in zip(acc[config], acc[BASELINE])]
        d_ref = [a - b for a, b in zip(acc[config], acc[ref])] if ref else None
        epochs = statistics.fmean(r["n_iter"] for r in runs[config])
        capped = sum(not r["converged"] for r in runs[config])
        is_base = config == BASELINE
        rows.append(
            [
                config,
                fmt_acc(acc[config]),
                "" if is_base else fmt_diff(d_base),
                "" if is_base else fmt_signs(d_base),
                f"{fmt_diff(d_ref)} ({fmt_signs(d_ref)})" if ref else "",
                f"{epochs:.0f}" + (f" ({capped} at max_iter)" if capped else ""),
                f"{sum(r['seconds'] for r in runs[config]):.1f}",
            ]
        )
        summary[config] = {
            "params": CONFIGS[config][0],
            "accuracy": acc[config],
            "accuracy_mean_std": mean_std(acc[config]),
            "diff_vs_defaults": d_base,
            "diff_vs_defaults_mean_std": mean_std(d_base),
            "reference": ref,
            "diff_vs_reference": d_ref,
            "diff_vs_reference_mean_std": mean_std(d_ref) if ref else None,
            "runs": runs[config],
        }
    table(
        [
            "configuration",
            "test accuracy % (mean ± std)",
            "Δ vs defaults (points)",
            "seeds higher / equal / lower",
            f"Δ vs batch_size={GHOST_BATCH} (h / e / l)",
            "epochs (mean)",
            "fit s (total)",
        ],
        rows,
    )
    return {
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "n_classes": int(len(np.unique(y))),
        "n_test": int(n_test),
        "configs": summary,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="What is measured is described in the module docstring of this script.",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="number of seeds (default 5; 2 with --quick)",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        type=lambda v: bench_fit.parse_list(v, DATASETS, "data set"),
        help=f"comma-separated: {','.join(DATASETS)} (default: all)",
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        default=None,
        help="maximum epochs (default 200; 2 with --quick)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit the engine and BLAS to this many threads",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 seeds, 2 epochs: a smoke run, not a measurement",
    )
    parser.add_argument("--json", metavar="PATH", help="also write raw results as JSON")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or SEEDS[args.quick]
    args.max_iter = args.max_iter or MAX_ITER[args.quick]
    if args.seeds < 1 or args.max_iter < 1:
        parser.error("--seeds and --max-iter must be at least 1")

    from threadpoolctl import threadpool_limits

    header(args)
    state = {
        "command": sys.argv,
        "hidden_layer_sizes": HIDDEN,
        "max_iter": args.max_iter,
        "seeds": args.seeds,
        "test_size": TEST_SIZE,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "datasets": {},
    }
    t0 = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        for name in args.datasets:
            state["datasets"][name] = run_dataset(name, args)
    state["seconds"] = time.perf_counter() - t0
    print(
        "Accuracy in percent; Δ in percentage points, the mean ± std (ddof=1) of the "
        "per-seed differences (same split and initial weights within a seed)."
    )
    bench_fit.footer(state, state["seconds"], args.json)


if __name__ == "__main__":
    main()
