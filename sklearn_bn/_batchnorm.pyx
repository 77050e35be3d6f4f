"""Batch-normalization kernels, fused with the hidden-layer activation.

Three layers, as in scikit-learn's ``_loss.pyx``: ``c*`` functions do the math
on raw C-contiguous blocks without the GIL (the training engine calls them
directly); ``def`` wrappers check shapes, dtypes and contiguity, release the
GIL and call them; the estimators validate user input before either.

Performance notes
-----------------
* Memory traffic. The kernels work on *panels* of columns sized so that a
  panel of every array a kernel reads stays in the last-level cache between
  its passes: the forward pass reads ``z`` from memory once (statistics, then
  normalization from cache) and the backward pass reads ``da``, ``a`` and
  ``z`` from memory once (reductions, then ``dz`` from cache). When the whole
  block fits in cache, a panel is the whole row.
* Vectorization. Hot loops keep their per-column accumulators and
  coefficients in local arrays (which cannot alias the caller's buffers, so
  the compiler vectorizes without runtime alias checks), never load under a
  condition (``d = da[j]; g = d if a[j] > 0 else 0`` is a mask, where
  ``g = da[j] if a[j] > 0 else 0`` is a branch) and fix the activation
  outside the loop.
* Instruction sets. With GCC on x86-64 Linux the hot functions are compiled
  twice, for the baseline (SSE2) and for AVX2 + FMA, and the dynamic loader
  picks the one the CPU supports (``target_clones``); elsewhere they are
  compiled once for the baseline. Define ``SKLEARN_BN_NO_TARGET_CLONES`` (for
  example ``CFLAGS=-DSKLEARN_BN_NO_TARGET_CLONES``) to turn this off.

Numerics: statistics are accumulated in double precision whatever the input
dtype. Each row block is reduced around a shift (the running mean of the
previous blocks; the first row for the first block) and merged with Chan et
al.'s pairwise update; a block whose shift turns out to be far from its mean
(which would cost accuracy) is reduced again, from cache, around its own
mean. This is as accurate as a two-pass algorithm and reads the data once.
Normalization computes ``(z - mean) * scale + beta`` with the mean rounded
to the working precision and its rounding error folded into the shift, so
that float32 stays accurate when the mean is large compared to the spread.
"""
from libc.math cimport sqrt
from libc.string cimport memset
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cython cimport floating

import numpy as np
cimport numpy as cnp

from sklearn_bn._activations cimport (
    act_forward, IDENTITY, RELU, TANH, LOGISTIC)
from sklearn_bn._activations import activation_code

cnp.import_array()

cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) \\
        && defined(__linux__) && defined(__GLIBC__) \\
        && !defined(SKLEARN_BN_NO_TARGET_CLONES)
    #define SKLEARN_BN_CLONES __attribute__((target_clones("arch=haswell", "default")))
    #else
    #define SKLEARN_BN_CLONES
    #endif
    """
    # ``void`` for the hot functions, compiled for AVX2 + FMA and baseline.
    ctypedef void simd_void "SKLEARN_BN_CLONES void"

# Doubles of scratch each kernel needs per column (callers allocate it once).
SCRATCH_PER_COLUMN = 8

cdef enum:
    # Most columns in a panel: the size of the local per-column arrays.
    CHUNK = 512
    # Bytes of input per statistics block: a block reduced a second time is
    # read from L2, not from memory.
    BLOCK_BYTES = 131072

# Bytes of each array's panel that the passes of a kernel re-read from cache.
cdef Py_ssize_t PANEL_BYTES = 4 * 1024 * 1024


cdef inline Py_ssize_t _panel_width(Py_ssize_t n_rows, Py_ssize_t n_cols,
                                    Py_ssize_t col_bytes) noexcept nogil:
    """Columns per panel: the panel of ``col_bytes`` per cell fits the budget.

    At most ``CHUNK`` and at least 64 columns (shorter row segments would
    stream poorly); the panels of a block have equal widths (multiples of 16).
    """
    cdef Py_ssize_t width = PANEL_BYTES // max(n_rows * col_bytes, 1)
    cdef Py_ssize_t n_panels
    width = min(max(width, 64), <Py_ssize_t> CHUNK)
    if n_cols <= width:
        return n_cols
    n_panels = (n_cols + width - 1) // width
    width = (n_cols + n_panels - 1) // n_panels
    return min(((width + 15) // 16) * 16, <Py_ssize_t> CHUNK)


# ---------------------------------------------------------------------------
# Statistics.


cdef simd_void _stats_panel(const floating* x, Py_ssize_t stride,
                            Py_ssize_t n_rows, Py_ssize_t width,
                            const floating* sample_weight, double* mean_out,
                            double* var_out, double* wsum_out) noexcept nogil:
    """Mean, ddof=0 variance and weight sum of ``width <= CHUNK`` columns.

    Row ``i`` of the panel starts at ``x + i * stride``. Rows are reduced in
    blocks around a shift ``c`` (sums of ``w * (x - c)`` and
    ``w * (x - c) ** 2``) and merged with Chan et al.'s update. The shift of
    the first block is its first row, later ones shift by the running mean,
    so the block sums do not cancel; a block whose shift was far from its own
    mean (an outlying first row, drifting data) is summed again, from cache,
    around its mean. Means are kept relative to the first block's shift
    ``ref``, so that their rounding stays relative to the spread of the data
    rather than to its offset.
    """
    cdef double center[CHUNK]
    cdef double ref[CHUNK]
    cdef double s1[CHUNK]
    cdef double s2[CHUNK]
    cdef double mean[CHUNK]     # running mean - ref
    cdef double m2[CHUNK]
    cdef Py_ssize_t block_rows = max(1, BLOCK_BYTES // max(width * <Py_ssize_t> sizeof(floating), 1))
    cdef Py_ssize_t start, stop, i, j
    cdef int attempt
    cdef bint redo, first = True
    cdef double w, d, bw, total, ratio, cross, inv, mb, m2b, delta
    cdef double wtot = 0
    cdef const floating* row

    for j in range(width):
        center[j] = x[j]
        ref[j] = 0
        mean[j] = 0
        m2[j] = 0

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
        if not first:
            for j in range(width):
                center[j] = ref[j] + mean[j]
        for attempt in range(2):
            for j in range(width):
                s1[j] = 0
                s2[j] = 0
            if sample_weight == NULL:
                for i in range(start, stop):
                    row = x + i * stride
                    for j in range(width):
                        d = row[j] - center[j]
                        s1[j] += d
                        s2[j] += d * d
            else:
                for i in range(start, stop):
                    row = x + i * stride
                    w = sample_weight[i]
                    for j in range(width):
                        d = row[j] - center[j]
                        s1[j] += w * d
                        s2[j] += w * (d * d)
            if attempt == 1 or stop - start == 1:
                break
            # M2 = s2 - s1**2 / bw loses accuracy when s1**2 / bw is close to
            # s2, i.e. when the shift is far from the block mean: redo those.
            redo = False
            for j in range(width):
                if s1[j] * s1[j] > 0.5 * bw * s2[j]:
                    redo = True
            if not redo:
                break
            for j in range(width):
                center[j] += s1[j] * inv
        if first:
            for j in range(width):
                ref[j] = center[j]
                mb = s1[j] * inv
                mean[j] = mb
                m2[j] = max(s2[j] - s1[j] * mb, 0.0)
            wtot = bw
            first = False
        else:
            total = wtot + bw
            ratio = bw / total
            cross = wtot * ratio
            for j in range(width):
                mb = s1[j] * inv
                m2b = max(s2[j] - s1[j] * mb, 0.0)
                # block mean - running mean; center - ref - mean is the
                # (exact, small) rounding error of center = ref + mean.
                delta = ((center[j] - ref[j]) - mean[j]) + mb
                mean[j] += delta * ratio
                m2[j] += m2b + delta * delta * cross
            wtot = total
        start = stop

    for j in range(width):
        if wtot > 0:
            mean_out[j] = ref[j] + mean[j]
            var_out[j] = max(m2[j] / wtot, 0.0)
        else:
            mean_out[j] = 0
            var_out[j] = 0
        wsum_out[j] = wtot


cdef simd_void _stats_panel_nan(const floating* x, Py_ssize_t stride,
                                Py_ssize_t n_rows, Py_ssize_t width,
                                const floating* sample_weight, double* mean_out,
                                double* var_out, double* wsum_out) noexcept nogil:
    """:func:`_stats_panel` skipping NaN: each column has its own weight sum.

    Two passes per row block (the second from cache) and Chan's merge.
    """
    cdef double bw_[CHUNK]
    cdef double bmean[CHUNK]
    cdef double bm2[CHUNK]
    cdef double mean[CHUNK]
    cdef double m2[CHUNK]
    cdef double wt[CHUNK]
    cdef Py_ssize_t block_rows = max(1, BLOCK_BYTES // max(width * <Py_ssize_t> sizeof(floating), 1))
    cdef Py_ssize_t start, stop, i, j
    cdef double w, v, d, bw, total, delta, keep
    cdef const floating* row

    for j in range(width):
        mean[j] = 0
        m2[j] = 0
        wt[j] = 0

    start = 0
    while start < n_rows:
        stop = min(start + block_rows, n_rows)
        for j in range(width):
            bw_[j] = 0
            bmean[j] = 0
            bm2[j] = 0
        for i in range(start, stop):
            row = x + i * stride
            w = sample_weight[i] if sample_weight != NULL else 1.0
            for j in range(width):
                # Selects of computed values only: the loop stays vectorizable.
                v = row[j]
                keep = w if v == v else 0.0
                v = v if v == v else 0.0
                bw_[j] += keep
                bmean[j] += w * v
        for j in range(width):
            bmean[j] = bmean[j] / bw_[j] if bw_[j] != 0 else 0
        for i in range(start, stop):
            row = x + i * stride
            w = sample_weight[i] if sample_weight != NULL else 1.0
            for j in range(width):
                v = row[j]
                v = v if v == v else bmean[j]
                d = v - bmean[j]
                bm2[j] += w * (d * d)
        for j in range(width):
            bw = bw_[j]
            if bw == 0:
                continue
            total = wt[j] + bw
            delta = bmean[j] - mean[j]
            mean[j] += delta * (bw / total)
            m2[j] += bm2[j] + delta * delta * (wt[j] * bw / total)
            wt[j] = total
        start = stop

    for j in range(width):
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
    with no weight get mean 0 and variance 0. ``scratch`` is not used (kept
    for a stable signature). ``n_rows`` may be 0.
    """
    cdef Py_ssize_t j0 = 0, width
    if n_rows == 0:
        memset(mean_out, 0, n_cols * sizeof(double))
        memset(var_out, 0, n_cols * sizeof(double))
        memset(wsum_out, 0, n_cols * sizeof(double))
        return
    while j0 < n_cols:
        width = min(<Py_ssize_t> CHUNK, n_cols - j0)
        if ignore_nan:
            _stats_panel_nan(x + j0, n_cols, n_rows, width, sample_weight,
                             mean_out + j0, var_out + j0, wsum_out + j0)
        else:
            _stats_panel(x + j0, n_cols, n_rows, width, sample_weight,
                         mean_out + j0, var_out + j0, wsum_out + j0)
        j0 += width


