"""Training engine: whole epochs of minibatch training without the GIL.

One call of :func:`train_epoch` runs an epoch: for each minibatch it gathers
the rows through the epoch's sample order (no shuffled copy of X), runs the
forward pass (BLAS ``gemm`` from ``scipy.linalg.cython_blas``, batch norm fused
with the activation), the output activation and loss, the backward pass, the
L2 term and the optimizer step in place on one flat parameter vector.

Parameter layout (flat vector ``theta``; ``grad`` and the optimizer state have
the same layout): for each weight layer ``l``, its coefficient matrix
(``units[l] x units[l + 1]``, row-major) at ``coef_off[l]``; for hidden layers
its ``gamma`` at ``gamma_off[l]``; its ``beta`` (hidden layers) or output
intercept at ``bias_off[l]``. Running statistics of hidden layer ``l`` live at
``stat_off[l]`` of ``running_mean``/``running_var``.

Workspace: ``work`` (input dtype) and ``dwork`` (float64) are allocated once
per fit by the caller (``_mlp._workspace_sizes`` gives the sizes and offsets),
and are sized by the minibatch, not by the data.
"""
from libc.math cimport exp, log, sqrt, sqrtf
from libc.string cimport memcpy, memset
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from cython cimport floating

import numpy as np

from sklearn_bn._activations cimport act_forward, logistic, IDENTITY, RELU
from sklearn_bn._blas cimport cgemm, caxpy
from sklearn_bn._batchnorm cimport (
    cbn_act_forward_train, cbn_act_backward, cupdate_running_stats)
from sklearn_bn._batchnorm import SCRATCH_PER_COLUMN

cdef Py_ssize_t SCRATCH_COLS = SCRATCH_PER_COLUMN

cpdef enum OutActivation:
    OUT_IDENTITY = 0   # squared error
    OUT_LOGISTIC = 1   # binary log loss (binary and multilabel)
    OUT_SOFTMAX = 2    # log loss (multiclass)
    OUT_EXP = 3        # half Poisson deviance

cpdef enum Solver:
    SGD = 0
    ADAM = 1

OUT_ACTIVATIONS = {
    "identity": OUT_IDENTITY,
    "logistic": OUT_LOGISTIC,
    "softmax": OUT_SOFTMAX,
    "exp": OUT_EXP,
}

# Rows per block in the folded forward pass used for prediction.
PREDICT_BLOCK_ROWS = 1024


cdef struct Net:
    int n_layers                 # weight layers: hidden layers + output
    int act
    int out_act
    Py_ssize_t n_features
    Py_ssize_t n_out
    const Py_ssize_t* units      # n_layers + 1
    const Py_ssize_t* coef_off
    const Py_ssize_t* gamma_off
    const Py_ssize_t* bias_off
    const Py_ssize_t* stat_off
    const Py_ssize_t* z_off      # per hidden layer, into work
    const Py_ssize_t* a_off
    const Py_ssize_t* d_off
    Py_ssize_t xb_off
    Py_ssize_t yb_off
    Py_ssize_t swb_off
    Py_ssize_t p_off
    Py_ssize_t scratch_off       # into dwork; batch mean / var at stat_off
    Py_ssize_t var_base          # dwork offset of the batch variances
    double alpha
    double bn_momentum
    double bn_epsilon
    bint sparse
    bint weighted


cdef inline floating clip_prob(floating p) noexcept nogil:
    cdef floating eps
    if floating is float:
        eps = FLT_EPSILON
    else:
        eps = DBL_EPSILON
    if p < eps:
        return eps
    if p > 1 - eps:
        return 1 - eps
    return p


