"""Training engine: whole epochs of minibatch training without the GIL.

This is the compiled half of :class:`sklearn_bn._engine.Engine`, which checks
every value and array, then builds a :class:`Network` once per fit from the
estimator's choices and calls :func:`train_epoch`, :func:`loss_and_gradient`
and :func:`forward_folded`. Nothing here checks its arguments again.

A :class:`Network` owns its layout: one descriptor per layer (``Layer``: its
sizes, where its parameters sit in the flat parameter vector, where its
buffers sit in the workspace, its dropout rate), the buffers of one minibatch
(``Net``), and the workspace itself, allocated once per fit.

One minibatch step (:func:`minibatch_step`) runs these phases, each in its
own function: for each hidden layer, the forward pass (with the gather of
the minibatch's rows through the epoch's sample order for the first: no
shuffled copy of X; BLAS ``gemm`` from ``scipy.linalg.cython_blas``, batch
norm fused with the activation); the output layer, the loss and its delta;
the backward pass of each hidden layer; and the optimizer's step, in place
on one flat parameter vector (the optimizer is an object of
``_optimizers.pyx``).

Threads: the minibatch's rows are cut in a fixed number of pieces,
``pieces`` (the team the thread policy chose), and every forward and
backward phase works on those pieces of rows, each taking its rows through
one layer. With ``n_threads > 1`` a team runs the epoch (the caller and
threads of the engine's pool, ``_team.h``, which sleep between jobs and
never spin at a job's start or end as an OpenMP team does), its threads
claiming the pieces from a shared queue (``_team.pxd``'s ``next_piece``), and
calling BLAS on them (the caller limits BLAS to one thread meanwhile). A
thread first claims the piece of its own index: on a quiet machine each
thread takes the same rows in every phase, and what it wrote stays in its
core's cache for the next phase. (Pieces of columns, which an earlier
engine used, made every layer read the other threads' columns of the layer
below: on some machines two threads then trained slower than one.) What
needs every row waits for a later phase (``phase_end``): batch norm's
statistics and backward sums, which each piece computes for its rows and
which are merged in piece order, and the gradient, which each piece writes
as its share and which the optimizer's phase sums in piece order, by
ranges of the parameters, before it steps them. Ghost batch norm's chunks
are held whole by one piece each. A layer whose gradient shares would
outweigh its rows (or the sparse first layer) has its coefficient gradient
summed by pieces of columns, over every row, in the next phase. Nothing
waits for a thread that holds no piece, so a thread that another process
keeps off its core takes fewer pieces instead of holding the others up;
and since the pieces are the same whoever takes them, the results depend
on ``pieces`` only, not on the number of threads or on their scheduling. A
call may ask its team to keep to their CPUs, one each, and to sleep as
soon as they wait (``pinned``; ``_threads.TEAM_PACE`` picks the way): the
pieces are the same.

Parameter layout (the flat vector ``theta``; ``grad`` and the optimizer's
moments have the same layout): for each weight layer, its coefficient matrix
(``fan_in x fan_out``, row-major), then for a hidden layer its ``gamma`` and
``beta``, for the output layer its intercept. Running statistics of the
hidden layers follow one another in ``running_mean``/``running_var``.

Workspace: ``work`` (the parameters' dtype), ``dwork`` (float64) and the
gradient's shares (of pieces 1, 2, ...; piece 0 writes to ``grad``), sized
by the minibatch and the pieces, not by the data
(:meth:`Network.use_pieces`). The layers' matrices are row-major, so
that a piece's rows are one contiguous block.
"""
from libc.math cimport exp, log, INFINITY, NAN
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cython cimport floating
from cython.parallel cimport prange, threadid

import numpy as np
cimport numpy as cnp

from sklearn_bn._activations cimport (
    act_code, act_rows, logistic, OUT_IDENTITY, OUT_LOGISTIC, OUT_SOFTMAX, OUT_EXP)
from sklearn_bn._blas cimport cgemm, caxpy
from sklearn_bn._simd cimport simd_void
from sklearn_bn._batchnorm cimport (
    Panel, Statistics, cbatch_stats_rows, cbn_act_backward, cbn_act_backward_dz,
    cbn_act_backward_sums, cbn_act_forward_train, cbn_act_normalize,
    cbn_gamma_beta_gradients, chan_merge, cupdate_running_average,
    cupdate_running_stats, unbiased_count, SCRATCH_PER_COLUMN)
from sklearn_bn._optimizers cimport Optimizer, Step, step_range
from sklearn_bn._team cimport (
    MAX_THREADS, Team, Work, next_piece, next_piece_of, phase_end, piece_bounds,
    pool_run, team_start, work_destroy, work_init, work_sleep_at_once)
from cpython.ref cimport PyObject

from sklearn_bn._activations import ACTIVATIONS, OUT_ACTIVATIONS
from sklearn_bn._utils import aligned_zeros

cnp.import_array()

cdef enum:
    # Threads share rows and columns in multiples of these, so that no two
    # threads write to the same cache line.
    ROW_ALIGN = 8
    COL_ALIGN = 16
    # A layer's coefficient gradient is summed from the pieces' shares
    # while these, beyond the first, hold at most this many times the
    # elements of the rows a piece of columns would read instead.
    SHARE_RATIO = 4
    # Every block of the workspace starts at a multiple of this many
    # elements (the buffers start on 64-byte boundaries: a cache line for
    # float32, two for float64), so that threads writing neighbouring blocks
    # never share a line.
    ALIGN_ELEMENTS = 16


cdef struct Layer:
    # One weight layer: a hidden layer (linear without bias, batch norm, the
    # activation, dropout) or the output layer (linear with its intercept).
    Py_ssize_t fan_in
    Py_ssize_t fan_out
    # Its parameters: offsets into theta (and grad, the optimizer's moments).
    Py_ssize_t coef              # fan_in x fan_out, row-major
    Py_ssize_t gamma             # hidden: batch norm's scale
    Py_ssize_t bias              # hidden: batch norm's shift beta; output: intercept
    Py_ssize_t stat              # hidden: into the running and the batch statistics
    # Its buffers: offsets into work (the parameters' dtype) and dwork.
    Py_ssize_t z                 # hidden: a @ W
    Py_ssize_t out               # hidden: act(batch norm(z)), row-major
    Py_ssize_t delta             # hidden: dL/d out, then dL/dz
    Py_ssize_t dropped           # hidden: out after dropout (out itself without)
    Py_ssize_t keep              # hidden, with dropout: its mask, one byte per unit
    # Its gradient's shares (see Net.share_stride): offsets into one piece's
    # share, of its coefficients (-1: summed by columns instead) and of its
    # other parameters (gamma and beta, or the intercept).
    Py_ssize_t share_coef
    Py_ssize_t share_rest
    # Its options.
    double dropout               # hidden: the rate (0: none)


cdef struct ParamBlock:
    # A block of the flat parameters, as step_phase steps it.
    Py_ssize_t start             # into theta and grad
    Py_ssize_t n
    Py_ssize_t share_offset      # into a piece's share (-1: whole in grad)
    bint decayed                 # coefficients: L2 and weight decay act on it


cdef struct Net:
    int n_layers                 # weight layers: hidden layers + output
    Layer* layers
    int act                      # the hidden layers' activation (code)
    int out_act                  # the output layer's, which picks the loss
    Py_ssize_t n_features
    Py_ssize_t n_out
    bint sparse                  # X is CSR
    bint weighted                # rows carry weights
    double alpha                 # L2 penalty on the coefficients
    double bn_epsilon
    double bn_momentum
    bint cumulative              # running statistics: the cumulative average
    Py_ssize_t virtual_batch     # ghost batch norm's chunk size (0: off)
    uint64_t dropout_seed
    double data_loss_scale       # factor on the data term of the returned loss
    # The minibatch's buffers: offsets into work ...
    Py_ssize_t xb                # its rows of X (when not read in place)
    Py_ssize_t yb                # its rows of Y
    Py_ssize_t swb               # its weights
    Py_ssize_t p                 # the output layer, then its delta
    Py_ssize_t gtmp              # per piece: a ghost chunk's dgamma and dbeta
    # ... and into dwork.
    Py_ssize_t stats_stride      # between two slots of statistics
    Py_ssize_t var_base          # the slots' variances (their means at 0)
    Py_ssize_t slot_weight       # the slots' weight sums
    Py_ssize_t sums              # per piece: batch norm backward's sums
    Py_ssize_t scratch           # per piece: the batch-norm kernels' scratch
    Py_ssize_t scratch_stride
    Py_ssize_t row_loss          # each row's weighted loss
    Py_ssize_t l2_sums           # per piece of the step: its sum of W ** 2
    # The pieces' shares of the gradient: piece 0 writes its share to grad,
    # piece k > 0 to the k-th block of share_stride in the shares buffer,
    # which holds the gradient of the parameters that are summed by rows.
    Py_ssize_t n_params
    Py_ssize_t share_stride
    int pieces                   # the pieces the workspace is laid out for
    Py_ssize_t widest


# The arrays below are in the parameters' dtype, except where said: each
# phase takes a ``floating*`` that is always NULL, whose type picks the dtype
# its pointers are cast to (as the activation tags of _activations.pxd do).
cdef struct Buffers:
    char* theta
    char* grad
    char* shares                 # the gradient's shares of pieces 1, 2, ...
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


cdef struct Epoch:
    # (Part of) an epoch: its rows, and where it stands. The team's threads
    # read where it starts, which nothing writes while they run (a thread
    # may start late, after thread 0 is done: it must go through the same
    # minibatches); thread 0 writes where it ends to the next_* fields.
    const Py_ssize_t* order
    Py_ssize_t n
    bint order_is_identity       # order[k] == k: X is read in place
    Py_ssize_t batch_size
    Py_ssize_t max_batches       # minibatches of this call
    Py_ssize_t start             # the row of order the first minibatch starts at
    Py_ssize_t step              # the optimizer's steps before it
    Py_ssize_t tracked           # updates of the running statistics before it
    Py_ssize_t next_start        # out: where the next call starts
    Py_ssize_t next_step
    Py_ssize_t next_tracked
    double loss_sum              # minibatch loss x rows, added in order
    int pieces                   # every task's pieces (the results depend on it)
    Py_ssize_t n_degenerate      # weight on < 2 rows: minibatches skipped, chunks at 0
    Py_ssize_t rows_trained      # rows of the minibatches trained (not skipped)