# ---------------------------------------------------------------------------
# Forward.


cdef simd_void _normalize_panel(const floating* z, floating* a_out,
                                Py_ssize_t stride, Py_ssize_t n_rows,
                                Py_ssize_t width, const floating* gamma,
                                const floating* beta, const double* mean,
                                const double* var, double epsilon,
                                int act) noexcept nogil:
    """``a = act((z - mean) * gamma / sqrt(var + eps) + beta)``, ``width <= CHUNK``.

    Computed as ``(z - center) * scale + shift`` with ``center`` the mean in
    the working precision and ``shift`` absorbing its rounding error.
    ``a_out`` may alias ``z``.
    """
    cdef floating scale[CHUNK]
    cdef floating shift[CHUNK]
    cdef floating center[CHUNK]
    cdef Py_ssize_t i, j
    cdef double s
    cdef floating y
    cdef const floating* zrow
    cdef floating* arow

    for j in range(width):
        s = gamma[j] / sqrt(var[j] + epsilon)
        center[j] = <floating> mean[j]
        scale[j] = <floating> s
        shift[j] = <floating> (beta[j] + (center[j] - mean[j]) * s)
    for i in range(n_rows):
        zrow = z + i * stride
        arow = a_out + i * stride
        if act == RELU:
            for j in range(width):
                y = (zrow[j] - center[j]) * scale[j] + shift[j]
                arow[j] = y if y > 0 else 0
        elif act == IDENTITY:
            for j in range(width):
                arow[j] = (zrow[j] - center[j]) * scale[j] + shift[j]
        else:
            for j in range(width):
                arow[j] = act_forward((zrow[j] - center[j]) * scale[j] + shift[j], act)


