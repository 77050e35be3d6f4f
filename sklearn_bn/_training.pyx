"""Training engine: whole epochs of minibatch training without the GIL.

One call of :func:`train_epoch` runs an epoch: for each minibatch it gathers
the rows through the epoch's sample order (no shuffled copy of X), runs the
forward pass (BLAS ``gemm`` from ``scipy.linalg.cython_blas``, batch norm fused
with the activation), the output activation and loss, the backward pass, the
L2 term and the optimizer step in place on one flat parameter vector (each
group of parameters is stepped inside the backward pass as soon as nothing
needs its old values, while its gradient is still in cache).

Threads: with ``n_threads > 1`` an OpenMP team runs the epoch, every thread
taking its share of each minibatch (see :func:`forward_backward`) and calling
BLAS on it; the caller limits BLAS to one thread meanwhile, so that the cores
run the engine's threads rather than BLAS's, whose small products scale
poorly and leave batch norm, the loss and the optimizer to one core. The
team meets at its own barrier, which spins briefly and then sleeps, so that a
core that another process keeps busy does not stall the team (see
``sklearn_bn_barrier_wait``).

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
from cython.parallel cimport parallel, prange, threadid

import numpy as np

from sklearn_bn._activations cimport act_forward, logistic, IDENTITY, RELU
from sklearn_bn._blas cimport cgemm, caxpy
from sklearn_bn._simd cimport simd_void
from sklearn_bn._batchnorm cimport (
    cbn_act_forward_train, cbn_act_backward, cupdate_running_stats)
from sklearn_bn._batchnorm import SCRATCH_PER_COLUMN

cdef Py_ssize_t SCRATCH_COLS = SCRATCH_PER_COLUMN

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static inline int sklearn_bn_team_size(void) { return omp_get_num_threads(); }
    static inline int sklearn_bn_thread_num(void) { return omp_get_thread_num(); }
    static inline int sklearn_bn_max_threads(void) { return omp_get_max_threads(); }
    #else
    static inline int sklearn_bn_team_size(void) { return 1; }
    static inline int sklearn_bn_thread_num(void) { return 0; }
    static inline int sklearn_bn_max_threads(void) { return 1; }
    #endif

    /* The team's barrier. A thread that arrives early spins for a short
       while (the usual wait, when the cores are free, is a few microseconds)
       and then sleeps, giving its core away. OpenMP's own barrier spins for
       much longer: when another process keeps one of the cores busy, the
       thread that shares that core runs only in time slices of a few
       milliseconds while the other spins, and an epoch took 6-9x as long as
       on one thread (measured). Where POSIX threads and GCC's atomics are
       missing, OpenMP's barrier is used. */
    #if defined(_OPENMP) && !defined(_WIN32) && defined(__GNUC__)
    #include <pthread.h>
    #include <time.h>
    #define SKLEARN_BN_SPIN_NS 50000
    typedef struct {
        int size;
        int arrived;
        unsigned int generation;
        pthread_mutex_t mutex;
        pthread_cond_t cond;
    } sklearn_bn_barrier_t;

    static int sklearn_bn_barrier_init(sklearn_bn_barrier_t* b) {
        b->size = 1;
        b->arrived = 0;
        b->generation = 0;
        if (pthread_mutex_init(&b->mutex, NULL) != 0) return -1;
        if (pthread_cond_init(&b->cond, NULL) != 0) {
            pthread_mutex_destroy(&b->mutex);
            return -1;
        }
        return 0;
    }

    static void sklearn_bn_barrier_destroy(sklearn_bn_barrier_t* b) {
        pthread_cond_destroy(&b->cond);
        pthread_mutex_destroy(&b->mutex);
    }

    /* Every thread of the team calls it, with the same value, before its
       first wait: the team may be smaller than the threads requested. */
    static inline void sklearn_bn_barrier_join(sklearn_bn_barrier_t* b, int size) {
        __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
    }

    static inline long long sklearn_bn_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long) ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }

    static inline void sklearn_bn_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }

    /* Every write a thread made before its arrival is visible to every
       thread after the barrier: arrivals are release-acquire on `arrived`,
       the last one publishes `generation` (release), which the others read
       with acquire (or under the mutex). */
    static void sklearn_bn_barrier_wait(sklearn_bn_barrier_t* b) {
        unsigned int gen;
        long long deadline;
        int k, size = __atomic_load_n(&b->size, __ATOMIC_RELAXED);
        if (size <= 1) return;
        gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
        if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == size) {
            /* Nobody arrives again before the new generation is out. */
            __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
            pthread_mutex_lock(&b->mutex);
            __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
            pthread_cond_broadcast(&b->cond);
            pthread_mutex_unlock(&b->mutex);
            return;
        }
        deadline = sklearn_bn_now_ns() + SKLEARN_BN_SPIN_NS;
        for (;;) {
            for (k = 0; k < 64; k++) {
                if (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) != gen) return;
                sklearn_bn_cpu_relax();
            }
            if (sklearn_bn_now_ns() > deadline) break;
        }
        pthread_mutex_lock(&b->mutex);
        while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen)
            pthread_cond_wait(&b->cond, &b->mutex);
        pthread_mutex_unlock(&b->mutex);
    }
    #else
    typedef struct { int size; } sklearn_bn_barrier_t;
    static int sklearn_bn_barrier_init(sklearn_bn_barrier_t* b) {
        b->size = 1;
        return 0;
    }
    static void sklearn_bn_barrier_destroy(sklearn_bn_barrier_t* b) { (void) b; }
    static inline void sklearn_bn_barrier_join(sklearn_bn_barrier_t* b, int size) {
        b->size = size;  /* the same value from every thread */
    }
    #ifdef _OPENMP
    static void sklearn_bn_barrier_wait(sklearn_bn_barrier_t* b) {
        if (b->size > 1) { _Pragma("omp barrier") }
    }
    #else
    static void sklearn_bn_barrier_wait(sklearn_bn_barrier_t* b) { (void) b; }
    #endif
    #endif
    """
    # Outside a parallel region: a team of one, thread 0.
    int team_size "sklearn_bn_team_size"() noexcept nogil
    int thread_num "sklearn_bn_thread_num"() noexcept nogil
    int omp_max_threads "sklearn_bn_max_threads"() noexcept nogil
    ctypedef struct Barrier "sklearn_bn_barrier_t":
        int size
    int barrier_init "sklearn_bn_barrier_init"(Barrier* b) noexcept nogil
    void barrier_join "sklearn_bn_barrier_join"(Barrier* b, int size) noexcept nogil
    void barrier_destroy "sklearn_bn_barrier_destroy"(Barrier* b) noexcept nogil
    void barrier_wait "sklearn_bn_barrier_wait"(Barrier* b) noexcept nogil

