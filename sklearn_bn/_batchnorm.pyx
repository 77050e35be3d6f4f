"""Batch-normalization kernels, fused with the hidden-layer activation.

Three layers, as in scikit-learn's ``_loss.pyx``: ``c*`` functions do the math
on raw C-contiguous blocks without the GIL (the training engine calls them
directly); ``def`` wrappers check shapes, dtypes and contiguity, release the
GIL and call them; the estimators validate user input before either.

How the kernels are written, and why
------------------------------------
* Memory traffic. The data are streamed row after row, the access pattern
  hardware prefetchers follow best: the forward pass reads ``z`` twice
  (statistics, then normalization) and writes ``a``; the backward pass reads
  ``da``, ``a`` and ``z`` twice (reductions, then ``dz``) and writes ``dz``.
  Reductions run over tiles of columns (``_tiles.pxd``) of a block of rows
  that fits in L2, so that a block read a second time comes from cache.
* Vectorization. Hot loops keep their accumulators in local arrays (which
  cannot alias the caller's buffers, so the compiler vectorizes without
  runtime alias checks) or have a single store stream, and never load under a
  condition (``d = da[j]; g = d if a[j] > 0 else 0`` is a mask, where
  ``g = da[j] if a[j] > 0 else 0`` is a branch). The row passes are compiled
  once per activation (the tags of ``_activations.pxd``), so that it is a
  constant inside their loops; :func:`cbn_act_forward_train` and
  :func:`cbn_act_backward` turn the activation's code into its tag.
* Instruction sets. With GCC on x86-64 Linux the hot functions are compiled
  twice, for the baseline (SSE2) and for x86-64-v3 (AVX2, FMA), and the
  dynamic loader picks the one the CPU supports (``target_clones``, see
  ``_simd.pxd``).

Numerics: statistics are accumulated in double precision whatever the input
dtype, from sums over runs of 32 rows formed in the input's precision (in
float32, relative errors of order 1e-7 that do not grow with the number of
rows). Each row block is reduced around a shift (the running mean of the
previous blocks; the mean of its first rows for the first block) and merged with
Chan et al.'s pairwise update (``chan_merge``, the package's one merge of
statistics); a block whose shift turns out to be far from its mean (which
would cost accuracy) is reduced again, from cache, around its own mean. This
is as accurate as a two-pass algorithm and reads the data once.
Normalization computes ``(z - center) * scale + shift`` with ``center`` the
mean rounded to the working precision and its rounding error folded into
``shift``, so that float32 stays accurate when the mean is large compared to
the spread.
"""
from libc.math cimport sqrt, NAN
from libc.string cimport memcpy, memset
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cython cimport floating
from cython.parallel cimport prange, threadid

import numpy as np
cimport numpy as cnp

from sklearn_bn._activations cimport (
    activation_t, act_forward, act_gradient, act_code, reads_input,
    reads_output, Identity, Relu, Tanh, Logistic, IDENTITY, RELU, TANH, LOGISTIC)
from sklearn_bn._simd cimport inline_void, simd_void
from sklearn_bn._team cimport MAX_THREADS
from sklearn_bn._tiles cimport TILE, n_tiles, tile_width

cnp.import_array()


cdef enum:
    # Bytes of input per row block of the reductions: a block reduced a
    # second time is read from L2, not from memory.
    BLOCK_BYTES = 131072
    # Rows per tile of the backward reductions (even).
    SUM_ROWS = 32
    # Rows per tile of the elementwise passes when the block is wider than
    # one tile (the local coefficients are reloaded per tile).
    TILE_ROWS = 32


cdef inline Py_ssize_t _block_rows(Py_ssize_t row_bytes) noexcept nogil:
    return max(1, BLOCK_BYTES // max(row_bytes, 1))


# ---------------------------------------------------------------------------
# Statistics.


cdef simd_void _stats(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                      Py_ssize_t stride, const floating* sample_weight,
                      double* mean_out,
                      double* var_out, double* wsum_out,
                      double* scratch) noexcept nogil:
    """Mean, ddof=0 variance and weight sum of the columns of ``x``.

    Rows are reduced in blocks (tiles of columns) around a shift ``c``: sums
    of ``w * (x - c)`` and ``w * (x - c) ** 2`` (:func:`_tile_sums`), merged
    with :func:`chan_merge`. The shift of the first block is the mean of its
    first four rows; later blocks shift by the running mean, so the block sums
    do not cancel; a tile whose shift was far from its own mean (outlying
    first rows, drifting data) is summed again, from cache, around its mean.
    Running means are kept relative to the first block's shift ``ref`` so
    that their rounding is relative to the spread of the data, not to its
    offset. Rows start every ``stride`` elements. ``scratch``: ``3 * n_cols``
    doubles.
    """
    cdef double* ref = scratch
    cdef double* mean = scratch + n_cols     # running mean - ref
    cdef double* m2 = scratch + 2 * n_cols
    cdef double center[TILE]
    cdef floating cf[TILE]
    cdef double s1[TILE]
    cdef double s2[TILE]
    cdef Py_ssize_t block_rows = _block_rows(n_cols * <Py_ssize_t> sizeof(floating))
    cdef Py_ssize_t start, stop, i, j, tile, j0, width
    cdef int attempt
    cdef bint redo, first = True
    cdef double bw, inv, mb, m2b, delta
    cdef double wtot = 0

    start = 0
    while start < n_rows:
        stop = min(start + block_rows, n_rows)
        if sample_weight != NULL:
            bw = 0
            for i in range(start, stop):
                bw += sample_weight[i]
        else:
            bw = stop - start
        if bw == 0:
            start = stop
            continue
        inv = 1 / bw
        for tile in range(n_tiles(n_cols)):
            j0 = tile * TILE
            width = tile_width(j0, n_cols)
            if first:
                _first_rows_mean(x + j0, start, stop, stride, width, center)
            else:
                for j in range(width):
                    center[j] = ref[j0 + j] + mean[j0 + j]
            for attempt in range(2):
                # The shift in the working precision, so that x - c is one
                # rounding (exact when x is within a factor 2 of c).
                for j in range(width):
                    cf[j] = <floating> center[j]
                    center[j] = cf[j]
                _tile_sums(x + j0, start, stop, stride, width, sample_weight, cf,
                           s1, s2)
                if attempt == 1 or stop - start == 1:
                    break
                # M2 = s2 - s1**2 / bw loses accuracy when s1**2 / bw is close
                # to s2, i.e. when the shift is far from the block mean: the
                # relative error of M2 grows by s2 / M2, kept below 16.
                redo = False
                for j in range(width):
                    if s1[j] * s1[j] > 0.9375 * bw * s2[j]:
                        redo = True
                if not redo:
                    break
                for j in range(width):
                    center[j] += s1[j] * inv
            if first:
                for j in range(width):
                    ref[j0 + j] = center[j]
                    mb = s1[j] * inv
                    mean[j0 + j] = mb
                    m2[j0 + j] = max(s2[j] - s1[j] * mb, 0.0)
            else:
                for j in range(width):
                    mb = s1[j] * inv
                    m2b = max(s2[j] - s1[j] * mb, 0.0)
                    # block mean - running mean; (center - ref) - mean is the
                    # exact, small rounding error of center = ref + mean.
                    delta = ((center[j] - ref[j0 + j]) - mean[j0 + j]) + mb
                    chan_merge(&mean[j0 + j], &m2[j0 + j], wtot, bw, delta, m2b)
        first = False
        wtot = wtot + bw
        start = stop

    for j in range(n_cols):
        if wtot > 0:
            mean_out[j] = ref[j] + mean[j]
            var_out[j] = max(m2[j] / wtot, 0.0)
        else:
            mean_out[j] = 0
            var_out[j] = 0
        wsum_out[j] = wtot


cdef inline inline_void _first_rows_mean(const floating* x, Py_ssize_t start,
                                         Py_ssize_t stop, Py_ssize_t stride,
                                         Py_ssize_t width,
                                         double* center) noexcept nogil:
    """The mean of (up to) the first four rows of the block: close enough to
    the block mean that a redo is rare."""
    cdef Py_ssize_t i, j, n_first = min(<Py_ssize_t> 4, stop - start)
    cdef const floating* row
    for j in range(width):
        center[j] = 0
    for i in range(start, start + n_first):
        row = x + i * stride
        for j in range(width):
            center[j] += row[j]
    for j in range(width):
        center[j] *= 1.0 / n_first


cdef inline inline_void _tile_sums(const floating* x, Py_ssize_t start,
                                   Py_ssize_t stop, Py_ssize_t stride,
                                   Py_ssize_t width,
                                   const floating* sample_weight,
                                   const floating* cf, double* s1,
                                   double* s2) noexcept nogil:
    """``s1 = sum w * (x - c)`` and ``s2 = sum w * (x - c) ** 2`` over rows
    ``[start, stop)`` of the ``width`` columns at ``x``, shift ``cf``.

    Deviations ``x - c`` and their sums over runs of 32 rows are formed in
    the working precision (float32: relative errors of order 1e-7, which do
    not grow with the number of rows), then accumulated in double. Eight
    (weighted: four) rows at a time.
    """
    cdef floating f1[TILE]
    cdef floating f2[TILE]
    cdef Py_ssize_t i, j, run_stop
    cdef floating c, d0, d1, d2, d3, d4, d5, d6, d7, w0, w1, w2, w3
    cdef const floating* row0
    cdef const floating* row1
    cdef const floating* row2
    cdef const floating* row3
    cdef const floating* row4
    cdef const floating* row5
    cdef const floating* row6
    cdef const floating* row7
    for j in range(width):
        s1[j] = 0
        s2[j] = 0
    i = start
    while sample_weight == NULL and i + 7 < stop:
        run_stop = min(i + 32, stop)
        for j in range(width):
            f1[j] = 0
            f2[j] = 0
        while i + 7 < run_stop:
            row0 = x + i * stride
            row1 = row0 + stride
            row2 = row1 + stride
            row3 = row2 + stride
            row4 = row3 + stride
            row5 = row4 + stride
            row6 = row5 + stride
            row7 = row6 + stride
            for j in range(width):
                c = cf[j]
                d0 = row0[j] - c
                d1 = row1[j] - c
                d2 = row2[j] - c
                d3 = row3[j] - c
                d4 = row4[j] - c
                d5 = row5[j] - c
                d6 = row6[j] - c
                d7 = row7[j] - c
                f1[j] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
                f2[j] += (((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))
                          + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7)))
            i += 8
        for j in range(width):
            s1[j] += f1[j]
            s2[j] += f2[j]
    while i + 3 < stop:
        row0 = x + i * stride
        row1 = row0 + stride
        row2 = row1 + stride
        row3 = row2 + stride
        if sample_weight == NULL:
            for j in range(width):
                c = cf[j]
                d0 = row0[j] - c
                d1 = row1[j] - c
                d2 = row2[j] - c
                d3 = row3[j] - c
                s1[j] += (d0 + d1) + (d2 + d3)
                s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        else:
            w0 = sample_weight[i]
            w1 = sample_weight[i + 1]
            w2 = sample_weight[i + 2]
            w3 = sample_weight[i + 3]
            for j in range(width):
                c = cf[j]
                d0 = row0[j] - c
                d1 = row1[j] - c
                d2 = row2[j] - c
                d3 = row3[j] - c
                s1[j] += (w0 * d0 + w1 * d1) + (w2 * d2 + w3 * d3)
                s2[j] += ((w0 * (d0 * d0) + w1 * (d1 * d1))
                          + (w2 * (d2 * d2) + w3 * (d3 * d3)))
        i += 4
    while i < stop:
        row0 = x + i * stride
        w0 = sample_weight[i] if sample_weight != NULL else 1
        for j in range(width):
            d0 = row0[j] - cf[j]
            s1[j] += w0 * d0
            s2[j] += w0 * (d0 * d0)
        i += 1