cdef void cbn_act_forward_train(const floating* z, floating* a_out,
                                Py_ssize_t n_rows, Py_ssize_t n_cols,
                                const floating* gamma, const floating* beta,
                                const floating* sample_weight, double epsilon,
                                int act, double* mean_out, double* var_out,
                                double* scratch) noexcept nogil:
    """``a = act(gamma * (z - mean) / sqrt(var + eps) + beta)`` on batch stats.

    ``a_out`` may alias ``z``. Writes the batch mean and (ddof=0) variance,
    which the backward pass needs together with ``z`` and ``a``. ``scratch``
    holds at least ``n_cols`` doubles. Panel by panel: the statistics of a
    panel, then its normalization while it is still in cache.
    """
    cdef Py_ssize_t j0 = 0
    cdef Py_ssize_t width = _panel_width(n_rows, n_cols, sizeof(floating))
    while j0 < n_cols:
        width = min(width, n_cols - j0)
        _stats_panel(z + j0, n_cols, n_rows, width, sample_weight,
                     mean_out + j0, var_out + j0, scratch + j0)
        _normalize_panel(z + j0, a_out + j0, n_cols, n_rows, width, gamma + j0,
                         beta + j0, mean_out + j0, var_out + j0, epsilon, act)
        j0 += width


cdef void cbn_act_forward_infer(const floating* z, floating* a_out,
                                Py_ssize_t n_rows, Py_ssize_t n_cols,
                                const floating* gamma, const floating* beta,
                                const floating* mean, const floating* var,
                                double epsilon, int act) noexcept nogil:
    """Inference-mode forward on given (running) mean and variance.

    ``a_out`` may alias ``z``.
    """
    cdef double mean_d[CHUNK]
    cdef double var_d[CHUNK]
    cdef Py_ssize_t j, j0 = 0, width
    while j0 < n_cols:
        width = min(<Py_ssize_t> CHUNK, n_cols - j0)
        for j in range(width):
            mean_d[j] = mean[j0 + j]
            var_d[j] = var[j0 + j]
        _normalize_panel(z + j0, a_out + j0, n_cols, n_rows, width, gamma + j0,
                         beta + j0, mean_d, var_d, epsilon, act)
        j0 += width


# ---------------------------------------------------------------------------
# Backward.


cdef inline floating _grad(floating d, floating a, int act) noexcept nogil:
    """``d * act'(y)`` from the output ``a``; ``act`` is a literal constant."""
    if act == RELU:
        return d if a > 0 else 0
    elif act == TANH:
        return d * (1 - a * a)
    elif act == LOGISTIC:
        return d * (a * (1 - a))
    return d