cdef enum:
    MAX_THREADS = 64
    # Threads share rows and columns in multiples of these.
    ROW_ALIGN = 8
    COL_ALIGN = 16

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


def openmp_max_threads():
    """Threads an OpenMP team of this extension may have (1 when it was built
    without OpenMP): ``OMP_NUM_THREADS`` and threadpoolctl's ``openmp`` limits
    lower it."""
    return omp_max_threads()


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
    double data_loss_scale       # factor on the data term of the returned loss


cdef struct Team:
    int tid                      # this thread
    int size                     # threads sharing the minibatch
    double* partials             # 2 * size doubles: per-thread loss, sum of W**2
    Barrier* barrier             # shared by the team (size threads)


cdef struct Optimizer:
    int solver
    double learning_rate
    double momentum
    bint nesterov
    double beta_1
    double beta_2
    double adam_epsilon


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
    cdef floating q
    cdef double row_loss, total = 0, w
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
        else:  # OUT_EXP, half Poisson deviance
            for j in range(n_out):
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
                             Py_ssize_t ld, Py_ssize_t c0, Py_ssize_t c1,
                             floating* out) noexcept nogil:
    """out[k, c0:c1] = X[rows[k]] @ W[:, c0:c1] for CSR X; rows of W and out
    are ``ld`` apart."""
    cdef Py_ssize_t k, p
    for k in range(m):
        memset(out + k * ld + c0, 0, (c1 - c0) * sizeof(floating))
        for p in range(indptr[rows[k]], indptr[rows[k] + 1]):
            caxpy(<int> (c1 - c0), data[p], w + indices[p] * ld + c0,
                  out + k * ld + c0)


cdef void sparse_rows_grad(const Py_ssize_t* rows, Py_ssize_t m,
                           const floating* data, const Py_ssize_t* indices,
                           const Py_ssize_t* indptr, const floating* delta,
                           Py_ssize_t n_in, Py_ssize_t ld, Py_ssize_t c0,
                           Py_ssize_t c1, floating* grad,
                           bint accumulate) noexcept nogil:
    """grad[:, c0:c1] (+)= X[rows].T @ delta[:, c0:c1] for CSR X with ``n_in``
    columns (added to grad when ``accumulate``); rows of delta and grad are
    ``ld`` apart."""
    cdef Py_ssize_t k, p
    if not accumulate:
        for k in range(n_in):
            memset(grad + k * ld + c0, 0, (c1 - c0) * sizeof(floating))
    for k in range(m):
        for p in range(indptr[rows[k]], indptr[rows[k] + 1]):
            caxpy(<int> (c1 - c0), data[p], delta + k * ld + c0,
                  grad + indices[p] * ld + c0)


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