cdef struct Minibatch:
    const Py_ssize_t* rows
    Py_ssize_t m
    bint contiguous              # rows[k] == rows[0] + k: X is read in place
    double wsum                  # sum of the weights (m when unweighted)
    double n_running             # the m of the running variance's m / (m - 1)
    Py_ssize_t n_chunks          # ghost batch norm's chunks (1: the whole batch)
    Py_ssize_t n_updates         # chunks with weight: updates of the running stats
    bint degenerate              # weighted, and fewer than 2 rows of positive weight
    Py_ssize_t n_degenerate      # its ghost chunks with weight on fewer than 2 rows
    Py_ssize_t tracked           # updates of the running statistics before this batch
    Py_ssize_t step              # the optimizer's steps before this batch
    bint stepping                # the optimizer steps the parameters (else: gradient)
    Step update                  # the optimizer's rates for this step (thread's copy)
    const char* xin              # the minibatch's rows of X (NULL when sparse)


cdef inline Py_ssize_t _round_up(Py_ssize_t size) noexcept nogil:
    return (size + ALIGN_ELEMENTS - 1) // ALIGN_ELEMENTS * ALIGN_ELEMENTS


cdef inline Py_ssize_t _block(Py_ssize_t* size, Py_ssize_t n) noexcept nogil:
    """A block of ``n`` elements at the end of a buffer of ``size[0]``; its
    start."""
    cdef Py_ssize_t start = size[0]
    size[0] += _round_up(n)
    return start