cdef simd_void _backward_panel(const floating* da, const floating* a,
                               const floating* z, floating* dz_out,
                               Py_ssize_t stride, Py_ssize_t n_rows,
                               Py_ssize_t width, const floating* gamma,
                               const double* mean, const double* var,
                               double epsilon, const floating* sample_weight,
                               double wsum, int act, floating* dgamma_out,
                               floating* dbeta_out) noexcept nogil:
    """:func:`cbn_act_backward` on ``width <= CHUNK`` columns.

    Pass 1 accumulates ``sum g`` and ``sum g * (z - center)`` (double
    accumulators, two rows at a time); pass 2 writes
    ``dz = p * g - w * (q + r * (z - center))`` with per-column ``p, q, r``.
    """
    cdef double acc_g[CHUNK]
    cdef double acc_gz[CHUNK]
    cdef floating center[CHUNK]
    cdef floating p_coef[CHUNK]
    cdef floating q_coef[CHUNK]
    cdef floating r_coef[CHUNK]
    cdef Py_ssize_t i, j
    cdef floating d0, d1, g0, g1, c, w
    cdef double inv_std, sum_g, sum_gz, p, c_beta, c_gamma, shift
    cdef const floating* da0
    cdef const floating* da1
    cdef const floating* a0
    cdef const floating* a1
    cdef const floating* z0
    cdef const floating* z1
    cdef floating* dzrow

    for j in range(width):
        acc_g[j] = 0
        acc_gz[j] = 0
        center[j] = <floating> mean[j]

    # Pass 1, two rows at a time (half the accumulator traffic).
    i = 0
    while i + 1 < n_rows:
        da0 = da + i * stride
        da1 = da0 + stride
        a0 = a + i * stride
        a1 = a0 + stride
        z0 = z + i * stride
        z1 = z0 + stride
        if act == RELU:
            for j in range(width):
                d0 = da0[j]
                d1 = da1[j]
                g0 = _grad(d0, a0[j], RELU)
                g1 = _grad(d1, a1[j], RELU)
                c = center[j]
                acc_g[j] += g0 + g1
                acc_gz[j] += g0 * (z0[j] - c) + g1 * (z1[j] - c)
        elif act == IDENTITY:
            for j in range(width):
                g0 = da0[j]
                g1 = da1[j]
                c = center[j]
                acc_g[j] += g0 + g1
                acc_gz[j] += g0 * (z0[j] - c) + g1 * (z1[j] - c)
        elif act == TANH:
            for j in range(width):
                g0 = _grad(da0[j], a0[j], TANH)
                g1 = _grad(da1[j], a1[j], TANH)
                c = center[j]
                acc_g[j] += g0 + g1
                acc_gz[j] += g0 * (z0[j] - c) + g1 * (z1[j] - c)
        else:
            for j in range(width):
                g0 = _grad(da0[j], a0[j], LOGISTIC)
                g1 = _grad(da1[j], a1[j], LOGISTIC)
                c = center[j]
                acc_g[j] += g0 + g1
                acc_gz[j] += g0 * (z0[j] - c) + g1 * (z1[j] - c)
        i += 2
    if i < n_rows:
        da0 = da + i * stride
        a0 = a + i * stride
        z0 = z + i * stride
        for j in range(width):
            d0 = da0[j]
            if act == RELU:
                g0 = _grad(d0, a0[j], RELU)
            elif act == TANH:
                g0 = _grad(d0, a0[j], TANH)
            elif act == LOGISTIC:
                g0 = _grad(d0, a0[j], LOGISTIC)
            else:
                g0 = d0
            acc_g[j] += g0
            acc_gz[j] += g0 * (z0[j] - center[j])

    # With W = wsum: dbeta = sum g, dgamma = sum g * z_hat and
    # dz = gamma / std * (g - w / W * (dbeta + z_hat * dgamma)), where
    # z_hat = (z - center) / std + (center - mean) / std.
    for j in range(width):
        inv_std = 1 / sqrt(var[j] + epsilon)
        shift = center[j] - mean[j]
        sum_g = acc_g[j]
        sum_gz = (acc_gz[j] + shift * sum_g) * inv_std
        dbeta_out[j] = <floating> sum_g
        dgamma_out[j] = <floating> sum_gz
        p = gamma[j] * inv_std
        c_beta = sum_g / wsum
        c_gamma = sum_gz / wsum
        p_coef[j] = <floating> p
        q_coef[j] = <floating> (p * (c_beta + c_gamma * shift * inv_std))
        r_coef[j] = <floating> (p * c_gamma * inv_std)

    # Pass 2: dz, reading the panel again (from cache).
    w = 1
    for i in range(n_rows):
        da0 = da + i * stride
        a0 = a + i * stride
        z0 = z + i * stride
        dzrow = dz_out + i * stride
        if sample_weight != NULL:
            w = sample_weight[i]
        if act == RELU:
            for j in range(width):
                d0 = da0[j]
                g0 = _grad(d0, a0[j], RELU)
                dzrow[j] = p_coef[j] * g0 - w * (q_coef[j] + r_coef[j] * (z0[j] - center[j]))
        elif act == IDENTITY:
            for j in range(width):
                g0 = da0[j]
                dzrow[j] = p_coef[j] * g0 - w * (q_coef[j] + r_coef[j] * (z0[j] - center[j]))
        elif act == TANH:
            for j in range(width):
                g0 = _grad(da0[j], a0[j], TANH)
                dzrow[j] = p_coef[j] * g0 - w * (q_coef[j] + r_coef[j] * (z0[j] - center[j]))
        else:
            for j in range(width):
                g0 = _grad(da0[j], a0[j], LOGISTIC)
                dzrow[j] = p_coef[j] * g0 - w * (q_coef[j] + r_coef[j] * (z0[j] - center[j]))


