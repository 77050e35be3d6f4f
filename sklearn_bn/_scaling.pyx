"""Per-column affine kernels for ``BatchNormScaler``.

``BatchNormScaler.transform`` is ``gamma * (x - mean) / sqrt(var + eps) + beta``,
computed as ``out = (x - center) * scale + shift`` with one ``center``,
``scale`` and ``shift`` per column; ``inverse_transform`` is the same map with
the inverse coefficients. The Python layer computes the coefficients (vectors
of ``n_features``), the kernels here stream the data once.

``center`` is the mean rounded to the working precision and ``shift`` carries
that rounding error (as the training kernels' ``_affine`` does): ``x - center``
is exact for ``x`` near the mean, so a constant column maps to ``beta``, where
``x * scale + shift`` would cancel two large products (in float32 a constant
column far from 0 would map to a value far from ``beta``).

Three layers, as in scikit-learn's ``_loss.pyx``: ``c*`` functions work on raw
C-contiguous blocks without the GIL; ``def`` wrappers check shapes, release the
GIL and call them; ``BatchNormScaler`` validates user input before either.

The kernels also keep, per column, the largest ``|x|`` they read (NaN
ignored) so that the caller learns whether ``x`` held an infinite value, and
which columns' results may have passed the dtype's largest number, without a
second pass over the data.
"""
from libc.float cimport DBL_MAX, FLT_MAX
from libc.math cimport fabs, INFINITY
from cython cimport floating
from cython.parallel cimport prange

import numpy as np

from sklearn_bn._tiles cimport TILE, n_tiles, tile_width


cdef void caffine_columns(const floating* x, floating* out,
                          Py_ssize_t n_rows, Py_ssize_t n_cols,
                          const floating* center, const floating* scale,
                          const floating* shift, floating* absmax) noexcept nogil:
    """``out[i, j] = (x[i, j] - center[j]) * scale[j] + shift[j]``.

    ``out`` may be ``x`` (in place). ``absmax[j]`` is raised to the largest
    ``|x[i, j]|`` of the column, NaN ignored; the caller initializes it. The
    per-column coefficients and maxima of a tile of columns live in local
    arrays (see ``_tiles.pxd``).
    """
    cdef floating ce[TILE]
    cdef floating sc[TILE]
    cdef floating sh[TILE]
    cdef floating am[TILE]
    cdef Py_ssize_t i, j, tile, j0, width
    cdef floating v, a
    cdef const floating* xrow
    cdef floating* orow
    for tile in range(n_tiles(n_cols)):
        j0 = tile * TILE
        width = tile_width(j0, n_cols)
        for j in range(width):
            ce[j] = center[j0 + j]
            sc[j] = scale[j0 + j]
            sh[j] = shift[j0 + j]
            am[j] = absmax[j0 + j]
        for i in range(n_rows):
            xrow = x + i * n_cols + j0
            orow = out + i * n_cols + j0
            for j in range(width):
                v = xrow[j]
                orow[j] = (v - ce[j]) * sc[j] + sh[j]
                # Compare-and-select, one SIMD max: NaN compares false and
                # is skipped, infinity wins.
                a = fabs(v)
                am[j] = a if a > am[j] else am[j]
        for j in range(width):
            absmax[j0 + j] = am[j]


cdef void cabsmax_columns(const floating* x, Py_ssize_t n_rows,
                          Py_ssize_t n_cols, floating* absmax) noexcept nogil:
    """``absmax[j] = max(absmax[j], max_i |x[i, j]|)``, NaN ignored."""
    cdef floating am[TILE]
    cdef Py_ssize_t i, j, tile, j0, width
    cdef floating a
    cdef const floating* xrow
    for tile in range(n_tiles(n_cols)):
        j0 = tile * TILE
        width = tile_width(j0, n_cols)
        for j in range(width):
            am[j] = absmax[j0 + j]
        for i in range(n_rows):
            xrow = x + i * n_cols + j0
            for j in range(width):
                a = fabs(xrow[j])
                am[j] = a if a > am[j] else am[j]
        for j in range(width):
            absmax[j0 + j] = am[j]