cdef double output_loss_and_delta(Net* net, floating* p, const floating* y,
                                  const floating* swb, Py_ssize_t m,
                                  double wsum) noexcept nogil:
    """Apply the output activation to ``p`` in place, return the weighted mean
    loss and overwrite ``p`` with ``dL/dz = w * (p - y) / wsum``."""
    cdef Py_ssize_t i, j, n_out = net.n_out
    cdef floating* row
    cdef const floating* yrow
    cdef floating mx, q
    cdef double s, row_loss, total = 0, w
    for i in range(m):
        row = p + i * n_out
        yrow = y + i * n_out
        w = swb[i] if net.weighted else 1.0
        row_loss = 0
        if net.out_act == OUT_IDENTITY:
            for j in range(n_out):
                row_loss += 0.5 * (row[j] - yrow[j]) * (row[j] - yrow[j])
        elif net.out_act == OUT_LOGISTIC:
            for j in range(n_out):
                row[j] = logistic(row[j])
                q = clip_prob(row[j])
                row_loss -= yrow[j] * log(q) + (1 - yrow[j]) * log(1 - q)
        elif net.out_act == OUT_SOFTMAX:
            mx = row[0]
            for j in range(1, n_out):
                if row[j] > mx:
                    mx = row[j]
            s = 0
            for j in range(n_out):
                row[j] = <floating> exp(row[j] - mx)
                s += row[j]
            for j in range(n_out):
                row[j] = <floating> (row[j] / s)
                if yrow[j] != 0:
                    row_loss -= yrow[j] * log(clip_prob(row[j]))
        else:  # OUT_EXP, half Poisson deviance
            for j in range(n_out):
                row[j] = <floating> exp(row[j])
                if yrow[j] > 0:
                    row_loss += yrow[j] * log(yrow[j] / row[j])
                row_loss += row[j] - yrow[j]
        total += w * row_loss
        for j in range(n_out):
            row[j] = <floating> (w * (row[j] - yrow[j]) / wsum)
    return total / wsum


cdef void sparse_rows_matmul(const Py_ssize_t* rows, Py_ssize_t m,
                             const floating* data, const Py_ssize_t* indices,
                             const Py_ssize_t* indptr, const floating* w,
                             Py_ssize_t n_cols, floating* out) noexcept nogil:
    """out[k] = X[rows[k]] @ W for CSR X."""
    cdef Py_ssize_t k, p
    memset(out, 0, m * n_cols * sizeof(floating))
    for k in range(m):
        for p in range(indptr[rows[k]], indptr[rows[k] + 1]):
            caxpy(<int> n_cols, data[p], w + indices[p] * n_cols, out + k * n_cols)


cdef void sparse_rows_grad(const Py_ssize_t* rows, Py_ssize_t m,
                           const floating* data, const Py_ssize_t* indices,
                           const Py_ssize_t* indptr, const floating* delta,
                           Py_ssize_t n_cols, floating* grad) noexcept nogil:
    """grad += X[rows].T @ delta for CSR X (grad must start at zero)."""
    cdef Py_ssize_t k, p
    for k in range(m):
        for p in range(indptr[rows[k]], indptr[rows[k] + 1]):
            caxpy(<int> n_cols, data[p], delta + k * n_cols, grad + indices[p] * n_cols)