cdef void cbn_act_backward(const floating* da, const floating* a,
                           const floating* z, floating* dz_out,
                           Py_ssize_t n_rows, Py_ssize_t n_cols,
                           const floating* gamma, const double* mean,
                           const double* var, double epsilon,
                           const floating* sample_weight, double wsum, int act,
                           floating* dgamma_out, floating* dbeta_out,
                           double* scratch) noexcept nogil:
    """Gradients of the fused layer given ``da = dL/da``.

    With ``g = da * act'(a)``, ``z_hat = (z - mean) / std`` and batch weights
    ``w`` summing to ``W`` (all ones and ``W = n_rows`` when unweighted)::

        dbeta  = sum_i g_i
        dgamma = sum_i g_i * z_hat_i
        dz_i   = gamma / std * (g_i - w_i / W * (dbeta + z_hat_i * dgamma))

    Two passes over each panel of columns, each reading ``da``, ``a`` and
    ``z`` (``g`` is recomputed, not stored): the first accumulates ``dbeta``
    and ``dgamma`` in double precision, the second writes ``dz``. ``dz_out``
    may alias ``da``. ``scratch`` is not used (kept for a stable signature).
    """
    cdef Py_ssize_t j0 = 0
    cdef Py_ssize_t width = _panel_width(n_rows, n_cols, 3 * sizeof(floating))
    while j0 < n_cols:
        width = min(width, n_cols - j0)
        _backward_panel(da + j0, a + j0, z + j0, dz_out + j0, n_cols, n_rows,
                        width, gamma + j0, mean + j0, var + j0, epsilon,
                        sample_weight, wsum, act, dgamma_out + j0, dbeta_out + j0)
        j0 += width


cdef void cupdate_running_stats(floating* running_mean, floating* running_var,
                                const double* mean, const double* var,
                                Py_ssize_t n_cols, double momentum,
                                double wsum) noexcept nogil:
    """PyTorch's update: unbiased batch variance, exponential moving average."""
    cdef Py_ssize_t j
    cdef double correction = wsum / (wsum - 1) if wsum > 1 else 1.0
    for j in range(n_cols):
        running_mean[j] = <floating> ((1 - momentum) * running_mean[j] + momentum * mean[j])
        running_var[j] = <floating> ((1 - momentum) * running_var[j]
                                     + momentum * var[j] * correction)


# ---------------------------------------------------------------------------
# def wrappers: check everything with the NumPy C API (about 30 ns per
# array, where acquiring a typed memoryview costs about 400 ns: it matters
# for small layers), then call the kernels without the GIL.


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
        raise TypeError(
            f"{name} has dtype {x.dtype}, expected {cnp.PyArray_DescrFromType(typenum)}")
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