cdef simd_void _stats_nan(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                          const floating* sample_weight, double* mean_out,
                          double* var_out, double* wsum_out,
                          double* scratch) noexcept nogil:
    """:func:`_stats` skipping NaN: each column has its own weight sum.

    Two passes per tile (the second from cache) and :func:`chan_merge`. The
    second pass also sums the deviations from the first pass's mean, which
    corrects that mean for the rounding of its sum (the corrected two-pass
    algorithm of Chan, Golub and LeVeque): a constant column gets its value
    exactly and variance 0, not a variance of the order of the mean's
    rounding error. ``scratch``: ``3 * n_cols`` doubles.
    """
    cdef double* mean = scratch
    cdef double* m2 = scratch + n_cols
    cdef double* wt = scratch + 2 * n_cols
    cdef double bw_[TILE]
    cdef double bmean[TILE]
    cdef double bm2[TILE]
    cdef double bs1[TILE]
    cdef Py_ssize_t block_rows = _block_rows(n_cols * <Py_ssize_t> sizeof(floating))
    cdef Py_ssize_t start, stop, i, j, tile, j0, width
    cdef double w, v, d, bw, keep, correction
    cdef const floating* row

    memset(scratch, 0, 3 * n_cols * sizeof(double))
    start = 0
    while start < n_rows:
        stop = min(start + block_rows, n_rows)
        for tile in range(n_tiles(n_cols)):
            j0 = tile * TILE
            width = tile_width(j0, n_cols)
            for j in range(width):
                bw_[j] = 0
                bmean[j] = 0
                bm2[j] = 0
                bs1[j] = 0
            for i in range(start, stop):
                row = x + i * n_cols + j0
                w = sample_weight[i] if sample_weight != NULL else 1.0
                for j in range(width):
                    # Selects of computed values only: vectorizable.
                    v = row[j]
                    keep = w if v == v else 0.0
                    v = v if v == v else 0.0
                    bw_[j] += keep
                    bmean[j] += w * v
            for j in range(width):
                bmean[j] = bmean[j] / bw_[j] if bw_[j] != 0 else 0
            for i in range(start, stop):
                row = x + i * n_cols + j0
                w = sample_weight[i] if sample_weight != NULL else 1.0
                for j in range(width):
                    v = row[j]
                    v = v if v == v else bmean[j]
                    d = v - bmean[j]
                    bs1[j] += w * d
                    bm2[j] += w * (d * d)
            for j in range(width):
                bw = bw_[j]
                if bw == 0:
                    continue
                correction = bs1[j] / bw
                bmean[j] += correction
                bm2[j] = max(bm2[j] - bs1[j] * correction, 0.0)
                chan_merge(&mean[j0 + j], &m2[j0 + j], wt[j0 + j], bw,
                           bmean[j] - mean[j0 + j], bm2[j])
                wt[j0 + j] += bw
        start = stop

    for j in range(n_cols):
        if wt[j] > 0:
            mean_out[j] = mean[j]
            var_out[j] = max(m2[j] / wt[j], 0.0)
        else:
            mean_out[j] = 0
            var_out[j] = 0
        wsum_out[j] = wt[j]


cdef void cbatch_stats(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                       const floating* sample_weight, bint ignore_nan,
                       double* mean_out, double* var_out, double* wsum_out,
                       double* scratch) noexcept nogil:
    """Column means and ddof=0 variances of ``x``, optionally weighted.

    ``wsum_out[j]`` receives the sum of the weights of the rows that count in
    column ``j`` (all rows, or the non-NaN ones when ``ignore_nan``). Columns
    with no weight get mean 0 and variance 0. ``scratch`` holds at least
    ``3 * n_cols`` doubles. ``n_rows`` may be 0.
    """
    if ignore_nan:
        _stats_nan(x, n_rows, n_cols, sample_weight, mean_out, var_out,
                   wsum_out, scratch)
    else:
        _stats(x, n_rows, n_cols, n_cols, sample_weight, mean_out, var_out,
               wsum_out, scratch)


