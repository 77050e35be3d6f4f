"""Batch-normalization kernels, fused with the hidden-layer activation.

Three layers, as in scikit-learn's ``_loss.pyx``: ``c*`` functions do the math
on raw C-contiguous blocks without the GIL (the training engine calls them
directly); ``def`` wrappers check shapes, dtypes and contiguity, release the
GIL and call them; the estimators validate user input before either.

Statistics are accumulated in double precision over cache-sized row blocks:
a two-pass mean/variance per block (the second pass hits the cache), merged
across blocks with Chan et al.'s pairwise update. This is as accurate as a
two-pass algorithm and reads the data from memory once.

Every kernel takes a ``scratch`` buffer of at least ``SCRATCH_PER_COLUMN *
n_cols`` doubles so that callers allocate once (per fit), never per batch.
"""
from libc.math cimport sqrt
from libc.string cimport memset
from cython cimport floating

import numpy as np

from sklearn_bn._activations cimport act_forward, act_derivative, IDENTITY, RELU
from sklearn_bn._activations import activation_code

# Doubles of scratch each kernel needs per column.
SCRATCH_PER_COLUMN = 8
# Rows per statistics block: about 64 KiB of float64 per block.
cdef Py_ssize_t BLOCK_DOUBLES = 8192


cdef void cbatch_stats(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                       const floating* sample_weight, bint ignore_nan,
                       double* mean_out, double* var_out, double* wsum_out,
                       double* scratch) noexcept nogil:
    """Column means and ddof=0 variances of ``x``, optionally weighted.

    ``wsum_out[j]`` receives the sum of the weights of the rows that count in
    column ``j`` (all rows, or the non-NaN ones when ``ignore_nan``). Columns
    with no weight get mean 0 and variance 0.
    """
    cdef double* block_w = scratch
    cdef double* block_mean = scratch + n_cols
    cdef double* block_m2 = scratch + 2 * n_cols
    cdef Py_ssize_t block_rows = max(1, BLOCK_DOUBLES // max(n_cols, 1))
    cdef Py_ssize_t start, stop, i, j
    cdef double w, v, d, total, delta
    cdef const floating* row

    memset(mean_out, 0, n_cols * sizeof(double))
    memset(var_out, 0, n_cols * sizeof(double))  # holds M2 until the end
    memset(wsum_out, 0, n_cols * sizeof(double))

    start = 0
    while start < n_rows:
        stop = min(start + block_rows, n_rows)
        memset(block_w, 0, n_cols * sizeof(double))
        memset(block_mean, 0, n_cols * sizeof(double))
        memset(block_m2, 0, n_cols * sizeof(double))
        # Pass 1 over the block: weighted sums.
        for i in range(start, stop):
            row = x + i * n_cols
            w = sample_weight[i] if sample_weight != NULL else 1.0
            if ignore_nan:
                for j in range(n_cols):
                    v = row[j]
                    if v == v:
                        block_w[j] += w
                        block_mean[j] += w * v
            else:
                for j in range(n_cols):
                    block_mean[j] += w * row[j]
        if not ignore_nan:
            w = 0
            for i in range(start, stop):
                w += sample_weight[i] if sample_weight != NULL else 1.0
            for j in range(n_cols):
                block_w[j] = w
        for j in range(n_cols):
            if block_w[j] != 0:
                block_mean[j] /= block_w[j]
        # Pass 2 over the block, from cache: weighted squared deviations.
        for i in range(start, stop):
            row = x + i * n_cols
            w = sample_weight[i] if sample_weight != NULL else 1.0
            if ignore_nan:
                for j in range(n_cols):
                    v = row[j]
                    if v == v:
                        d = v - block_mean[j]
                        block_m2[j] += w * d * d
            else:
                for j in range(n_cols):
                    d = row[j] - block_mean[j]
                    block_m2[j] += w * d * d
        # Merge the block into the running totals (Chan et al.).
        for j in range(n_cols):
            if block_w[j] == 0:
                continue
            total = wsum_out[j] + block_w[j]
            delta = block_mean[j] - mean_out[j]
            mean_out[j] += delta * (block_w[j] / total)
            var_out[j] += block_m2[j] + delta * delta * (wsum_out[j] * block_w[j] / total)
            wsum_out[j] = total
        start = stop

    for j in range(n_cols):
        if wsum_out[j] > 0:
            var_out[j] = max(var_out[j] / wsum_out[j], 0.0)
        else:
            mean_out[j] = 0
            var_out[j] = 0


cdef void cbn_act_forward_train(const floating* z, floating* a_out,
                                Py_ssize_t n_rows, Py_ssize_t n_cols,
                                const floating* gamma, const floating* beta,
                                const floating* sample_weight, double epsilon,
                                int act, double* mean_out, double* var_out,
                                double* scratch) noexcept nogil:
    """``a = act(gamma * (z - mean) / sqrt(var + eps) + beta)`` on batch stats.

    ``a_out`` may alias ``z``. Writes the batch mean and (ddof=0) variance,
    which the backward pass needs together with ``z`` and ``a``.
    """
    cdef double* wsum = scratch + 3 * n_cols
    cdef floating* scale = <floating*> (scratch + 4 * n_cols)
    cdef floating* shift = <floating*> (scratch + 5 * n_cols)
    cdef Py_ssize_t i, j
    cdef double s
    cdef const floating* zrow
    cdef floating* arow

    cbatch_stats(z, n_rows, n_cols, sample_weight, False, mean_out, var_out,
                 wsum, scratch)
    for j in range(n_cols):
        s = gamma[j] / sqrt(var_out[j] + epsilon)
        scale[j] = <floating> s
        shift[j] = <floating> (beta[j] - mean_out[j] * s)
    for i in range(n_rows):
        zrow = z + i * n_cols
        arow = a_out + i * n_cols
        if act == IDENTITY:
            for j in range(n_cols):
                arow[j] = zrow[j] * scale[j] + shift[j]
        elif act == RELU:
            for j in range(n_cols):
                s = zrow[j] * scale[j] + shift[j]
                arow[j] = <floating> (s if s > 0 else 0)
        else:
            for j in range(n_cols):
                arow[j] = act_forward(zrow[j] * scale[j] + shift[j], act)


cdef void cbn_act_forward_infer(const floating* z, floating* a_out,
                                Py_ssize_t n_rows, Py_ssize_t n_cols,
                                const floating* gamma, const floating* beta,
                                const floating* mean, const floating* var,
                                double epsilon, int act) noexcept nogil:
    """Inference-mode forward on given (running) mean and variance."""
    cdef Py_ssize_t i, j
    cdef double s
    for i in range(n_rows):
        for j in range(n_cols):
            s = gamma[j] / sqrt(var[j] + epsilon)
            a_out[i * n_cols + j] = act_forward(
                <floating> ((z[i * n_cols + j] - mean[j]) * s + beta[j]), act)


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

    ``dz_out`` may alias ``da``; ``g`` is kept in ``dz_out`` between the passes.
    """
    cdef double* sum_g = scratch
    cdef double* sum_gz = scratch + n_cols
    cdef floating* mean_f = <floating*> (scratch + 2 * n_cols)
    cdef floating* inv_std = <floating*> (scratch + 3 * n_cols)
    cdef floating* c_scale = <floating*> (scratch + 4 * n_cols)
    cdef floating* c_beta = <floating*> (scratch + 5 * n_cols)
    cdef floating* c_gamma = <floating*> (scratch + 6 * n_cols)
    cdef Py_ssize_t i, j
    cdef floating g, zh, w
    cdef const floating* darow
    cdef const floating* arow
    cdef const floating* zrow
    cdef floating* dzrow

    memset(sum_g, 0, 2 * n_cols * sizeof(double))
    for j in range(n_cols):
        mean_f[j] = <floating> mean[j]
        inv_std[j] = <floating> (1.0 / sqrt(var[j] + epsilon))

    # Pass 1: g = da * act'(a), and the two column reductions.
    for i in range(n_rows):
        darow = da + i * n_cols
        arow = a + i * n_cols
        zrow = z + i * n_cols
        dzrow = dz_out + i * n_cols
        if act == IDENTITY:
            for j in range(n_cols):
                g = darow[j]
                dzrow[j] = g
                sum_g[j] += g
                sum_gz[j] += g * ((zrow[j] - mean_f[j]) * inv_std[j])
        elif act == RELU:
            for j in range(n_cols):
                g = darow[j] if arow[j] > 0 else 0
                dzrow[j] = g
                sum_g[j] += g
                sum_gz[j] += g * ((zrow[j] - mean_f[j]) * inv_std[j])
        else:
            for j in range(n_cols):
                g = darow[j] * act_derivative(arow[j], act)
                dzrow[j] = g
                sum_g[j] += g
                sum_gz[j] += g * ((zrow[j] - mean_f[j]) * inv_std[j])

    for j in range(n_cols):
        dbeta_out[j] = <floating> sum_g[j]
        dgamma_out[j] = <floating> sum_gz[j]
        c_scale[j] = gamma[j] * inv_std[j]
        c_beta[j] = <floating> (sum_g[j] / wsum)
        c_gamma[j] = <floating> (sum_gz[j] / wsum)

    # Pass 2: dz from g (in dz_out) and z.
    for i in range(n_rows):
        zrow = z + i * n_cols
        dzrow = dz_out + i * n_cols
        w = sample_weight[i] if sample_weight != NULL else 1
        for j in range(n_cols):
            zh = (zrow[j] - mean_f[j]) * inv_std[j]
            dzrow[j] = c_scale[j] * (dzrow[j] - w * (c_beta[j] + zh * c_gamma[j]))


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
# def wrappers: check everything, then call the kernels without the GIL.


cdef _check_2d(name, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t n_rows,
               Py_ssize_t n_cols):
    if rows != n_rows or cols != n_cols:
        raise ValueError(
            f"{name} has shape ({rows}, {cols}), expected ({n_rows}, {n_cols})")


cdef _check_1d(name, Py_ssize_t size, Py_ssize_t expected):
    if size != expected:
        raise ValueError(f"{name} has length {size}, expected {expected}")


def _check_epsilon(epsilon):
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")


def _weights_sum(sample_weight):
    wsum = float(np.sum(sample_weight))
    if not wsum > 0:
        raise ValueError(
            f"sample weights must sum to a positive number, got {wsum}")
    return wsum


def batch_stats(const floating[:, ::1] x, const floating[::1] sample_weight=None,
                bint ignore_nan=False):
    """Column means and ddof=0 variances of ``x``.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_cols), float32 or float64, C-contiguous
    sample_weight : ndarray of shape (n_rows,), same dtype as ``x``, default=None
    ignore_nan : bool, default=False
        Skip NaN entries (each column then has its own weight sum).

    Returns
    -------
    mean, var, weight_sum : ndarray of shape (n_cols,), float64
        Accumulated in double precision whatever the input dtype.
    """
    cdef Py_ssize_t n_rows = x.shape[0], n_cols = x.shape[1]
    if sample_weight is not None:
        _check_1d("sample_weight", sample_weight.shape[0], n_rows)
    mean = np.zeros(n_cols, dtype=np.float64)
    var = np.zeros(n_cols, dtype=np.float64)
    wsum = np.zeros(n_cols, dtype=np.float64)
    scratch = np.empty(max(1, SCRATCH_PER_COLUMN * n_cols), dtype=np.float64)
    cdef double[::1] mean_v = mean, var_v = var, wsum_v = wsum, scratch_v = scratch
    cdef const floating* sw = NULL
    if n_rows == 0 or n_cols == 0:
        return mean, var, wsum
    if sample_weight is not None:
        sw = &sample_weight[0]
    with nogil:
        cbatch_stats(&x[0, 0], n_rows, n_cols, sw, ignore_nan, &mean_v[0],
                     &var_v[0], &wsum_v[0], &scratch_v[0])
    return mean, var, wsum


def bn_forward_train(const floating[:, ::1] z, const floating[::1] gamma,
                     const floating[::1] beta, floating[:, ::1] a_out,
                     double[::1] mean_out, double[::1] var_out,
                     const floating[::1] sample_weight=None,
                     double epsilon=1e-5, activation="identity"):
    """Training-mode batch norm fused with the activation.

    ``a_out = act(gamma * (z - mean) / sqrt(var + epsilon) + beta)`` where
    ``mean`` and ``var`` (ddof=0, weighted by ``sample_weight``) are the batch
    statistics of ``z``, written to ``mean_out`` and ``var_out``. Keep ``z``,
    ``a_out`` and the statistics for :func:`bn_backward`.

    Parameters
    ----------
    z : ndarray of shape (n_rows, n_cols)
    gamma, beta : ndarray of shape (n_cols,), same dtype as ``z``
    a_out : ndarray of shape (n_rows, n_cols), same dtype as ``z``, written
    mean_out, var_out : ndarray of shape (n_cols,), float64, written
    sample_weight : ndarray of shape (n_rows,), default=None
    epsilon : float, default=1e-5
    activation : {'identity', 'relu', 'tanh', 'logistic'}, default='identity'
    """
    cdef int act = activation_code(activation)
    cdef Py_ssize_t n_rows = z.shape[0], n_cols = z.shape[1]
    _check_epsilon(epsilon)
    _check_1d("gamma", gamma.shape[0], n_cols)
    _check_1d("beta", beta.shape[0], n_cols)
    _check_2d("a_out", a_out.shape[0], a_out.shape[1], n_rows, n_cols)
    _check_1d("mean_out", mean_out.shape[0], n_cols)
    _check_1d("var_out", var_out.shape[0], n_cols)
    if n_rows == 0:
        raise ValueError("z must have at least one row")
    cdef const floating* sw = NULL
    if sample_weight is not None:
        _check_1d("sample_weight", sample_weight.shape[0], n_rows)
        _weights_sum(sample_weight)
        sw = &sample_weight[0]
    if n_cols == 0:
        return
    if epsilon == 0 and np.min(np.var(z, axis=0)) == 0:
        raise ValueError("a constant column with epsilon=0 cannot be normalized")
    scratch = np.empty(SCRATCH_PER_COLUMN * n_cols, dtype=np.float64)
    cdef double[::1] scratch_v = scratch
    with nogil:
        cbn_act_forward_train(&z[0, 0], &a_out[0, 0], n_rows, n_cols, &gamma[0],
                              &beta[0], sw, epsilon, act, &mean_out[0],
                              &var_out[0], &scratch_v[0])


def bn_forward_infer(const floating[:, ::1] z, const floating[::1] gamma,
                     const floating[::1] beta, const floating[::1] mean,
                     const floating[::1] var, floating[:, ::1] a_out,
                     double epsilon=1e-5, activation="identity"):
    """Inference-mode batch norm fused with the activation.

    ``a_out = act(gamma * (z - mean) / sqrt(var + epsilon) + beta)`` with the
    given (running) ``mean`` and ``var``.
    """
    cdef int act = activation_code(activation)
    cdef Py_ssize_t n_rows = z.shape[0], n_cols = z.shape[1]
    _check_epsilon(epsilon)
    for name, arr in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        _check_1d(name, arr.shape[0], n_cols)
    _check_2d("a_out", a_out.shape[0], a_out.shape[1], n_rows, n_cols)
    if n_rows == 0 or n_cols == 0:
        return
    if np.min(np.asarray(var)) + epsilon <= 0:
        raise ValueError("var + epsilon must be positive")
    with nogil:
        cbn_act_forward_infer(&z[0, 0], &a_out[0, 0], n_rows, n_cols, &gamma[0],
                              &beta[0], &mean[0], &var[0], epsilon, act)


def bn_backward(const floating[:, ::1] da, const floating[:, ::1] a,
                const floating[:, ::1] z, const floating[::1] gamma,
                const double[::1] mean, const double[::1] var,
                floating[:, ::1] dz_out, floating[::1] dgamma_out,
                floating[::1] dbeta_out, const floating[::1] sample_weight=None,
                double epsilon=1e-5, activation="identity"):
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
    """
    cdef int act = activation_code(activation)
    cdef Py_ssize_t n_rows = z.shape[0], n_cols = z.shape[1]
    cdef double wsum = n_rows
    _check_epsilon(epsilon)
    _check_2d("da", da.shape[0], da.shape[1], n_rows, n_cols)
    _check_2d("a", a.shape[0], a.shape[1], n_rows, n_cols)
    _check_2d("dz_out", dz_out.shape[0], dz_out.shape[1], n_rows, n_cols)
    for name, arr in (("gamma", gamma), ("mean", mean), ("var", var),
                      ("dgamma_out", dgamma_out), ("dbeta_out", dbeta_out)):
        _check_1d(name, arr.shape[0], n_cols)
    if n_rows == 0:
        raise ValueError("z must have at least one row")
    cdef const floating* sw = NULL
    if sample_weight is not None:
        _check_1d("sample_weight", sample_weight.shape[0], n_rows)
        wsum = _weights_sum(sample_weight)
        sw = &sample_weight[0]
    if n_cols == 0:
        return
    if np.min(np.asarray(var)) + epsilon <= 0:
        raise ValueError("var + epsilon must be positive")
    scratch = np.empty(SCRATCH_PER_COLUMN * n_cols, dtype=np.float64)
    cdef double[::1] scratch_v = scratch
    with nogil:
        cbn_act_backward(&da[0, 0], &a[0, 0], &z[0, 0], &dz_out[0, 0], n_rows,
                         n_cols, &gamma[0], &mean[0], &var[0], epsilon, sw, wsum,
                         act, &dgamma_out[0], &dbeta_out[0], &scratch_v[0])


def update_running_stats(floating[::1] running_mean, floating[::1] running_var,
                         const double[::1] mean, const double[::1] var,
                         double momentum, double n_samples):
    """In place: ``running = (1 - momentum) * running + momentum * batch``.

    The batch variance (ddof=0) is corrected to the unbiased one with
    ``n_samples / (n_samples - 1)`` (the sum of the weights for a weighted
    batch), as PyTorch's ``BatchNorm1d`` does; no correction when
    ``n_samples <= 1``.
    """
    cdef Py_ssize_t n_cols = running_mean.shape[0]
    for name, arr in (("running_var", running_var), ("mean", mean), ("var", var)):
        _check_1d(name, arr.shape[0], n_cols)
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if n_cols == 0:
        return
    with nogil:
        cupdate_running_stats(&running_mean[0], &running_var[0], &mean[0],
                              &var[0], n_cols, momentum, n_samples)