cdef class Network:
    """One network shape, as the engine trains it: its layers' descriptors,
    its parameters' layout and its workspace (sized for minibatches of up to
    ``max_batch`` rows), allocated once per fit.

    Parameters
    ----------
    units : sequence of int
        Units of every layer, input and output included (checked by the
        engine: at least 2 layers of at least 1 unit).
    activation : str
        The hidden layers' activation.
    out_activation : str
        The output layer's, which also picks the loss.
    dtype : float32 or float64
    max_batch : int
    sparse, weighted : bool
    alpha, bn_epsilon, data_loss_scale : float
    bn_momentum : float or None
        None: the cumulative average.
    virtual_batch_size : int or None
    dropout : sequence of float
        One rate per hidden layer.
    dropout_seed : int
    """

    cdef Net net
    cdef readonly object units
    cdef readonly object dtype
    cdef readonly bint single          # float32 (else float64)
    cdef readonly Py_ssize_t n_params
    cdef readonly Py_ssize_t n_hidden
    cdef readonly Py_ssize_t max_batch
    cdef readonly object work
    cdef readonly object dwork
    cdef readonly object grad
    cdef readonly object shares
    cdef readonly int pieces

    def __cinit__(self):
        self.net.layers = NULL

    def __dealloc__(self):
        PyMem_Free(self.net.layers)

    def __init__(self, units, *, activation, out_activation, dtype, max_batch, sparse,
                 weighted, alpha, bn_momentum, bn_epsilon, data_loss_scale=1.0,
                 virtual_batch_size=None, dropout=None, dropout_seed=0):
        cdef Py_ssize_t l, L = len(units) - 1, size = 0
        cdef Py_ssize_t widest = 1
        cdef Layer* layer
        self.units = np.asarray(units, dtype=np.intp)
        self.dtype = np.dtype(dtype)
        self.single = self.dtype == np.float32
        self.max_batch = max_batch
        dropout = [0.0] * (L - 1) if dropout is None else [float(p) for p in dropout]
        self.net.layers = <Layer*> PyMem_Malloc(L * sizeof(Layer))
        if self.net.layers == NULL:
            raise MemoryError()
        memset(self.net.layers, 0, L * sizeof(Layer))
        self.net.n_layers = <int> L
        self.net.act = act_code(activation)
        self.net.out_act = OUT_ACTIVATIONS[out_activation]
        self.net.n_features = units[0]
        self.net.n_out = units[L]
        self.net.sparse = sparse
        self.net.weighted = weighted
        self.net.alpha = alpha
        self.net.bn_epsilon = bn_epsilon
        self.net.cumulative = bn_momentum is None
        self.net.bn_momentum = 0.0 if bn_momentum is None else bn_momentum
        self.net.virtual_batch = virtual_batch_size or 0
        self.net.dropout_seed = dropout_seed % 2**64
        self.net.data_loss_scale = data_loss_scale

        # The parameters: each layer's coefficients, then its gamma and beta
        # (hidden) or its intercept (output); the running statistics.
        for l in range(L):
            layer = &self.net.layers[l]
            layer.fan_in, layer.fan_out = units[l], units[l + 1]
            layer.coef = size
            size += layer.fan_in * layer.fan_out
            if l < L - 1:
                layer.gamma = size
                size += layer.fan_out
                layer.stat = self.n_hidden
                self.n_hidden += layer.fan_out
                layer.dropout = dropout[l]
                widest = max(widest, layer.fan_out)
            layer.bias = size
            size += layer.fan_out
        self.n_params = size

        self.net.n_params = self.n_params
        self.net.widest = widest
        self.grad = aligned_zeros(self.n_params, self.dtype)
        self.pieces = 0
        self.use_pieces(1)

    def use_pieces(self, int pieces):
        """Lay the workspace out for minibatches cut in ``pieces`` pieces
        (what it held is lost when that changes): how a layer's coefficient
        gradient is summed depends on them, and on nothing else."""
        cdef Py_ssize_t l, L = self.net.n_layers, n = self.max_batch, h, size = 0
        cdef Py_ssize_t max_chunks = 1, widest = self.net.widest, fan_in, fan_out
        cdef Py_ssize_t n_slots, itemsize = self.dtype.itemsize
        cdef Layer* layer
        if pieces == self.pieces:
            return
        # work: the minibatch's rows of X, Y, weights, the output layer, and
        # each hidden layer's z, output and delta (row-major; with dropout,
        # its output after dropout and its mask, one byte per unit); each
        # piece's dgamma and dbeta of a ghost chunk.
        self.net.xb = _block(&size, 0 if self.net.sparse else n * self.net.n_features)
        self.net.yb = _block(&size, n * self.net.n_out)
        self.net.swb = _block(&size, n)
        self.net.p = _block(&size, n * self.net.n_out)
        for l in range(L - 1):
            layer = &self.net.layers[l]
            h = layer.fan_out
            layer.z = _block(&size, n * h)
            layer.out = _block(&size, n * h)
            layer.delta = _block(&size, n * h)
            layer.dropped = layer.out
            if layer.dropout > 0:
                layer.dropped = _block(&size, n * h)
                layer.keep = _block(&size, (n * h + itemsize - 1) // itemsize)
        self.net.gtmp = _block(&size, pieces * _round_up(2 * widest))
        self.work = aligned_zeros(max(size, 1), self.dtype)

        # dwork: slots of batch statistics (means, then variances, then
        # weight sums): one per ghost chunk, or when the pieces share the
        # rows of a batch, one per piece for its rows and one per piece for
        # the batch; each piece's backward sums and scratch; each row's
        # loss; each piece's sum of W ** 2.
        if self.net.virtual_batch > 0:
            max_chunks = max(1, min((n + self.net.virtual_batch - 1)
                                    // self.net.virtual_batch, n // 2))
        n_slots = max(max_chunks, 2 * pieces)
        size = 0
        self.net.stats_stride = _round_up(self.n_hidden)
        _block(&size, n_slots * self.net.stats_stride)   # the means, at 0
        self.net.var_base = _block(&size, n_slots * self.net.stats_stride)
        # One weight sum per slot and hidden layer: a piece's rows weigh the
        # same in every layer, but the statistics kernel adds the weights
        # in blocks of a size that depends on the layer's width.
        self.net.slot_weight = _block(&size, n_slots * max(L - 1, 1))
        self.net.sums = _block(&size, pieces * 2 * self.net.stats_stride)
        self.net.scratch_stride = _round_up((SCRATCH_PER_COLUMN + 2) * widest)
        self.net.scratch = _block(&size, pieces * self.net.scratch_stride)
        self.net.row_loss = _block(&size, n)
        self.net.l2_sums = _block(&size, pieces)
        self.dwork = aligned_zeros(size, np.float64)

        # The shares of the gradient. A layer's coefficients are summed by
        # columns after the backward pass (each piece of columns over all
        # the rows) when it is sparse, or when the shares of the others
        # would outweigh the rows a piece of columns reads.
        size = 0
        for l in range(L):
            layer = &self.net.layers[l]
            fan_in, fan_out = layer.fan_in, layer.fan_out
            layer.share_coef = -1
            if pieces > 1 and not (l == 0 and self.net.sparse) and (
                    (pieces - 1) * fan_in * fan_out
                    <= SHARE_RATIO * n * (fan_in + fan_out)):
                layer.share_coef = _block(&size, fan_in * fan_out)
            layer.share_rest = _block(&size, (2 if l < L - 1 else 1) * fan_out)
        self.net.share_stride = size
        self.shares = aligned_zeros(max((pieces - 1) * size, 1), self.dtype)
        self.pieces = self.net.pieces = pieces

    # ------------------------------------------------------------------
    # The layout, for the Python layer

    @property
    def n_layers(self):
        """Weight layers (hidden layers and the output layer)."""
        return self.net.n_layers

    def layer(self, Py_ssize_t l):
        """The descriptor of weight layer ``l``, as a dict."""
        if not 0 <= l < self.net.n_layers:
            raise IndexError(f"layer {l} of a network of {self.net.n_layers}")
        return self.net.layers[l]

    def pack(self, coefs, gammas, intercepts, dtype=None):
        """The flat parameter vector of these per-layer arrays (in ``dtype``,
        default: the network's)."""
        cdef Py_ssize_t l
        cdef Layer layer
        theta = aligned_zeros(self.n_params, self.dtype if dtype is None else dtype)
        for l in range(self.net.n_layers):
            layer = self.net.layers[l]
            theta[layer.coef : layer.coef + layer.fan_in * layer.fan_out] = (
                np.asarray(coefs[l]).ravel())
            if l < self.net.n_layers - 1:
                theta[layer.gamma : layer.gamma + layer.fan_out] = gammas[l]
            theta[layer.bias : layer.bias + layer.fan_out] = intercepts[l]
        return theta

    def unpack(self, theta):
        """Copies of the per-layer coefficients, gammas and intercepts."""
        cdef Py_ssize_t l
        cdef Layer layer
        coefs, gammas, intercepts = [], [], []
        for l in range(self.net.n_layers):
            layer = self.net.layers[l]
            coefs.append(theta[layer.coef : layer.coef + layer.fan_in * layer.fan_out]
                         .reshape(layer.fan_in, layer.fan_out).copy())
            if l < self.net.n_layers - 1:
                gammas.append(theta[layer.gamma : layer.gamma + layer.fan_out].copy())
            intercepts.append(theta[layer.bias : layer.bias + layer.fan_out].copy())
        return coefs, gammas, intercepts

    def pack_stats(self, per_layer, dtype=None):
        """One flat vector of per-hidden-layer statistics."""
        flat = aligned_zeros(self.n_hidden, self.dtype if dtype is None else dtype)
        if self.n_hidden:
            flat[:] = np.concatenate(
                [np.asarray(s, dtype=flat.dtype) for s in per_layer])
        return flat

    def unpack_stats(self, flat):
        """Copies of the per-hidden-layer parts of a flat statistics vector."""
        cdef Py_ssize_t l
        cdef Layer layer
        parts = []
        for l in range(self.net.n_layers - 1):
            layer = self.net.layers[l]
            parts.append(flat[layer.stat : layer.stat + layer.fan_out].copy())
        return parts

    def settings(self):
        """The network-wide settings, as the compiled code reads them."""
        names = {code: name for name, code in ACTIVATIONS.items()}
        out_names = {code: name for name, code in OUT_ACTIVATIONS.items()}
        return {"activation": names[self.net.act],
                "out_activation": out_names[self.net.out_act],
                "n_features": self.net.n_features, "n_out": self.net.n_out,
                "sparse": self.net.sparse, "weighted": self.net.weighted,
                "alpha": self.net.alpha, "bn_epsilon": self.net.bn_epsilon,
                "bn_momentum": None if self.net.cumulative else self.net.bn_momentum,
                "virtual_batch": self.net.virtual_batch,
                "dropout_seed": self.net.dropout_seed,
                "data_loss_scale": self.net.data_loss_scale}

    def buffers(self):
        """The minibatch's buffers, offsets into ``work`` and ``dwork`` (for
        the tests of the layout)."""
        return {"xb": self.net.xb, "yb": self.net.yb, "swb": self.net.swb,
                "p": self.net.p, "gtmp": self.net.gtmp,
                "stats_stride": self.net.stats_stride,
                "var_base": self.net.var_base, "slot_weight": self.net.slot_weight,
                "sums": self.net.sums, "scratch": self.net.scratch,
                "scratch_stride": self.net.scratch_stride,
                "row_loss": self.net.row_loss, "l2_sums": self.net.l2_sums,
                "share_stride": self.net.share_stride}


# ---------------------------------------------------------------------------
# Entry points, called by _engine.Engine with checked arguments.


cdef inline char* _ptr(object array):
    """The data of an array the engine checked (contiguous, of the right
    dtype)."""
    return <char*> cnp.PyArray_DATA(array)


cdef Data _data(const Net* net, data):
    """The compiled view of the engine's TrainingData."""
    cdef Data d
    d.X = d.X_data = d.sample_weight = NULL
    d.X_indices = d.X_indptr = NULL
    if net.sparse:
        d.X_data = _ptr(data.X_data)
        d.X_indices = <const Py_ssize_t*> _ptr(data.X_indices)
        d.X_indptr = <const Py_ssize_t*> _ptr(data.X_indptr)
    else:
        d.X = _ptr(data.X)
    d.Y = _ptr(data.Y)
    if net.weighted:
        d.sample_weight = _ptr(data.sample_weight)
    return d


cdef Buffers _buffers(Network network, params):
    """The compiled view of the network's workspace and of the engine's
    Parameters."""
    cdef Buffers buf
    buf.theta = _ptr(params.theta)
    buf.grad = _ptr(network.grad)
    buf.shares = _ptr(network.shares)
    buf.running_mean = _ptr(params.running_mean)
    buf.running_var = _ptr(params.running_var)
    buf.work = _ptr(network.work)
    buf.dwork = <double*> _ptr(network.dwork)
    return buf


def train_epoch(Network network not None, data, params, Optimizer optimizer not None,
                const Py_ssize_t[::1] order, bint order_is_identity,
                Py_ssize_t batch_size, Py_ssize_t start, Py_ssize_t max_batches,
                double loss_sum, int n_threads, int pieces, bint pinned=False):
    """Run up to ``max_batches`` minibatches of an epoch over the rows in
    ``order``, from row ``start`` of it; update everything in place.

    ``data`` (the rows, their targets and weights) and ``params`` (``theta``,
    the running statistics and their count ``n_batches_tracked``) are the
    engine's ``TrainingData`` and ``Parameters``, checked. Minibatches are
    consecutive slices of ``order`` of ``batch_size`` rows; a trailing single
    row joins the previous minibatch. Minibatches whose weights sum to zero
    are skipped. The optimizer steps the parameters once per minibatch and
    counts its steps (``optimizer.step``). Every task of a minibatch is cut
    in ``pieces`` pieces; with ``n_threads > 1`` the engine's pool of threads
    (``_team.h``) takes them with the caller (BLAS should then be limited to
    one thread), with one the caller alone. ``pinned``: the team's threads
    keep to one CPU each when it has one per CPU the caller may use, and
    sleep as soon as they wait (``_team.h``).
    The results depend on ``pieces``, never on ``n_threads`` nor on which
    thread takes which piece. A whole epoch in several calls gives what it
    gives in one.

    A minibatch, or a ghost batch norm chunk, whose weight lies on fewer
    than two rows cannot be normalized with its own statistics: the
    minibatch is skipped (as one whose weights sum to zero); the chunk's
    rows get ``z_hat = 0`` (their activation is that of beta, which gets
    their gradient) and it does not update the running statistics (as a
    chunk without weight); both are counted.

    Returns
    -------
    loss_sum : float
        ``loss_sum`` plus, over these minibatches, minibatch loss x minibatch
        rows (added in the order one call would add them).
    stop : int
        The row of ``order`` where the next minibatch starts (its length
        when the epoch is done).
    n_degenerate : int
        The minibatches and chunks skipped for weight on fewer than 2 rows.
    rows_trained : int
        The rows of the minibatches trained, those skipped left out.
    threads_run : int
        The threads the call had: ``n_threads``, or fewer when the pool was
        running another caller's job (then 1) or could not start enough
        workers.
    """
    cdef Net* net = &network.net
    cdef Data d = _data(net, data)
    cdef Epoch epoch
    cdef Work work
    cdef EpochJob job
    cdef bint single = network.single
    pieces = max(1, min(pieces, <int> MAX_THREADS))
    network.use_pieces(pieces)
    cdef Buffers buf = _buffers(network, params)
    epoch.order = &order[0]
    epoch.n = order.shape[0]
    epoch.order_is_identity = order_is_identity
    epoch.batch_size = batch_size
    epoch.max_batches = max_batches
    epoch.start = start
    epoch.loss_sum = loss_sum
    epoch.step = optimizer.step
    epoch.tracked = params.n_batches_tracked
    epoch.pieces = pieces
    epoch.n_degenerate = 0
    epoch.rows_trained = 0
    optimizer.bind()
    if work_init(&work) != 0:
        raise MemoryError("could not create the threads' work queue")
    job.net = net
    job.opt = <PyObject*> optimizer   # borrowed: the caller holds it
    job.data = &d
    job.buf = &buf
    job.epoch = &epoch
    job.work = &work
    if pinned:
        work_sleep_at_once(&work)
    cdef int threads_run
    with nogil:
        threads_run = pool_run(min(n_threads, <int> MAX_THREADS),
                               epoch_job_float if single else epoch_job_double,
                               &job, pinned)
    work_destroy(&work)
    optimizer.step = epoch.next_step
    params.n_batches_tracked = epoch.next_tracked
    return (epoch.loss_sum, epoch.next_start, epoch.n_degenerate, epoch.rows_trained,
            threads_run)


def loss_and_gradient(Network network not None, data, params, bint update_running,
                      Py_ssize_t step):
    """Loss and gradient (into ``network.grad``) of all of the rows of
    ``data`` as one minibatch, on the calling thread: the training-mode
    objective the engine follows (batch statistics, L2 on the coefficients).

    ``params.n_batches_tracked`` and ``step`` are where the running
    statistics' count and the optimizer's steps stand (the cumulative
    average and dropout's masks depend on them); the running statistics move
    only when ``update_running``.

    Returns
    -------
    loss : float
    weight_sum : float
        0 when the weights sum to zero (then nothing was written).
    degenerate : bool
        Whether fewer than 2 rows have positive weight (then nothing was
        written either: no minibatch is normalized with a single row's
        statistics).
    """
    cdef Net* net = &network.net
    cdef Data d = _data(net, data)
    cdef Buffers buf = _buffers(network, params)
    cdef Minibatch mb
    cdef Team team
    cdef Work work
    cdef double loss = 0
    cdef bint single = network.single
    cdef Py_ssize_t tracked = params.n_batches_tracked
    cdef Optimizer no_optimizer = None
    rows = np.arange(data.n_samples, dtype=np.intp)
    cdef const Py_ssize_t[::1] row_view = rows
    if work_init(&work) != 0:
        raise MemoryError("could not create the work queue")
    team_start(&team, &work, 1, 0)
    with nogil:
        if single:
            one_batch(net, no_optimizer, &d, &buf, &mb, &team, &row_view[0],
                      row_view.shape[0], update_running, tracked, step, &loss,
                      <float*> NULL)
        else:
            one_batch(net, no_optimizer, &d, &buf, &mb, &team, &row_view[0],
                      row_view.shape[0], update_running, tracked, step, &loss,
                      <double*> NULL)
    work_destroy(&work)
    return loss, mb.wsum, mb.degenerate


cdef struct EpochJob:
    # What every thread of an epoch's team runs run_epoch on.
    Net* net
    PyObject* opt
    const Data* data
    Buffers* buf
    Epoch* epoch
    Work* work


cdef void epoch_job_float(void* arg, int tid) noexcept nogil:
    cdef EpochJob* job = <EpochJob*> arg
    run_epoch(job.net, <Optimizer> job.opt, job.data, job.buf, job.epoch, job.work, tid,
              <float*> NULL)


cdef void epoch_job_double(void* arg, int tid) noexcept nogil:
    cdef EpochJob* job = <EpochJob*> arg
    run_epoch(job.net, <Optimizer> job.opt, job.data, job.buf, job.epoch, job.work, tid,
              <double*> NULL)


cdef void one_batch(Net* net, Optimizer none, const Data* data, Buffers* buf,
                    Minibatch* mb, Team* team, const Py_ssize_t* rows, Py_ssize_t m,
                    bint update_running, Py_ssize_t tracked, Py_ssize_t step,
                    double* loss_out, floating* dtype) noexcept nogil:
    """Loss (into ``loss_out``) and gradient of rows ``rows[:m]`` as one
    minibatch, on one thread, without an optimizer step (``none`` is None;
    see :func:`loss_and_gradient`)."""
    start_minibatch(net, data, rows, m, True, mb, dtype)
    if mb.degenerate or not mb.wsum > 0:
        return
    mb.tracked = tracked
    mb.step = step
    mb.stepping = False
    minibatch_step(net, none, data, buf, mb, team, update_running, loss_out, 1.0, dtype)


# ---------------------------------------------------------------------------
# The epoch and the minibatch step.


cdef void run_epoch(Net* net, Optimizer opt, const Data* data, Buffers* buf,
                    Epoch* epoch, Work* work, int tid, floating* dtype) noexcept nogil:
    """The minibatch loop of (part of) an epoch, run by every thread ``tid``
    of the team (``_team.h``'s pool; or by the caller alone), each taking
    pieces of the minibatches' tasks from ``work``. Every thread goes through the same
    minibatches, phases and tasks: the minibatches' bookkeeping depends on
    the epoch's rows and their weights only, so a thread that ran late
    catches up (and takes no piece of a phase already over). The loss
    accumulates in ``epoch.loss_sum`` (one piece per minibatch adds it);
    thread 0 writes where the epoch stands back to ``epoch``.

    Every piece steps the parameters whose gradient it computed, with its
    thread's copy of the step's rates. No phase ends after a step: the next
    minibatch reads the parameters only after its gather's phase.
    """
    cdef Team team
    cdef Minibatch mb
    cdef Py_ssize_t m, start = epoch.start, n = epoch.n, batches = 0
    cdef Py_ssize_t step = epoch.step, tracked = epoch.tracked, degenerate = 0
    cdef Py_ssize_t trained = 0
    team_start(&team, work, epoch.pieces, tid)
    while start < n and batches < epoch.max_batches:
        m = min(epoch.batch_size, n - start)
        if n - start - m == 1:
            m += 1   # a trailing single row joins this minibatch
        start_minibatch(net, data, epoch.order + start, m, epoch.order_is_identity, &mb,
                        dtype)
        if mb.degenerate:
            degenerate += 1
        elif mb.wsum > 0:
            degenerate += mb.n_degenerate
            mb.tracked = tracked
            mb.step = step
            mb.stepping = True
            mb.update.t = step
            opt.prepare(&mb.update)
            minibatch_step(net, opt, data, buf, &mb, &team, True, &epoch.loss_sum, m,
                           dtype)
            step += 1
            tracked += mb.n_updates
            trained += m
        start += m
        batches += 1
    if tid == 0:
        epoch.next_step = step
        epoch.next_start = start
        epoch.next_tracked = tracked
        epoch.n_degenerate += degenerate
        epoch.rows_trained += trained


cdef void start_minibatch(const Net* net, const Data* data,
                          const Py_ssize_t* rows, Py_ssize_t m,
                          bint contiguous, Minibatch* mb,
                          floating* dtype) noexcept nogil:
    """The minibatch of rows ``rows[:m]`` and its weights.

    Every thread sums the weights (same order, same value): all of them then
    take the same branches and go through the same phases. The running
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
    mb.degenerate = mb.wsum > 0 and n_positive < 2
    mb.n_running = unbiased_count(mb.wsum, n_positive)
    count_chunks(net, data, mb, dtype)


cdef void count_chunks(const Net* net, const Data* data, Minibatch* mb,
                       floating* dtype) noexcept nogil:
    """Ghost batch norm's chunks of the minibatch: ``max(1, min(ceil(m /
    virtual_batch), m // 2))`` consecutive runs of rows, as numpy's
    ``array_split`` splits them; how many carry weight on at least two rows
    (each updates the running statistics once), and how many on one."""
    cdef const floating* sw = <const floating*> data.sample_weight
    cdef Py_ssize_t c, k, lo, hi, n_positive
    cdef double w
    mb.n_chunks = 1
    if net.virtual_batch > 0:
        mb.n_chunks = max(1, min((mb.m + net.virtual_batch - 1) // net.virtual_batch,
                                 mb.m // 2))
    mb.n_updates = mb.n_chunks
    mb.n_degenerate = 0
    if net.weighted and mb.n_chunks > 1:
        mb.n_updates = 0
        for c in range(mb.n_chunks):
            chunk_bounds(mb, c, &lo, &hi)
            w = 0
            n_positive = 0
            for k in range(lo, hi):
                w += sw[mb.rows[k]]
                if sw[mb.rows[k]] > 0:
                    n_positive += 1
            if n_positive >= 2:
                mb.n_updates += 1
            elif n_positive == 1:
                mb.n_degenerate += 1


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
    it is one chunk). A chunk whose weight lies on one row counts as one
    without weight (0): its statistics normalize nothing (the forward pass
    sets its ``z_hat`` to 0)."""
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
        if n_positive < 2:
            wsum[0] = 0
    n_running[0] = unbiased_count(wsum[0], n_positive)


cdef void minibatch_step(Net* net, Optimizer opt, const Data* data,
                         Buffers* buf, Minibatch* mb, Team* team,
                         bint update_running, double* loss_sum, double rows,
                         floating* dtype) noexcept nogil:
    """Loss of one minibatch and its gradient in ``buf.grad``; when
    ``mb.stepping``, the optimizer's step too.

    Run by every thread of ``team``, in phases (:func:`phase_end`): a phase's
    pieces read what the earlier phases wrote. Each piece of the forward
    and backward phases is a block of the minibatch's rows (:func:`row_piece`),
    which it takes through every layer, one phase per layer: the threads
    claim the same piece in every phase (``_team.pxd``), so a block of rows
    stays in one core's cache. What needs every row waits for the next
    phase: the batch statistics and batch norm's backward sums, merged from
    the pieces' in a fixed order, and the gradient, summed from the
    pieces' shares in the last phase, the optimizer's, whose pieces are
    ranges of the parameters. A layer's coefficient gradient is summed by
    columns instead, over every row in one product, when it is sparse or
    its shares would be large (see :meth:`Network.use_pieces`).

    The gradient is complete, and the parameters stepped, once the last
    phase is over (the next minibatch's first, or the end of the team).
    One piece adds ``rows`` x the loss (the weighted mean loss plus the L2
    term) to ``loss_sum``; nothing is done when the weights sum to zero.
    """
    cdef Py_ssize_t l, L = net.n_layers, H = L - 1, lo, hi
    cdef double l2
    cdef bint split
    if not mb.wsum > 0:
        return
    l2 = net.alpha / mb.wsum
    # The pieces share the rows of one batch (not of ghost chunks, which
    # pieces hold whole): the statistics are merged in the next phase.
    split = mb.n_chunks == 1 and team.pieces > 1
    set_input(net, data, buf, mb, dtype)
    if H == 0:
        gather_phase(net, data, buf, mb, team, dtype)
        phase_end(team)
    for l in range(H):
        forward_phase(net, data, buf, mb, team, l, split, update_running, dtype)
        phase_end(team)
    output_phase(net, data, buf, mb, team, split, update_running, dtype)
    phase_end(team)
    for l in range(H - 1, -1, -1):
        backward_phase(net, data, buf, mb, team, l, split, dtype)
        phase_end(team)
    if net.layers[0].share_coef < 0:
        coef_gradient_by_columns(net, data, buf, mb, team, 0, dtype)
        phase_end(team)
    step_phase(net, opt, buf, mb, team, l2, dtype)
    phase_end(team)
    # The rows' losses and the coefficients' sums of squares are complete.
    while next_piece_of(team, 1, 1, 1, &lo, &hi):
        loss_sum[0] += rows * (net.data_loss_scale * data_loss(net, buf, mb)
                               + 0.5 * l2 * sum_of_squared_coefs(net, buf, team.pieces))


cdef double data_loss(const Net* net, const Buffers* buf,
                      const Minibatch* mb) noexcept nogil:
    """The minibatch's weighted mean loss, from its rows' losses added in row
    order: the same for any number of threads."""
    cdef const double* row_loss = buf.dwork + net.row_loss
    cdef double total = 0
    cdef Py_ssize_t k
    for k in range(mb.m):
        total += row_loss[k]
    return total / mb.wsum


cdef double sum_of_squared_coefs(const Net* net, const Buffers* buf,
                                 int pieces) noexcept nogil:
    """The sum of every coefficient squared, from the step's pieces' sums
    (:func:`step_phase`), added in piece order: the same for any number of
    threads."""
    cdef double total = 0
    cdef Py_ssize_t k, lo, hi
    for k in range(pieces):
        piece_bounds(net.n_params, COL_ALIGN, pieces, k, &lo, &hi)
        if hi > lo:
            total += buf.dwork[net.l2_sums + k]
    return total


# ---------------------------------------------------------------------------
# Pieces of rows, and where their results go.


cdef inline void row_piece(const Minibatch* mb, int pieces, Py_ssize_t piece,
                           Py_ssize_t* lo, Py_ssize_t* hi, Py_ssize_t* c0,
                           Py_ssize_t* c1) noexcept nogil:
    """Rows ``[lo, hi)`` of piece ``piece`` of the minibatch, and the ghost
    chunks ``[c0, c1)`` it holds whole: the chunks, cut in ``pieces`` runs,
    when there are several (or one piece); else the rows cut in multiples of
    ``ROW_ALIGN`` (the pieces share the batch: ``c0 == c1``)."""
    cdef Py_ssize_t unused
    if mb.n_chunks > 1 or pieces == 1:
        piece_bounds(mb.n_chunks, 1, pieces, piece, c0, c1)
        if c1[0] <= c0[0]:
            lo[0] = hi[0] = 0
            return
        chunk_bounds(mb, c0[0], lo, &unused)
        chunk_bounds(mb, c1[0] - 1, &unused, hi)
    else:
        piece_bounds(mb.m, ROW_ALIGN, pieces, piece, lo, hi)
        c0[0] = c1[0] = 0


cdef inline bint next_row_piece(Team* team, const Minibatch* mb, Py_ssize_t* piece,
                                Py_ssize_t* lo, Py_ssize_t* hi, Py_ssize_t* c0,
                                Py_ssize_t* c1) noexcept nogil:
    """Claim the next piece of rows with rows (see :func:`next_piece`)."""
    cdef Py_ssize_t unused
    while next_piece(team, team.pieces, 1, piece, &unused):
        row_piece(mb, team.pieces, piece[0], lo, hi, c0, c1)
        if hi[0] > lo[0]:
            return True
    return False


cdef inline double* slot_mean(const Net* net, const Buffers* buf, Py_ssize_t slot,
                              Py_ssize_t l) noexcept nogil:
    """Hidden layer ``l``'s batch means in statistics slot ``slot`` (its
    variances at ``net.var_base`` further): a ghost chunk's, or when the
    pieces share the batch, piece ``k``'s rows' (slot ``k``) and the batch's
    as piece ``k`` merged them (slot ``pieces + k``)."""
    return buf.dwork + slot * net.stats_stride + net.layers[l].stat


cdef inline double* slot_weight(const Net* net, const Buffers* buf, Py_ssize_t slot,
                                Py_ssize_t l) noexcept nogil:
    """The weight sum of the rows of statistics slot ``slot`` of hidden layer
    ``l`` (see :func:`slot_mean`)."""
    return buf.dwork + net.slot_weight + slot * (net.n_layers - 1) + l


cdef inline floating* share(const Net* net, const Buffers* buf, Py_ssize_t piece,
                            Py_ssize_t offset, Py_ssize_t share_offset,
                            floating* dtype) noexcept nogil:
    """Where piece ``piece`` writes its share of the gradient of the
    parameters at ``offset`` (``share_offset`` in a share)."""
    if piece == 0:
        return (<floating*> buf.grad) + offset
    return ((<floating*> buf.shares) + (piece - 1) * net.share_stride
            + share_offset)


cdef inline double* piece_sums(const Net* net, const Buffers* buf, Py_ssize_t piece,
                               Py_ssize_t l) noexcept nogil:
    """Piece ``piece``'s batch norm backward sums of hidden layer ``l``'s
    rows: ``sum g`` here, ``sum g * (z - center)`` ``net.stats_stride``
    further."""
    return buf.dwork + net.sums + 2 * piece * net.stats_stride + net.layers[l].stat


cdef inline double* piece_scratch(const Net* net, const Buffers* buf,
                                  Py_ssize_t piece) noexcept nogil:
    return buf.dwork + net.scratch + piece * net.scratch_stride


cdef inline floating* piece_gtmp(const Net* net, const Buffers* buf, Py_ssize_t piece,
                                 floating* dtype) noexcept nogil:
    """Piece ``piece``'s room for a dgamma and a dbeta (a ghost chunk's, or
    ones it does not keep)."""
    return (<floating*> buf.work) + net.gtmp + piece * _round_up(2 * net.widest)


cdef inline void merged_statistics(const Net* net, const Buffers* buf,
                                   const Minibatch* mb, int pieces, Py_ssize_t l,
                                   Py_ssize_t piece, Statistics* stats,
                                   floating* dtype) noexcept nogil:
    """``stats``: hidden layer ``l``'s batch statistics as piece ``piece``
    merged them (:func:`forward_end`), when the pieces share the batch."""
    cdef double n_running
    stats.epsilon = net.bn_epsilon
    chunk_weights(net, buf, mb, 0, mb.m, &stats.weight_sum, &n_running, dtype)
    stats.mean = slot_mean(net, buf, pieces + piece, l)
    stats.var = stats.mean + net.var_base


cdef inline const floating* layer_input(const Net* net, const Buffers* buf,
                                        const Minibatch* mb, Py_ssize_t l,
                                        floating* dtype) noexcept nogil:
    """The input of weight layer ``l``: the minibatch's rows of X, or the
    output of the hidden layer below (after its dropout)."""
    if l == 0:
        return <const floating*> mb.xin
    return (<const floating*> buf.work) + net.layers[l - 1].dropped


cdef inline const floating* batch_weights(const Net* net, const Buffers* buf,
                                          floating* dtype) noexcept nogil:
    """The minibatch's gathered weights, or NULL when unweighted."""
    if not net.weighted:
        return NULL
    return (<const floating*> buf.work) + net.swb


cdef inline void fill_panel(Panel* panel, const Net* net, const Buffers* buf,
                            Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t width,
                            floating* dtype) noexcept nogil:
    """``panel``: rows ``[lo, hi)`` of a layer of ``width`` units, row-major."""
    cdef const floating* swb = batch_weights(net, buf, dtype)
    panel.n_rows = hi - lo
    panel.n_cols = width
    panel.z_ld = panel.a_ld = panel.ld = width
    panel.sample_weight = <const char*> (swb + lo) if swb != NULL else NULL


# ---------------------------------------------------------------------------
# The phases of the minibatch step.


cdef void set_input(const Net* net, const Data* data, Buffers* buf, Minibatch* mb,
                    floating* dtype) noexcept nogil:
    """Where the first layer reads the minibatch's rows of X: in place when
    they are contiguous (NULL when sparse), else their gathered copy."""
    if net.sparse:
        mb.xin = NULL
    elif mb.contiguous:
        mb.xin = <const char*> ((<const floating*> data.X)
                                + mb.rows[0] * net.n_features)
    else:
        mb.xin = <const char*> ((<floating*> buf.work) + net.xb)


cdef void gather_rows(const Net* net, const Data* data, Buffers* buf,
                      const Minibatch* mb, Py_ssize_t r0, Py_ssize_t r1,
                      floating* dtype) noexcept nogil:
    """Rows ``r0:r1`` of the minibatch's Y, weights and X (X only when its
    rows are not contiguous)."""
    cdef const floating* X = <const floating*> data.X
    cdef const floating* Y = <const floating*> data.Y
    cdef const floating* sw = <const floating*> data.sample_weight
    cdef floating* work = <floating*> buf.work
    cdef floating* xb = work + net.xb
    cdef floating* yb = work + net.yb
    cdef floating* swb = work + net.swb
    cdef Py_ssize_t k, nf = net.n_features, n_out = net.n_out
    cdef const Py_ssize_t* rows = mb.rows
    for k in range(r0, r1):
        memcpy(yb + k * n_out, Y + rows[k] * n_out, n_out * sizeof(floating))
        if net.weighted:
            swb[k] = sw[rows[k]]
    if not (net.sparse or mb.contiguous):
        for k in range(r0, r1):
            memcpy(xb + k * nf, X + rows[k] * nf, nf * sizeof(floating))


cdef void gather_phase(const Net* net, const Data* data, Buffers* buf,
                       const Minibatch* mb, Team* team, floating* dtype) noexcept nogil:
    """The gather on its own (a network without hidden layers)."""
    cdef Py_ssize_t piece, r0, r1, c0, c1
    while next_row_piece(team, mb, &piece, &r0, &r1, &c0, &c1):
        gather_rows(net, data, buf, mb, r0, r1, dtype)


cdef void forward_phase(const Net* net, const Data* data, Buffers* buf,
                        const Minibatch* mb, Team* team, Py_ssize_t l, bint split,
                        bint update_running, floating* dtype) noexcept nogil:
    """Hidden layer ``l`` forward, by pieces of rows: the gather (``l ==
    0``) or the end of the layer below, then ``z = a @ W`` and batch norm
    (its statistics only, when the pieces share the batch)."""
    cdef Py_ssize_t piece, r0, r1, c0, c1
    while next_row_piece(team, mb, &piece, &r0, &r1, &c0, &c1):
        if l == 0:
            gather_rows(net, data, buf, mb, r0, r1, dtype)
        else:
            forward_end(net, buf, mb, team.pieces, l - 1, piece, r0, r1, split,
                        update_running, dtype)
        forward_rows(net, data, buf, mb, l, piece, r0, r1, c0, c1, split, dtype)


cdef void forward_rows(const Net* net, const Data* data, Buffers* buf,
                       const Minibatch* mb, Py_ssize_t l, Py_ssize_t piece,
                       Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                       bint split, floating* dtype) noexcept nogil:
    """Hidden layer ``l`` on rows ``r0:r1`` (ghost chunks ``c0:c1``): ``z =
    a @ W``; then the statistics of these rows (``split``), or batch norm
    fused with the activation on each chunk, its statistics in the chunk's
    slot."""
    cdef const Layer* layer = &net.layers[l]
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* work = <floating*> buf.work
    cdef Py_ssize_t fan_in = layer.fan_in, fan_out = layer.fan_out, c, lo, hi, j
    cdef const floating* W = theta + layer.coef
    cdef floating* z = work + layer.z
    cdef floating* a = work + layer.out
    cdef double* mean
    cdef double wsum, n_running
    cdef double* scratch = piece_scratch(net, buf, piece)
    cdef Panel panel
    if l == 0 and net.sparse:
        sparse_rows_matmul(data, mb.rows + r0, r1 - r0, W, fan_out, 0, fan_out,
                           z + r0 * fan_out, fan_out)
    else:
        # z[r0:r1] = a[r0:r1] @ W
        cgemm(False, False, <int> (r1 - r0), <int> fan_out, <int> fan_in,
              <floating> 1, layer_input(net, buf, mb, l, dtype) + r0 * fan_in,
              <int> fan_in, W, <int> fan_out, <floating> 0, z + r0 * fan_out,
              <int> fan_out)
    if split:
        fill_panel(&panel, net, buf, r0, r1, fan_out, dtype)
        mean = slot_mean(net, buf, piece, l)
        cbatch_stats_rows(z + r0 * fan_out, &panel, mean, mean + net.var_base,
                          slot_weight(net, buf, piece, l), scratch)
        return
    for c in range(c0, c1):
        chunk_bounds(mb, c, &lo, &hi)
        fill_panel(&panel, net, buf, lo, hi, fan_out, dtype)
        mean = slot_mean(net, buf, c, l)
        chunk_weights(net, buf, mb, lo, hi, &wsum, &n_running, dtype)
        if wsum > 0:
            cbn_act_forward_train(
                z + lo * fan_out, a + lo * fan_out, &panel, theta + layer.gamma,
                theta + layer.bias, net.bn_epsilon, net.act, mean,
                mean + net.var_base, scratch)
        else:
            # A ghost chunk with weight on fewer than 2 rows has no statistics
            # to normalize with: z_hat = 0 (an infinite variance), so a =
            # act(beta) on its rows, finite (the statistics of its one
            # weighted row would scale the others' by 1 / sqrt(bn_epsilon)).
            for j in range(fan_out):
                mean[j] = 0
                mean[net.var_base + j] = INFINITY
            cbn_act_normalize(
                z + lo * fan_out, a + lo * fan_out, &panel, theta + layer.gamma,
                theta + layer.bias, mean, mean + net.var_base, net.bn_epsilon,
                net.act, scratch)


cdef void forward_end(const Net* net, Buffers* buf, const Minibatch* mb, int pieces,
                      Py_ssize_t l, Py_ssize_t piece, Py_ssize_t r0, Py_ssize_t r1,
                      bint split, bint update_running, floating* dtype) noexcept nogil:
    """The end of hidden layer ``l`` on rows ``r0:r1``, once the statistics
    of every row are in: when the pieces share the batch, its statistics
    (merged in piece order into this piece's slot) and batch norm fused with
    the activation; the running statistics' update (piece 0: every chunk's,
    in order); dropout."""
    cdef const Layer* layer = &net.layers[l]
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* work = <floating*> buf.work
    cdef Py_ssize_t fan_out = layer.fan_out, c, lo, hi, updates = 0
    cdef double* mean
    cdef double wsum, n_running
    cdef Panel panel
    if split:
        mean = slot_mean(net, buf, pieces + piece, l)
        merge_statistics(net, buf, mb, pieces, l, mean, mean + net.var_base)
        fill_panel(&panel, net, buf, r0, r1, fan_out, dtype)
        cbn_act_normalize(work + layer.z + r0 * fan_out,
                          work + layer.out + r0 * fan_out, &panel,
                          theta + layer.gamma, theta + layer.bias, mean,
                          mean + net.var_base, net.bn_epsilon, net.act,
                          piece_scratch(net, buf, piece))
    if piece == 0 and update_running:
        for c in range(mb.n_chunks):
            chunk_bounds(mb, c, &lo, &hi)
            chunk_weights(net, buf, mb, lo, hi, &wsum, &n_running, dtype)
            if wsum > 0:
                updates += 1
                mean = slot_mean(net, buf, pieces if split else c, l)
                update_running_stats(net, buf, l, mean, mean + net.var_base,
                                     n_running, mb.tracked + updates, dtype)
    if layer.dropout > 0:
        dropout_forward(net, work + layer.out + r0 * fan_out,
                        work + layer.dropped + r0 * fan_out,
                        (<uint8_t*> (work + layer.keep)) + r0 * fan_out,
                        r1 - r0, r0, fan_out, l, mb.step)


cdef void merge_statistics(const Net* net, const Buffers* buf, const Minibatch* mb,
                           int pieces, Py_ssize_t l, double* mean_out,
                           double* var_out) noexcept nogil:
    """Hidden layer ``l``'s batch mean and variance, from those of the
    pieces' rows (their slots), merged in piece order (:func:`chan_merge`)."""
    cdef Py_ssize_t fan_out = net.layers[l].fan_out, k, j, r0, r1, c0, c1
    cdef double weight = 0, w
    cdef const double* mean_k
    cdef const double* var_k
    for j in range(fan_out):
        mean_out[j] = 0
        var_out[j] = 0   # the sum of squared deviations until the end
    for k in range(pieces):
        row_piece(mb, pieces, k, &r0, &r1, &c0, &c1)
        w = slot_weight(net, buf, k, l)[0]
        if r1 <= r0 or not w > 0:
            continue
        mean_k = slot_mean(net, buf, k, l)
        var_k = mean_k + net.var_base
        if weight == 0:
            for j in range(fan_out):
                mean_out[j] = mean_k[j]
                var_out[j] = var_k[j] * w
        else:
            for j in range(fan_out):
                chan_merge(&mean_out[j], &var_out[j], weight, w,
                           mean_k[j] - mean_out[j], var_k[j] * w)
        weight += w
    if weight > 0:
        for j in range(fan_out):
            var_out[j] = max(var_out[j] / weight, 0.0)


cdef inline void update_running_stats(const Net* net, Buffers* buf, Py_ssize_t l,
                                      const double* mean, const double* var,
                                      double n_running, Py_ssize_t k,
                                      floating* dtype) noexcept nogil:
    """Hidden layer ``l``'s running statistics, after the ``k``-th update
    (the cumulative average's divisor)."""
    cdef floating* running_mean = (<floating*> buf.running_mean) + net.layers[l].stat
    cdef floating* running_var = (<floating*> buf.running_var) + net.layers[l].stat
    cdef Py_ssize_t n = net.layers[l].fan_out
    if net.cumulative:
        cupdate_running_average(running_mean, running_var, mean, var, n, <double> k,
                                n_running)
    else:
        cupdate_running_stats(running_mean, running_var, mean, var, n,
                              net.bn_momentum, n_running)


cdef void output_phase(const Net* net, const Data* data, Buffers* buf,
                       const Minibatch* mb, Team* team, bint split,
                       bint update_running, floating* dtype) noexcept nogil:
    """The output layer, by pieces of rows: the end of the last hidden
    layer, the output, the loss and its delta, this piece's share of the
    output layer's gradient, and the start of the last hidden layer's
    backward pass."""
    cdef Py_ssize_t L = net.n_layers, piece, r0, r1, c0, c1
    while next_row_piece(team, mb, &piece, &r0, &r1, &c0, &c1):
        if L > 1:
            forward_end(net, buf, mb, team.pieces, L - 2, piece, r0, r1, split,
                        update_running, dtype)
        forward_output_rows(net, data, buf, mb, r0, r1, dtype)
        output_gradient_rows(net, buf, mb, piece, r0, r1, dtype)
        if L > 1:
            backward_start(net, buf, mb, team.pieces, L - 2, piece, r0, r1, c0, c1,
                           split, dtype)


cdef void forward_output_rows(const Net* net, const Data* data, Buffers* buf,
                              const Minibatch* mb, Py_ssize_t r0, Py_ssize_t r1,
                              floating* dtype) noexcept nogil:
    """The output layer, its loss and its delta on rows ``r0:r1``, and those
    rows of the last hidden layer's delta (they need only these rows of the
    output delta; rows also suit BLAS better here, the inner dimension being
    ``n_out``). Each row's weighted loss goes to ``dwork``."""
    cdef Py_ssize_t L = net.n_layers, l = L - 1, n_out = net.n_out
    cdef const Layer* layer = &net.layers[l]
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* work = <floating*> buf.work
    cdef Py_ssize_t fan_in = layer.fan_in
    cdef const floating* W = theta + layer.coef
    cdef floating* p = work + net.p + r0 * n_out
    if l == 0 and net.sparse:
        sparse_rows_matmul(data, mb.rows + r0, r1 - r0, W, n_out, 0, n_out, p, n_out)
    else:
        # p[r0:r1] = a[r0:r1] @ W
        cgemm(False, False, <int> (r1 - r0), <int> n_out, <int> fan_in,
              <floating> 1, layer_input(net, buf, mb, l, dtype) + r0 * fan_in,
              <int> fan_in, W, <int> n_out, <floating> 0, p, <int> n_out)
    add_bias_rows(p, r1 - r0, n_out, theta + layer.bias)
    output_loss_and_delta(net, p, work + net.yb + r0 * n_out,
                          work + net.swb + r0, r1 - r0, mb.wsum,
                          buf.dwork + net.row_loss + r0)
    if L > 1:
        # delta_last[r0:r1] = p[r0:r1] @ W.T
        cgemm(False, True, <int> (r1 - r0), <int> fan_in, <int> n_out,
              <floating> 1, p, <int> n_out, W, <int> n_out, <floating> 0,
              work + net.layers[L - 2].delta + r0 * fan_in, <int> fan_in)


cdef void output_gradient_rows(const Net* net, Buffers* buf, const Minibatch* mb,
                               Py_ssize_t piece, Py_ssize_t r0, Py_ssize_t r1,
                               floating* dtype) noexcept nogil:
    """Piece ``piece``'s share of the output layer's gradient, from rows
    ``r0:r1``: the intercept's, and the coefficients' unless they are summed
    by columns."""
    cdef Py_ssize_t l = net.n_layers - 1, n_out = net.n_out, k, i
    cdef const Layer* layer = &net.layers[l]
    cdef const floating* D = (<const floating*> buf.work) + net.p
    cdef floating* gbias = share(net, buf, piece, layer.bias, layer.share_rest, dtype)
    for i in range(n_out):
        gbias[i] = 0
    for k in range(r0, r1):
        for i in range(n_out):
            gbias[i] += D[k * n_out + i]
    if layer.share_coef >= 0:
        # gW = a[r0:r1].T @ D[r0:r1]
        cgemm(True, False, <int> layer.fan_in, <int> n_out, <int> (r1 - r0),
              <floating> 1, layer_input(net, buf, mb, l, dtype) + r0 * layer.fan_in,
              <int> layer.fan_in, D + r0 * n_out, <int> n_out, <floating> 0,
              share(net, buf, piece, layer.coef, layer.share_coef, dtype), <int> n_out)


cdef void backward_start(const Net* net, Buffers* buf, const Minibatch* mb,
                         int pieces, Py_ssize_t l, Py_ssize_t piece, Py_ssize_t r0,
                         Py_ssize_t r1,
                         Py_ssize_t c0, Py_ssize_t c1, bint split,
                         floating* dtype) noexcept nogil:
    """Hidden layer ``l`` backward on rows ``r0:r1``, from their ``dL/da``:
    dropout's; then batch norm's backward sums of these rows (``split``:
    the next phase ends it, :func:`backward_end`), or the whole of batch
    norm backward on each ghost chunk (``dz`` in place, this piece's share
    of gamma's and beta's gradients summed over its chunks in order; a
    chunk with weight on fewer than 2 rows, normalized to ``z_hat = 0``,
    gives beta's alone)."""
    cdef const Layer* layer = &net.layers[l]
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* work = <floating*> buf.work
    cdef Py_ssize_t fan_out = layer.fan_out, c, lo, hi, j
    cdef floating* D = work + layer.delta
    cdef floating* dgamma = share(net, buf, piece, layer.gamma, layer.share_rest, dtype)
    cdef floating* dbeta = dgamma + fan_out
    cdef floating* chunk_dgamma = piece_gtmp(net, buf, piece, dtype)
    cdef floating* chunk_dbeta = chunk_dgamma + fan_out
    cdef floating* dg
    cdef floating* db
    cdef double* scratch = piece_scratch(net, buf, piece)
    cdef double* sums
    cdef double n_running
    cdef Panel panel
    cdef Statistics stats
    if layer.dropout > 0:
        dropout_backward(net, D + r0 * fan_out, fan_out,
                         (<uint8_t*> (work + layer.keep)) + r0 * fan_out, r1 - r0,
                         fan_out, l)
    stats.epsilon = net.bn_epsilon
    if split:
        merged_statistics(net, buf, mb, pieces, l, piece, &stats, dtype)
        fill_panel(&panel, net, buf, r0, r1, fan_out, dtype)
        sums = piece_sums(net, buf, piece, l)
        cbn_act_backward_sums(
            D + r0 * fan_out, work + layer.out + r0 * fan_out,
            work + layer.z + r0 * fan_out, &panel, theta + layer.gamma,
            theta + layer.bias, &stats, net.act, sums, sums + net.stats_stride, scratch)
        return
    for c in range(c0, c1):
        chunk_bounds(mb, c, &lo, &hi)
        chunk_weights(net, buf, mb, lo, hi, &stats.weight_sum, &n_running, dtype)
        dg, db = dgamma, dbeta
        if c > c0:
            dg, db = chunk_dgamma, chunk_dbeta
        if not stats.weight_sum > 0:
            # The forward's infinite variance (z_hat = 0): beta's gradient
            # alone, and no dz nor gamma's; the weight sum only scales terms
            # that vanish.
            stats.weight_sum = 1
        stats.mean = slot_mean(net, buf, c, l)
        stats.var = stats.mean + net.var_base
        fill_panel(&panel, net, buf, lo, hi, fan_out, dtype)
        # In place: the delta in, the delta out.
        cbn_act_backward(
            D + lo * fan_out, D + lo * fan_out, work + layer.out + lo * fan_out,
            work + layer.z + lo * fan_out, &panel, theta + layer.gamma,
            theta + layer.bias, &stats, net.act, dg, db, scratch)
        if c > c0:
            for j in range(fan_out):
                dgamma[j] += chunk_dgamma[j]
                dbeta[j] += chunk_dbeta[j]


cdef void backward_phase(const Net* net, const Data* data, Buffers* buf,
                         const Minibatch* mb, Team* team, Py_ssize_t l, bint split,
                         floating* dtype) noexcept nogil:
    """Hidden layer ``l`` backward, by pieces of rows: the end of its batch
    norm backward (``split``), this piece's share of its coefficient
    gradient, and the start of the layer below's backward pass, from
    ``dL/da = dz @ W.T`` on these rows. The coefficient gradient of the
    layer above, when it is summed by columns, is a second task."""
    cdef const Layer* layer = &net.layers[l]
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* work = <floating*> buf.work
    cdef Py_ssize_t fan_in = layer.fan_in, fan_out = layer.fan_out
    cdef Py_ssize_t piece, r0, r1, c0, c1
    cdef floating* D = work + layer.delta
    while next_row_piece(team, mb, &piece, &r0, &r1, &c0, &c1):
        if split:
            backward_end(net, buf, mb, team.pieces, l, piece, r0, r1, dtype)
        if layer.share_coef >= 0:
            # gW = a[r0:r1].T @ dz[r0:r1]
            cgemm(True, False, <int> fan_in, <int> fan_out, <int> (r1 - r0),
                  <floating> 1, layer_input(net, buf, mb, l, dtype) + r0 * fan_in,
                  <int> fan_in, D + r0 * fan_out, <int> fan_out, <floating> 0,
                  share(net, buf, piece, layer.coef, layer.share_coef, dtype),
                  <int> fan_out)
        if l > 0:
            # dL/da below, rows r0:r1: dz[r0:r1] @ W.T
            cgemm(False, True, <int> (r1 - r0), <int> fan_in, <int> fan_out,
                  <floating> 1, D + r0 * fan_out, <int> fan_out, theta + layer.coef,
                  <int> fan_out, <floating> 0,
                  work + net.layers[l - 1].delta + r0 * fan_in, <int> fan_in)
            backward_start(net, buf, mb, team.pieces, l - 1, piece, r0, r1, c0, c1,
                           split, dtype)
    if net.layers[l + 1].share_coef < 0:
        coef_gradient_by_columns(net, data, buf, mb, team, l + 1, dtype)


cdef void backward_end(const Net* net, Buffers* buf, const Minibatch* mb, int pieces,
                       Py_ssize_t l, Py_ssize_t piece, Py_ssize_t r0, Py_ssize_t r1,
                       floating* dtype) noexcept nogil:
    """The end of hidden layer ``l``'s batch norm backward on rows ``r0:r1``
    when the pieces share the batch: the batch's sums (the pieces', added
    in piece order), ``dz`` in place, and this piece's share of gamma's and
    beta's gradients (from its own sums)."""
    cdef const Layer* layer = &net.layers[l]
    cdef const floating* theta = <const floating*> buf.theta
    cdef floating* work = <floating*> buf.work
    cdef Py_ssize_t fan_out = layer.fan_out, k, j, lo, hi, c0, c1
    cdef double* scratch = piece_scratch(net, buf, piece)
    cdef double* total_g = scratch + SCRATCH_PER_COLUMN * net.widest
    cdef double* total_gz = total_g + net.widest
    cdef const double* sums
    cdef floating* D = work + layer.delta + r0 * fan_out
    cdef floating* dgamma = share(net, buf, piece, layer.gamma, layer.share_rest, dtype)
    cdef floating* unused = piece_gtmp(net, buf, piece, dtype)
    cdef Panel panel
    cdef Statistics stats
    for j in range(fan_out):
        total_g[j] = 0
        total_gz[j] = 0
    for k in range(pieces):
        row_piece(mb, pieces, k, &lo, &hi, &c0, &c1)
        if hi <= lo:
            continue
        sums = piece_sums(net, buf, k, l)
        for j in range(fan_out):
            total_g[j] += sums[j]
            total_gz[j] += sums[net.stats_stride + j]
    merged_statistics(net, buf, mb, pieces, l, piece, &stats, dtype)
    fill_panel(&panel, net, buf, r0, r1, fan_out, dtype)
    # The batch's coefficients of dz (its gradients of gamma and beta are
    # not this piece's share: unused).
    cbn_gamma_beta_gradients(&stats, fan_out, theta + layer.gamma, theta + layer.bias,
                             total_g, total_gz, unused, unused + fan_out, scratch)
    cbn_act_backward_dz(D, D, work + layer.out + r0 * fan_out,
                        work + layer.z + r0 * fan_out, &panel, net.act, scratch)
    sums = piece_sums(net, buf, piece, l)
    cbn_gamma_beta_gradients(&stats, fan_out, theta + layer.gamma, theta + layer.bias,
                             sums, sums + net.stats_stride, dgamma, dgamma + fan_out,
                             scratch)


cdef void coef_gradient_by_columns(const Net* net, const Data* data, Buffers* buf,
                                   const Minibatch* mb, Team* team, Py_ssize_t l,
                                   floating* dtype) noexcept nogil:
    """Layer ``l``'s coefficient gradient (without its L2 term) into
    ``grad``, by pieces of columns, each over every row: ``a.T @ dz``."""
    cdef const Layer* layer = &net.layers[l]
    cdef floating* work = <floating*> buf.work
    cdef floating* gW = (<floating*> buf.grad) + layer.coef
    cdef Py_ssize_t fan_in = layer.fan_in, fan_out = layer.fan_out, c0, c1
    cdef const floating* D
    if l == net.n_layers - 1:
        D = work + net.p
    else:
        D = work + layer.delta
    while next_piece(team, fan_out, COL_ALIGN, &c0, &c1):
        if l == 0 and net.sparse:
            sparse_rows_grad(data, mb.rows, mb.m, D + c0, fan_out, net.n_features,
                             fan_out, c0, c1, gW, False)
        else:
            # gW[:, c0:c1] = a.T @ D[:, c0:c1]
            cgemm(True, False, <int> fan_in, <int> (c1 - c0), <int> mb.m,
                  <floating> 1, layer_input(net, buf, mb, l, dtype), <int> fan_in,
                  D + c0, <int> fan_out, <floating> 0, gW + c0, <int> fan_out)


cdef void step_phase(const Net* net, Optimizer opt, Buffers* buf, const Minibatch* mb,
                     Team* team, double l2, floating* dtype) noexcept nogil:
    """By pieces of the flat parameters: their gradient, summed from the
    pieces' shares in piece order, its L2 term (``l2 * W``), and the
    optimizer's step (none unless ``mb.stepping``); each piece's sum of
    ``W ** 2``, for the loss."""
    cdef Py_ssize_t e0, e1, l, n_out
    cdef double squares
    cdef const Layer* layer
    cdef ParamBlock block
    while next_piece(team, net.n_params, COL_ALIGN, &e0, &e1):
        squares = 0
        for l in range(net.n_layers):
            layer = &net.layers[l]
            n_out = layer.fan_out
            block = ParamBlock(layer.coef, layer.fan_in * n_out, layer.share_coef,
                               True)
            squares += step_block(net, opt, buf, mb, team.pieces, e0, e1, &block, l2,
                                  dtype)
            if l < net.n_layers - 1:
                block = ParamBlock(layer.gamma, 2 * n_out, layer.share_rest, False)
            else:
                block = ParamBlock(layer.bias, n_out, layer.share_rest, False)
            step_block(net, opt, buf, mb, team.pieces, e0, e1, &block, 0.0, dtype)
        buf.dwork[net.l2_sums + team.held - team.offset] = squares


cdef double step_block(const Net* net, Optimizer opt, Buffers* buf,
                       const Minibatch* mb, int pieces, Py_ssize_t e0, Py_ssize_t e1,
                       const ParamBlock* block, double l2,
                       floating* dtype) noexcept nogil:
    """:func:`step_phase` on the parameters of ``[e0, e1)`` that lie in
    ``block``. Returns their sum of ``W ** 2`` (0 without L2, or unless the
    block is ``decayed``)."""
    cdef floating* theta = <floating*> buf.theta
    cdef floating* grad = <floating*> buf.grad
    cdef Py_ssize_t start = block.start, n = block.n
    cdef Py_ssize_t share_offset = block.share_offset
    cdef bint decayed = block.decayed
    cdef Py_ssize_t s0 = max(e0, start), s1 = min(e1, start + n), i, k, lo, hi, c0, c1
    cdef const floating* part
    cdef floating c = <floating> l2
    cdef double squares = 0
    if s1 <= s0:
        return 0
    if share_offset >= 0:
        for k in range(1, pieces):
            row_piece(mb, pieces, k, &lo, &hi, &c0, &c1)
            if hi <= lo:
                continue
            part = ((<const floating*> buf.shares) + (k - 1) * net.share_stride
                    + share_offset + (s0 - start))
            for i in range(s1 - s0):
                grad[s0 + i] += part[i]
    if decayed and l2 != 0:
        squares = sum_of_squares(theta + s0, s1 - s0)
        if c != 0:
            for i in range(s0, s1):
                grad[i] += c * theta[i]
    if mb.stepping:
        step_range(opt, &mb.update, theta, grad, s0, s1 - s0, decayed)
    return squares


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


cdef inline bint kept(uint32_t row_key, Py_ssize_t j,
                      uint32_t threshold) noexcept nogil:
    """Whether unit ``j`` of the row is kept (probability ``1 - threshold /
    2**32``)."""
    return mix32(row_key ^ (<uint32_t> j * <uint32_t> 0x9e3779b9)) >= threshold


cdef simd_void dropout_forward(const Net* net, const floating* a, floating* out,
                               uint8_t* keep_out, Py_ssize_t m, Py_ssize_t row0,
                               Py_ssize_t width, Py_ssize_t layer,
                               Py_ssize_t step) noexcept nogil:
    """Inverted dropout on ``m`` rows of ``width`` units, rows ``row0:row0 +
    m`` of the minibatch: ``out = a * keep / (1 - p)``, where ``keep``
    (probability ``1 - p``) is the mask of this layer at this optimizer
    step, written to ``keep_out`` (one byte per unit) for the backward
    pass."""
    cdef double p = net.layers[layer].dropout
    cdef uint32_t threshold = <uint32_t> min(p * 4294967296.0, 4294967295.0)
    cdef floating scale = <floating> (1 / (1 - p))
    cdef floating zero = 0
    cdef uint64_t key = dropout_key(net.dropout_seed, step, layer)
    cdef uint32_t row_key
    cdef Py_ssize_t i, j
    cdef const floating* s
    cdef floating* d
    cdef uint8_t* k
    for i in range(m):
        row_key = <uint32_t> mix64(key + <uint64_t> (row0 + i))
        s = a + i * width
        d = out + i * width
        k = keep_out + i * width
        for j in range(width):
            k[j] = kept(row_key, j, threshold)
        for j in range(width):
            # A factor selected, then one product: the loop vectorizes (a
            # selected product does not).
            d[j] = s[j] * (scale if k[j] else zero)


cdef simd_void dropout_backward(const Net* net, floating* delta, Py_ssize_t ld,
                                const uint8_t* keep, Py_ssize_t m, Py_ssize_t w,
                                Py_ssize_t layer) noexcept nogil:
    """``delta *= keep / (1 - p)`` on a panel of ``w`` columns (rows ``ld``
    apart), with the mask the forward pass drew (:func:`dropout_forward`)."""
    cdef floating scale = <floating> (1 / (1 - net.layers[layer].dropout))
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


# ---------------------------------------------------------------------------
# The output layer and its loss: scikit-learn's losses, each the loss of its
# output activation (_activation_registry.OUTPUT).


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
    y) / wsum``. An unknown output activation gives NaN."""
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
        if w == 0:
            # A row of no weight counts for nothing, whatever its output (a
            # Poisson output of one far from the weighted statistics may be
            # inf, and 0 * inf is NaN).
            row_loss_out[i] = 0
            for j in range(n_out):
                row[j] = 0
            continue
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
    """The output activation in place (identity: nothing to do); an unknown
    one gives NaN."""
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


cdef void sparse_rows_matmul(const Data* data, const Py_ssize_t* rows, Py_ssize_t m,
                             const floating* w, Py_ssize_t ld, Py_ssize_t c0,
                             Py_ssize_t c1, floating* out,
                             Py_ssize_t out_ld) noexcept nogil:
    """out[k, :c1 - c0] = X[rows[k]] @ W[:, c0:c1] for the CSR rows of
    ``data``; rows of W are ``ld`` apart, rows of out ``out_ld``."""
    cdef const floating* values = <const floating*> data.X_data
    cdef const Py_ssize_t* indices = data.X_indices
    cdef const Py_ssize_t* indptr = data.X_indptr
    cdef Py_ssize_t k, p
    for k in range(m):
        memset(out + k * out_ld, 0, (c1 - c0) * sizeof(floating))
        for p in range(indptr[rows[k]], indptr[rows[k] + 1]):
            # out[k] += X.data[p] * W[X.indices[p], c0:c1]
            caxpy(<int> (c1 - c0), values[p], w + indices[p] * ld + c0,
                  out + k * out_ld)


cdef void sparse_rows_grad(const Data* data, const Py_ssize_t* rows, Py_ssize_t m,
                           const floating* delta, Py_ssize_t delta_ld, Py_ssize_t n_in,
                           Py_ssize_t ld, Py_ssize_t c0, Py_ssize_t c1, floating* grad,
                           bint accumulate) noexcept nogil:
    """grad[:, c0:c1] (+)= X[rows].T @ delta for the CSR rows of ``data``
    (``n_in`` columns; added to grad when ``accumulate``); ``delta`` is a
    panel of ``c1 - c0`` columns, rows ``delta_ld`` apart; rows of grad are
    ``ld`` apart."""
    cdef const floating* values = <const floating*> data.X_data
    cdef const Py_ssize_t* indices = data.X_indices
    cdef const Py_ssize_t* indptr = data.X_indptr
    cdef Py_ssize_t k, p
    if not accumulate:
        for k in range(n_in):
            memset(grad + k * ld + c0, 0, (c1 - c0) * sizeof(floating))
    for k in range(m):
        for p in range(indptr[rows[k]], indptr[rows[k] + 1]):
            # grad[X.indices[p], c0:c1] += X.data[p] * delta[k]
            caxpy(<int> (c1 - c0), values[p], delta + k * delta_ld,
                  grad + indices[p] * ld + c0)


# ---------------------------------------------------------------------------
# The L2 term.


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


# ---------------------------------------------------------------------------
# Prediction: the network with batch norm folded into its weights.


cdef class FoldedLayout:
    """The layers of a folded network (``act(a @ W + b)`` per hidden layer,
    ``out_act(a @ W + b)`` for the output layer): where each layer's ``W`` and
    ``b`` sit in one flat vector, and the activations.

    Parameters
    ----------
    units : sequence of int
        Units of every layer, input and output included.
    activation, out_activation : str
    """

    cdef Layer* layers
    cdef int n_layers
    cdef int act
    cdef int out_act
    cdef readonly object units
    cdef readonly Py_ssize_t n_params

    def __cinit__(self):
        self.layers = NULL

    def __dealloc__(self):
        PyMem_Free(self.layers)

    def __init__(self, units, activation, out_activation):
        cdef Py_ssize_t l, L = len(units) - 1, size = 0
        self.units = np.asarray(units, dtype=np.intp)
        self.layers = <Layer*> PyMem_Malloc(max(L, 1) * sizeof(Layer))
        if self.layers == NULL:
            raise MemoryError()
        memset(self.layers, 0, max(L, 1) * sizeof(Layer))
        self.n_layers = <int> L
        self.act = act_code(activation)
        self.out_act = OUT_ACTIVATIONS[out_activation]
        for l in range(L):
            self.layers[l].fan_in, self.layers[l].fan_out = units[l], units[l + 1]
            self.layers[l].coef = size
            size += units[l] * units[l + 1]
            self.layers[l].bias = size
            size += units[l + 1]
        self.n_params = size

    def pack(self, coefs, intercepts):
        """The flat vector of the layers' ``W`` and ``b``, in their dtype."""
        return np.ascontiguousarray(np.concatenate(
            [part for W, b in zip(coefs, intercepts) for part in (np.ravel(W), b)]))


def forward_folded(FoldedLayout layout not None, const floating[:, ::1] X,
                   const floating[::1] params, Py_ssize_t first_layer,
                   floating[:, ::1] out, Py_ssize_t block_rows, int n_threads):
    """Inference forward pass of a network with batch norm folded in.

    ``X`` is the input of weight layer ``first_layer`` (the caller computes
    a sparse first layer itself); ``params`` the layout's flat vector. Rows
    go through in blocks of ``block_rows``, so that memory stays bounded for
    any number of rows. With ``n_threads > 1`` an OpenMP team takes the blocks
    in turn (the caller limits BLAS to one thread meanwhile): a thread slowed
    down by another process on its core just takes fewer blocks. A row's
    result depends only on its block, not on the thread.
    """
    cdef Py_ssize_t L = layout.n_layers
    cdef Py_ssize_t n = X.shape[0], l, b, width = 1
    cdef Py_ssize_t n_blocks = (n + block_rows - 1) // block_rows
    if n == 0:
        return
    for l in range(first_layer, L):
        width = max(width, layout.layers[l].fan_out)
    dtype = np.asarray(params).dtype
    cdef floating[:, :, ::1] buf = np.empty((n_threads, 2, block_rows * width),
                                            dtype=dtype)
    with nogil:
        if n_threads == 1:
            for b in range(n_blocks):
                folded_block(layout, &X[b * block_rows, 0],
                             min(block_rows, n - b * block_rows), &params[0],
                             first_layer, &buf[0, 0, 0], &buf[0, 1, 0],
                             &out[b * block_rows, 0])
        else:
            for b in prange(n_blocks, schedule="dynamic", num_threads=n_threads):
                folded_block(layout, &X[b * block_rows, 0],
                             min(block_rows, n - b * block_rows), &params[0],
                             first_layer, &buf[threadid(), 0, 0],
                             &buf[threadid(), 1, 0], &out[b * block_rows, 0])


cdef void folded_block(FoldedLayout layout, const floating* X, Py_ssize_t m,
                       const floating* params, Py_ssize_t first_layer,
                       floating* buf0, floating* buf1, floating* out) noexcept nogil:
    """The folded forward pass of ``m`` rows, ``buf0`` and ``buf1`` holding
    the hidden layers' outputs in turn."""
    cdef const floating* src = X
    cdef floating* dst = buf0
    cdef floating* spare = buf1
    cdef Py_ssize_t l, L = layout.n_layers
    cdef const Layer* layer
    for l in range(first_layer, L):
        layer = &layout.layers[l]
        if l == L - 1:
            dst = out
        # dst = src @ W
        cgemm(False, False, <int> m, <int> layer.fan_out, <int> layer.fan_in,
              <floating> 1, src, <int> layer.fan_in, params + layer.coef,
              <int> layer.fan_out, <floating> 0, dst, <int> layer.fan_out)
        if l < L - 1:
            act_rows(dst, m, layer.fan_out, params + layer.bias, layout.act)
            src = dst
            dst, spare = spare, dst
        else:
            add_bias_rows(dst, m, layer.fan_out, params + layer.bias)
            out_activation_rows(dst, m, layer.fan_out, layout.out_act)
