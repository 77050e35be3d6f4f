"""Benchmark: fused batch norm + ReLU, forward (training mode) then backward.

Run from the repository root after building the extensions::

    python setup.py build_ext --inplace
    python benchmarks/bench_kernels.py            # add --quick for a smoke run

For each shape ``(n_rows, n_cols)`` in (256, 256) and (4096, 1024) and each
dtype in float32 and float64, it times one training step of the layer
``a = relu(gamma * (z - mean) / sqrt(var + eps) + beta)``:
:func:`sklearn_bn._batchnorm.bn_forward_train` followed by
:func:`sklearn_bn._batchnorm.bn_backward`, called through their ``def``
wrappers with preallocated outputs (the wrappers' Python overhead is part of
the measured time). The kernels' arrays start on a cache line (64 bytes), as
the training engine's buffers do; the last column repeats the kernel's ratio
with every array 16 bytes past a cache line, where numpy's allocator often
puts arrays of this size (vector loads then straddle cache lines).

Baselines, all measured in the same run on the same data:

memory floor
    The forward pass must read ``z`` and write ``a``; the backward pass must
    read ``da`` and, for ``z_hat`` (which every ``dz`` needs), ``z`` again,
    and write ``dz``: three array reads and two array writes in all. The
    floor is the time numpy takes to do just that: ``np.copyto(a, z)``,
    ``np.copyto(dz, da)`` and the maximum of ``z`` viewed as integers (a
    single-threaded vectorized pass that only reads: the fastest read numpy
    offers, faster than a float maximum, which checks for NaN). The
    per-column vectors (gamma, statistics, gradients)
    are negligible and not counted. The copies' destinations are placed half
    a page from their sources (see :func:`empty_apart`), the fast case of
    ``memcpy``, so that the floor does not depend on where the allocator
    happened to put them.
numpy
    A plain numpy reference of the same forward and backward (batch mean and
    ddof=0 variance, normalize, scale, shift, ReLU; closed-form backward),
    written as one would without hand-tuning.
torch (optional)
    ``torch.nn.BatchNorm1d`` + ``relu`` forward and backward on CPU, only if
    torch happens to be importable; it is never a dependency.

Each time is the best of ``--repeat`` repeats; a repeat runs each operation
in turn, each in a loop long enough (about 0.1 s) to be timed reliably with
``time.perf_counter`` (``--clock cpu``: ``time.process_time``, the CPU time
of the process, which is more stable on a machine shared with other jobs).
The script prints a markdown table: kernel / floor (the target is <= 2) and
numpy / kernel (how much faster the kernels are than the numpy reference).

Where the kernel time goes: the forward pass reads ``z`` twice (statistics,
then normalization) and the backward pass reads ``da`` and ``z`` twice (the
column sums ``dbeta``, ``dgamma`` must be complete before any ``dz``; ReLU's
mask is recomputed from ``z`` rather than read from ``a``), so the kernels
move 6 array-reads and 2 array-writes where the floor moves 3 and 2. At
(256, 256) the four arrays (1 MB in float32) are twice a core's L2 on the
project's machine (512 KB), so the passes read from L2 and L3, each 1.1x-1.5x
slower than numpy's copy or read of the same bytes (the reductions slowest).
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

try:
    from sklearn_bn import _batchnorm
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from sklearn_bn import _batchnorm

SHAPES = [(256, 256), (4096, 1024)]
DTYPES = [np.float32, np.float64]
EPS = 1e-5


def best_times(funcs, repeat, min_time, clock=time.perf_counter):
    """Best per-call time of each function over ``repeat`` timed loops.

    The functions take turns within each repeat, so that a busy period of the
    machine slows them all rather than one of them.
    """
    numbers = []
    for func in funcs:
        func()  # warm up (page faults, caches, lazy initialisation)
        t0 = clock()
        func()
        single = clock() - t0
        numbers.append(max(1, int(min_time / max(single, 1e-9))))
    best = [float("inf")] * len(funcs)
    for _ in range(repeat):
        for k, (func, number) in enumerate(zip(funcs, numbers)):
            t0 = clock()
            for _ in range(number):
                func()
            best[k] = min(best[k], (clock() - t0) / number)
    return best


def empty_apart(like, other, offset=2048):
    """An empty array like ``like`` whose address is ``offset`` bytes from
    ``other``'s modulo 4096.

    glibc's ``memcpy`` (``rep movsb``) is up to 10x slower on some CPUs when
    the destination is a few bytes past the source modulo the 4 KiB page
    (4K aliasing); where numpy's allocator happens to put the arrays would
    then decide the floor. Half a page apart is the fast case.
    """
    nbytes = like.nbytes
    raw = np.empty(nbytes + 8192, dtype=np.uint8)
    start = (other.ctypes.data + offset - raw.ctypes.data) % 4096
    return raw[start : start + nbytes].view(like.dtype).reshape(like.shape)


def empty_aligned(like, align=64, offset=0):
    """An empty array like ``like`` starting ``offset`` bytes past an
    ``align``-byte boundary."""
    raw = np.empty(like.nbytes + align + offset, dtype=np.uint8)
    start = (-raw.ctypes.data) % align + offset
    return raw[start : start + like.nbytes].view(like.dtype).reshape(like.shape)


def make_kernel(z, gamma, beta, da, offset=0):
    """The kernels on copies of ``z`` and ``da`` and on outputs that all start
    ``offset`` bytes past a cache line."""
    n_rows, n_cols = z.shape
    z_in, da_in = z, da
    z = empty_aligned(z_in, offset=offset)
    da = empty_aligned(da_in, offset=offset)
    z[...] = z_in
    da[...] = da_in
    a = empty_aligned(z, offset=offset)
    dz = empty_aligned(z, offset=offset)
    mean = np.empty(n_cols, dtype=np.float64)
    var = np.empty(n_cols, dtype=np.float64)
    dgamma = np.empty_like(gamma)
    dbeta = np.empty_like(gamma)
    forward = _batchnorm.bn_forward_train
    backward = _batchnorm.bn_backward

    def run():
        forward(z, gamma, beta, a, mean, var, None, EPS, "relu")
        backward(da, a, z, gamma, beta, mean, var, dz, dgamma, dbeta, None, EPS, "relu")

    return run


def make_floor(z, da):
    a = empty_apart(z, z)
    dz = empty_apart(da, da)
    z_bits = z.view(np.int32 if z.dtype == np.float32 else np.int64)
    copyto = np.copyto

    def run():
        copyto(a, z)
        copyto(dz, da)
        z_bits.max()

    return run


def make_numpy(z, gamma, beta, da):
    n_rows = z.shape[0]

    def run():
        mean = z.mean(axis=0)
        var = z.var(axis=0)
        inv_std = 1 / np.sqrt(var + EPS)
        z_hat = (z - mean) * inv_std
        a = np.maximum(gamma * z_hat + beta, 0)
        g = da * (a > 0)
        dbeta = g.sum(axis=0)
        dgamma = (g * z_hat).sum(axis=0)
        dz = (gamma * inv_std) * (g - (dbeta + z_hat * dgamma) / n_rows)
        return a, dz, dgamma, dbeta

    return run


def make_torch(z, gamma, beta, da):
    try:
        import torch
    except ImportError:
        return None
    bn = torch.nn.BatchNorm1d(z.shape[1], eps=EPS, dtype=torch.from_numpy(z).dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    bn.train()
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    dat = torch.from_numpy(da)

    def run():
        zt.grad = None
        bn.zero_grad(set_to_none=True)
        a = torch.relu(bn(zt))
        a.backward(dat)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed repeats (best of)")
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.1,
        help="seconds per timed repeat (inner loop length)",
    )
    parser.add_argument("--quick", action="store_true", help="1 repeat, short loops")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: time.perf_counter (default); cpu: "
        "time.process_time, which does not count the time the "
        "process waits for a CPU on a busy machine",
    )
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.quick:
        args.repeat, args.min_time = 1, 0.01

    print(
        "# fused batch norm + ReLU, forward (train) + backward; "
        f"best of {args.repeat}, {args.clock} clock"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"numpy {np.__version__}"
    )
    print()
    header = [
        "shape",
        "dtype",
        "kernel s",
        "floor s",
        "kernel/floor",
        "numpy s",
        "numpy/kernel",
        "kernel/floor, arrays 16 B off a cache line",
    ]
    rows = []
    torch_rows = []
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for dtype in DTYPES:
            z = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
            da = rng.standard_normal(shape).astype(dtype)
            gamma = rng.uniform(0.5, 1.5, shape[1]).astype(dtype)
            beta = rng.uniform(-0.5, 0.5, shape[1]).astype(dtype)
            funcs = [
                make_kernel(z, gamma, beta, da),
                make_floor(z, da),
                make_numpy(z, gamma, beta, da),
                make_kernel(z, gamma, beta, da, offset=16),
            ]
            torch_run = make_torch(z, gamma, beta, da)
            if torch_run is not None:
                funcs.append(torch_run)
            times = best_times(funcs, args.repeat, args.min_time, clock)
            t_kernel, t_floor, t_numpy, t_off = times[:4]
            rows.append(
                [
                    f"({shape[0]}, {shape[1]})",
                    np.dtype(dtype).name,
                    f"{t_kernel:.3g}",
                    f"{t_floor:.3g}",
                    f"{t_kernel / t_floor:.2f}",
                    f"{t_numpy:.3g}",
                    f"{t_numpy / t_kernel:.1f}",
                    f"{t_off / t_floor:.2f}",
                ]
            )
            if torch_run is not None:
                t_torch = times[4]
                torch_rows.append(
                    [
                        rows[-1][0],
                        rows[-1][1],
                        f"{t_torch:.3g}",
                        f"{t_torch / t_floor:.2f}",
                        f"{t_torch / t_kernel:.1f}",
                    ]
                )

    def table(head, body):
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for row in body:
            print("| " + " | ".join(row) + " |")

    table(header, rows)
    if torch_rows:
        print()
        table(["shape", "dtype", "torch s", "torch/floor", "torch/kernel"], torch_rows)


if __name__ == "__main__":
    main()
