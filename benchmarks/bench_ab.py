"""Benchmark: the fit of two builds of the package, before and after a change,
timed in turns.

Run from anywhere, with two built checkouts (``python setup.py build_ext
--inplace`` in each; ``git worktree add ../before <commit>`` makes the
second one)::

    python benchmarks/bench_ab.py ../before .                   # 6 rounds
    python benchmarks/bench_ab.py ../before . --rounds 8 --threads 1 --dtype float64

Each round starts one fresh process per checkout, in alternating order
(before-after, then after-before), and each process times two fits of the
``bench_fit.py`` network (``make_classification`` 40 000 x 64, 10 classes,
hidden (256, 256), relu, adam, batch 256, 2 epochs) and reports its faster
one, in seconds per epoch. Alternating processes spread the machine's slow
moments over both builds; the medians and the fastest of each build, and
their ratios after / before, are printed. A ratio within a few percent of 1
is this machine's noise.
"""

import argparse
import os
import subprocess
import sys

import numpy as np

CHILD = r"""
import sys, time, warnings
sys.path.insert(0, sys.argv[1])
import numpy as np
from sklearn.datasets import make_classification
from threadpoolctl import threadpool_limits
import sklearn_bn
from sklearn_bn import MLPBNClassifier
assert sklearn_bn.__file__.startswith(sys.argv[1]), sklearn_bn.__file__
warnings.simplefilter("ignore")
X, y = make_classification(n_samples=40000, n_features=64, n_informative=32,
                           n_classes=10, random_state=0)
X = X.astype(sys.argv[2])
threads = int(sys.argv[3]) or None
epochs = 2
best = float("inf")
# The engine alone, whatever the build's defaults (input handling, early
# stopping, schedules arrived in later builds).
params = dict(hidden_layer_sizes=(256, 256), batch_size=256, max_iter=epochs, tol=0,
              n_iter_no_change=99, random_state=0, learning_rate="constant",
              early_stopping=False)
if "input_preprocessing" in MLPBNClassifier().get_params():
    params["input_preprocessing"] = None
with threadpool_limits(threads, user_api="blas"):
    for _ in range(2):
        t = time.perf_counter()
        MLPBNClassifier(**params).fit(X, y)
        best = min(best, (time.perf_counter() - t) / epochs)
print(best)
"""


def time_build(root, dtype, threads):
    result = subprocess.run(
        [sys.executable, "-c", CHILD, root, dtype, str(threads)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"the fit failed in {root}:\n{result.stderr[-2000:]}")
    return float(result.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="root of the built checkout before the change")
    parser.add_argument("after", help="root of the built checkout after the change")
    parser.add_argument(
        "--rounds", type=int, default=6, help="processes per build (default 6)"
    )
    parser.add_argument("--dtype", default="float32,float64")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="BLAS limit, which the engine follows (default: none)",
    )
    args = parser.parse_args(argv)
    roots = {
        "before": os.path.abspath(args.before),
        "after": os.path.abspath(args.after),
    }
    print(
        f"# fit of the bench_fit network, s/epoch; before = {roots['before']}, after = "
        f"{roots['after']}; {args.rounds} processes each, alternating; threads: "
        f"{args.threads or 'default'}\n"
    )
    print(
        "| dtype | before median (fastest) | after median (fastest) | "
        "after / before: median (fastest) |"
    )
    print("|---|---|---|---|")
    for dtype in args.dtype.split(","):
        times = {"before": [], "after": []}
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name in order:
                times[name].append(time_build(roots[name], dtype, args.threads))
        med = {k: float(np.median(v)) for k, v in times.items()}
        low = {k: min(v) for k, v in times.items()}
        print(
            f"| {dtype} | {med['before']:.4f} ({low['before']:.4f}) | "
            f"{med['after']:.4f} ({low['after']:.4f}) | "
            f"{med['after'] / med['before']:.3f} ({low['after'] / low['before']:.3f}) |"
        )


if __name__ == "__main__":
    main()
