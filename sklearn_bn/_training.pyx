"""Training engine: whole epochs of minibatch training without the GIL.

This is the compiled half of :class:`sklearn_bn._engine.Engine`, which
builds a :class:`Network` once per fit, checks every array, and calls
:func:`train_epoch`, :func:`loss_and_gradient` and :func:`forward_folded`
by keyword. Nothing here checks its arguments again.

One minibatch step (:func:`minibatch_step`) runs these phases, each in its
own function: the gather of the minibatch's rows through the epoch's sample
order (no shuffled copy of X); for each hidden layer, the forward pass
(BLAS ``gemm`` from ``scipy.linalg.cython_blas``, batch norm fused with the
activation); the output layer and the loss; the backward pass of the output
layer and of each hidden layer; the optimizer steps, in place on one flat
parameter vector, each group of parameters stepped as soon as nothing needs
its old values, while its gradient is still in cache.

Threads: with ``n_threads > 1`` an OpenMP team runs the epoch, every thread
taking its share of each minibatch and calling BLAS on it (the caller limits
BLAS to one thread meanwhile). Rows are shared for the gather, the output
layer and the loss; units (column panels) for the hidden layers, whose batch
statistics are per column. A thread reads what another wrote only after the
team's barrier (``_team.h``): one after the gather, one per hidden layer
forward, one after the loss, one per hidden layer backward but the lowest,
and one at the end.

Parameter layout (the flat vector ``theta``; ``grad`` and the optimizer's
moments have the same layout): for each weight layer ``l``, its coefficient
matrix (``units[l] x units[l + 1]``, row-major) at ``coef_off[l]``; for
hidden layers its ``gamma`` at ``gamma_off[l]``; its ``beta`` (hidden layers)
or output intercept at ``bias_off[l]``. Running statistics of hidden layer
``l`` live at ``stat_off[l]`` of ``running_mean``/``running_var``.

Workspace: ``work`` (input dtype) and ``dwork`` (float64), sized by the
minibatch, not by the data; ``_engine.Workspace`` lays them out. Matrices
that other threads read (a layer's output, the deltas above the lowest) are
row-major; those only the thread of a column panel reads (``z``, the lowest
layer's delta, dropout's mask) are stored one panel after another, each
panel contiguous (:func:`z_panel`), so that BLAS writes them in one run.
"""
from libc.math cimport exp, log, sqrt, sqrtf, NAN
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid

import numpy as np

from sklearn_bn._activations cimport (
    act_rows, logistic, OUT_IDENTITY, OUT_LOGISTIC, OUT_SOFTMAX, OUT_EXP)
from sklearn_bn._blas cimport cgemm, caxpy
from sklearn_bn._simd cimport simd_void
from sklearn_bn._batchnorm cimport (
    Panel, Statistics, cbn_act_forward_train, cbn_act_backward,
    cupdate_running_average, cupdate_running_stats, unbiased_count,
    SCRATCH_PER_COLUMN)
from sklearn_bn._team cimport (
    Barrier, Team, MAX_THREADS, barrier_init, barrier_join, barrier_destroy,
    barrier_wait, share, team_size, thread_num)
from sklearn_bn._tiles cimport TILE, next_tile

cdef enum:
    # Threads share rows and columns in multiples of these, so that no two
    # threads write to the same cache line.
    ROW_ALIGN = 8
    COL_ALIGN = 16

cpdef enum Solver:
    SGD = 0
    ADAM = 1


cdef struct Net:
    int n_layers                 # weight layers: hidden layers + output
    int act
    int out_act
    Py_ssize_t n_features
    Py_ssize_t n_out
    const Py_ssize_t* units      # n_layers + 1
    const Py_ssize_t* coef_off   # per weight layer, into theta
    const Py_ssize_t* gamma_off
    const Py_ssize_t* bias_off
    const Py_ssize_t* stat_off   # per hidden layer, into the running and batch statistics
    const Py_ssize_t* z_off      # per hidden layer, into work
    const Py_ssize_t* a_off
    const Py_ssize_t* d_off
    Py_ssize_t xb_off            # into work: the gathered rows of X, Y, weights
    Py_ssize_t yb_off
    Py_ssize_t swb_off
    Py_ssize_t p_off             # into work: the output layer
    Py_ssize_t var_base          # into dwork: the batch variances (the means at 0)
    Py_ssize_t scratch_off       # into dwork: the kernels' scratch
    Py_ssize_t row_loss_off      # into dwork: each row's weighted loss
    const Py_ssize_t* l2_off     # per weight layer, into dwork: its sums of W ** 2
    Py_ssize_t stats_stride      # dwork distance between two chunks' statistics
    Py_ssize_t virtual_batch     # ghost batch norm's chunk size (0: off)
    Py_ssize_t gtmp_off          # into work: a chunk's dgamma and dbeta
    const Py_ssize_t* ad_off     # per hidden layer, into work: its output after dropout
    const Py_ssize_t* keep_off   # per hidden layer, into work: dropout's mask, as bytes
    const double* dropout        # per hidden layer: the rate
    uint64_t dropout_seed
    bint cumulative              # running statistics: the cumulative average
    double alpha
    double bn_momentum
    double bn_epsilon
    double data_loss_scale       # factor on the data term of the returned loss
    bint sparse
    bint weighted


# The arrays below are in the input dtype, except where said: each phase
# takes a ``floating*`` that is always NULL, whose type picks the dtype its
# pointers are cast to (as the activation tags of _activations.pxd do).
cdef struct Buffers:
    char* theta
    char* grad
    char* moment_1               # Adam's first moment; SGD's velocity
    char* moment_2               # Adam's second moment
    char* running_mean
    char* running_var
    char* work
    double* dwork


cdef struct Data:
    const char* X                # dense rows (NULL when sparse)
    const char* X_data           # CSR (NULL when dense)
    const Py_ssize_t* X_indices
    const Py_ssize_t* X_indptr
    const char* Y
    const char* sample_weight    # NULL when unweighted


cdef struct Minibatch:
    const Py_ssize_t* rows
    Py_ssize_t m
    bint contiguous              # rows[k] == rows[0] + k: X is read in place
    double wsum                  # sum of the weights (m when unweighted)
    double n_running             # the m of the running variance's m / (m - 1)
    Py_ssize_t n_chunks          # ghost batch norm's chunks (1: the whole batch)
    Py_ssize_t n_updates         # chunks that carry weight: updates of the running stats
    Py_ssize_t tracked           # updates of the running statistics before this batch
    Py_ssize_t step              # the optimizer's steps before this batch
    Py_ssize_t r0                # this thread's rows [r0, r1)
    Py_ssize_t r1
    const char* xin              # the minibatch's rows of X (NULL when sparse)


cdef struct Optimizer:
    int solver
    double learning_rate
    double momentum
    bint nesterov
    double beta_1
    double beta_2
    double adam_epsilon
    double step_size             # Adam's, bias corrections included, this step