cdef inline void share(Py_ssize_t n, Py_ssize_t align, const Team* team,
                       Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """This thread's part ``[lo, hi)`` of ``range(n)``: contiguous parts whose
    bounds are multiples of ``align`` (so that threads do not write to the
    same cache line); the last threads may get nothing."""
    cdef Py_ssize_t part = (n + team.size - 1) // team.size
    part = (part + align - 1) // align * align
    lo[0] = min(team.tid * part, n)
    hi[0] = min(lo[0] + part, n)


cdef simd_void l2_start_panel(floating* grad, const floating* w,
                              Py_ssize_t n_rows, Py_ssize_t c0, Py_ssize_t c1,
                              Py_ssize_t ld, floating c,
                              double* sumsq) noexcept nogil:
    """Start a coefficient gradient with its L2 term: ``grad = c * w`` on
    columns ``c0:c1`` of ``n_rows`` rows ``ld`` apart (nothing is written when
    ``c == 0``); adds the sum of ``w ** 2`` there to ``sumsq``.

    The data term's product then adds to ``grad`` when ``c != 0`` (BLAS
    ``beta = 1``) and writes it otherwise: one pass over the gradient fewer
    than adding the L2 term after the product, and BLAS skips its own pass
    that zeroes ``C`` for ``beta = 0``.
    """
    cdef Py_ssize_t i, j, width = c1 - c0
    if c0 == 0 and c1 == ld:   # whole rows: one contiguous run
        width *= n_rows
        n_rows = 1
    for i in range(n_rows):
        if c != 0:
            for j in range(c0 + i * ld, c0 + i * ld + width):
                grad[j] = c * w[j]
        sumsq[0] += sum_of_squares(w + c0 + i * ld, width)


cdef double adam_rate(const Optimizer* opt, Py_ssize_t t) noexcept nogil:
    """Adam's step size at step ``t`` (from 1), bias corrections included."""
    return (opt.learning_rate * sqrt(1 - opt.beta_2 ** t)
            / (1 - opt.beta_1 ** t))


cdef void step_panel(const Optimizer* opt, floating* theta,
                     const floating* grad, floating* state_a,
                     floating* state_b, Py_ssize_t off, Py_ssize_t n_rows,
                     Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t ld,
                     double lr_t) noexcept nogil:
    """The optimizer step on columns ``c0:c1`` of the ``n_rows`` x ``ld``
    block of parameters that starts at ``off``."""
    cdef Py_ssize_t i, base
    if c1 <= c0:
        return
    if c0 == 0 and c1 == ld:   # whole rows: one contiguous run
        optimizer_step(opt, theta + off, grad + off, state_a + off,
                       state_b + off, n_rows * ld, lr_t)
        return
    for i in range(n_rows):
        base = off + i * ld + c0
        optimizer_step(opt, theta + base, grad + base, state_a + base,
                       state_b + base, c1 - c0, lr_t)


cdef void step_hidden_coefs(Net* net, Py_ssize_t l, Team* team,
                            const Optimizer* opt, floating* theta,
                            const floating* grad, floating* state_a,
                            floating* state_b, double lr_t) noexcept nogil:
    """Step this thread's columns of hidden layer ``l``'s coefficients (the
    columns whose gradient it computed)."""
    cdef Py_ssize_t c0, c1
    share(net.units[l + 1], COL_ALIGN, team, &c0, &c1)
    step_panel(opt, theta, grad, state_a, state_b, net.coef_off[l],
               net.units[l], c0, c1, net.units[l + 1], lr_t)


cdef double forward_backward(
        Net* net, const Py_ssize_t* rows, Py_ssize_t m, bint rows_contiguous,
        const floating* X, const floating* X_data, const Py_ssize_t* X_indices,
        const Py_ssize_t* X_indptr, const floating* Y, const floating* sw,
        const floating* theta, floating* grad, floating* running_mean,
        floating* running_var, floating* work, double* dwork,
        bint update_running, double* wsum_out, Team* team,
        const Optimizer* opt, floating* theta_out, floating* state_a,
        floating* state_b, double lr_t) noexcept nogil:
    """Loss of one minibatch (rows ``rows[:m]``) and its gradient in ``grad``.

    With an optimizer (``opt`` not NULL), each thread also steps the
    parameters whose gradient it computed (``theta_out``: ``theta``, writable)
    as soon as no thread needs their old values, while their gradient is
    still in cache: a hidden layer's gamma and beta right after its batch
    norm backward, the output layer's right after their gradient (after the
    loss, nothing reads them), and a hidden layer's coefficients once the
    delta of the layer below, which multiplies by them, is complete (after
    the next barrier; the lowest layer's at once).

    Every thread of ``team`` runs it on its share of the work: rows for the
    gather, the output layer's product, the loss and the delta of the last
    hidden layer; units (column panels) for each hidden layer's product,
    batch norm forward and backward, the other deltas and the coefficient
    gradients. A hidden layer's statistics are per column, so a thread reads
    what another wrote only after a barrier: one after the gather, one per
    hidden layer forward, one after the loss, one per hidden layer backward
    except the lowest, and one at the end (every gradient is complete on
    return).

    Returns the weighted mean loss plus the L2 term; ``wsum_out`` receives the
    batch's weight sum (0: the batch was skipped and nothing was written).
    """
    cdef Py_ssize_t L = net.n_layers, nf = net.n_features, n_out = net.n_out
    cdef Py_ssize_t k, l, i, fan_in, fan_out, n_next, r0, r1, c0, c1
    cdef floating* xb = work + net.xb_off
    cdef floating* yb = work + net.yb_off
    cdef floating* swb = work + net.swb_off
    cdef floating* p = work + net.p_off
    cdef double* scratch = dwork + net.scratch_off
    cdef double* mean
    cdef double* var
    cdef const floating* xin
    cdef const floating* layer_in
    cdef const floating* W
    cdef floating* z
    cdef floating* a
    cdef floating* gW
    cdef floating* D
    cdef floating* gbias
    cdef const floating* swp
    cdef double wsum = 0, loss = 0, sumsq = 0, l2, w
    cdef double n_running = 0   # the m of the unbiased correction m / (m - 1)
    cdef floating c, product_beta
    cdef bint l2_written

    # Every thread sums the weights (same order, same value): all of them
    # take the same branches and meet at the same barriers.
    if net.weighted:
        for k in range(m):
            w = sw[rows[k]]
            wsum += w
            if w > 0:
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

    # Gather the minibatch.
    share(m, ROW_ALIGN, team, &r0, &r1)
    for k in range(r0, r1):
        memcpy(yb + k * n_out, Y + rows[k] * n_out, n_out * sizeof(floating))
        if net.weighted:
            swb[k] = sw[rows[k]]
    swp = swb if net.weighted else NULL
    if net.sparse:
        xin = NULL
    elif rows_contiguous:
        xin = X + rows[0] * nf
    else:
        for k in range(r0, r1):
            memcpy(xb + k * nf, X + rows[k] * nf, nf * sizeof(floating))
        xin = xb
    barrier_wait(team.barrier)

    # Forward: hidden layers by column panels.
    layer_in = xin
    for l in range(L - 1):
        fan_in = net.units[l]
        fan_out = net.units[l + 1]
        W = theta + net.coef_off[l]
        z = work + net.z_off[l]
        a = work + net.a_off[l]
        mean = dwork + net.stat_off[l]
        var = dwork + net.var_base + net.stat_off[l]
        share(fan_out, COL_ALIGN, team, &c0, &c1)
        if c1 > c0:
            if l == 0 and net.sparse:
                sparse_rows_matmul(rows, m, X_data, X_indices, X_indptr, W,
                                   fan_out, c0, c1, z)
            else:
                cgemm(False, False, <int> m, <int> (c1 - c0), <int> fan_in,
                      <floating> 1, layer_in, <int> fan_in, W + c0,
                      <int> fan_out, <floating> 0, z + c0, <int> fan_out)
            cbn_act_forward_train(
                z + c0, a + c0, m, c1 - c0, fan_out,
                theta + net.gamma_off[l] + c0, theta + net.bias_off[l] + c0,
                swp, net.bn_epsilon, net.act, mean + c0, var + c0,
                scratch + SCRATCH_COLS * c0)
            if update_running:
                cupdate_running_stats(
                    running_mean + net.stat_off[l] + c0,
                    running_var + net.stat_off[l] + c0, mean + c0, var + c0,
                    c1 - c0, net.bn_momentum, n_running)
        barrier_wait(team.barrier)
        layer_in = a

    # Output layer and loss, by rows.
    l = L - 1
    fan_in = net.units[l]
    W = theta + net.coef_off[l]
    if r1 > r0:
        if l == 0 and net.sparse:
            sparse_rows_matmul(rows + r0, r1 - r0, X_data, X_indices, X_indptr,
                               W, n_out, 0, n_out, p + r0 * n_out)
        else:
            cgemm(False, False, <int> (r1 - r0), <int> n_out, <int> fan_in,
                  <floating> 1, layer_in + r0 * fan_in, <int> fan_in, W,
                  <int> n_out, <floating> 0, p + r0 * n_out, <int> n_out)
        bias_act_rows(p + r0 * n_out, r1 - r0, n_out, theta + net.bias_off[l],
                      IDENTITY)
        loss = output_loss_and_delta(net, p + r0 * n_out, yb + r0 * n_out,
                                     swb + r0, r1 - r0, wsum)
        if L > 1:
            # This thread's rows of the last hidden layer's delta need only
            # its own rows of the output delta (no barrier before). Rows
            # also suit BLAS better here: the inner dimension is n_out.
            cgemm(False, True, <int> (r1 - r0), <int> fan_in, <int> n_out,
                  <floating> 1, p + r0 * n_out, <int> n_out, W, <int> n_out,
                  <floating> 0, work + net.d_off[L - 2] + r0 * fan_in,
                  <int> fan_in)
    team.partials[team.tid] = loss
    barrier_wait(team.barrier)
    loss = 0
    for k in range(team.size):
        loss += team.partials[k]

    # Backward. The output layer: intercept gradient by columns, coefficient
    # gradient by rows (the units of the layer below).
    l2 = net.alpha / wsum
    c = <floating> l2
    # l2_start_panel writes each coefficient gradient when c != 0, and the
    # products then add to it.
    l2_written = c != 0
    product_beta = 1 if l2_written else 0
    D = p
    gW = grad + net.coef_off[l]
    gbias = grad + net.bias_off[l]
    share(n_out, COL_ALIGN, team, &c0, &c1)
    for i in range(c0, c1):
        gbias[i] = 0
    for k in range(m):
        for i in range(c0, c1):
            gbias[i] += D[k * n_out + i]
    if opt != NULL:
        step_panel(opt, theta_out, grad, state_a, state_b, net.bias_off[l],
                   1, c0, c1, n_out, lr_t)
    if l == 0 and net.sparse:
        if c1 > c0:
            l2_start_panel(gW, W, nf, c0, c1, n_out, c, &sumsq)
            sparse_rows_grad(rows, m, X_data, X_indices, X_indptr, D, nf,
                             n_out, c0, c1, gW, l2_written)
            if opt != NULL:
                step_panel(opt, theta_out, grad, state_a, state_b,
                           net.coef_off[l], nf, c0, c1, n_out, lr_t)
    else:
        share(fan_in, COL_ALIGN, team, &c0, &c1)
        if c1 > c0:
            layer_in = xin if l == 0 else work + net.a_off[l - 1]
            l2_start_panel(gW + c0 * n_out, W + c0 * n_out, c1 - c0, 0, n_out,
                           n_out, c, &sumsq)
            cgemm(True, False, <int> (c1 - c0), <int> n_out, <int> m,
                  <floating> 1, layer_in + c0, <int> fan_in, D, <int> n_out,
                  product_beta, gW + c0 * n_out, <int> n_out)
            if opt != NULL:
                step_panel(opt, theta_out, grad, state_a, state_b,
                           net.coef_off[l] + c0 * n_out, c1 - c0, 0, n_out,
                           n_out, lr_t)

    # Hidden layers, top down, by column panels: this thread's columns of the
    # delta (from the complete delta of the layer above; the last hidden
    # layer's was computed by rows with the loss), batch norm backward, and
    # the coefficient gradient of those columns.
    for l in range(L - 2, -1, -1):
        fan_in = net.units[l]
        fan_out = net.units[l + 1]
        n_next = net.units[l + 2]
        W = theta + net.coef_off[l]
        gW = grad + net.coef_off[l]
        z = work + net.z_off[l]
        a = work + net.a_off[l]
        D = work + net.d_off[l]
        share(fan_out, COL_ALIGN, team, &c0, &c1)
        if c1 > c0:
            if l < L - 2:
                cgemm(False, True, <int> m, <int> (c1 - c0), <int> n_next,
                      <floating> 1, work + net.d_off[l + 1], <int> n_next,
                      theta + net.coef_off[l + 1] + c0 * n_next, <int> n_next,
                      <floating> 0, D + c0, <int> fan_out)
            cbn_act_backward(
                D + c0, a + c0, z + c0, D + c0, m, c1 - c0, fan_out,
                theta + net.gamma_off[l] + c0, theta + net.bias_off[l] + c0,
                dwork + net.stat_off[l] + c0,
                dwork + net.var_base + net.stat_off[l] + c0, net.bn_epsilon,
                swp, wsum, net.act, grad + net.gamma_off[l] + c0,
                grad + net.bias_off[l] + c0, scratch + SCRATCH_COLS * c0)
            if opt != NULL:
                step_panel(opt, theta_out, grad, state_a, state_b,
                           net.gamma_off[l], 1, c0, c1, fan_out, lr_t)
                step_panel(opt, theta_out, grad, state_a, state_b,
                           net.bias_off[l], 1, c0, c1, fan_out, lr_t)
            l2_start_panel(gW, W, fan_in, c0, c1, fan_out, c, &sumsq)
            if l == 0 and net.sparse:
                sparse_rows_grad(rows, m, X_data, X_indices, X_indptr, D, nf,
                                 fan_out, c0, c1, gW, l2_written)
            else:
                layer_in = xin if l == 0 else work + net.a_off[l - 1]
                cgemm(True, False, <int> fan_in, <int> (c1 - c0), <int> m,
                      <floating> 1, layer_in, <int> fan_in, D + c0,
                      <int> fan_out, product_beta, gW + c0, <int> fan_out)
            if opt != NULL and l == 0:
                step_hidden_coefs(net, 0, team, opt, theta_out, grad, state_a,
                                  state_b, lr_t)
        if l > 0:
            barrier_wait(team.barrier)   # the layer below needs every column of this delta
            if opt != NULL and l + 1 < L - 1:
                # Every thread's share of this delta is done: nothing reads
                # the layer above's coefficients any more.
                step_hidden_coefs(net, l + 1, team, opt, theta_out, grad,
                                  state_a, state_b, lr_t)

    team.partials[team.size + team.tid] = sumsq
    barrier_wait(team.barrier)
    if opt != NULL and L > 2:
        step_hidden_coefs(net, 1, team, opt, theta_out, grad, state_a,
                          state_b, lr_t)
    sumsq = 0
    for k in range(team.size):
        sumsq += team.partials[team.size + k]
    return net.data_loss_scale * loss + 0.5 * l2 * sumsq


cdef simd_void optimizer_step(const Optimizer* opt, floating* theta,
                              const floating* grad, floating* state_a,
                              floating* state_b, Py_ssize_t n,
                              double adam_lr) noexcept nogil:
    """One Adam (step size ``adam_lr``, from :func:`adam_rate`) or
    SGD-with-momentum step, in place."""
    cdef Py_ssize_t i
    cdef floating g, v, lr_t, b1, b2, c1, c2, eps, mom, lr
    if opt.solver == ADAM:
        lr_t = <floating> adam_lr
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
            state_a[i] = b1 * state_a[i] + c1 * g
            state_b[i] = b2 * state_b[i] + c2 * (g * g)
            if floating is float:
                theta[i] -= lr_t * state_a[i] / (sqrtf(state_b[i]) + eps)
            else:
                theta[i] -= lr_t * state_a[i] / (sqrt(state_b[i]) + eps)
    else:
        mom = <floating> opt.momentum
        lr = <floating> opt.learning_rate
        for i in range(n):
            g = grad[i]
            v = mom * state_a[i] - lr * g
            state_a[i] = v
            if opt.nesterov:
                theta[i] += mom * v - lr * g
            else:
                theta[i] += v


cdef void run_epoch(Net* net, const Optimizer* opt, const Py_ssize_t* order,
                    Py_ssize_t n, bint order_is_identity,
                    Py_ssize_t batch_size, const floating* X,
                    const floating* X_data, const Py_ssize_t* X_indices,
                    const Py_ssize_t* X_indptr, const floating* Y,
                    const floating* sw, floating* theta, floating* grad,
                    floating* state_a, floating* state_b,
                    floating* running_mean, floating* running_var,
                    floating* work, double* dwork, double* partials,
                    Barrier* barrier, double* loss_sum_out,
                    Py_ssize_t* t_inout) noexcept nogil:
    """The minibatch loop of an epoch, run by every thread of the current
    OpenMP team (or by the caller alone) with the team's ``barrier``; each
    steps the parameters whose gradient it computed. Thread 0 writes the
    results."""
    cdef Team team
    cdef Py_ssize_t start = 0, m, t = t_inout[0]
    cdef double loss_sum = 0, loss, wsum, lr_t
    team.tid = thread_num()
    team.size = team_size()
    team.partials = partials
    team.barrier = barrier
    barrier_join(barrier, team.size)
    while start < n:
        m = min(batch_size, n - start)
        if n - start - m == 1:
            m += 1   # a trailing single row joins this minibatch
        lr_t = adam_rate(opt, t + 1) if opt.solver == ADAM else 0
        # The step happens inside, on each thread's parameters. No barrier
        # after it: the next minibatch reads the parameters only after its
        # gather's barrier.
        loss = forward_backward(
            net, order + start, m, order_is_identity, X, X_data, X_indices,
            X_indptr, Y, sw, theta, grad, running_mean, running_var, work,
            dwork, True, &wsum, &team, opt, theta, state_a, state_b, lr_t)
        if wsum > 0:
            loss_sum += loss * m
            t += 1
        start += m
    if team.tid == 0:
        loss_sum_out[0] = loss_sum
        t_inout[0] = t


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
    net.data_loss_scale = 1.0
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
        double bn_epsilon, bint sparse, bint weighted, int n_threads=1,
        double data_loss_scale=1.0):
    """Run one epoch over the rows in ``order``; update everything in place.

    Minibatches are consecutive slices of ``order`` of ``batch_size`` rows; a
    trailing single row joins the previous minibatch. Minibatches whose
    weights sum to zero are skipped. With ``n_threads > 1`` an OpenMP team
    shares every minibatch (see :func:`forward_backward`); BLAS should then be
    limited to one thread, as each thread calls it on its own share (when the
    extension was built without OpenMP, one thread runs everything).

    ``data_loss_scale`` multiplies the data term of the reported loss (not
    the L2 term, not the gradient): the regressor passes ``1 / n_outputs``
    for the squared error, which scikit-learn reports as a mean over outputs
    while its gradient, like this one, is that of their sum.

    Returns
    -------
    loss_sum : float
        Sum over minibatches of (minibatch loss x minibatch rows).
    t : int
        The optimizer's step counter after the epoch.
    """
    cdef Net net
    cdef Optimizer opt
    cdef Py_ssize_t n = order.shape[0]
    cdef double loss_sum = 0
    cdef double partials[2 * MAX_THREADS]
    cdef Barrier team_barrier
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
    if n_threads < 1:
        raise ValueError("n_threads must be at least 1")
    n_threads = min(n_threads, MAX_THREADS)
    if not data_loss_scale > 0:
        raise ValueError("data_loss_scale must be positive")
    net = make_net(layout, ws, work.shape[0], dwork.shape[0], act, out_act,
                   alpha, bn_momentum, bn_epsilon, sparse, weighted)
    net.data_loss_scale = data_loss_scale
    data_pointers(X, X_data, X_indices, X_indptr, sample_weight, sparse,
                  weighted, &Xp, &Xd, &Xi, &Xptr, &swp)
    opt.solver = solver
    opt.learning_rate = learning_rate
    opt.momentum = momentum
    opt.nesterov = nesterov
    opt.beta_1 = beta_1
    opt.beta_2 = beta_2
    opt.adam_epsilon = adam_epsilon

    if barrier_init(&team_barrier) != 0:
        raise MemoryError("could not create the threads' barrier")
    with nogil:
        # One thread never enters OpenMP: no team to start, and nothing that
        # a fork() could leave broken (see _utils._IN_FORKED_CHILD).
        if n_threads == 1:
            run_epoch(&net, &opt, &order[0], n, order_is_identity, batch_size,
                      Xp, Xd, Xi, Xptr, &Y[0, 0], swp, &theta[0], &grad[0],
                      &state_a[0], &state_b[0], &running_mean[0],
                      &running_var[0], &work[0], &dwork[0], partials,
                      &team_barrier, &loss_sum, &t)
        else:
            with parallel(num_threads=n_threads):
                run_epoch(&net, &opt, &order[0], n, order_is_identity,
                          batch_size, Xp, Xd, Xi, Xptr, &Y[0, 0], swp,
                          &theta[0], &grad[0], &state_a[0], &state_b[0],
                          &running_mean[0], &running_var[0],
                          &work[0], &dwork[0], partials, &team_barrier,
                          &loss_sum, &t)
    barrier_destroy(&team_barrier)
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
    cdef double partials[2]
    cdef Team team
    cdef const floating* Xp
    cdef const floating* Xd
    cdef const Py_ssize_t* Xi
    cdef const Py_ssize_t* Xptr
    cdef const floating* swp
    cdef Barrier no_barrier
    team.tid = 0
    team.size = 1
    team.partials = partials
    team.barrier = &no_barrier
    _check_engine_args(X, X_data, X_indices, X_indptr, Y, sample_weight,
                       layout, theta, (grad_out,), running_mean, running_var,
                       sparse, weighted)
    if m < 1 or m > ws["max_batch"]:
        raise ValueError("need between one row and the workspace's max_batch")
    net = make_net(layout, ws, work.shape[0], dwork.shape[0], act, out_act,
                   alpha, bn_momentum, bn_epsilon, sparse, weighted)
    data_pointers(X, X_data, X_indices, X_indptr, sample_weight, sparse,
                  weighted, &Xp, &Xd, &Xi, &Xptr, &swp)
    if barrier_init(&no_barrier) != 0:
        raise MemoryError("could not create the threads' barrier")
    with nogil:
        loss = forward_backward(
            &net, &rows[0], m, True, Xp, Xd, Xi, Xptr, &Y[0, 0], swp,
            &theta[0], &grad_out[0], &running_mean[0], &running_var[0],
            &work[0], &dwork[0], update_running, &wsum, &team, NULL, NULL,
            NULL, NULL, 0)
    barrier_destroy(&no_barrier)
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