cdef double sum_of_squares(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of ``x**2``, with 8 independent partial sums so that the compiler
    can vectorize it without reassociating floating-point additions."""
    cdef double lanes[8]
    cdef double total = 0
    cdef Py_ssize_t i, k, n8 = n - n % 8
    for k in range(8):
        lanes[k] = 0
    for i in range(0, n8, 8):
        for k in range(8):
            lanes[k] += <double> x[i + k] * x[i + k]
    for i in range(n8, n):
        total += <double> x[i] * x[i]
    for k in range(8):
        total += lanes[k]
    return total


cdef double forward_backward(
        Net* net, const Py_ssize_t* rows, Py_ssize_t m, bint rows_contiguous,
        const floating* X, const floating* X_data, const Py_ssize_t* X_indices,
        const Py_ssize_t* X_indptr, const floating* Y, const floating* sw,
        const floating* theta, floating* grad, floating* running_mean,
        floating* running_var, floating* work, double* dwork,
        bint update_running, double* wsum_out) noexcept nogil:
    """Loss of one minibatch (rows ``rows[:m]``) and its gradient in ``grad``.

    Returns the weighted mean loss plus the L2 term; ``wsum_out`` receives the
    batch's weight sum (0: the batch was skipped and nothing was written).
    """
    cdef Py_ssize_t L = net.n_layers, nf = net.n_features, n_out = net.n_out
    cdef Py_ssize_t k, l, i, fan_in, fan_out, n_coef
    cdef floating* xb = work + net.xb_off
    cdef floating* yb = work + net.yb_off
    cdef floating* swb = work + net.swb_off
    cdef floating* p = work + net.p_off
    cdef double* scratch = dwork + net.scratch_off
    cdef const floating* xin
    cdef const floating* layer_in
    cdef const floating* W
    cdef floating* out
    cdef floating* gW
    cdef floating* D
    cdef const floating* swp
    cdef double wsum = 0, loss, sumsq = 0, l2
    cdef double n_running = 0   # the m of the unbiased correction m / (m - 1)
    cdef floating c

    # Gather the minibatch.
    for k in range(m):
        memcpy(yb + k * n_out, Y + rows[k] * n_out, n_out * sizeof(floating))
    if net.weighted:
        for k in range(m):
            swb[k] = sw[rows[k]]
            wsum += swb[k]
            if swb[k] > 0:
                n_running += 1
    else:
        wsum = m
    wsum_out[0] = wsum
    # Weights act as repeat counts in the unbiased correction m / (m - 1).
    # Below two repeats' worth (e.g. weights normalized to sum to 1) that
    # would blow up, so m falls back to the number of rows that carry weight.
    if wsum >= 2:
        n_running = wsum
    if not wsum > 0:
        return 0.0
    swp = swb if net.weighted else NULL
    if net.sparse:
        xin = NULL
    elif rows_contiguous:
        xin = X + rows[0] * nf
    else:
        for k in range(m):
            memcpy(xb + k * nf, X + rows[k] * nf, nf * sizeof(floating))
        xin = xb

    # Forward.
    layer_in = xin
    for l in range(L):
        fan_in = net.units[l]
        fan_out = net.units[l + 1]
        W = theta + net.coef_off[l]
        out = (work + net.z_off[l]) if l < L - 1 else p
        if l == 0 and net.sparse:
            sparse_rows_matmul(rows, m, X_data, X_indices, X_indptr, W, fan_out, out)
        else:
            cgemm(False, False, <int> m, <int> fan_out, <int> fan_in, <floating> 1,
                  layer_in, <int> fan_in, W, <int> fan_out, <floating> 0, out,
                  <int> fan_out)
        if l < L - 1:
            cbn_act_forward_train(
                out, work + net.a_off[l], m, fan_out,
                theta + net.gamma_off[l], theta + net.bias_off[l], swp,
                net.bn_epsilon, net.act, dwork + net.stat_off[l],
                dwork + net.var_base + net.stat_off[l], scratch)
            if update_running:
                cupdate_running_stats(
                    running_mean + net.stat_off[l], running_var + net.stat_off[l],
                    dwork + net.stat_off[l], dwork + net.var_base + net.stat_off[l],
                    fan_out, net.bn_momentum, n_running)
            layer_in = work + net.a_off[l]
        else:
            for k in range(m):
                for i in range(fan_out):
                    out[k * fan_out + i] += theta[net.bias_off[l] + i]
    loss = output_loss_and_delta(net, p, yb, swb, m, wsum)

    # Backward.
    l2 = net.alpha / wsum
    for l in range(L - 1, -1, -1):
        fan_in = net.units[l]
        fan_out = net.units[l + 1]
        W = theta + net.coef_off[l]
        gW = grad + net.coef_off[l]
        if l == L - 1:
            D = p
            memset(grad + net.bias_off[l], 0, fan_out * sizeof(floating))
            for k in range(m):
                for i in range(fan_out):
                    grad[net.bias_off[l] + i] += D[k * fan_out + i]
        else:
            D = work + net.d_off[l]
            cbn_act_backward(
                D, work + net.a_off[l], work + net.z_off[l], D, m, fan_out,
                theta + net.gamma_off[l], dwork + net.stat_off[l],
                dwork + net.var_base + net.stat_off[l], net.bn_epsilon, swp,
                wsum, net.act, grad + net.gamma_off[l], grad + net.bias_off[l],
                scratch)
        if l == 0 and net.sparse:
            memset(gW, 0, fan_in * fan_out * sizeof(floating))
            sparse_rows_grad(rows, m, X_data, X_indices, X_indptr, D, fan_out, gW)
        else:
            layer_in = xin if l == 0 else work + net.a_off[l - 1]
            cgemm(True, False, <int> fan_in, <int> fan_out, <int> m, <floating> 1,
                  layer_in, <int> fan_in, D, <int> fan_out, <floating> 0, gW,
                  <int> fan_out)
        n_coef = fan_in * fan_out
        c = <floating> l2
        for i in range(n_coef):
            gW[i] += c * W[i]
        sumsq += sum_of_squares(W, n_coef)
        if l > 0:
            cgemm(False, True, <int> m, <int> fan_in, <int> fan_out, <floating> 1,
                  D, <int> fan_out, W, <int> fan_out, <floating> 0,
                  work + net.d_off[l - 1], <int> fan_in)
    return loss + 0.5 * l2 * sumsq


cdef void optimizer_step(int solver, floating* theta, const floating* grad,
                         floating* state_a, floating* state_b, Py_ssize_t n,
                         double learning_rate, double momentum, bint nesterov,
                         double beta_1, double beta_2, double adam_epsilon,
                         Py_ssize_t t) noexcept nogil:
    """One Adam (t = step number, from 1) or SGD-with-momentum step, in place."""
    cdef Py_ssize_t i
    cdef floating g, v, lr_t, b1, b2, eps, mom, lr
    if solver == ADAM:
        lr_t = <floating> (learning_rate * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t))
        b1 = <floating> beta_1
        b2 = <floating> beta_2
        eps = <floating> adam_epsilon
        for i in range(n):
            g = grad[i]
            state_a[i] = b1 * state_a[i] + (1 - b1) * g
            state_b[i] = b2 * state_b[i] + (1 - b2) * g * g
            if floating is float:
                theta[i] -= lr_t * state_a[i] / (sqrtf(state_b[i]) + eps)
            else:
                theta[i] -= lr_t * state_a[i] / (sqrt(state_b[i]) + eps)
    else:
        mom = <floating> momentum
        lr = <floating> learning_rate
        for i in range(n):
            g = grad[i]
            v = mom * state_a[i] - lr * g
            state_a[i] = v
            if nesterov:
                theta[i] += mom * v - lr * g
            else:
                theta[i] += v


# ---------------------------------------------------------------------------
# Python-facing layer: the estimator validates everything, then calls these.



def _check_engine_args(X, X_data, X_indices, X_indptr, Y, sample_weight,
                       layout, theta, others, running_mean, running_var,
                       bint sparse, bint weighted):
    """Raise ValueError unless every array matches the network's layout.

    Python code in this module must not use negative indices: the module is
    compiled with ``wraparound=False``, which applies to lists too.
    """
    units = layout["units"]
    n_layers = len(units) - 1
    n_features = units[0]
    n_out = units[n_layers]
    n_params = layout["bias_off"][n_layers - 1] + n_out
    n_hidden = sum(units[1:n_layers])
    if sparse:
        n_rows = X_indptr.shape[0] - 1
        if n_rows < 0 or X_indices.shape[0] != X_data.shape[0]:
            raise ValueError("malformed CSR input")
        if X_indptr[0] != 0 or X_indptr[n_rows] != X_data.shape[0]:
            raise ValueError("malformed CSR input")
        if np.any(np.diff(np.asarray(X_indptr)) < 0):
            raise ValueError("malformed CSR input")
        if X_data.shape[0] and (np.min(X_indices) < 0
                                or np.max(X_indices) >= n_features):
            raise ValueError("CSR column index out of range")
    else:
        n_rows = X.shape[0]
        if X.shape[1] != n_features:
            raise ValueError(f"X has {X.shape[1]} features, expected {n_features}")
    if Y.shape[0] != n_rows or Y.shape[1] != n_out:
        raise ValueError(f"Y has shape {Y.shape[:2]}, expected ({n_rows}, {n_out})")
    if weighted and sample_weight.shape[0] != n_rows:
        raise ValueError("sample_weight and X have different numbers of rows")
    if theta.shape[0] != n_params:
        raise ValueError(f"theta has {theta.shape[0]} entries, expected {n_params}")
    for arr in others:
        if arr.shape[0] != n_params:
            raise ValueError("gradient and optimizer buffers must match theta")
    if running_mean.shape[0] != n_hidden or running_var.shape[0] != n_hidden:
        raise ValueError("running statistics do not match the hidden layers")
    return n_rows


cdef Net make_net(dict layout, dict ws, Py_ssize_t work_size,
                  Py_ssize_t dwork_size, int act, int out_act, double alpha,
                  double bn_momentum, double bn_epsilon, bint sparse,
                  bint weighted) except *:
    """The engine's view of a network: pointers into the offset arrays of
    ``layout`` and ``ws``, which the caller keeps alive during the call."""
    if (work_size < ws["work_size"] or dwork_size < ws["dwork_size"]
            or ws["units"] != tuple(layout["units"]) or ws["sparse"] != sparse):
        raise ValueError("workspace does not fit this network")
    cdef const Py_ssize_t[::1] units = layout["units"]
    cdef const Py_ssize_t[::1] coef_off = layout["coef_off"]
    cdef const Py_ssize_t[::1] gamma_off = layout["gamma_off"]
    cdef const Py_ssize_t[::1] bias_off = layout["bias_off"]
    cdef const Py_ssize_t[::1] stat_off = ws["stat_off"]
    cdef const Py_ssize_t[::1] z_off = ws["z_off"]
    cdef const Py_ssize_t[::1] a_off = ws["a_off"]
    cdef const Py_ssize_t[::1] d_off = ws["d_off"]
    cdef Net net
    net.n_layers = units.shape[0] - 1
    net.act = act
    net.out_act = out_act
    net.n_features = units[0]
    net.n_out = units[units.shape[0] - 1]
    net.units = &units[0]
    net.coef_off = &coef_off[0]
    net.gamma_off = &gamma_off[0]
    net.bias_off = &bias_off[0]
    net.stat_off = &stat_off[0]
    net.z_off = &z_off[0]
    net.a_off = &a_off[0]
    net.d_off = &d_off[0]
    net.xb_off = ws["xb_off"]
    net.yb_off = ws["yb_off"]
    net.swb_off = ws["swb_off"]
    net.p_off = ws["p_off"]
    net.scratch_off = ws["scratch_off"]
    net.var_base = ws["var_base"]
    net.alpha = alpha
    net.bn_momentum = bn_momentum
    net.bn_epsilon = bn_epsilon
    net.sparse = sparse
    net.weighted = weighted
    return net


cdef int data_pointers(const floating[:, ::1] X, const floating[::1] X_data,
                       const Py_ssize_t[::1] X_indices,
                       const Py_ssize_t[::1] X_indptr,
                       const floating[::1] sample_weight, bint sparse,
                       bint weighted, const floating** Xp,
                       const floating** Xd, const Py_ssize_t** Xi,
                       const Py_ssize_t** Xptr, const floating** swp) except -1:
    """Raw pointers to the input the engine reads (NULL for what it does not
    use); call after :func:`_check_engine_args`."""
    Xp[0] = Xd[0] = swp[0] = NULL
    Xi[0] = Xptr[0] = NULL
    if sparse:
        Xd[0] = &X_data[0] if X_data.shape[0] else NULL
        Xi[0] = &X_indices[0] if X_indices.shape[0] else NULL
        Xptr[0] = &X_indptr[0]
    else:
        Xp[0] = &X[0, 0]
    if weighted:
        swp[0] = &sample_weight[0]
    return 0


def train_epoch(
        const floating[:, ::1] X, const floating[::1] X_data,
        const Py_ssize_t[::1] X_indices, const Py_ssize_t[::1] X_indptr,
        const floating[:, ::1] Y, const floating[::1] sample_weight,
        const Py_ssize_t[::1] order, bint order_is_identity,
        Py_ssize_t batch_size, layout, dict ws,
        floating[::1] theta, floating[::1] grad, floating[::1] state_a,
        floating[::1] state_b, floating[::1] running_mean,
        floating[::1] running_var, floating[::1] work, double[::1] dwork,
        int act, int out_act, int solver, double learning_rate,
        double momentum, bint nesterov, double beta_1, double beta_2,
        double adam_epsilon, Py_ssize_t t, double alpha, double bn_momentum,
        double bn_epsilon, bint sparse, bint weighted):
    """Run one epoch over the rows in ``order``; update everything in place.

    Minibatches are consecutive slices of ``order`` of ``batch_size`` rows; a
    trailing single row joins the previous minibatch. Minibatches whose
    weights sum to zero are skipped.

    Returns
    -------
    loss_sum : float
        Sum over minibatches of (minibatch loss x minibatch rows).
    t : int
        The optimizer's step counter after the epoch.
    """
    cdef Net net
    cdef Py_ssize_t n = order.shape[0], n_params = theta.shape[0]
    cdef Py_ssize_t start, m
    cdef double loss_sum = 0, loss, wsum
    cdef const floating* Xp
    cdef const floating* Xd
    cdef const Py_ssize_t* Xi
    cdef const Py_ssize_t* Xptr
    cdef const floating* swp

    _check_engine_args(X, X_data, X_indices, X_indptr, Y, sample_weight,
                       layout, theta, (grad, state_a, state_b), running_mean,
                       running_var, sparse, weighted)
    if n < 2:
        raise ValueError("an epoch needs at least 2 samples")
    if np.min(order) < 0 or np.max(order) >= Y.shape[0]:
        raise ValueError("order has indices out of range")
    if batch_size < 2:
        raise ValueError("batch_size must be at least 2")
    if min(batch_size + 1, n) > ws["max_batch"]:
        raise ValueError("workspace too small for this batch size")
    net = make_net(layout, ws, work.shape[0], dwork.shape[0], act, out_act,
                   alpha, bn_momentum, bn_epsilon, sparse, weighted)
    data_pointers(X, X_data, X_indices, X_indptr, sample_weight, sparse,
                  weighted, &Xp, &Xd, &Xi, &Xptr, &swp)

    with nogil:
        start = 0
        while start < n:
            m = min(batch_size, n - start)
            if n - start - m == 1:
                m += 1   # a trailing single row joins this minibatch
            loss = forward_backward(
                &net, &order[start], m, order_is_identity, Xp, Xd, Xi, Xptr,
                &Y[0, 0], swp, &theta[0], &grad[0], &running_mean[0],
                &running_var[0], &work[0], &dwork[0], True, &wsum)
            if wsum > 0:
                loss_sum += loss * m
                t += 1
                optimizer_step(solver, &theta[0], &grad[0], &state_a[0],
                               &state_b[0], n_params, learning_rate, momentum,
                               nesterov, beta_1, beta_2, adam_epsilon, t)
            start += m
    return loss_sum, t


def loss_and_gradient(
        const floating[:, ::1] X, const floating[::1] X_data,
        const Py_ssize_t[::1] X_indices, const Py_ssize_t[::1] X_indptr,
        const floating[:, ::1] Y, const floating[::1] sample_weight,
        layout, dict ws, const floating[::1] theta, floating[::1] grad_out,
        floating[::1] running_mean, floating[::1] running_var,
        floating[::1] work, double[::1] dwork, int act, int out_act,
        double alpha, double bn_momentum, double bn_epsilon, bint sparse,
        bint weighted, bint update_running=False):
    """Loss and gradient of the whole batch ``X`` as one minibatch.

    The training-mode objective the engine follows (batch statistics, L2 on
    the coefficients); used by the gradient checks.
    """
    cdef Net net
    cdef Py_ssize_t m = Y.shape[0]
    cdef Py_ssize_t[::1] rows = np.arange(m, dtype=np.intp)
    cdef double loss, wsum
    cdef const floating* Xp
    cdef const floating* Xd
    cdef const Py_ssize_t* Xi
    cdef const Py_ssize_t* Xptr
    cdef const floating* swp
    _check_engine_args(X, X_data, X_indices, X_indptr, Y, sample_weight,
                       layout, theta, (grad_out,), running_mean, running_var,
                       sparse, weighted)
    if m < 1 or m > ws["max_batch"]:
        raise ValueError("need between one row and the workspace's max_batch")
    net = make_net(layout, ws, work.shape[0], dwork.shape[0], act, out_act,
                   alpha, bn_momentum, bn_epsilon, sparse, weighted)
    data_pointers(X, X_data, X_indices, X_indptr, sample_weight, sparse,
                  weighted, &Xp, &Xd, &Xi, &Xptr, &swp)
    with nogil:
        loss = forward_backward(
            &net, &rows[0], m, True, Xp, Xd, Xi, Xptr, &Y[0, 0], swp,
            &theta[0], &grad_out[0], &running_mean[0], &running_var[0],
            &work[0], &dwork[0], update_running, &wsum)
    if not wsum > 0:
        raise ValueError("sample weights sum to zero")
    return loss


cdef void bias_act_rows(floating* z, Py_ssize_t m, Py_ssize_t n,
                        const floating* bias, int act) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating* row
    for i in range(m):
        row = z + i * n
        if act == IDENTITY:
            for j in range(n):
                row[j] += bias[j]
        elif act == RELU:
            for j in range(n):
                row[j] = row[j] + bias[j]
                row[j] = row[j] if row[j] > 0 else 0
        else:
            for j in range(n):
                row[j] = act_forward(row[j] + bias[j], act)


cdef void out_activation_rows(floating* z, Py_ssize_t m, Py_ssize_t n,
                              int out_act) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating* row
    cdef floating mx
    cdef double s
    for i in range(m):
        row = z + i * n
        if out_act == OUT_LOGISTIC:
            for j in range(n):
                row[j] = logistic(row[j])
        elif out_act == OUT_EXP:
            for j in range(n):
                row[j] = <floating> exp(row[j])
        elif out_act == OUT_SOFTMAX:
            mx = row[0]
            for j in range(1, n):
                if row[j] > mx:
                    mx = row[j]
            s = 0
            for j in range(n):
                row[j] = <floating> exp(row[j] - mx)
                s += row[j]
            for j in range(n):
                row[j] = <floating> (row[j] / s)


def forward_folded(const floating[:, ::1] X, const floating[::1] params,
                   const Py_ssize_t[::1] units, const Py_ssize_t[::1] coef_off,
                   const Py_ssize_t[::1] bias_off, Py_ssize_t first_layer,
                   int act, int out_act, floating[:, ::1] out):
    """Inference forward pass of a network with batch norm folded in.

    ``X`` is the input of weight layer ``first_layer`` (the caller computes a
    sparse first layer itself); rows are processed in blocks of
    ``PREDICT_BLOCK_ROWS`` so that memory stays bounded for any number of rows.
    Hidden layers apply ``act(a @ W + b)``; the last applies ``out_act``.
    """
    cdef Py_ssize_t L = units.shape[0] - 1
    cdef Py_ssize_t n = X.shape[0], n_out = units[L], start, m, l, width = 1
    cdef Py_ssize_t block = PREDICT_BLOCK_ROWS
    if X.shape[1] != units[first_layer]:
        raise ValueError(
            f"X has {X.shape[1]} columns, expected {units[first_layer]}")
    if out.shape[0] != n or out.shape[1] != n_out:
        raise ValueError("out has the wrong shape")
    if not 0 <= first_layer < L:
        raise ValueError("first_layer out of range")
    for l in range(first_layer + 1, L):
        width = max(width, units[l])
    buffers = np.empty((2, block * width), dtype=np.asarray(params).dtype)
    cdef floating[:, ::1] buf = buffers
    cdef const floating* src
    cdef floating* dst
    cdef int cur
    if n == 0:
        return
    with nogil:
        start = 0
        while start < n:
            m = min(block, n - start)
            src = &X[start, 0]
            cur = 0
            for l in range(first_layer, L):
                dst = &out[start, 0] if l == L - 1 else &buf[cur, 0]
                cgemm(False, False, <int> m, <int> units[l + 1], <int> units[l],
                      <floating> 1, src, <int> units[l], &params[coef_off[l]],
                      <int> units[l + 1], <floating> 0, dst, <int> units[l + 1])
                if l < L - 1:
                    bias_act_rows(dst, m, units[l + 1], &params[bias_off[l]], act)
                    src = dst
                    cur = 1 - cur
                else:
                    bias_act_rows(dst, m, units[l + 1], &params[bias_off[l]], IDENTITY)
                    out_activation_rows(dst, m, n_out, out_act)
            start += m