def batch_stats(x, sample_weight=None, bint ignore_nan=False):
    """Column means and ddof=0 variances of ``x``.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_cols), float32 or float64, C-contiguous
    sample_weight : ndarray of shape (n_rows,), same dtype as ``x``, default=None
        Weights of the rows (repeat counts). Columns whose weights sum to
        zero get mean 0, variance 0 and weight sum 0.
    ignore_nan : bool, default=False
        Skip NaN entries (each column then has its own weight sum).

    Returns
    -------
    mean, var, weight_sum : ndarray of shape (n_cols,), float64
        Accumulated in double precision whatever the input dtype.
    """
    cdef int typenum = _float_type(x, "x")
    cdef Py_ssize_t n_rows = x.shape[0], n_cols = x.shape[1]
    cdef const char* xp = <const char*> _array(x, "x", typenum, 2, n_rows, n_cols, False)
    cdef const char* sw = NULL
    if sample_weight is not None:
        sw = <const char*> _array(sample_weight, "sample_weight", typenum, 1,
                                  n_rows, 0, False)
    mean = np.zeros(n_cols, dtype=np.float64)
    var = np.zeros(n_cols, dtype=np.float64)
    wsum = np.zeros(n_cols, dtype=np.float64)
    cdef double* mp = <double*> cnp.PyArray_DATA(mean)
    cdef double* vp = <double*> cnp.PyArray_DATA(var)
    cdef double* wp = <double*> cnp.PyArray_DATA(wsum)
    if n_cols == 0:
        return mean, var, wsum
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            cbatch_stats(<const float*> xp, n_rows, n_cols, <const float*> sw,
                         ignore_nan, mp, vp, wp, NULL)
        else:
            cbatch_stats(<const double*> xp, n_rows, n_cols, <const double*> sw,
                         ignore_nan, mp, vp, wp, NULL)
    return mean, var, wsum


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
    cdef int act = activation_code(activation)
    cdef int t = _float_type(z, "z")
    cdef Py_ssize_t n_rows = z.shape[0], n_cols = z.shape[1]
    cdef const char* zp = <const char*> _array(z, "z", t, 2, n_rows, n_cols, False)
    cdef const char* gp = <const char*> _array(gamma, "gamma", t, 1, n_cols, 0, False)
    cdef const char* bp = <const char*> _array(beta, "beta", t, 1, n_cols, 0, False)
    cdef char* ap = <char*> _array(a_out, "a_out", t, 2, n_rows, n_cols, True)
    cdef double* mp = <double*> _array(mean_out, "mean_out", cnp.NPY_FLOAT64, 1, n_cols, 0, True)
    cdef double* vp = <double*> _array(var_out, "var_out", cnp.NPY_FLOAT64, 1, n_cols, 0, True)
    cdef const char* sw = NULL
    cdef double* scratch
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if n_rows == 0:
        raise ValueError("z must have at least one row")
    if sample_weight is not None:
        sw = <const char*> _array(sample_weight, "sample_weight", t, 1, n_rows, 0, False)
        _weights_sum(sw, t, n_rows)
    if n_cols == 0:
        return
    scratch = <double*> PyMem_Malloc(n_cols * sizeof(double))
    if scratch == NULL:
        raise MemoryError()
    try:
        if epsilon == 0:
            # Check the statistics before writing anything.
            with nogil:
                if t == cnp.NPY_FLOAT32:
                    cbatch_stats(<const float*> zp, n_rows, n_cols, <const float*> sw,
                                 False, mp, vp, scratch, NULL)
                else:
                    cbatch_stats(<const double*> zp, n_rows, n_cols, <const double*> sw,
                                 False, mp, vp, scratch, NULL)
            for j in range(n_cols):
                if not vp[j] > 0:
                    raise ValueError(
                        f"column {j} has zero variance: it cannot be normalized "
                        "with epsilon=0")
        with nogil:
            if t == cnp.NPY_FLOAT32:
                cbn_act_forward_train(<const float*> zp, <float*> ap, n_rows, n_cols,
                                      <const float*> gp, <const float*> bp,
                                      <const float*> sw, epsilon, act, mp, vp, scratch)
            else:
                cbn_act_forward_train(<const double*> zp, <double*> ap, n_rows, n_cols,
                                      <const double*> gp, <const double*> bp,
                                      <const double*> sw, epsilon, act, mp, vp, scratch)
    finally:
        PyMem_Free(scratch)


def bn_forward_infer(z, gamma, beta, mean, var, a_out, double epsilon=1e-5,
                     activation="identity"):
    """Inference-mode batch norm fused with the activation.

    ``a_out = act(gamma * (z - mean) / sqrt(var + epsilon) + beta)`` with the
    given (running) ``mean`` and ``var``.

    Parameters
    ----------
    z : ndarray of shape (n_rows, n_cols), float32 or float64, C-contiguous
    gamma, beta, mean, var : ndarray of shape (n_cols,), same dtype as ``z``
    a_out : ndarray of shape (n_rows, n_cols), same dtype as ``z``, written
        May be ``z`` itself.
    epsilon : float, default=1e-5
    activation : {'identity', 'relu', 'tanh', 'logistic'}, default='identity'

    Raises
    ------
    TypeError, ValueError
        As :func:`bn_forward_train`; ``ValueError`` if ``var + epsilon <= 0``
        anywhere.
    """
    cdef int act = activation_code(activation)
    cdef int t = _float_type(z, "z")
    cdef Py_ssize_t n_rows = z.shape[0], n_cols = z.shape[1]
    cdef const char* zp = <const char*> _array(z, "z", t, 2, n_rows, n_cols, False)
    cdef const char* gp = <const char*> _array(gamma, "gamma", t, 1, n_cols, 0, False)
    cdef const char* bp = <const char*> _array(beta, "beta", t, 1, n_cols, 0, False)
    cdef const char* mp = <const char*> _array(mean, "mean", t, 1, n_cols, 0, False)
    cdef const char* vp = <const char*> _array(var, "var", t, 1, n_cols, 0, False)
    cdef char* ap = <char*> _array(a_out, "a_out", t, 2, n_rows, n_cols, True)
    cdef Py_ssize_t j
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    for j in range(n_cols):
        if t == cnp.NPY_FLOAT32:
            ok = (<const float*> vp)[j] + epsilon > 0
        else:
            ok = (<const double*> vp)[j] + epsilon > 0
        if not ok:
            raise ValueError(f"var + epsilon must be positive (column {j})")
    if n_rows == 0 or n_cols == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            cbn_act_forward_infer(<const float*> zp, <float*> ap, n_rows, n_cols,
                                  <const float*> gp, <const float*> bp,
                                  <const float*> mp, <const float*> vp, epsilon, act)
        else:
            cbn_act_forward_infer(<const double*> zp, <double*> ap, n_rows, n_cols,
                                  <const double*> gp, <const double*> bp,
                                  <const double*> mp, <const double*> vp, epsilon, act)