cdef class Network:
    """The engine's view of one network: shapes, parameter and workspace
    offsets, activations and hyper-parameters, as C structs pointing into
    the arrays it keeps. Built once per fit by ``_engine.Engine``."""

    cdef Net net
    cdef object _arrays

    def __init__(self, *, const Py_ssize_t[::1] units,
                 const Py_ssize_t[::1] coef_off, const Py_ssize_t[::1] gamma_off,
                 const Py_ssize_t[::1] bias_off, const Py_ssize_t[::1] stat_off,
                 const Py_ssize_t[::1] z_off, const Py_ssize_t[::1] a_off,
                 const Py_ssize_t[::1] d_off, const Py_ssize_t[::1] l2_off,
                 const Py_ssize_t[::1] ad_off, const Py_ssize_t[::1] keep_off,
                 const double[::1] dropout,
                 Py_ssize_t xb_off, Py_ssize_t yb_off, Py_ssize_t swb_off,
                 Py_ssize_t p_off, Py_ssize_t var_base, Py_ssize_t scratch_off,
                 Py_ssize_t row_loss_off, Py_ssize_t stats_stride,
                 Py_ssize_t gtmp_off, Py_ssize_t virtual_batch, int activation,
                 int out_activation, double alpha, double bn_momentum,
                 bint cumulative, double bn_epsilon, double data_loss_scale,
                 uint64_t dropout_seed, bint sparse, bint weighted):
        # Offset arrays are never empty (the engine pads them), so that
        # their first element's address exists.
        self._arrays = (units, coef_off, gamma_off, bias_off, stat_off, z_off,
                        a_off, d_off, l2_off, ad_off, keep_off, dropout)
        self.net.n_layers = units.shape[0] - 1
        self.net.act = activation
        self.net.out_act = out_activation
        self.net.n_features = units[0]
        self.net.n_out = units[units.shape[0] - 1]
        self.net.units = &units[0]
        self.net.coef_off = &coef_off[0]
        self.net.gamma_off = &gamma_off[0]
        self.net.bias_off = &bias_off[0]
        self.net.stat_off = &stat_off[0]
        self.net.z_off = &z_off[0]
        self.net.a_off = &a_off[0]
        self.net.d_off = &d_off[0]
        self.net.l2_off = &l2_off[0]
        self.net.ad_off = &ad_off[0]
        self.net.keep_off = &keep_off[0]
        self.net.dropout = &dropout[0]
        self.net.dropout_seed = dropout_seed
        self.net.row_loss_off = row_loss_off
        self.net.stats_stride = stats_stride
        self.net.gtmp_off = gtmp_off
        self.net.virtual_batch = virtual_batch
        self.net.cumulative = cumulative
        self.net.xb_off = xb_off
        self.net.yb_off = yb_off
        self.net.swb_off = swb_off
        self.net.p_off = p_off
        self.net.var_base = var_base
        self.net.scratch_off = scratch_off
        self.net.alpha = alpha
        self.net.bn_momentum = bn_momentum
        self.net.bn_epsilon = bn_epsilon
        self.net.data_loss_scale = data_loss_scale
        self.net.sparse = sparse
        self.net.weighted = weighted


# ---------------------------------------------------------------------------
# Entry points, called by _engine.Engine with checked arguments.


cdef inline char* _ptr(floating[::1] a) noexcept:
    """The data of ``a`` (NULL when empty: no element to take the address of)."""
    return <char*> &a[0] if a.shape[0] else NULL


cdef inline const char* _cptr(const floating[::1] a) noexcept:
    return <const char*> &a[0] if a.shape[0] else NULL


cdef Data _data(const floating[:, ::1] X, const floating[::1] X_data,
                const Py_ssize_t[::1] X_indices, const Py_ssize_t[::1] X_indptr,
                const floating[:, ::1] Y, const floating[::1] sample_weight,
                bint sparse, bint weighted):
    cdef Data data
    data.X = data.X_data = data.sample_weight = NULL
    data.X_indices = data.X_indptr = NULL
    if sparse:
        data.X_data = _cptr(X_data)
        if X_indices.shape[0]:
            data.X_indices = &X_indices[0]
        data.X_indptr = &X_indptr[0]
    else:
        data.X = <const char*> &X[0, 0]
    data.Y = <const char*> &Y[0, 0]
    if weighted:
        data.sample_weight = _cptr(sample_weight)
    return data


def train_epoch(Network network not None, *, const floating[:, ::1] X,
                const floating[::1] X_data, const Py_ssize_t[::1] X_indices,
                const Py_ssize_t[::1] X_indptr, const floating[:, ::1] Y,
                const floating[::1] sample_weight,
                const Py_ssize_t[::1] order, bint order_is_identity,
                Py_ssize_t batch_size, floating[::1] theta,
                floating[::1] grad, floating[::1] moment_1,
                floating[::1] moment_2, floating[::1] running_mean,
                floating[::1] running_var, floating[::1] work,
                double[::1] dwork, int solver, double learning_rate,
                double momentum, bint nesterov, double beta_1, double beta_2,
                double adam_epsilon, Py_ssize_t step, Py_ssize_t start,
                Py_ssize_t max_batches, double loss_sum, Py_ssize_t tracked,
                int n_threads):
    """Run up to ``max_batches`` minibatches of an epoch over the rows in
    ``order``, from row ``start`` of it; update everything in place.

    Minibatches are consecutive slices of ``order`` of ``batch_size`` rows; a
    trailing single row joins the previous minibatch. Minibatches whose
    weights sum to zero are skipped. ``step`` counts the optimizer's steps
    so far (Adam's bias corrections use it). With ``n_threads > 1`` an
    OpenMP team shares every minibatch (BLAS should then be limited to one
    thread); with one, no team is started. A whole epoch in several calls
    gives what it gives in one.

    Returns
    -------
    loss_sum : float
        ``loss_sum`` plus, over these minibatches, minibatch loss x minibatch
        rows (added in the order one call would add them).
    step : int
        The optimizer's step count after them.
    stop : int
        The row of ``order`` where the next minibatch starts (its length
        when the epoch is done).
    tracked : int
        ``tracked`` (the updates of the running statistics so far, which
        their cumulative average divides by) after these minibatches.
    """
    cdef Net* net = &network.net
    cdef Data data = _data(X, X_data, X_indices, X_indptr, Y, sample_weight,
                           net.sparse, net.weighted)
    cdef Buffers buf
    cdef Optimizer opt
    cdef Py_ssize_t stop = start
    cdef Barrier barrier
    buf.theta = _ptr(theta)
    buf.grad = _ptr(grad)
    buf.moment_1 = _ptr(moment_1)
    buf.moment_2 = _ptr(moment_2)
    buf.running_mean = _ptr(running_mean)
    buf.running_var = _ptr(running_var)
    buf.work = _ptr(work)
    buf.dwork = &dwork[0]
    opt.solver = solver
    opt.learning_rate = learning_rate
    opt.momentum = momentum
    opt.nesterov = nesterov
    opt.beta_1 = beta_1
    opt.beta_2 = beta_2
    opt.adam_epsilon = adam_epsilon
    if barrier_init(&barrier) != 0:
        raise MemoryError("could not create the threads' barrier")
    with nogil:
        if n_threads == 1:
            # Never enters OpenMP: nothing a fork() could leave broken.
            run_epoch(net, &opt, &data, &buf, &order[0], order.shape[0],
                      order_is_identity, batch_size, start, max_batches, &stop,
                      &barrier, &loss_sum, &step, &tracked,
                      <floating*> NULL)
        else:
            with parallel(num_threads=min(n_threads, <int> MAX_THREADS)):
                run_epoch(net, &opt, &data, &buf, &order[0], order.shape[0],
                          order_is_identity, batch_size, start, max_batches, &stop,
                          &barrier, &loss_sum, &step, &tracked,
                          <floating*> NULL)
    barrier_destroy(&barrier)
    return loss_sum, step, stop, tracked