cdef void _merge_blocks(const double[:, ::1] blocks, Py_ssize_t n_cols,
                        double* mean, double* var, double* wsum) noexcept nogil:
    """The statistics of the blocks (mean, variance, weight sum: ``n_cols``
    each per row of ``blocks``) merged in order with :func:`chan_merge`,
    column by column (a column may have no weight in some blocks)."""
    cdef Py_ssize_t b, j
    cdef double wb
    cdef const double* block = &blocks[0, 0]
    if blocks.shape[0] == 1:   # exactly the one block's statistics
        memcpy(mean, block, n_cols * sizeof(double))
        memcpy(var, block + n_cols, n_cols * sizeof(double))
        memcpy(wsum, block + 2 * n_cols, n_cols * sizeof(double))
        return
    for b in range(blocks.shape[0]):
        block = &blocks[b, 0]
        for j in range(n_cols):
            wb = block[2 * n_cols + j]
            if wb == 0:
                continue
            # var holds the sum of squared deviations until the end.
            chan_merge(&mean[j], &var[j], wsum[j], wb, block[j] - mean[j],
                       block[n_cols + j] * wb)
            wsum[j] += wb
    for j in range(n_cols):
        var[j] = max(var[j] / wsum[j], 0.0) if wsum[j] > 0 else 0.0


# ---------------------------------------------------------------------------
# Forward.


cdef inline floating _pre_activation(floating u, floating scale,
                                     floating shift) noexcept nogil:
    """``u * scale + shift`` for ``u = z - center``: the normalized, scaled
    and shifted value that enters the activation. The backward pass
    recomputes ReLU's mask ``y > 0`` with it, so the forward and the backward
    must round it alike: both take it from here."""
    return u * scale + shift


cdef simd_void _affine(const floating* gamma, const floating* beta,
                       const double* mean, const double* var, double epsilon,
                       Py_ssize_t n, floating* center, floating* scale,
                       floating* shift) noexcept nogil:
    """Coefficients of ``(z - center) * scale + shift``.

    The forward and the backward pass both take them from here, so that the
    backward pass recomputes the forward's ReLU mask exactly. The square
    roots go to a local array first, so that the loops vectorize.
    """
    cdef double std[TILE]
    cdef Py_ssize_t j, tile, j0, width
    cdef double s
    for tile in range(n_tiles(n)):
        j0 = tile * TILE
        width = tile_width(j0, n)
        for j in range(width):
            std[j] = sqrt(var[j0 + j] + epsilon)
        for j in range(width):
            center[j0 + j] = <floating> mean[j0 + j]
        for j in range(width):
            s = gamma[j0 + j] / std[j]
            scale[j0 + j] = <floating> s
            # beta - (mean - center) * s: center's rounding error goes here.
            shift[j0 + j] = <floating> (beta[j0 + j]
                                        + (center[j0 + j] - mean[j0 + j]) * s)


cdef simd_void _normalize_rows(const floating* z, floating* a_out, const Panel* panel,
                               const floating* center_in, const floating* scale_in,
                               const floating* shift_in,
                               activation_t* act) noexcept nogil:
    """``a_out = act((z - center) * scale + shift)`` on a panel (rows of
    ``z`` ``panel.z_ld`` apart, of ``a_out`` ``panel.a_ld``); ``a_out`` may
    alias ``z`` (with equal distances). The coefficients are copied to local
    arrays (tiles of ``TILE_ROWS`` rows by one tile of columns; all rows when
    the panel is one tile wide), so that the loop needs no runtime alias
    checks.
    """
    cdef floating center[TILE]
    cdef floating scale[TILE]
    cdef floating shift[TILE]
    cdef Py_ssize_t n_rows = panel.n_rows, n_cols = panel.n_cols
    cdef Py_ssize_t i, j, tile, j0, width, start, stop
    cdef Py_ssize_t block_rows = n_rows if n_cols <= TILE else TILE_ROWS
    cdef const floating* zrow
    cdef floating* arow
    start = 0
    while start < n_rows:
        stop = min(start + block_rows, n_rows)
        for tile in range(n_tiles(n_cols)):
            j0 = tile * TILE
            width = tile_width(j0, n_cols)
            for j in range(width):
                center[j] = center_in[j0 + j]
                scale[j] = scale_in[j0 + j]
                shift[j] = shift_in[j0 + j]
            for i in range(start, stop):
                zrow = z + i * panel.z_ld + j0
                arow = a_out + i * panel.a_ld + j0
                for j in range(width):
                    arow[j] = act_forward(
                        _pre_activation(zrow[j] - center[j], scale[j], shift[j]), act)
        start = stop


cdef void cbn_act_forward_train(const floating* z, floating* a_out, const Panel* panel,
                                const floating* gamma, const floating* beta,
                                double epsilon, int act, double* mean_out,
                                double* var_out, double* scratch) noexcept nogil:
    """``a = act(gamma * (z - mean) / sqrt(var + eps) + beta)`` on batch stats.

    On a panel (``z`` rows ``panel.z_ld`` apart, ``a_out`` rows
    ``panel.a_ld`` apart; ``a_out`` may alias ``z`` with equal distances),
    the statistics weighted by ``panel.sample_weight``. Writes the batch mean
    and (ddof=0) variance, which the backward pass needs together with ``z``
    and ``a``. ``scratch`` holds at least ``7 * n_cols`` doubles. An unknown
    ``act`` writes NaN.
    """
    cdef Py_ssize_t n = panel.n_cols
    _stats(z, panel.n_rows, n, panel.z_ld, <const floating*> panel.sample_weight,
           mean_out, var_out, scratch + 3 * n, scratch)
    cbn_act_normalize(z, a_out, panel, gamma, beta, mean_out, var_out, epsilon, act,
                      scratch)


cdef void cbn_act_normalize(const floating* z, floating* a_out, const Panel* panel,
                            const floating* gamma, const floating* beta,
                            const double* mean, const double* var, double epsilon,
                            int act, double* scratch) noexcept nogil:
    """The second half of :func:`cbn_act_forward_train`: ``a`` from given
    batch statistics (those of more rows than the panel's, when threads
    share the rows of a batch). ``scratch``: ``7 * n_cols`` doubles."""
    cdef Py_ssize_t n = panel.n_cols
    cdef floating* center = <floating*> (scratch + 4 * n)
    cdef floating* scale = <floating*> (scratch + 5 * n)
    cdef floating* shift = <floating*> (scratch + 6 * n)
    _affine(gamma, beta, mean, var, epsilon, n, center, scale, shift)
    if act == IDENTITY:
        _normalize_rows(z, a_out, panel, center, scale, shift, <Identity*> NULL)
    elif act == RELU:
        _normalize_rows(z, a_out, panel, center, scale, shift, <Relu*> NULL)
    elif act == TANH:
        _normalize_rows(z, a_out, panel, center, scale, shift, <Tanh*> NULL)
    elif act == LOGISTIC:
        _normalize_rows(z, a_out, panel, center, scale, shift, <Logistic*> NULL)
    else:
        _fill_nan(a_out, panel.n_rows, n, panel.a_ld)


cdef void cbatch_stats_rows(const floating* z, const Panel* panel, double* mean_out,
                            double* var_out, double* weight_sum_out,
                            double* scratch) noexcept nogil:
    """The first half of :func:`cbn_act_forward_train`: the panel's weighted
    mean, (ddof=0) variance and weight sum (one number), to merge with
    other rows' (:func:`chan_merge`). ``scratch``: ``4 * n_cols`` doubles."""
    cdef Py_ssize_t n = panel.n_cols
    _stats(z, panel.n_rows, n, panel.z_ld, <const floating*> panel.sample_weight,
           mean_out, var_out, scratch + 3 * n, scratch)
    weight_sum_out[0] = scratch[3 * n] if n > 0 else 0