# ---------------------------------------------------------------------------
# def wrappers: check everything, then call the kernels without the GIL.


def affine_columns(const floating[:, ::1] x, const floating[::1] center,
                   const floating[::1] scale, const floating[::1] shift,
                   floating[:, ::1] out, Py_ssize_t block_rows=0, int n_threads=1,
                   unsigned char[::1] may_overflow=None):
    """``out = (x - center) * scale + shift`` column by column; return whether
    ``x`` has inf.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_cols), float32 or float64, C-contiguous
    center, scale, shift : ndarray of shape (n_cols,), same dtype as ``x``
    out : ndarray of shape (n_rows, n_cols), same dtype as ``x``, written
        May be ``x`` itself for an in-place update. NaN in ``x`` stays NaN.
    block_rows : int, default=0
        Rows per block of work (0: one block).
    n_threads : int, default=1
        Threads that share the blocks.
    may_overflow : ndarray of shape (n_cols,), uint8, default=None
        If given, set to 1 for the columns whose largest ``|x|`` lets
        ``x - center`` or the result pass the dtype's largest number (the
        value is then ``+-inf`` where it did), 0 for the others.

    Returns
    -------
    has_inf : bool
        True when ``x`` holds ``+inf`` or ``-inf`` (``out`` is then written
        anyway; the caller decides whether to raise).
    """
    cdef Py_ssize_t n_rows = x.shape[0], n_cols = x.shape[1]
    if (center.shape[0] != n_cols or scale.shape[0] != n_cols
            or shift.shape[0] != n_cols):
        raise ValueError(
            f"center, scale and shift must have length {n_cols}, got "
            f"{center.shape[0]}, {scale.shape[0]} and {shift.shape[0]}")
    if out.shape[0] != n_rows or out.shape[1] != n_cols:
        raise ValueError(
            f"out has shape ({out.shape[0]}, {out.shape[1]}), expected "
            f"({n_rows}, {n_cols})")
    if may_overflow is not None and may_overflow.shape[0] != n_cols:
        raise ValueError(
            f"may_overflow must have length {n_cols}, got {may_overflow.shape[0]}")
    if n_rows == 0 or n_cols == 0:
        if may_overflow is not None:
            may_overflow[:] = 0
        return False
    return _run_blocks(&x[0, 0], &out[0, 0], n_rows, n_cols, &center[0],
                       &scale[0], &shift[0], block_rows, n_threads,
                       NULL if may_overflow is None else &may_overflow[0])


def has_infinity(const floating[:, ::1] x, Py_ssize_t block_rows=0,
                 int n_threads=1):
    """Whether the C-contiguous float array ``x`` holds ``+inf`` or ``-inf``.

    NaN does not count. One vectorized pass, no temporary of ``x``'s size;
    ``block_rows`` and ``n_threads`` as in :func:`affine_columns`.
    """
    cdef Py_ssize_t n_rows = x.shape[0], n_cols = x.shape[1]
    if n_rows == 0 or n_cols == 0:
        return False
    return _run_blocks(&x[0, 0], NULL, n_rows, n_cols, NULL, NULL, NULL,
                       block_rows, n_threads, NULL)


def unweighted_rows_hold_infinity(const floating[:, ::1] x,
                                  const floating[::1] sample_weight):
    """Whether a row of ``x`` whose weight is 0 holds ``+inf`` or ``-inf``.

    The statistics kernels skip a block of rows of weight 0 without reading
    it; this reads those rows only, in place.
    """
    cdef bint found
    if sample_weight.shape[0] != x.shape[0]:
        raise ValueError("sample_weight must have one entry per row of x")
    with nogil:
        found = _unweighted_rows_hold_infinity(x, sample_weight)
    return found