def loss_and_gradient(Network network not None, *, const floating[:, ::1] X,
                      const floating[::1] X_data,
                      const Py_ssize_t[::1] X_indices,
                      const Py_ssize_t[::1] X_indptr,
                      const floating[:, ::1] Y,
                      const floating[::1] sample_weight,
                      const floating[::1] theta, floating[::1] grad,
                      floating[::1] running_mean, floating[::1] running_var,
                      floating[::1] work, double[::1] dwork,
                      bint update_running, Py_ssize_t tracked, Py_ssize_t step):
    """Loss and gradient (into ``grad``) of all of ``X`` as one minibatch, on
    the calling thread: the training-mode objective the engine follows
    (batch statistics, L2 on the coefficients).

    ``tracked`` and ``step`` are where the running statistics' count and
    the optimizer's steps stand (the cumulative average and dropout's masks
    depend on them).

    Returns
    -------
    loss : float
    weight_sum : float
        0 when the weights sum to zero (then nothing was written).
    """
    cdef Net* net = &network.net
    cdef Data data = _data(X, X_data, X_indices, X_indptr, Y, sample_weight,
                           net.sparse, net.weighted)
    cdef Buffers buf
    cdef Minibatch mb
    cdef Team team
    cdef Barrier barrier
    cdef double loss
    rows = np.arange(Y.shape[0], dtype=np.intp)
    cdef const Py_ssize_t[::1] row_view = rows
    buf.theta = <char*> _cptr(theta)
    buf.grad = _ptr(grad)
    buf.moment_1 = buf.moment_2 = NULL
    buf.running_mean = _ptr(running_mean)
    buf.running_var = _ptr(running_var)
    buf.work = _ptr(work)
    buf.dwork = &dwork[0]
    if barrier_init(&barrier) != 0:
        raise MemoryError("could not create the threads' barrier")
    team.tid = 0
    team.size = 1
    team.barrier = &barrier
    with nogil:
        start_minibatch(net, &data, &row_view[0], Y.shape[0], True, &mb,
                        <floating*> NULL)
        mb.tracked = tracked
        mb.step = step
        loss = minibatch_step(net, NULL, &data, &buf, &mb, &team,
                              update_running, <floating*> NULL)
    barrier_destroy(&barrier)
    return loss, mb.wsum


# ---------------------------------------------------------------------------
# The epoch and the minibatch step.


cdef void run_epoch(Net* net, const Optimizer* opt, const Data* data, Buffers* buf,
                    const Py_ssize_t* order, Py_ssize_t n,
                    bint order_is_identity, Py_ssize_t batch_size,
                    Py_ssize_t start, Py_ssize_t max_batches, Py_ssize_t* stop_out,
                    Barrier* barrier, double* loss_sum_out,
                    Py_ssize_t* step_inout, Py_ssize_t* tracked_inout,
                    floating* dtype) noexcept nogil:
    """The minibatch loop of (part of) an epoch, run by every thread of the
    current OpenMP team (or by the caller alone); thread 0 writes the
    results (``loss_sum_out`` comes in with the sum so far).

    Every thread steps the parameters whose gradient it computed. No barrier
    after a step: the next minibatch reads the parameters only after its
    gather's barrier.
    """
    cdef Team team
    cdef Minibatch mb
    # This thread's copy: threads may step different minibatches at once.
    cdef Optimizer local_opt = opt[0]
    cdef Py_ssize_t m, step = step_inout[0], tracked = tracked_inout[0], batches = 0
    cdef double loss_sum = loss_sum_out[0], loss
    team.tid = thread_num()
    team.size = team_size()
    team.barrier = barrier
    barrier_join(barrier, team.size)
    while start < n and batches < max_batches:
        m = min(batch_size, n - start)
        if n - start - m == 1:
            m += 1   # a trailing single row joins this minibatch
        start_minibatch(net, data, order + start, m, order_is_identity, &mb,
                        dtype)
        if mb.wsum > 0:
            if local_opt.solver == ADAM:
                local_opt.step_size = adam_step_size(&local_opt, step + 1)
            mb.tracked = tracked
            mb.step = step
            loss = minibatch_step(net, &local_opt, data, buf, &mb, &team, True, dtype)
            loss_sum += loss * m
            step += 1
            tracked += mb.n_updates
        start += m
        batches += 1
    if team.tid == 0:
        loss_sum_out[0] = loss_sum
        step_inout[0] = step
        stop_out[0] = start
        tracked_inout[0] = tracked


cdef void start_minibatch(const Net* net, const Data* data,
                          const Py_ssize_t* rows, Py_ssize_t m,
                          bint contiguous, Minibatch* mb,
                          floating* dtype) noexcept nogil:
    """The minibatch of rows ``rows[:m]`` and its weights.

    Every thread sums the weights (same order, same value): all of them then
    take the same branches and meet at the same barriers. The running
    variance's correction ``m / (m - 1)`` takes its ``m`` from
    ``unbiased_count``, the rule BatchNormScaler follows too.
    """
    cdef const floating* sw = <const floating*> data.sample_weight
    cdef Py_ssize_t k
    cdef double w, n_positive = 0
    mb.rows = rows
    mb.m = m
    mb.contiguous = contiguous
    mb.wsum = 0
    if net.weighted:
        for k in range(m):
            w = sw[rows[k]]
            mb.wsum += w
            if w > 0:
                n_positive += 1
    else:
        mb.wsum = n_positive = m
    mb.n_running = unbiased_count(mb.wsum, n_positive)
    count_chunks(net, data, mb, dtype)


