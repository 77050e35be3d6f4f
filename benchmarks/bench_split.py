"""Benchmark: what splitting a minibatch's products over T threads costs in
work, the measured input of the scaling model on the docs' performance page.

Run from the repository root after building the extensions::

    python benchmarks/bench_split.py                 # float32, T = 1, 2, 4, 8, 16
    python benchmarks/bench_split.py --dtype float64 --repeat 20

A machine with few cores cannot time a team of 16 threads, but one thread
can run the 16 products each of them would run, one after another: their
total time over the time of the unsplit product is the *work inflation* of
the split (1.0: splitting costs nothing; 2.0: the team does twice the work
of one thread, so T threads are at best T / 2 times faster). Each product
goes through scipy's BLAS on one thread, as the engine calls it, on the
shapes of a hidden layer of ``bench_fit.py``'s network (batch 256, 256 units
in and out) and of its first layer (64 features in):

forward ``Z = A @ W``, delta ``D_in = D @ W.T``, weight gradient ``G = A.T @ D``.

Three ways to split each product into T pieces:

columns
    what the engine does: T panels of the output's columns (the weight
    gradient's too); every piece reads the whole of ``A`` (or ``D``).
rows
    T blocks of the minibatch's rows; every piece reads the whole of ``W``,
    and the weight gradient becomes T partial sums over the row blocks,
    added afterwards (that addition is timed too).
tiles
    a grid of row blocks x column panels, as square as T allows.

The team's work queue, timed for every T up to the machine's cores
(``sklearn_bn._team.work_check``: phases of T pieces), gives the cost of
one phase.
"""

import argparse
import math
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

try:
    import sklearn_bn  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sklearn_bn._blas import gemm
from sklearn_bn._team import work_check

BATCH = 256
LAYERS = {"hidden 256 -> 256": (256, 256), "first 64 -> 256": (64, 256)}
THREADS = (1, 2, 4, 8, 16)


def best_time(func, repeat):
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t)
    return best


def blocks(n, parts):
    """``parts`` near-equal [start, stop) ranges of ``range(n)``."""
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def grid(parts):
    """Rows x columns of a grid of ``parts`` tiles, as square as possible."""
    rows = int(math.sqrt(parts))
    while parts % rows:
        rows -= 1
    return rows, parts // rows


def pieces(kind, split, m, n_in, n_out, parts, dtype, rng):
    """The products of one piece each, as closures, for ``kind`` in
    forward / delta / gradient, split by ``split`` into ``parts``."""

    def rand(*shape):
        return np.ascontiguousarray(rng.standard_normal(shape), dtype=dtype)

    row_parts, col_parts = {
        "columns": (1, parts),
        "rows": (parts, 1),
        "tiles": grid(parts),
    }[split]
    calls = []
    # The output is (m, n_out) for forward, (m, n_in) for delta, and
    # (n_in, n_out) for the gradient, whose inner dimension is the rows.
    out_rows, out_cols = {
        "forward": (m, n_out),
        "delta": (m, n_in),
        "gradient": (n_in, n_out),
    }[kind]
    inner = {"forward": n_in, "delta": n_out, "gradient": m}[kind]
    if kind == "gradient":
        # Rows of the minibatch are the inner dimension: a row split makes
        # partial sums; the grid's columns cut the output's columns.
        for r0, r1 in blocks(m, row_parts):
            for c0, c1 in blocks(out_cols, col_parts):
                a, d = rand(r1 - r0, n_in), rand(r1 - r0, c1 - c0)
                c = np.empty((n_in, c1 - c0), dtype=dtype)
                calls.append(lambda a=a, d=d, c=c: gemm(a, d, c, trans_a=True))
        if row_parts > 1:
            partials = [rand(n_in, n_out) for _ in range(row_parts)]
            total = np.empty((n_in, n_out), dtype=dtype)

            def reduce(partials=partials, total=total):
                np.copyto(total, partials[0])
                for p in partials[1:]:
                    np.add(total, p, out=total)

            calls.append(reduce)
        return calls
    for r0, r1 in blocks(out_rows, row_parts):
        for c0, c1 in blocks(out_cols, col_parts):
            a = rand(r1 - r0, inner)
            if kind == "forward":
                b = rand(inner, c1 - c0)
                trans_b = False
            else:
                b = rand(c1 - c0, inner)  # rows c0:c1 of W, used transposed
                trans_b = True
            c = np.empty((r1 - r0, c1 - c0), dtype=dtype)
            calls.append(lambda a=a, b=b, c=c, t=trans_b: gemm(a, b, c, trans_b=t))
    return calls


def inflation_table(dtype, repeat):
    rng = np.random.default_rng(0)
    rows = []
    for name, (n_in, n_out) in LAYERS.items():
        for split in ("columns", "rows", "tiles"):
            ratios = []
            for parts in THREADS:
                total = whole = 0.0
                for kind in ("forward", "delta", "gradient"):
                    if kind == "delta" and name.startswith("first"):
                        continue  # nothing below the first layer needs a delta
                    one = pieces(kind, split, BATCH, n_in, n_out, 1, dtype, rng)
                    split_calls = pieces(
                        kind, split, BATCH, n_in, n_out, parts, dtype, rng
                    )
                    whole += best_time(lambda: [f() for f in one], repeat)
                    total += best_time(lambda: [f() for f in split_calls], repeat)
                ratios.append(total / whole)
            rows.append([name, split, *(f"{r:.2f}" for r in ratios)])
    return rows


def phase_table(rounds):
    rows = []
    for n in range(1, (os.cpu_count() or 1) + 1):
        t = best_time(lambda: work_check(n, n, rounds), 3)
        rows.append([n, f"{t / (2 * rounds) * 1e6:.2f}"])
    return rows


def table(head, rows):
    print("| " + " | ".join(map(str, head)) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    print()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="best of N (default 30; 2 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 30)
    dtype = np.dtype(args.dtype)
    print(
        "# work inflation of a minibatch's products split into T pieces "
        f"({dtype.name}, batch {BATCH}, one BLAS thread, best of {repeat}); "
        "time of the T pieces run one after another / time of the whole products\n"
    )
    with threadpool_limits(1, user_api="blas"):
        rows = inflation_table(dtype, repeat)
    table(["layer", "split", *(f"T = {t}" for t in THREADS)], rows)
    print(
        f"# the team's work queue: microseconds per phase (T pieces), threads "
        f"1..{os.cpu_count()}\n"
    )
    table(["threads", "us per phase"], phase_table(200 if args.quick else 20000))


if __name__ == "__main__":
    main()