cdef void _fill_nan(floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                    Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(n_rows):
        for j in range(n_cols):
            x[i * ld + j] = NAN


# ---------------------------------------------------------------------------
# Backward.


cdef simd_void _backward_sums(const floating* da, const floating* a,
                              const floating* z, const Panel* panel,
                              const floating* center_in,
                              const floating* scale_in,
                              const floating* shift_in,
                              double* sum_g, double* sum_gz,
                              activation_t* act) noexcept nogil:
    """``sum_g = sum_i g_i``, ``sum_gz = sum_i g_i * (z_i - center)``.

    ``g = da * act'(y)``, on a panel (rows of ``da`` ``panel.ld`` apart, of
    ``z`` ``panel.z_ld``, of ``a`` ``panel.a_ld``). ReLU's mask ``y > 0`` is
    recomputed from ``z`` with :func:`_pre_activation`, as the forward pass
    computed ``y`` (the same rounding, so the same mask as ``a > 0``): one
    array fewer to read. Tanh and logistic take their derivative from ``a``.
    Tiles of ``SUM_ROWS`` rows by one tile of columns, two rows at a time
    (more streams than that outrun the hardware prefetchers), accumulated in
    the working precision in local arrays (float32: relative errors of order
    1e-7, which do not grow with the number of rows), then added to the
    double outputs.
    """
    cdef floating acc_g[TILE]
    cdef floating acc_gz[TILE]
    cdef floating center[TILE]
    cdef floating scale[TILE]
    cdef floating shift[TILE]
    cdef Py_ssize_t n_rows = panel.n_rows, n_cols = panel.n_cols
    cdef Py_ssize_t stride = panel.ld, z_stride = panel.z_ld, a_stride = panel.a_ld
    cdef Py_ssize_t block_rows = SUM_ROWS
    cdef Py_ssize_t start, stop, i, j, tile, j0, width
    cdef floating g0, g1, u0, u1, y0 = 0, y1 = 0, o0 = 0, o1 = 0
    cdef const floating* da0
    cdef const floating* da1
    cdef const floating* a0
    cdef const floating* a1
    cdef const floating* z0
    cdef const floating* z1

    for j in range(n_cols):
        sum_g[j] = 0
        sum_gz[j] = 0
    start = 0
    while start < n_rows:
        stop = min(start + block_rows, n_rows)
        for tile in range(n_tiles(n_cols)):
            j0 = tile * TILE
            width = tile_width(j0, n_cols)
            for j in range(width):
                acc_g[j] = 0
                acc_gz[j] = 0
            if start == 0 or n_cols > TILE:
                for j in range(width):
                    center[j] = center_in[j0 + j]
                    scale[j] = scale_in[j0 + j]
                    shift[j] = shift_in[j0 + j]
            i = start
            while i + 1 < stop:
                da0 = da + i * stride + j0
                da1 = da0 + stride
                z0 = z + i * z_stride + j0
                z1 = z0 + z_stride
                a0 = a + i * a_stride + j0 if reads_output(act) else NULL
                a1 = a0 + a_stride if reads_output(act) else NULL
                for j in range(width):
                    # Loads only of what the activation reads (a mask of
                    # computed values, not a load under a condition).
                    u0 = z0[j] - center[j]
                    u1 = z1[j] - center[j]
                    if reads_input(act):
                        y0 = _pre_activation(u0, scale[j], shift[j])
                        y1 = _pre_activation(u1, scale[j], shift[j])
                    if reads_output(act):
                        o0 = a0[j]
                        o1 = a1[j]
                    g0 = act_gradient(da0[j], y0, o0, act)
                    g1 = act_gradient(da1[j], y1, o1, act)
                    acc_g[j] += g0 + g1
                    acc_gz[j] += g0 * u0 + g1 * u1
                i += 2
            while i < stop:
                da0 = da + i * stride + j0
                z0 = z + i * z_stride + j0
                a0 = a + i * a_stride + j0 if reads_output(act) else NULL
                for j in range(width):
                    u0 = z0[j] - center[j]
                    if reads_input(act):
                        y0 = _pre_activation(u0, scale[j], shift[j])
                    if reads_output(act):
                        o0 = a0[j]
                    g0 = act_gradient(da0[j], y0, o0, act)
                    acc_g[j] += g0
                    acc_gz[j] += g0 * u0
                i += 1
            for j in range(width):
                sum_g[j0 + j] += acc_g[j]
                sum_gz[j0 + j] += acc_gz[j]
        start = stop


cdef simd_void _backward_dz(const floating* da, floating* dz_out, const floating* a,
                            const floating* z, const Panel* panel,
                            const floating* center_in, const floating* scale_in,
                            const floating* shift_in, const floating* q_in,
                            const floating* r_in, activation_t* act) noexcept nogil:
    """``dz = scale * g - w * (q + r * (z - center))``, row after row, with
    ``g`` as in :func:`_backward_sums` and ``w`` the rows' weights (1 when
    unweighted). ``dz_out`` may alias ``da`` (each element is read before it
    is written). Coefficients in local arrays, as in :func:`_normalize_rows`.
    """
    cdef floating center[TILE]
    cdef floating scale[TILE]
    cdef floating shift[TILE]
    cdef floating q[TILE]
    cdef floating r[TILE]
    cdef Py_ssize_t n_rows = panel.n_rows, n_cols = panel.n_cols
    cdef Py_ssize_t i, j, tile, j0, width, start, stop
    cdef Py_ssize_t block_rows = n_rows if n_cols <= TILE else TILE_ROWS
    cdef const floating* sample_weight = <const floating*> panel.sample_weight
    cdef floating g, u, y = 0, o = 0, w = 1
    cdef const floating* darow
    cdef const floating* arow
    cdef const floating* zrow
    cdef floating* dzrow
    start = 0
    while start < n_rows:
        stop = min(start + block_rows, n_rows)
        for tile in range(n_tiles(n_cols)):
            j0 = tile * TILE
            width = tile_width(j0, n_cols)
            for j in range(width):
                center[j] = center_in[j0 + j]
                scale[j] = scale_in[j0 + j]
                shift[j] = shift_in[j0 + j]
                q[j] = q_in[j0 + j]
                r[j] = r_in[j0 + j]
            for i in range(start, stop):
                darow = da + i * panel.ld + j0
                arow = a + i * panel.a_ld + j0 if reads_output(act) else NULL
                zrow = z + i * panel.z_ld + j0
                dzrow = dz_out + i * panel.ld + j0
                if sample_weight != NULL:
                    w = sample_weight[i]
                # w = 1 when unweighted: the multiplication is exact.
                for j in range(width):
                    u = zrow[j] - center[j]
                    if reads_input(act):
                        y = _pre_activation(u, scale[j], shift[j])
                    if reads_output(act):
                        o = arow[j]
                    g = act_gradient(darow[j], y, o, act)
                    dzrow[j] = scale[j] * g - w * (q[j] + r[j] * u)
        start = stop


cdef simd_void _backward_coefficients(const Statistics* stats, Py_ssize_t n,
                                      const floating* center, const floating* scale,
                                      const double* sum_g, const double* sum_gz,
                                      floating* dgamma_out, floating* dbeta_out,
                                      floating* q_out, floating* r_out) noexcept nogil:
    """``dgamma``, ``dbeta`` and the ``q``, ``r`` of :func:`_backward_dz`.

    ``z_hat = (z - center) / std + (center - mean) / std``, hence
    ``dz = scale * g - w * (q + r * (z - center))`` with
    ``q = scale * (dbeta + dgamma * (center - mean) / std) / W`` and
    ``r = scale * dgamma / (std * W)``.
    """
    cdef double inv_std[TILE]
    cdef double shift[TILE]
    cdef double dgamma[TILE]
    cdef const double* mean = stats.mean
    cdef const double* var = stats.var
    cdef double epsilon = stats.epsilon, inv_wsum = 1 / stats.weight_sum
    cdef Py_ssize_t j, tile, j0, width
    # One store stream per loop (and local arrays): the loops vectorize
    # without runtime alias checks.
    for tile in range(n_tiles(n)):
        j0 = tile * TILE
        width = tile_width(j0, n)
        for j in range(width):
            inv_std[j] = 1 / sqrt(var[j0 + j] + epsilon)
        for j in range(width):
            shift[j] = (center[j0 + j] - mean[j0 + j]) * inv_std[j]
        for j in range(width):
            dgamma[j] = sum_gz[j0 + j] * inv_std[j] + shift[j] * sum_g[j0 + j]
        for j in range(width):
            dbeta_out[j0 + j] = <floating> sum_g[j0 + j]
        for j in range(width):
            dgamma_out[j0 + j] = <floating> dgamma[j]
        for j in range(width):
            q_out[j0 + j] = <floating> (
                scale[j0 + j] * ((sum_g[j0 + j] + dgamma[j] * shift[j]) * inv_wsum))
        for j in range(width):
            r_out[j0 + j] = <floating> (scale[j0 + j] * (dgamma[j] * inv_wsum)
                                        * inv_std[j])


cdef void cbn_act_backward(const floating* da, floating* dz_out, const floating* a,
                           const floating* z, const Panel* panel, const floating* gamma,
                           const floating* beta, const Statistics* stats, int act,
                           floating* dgamma_out, floating* dbeta_out,
                           double* scratch) noexcept nogil:
    """Gradients of the fused layer given ``da = dL/da``.

    With ``g = da * act'(y)``, ``z_hat = (z - mean) / std`` and the rows'
    weights ``w`` (``panel.sample_weight``) summing to ``W =
    stats.weight_sum`` (all ones and ``W = n_rows`` when unweighted)::

        dbeta  = sum_i g_i
        dgamma = sum_i g_i * z_hat_i
        dz_i   = gamma / std * (g_i - w_i / W * (dbeta + z_hat_i * dgamma))

    Two passes (``g`` is recomputed, not stored): the first accumulates
    ``dbeta`` and ``dgamma`` in double precision, the second writes ``dz``.
    Each reads ``da`` and ``z``; tanh and logistic also read ``a`` (the
    forward's output), which ReLU and identity do not use (it may be NULL).
    ``da`` and ``dz_out`` rows are ``panel.ld`` apart; ``dz_out`` may alias
    ``da``. Both passes stream whole rows rather than panels of columns that
    would stay in L2 between them: the hardware prefetchers favour long
    runs. ``scratch`` holds at least ``7 * n_cols`` doubles. An unknown
    ``act`` writes NaN.
    """
    cdef Py_ssize_t n = panel.n_cols
    # The sums in the first 2 * n doubles of scratch, which the passes'
    # coefficients (from 2 * n on) leave alone; an unknown act gives NaN
    # sums, hence NaN gradients.
    cbn_act_backward_sums(da, a, z, panel, gamma, beta, stats, act, scratch,
                          scratch + n, scratch)
    cbn_gamma_beta_gradients(stats, n, gamma, beta, scratch, scratch + n, dgamma_out,
                             dbeta_out, scratch)
    cbn_act_backward_dz(da, dz_out, a, z, panel, act, scratch)


cdef void cbn_act_backward_sums(const floating* da, const floating* a,
                                const floating* z, const Panel* panel,
                                const floating* gamma, const floating* beta,
                                const Statistics* stats, int act,
                                double* sum_g, double* sum_gz,
                                double* scratch) noexcept nogil:
    """The first pass of :func:`cbn_act_backward` on a panel whose batch
    holds more rows: its sums ``sum_i g_i`` and ``sum_i g_i * (z_i -
    center)``, with ``center`` the batch mean rounded to the working
    precision. The batch's sums are those of its panels, added; with them,
    :func:`cbn_act_backward_dz` writes each panel's ``dz`` and
    :func:`cbn_gamma_beta_gradients` gives each panel's share of the
    gradients of gamma and beta. ``scratch``: ``7 * n_cols`` doubles."""
    cdef Py_ssize_t n = panel.n_cols
    cdef floating* center = <floating*> (scratch + 2 * n)
    cdef floating* scale = <floating*> (scratch + 3 * n)
    cdef floating* shift = <floating*> (scratch + 4 * n)
    _affine(gamma, beta, stats.mean, stats.var, stats.epsilon, n, center, scale, shift)
    if act == IDENTITY:
        _backward_sums(da, a, z, panel, center, scale, shift, sum_g, sum_gz,
                       <Identity*> NULL)
    elif act == RELU:
        _backward_sums(da, a, z, panel, center, scale, shift, sum_g, sum_gz,
                       <Relu*> NULL)
    elif act == TANH:
        _backward_sums(da, a, z, panel, center, scale, shift, sum_g, sum_gz,
                       <Tanh*> NULL)
    elif act == LOGISTIC:
        _backward_sums(da, a, z, panel, center, scale, shift, sum_g, sum_gz,
                       <Logistic*> NULL)
    else:
        for j in range(n):
            sum_g[j] = NAN
            sum_gz[j] = NAN


cdef void cbn_gamma_beta_gradients(const Statistics* stats, Py_ssize_t n,
                                   const floating* gamma, const floating* beta,
                                   const double* sum_g, const double* sum_gz,
                                   floating* dgamma_out, floating* dbeta_out,
                                   double* scratch) noexcept nogil:
    """Gamma's and beta's gradients from the sums of
    :func:`cbn_act_backward_sums` (linear in them: a panel's sums give its
    share). ``scratch``: ``7 * n`` doubles, which hold the coefficients of
    ``dz`` afterwards (:func:`cbn_act_backward_dz` reads them)."""
    cdef floating* center = <floating*> (scratch + 2 * n)
    cdef floating* scale = <floating*> (scratch + 3 * n)
    cdef floating* shift = <floating*> (scratch + 4 * n)
    cdef floating* q_coef = <floating*> (scratch + 5 * n)
    cdef floating* r_coef = <floating*> (scratch + 6 * n)
    _affine(gamma, beta, stats.mean, stats.var, stats.epsilon, n, center, scale, shift)
    _backward_coefficients(stats, n, center, scale, sum_g, sum_gz, dgamma_out,
                           dbeta_out, q_coef, r_coef)


cdef void cbn_act_backward_dz(const floating* da, floating* dz_out, const floating* a,
                              const floating* z, const Panel* panel, int act,
                              const double* scratch) noexcept nogil:
    """The second pass of :func:`cbn_act_backward` on a panel: ``dz``
    (``dz_out`` may alias ``da``) from the coefficients that
    :func:`cbn_gamma_beta_gradients` left in ``scratch`` when given the
    whole batch's sums (:func:`cbn_act_backward_sums`)."""
    cdef Py_ssize_t n = panel.n_cols
    cdef const floating* center = <const floating*> (scratch + 2 * n)
    cdef const floating* scale = <const floating*> (scratch + 3 * n)
    cdef const floating* shift = <const floating*> (scratch + 4 * n)
    cdef const floating* q_coef = <const floating*> (scratch + 5 * n)
    cdef const floating* r_coef = <const floating*> (scratch + 6 * n)
    if act == IDENTITY:
        _backward_dz(da, dz_out, a, z, panel, center, scale, shift, q_coef, r_coef,
                     <Identity*> NULL)
    elif act == RELU:
        _backward_dz(da, dz_out, a, z, panel, center, scale, shift, q_coef, r_coef,
                     <Relu*> NULL)
    elif act == TANH:
        _backward_dz(da, dz_out, a, z, panel, center, scale, shift, q_coef, r_coef,
                     <Tanh*> NULL)
    elif act == LOGISTIC:
        _backward_dz(da, dz_out, a, z, panel, center, scale, shift, q_coef, r_coef,
                     <Logistic*> NULL)
    else:
        _fill_nan(dz_out, panel.n_rows, n, panel.ld)


# ---------------------------------------------------------------------------
# Running statistics.


cdef void cupdate_running_stats(floating* running_mean, floating* running_var,
                                const double* mean, const double* var,
                                Py_ssize_t n_cols, double momentum,
                                double wsum) noexcept nogil:
    """PyTorch's update: unbiased batch variance, exponential moving average."""
    cdef Py_ssize_t j
    cdef double correction = wsum / (wsum - 1) if wsum > 1 else 1.0
    for j in range(n_cols):
        running_mean[j] = <floating> ((1 - momentum) * running_mean[j]
                                      + momentum * mean[j])
        running_var[j] = <floating> ((1 - momentum) * running_var[j]
                                     + momentum * var[j] * correction)


cdef void cupdate_running_average(floating* running_mean, floating* running_var,
                                  const double* mean, const double* var,
                                  Py_ssize_t n_cols, double count,
                                  double wsum) noexcept nogil:
    """The cumulative average, after the ``count``-th batch (PyTorch's
    ``momentum=None``): ``running += (batch - running) / count``, with the
    unbiased batch variance."""
    cdef Py_ssize_t j
    cdef double correction = wsum / (wsum - 1) if wsum > 1 else 1.0
    for j in range(n_cols):
        running_mean[j] = <floating> (running_mean[j]
                                      + (mean[j] - running_mean[j]) / count)
        running_var[j] = <floating> (running_var[j]
                                     + (var[j] * correction - running_var[j]) / count)


# ---------------------------------------------------------------------------
# def wrappers: check everything with the NumPy C API, then call the kernels
# without the GIL. The C API's checks are cheaper than acquiring typed
# memoryviews, which matters for the small layers of the tests and of the
# kernels' benchmark (bench_kernels.py).


cdef inline void* _array(object arr, str name, int typenum, int ndim,
                         Py_ssize_t n0, Py_ssize_t n1, bint writable) except NULL:
    """Data pointer of ``arr`` after checking it; ``n1`` is ignored for 1-D.

    ``TypeError`` for a non-array or a dtype other than ``typenum``;
    ``ValueError`` for a wrong shape, non C-contiguous, misaligned or
    byte-swapped data, or a read-only output.
    """
    cdef cnp.ndarray x
    if not cnp.PyArray_Check(arr):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    x = <cnp.ndarray> arr
    if cnp.PyArray_TYPE(x) != typenum:
        raise TypeError(f"{name} has dtype {x.dtype}, "
                        f"expected {cnp.PyArray_DescrFromType(typenum)}")
    if (cnp.PyArray_NDIM(x) != ndim or cnp.PyArray_DIM(x, 0) != n0
            or (ndim == 2 and cnp.PyArray_DIM(x, 1) != n1)):
        expected = f"({n0}, {n1})" if ndim == 2 else f"({n0},)"
        raise ValueError(f"{name} has shape {arr.shape}, expected {expected}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(x):
        raise ValueError(f"{name} must be C-contiguous")
    if not cnp.PyArray_ISBEHAVED_RO(x):
        raise ValueError(f"{name} must be aligned and in native byte order")
    if writable and not cnp.PyArray_ISWRITEABLE(x):
        raise ValueError(f"{name} is read-only")
    return cnp.PyArray_DATA(x)


cdef inline int _float_type(object arr, str name) except -1:
    """Type number of a float32 or float64 ndarray (``TypeError`` otherwise)."""
    cdef int typenum
    if not cnp.PyArray_Check(arr):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if cnp.PyArray_NDIM(<cnp.ndarray> arr) != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    typenum = cnp.PyArray_TYPE(<cnp.ndarray> arr)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"{name} must be float32 or float64, got {arr.dtype}")
    return typenum


cdef double _weights_sum(const char* sw, int typenum, Py_ssize_t n) except? -1:
    """Sum of the sample weights; ``ValueError`` unless it is positive."""
    cdef double total = 0
    cdef Py_ssize_t i
    if typenum == cnp.NPY_FLOAT32:
        for i in range(n):
            total += (<const float*> sw)[i]
    else:
        for i in range(n):
            total += (<const double*> sw)[i]
    if not total > 0:
        raise ValueError(f"sample weights must sum to a positive number, got {total}")
    return total


cdef int _check_var(const double* var, Py_ssize_t n, double epsilon) except -1:
    cdef Py_ssize_t j
    for j in range(n):
        if not var[j] + epsilon > 0:
            raise ValueError(
                f"var + epsilon must be positive, got var[{j}] = {var[j]} "
                f"with epsilon = {epsilon}")
    return 0


def batch_stats(x, sample_weight=None, bint ignore_nan=False,
                Py_ssize_t block_rows=0, int n_threads=1):
    """Column means and ddof=0 variances of ``x``.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_cols), float32 or float64, C-contiguous
    sample_weight : ndarray of shape (n_rows,), same dtype as ``x``, default=None
        Weights of the rows (repeat counts). Columns whose weights sum to
        zero get mean 0, variance 0 and weight sum 0.
    ignore_nan : bool, default=False
        Skip NaN entries (each column then has its own weight sum).
    block_rows : int, default=0
        Rows per block: each block is reduced on its own, and the blocks'
        statistics are merged in order (Chan et al.'s pairwise update).
        0: one block.
    n_threads : int, default=1
        Threads that share the blocks. The result depends on ``block_rows``
        only, not on the number of threads.

    Returns
    -------
    mean, var, weight_sum : ndarray of shape (n_cols,), float64
        Accumulated in double precision whatever the input dtype, from
        sums over runs of 32 rows in the input's precision.
    """
    cdef int typenum = _float_type(x, "x")
    cdef Py_ssize_t n_rows = cnp.PyArray_DIM(<cnp.ndarray> x, 0)
    cdef Py_ssize_t n_cols = cnp.PyArray_DIM(<cnp.ndarray> x, 1)
    cdef const char* xp = <const char*> _array(x, "x", typenum, 2, n_rows, n_cols,
                                               False)
    cdef const char* sw = NULL
    cdef Py_ssize_t n_blocks
    if sample_weight is not None:
        sw = <const char*> _array(sample_weight, "sample_weight", typenum, 1,
                                  n_rows, 0, False)
    if block_rows < 0 or n_threads < 1:
        raise ValueError("block_rows must be >= 0 and n_threads >= 1")
    if block_rows == 0 or block_rows > n_rows:
        block_rows = max(n_rows, 1)
    n_blocks = max((n_rows + block_rows - 1) // block_rows, 1)
    n_threads = <int> min(<Py_ssize_t> n_threads, n_blocks, <Py_ssize_t> MAX_THREADS)
    mean = np.zeros(n_cols, dtype=np.float64)
    var = np.zeros(n_cols, dtype=np.float64)
    wsum = np.zeros(n_cols, dtype=np.float64)
    if n_cols == 0:
        return mean, var, wsum
    # Each block's mean, variance and weight sum; each thread's scratch.
    cdef double[:, ::1] blocks = np.empty((n_blocks, 3 * n_cols))
    cdef double[:, ::1] scratch = np.empty((n_threads, 3 * n_cols))
    cdef double[::1] mv = mean, vv = var, wv = wsum
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _block_stats(<const float*> xp, n_rows, n_cols, <const float*> sw,
                         ignore_nan, block_rows, n_threads, blocks, scratch)
        else:
            _block_stats(<const double*> xp, n_rows, n_cols, <const double*> sw,
                         ignore_nan, block_rows, n_threads, blocks, scratch)
        _merge_blocks(blocks, n_cols, &mv[0], &vv[0], &wv[0])
    return mean, var, wsum


cdef void _block_stats(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                       const floating* sample_weight, bint ignore_nan,
                       Py_ssize_t block_rows, int n_threads,
                       double[:, ::1] blocks, double[:, ::1] scratch) noexcept nogil:
    """Statistics of each block of ``block_rows`` rows into ``blocks[b]``
    (mean, variance, weight sum: ``n_cols`` each), the team taking blocks in
    turn."""
    cdef Py_ssize_t b, start, n_blocks = blocks.shape[0]
    cdef double* out
    if n_threads == 1:   # never starts an OpenMP team (see sklearn_bn._threads)
        for b in range(n_blocks):
            out = &blocks[b, 0]
            cbatch_stats(x + b * block_rows * n_cols,
                         min(block_rows, n_rows - b * block_rows), n_cols,
                         sample_weight + b * block_rows
                         if sample_weight != NULL else NULL,
                         ignore_nan, out, out + n_cols, out + 2 * n_cols,
                         &scratch[0, 0])
        return
    for b in prange(n_blocks, schedule="dynamic", num_threads=n_threads):
        start = b * block_rows
        out = &blocks[b, 0]
        cbatch_stats(x + start * n_cols, min(block_rows, n_rows - start), n_cols,
                     sample_weight + start if sample_weight != NULL else NULL,
                     ignore_nan, out, out + n_cols, out + 2 * n_cols,
                     &scratch[threadid(), 0])


def bn_forward_train(z, gamma, beta, a_out, mean_out, var_out,
                     sample_weight=None, double epsilon=1e-5,
                     activation="identity"):
    """Training-mode batch norm fused with the activation.

    ``a_out = act(gamma * (z - mean) / sqrt(var + epsilon) + beta)`` where
    ``mean`` and ``var`` (ddof=0, weighted by ``sample_weight``) are the batch
    statistics of ``z``, written to ``mean_out`` and ``var_out``. Keep ``z``,
    ``a_out`` and the statistics for :func:`bn_backward`.

    Parameters
    ----------
    z : ndarray of shape (n_rows, n_cols), float32 or float64, C-contiguous
        ``n_rows >= 1``.
    gamma, beta : ndarray of shape (n_cols,), same dtype as ``z``
    a_out : ndarray of shape (n_rows, n_cols), same dtype as ``z``, written
        May be ``z`` itself (in place).
    mean_out, var_out : ndarray of shape (n_cols,), float64, written
    sample_weight : ndarray of shape (n_rows,), same dtype as ``z``, default=None
        Must sum to a positive number.
    epsilon : float, default=1e-5
        ``>= 0``; with 0, a column of zero variance is an error.
    activation : {'identity', 'relu', 'tanh', 'logistic'}, default='identity'

    Raises
    ------
    TypeError
        An argument is not a numpy array, ``z`` is not float32 or float64, or
        another array's dtype differs from ``z``'s (``mean_out`` and
        ``var_out``: from float64).
    ValueError
        Wrong shapes, non C-contiguous arrays, read-only outputs, no rows,
        ``epsilon < 0``, weights not summing to a positive number, an
        unknown activation, or ``var + epsilon == 0``.
    """
    cdef int act = act_code(activation)
    cdef int t = _float_type(z, "z")
    cdef Py_ssize_t n_rows = cnp.PyArray_DIM(<cnp.ndarray> z, 0)
    cdef Py_ssize_t n_cols = cnp.PyArray_DIM(<cnp.ndarray> z, 1)
    cdef const char* zp = <const char*> _array(z, "z", t, 2, n_rows, n_cols, False)
    cdef const char* gp = <const char*> _array(gamma, "gamma", t, 1, n_cols, 0, False)
    cdef const char* bp = <const char*> _array(beta, "beta", t, 1, n_cols, 0, False)
    cdef char* ap = <char*> _array(a_out, "a_out", t, 2, n_rows, n_cols, True)
    cdef double* mp = <double*> _array(mean_out, "mean_out", cnp.NPY_FLOAT64, 1,
                                       n_cols, 0, True)
    cdef double* vp = <double*> _array(var_out, "var_out", cnp.NPY_FLOAT64, 1,
                                       n_cols, 0, True)
    cdef const char* sw = NULL
    cdef double* scratch
    cdef Py_ssize_t j
    cdef Panel panel = Panel(n_rows, n_cols, n_cols, n_cols, n_cols, NULL)
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if n_rows == 0:
        raise ValueError("z must have at least one row")
    if sample_weight is not None:
        sw = <const char*> _array(sample_weight, "sample_weight", t, 1, n_rows, 0,
                                  False)
        _weights_sum(sw, t, n_rows)
        panel.sample_weight = sw
    if n_cols == 0:
        return
    scratch = <double*> PyMem_Malloc(SCRATCH_PER_COLUMN * n_cols * sizeof(double))
    if scratch == NULL:
        raise MemoryError()
    try:
        if epsilon == 0:
            # Check the statistics (into mean_out, var_out) before writing a_out.
            with nogil:
                if t == cnp.NPY_FLOAT32:
                    cbatch_stats(<const float*> zp, n_rows, n_cols, <const float*> sw,
                                 False, mp, vp, scratch + 3 * n_cols, scratch)
                else:
                    cbatch_stats(<const double*> zp, n_rows, n_cols, <const double*> sw,
                                 False, mp, vp, scratch + 3 * n_cols, scratch)
            for j in range(n_cols):
                if not vp[j] > 0:
                    raise ValueError(
                        f"column {j} has zero variance: it cannot be normalized "
                        "with epsilon=0")
        with nogil:
            if t == cnp.NPY_FLOAT32:
                cbn_act_forward_train(<const float*> zp, <float*> ap, &panel,
                                      <const float*> gp, <const float*> bp, epsilon,
                                      act, mp, vp, scratch)
            else:
                cbn_act_forward_train(<const double*> zp, <double*> ap, &panel,
                                      <const double*> gp, <const double*> bp, epsilon,
                                      act, mp, vp, scratch)
    finally:
        PyMem_Free(scratch)


def bn_backward(da, a, z, gamma, beta, mean, var, dz_out, dgamma_out, dbeta_out,
                sample_weight=None, double epsilon=1e-5, activation="identity"):
    """Backward pass of :func:`bn_forward_train`.

    Parameters
    ----------
    da : ndarray of shape (n_rows, n_cols)
        Gradient of the loss with respect to the layer output ``a``.
    a, z : ndarray of shape (n_rows, n_cols)
        The layer output and input of the forward pass. Tanh and logistic
        take their derivative from ``a``; ReLU recomputes its mask from
        ``z``, ``gamma`` and ``beta`` exactly as the forward pass computed
        ``a``, which saves reading ``a`` (still checked, for every
        activation).
    gamma, beta : ndarray of shape (n_cols,)
        The forward pass's scale and shift.
    mean, var : ndarray of shape (n_cols,), float64
        The batch statistics the forward pass wrote.
    dz_out : ndarray of shape (n_rows, n_cols), written (may be ``da``)
    dgamma_out, dbeta_out : ndarray of shape (n_cols,), written
    sample_weight : ndarray of shape (n_rows,), default=None
        The weights the forward pass used for its statistics.
    epsilon : float, default=1e-5
    activation : {'identity', 'relu', 'tanh', 'logistic'}, default='identity'

    All arrays but ``mean`` and ``var`` have the dtype of ``z`` (float32 or
    float64). Raises ``TypeError`` and ``ValueError`` as
    :func:`bn_forward_train` does.
    """
    cdef int act = act_code(activation)
    cdef int t = _float_type(z, "z")
    cdef Py_ssize_t n_rows = cnp.PyArray_DIM(<cnp.ndarray> z, 0)
    cdef Py_ssize_t n_cols = cnp.PyArray_DIM(<cnp.ndarray> z, 1)
    cdef const char* dap = <const char*> _array(da, "da", t, 2, n_rows, n_cols, False)
    cdef const char* ap = <const char*> _array(a, "a", t, 2, n_rows, n_cols, False)
    cdef const char* zp = <const char*> _array(z, "z", t, 2, n_rows, n_cols, False)
    cdef const char* gp = <const char*> _array(gamma, "gamma", t, 1, n_cols, 0, False)
    cdef const char* bp = <const char*> _array(beta, "beta", t, 1, n_cols, 0, False)
    cdef const double* mp = <const double*> _array(mean, "mean", cnp.NPY_FLOAT64, 1,
                                                   n_cols, 0, False)
    cdef const double* vp = <const double*> _array(var, "var", cnp.NPY_FLOAT64, 1,
                                                   n_cols, 0, False)
    cdef char* dzp = <char*> _array(dz_out, "dz_out", t, 2, n_rows, n_cols, True)
    cdef char* dgp = <char*> _array(dgamma_out, "dgamma_out", t, 1, n_cols, 0, True)
    cdef char* dbp = <char*> _array(dbeta_out, "dbeta_out", t, 1, n_cols, 0, True)
    cdef const char* sw = NULL
    cdef double wsum = n_rows
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if n_rows == 0:
        raise ValueError("z must have at least one row")
    if sample_weight is not None:
        sw = <const char*> _array(sample_weight, "sample_weight", t, 1, n_rows, 0,
                                  False)
        wsum = _weights_sum(sw, t, n_rows)
    _check_var(vp, n_cols, epsilon)
    if n_cols == 0:
        return
    cdef double* scratch = <double*> PyMem_Malloc(
        SCRATCH_PER_COLUMN * n_cols * sizeof(double))
    if scratch == NULL:
        raise MemoryError()
    cdef Panel panel = Panel(n_rows, n_cols, n_cols, n_cols, n_cols, sw)
    cdef Statistics stats = Statistics(mp, vp, epsilon, wsum)
    try:
        with nogil:
            if t == cnp.NPY_FLOAT32:
                cbn_act_backward(<const float*> dap, <float*> dzp, <const float*> ap,
                                 <const float*> zp, &panel, <const float*> gp,
                                 <const float*> bp, &stats, act, <float*> dgp,
                                 <float*> dbp, scratch)
            else:
                cbn_act_backward(<const double*> dap, <double*> dzp, <const double*> ap,
                                 <const double*> zp, &panel, <const double*> gp,
                                 <const double*> bp, &stats, act, <double*> dgp,
                                 <double*> dbp, scratch)
    finally:
        PyMem_Free(scratch)


def merge_stats(count_a, mean_a, var_a, count_b, mean_b, var_b):
    """Chan et al.'s pairwise update of (count, mean, ddof=0 variance), per
    column: :func:`chan_merge`, the one the kernels use.

    Parameters
    ----------
    count_a, mean_a, var_a, count_b, mean_b, var_b : array-like of shape (n_cols,)
        The two parts' weight sums (>= 0), means and variances, as float64
        (scalars broadcast).

    Returns
    -------
    count, mean, var : ndarray of shape (n_cols,), float64
        The statistics of both parts together: where one part has zero
        count, the other's. Statistics beyond the float64 range become inf or NaN
        (without warnings: the caller reports them once).
    """
    arrays = np.broadcast_arrays(
        *[np.asarray(v, dtype=np.float64)
          for v in (count_a, mean_a, var_a, count_b, mean_b, var_b)])
    if arrays[0].ndim != 1:
        raise ValueError(f"the statistics must be vectors, got shape {arrays[0].shape}")
    count = np.array(arrays[0], dtype=np.float64)
    mean = np.array(arrays[1], dtype=np.float64)
    m2 = np.array(arrays[2], dtype=np.float64)
    cdef const double[::1] cb = np.ascontiguousarray(arrays[3])
    cdef const double[::1] mb = np.ascontiguousarray(arrays[4])
    cdef const double[::1] vb = np.ascontiguousarray(arrays[5])
    cdef double[::1] c = count, m = mean, s = m2
    cdef Py_ssize_t j
    with nogil:
        for j in range(c.shape[0]):
            if not cb[j] > 0:
                continue   # nothing to add: a's statistics
            if not c[j] > 0:
                c[j], m[j], s[j] = cb[j], mb[j], vb[j]   # b's statistics
                continue
            s[j] = s[j] * c[j]   # the variance as a sum of squared deviations
            chan_merge(&m[j], &s[j], c[j], cb[j], mb[j] - m[j], vb[j] * cb[j])
            c[j] += cb[j]
            s[j] = max(s[j] / c[j], 0.0)
    return count, mean, m2


def unbiased_counts(const double[::1] weight_sum, const double[::1] n_positive):
    """Per column, the ``m`` of the unbiased variance correction ``m / (m - 1)``.

    The rule of the networks' running variance (:func:`unbiased_count` in
    ``_batchnorm.pxd``): ``m`` is the weight sum (weights act as repeat
    counts) or, where that sum is below 2, the number of rows with positive
    weight.

    Parameters
    ----------
    weight_sum : ndarray of shape (n_cols,), float64
        Sum of the weights of the rows that count in each column (all rows,
        or those whose value is not NaN); the number of such rows when
        unweighted.
    n_positive : ndarray of shape (n_cols,), float64
        Number of those rows whose weight is positive. Read only where
        ``weight_sum < 2``.

    Returns
    -------
    m : ndarray of shape (n_cols,), float64
        ``m <= 1`` where no unbiased variance can be estimated.
    """
    cdef Py_ssize_t j, n = weight_sum.shape[0]
    if n_positive.shape[0] != n:
        raise ValueError(
            f"weight_sum and n_positive must have the same length, got {n} "
            f"and {n_positive.shape[0]}")
    m_arr = np.empty(n, dtype=np.float64)
    cdef double[::1] m = m_arr
    with nogil:
        for j in range(n):
            m[j] = unbiased_count(weight_sum[j], n_positive[j])
    return m_arr


def update_running_stats(running_mean, running_var, mean, var, double momentum,
                         double n_samples):
    """In place: ``running = (1 - momentum) * running + momentum * batch``.

    The batch variance (ddof=0) is corrected to the unbiased one with
    ``n_samples / (n_samples - 1)`` (the sum of the weights for a weighted
    batch), as PyTorch's ``BatchNorm1d`` does; no correction when
    ``n_samples <= 1``.

    Parameters
    ----------
    running_mean, running_var : ndarray of shape (n_cols,), float32 or float64
        Updated in place.
    mean, var : ndarray of shape (n_cols,), float64
        The batch statistics (:func:`bn_forward_train` or :func:`batch_stats`).
    momentum : float in [0, 1]
    n_samples : float
    """
    cdef int t
    cdef Py_ssize_t n_cols
    if not cnp.PyArray_Check(running_mean):
        raise TypeError("running_mean must be a numpy.ndarray")
    t = cnp.PyArray_TYPE(<cnp.ndarray> running_mean)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError("running_mean must be float32 or float64, "
                        f"got {running_mean.dtype}")
    if cnp.PyArray_NDIM(<cnp.ndarray> running_mean) != 1:
        raise ValueError(f"running_mean must be 1-D, got shape {running_mean.shape}")
    n_cols = cnp.PyArray_DIM(<cnp.ndarray> running_mean, 0)
    cdef char* rmp = <char*> _array(running_mean, "running_mean", t, 1, n_cols, 0, True)
    cdef char* rvp = <char*> _array(running_var, "running_var", t, 1, n_cols, 0, True)
    cdef const double* mp = <const double*> _array(mean, "mean", cnp.NPY_FLOAT64, 1,
                                                   n_cols, 0, False)
    cdef const double* vp = <const double*> _array(var, "var", cnp.NPY_FLOAT64, 1,
                                                   n_cols, 0, False)
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if n_cols == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            cupdate_running_stats(<float*> rmp, <float*> rvp, mp, vp, n_cols,
                                  momentum, n_samples)
        else:
            cupdate_running_stats(<double*> rmp, <double*> rvp, mp, vp, n_cols,
                                  momentum, n_samples)