cdef void count_chunks(const Net* net, const Data* data, Minibatch* mb,
                       floating* dtype) noexcept nogil:
    """Ghost batch norm's chunks of the minibatch: ``max(1, min(ceil(m /
    virtual_batch), m // 2))`` consecutive runs of rows, as numpy's
    ``array_split`` splits them; and how many carry weight (each updates the
    running statistics once)."""
    cdef const floating* sw = <const floating*> data.sample_weight
    cdef Py_ssize_t c, k, lo, hi
    cdef double w
    mb.n_chunks = 1
    if net.virtual_batch > 0:
        mb.n_chunks = max(1, min((mb.m + net.virtual_batch - 1) // net.virtual_batch,
                                 mb.m // 2))
    mb.n_updates = mb.n_chunks
    if net.weighted and mb.n_chunks > 1:
        mb.n_updates = 0
        for c in range(mb.n_chunks):
            chunk_bounds(mb, c, &lo, &hi)
            w = 0
            for k in range(lo, hi):
                w += sw[mb.rows[k]]
            if w > 0:
                mb.n_updates += 1


cdef inline void chunk_bounds(const Minibatch* mb, Py_ssize_t c, Py_ssize_t* lo,
                              Py_ssize_t* hi) noexcept nogil:
    """Rows ``[lo, hi)`` of chunk ``c``: the first ``m % n_chunks`` chunks
    have one row more than the others."""
    cdef Py_ssize_t q = mb.m // mb.n_chunks, r = mb.m % mb.n_chunks
    lo[0] = c * q + min(c, r)
    hi[0] = lo[0] + q + (1 if c < r else 0)


cdef void chunk_weights(const Net* net, const Buffers* buf, const Minibatch* mb,
                        Py_ssize_t lo, Py_ssize_t hi, double* wsum,
                        double* n_running, floating* dtype) noexcept nogil:
    """The weight sum of rows ``[lo, hi)`` of the gathered minibatch and the
    ``m`` of their running variance's correction (the minibatch's own when
    it is one chunk)."""
    cdef const floating* swb = batch_weights(net, buf, dtype)
    cdef double w, n_positive = 0
    cdef Py_ssize_t k
    if mb.n_chunks == 1:
        wsum[0], n_running[0] = mb.wsum, mb.n_running
        return
    if swb == NULL:
        wsum[0] = n_positive = hi - lo
    else:
        wsum[0] = 0
        for k in range(lo, hi):
            w = swb[k]
            wsum[0] += w
            if w > 0:
                n_positive += 1
    n_running[0] = unbiased_count(wsum[0], n_positive)


cdef double minibatch_step(Net* net, const Optimizer* opt, const Data* data,
                           Buffers* buf, Minibatch* mb, Team* team,
                           bint update_running, floating* dtype) noexcept nogil:
    """Loss of one minibatch and its gradient in ``buf.grad``; with an
    optimizer (``opt`` not NULL), each thread also steps the parameters
    whose gradient it computed, as soon as no thread needs their old values.

    Run by every thread of ``team``; every gradient is complete on return.
    Returns the weighted mean loss plus the L2 term (0 when the weights sum
    to zero: then nothing is written).
    """
    cdef Py_ssize_t l, L = net.n_layers
    cdef double loss, l2
    if not mb.wsum > 0:
        return 0.0
    l2 = net.alpha / mb.wsum
    gather(net, data, buf, mb, team, dtype)
    barrier_wait(team.barrier)
    for l in range(L - 1):
        forward_hidden(net, data, buf, mb, team, l, update_running, dtype)
        barrier_wait(team.barrier)
    forward_output(net, data, buf, mb, dtype)
    barrier_wait(team.barrier)
    loss = data_loss(net, buf, mb)
    backward_output(net, opt, data, buf, mb, team, l2, dtype)
    for l in range(L - 2, -1, -1):
        backward_hidden(net, opt, data, buf, mb, team, l, l2, dtype)
        if l > 0:
            barrier_wait(team.barrier)   # the layer below needs every column of this delta
            if opt != NULL and l + 1 < L - 1:
                # Every thread's share of this delta is done: nothing reads
                # the coefficients of the layer above any more.
                step_hidden_coefs(net, opt, buf, team, l + 1, dtype)
    barrier_wait(team.barrier)
    if opt != NULL and L > 2:
        step_hidden_coefs(net, opt, buf, team, 1, dtype)
    return net.data_loss_scale * loss + 0.5 * l2 * sum_of_squared_coefs(net, buf)


cdef double data_loss(const Net* net, const Buffers* buf,
                      const Minibatch* mb) noexcept nogil:
    """The minibatch's weighted mean loss, from its rows' losses added in row
    order: the same for any number of threads."""
    cdef const double* row_loss = buf.dwork + net.row_loss_off
    cdef double total = 0
    cdef Py_ssize_t k
    for k in range(mb.m):
        total += row_loss[k]
    return total / mb.wsum


cdef double sum_of_squared_coefs(const Net* net, const Buffers* buf) noexcept nogil:
    """The sum of every coefficient squared, from the partial sums the
    backward pass left (one per column of a hidden layer, one per row of the
    output layer), added in a fixed order: the same for any number of
    threads."""
    cdef double total = 0
    cdef const double* part
    cdef Py_ssize_t l, k
    for l in range(net.n_layers):
        part = buf.dwork + net.l2_off[l]
        for k in range(l2_parts(net, l)):
            total += part[k]
    return total


cdef inline Py_ssize_t l2_parts(const Net* net, Py_ssize_t l) noexcept nogil:
    """How many partial sums of ``W ** 2`` layer ``l`` leaves: one per column,
    but one per row for the output layer over dense rows (whose gradient is
    shared by rows)."""
    if l == net.n_layers - 1 and not (l == 0 and net.sparse):
        return net.units[l]
    return net.units[l + 1]


# ---------------------------------------------------------------------------
# Phases of the minibatch step.


cdef inline const floating* layer_input(const Net* net, const Buffers* buf,
                                        const Minibatch* mb, Py_ssize_t l,
                                        floating* dtype) noexcept nogil:
    """The input of weight layer ``l``: the minibatch's rows of X, or the
    output of the hidden layer below (after its dropout)."""
    if l == 0:
        return <const floating*> mb.xin
    if net.dropout[l - 1] > 0:
        return (<const floating*> buf.work) + net.ad_off[l - 1]
    return (<const floating*> buf.work) + net.a_off[l - 1]


cdef inline const floating* batch_weights(const Net* net, const Buffers* buf,
                                          floating* dtype) noexcept nogil:
    """The minibatch's gathered weights, or NULL when unweighted."""
    if not net.weighted:
        return NULL
    return (<const floating*> buf.work) + net.swb_off


cdef void gather(const Net* net, const Data* data, Buffers* buf,
                 Minibatch* mb, const Team* team, floating* dtype) noexcept nogil:
    """This thread's rows of the minibatch's Y, weights and X (X only when
    its rows are not contiguous: then it is read in place)."""
    cdef const floating* X = <const floating*> data.X
    cdef const floating* Y = <const floating*> data.Y
    cdef const floating* sw = <const floating*> data.sample_weight
    cdef floating* work = <floating*> buf.work
    cdef floating* xb = work + net.xb_off
    cdef floating* yb = work + net.yb_off
    cdef floating* swb = work + net.swb_off
    cdef Py_ssize_t k, nf = net.n_features, n_out = net.n_out
    cdef const Py_ssize_t* rows = mb.rows
    share(mb.m, ROW_ALIGN, team, &mb.r0, &mb.r1)
    for k in range(mb.r0, mb.r1):
        memcpy(yb + k * n_out, Y + rows[k] * n_out, n_out * sizeof(floating))
        if net.weighted:
            swb[k] = sw[rows[k]]
    if net.sparse:
        mb.xin = NULL
    elif mb.contiguous:
        mb.xin = <const char*> (X + rows[0] * nf)
    else:
        for k in range(mb.r0, mb.r1):
            memcpy(xb + k * nf, X + rows[k] * nf, nf * sizeof(floating))
        mb.xin = <const char*> xb


cdef void forward_hidden(const Net* net, const Data* data, Buffers* buf,
                         const Minibatch* mb, const Team* team, Py_ssize_t l,
                         bint update_running, floating* dtype) noexcept nogil:
    """Hidden layer ``l`` on this thread's columns: ``z = a @ W``, batch norm
    fused with the activation on each chunk of rows (its batch statistics go
    to ``dwork``), the running statistics' update, and dropout.

    The thread's panel of ``z`` is a contiguous block (see
    :func:`z_panel`); BLAS zeroes a contiguous output with one ``memset``,
    a strided one row by row at several times the cost."""
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* work = <floating*> buf.work
    cdef const floating* swb = batch_weights(net, buf, dtype)
    cdef Py_ssize_t fan_in = net.units[l], fan_out = net.units[l + 1], c0, c1
    cdef Py_ssize_t c, lo, hi, updates = 0
    cdef const floating* W = theta + net.coef_off[l]
    cdef floating* a = work + net.a_off[l]
    cdef floating* z
    cdef double* mean
    cdef double* var
    cdef double wsum, n_running
    cdef Panel panel
    share(fan_out, COL_ALIGN, team, &c0, &c1)
    if c1 <= c0:
        return
    z = z_panel(net, buf, mb, l, c0, dtype)
    if l == 0 and net.sparse:
        sparse_rows_matmul(mb.rows, mb.m, <const floating*> data.X_data,
                           data.X_indices, data.X_indptr, W, fan_out, c0, c1,
                           z, c1 - c0)
    else:
        cgemm(False, False, <int> mb.m, <int> (c1 - c0), <int> fan_in,
              <floating> 1, layer_input(net, buf, mb, l, dtype), <int> fan_in,
              W + c0, <int> fan_out, <floating> 0, z, <int> (c1 - c0))
    panel.n_cols = c1 - c0
    panel.z_ld = c1 - c0
    panel.a_ld = fan_out
    panel.ld = fan_out
    for c in range(mb.n_chunks):
        chunk_bounds(mb, c, &lo, &hi)
        chunk_weights(net, buf, mb, lo, hi, &wsum, &n_running, dtype)
        mean = buf.dwork + c * net.stats_stride + net.stat_off[l]
        var = mean + net.var_base
        panel.n_rows = hi - lo
        cbn_act_forward_train(
            z + lo * (c1 - c0), a + lo * fan_out + c0, &panel,
            theta + net.gamma_off[l] + c0, theta + net.bias_off[l] + c0,
            swb + lo if swb != NULL else NULL, net.bn_epsilon, net.act, mean + c0,
            var + c0, buf.dwork + net.scratch_off + SCRATCH_PER_COLUMN * c0)
        if update_running and wsum > 0:
            updates += 1
            update_running_stats(net, buf, l, c0, c1, mean, var, n_running,
                                 mb.tracked + updates, dtype)
    if net.dropout[l] > 0:
        dropout_forward(net, a, work + net.ad_off[l], keep_panel(net, buf, mb, l, c0, dtype),
                        mb.m, c0, c1, fan_out, l, mb.step)


cdef inline floating* z_panel(const Net* net, const Buffers* buf,
                               const Minibatch* mb, Py_ssize_t l, Py_ssize_t c0,
                               floating* dtype) noexcept nogil:
    """The panel of hidden layer ``l``'s ``z`` that starts at column ``c0``:
    ``mb.m`` rows of the panel's width, contiguous, after the panels to its
    left (one thread writes and reads it, in the forward and the backward
    pass). With one thread, ``z`` as a whole, row-major."""
    return (<floating*> buf.work) + net.z_off[l] + c0 * mb.m


cdef inline floating* delta_panel(const Net* net, const Buffers* buf,
                                  const Minibatch* mb, Py_ssize_t l, Py_ssize_t c0,
                                  Py_ssize_t c1, Py_ssize_t* ld,
                                  floating* dtype) noexcept nogil:
    """Column ``c0`` of hidden layer ``l``'s delta, and in ``ld`` the distance
    between its rows. The lowest layer's delta, when a product computes it
    (more than one hidden layer), is laid out as :func:`z_panel` lays out
    ``z``: only the thread of its panel reads it. The others are row-major:
    the layer below reads every column."""
    cdef floating* D = (<floating*> buf.work) + net.d_off[l]
    if l == 0 and net.n_layers > 2:
        ld[0] = c1 - c0
        return D + c0 * mb.m
    ld[0] = net.units[l + 1]
    return D + c0


cdef inline void update_running_stats(const Net* net, Buffers* buf, Py_ssize_t l,
                                      Py_ssize_t c0, Py_ssize_t c1,
                                      const double* mean, const double* var,
                                      double n_running, Py_ssize_t k,
                                      floating* dtype) noexcept nogil:
    """Columns ``c0:c1`` of hidden layer ``l``'s running statistics, after the
    ``k``-th update (the cumulative average's divisor)."""
    cdef floating* running_mean = (<floating*> buf.running_mean) + net.stat_off[l]
    cdef floating* running_var = (<floating*> buf.running_var) + net.stat_off[l]
    if net.cumulative:
        cupdate_running_average(running_mean + c0, running_var + c0, mean + c0,
                                var + c0, c1 - c0, <double> k, n_running)
    else:
        cupdate_running_stats(running_mean + c0, running_var + c0, mean + c0,
                              var + c0, c1 - c0, net.bn_momentum, n_running)


cdef void forward_output(const Net* net, const Data* data, Buffers* buf,
                         const Minibatch* mb, floating* dtype) noexcept nogil:
    """The output layer, its loss and its delta on this thread's rows, and
    those rows of the last hidden layer's delta (they need only this
    thread's rows of the output delta; rows also suit BLAS better here, the
    inner dimension being ``n_out``). Each row's weighted loss goes to
    ``dwork``."""
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* work = <floating*> buf.work
    cdef Py_ssize_t L = net.n_layers, l = L - 1, n_out = net.n_out
    cdef Py_ssize_t fan_in = net.units[l], r0 = mb.r0, r1 = mb.r1
    cdef const floating* W = theta + net.coef_off[l]
    cdef floating* p = work + net.p_off + r0 * n_out
    if r1 <= r0:
        return
    if l == 0 and net.sparse:
        sparse_rows_matmul(mb.rows + r0, r1 - r0, <const floating*> data.X_data,
                           data.X_indices, data.X_indptr, W, n_out, 0, n_out, p,
                           n_out)
    else:
        cgemm(False, False, <int> (r1 - r0), <int> n_out, <int> fan_in,
              <floating> 1, layer_input(net, buf, mb, l, dtype) + r0 * fan_in,
              <int> fan_in, W, <int> n_out, <floating> 0, p, <int> n_out)
    add_bias_rows(p, r1 - r0, n_out, theta + net.bias_off[l])
    output_loss_and_delta(net, p, work + net.yb_off + r0 * n_out,
                          work + net.swb_off + r0, r1 - r0, mb.wsum,
                          buf.dwork + net.row_loss_off + r0)
    if L > 1:
        cgemm(False, True, <int> (r1 - r0), <int> fan_in, <int> n_out,
              <floating> 1, p, <int> n_out, W, <int> n_out, <floating> 0,
              work + net.d_off[L - 2] + r0 * fan_in, <int> fan_in)


cdef void backward_output(const Net* net, const Optimizer* opt,
                          const Data* data, Buffers* buf, const Minibatch* mb,
                          const Team* team, double l2, floating* dtype) noexcept nogil:
    """Gradient of the output layer: the intercept's by columns, the
    coefficients' by their rows (the units of the layer below), each L2 term
    first (``l2 * W``, and the sums of ``W ** 2``). Stepped at once: after the
    loss, nothing reads them."""
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* grad = <floating*> buf.grad
    cdef Py_ssize_t l = net.n_layers - 1, n_out = net.n_out, nf = net.n_features
    cdef Py_ssize_t fan_in = net.units[l], k, i, c0, c1
    cdef const floating* W = theta + net.coef_off[l]
    cdef const floating* D = (<const floating*> buf.work) + net.p_off
    cdef floating* gW = grad + net.coef_off[l]
    cdef floating* gbias = grad + net.bias_off[l]
    cdef double* l2_part = buf.dwork + net.l2_off[l]
    cdef floating c = <floating> l2
    share(n_out, COL_ALIGN, team, &c0, &c1)
    for i in range(c0, c1):
        gbias[i] = 0
    for k in range(mb.m):
        for i in range(c0, c1):
            gbias[i] += D[k * n_out + i]
    step_panel(opt, buf, net.bias_off[l], 1, c0, c1, n_out, dtype)
    if l == 0 and net.sparse:
        if c1 > c0:
            l2_start_panel(gW, W, nf, c0, c1, n_out, c, l2_part, False)
            sparse_rows_grad(mb.rows, mb.m, <const floating*> data.X_data,
                             data.X_indices, data.X_indptr, D + c0, n_out, nf,
                             n_out, c0, c1, gW, c != 0)
            step_panel(opt, buf, net.coef_off[l], nf, c0, c1, n_out, dtype)
        return
    share(fan_in, COL_ALIGN, team, &c0, &c1)
    if c1 <= c0:
        return
    l2_start_panel(gW + c0 * n_out, W + c0 * n_out, c1 - c0, 0, n_out, n_out,
                   c, l2_part + c0, True)
    cgemm(True, False, <int> (c1 - c0), <int> n_out, <int> mb.m, <floating> 1,
          layer_input(net, buf, mb, l, dtype) + c0, <int> fan_in, D,
          <int> n_out, product_beta(c), gW + c0 * n_out, <int> n_out)
    step_panel(opt, buf, net.coef_off[l] + c0 * n_out, c1 - c0, 0, n_out,
               n_out, dtype)


cdef void backward_hidden(const Net* net, const Optimizer* opt,
                          const Data* data, Buffers* buf, const Minibatch* mb,
                          const Team* team, Py_ssize_t l, double l2,
                          floating* dtype) noexcept nogil:
    """Hidden layer ``l`` backward on this thread's columns: the delta (from
    the complete delta of the layer above; the last hidden layer's was
    computed by rows with the loss), dropout's, batch norm backward (gamma
    and beta, stepped at once), and the coefficient gradient of those
    columns (the lowest layer's stepped at once; the others once the delta
    below them is complete, see :func:`minibatch_step`)."""
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* grad = <floating*> buf.grad
    cdef floating* work = <floating*> buf.work
    cdef Py_ssize_t L = net.n_layers, c0, c1
    cdef Py_ssize_t fan_in = net.units[l], fan_out = net.units[l + 1]
    cdef Py_ssize_t n_next = net.units[l + 2], ld
    cdef floating* D
    cdef floating* gW = grad + net.coef_off[l]
    cdef floating c = <floating> l2
    share(fan_out, COL_ALIGN, team, &c0, &c1)
    if c1 <= c0:
        return
    D = delta_panel(net, buf, mb, l, c0, c1, &ld, dtype)
    if l < L - 2:
        cgemm(False, True, <int> mb.m, <int> (c1 - c0), <int> n_next,
              <floating> 1, work + net.d_off[l + 1], <int> n_next,
              theta + net.coef_off[l + 1] + c0 * n_next, <int> n_next,
              <floating> 0, D, <int> ld)
    if net.dropout[l] > 0:
        dropout_backward(net, D, ld, keep_panel(net, buf, mb, l, c0, dtype), mb.m,
                         c1 - c0, l)
    batch_norm_backward(net, buf, mb, l, c0, c1, D, ld, dtype)
    step_panel(opt, buf, net.gamma_off[l], 1, c0, c1, fan_out, dtype)
    step_panel(opt, buf, net.bias_off[l], 1, c0, c1, fan_out, dtype)
    l2_start_panel(gW, theta + net.coef_off[l], fan_in, c0, c1, fan_out, c,
                   buf.dwork + net.l2_off[l], False)
    if l == 0 and net.sparse:
        sparse_rows_grad(mb.rows, mb.m, <const floating*> data.X_data,
                         data.X_indices, data.X_indptr, D, ld, net.n_features,
                         fan_out, c0, c1, gW, c != 0)
    else:
        cgemm(True, False, <int> fan_in, <int> (c1 - c0), <int> mb.m,
              <floating> 1, layer_input(net, buf, mb, l, dtype), <int> fan_in,
              D, <int> ld, product_beta(c), gW + c0, <int> fan_out)
    if l == 0:
        # Nothing reads the lowest coefficients again: this thread's columns,
        # at once (the other threads' columns may not be complete yet).
        step_panel(opt, buf, net.coef_off[l], fan_in, c0, c1, fan_out, dtype)


cdef void batch_norm_backward(const Net* net, Buffers* buf, const Minibatch* mb,
                              Py_ssize_t l, Py_ssize_t c0, Py_ssize_t c1,
                              floating* D, Py_ssize_t ld,
                              floating* dtype) noexcept nogil:
    """Batch norm fused with the activation, backward, on columns ``c0:c1`` of
    hidden layer ``l``, chunk by chunk: the delta (``D``, the panel's first
    column, rows ``ld`` apart) in place, and gamma's and beta's gradients
    summed over the chunks (in order). A chunk without weight has no
    gradient."""
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* grad = <floating*> buf.grad
    cdef floating* work = <floating*> buf.work
    cdef const floating* swb = batch_weights(net, buf, dtype)
    cdef Py_ssize_t fan_out = net.units[l + 1], c, lo, hi, j
    cdef floating* dgamma = grad + net.gamma_off[l]
    cdef floating* dbeta = grad + net.bias_off[l]
    # A chunk's gradients, before they are added: the first chunk's (or the
    # only one's) go to grad directly.
    cdef floating* chunk_dgamma = work + net.gtmp_off
    cdef floating* chunk_dbeta = chunk_dgamma + fan_out
    cdef floating* dg
    cdef floating* db
    cdef const double* mean
    cdef double n_running
    cdef Panel panel
    cdef Statistics stats
    panel.n_cols = c1 - c0
    panel.z_ld = c1 - c0
    panel.a_ld = fan_out
    panel.ld = ld
    stats.epsilon = net.bn_epsilon
    for c in range(mb.n_chunks):
        chunk_bounds(mb, c, &lo, &hi)
        chunk_weights(net, buf, mb, lo, hi, &stats.weight_sum, &n_running, dtype)
        dg, db = dgamma, dbeta
        if c > 0:
            dg, db = chunk_dgamma, chunk_dbeta
        if not stats.weight_sum > 0:
            for j in range(c0, c1):
                dg[j] = 0
                db[j] = 0
            zero_rows(D + lo * ld, hi - lo, 0, c1 - c0, ld)
        else:
            mean = buf.dwork + c * net.stats_stride + net.stat_off[l]
            stats.mean = mean + c0
            stats.var = mean + net.var_base + c0
            panel.n_rows = hi - lo
            cbn_act_backward(
                D + lo * ld, work + net.a_off[l] + lo * fan_out + c0,
                z_panel(net, buf, mb, l, c0, dtype) + lo * (c1 - c0), &panel,
                theta + net.gamma_off[l] + c0, theta + net.bias_off[l] + c0, &stats,
                swb + lo if swb != NULL else NULL, net.act, dg + c0, db + c0,
                buf.dwork + net.scratch_off + SCRATCH_PER_COLUMN * c0)
        if c > 0:
            for j in range(c0, c1):
                dgamma[j] += chunk_dgamma[j]
                dbeta[j] += chunk_dbeta[j]


cdef void zero_rows(floating* x, Py_ssize_t n_rows, Py_ssize_t c0, Py_ssize_t c1,
                    Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n_rows):
        memset(x + i * ld + c0, 0, (c1 - c0) * sizeof(floating))


# ---------------------------------------------------------------------------
# Dropout: masks from a counter-based hash of (seed, step, layer, row,
# unit), so that they depend on neither the thread nor the order of work.


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    """splitmix64's finalizer."""
    x ^= x >> 30
    x *= <uint64_t> 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= <uint64_t> 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


cdef inline uint32_t mix32(uint32_t x) noexcept nogil:
    """A 32-bit integer hash (lowbias32): 32-bit products vectorize."""
    x ^= x >> 16
    x *= <uint32_t> 0x7feb352d
    x ^= x >> 15
    x *= <uint32_t> 0x846ca68b
    x ^= x >> 16
    return x


cdef inline uint64_t dropout_key(uint64_t seed, Py_ssize_t step,
                                 Py_ssize_t layer) noexcept nogil:
    return mix64(seed ^ mix64((<uint64_t> step) * <uint64_t> 0x9e3779b97f4a7c15ULL
                              + <uint64_t> layer))


cdef inline bint kept(uint32_t row_key, Py_ssize_t j, uint32_t threshold) noexcept nogil:
    """Whether unit ``j`` of the row is kept (probability ``1 - threshold /
    2**32``)."""
    return mix32(row_key ^ (<uint32_t> j * <uint32_t> 0x9e3779b9)) >= threshold


cdef inline uint8_t* keep_panel(const Net* net, const Buffers* buf,
                                const Minibatch* mb, Py_ssize_t l,
                                Py_ssize_t c0, floating* dtype) noexcept nogil:
    """The panel of hidden layer ``l``'s dropout mask that starts at column
    ``c0``: one byte per unit, laid out as :func:`z_panel` lays out ``z``."""
    return (<uint8_t*> ((<floating*> buf.work) + net.keep_off[l])) + c0 * mb.m


cdef simd_void dropout_forward(const Net* net, const floating* a, floating* out,
                               uint8_t* keep_out, Py_ssize_t m, Py_ssize_t c0,
                               Py_ssize_t c1, Py_ssize_t ld, Py_ssize_t layer,
                               Py_ssize_t step) noexcept nogil:
    """Inverted dropout on columns ``c0:c1`` of ``m`` rows: ``out = a * keep /
    (1 - p)``, where ``keep`` (probability ``1 - p``) is the mask of this
    layer at this optimizer step, written to ``keep_out`` (``m`` rows of
    ``c1 - c0`` bytes) for the backward pass."""
    cdef double p = net.dropout[layer]
    cdef uint32_t threshold = <uint32_t> min(p * 4294967296.0, 4294967295.0)
    cdef floating scale = <floating> (1 / (1 - p))
    cdef floating zero = 0
    cdef uint64_t key = dropout_key(net.dropout_seed, step, layer)
    cdef uint32_t row_key
    cdef Py_ssize_t i, j, w = c1 - c0
    cdef const floating* s
    cdef floating* d
    cdef uint8_t* k
    for i in range(m):
        row_key = <uint32_t> mix64(key + <uint64_t> i)
        s = a + i * ld + c0
        d = out + i * ld + c0
        k = keep_out + i * w
        for j in range(w):
            k[j] = kept(row_key, c0 + j, threshold)
        for j in range(w):
            # A factor selected, then one product: the loop vectorizes (a
            # selected product does not).
            d[j] = s[j] * (scale if k[j] else zero)


cdef simd_void dropout_backward(const Net* net, floating* delta, Py_ssize_t ld,
                                const uint8_t* keep, Py_ssize_t m, Py_ssize_t w,
                                Py_ssize_t layer) noexcept nogil:
    """``delta *= keep / (1 - p)`` on a panel of ``w`` columns (rows ``ld``
    apart), with the mask the forward pass drew (:func:`dropout_forward`)."""
    cdef floating scale = <floating> (1 / (1 - net.dropout[layer]))
    cdef floating zero = 0
    cdef Py_ssize_t i, j
    cdef floating* d
    cdef const uint8_t* k
    for i in range(m):
        d = delta + i * ld
        k = keep + i * w
        for j in range(w):
            d[j] = d[j] * (scale if k[j] else zero)


def dropout_mask(uint64_t seed, Py_ssize_t step, Py_ssize_t layer,
                 Py_ssize_t n_rows, Py_ssize_t n_units, double rate):
    """The units dropout keeps in hidden layer ``layer`` of the minibatch of
    optimizer step ``step`` (0 for the first): a boolean array of shape
    ``(n_rows, n_units)``, as training draws it (for the tests)."""
    keep = np.empty((n_rows, n_units), dtype=bool)
    cdef uint32_t threshold = <uint32_t> min(rate * 4294967296.0, 4294967295.0)
    cdef uint64_t key = dropout_key(seed, step, layer)
    cdef Py_ssize_t i, j
    for i in range(n_rows):
        row_key = <uint32_t> mix64(key + <uint64_t> i)
        for j in range(n_units):
            keep[i, j] = kept(row_key, j, threshold)
    return keep


cdef inline floating product_beta(floating l2) noexcept nogil:
    """BLAS's ``beta`` for a coefficient gradient's product: 1 (add to the
    L2 term :func:`l2_start_panel` wrote) or 0 (no L2 term: overwrite)."""
    return 1 if l2 != 0 else 0


# ---------------------------------------------------------------------------
# Loss.


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


cdef void output_loss_and_delta(const Net* net, floating* p,
                                const floating* y, const floating* swb,
                                Py_ssize_t m, double wsum,
                                double* row_loss_out) noexcept nogil:
    """Apply the output activation to ``p`` in place, write the weighted loss
    of each of these ``m`` rows, and overwrite ``p`` with ``dL/dz = w * (p -
    y) / wsum``."""
    cdef Py_ssize_t i, j, n_out = net.n_out
    cdef floating* row
    cdef const floating* yrow
    cdef floating q
    cdef double row_loss, w
    out_activation_rows(p, m, n_out, net.out_act)
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
                q = clip_prob(row[j])
                row_loss -= yrow[j] * log(q) + (1 - yrow[j]) * log(1 - q)
        elif net.out_act == OUT_SOFTMAX:
            for j in range(n_out):
                if yrow[j] != 0:
                    row_loss -= yrow[j] * log(clip_prob(row[j]))
        elif net.out_act == OUT_EXP:   # half Poisson deviance
            for j in range(n_out):
                if yrow[j] > 0:
                    row_loss += yrow[j] * log(yrow[j] / row[j])
                row_loss += row[j] - yrow[j]
        else:
            row_loss = NAN
        row_loss_out[i] = w * row_loss
        for j in range(n_out):
            row[j] = <floating> (w * (row[j] - yrow[j]) / wsum)


cdef void out_activation_rows(floating* z, Py_ssize_t m, Py_ssize_t n,
                              int out_act) noexcept nogil:
    """The output activation in place (identity: nothing to do)."""
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
        elif out_act != OUT_IDENTITY:
            for j in range(n):
                row[j] = <floating> NAN


cdef void add_bias_rows(floating* z, Py_ssize_t m, Py_ssize_t n,
                        const floating* bias) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating* row
    for i in range(m):
        row = z + i * n
        for j in range(n):
            row[j] += bias[j]


# ---------------------------------------------------------------------------
# The sparse first layer.


cdef void sparse_rows_matmul(const Py_ssize_t* rows, Py_ssize_t m,
                             const floating* data, const Py_ssize_t* indices,
                             const Py_ssize_t* indptr, const floating* w,
                             Py_ssize_t ld, Py_ssize_t c0, Py_ssize_t c1,
                             floating* out, Py_ssize_t out_ld) noexcept nogil:
    """out[k, :c1 - c0] = X[rows[k]] @ W[:, c0:c1] for CSR X; rows of W are
    ``ld`` apart, rows of out ``out_ld``."""
    cdef Py_ssize_t k, p
    for k in range(m):
        memset(out + k * out_ld, 0, (c1 - c0) * sizeof(floating))
        for p in range(indptr[rows[k]], indptr[rows[k] + 1]):
            caxpy(<int> (c1 - c0), data[p], w + indices[p] * ld + c0,
                  out + k * out_ld)


cdef void sparse_rows_grad(const Py_ssize_t* rows, Py_ssize_t m,
                           const floating* data, const Py_ssize_t* indices,
                           const Py_ssize_t* indptr, const floating* delta,
                           Py_ssize_t delta_ld, Py_ssize_t n_in, Py_ssize_t ld,
                           Py_ssize_t c0, Py_ssize_t c1, floating* grad,
                           bint accumulate) noexcept nogil:
    """grad[:, c0:c1] (+)= X[rows].T @ delta for CSR X with ``n_in`` columns
    (added to grad when ``accumulate``); ``delta`` is a panel of ``c1 - c0``
    columns, rows ``delta_ld`` apart; rows of grad are ``ld`` apart."""
    cdef Py_ssize_t k, p
    if not accumulate:
        for k in range(n_in):
            memset(grad + k * ld + c0, 0, (c1 - c0) * sizeof(floating))
    for k in range(m):
        for p in range(indptr[rows[k]], indptr[rows[k] + 1]):
            caxpy(<int> (c1 - c0), data[p], delta + k * delta_ld,
                  grad + indices[p] * ld + c0)


# ---------------------------------------------------------------------------
# L2 term and optimizer steps.


cdef inline double sum_of_squares(const floating* x, Py_ssize_t n) noexcept nogil:
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


cdef simd_void l2_start_panel(floating* grad, const floating* w,
                              Py_ssize_t n_rows, Py_ssize_t c0, Py_ssize_t c1,
                              Py_ssize_t ld, floating c, double* sums,
                              bint by_rows) noexcept nogil:
    """Start a coefficient gradient with its L2 term: ``grad = c * w`` on
    columns ``c0:c1`` of ``n_rows`` rows ``ld`` apart (nothing is written when
    ``c == 0``); and the sums of ``w ** 2`` there: ``sums[j]`` for column
    ``j``, or ``sums[i]`` for row ``i`` when ``by_rows`` (a thread owning whole
    rows), always added in the same order whatever the team.

    The data term's product then adds to ``grad`` when ``c != 0`` (BLAS
    ``beta = 1``) and writes it otherwise: one pass over the gradient fewer
    than adding the L2 term after the product, and BLAS skips its own pass
    that zeroes ``C`` for ``beta = 0``.
    """
    cdef double acc[TILE]
    cdef Py_ssize_t i, j, j0, width
    if c != 0:
        if c0 == 0 and c1 == ld:   # whole rows: one contiguous run
            for j in range(n_rows * ld):
                grad[j] = c * w[j]
        else:
            for i in range(n_rows):
                for j in range(c0 + i * ld, c1 + i * ld):
                    grad[j] = c * w[j]
    if by_rows:
        for i in range(n_rows):
            sums[i] = sum_of_squares(w + c0 + i * ld, c1 - c0)
        return
    # Column sums, in local arrays so that the loop vectorizes.
    j0, width = c0, 0
    while next_tile(&j0, &width, c1):
        for j in range(width):
            acc[j] = 0
        for i in range(n_rows):
            for j in range(width):
                acc[j] += <double> w[i * ld + j0 + j] * w[i * ld + j0 + j]
        for j in range(width):
            sums[j0 + j] = acc[j]


cdef double adam_step_size(const Optimizer* opt, Py_ssize_t t) noexcept nogil:
    """Adam's step size at step ``t`` (from 1), bias corrections included."""
    return (opt.learning_rate * sqrt(1 - opt.beta_2 ** t)
            / (1 - opt.beta_1 ** t))


cdef void step_hidden_coefs(const Net* net, const Optimizer* opt,
                            Buffers* buf, const Team* team, Py_ssize_t l,
                            floating* dtype) noexcept nogil:
    """Step this thread's share of hidden layer ``l``'s coefficients, once
    every thread's columns of their gradient are complete (after a
    barrier): a contiguous range of the flat coefficients, which streams
    at twice the speed of a panel of columns."""
    cdef Py_ssize_t e0, e1
    share(net.units[l] * net.units[l + 1], COL_ALIGN, team, &e0, &e1)
    step_panel(opt, buf, net.coef_off[l] + e0, 1, 0, e1 - e0, e1 - e0, dtype)


cdef void step_panel(const Optimizer* opt, Buffers* buf, Py_ssize_t off,
                     Py_ssize_t n_rows, Py_ssize_t c0, Py_ssize_t c1,
                     Py_ssize_t ld, floating* dtype) noexcept nogil:
    """The optimizer step (none when ``opt`` is NULL) on columns ``c0:c1`` of
    the ``n_rows`` x ``ld`` block of parameters that starts at ``off``."""
    cdef floating* theta = <floating*> buf.theta
    cdef const floating* grad = <const floating*> buf.grad
    cdef floating* m1 = <floating*> buf.moment_1
    cdef floating* m2 = <floating*> buf.moment_2   # NULL for SGD
    cdef Py_ssize_t i, base
    if opt == NULL or c1 <= c0:
        return
    if c0 == 0 and c1 == ld:   # whole rows: one contiguous run
        optimizer_step(opt, theta + off, grad + off, m1 + off,
                       m2 + off if m2 != NULL else NULL, n_rows * ld)
        return
    for i in range(n_rows):
        base = off + i * ld + c0
        optimizer_step(opt, theta + base, grad + base, m1 + base,
                       m2 + base if m2 != NULL else NULL, c1 - c0)


cdef simd_void optimizer_step(const Optimizer* opt, floating* theta,
                              const floating* grad, floating* moment_1,
                              floating* moment_2, Py_ssize_t n) noexcept nogil:
    """One Adam or SGD-with-momentum step on ``n`` parameters, in place
    (``moment_1`` is SGD's velocity; SGD has no ``moment_2``)."""
    cdef Py_ssize_t i
    cdef floating g, v, lr_t, b1, b2, c1, c2, eps, mom, lr
    if opt.solver == ADAM:
        lr_t = <floating> opt.step_size
        b1 = <floating> opt.beta_1
        b2 = <floating> opt.beta_2
        # 1 - beta in the working precision, as numpy computes
        # ``(1 - beta_1) * grad`` on float32 arrays (a literal 1 next to a
        # float would make Cython compute the loop in double).
        c1 = <floating> (1 - opt.beta_1)
        c2 = <floating> (1 - opt.beta_2)
        eps = <floating> opt.adam_epsilon
        for i in range(n):
            g = grad[i]
            moment_1[i] = b1 * moment_1[i] + c1 * g
            moment_2[i] = b2 * moment_2[i] + c2 * (g * g)
            if floating is float:
                theta[i] -= lr_t * moment_1[i] / (sqrtf(moment_2[i]) + eps)
            else:
                theta[i] -= lr_t * moment_1[i] / (sqrt(moment_2[i]) + eps)
    else:
        mom = <floating> opt.momentum
        lr = <floating> opt.learning_rate
        for i in range(n):
            g = grad[i]
            v = mom * moment_1[i] - lr * g
            moment_1[i] = v
            if opt.nesterov:
                theta[i] += mom * v - lr * g
            else:
                theta[i] += v


# ---------------------------------------------------------------------------
# Prediction: the network with batch norm folded into its weights.


def forward_folded(*, const floating[:, ::1] X, const floating[::1] params,
                   const Py_ssize_t[::1] units, const Py_ssize_t[::1] coef_off,
                   const Py_ssize_t[::1] bias_off, Py_ssize_t first_layer,
                   int activation, int out_activation, floating[:, ::1] out,
                   Py_ssize_t block_rows, int n_threads):
    """Inference forward pass of a network with batch norm folded in.

    ``X`` is the input of weight layer ``first_layer`` (the caller computes
    a sparse first layer itself). Rows go through in blocks of
    ``block_rows``, so that memory stays bounded for any number of rows;
    hidden layers apply ``act(a @ W + b)``, the last ``out_act``. With
    ``n_threads > 1`` an OpenMP team takes the blocks in turn (the caller
    limits BLAS to one thread meanwhile): a thread slowed down by another
    process on its core just takes fewer blocks. A row's result depends only
    on its block, not on the thread.
    """
    cdef Py_ssize_t L = units.shape[0] - 1
    cdef Py_ssize_t n = X.shape[0], l, b, width = 1
    cdef Py_ssize_t n_blocks = (n + block_rows - 1) // block_rows
    if n == 0:
        return
    for l in range(first_layer, L):
        width = max(width, units[l + 1])
    dtype = np.asarray(params).dtype
    cdef floating[:, :, ::1] buf = np.empty((n_threads, 2, block_rows * width), dtype=dtype)
    with nogil:
        if n_threads == 1:
            for b in range(n_blocks):
                folded_block(&X[b * block_rows, 0], min(block_rows, n - b * block_rows),
                             &params[0], &units[0], &coef_off[0], &bias_off[0],
                             first_layer, L, activation, out_activation,
                             &buf[0, 0, 0], &buf[0, 1, 0], &out[b * block_rows, 0])
        else:
            for b in prange(n_blocks, schedule="dynamic", num_threads=n_threads):
                folded_block(&X[b * block_rows, 0], min(block_rows, n - b * block_rows),
                             &params[0], &units[0], &coef_off[0], &bias_off[0],
                             first_layer, L, activation, out_activation,
                             &buf[threadid(), 0, 0], &buf[threadid(), 1, 0],
                             &out[b * block_rows, 0])


cdef void folded_block(const floating* X, Py_ssize_t m,
                       const floating* params, const Py_ssize_t* units,
                       const Py_ssize_t* coef_off, const Py_ssize_t* bias_off,
                       Py_ssize_t first_layer, Py_ssize_t L, int act,
                       int out_act, floating* buf0, floating* buf1,
                       floating* out) noexcept nogil:
    """The folded forward pass of ``m`` rows, ``buf0`` and ``buf1`` holding
    the hidden layers' outputs in turn."""
    cdef const floating* src = X
    cdef floating* dst = buf0
    cdef floating* spare = buf1
    cdef Py_ssize_t l
    for l in range(first_layer, L):
        if l == L - 1:
            dst = out
        cgemm(False, False, <int> m, <int> units[l + 1], <int> units[l],
              <floating> 1, src, <int> units[l], params + coef_off[l],
              <int> units[l + 1], <floating> 0, dst, <int> units[l + 1])
        if l < L - 1:
            act_rows(dst, m, units[l + 1], params + bias_off[l], act)
            src = dst
            dst, spare = spare, dst
        else:
            add_bias_rows(dst, m, units[L], params + bias_off[l])
            out_activation_rows(dst, m, units[L], out_act)