cdef void folded_block(const floating* X, Py_ssize_t m,
                       const floating* params, const Py_ssize_t* units,
                       const Py_ssize_t* coef_off, const Py_ssize_t* bias_off,
                       Py_ssize_t first_layer, Py_ssize_t L, int act,
                       int out_act, floating* buf0, floating* buf1,
                       floating* out) noexcept nogil:
    """The folded forward pass of ``m`` rows, ``buf0`` and ``buf1`` holding
    the hidden layers' outputs in turn."""
    cdef const floating* src = X
    cdef floating* dst
    cdef floating* spare = buf1
    cdef Py_ssize_t l
    dst = buf0
    for l in range(first_layer, L):
        if l == L - 1:
            dst = out
        cgemm(False, False, <int> m, <int> units[l + 1], <int> units[l],
              <floating> 1, src, <int> units[l], params + coef_off[l],
              <int> units[l + 1], <floating> 0, dst, <int> units[l + 1])
        if l < L - 1:
            bias_act_rows(dst, m, units[l + 1], params + bias_off[l], act)
            src = dst
            dst, spare = spare, dst
        else:
            bias_act_rows(dst, m, units[l + 1], params + bias_off[l], IDENTITY)
            out_activation_rows(dst, m, units[L], out_act)


def forward_folded(const floating[:, ::1] X, const floating[::1] params,
                   const Py_ssize_t[::1] units, const Py_ssize_t[::1] coef_off,
                   const Py_ssize_t[::1] bias_off, Py_ssize_t first_layer,
                   int act, int out_act, floating[:, ::1] out, int n_threads=1):
    """Inference forward pass of a network with batch norm folded in.

    ``X`` is the input of weight layer ``first_layer`` (the caller computes a
    sparse first layer itself); rows are processed in blocks of
    ``PREDICT_BLOCK_ROWS`` so that memory stays bounded for any number of rows.
    Hidden layers apply ``act(a @ W + b)``; the last applies ``out_act``.

    With ``n_threads > 1`` an OpenMP team shares the blocks, each thread
    taking the next one when it is done (the caller limits BLAS to one thread
    meanwhile): no thread waits for another until the end, and a thread
    slowed down by another process on its core just takes fewer blocks. A
    row's result depends only on its block, not on the thread.
    """
    cdef Py_ssize_t L = units.shape[0] - 1
    cdef Py_ssize_t n = X.shape[0], n_out, l, b, start, width = 1
    cdef Py_ssize_t block = PREDICT_BLOCK_ROWS
    cdef Py_ssize_t n_blocks = (n + block - 1) // block
    # Checked in this order: the module indexes without bounds checks.
    if L < 1 or coef_off.shape[0] < L or bias_off.shape[0] < L:
        raise ValueError("units, coef_off and bias_off do not describe a network")
    for l in range(L):
        if (coef_off[l] < 0 or bias_off[l] < 0
                or coef_off[l] + units[l] * units[l + 1] > params.shape[0]
                or bias_off[l] + units[l + 1] > params.shape[0]):
            raise ValueError("params is too short for the layer offsets")
    if not 0 <= first_layer < L:
        raise ValueError("first_layer out of range")
    n_out = units[L]
    if X.shape[1] != units[first_layer]:
        raise ValueError(
            f"X has {X.shape[1]} columns, expected {units[first_layer]}")
    if out.shape[0] != n or out.shape[1] != n_out:
        raise ValueError("out has the wrong shape")
    if n_threads < 1:
        raise ValueError("n_threads must be at least 1")
    if n == 0:
        return
    n_threads = <int> min(<Py_ssize_t> n_threads, n_blocks, <Py_ssize_t> MAX_THREADS)
    for l in range(first_layer + 1, L):
        width = max(width, units[l])
    buffers = np.empty((n_threads, 2, block * width), dtype=np.asarray(params).dtype)
    cdef floating[:, :, ::1] buf = buffers
    with nogil:
        if n_threads == 1:
            for b in range(n_blocks):
                start = b * block
                folded_block(&X[start, 0], min(block, n - start), &params[0],
                             &units[0], &coef_off[0], &bias_off[0], first_layer,
                             L, act, out_act, &buf[0, 0, 0], &buf[0, 1, 0],
                             &out[start, 0])
        else:
            with parallel(num_threads=n_threads):
                for b in prange(n_blocks, schedule="dynamic"):
                    folded_block(&X[b * block, 0], min(block, n - b * block),
                                 &params[0], &units[0], &coef_off[0],
                                 &bias_off[0], first_layer, L, act, out_act,
                                 &buf[threadid(), 0, 0], &buf[threadid(), 1, 0],
                                 &out[b * block, 0])
