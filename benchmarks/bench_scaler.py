"""Benchmark: BatchNormScaler against the memory floor and StandardScaler.

Run from the repository root after building the extensions::

    python setup.py build_ext --inplace
    python benchmarks/bench_scaler.py                 # 1M x 100, float32 and float64
    python benchmarks/bench_scaler.py --n-samples 100000 --repeat 3   # quicker

Two operations, on the same ``X`` of shape ``(n_samples, n_features)``:

fit_transform
    ``BatchNormScaler().fit_transform(X)``: learn the statistics, return the
    standardized copy.
stream
    ``partial_fit`` over consecutive chunks of ``--chunk`` rows (10 000),
    then one ``transform(X)``: the out-of-core use.

Baselines, all measured in the same run on the same array:

memory floor
    Both operations must read ``X`` (at least once) and write a new output
    array of the same size. The floor is numpy doing exactly that once:
    ``X.copy()``, which allocates the output as ``fit_transform`` must (on
    Linux, fresh pages are zeroed by the kernel on first touch, which costs
    about as much as writing them). A stream touches the same bytes. The
    table also gives ``np.copyto(out, X)`` into a preallocated, already
    touched ``out``: a stricter floor that no function returning a new array
    can reach.
StandardScaler
    scikit-learn's ``StandardScaler`` doing the same two operations.

``BatchNormScaler`` spreads large arrays over threads (as many as
scikit-learn's OpenMP code would use); the rows "1 thread" repeat its
timings under ``threadpoolctl.threadpool_limits(1, "openmp")``. numpy's copy
and StandardScaler are single-threaded.

Each time is the best of ``--repeat`` runs; the runs of all candidates are
interleaved so that a noisy neighbour hurts them alike. The script prints a
markdown table (seconds, ratio to the memory floor, speed-up over
StandardScaler). Target: <= 2x the memory floor for both operations.
"""

import argparse
import gc
import os
import platform
import sys
import time

import numpy as np
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

try:
    from sklearn_bn import BatchNormScaler
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from sklearn_bn import BatchNormScaler

from sklearn_bn._threads import max_threads


def stream(scaler, X, chunk):
    for start in range(0, X.shape[0], chunk):
        scaler.partial_fit(X[start : start + chunk])
    return scaler.transform(X)


def one_thread(func):
    def run():
        with threadpool_limits(1, user_api="openmp"):
            return func()

    return run


def candidates(X, chunk):
    out = np.empty_like(X)
    np.copyto(out, X)  # touch the pages once
    return {
        "floor: X.copy()": lambda: X.copy(),
        "floor: np.copyto(out, X)": lambda: np.copyto(out, X),
        "BatchNormScaler fit_transform": lambda: BatchNormScaler().fit_transform(X),
        "BatchNormScaler stream": lambda: stream(BatchNormScaler(), X, chunk),
        "BatchNormScaler fit_transform, 1 thread": one_thread(
            lambda: BatchNormScaler().fit_transform(X)
        ),
        "BatchNormScaler stream, 1 thread": one_thread(
            lambda: stream(BatchNormScaler(), X, chunk)
        ),
        "StandardScaler fit_transform": lambda: StandardScaler().fit_transform(X),
        "StandardScaler stream": lambda: stream(StandardScaler(), X, chunk),
    }


def measure(funcs, repeat):
    """Best time of each function, the repeats interleaved."""
    best = {name: float("inf") for name in funcs}
    for func in funcs.values():  # warm-up: imports, thread pool, pages
        func()
    for _ in range(repeat):
        for name, func in funcs.items():
            gc.collect()
            t0 = time.perf_counter()
            result = func()
            elapsed = time.perf_counter() - t0
            del result
            best[name] = min(best[name], elapsed)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument(
        "--chunk",
        type=int,
        default=10_000,
        help="rows per partial_fit call in the stream",
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--dtype", choices=["float32", "float64", "both"], default="both"
    )
    args = parser.parse_args(argv)

    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    print(
        f"BatchNormScaler vs memory floor and StandardScaler: X of shape "
        f"({args.n_samples}, {args.n_features}), stream chunks of {args.chunk} rows, "
        f"best of {args.repeat}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, BatchNormScaler threads: {max_threads()}; "
        f"numpy {np.__version__}\n"
    )
    print(
        "| dtype | operation | seconds | x memory floor (X.copy()) "
        "| x np.copyto floor | StandardScaler / this |"
    )
    print("|---|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        X = rng.standard_normal((args.n_samples, args.n_features), dtype=np.float64)
        X *= rng.uniform(0.1, 10, size=args.n_features)
        X += rng.uniform(-5, 5, size=args.n_features)
        X = X.astype(dtype, copy=False)
        best = measure(candidates(X, args.chunk), args.repeat)
        floor = best["floor: X.copy()"]
        prealloc = best["floor: np.copyto(out, X)"]
        for name, seconds in best.items():
            ratio_ss = ""
            for op in ("fit_transform", "stream"):
                if name.startswith("BatchNormScaler") and op in name:
                    ratio_ss = f"{best['StandardScaler ' + op] / seconds:.1f}x"
            print(
                f"| {dtype} | {name} | {seconds:.3f} | {seconds / floor:.2f} "
                f"| {seconds / prealloc:.2f} | {ratio_ss} |"
            )
        del X
        gc.collect()


if __name__ == "__main__":
    main()