def bn_backward(da, a, z, gamma, mean, var, dz_out, dgamma_out, dbeta_out,
                sample_weight=None, double epsilon=1e-5, activation="identity"):
    """Backward pass of :func:`bn_forward_train`.

    Parameters
    ----------
    da : ndarray of shape (n_rows, n_cols)
        Gradient of the loss with respect to the layer output ``a``.
    a, z : ndarray of shape (n_rows, n_cols)
        The layer output and input of the forward pass.
    gamma : ndarray of shape (n_cols,)
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
    cdef int act = activation_code(activation)
    cdef int t = _float_type(z, "z")
    cdef Py_ssize_t n_rows = z.shape[0], n_cols = z.shape[1]
    cdef const char* dap = <const char*> _array(da, "da", t, 2, n_rows, n_cols, False)
    cdef const char* ap = <const char*> _array(a, "a", t, 2, n_rows, n_cols, False)
    cdef const char* zp = <const char*> _array(z, "z", t, 2, n_rows, n_cols, False)
    cdef const char* gp = <const char*> _array(gamma, "gamma", t, 1, n_cols, 0, False)
    cdef const double* mp = <const double*> _array(mean, "mean", cnp.NPY_FLOAT64, 1, n_cols, 0, False)
    cdef const double* vp = <const double*> _array(var, "var", cnp.NPY_FLOAT64, 1, n_cols, 0, False)
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
        sw = <const char*> _array(sample_weight, "sample_weight", t, 1, n_rows, 0, False)
        wsum = _weights_sum(sw, t, n_rows)
    _check_var(vp, n_cols, epsilon)
    if n_cols == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            cbn_act_backward(<const float*> dap, <const float*> ap, <const float*> zp,
                             <float*> dzp, n_rows, n_cols, <const float*> gp, mp, vp,
                             epsilon, <const float*> sw, wsum, act, <float*> dgp,
                             <float*> dbp, NULL)
        else:
            cbn_act_backward(<const double*> dap, <const double*> ap, <const double*> zp,
                             <double*> dzp, n_rows, n_cols, <const double*> gp, mp, vp,
                             epsilon, <const double*> sw, wsum, act, <double*> dgp,
                             <double*> dbp, NULL)


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
        raise TypeError(f"running_mean must be float32 or float64, got {running_mean.dtype}")
    n_cols = running_mean.shape[0]
    cdef char* rmp = <char*> _array(running_mean, "running_mean", t, 1, n_cols, 0, True)
    cdef char* rvp = <char*> _array(running_var, "running_var", t, 1, n_cols, 0, True)
    cdef const double* mp = <const double*> _array(mean, "mean", cnp.NPY_FLOAT64, 1, n_cols, 0, False)
    cdef const double* vp = <const double*> _array(var, "var", cnp.NPY_FLOAT64, 1, n_cols, 0, False)
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


def _set_panel_bytes(Py_ssize_t n_bytes):
    """Set the per-array panel budget in bytes; return the previous one (tuning)."""
    global PANEL_BYTES
    old = PANEL_BYTES
    PANEL_BYTES = max(n_bytes, 1)
    return old