cdef bint _unweighted_rows_hold_infinity(const floating[:, ::1] x,
                                         const floating[::1] sample_weight
                                         ) noexcept nogil:
    cdef Py_ssize_t i, j, n_cols = x.shape[1]
    cdef const floating* row
    cdef floating largest, v
    if n_cols == 0:
        return False
    for i in range(x.shape[0]):
        if sample_weight[i] == 0:
            # The row's largest |x| (NaN left out), then one test: a loop
            # without an early exit vectorizes.
            row = &x[i, 0]
            largest = 0
            for j in range(n_cols):
                v = fabs(row[j])
                largest = v if v > largest else largest
            if largest == INFINITY:
                return True
    return False


cdef bint _run_blocks(const floating* x, floating* out, Py_ssize_t n_rows,
                      Py_ssize_t n_cols, const floating* center,
                      const floating* scale, const floating* shift,
                      Py_ssize_t block_rows, int n_threads,
                      unsigned char* may_overflow) except -1:
    """The affine map (``out`` not NULL) or the scan for infinity of every
    block of rows, the team taking blocks in turn; whether ``x`` has inf.
    ``may_overflow``, when not NULL, gets the affine map's flags (see
    :func:`affine_columns`)."""
    if block_rows < 0 or n_threads < 1:
        raise ValueError("block_rows must be >= 0 and n_threads >= 1")
    if block_rows == 0 or block_rows > n_rows:
        block_rows = n_rows
    cdef Py_ssize_t b, n_blocks = (n_rows + block_rows - 1) // block_rows
    n_threads = <int> min(<Py_ssize_t> n_threads, n_blocks)
    # Each block's per-column largest |x|.
    absmax_arr = np.zeros((n_blocks, n_cols),
                          dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] absmax = absmax_arr
    with nogil:
        if n_threads == 1:   # never starts an OpenMP team (see sklearn_bn._threads)
            for b in range(n_blocks):
                _block(x, out, n_rows, n_cols, center, scale, shift,
                       b * block_rows, block_rows, &absmax[b, 0])
        else:
            for b in prange(n_blocks, schedule="static", num_threads=n_threads):
                _block(x, out, n_rows, n_cols, center, scale, shift,
                       b * block_rows, block_rows, &absmax[b, 0])
    if may_overflow != NULL:
        _flag_overflow(absmax, center, scale, shift, may_overflow)
    return _has_infinity(absmax)


cdef inline void _block(const floating* x, floating* out, Py_ssize_t n_rows,
                        Py_ssize_t n_cols, const floating* center,
                        const floating* scale, const floating* shift,
                        Py_ssize_t start, Py_ssize_t block_rows,
                        floating* absmax) noexcept nogil:
    cdef Py_ssize_t rows = min(block_rows, n_rows - start)
    if out != NULL:
        caffine_columns(x + start * n_cols, out + start * n_cols, rows, n_cols,
                        center, scale, shift, absmax)
    else:
        cabsmax_columns(x + start * n_cols, rows, n_cols, absmax)


cdef void _flag_overflow(const floating[:, ::1] absmax, const floating* center,
                         const floating* scale, const floating* shift,
                         unsigned char* may_overflow) noexcept:
    """Flag the columns whose bound on ``|x - center|`` or on
    ``|(x - center) * scale + shift|`` passes the dtype's largest number.

    The bounds are computed in double, below the largest number by a margin
    (2**-20 of it) that covers the rounding of the kernel and of the bounds;
    in float64 a bound that overflows is inf and flags its column. NaN
    coefficients (a feature without values) flag nothing.
    """
    cdef double limit = (FLT_MAX if floating is float else DBL_MAX) * (1 - 2.0 ** -20)
    cdef double largest, reach
    cdef Py_ssize_t b, j
    for j in range(absmax.shape[1]):
        largest = 0
        for b in range(absmax.shape[0]):
            largest = max(largest, <double> absmax[b, j])
        reach = largest + fabs(center[j])
        may_overflow[j] = (
            reach > limit or reach * fabs(scale[j]) + fabs(shift[j]) > limit)


cdef bint _has_infinity(const floating[:, ::1] absmax) noexcept:
    cdef Py_ssize_t b, j
    for b in range(absmax.shape[0]):
        for j in range(absmax.shape[1]):
            if absmax[b, j] == INFINITY:
                return True
    return False
