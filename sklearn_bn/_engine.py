"""The training engine's boundary: what the estimators call to train and
predict, and every check made before compiled code runs.

An :class:`Engine` is built once per fit from the estimator's choices
(units, activations, dtype, minibatch size, options). It owns the compiled
network (``_training.Network``: its layers' descriptors, the parameters'
layout and the workspace) and the thread team (``_threads``); the optimizer
is an object of ``_optimizers``. Its calls take keyword arguments:
:meth:`Engine.bind` checks and converts the training data once,
:meth:`Engine.train_epoch` runs an epoch, :meth:`Engine.loss_and_gradient`
evaluates the training objective, :meth:`Engine.predict` runs the inference
network. Prediction of a fitted estimator goes through
:class:`FoldedNetwork`, the network with batch norm folded into its
weights, and :func:`population_statistics` computes the exact statistics of
its hidden layers over a data set (``bn_stats='population'``).

The compiled module (``_training.pyx``) trusts what it gets: the checks
here are what keeps its loops in bounds.

:data:`LAYER_OPTIONS` lists the hidden layers' options (see CONTRIBUTING.md,
"Adding a layer option").
"""

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sklearn_bn import _threads, _training
from sklearn_bn._activation_registry import ACTIVATIONS, OUT_ACTIVATIONS
from sklearn_bn._activations import forward as activation_forward
from sklearn_bn._batchnorm import batch_stats, merge_stats, unbiased_counts
from sklearn_bn._optimizers import Optimizer
from sklearn_bn._utils import aligned_zeros

# Rows per block of a prediction: memory stays bounded for any number of rows.
PREDICT_BLOCK_ROWS = 1024

# Row blocks of population_statistics: about this many values of the widest
# hidden layer each, within [POPULATION_MIN_ROWS, POPULATION_MAX_ROWS] rows.
POPULATION_BLOCK_ELEMENTS = 1 << 21
POPULATION_MIN_ROWS, POPULATION_MAX_ROWS = 1024, 8192

# Seconds of work per call of the compiled epoch loop: between calls, Ctrl-C
# is noticed and the epoch can stop (see Engine.train_epoch).
CHUNK_SECONDS = 0.02


@dataclass(frozen=True)
class LayerOption:
    """An option of the hidden layers: an estimator parameter, an
    :class:`Engine` argument of the same name, and a field of the compiled
    network (``field`` of each layer's descriptor, ``_training.Network.layer``,
    when ``per_layer``; of the network's settings, ``Network.settings``,
    otherwise)."""

    name: str
    field: str
    per_layer: bool
    # Whether the fitted network predicts differently with it: then the
    # folded network, its extended-precision fallback, the population
    # statistics and the exports apply it too.
    changes_inference: bool


#: The hidden layers' options, by name.
LAYER_OPTIONS = {
    option.name: option
    for option in (
        LayerOption(
            "dropout", field="dropout", per_layer=True, changes_inference=False
        ),
        LayerOption(
            "virtual_batch_size",
            field="virtual_batch",
            per_layer=False,
            changes_inference=False,
        ),
    )
}


def multiply_adds_per_row(units):
    """Multiply-adds of the matrix products of one row through the network."""
    return int(np.dot(units[:-1], units[1:]))


@dataclass
class Parameters:
    """A network's trainable parameters and running statistics, flat, and
    the updates of the running statistics so far (the divisor of their
    cumulative average)."""

    theta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    n_batches_tracked: int = 0

    def copy(self):
        return Parameters(
            aligned_copy(self.theta),
            aligned_copy(self.running_mean),
            aligned_copy(self.running_var),
            self.n_batches_tracked,
        )

    def is_finite(self):
        return all(
            np.isfinite(a).all()
            for a in (self.theta, self.running_mean, self.running_var)
        )

    def fold_bound(self, bn_epsilon):
        """An upper bound of the magnitudes of the folded network's weights
        and biases (see :class:`FoldedNetwork`), from a few reductions over
        the flat arrays: where it is within range, :func:`folds_finitely`
        need not fold layer by layer."""
        top = float(np.max(np.abs(self.theta)))
        if self.running_var.size == 0:
            return top
        var = float(np.min(self.running_var)) + bn_epsilon
        if not var > 0:
            return math.inf
        scale = top / math.sqrt(var)
        return top * scale + top + float(np.max(np.abs(self.running_mean))) * scale


def aligned_copy(a):
    out = aligned_zeros(a.size, a.dtype)
    out[:] = a
    return out


@dataclass
class TrainingData:
    """Training rows as the engine reads them: C-contiguous dense X, or CSR
    with intp indices (then ``X`` is a placeholder); Y as a 2-D array; the
    weights (empty when unweighted). All in the parameters' dtype."""

    X: np.ndarray
    X_data: np.ndarray
    X_indices: np.ndarray
    X_indptr: np.ndarray
    Y: np.ndarray
    sample_weight: np.ndarray
    sparse: bool
    weighted: bool

    @property
    def n_samples(self):
        return self.Y.shape[0]

    def arrays(self):
        """The keyword arguments of the compiled calls."""
        return dict(
            X=self.X,
            X_data=self.X_data,
            X_indices=self.X_indices,
            X_indptr=self.X_indptr,
            Y=self.Y,
            sample_weight=self.sample_weight,
        )


class Engine:
    """Trains one network shape on minibatches; built once per fit.

    Parameters
    ----------
    units : sequence of int
        Units of every layer, input and output included.
    activation : {'identity', 'relu', 'tanh', 'logistic'}
        The hidden layers' activation.
    out_activation : {'identity', 'logistic', 'softmax', 'exp'}
        The output layer's, which also picks the loss (squared error, binary
        log loss, log loss, half Poisson deviance).
    dtype : float32 or float64
    max_batch : int
        Rows of the largest minibatch (``batch_size + 1``: a trailing single
        row joins the previous minibatch).
    sparse, weighted : bool
        Whether X is sparse, whether rows carry weights.
    alpha : float
        L2 penalty on the coefficients.
    bn_momentum : float in [0, 1] or None
        None: the running statistics are the cumulative average of the
        batches' statistics.
    bn_epsilon : float
    data_loss_scale : float, default=1.0
        Factor on the data term of the reported loss (not on the L2 term nor
        the gradient): the regressor reports the squared error as a mean over
        outputs, as scikit-learn does, while the gradient is that of the sum.
    virtual_batch_size : int >= 2 or None, default=None
        Ghost batch norm: each minibatch of ``m`` rows is normalized in
        ``max(1, min(ceil(m / virtual_batch_size), m // 2))`` consecutive
        chunks (as ``numpy.array_split`` splits), each with its own
        statistics, which update the running statistics in turn.
    dropout : sequence of float in [0, 1), default=None
        Each hidden layer's dropout rate (None: none).
    dropout_seed : int, default=0
        Seeds the dropout masks, which depend on it, the optimizer's step,
        the layer, the row of the minibatch and the unit only.
    """

    def __init__(
        self,
        units,
        *,
        activation,
        out_activation,
        dtype,
        max_batch,
        sparse,
        weighted,
        alpha,
        bn_momentum,
        bn_epsilon,
        data_loss_scale=1.0,
        virtual_batch_size=None,
        dropout=None,
        dropout_seed=0,
    ):
        units = [int(u) for u in units]
        if len(units) < 2 or min(units) < 1:
            raise ValueError(f"a network needs >= 2 layers of >= 1 unit, got {units}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"the engine trains in float32 or float64, not {dtype}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        if out_activation not in OUT_ACTIVATIONS:
            raise ValueError(f"unknown output activation {out_activation!r}")
        if max_batch < 2:
            raise ValueError("max_batch must be at least 2")
        for name, value in (("alpha", alpha), ("bn_epsilon", bn_epsilon)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if bn_momentum is not None and not 0 <= bn_momentum <= 1:
            raise ValueError(
                f"bn_momentum must be in [0, 1] or None, got {bn_momentum}"
            )
        if virtual_batch_size is not None and not virtual_batch_size >= 2:
            raise ValueError(
                f"virtual_batch_size must be >= 2, got {virtual_batch_size}"
            )
        n_hidden_layers = len(units) - 2
        dropout = (
            np.zeros(n_hidden_layers)
            if dropout is None
            else np.asarray(dropout, dtype=np.float64)
        )
        if dropout.shape != (n_hidden_layers,) or not np.all(
            (dropout >= 0) & (dropout < 1)
        ):
            raise ValueError(
                f"dropout needs one rate in [0, 1) per hidden layer, got {dropout}"
            )
        if not data_loss_scale > 0:
            raise ValueError(f"data_loss_scale must be positive, got {data_loss_scale}")
        self.dtype = np.dtype(dtype)
        self.sparse, self.weighted = bool(sparse), bool(weighted)
        self.activation, self.out_activation = activation, out_activation
        self.bn_epsilon = float(bn_epsilon)
        self.network = _training.Network(
            units,
            activation=activation,
            out_activation=out_activation,
            dtype=self.dtype,
            max_batch=int(max_batch),
            sparse=self.sparse,
            weighted=self.weighted,
            alpha=float(alpha),
            bn_momentum=None if bn_momentum is None else float(bn_momentum),
            bn_epsilon=self.bn_epsilon,
            data_loss_scale=float(data_loss_scale),
            virtual_batch_size=None
            if virtual_batch_size is None
            else int(virtual_batch_size),
            dropout=dropout.tolist(),
            dropout_seed=int(dropout_seed),
        )
        self.team_size = _threads.TeamSize(pieces=1, threads=1)
        self._batches_per_call = 1
        self._timed_calls = False  # whether calls are timed for the pace yet
        # Minibatches (skipped) and ghost chunks (normalized to 0) so far
        # whose weight lies on fewer than 2 rows.
        self.degenerate_batches = 0

    @property
    def layout(self):
        """The compiled network, which owns the parameters' layout: ``units``,
        ``n_params``, ``n_hidden``, ``pack``/``unpack`` (coefficients, gammas,
        intercepts) and ``pack_stats``/``unpack_stats`` (running
        statistics)."""
        return self.network

    # ------------------------------------------------------------------
    # Threads

    @contextlib.contextmanager
    def team(self, batch_size):
        """Run the calls made inside on the team the thread policy gives for
        minibatches of ``batch_size`` rows (BLAS on one thread meanwhile):
        the pieces every task is cut in, and the threads that take them."""
        work = batch_size * multiply_adds_per_row(self.layout.units)
        with _threads.training_threads(work) as team_size:
            self.team_size = team_size
            try:
                yield team_size
            finally:
                self.team_size = _threads.TeamSize(pieces=1, threads=1)

    # ------------------------------------------------------------------
    # Data and parameters

    def parameters(
        self,
        coefs,
        gammas,
        intercepts,
        running_means,
        running_vars,
        n_batches_tracked=0,
    ):
        """Flat copies of per-layer parameters and statistics."""
        layout = self.layout
        return Parameters(
            layout.pack(coefs, gammas, intercepts, self.dtype),
            layout.pack_stats(running_means, self.dtype),
            layout.pack_stats(running_vars, self.dtype),
            int(n_batches_tracked),
        )

    def bind(self, X, Y, sample_weight=None):
        """Check the training rows against the network and convert them once.

        ``X`` is an array or a sparse matrix with ``units[0]`` columns, ``Y``
        has ``units[-1]`` columns (or is 1-D for one output).
        """
        n_features, n_out = self.layout.units[0], self.layout.units[-1]
        if sp.issparse(X) != self.sparse:
            raise ValueError(
                "X is sparse but the engine was built for dense input"
                if self.sparse is False
                else "X is dense but the engine was built for sparse input"
            )
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"X has {X.shape[-1]} features, expected {n_features}")
        n = X.shape[0]
        Y = np.asarray(Y)
        if Y.shape[:1] != (n,) or Y.ndim > 2 or Y.size != n * n_out:
            raise ValueError(f"Y has shape {Y.shape}, expected ({n}, {n_out})")
        Y = np.ascontiguousarray(Y.reshape(n, n_out), dtype=self.dtype)
        if self.weighted != (sample_weight is not None):
            raise ValueError(
                "sample_weight must be given exactly when the engine "
                "was built for weighted rows"
            )
        weights = np.zeros(0, dtype=self.dtype)
        if self.weighted:
            weights = np.ascontiguousarray(sample_weight, dtype=self.dtype)
            if weights.shape != (n,):
                raise ValueError("sample_weight and X have different numbers of rows")
        if self.sparse:
            return TrainingData(
                np.zeros((1, 1), dtype=self.dtype),
                *_csr_arrays(X, self.dtype, n_features),
                Y,
                weights,
                True,
                self.weighted,
            )
        return TrainingData(
            np.ascontiguousarray(X, dtype=self.dtype),
            np.zeros(0, dtype=self.dtype),
            np.zeros(0, dtype=np.intp),
            np.zeros(1, dtype=np.intp),
            Y,
            weights,
            False,
            self.weighted,
        )

    def _check(self, data, params):
        """The bound data and the parameters fit this engine."""
        if data is not None:
            if data.sparse != self.sparse or data.weighted != self.weighted:
                raise ValueError("the data were not bound by this engine")
            for name, array in data.arrays().items():
                expected = np.intp if name in ("X_indices", "X_indptr") else self.dtype
                if (
                    not isinstance(array, np.ndarray)
                    or array.dtype != expected
                    or not array.flags.c_contiguous
                ):
                    raise ValueError(f"{name} must be a C-contiguous {expected} array")
            n, n_features = data.n_samples, self.layout.units[0]
            n_rows = data.X_indptr.shape[0] - 1 if self.sparse else data.X.shape[0]
            if n_rows != n or (not self.sparse and data.X.shape[1] != n_features):
                raise ValueError("X and Y do not have the rows and columns bound")
            if data.Y.shape[1] != self.layout.units[-1] or data.sample_weight.shape != (
                (n,) if self.weighted else (0,)
            ):
                raise ValueError("Y or sample_weight do not have the rows bound")
        layout = self.layout
        _check_vector(params.theta, layout.n_params, self.dtype, "theta")
        for name in ("running_mean", "running_var"):
            _check_vector(getattr(params, name), layout.n_hidden, self.dtype, name)

    # ------------------------------------------------------------------
    # Training

    def train_epoch(
        self,
        *,
        data,
        params,
        optimizer,
        order,
        order_is_identity,
        batch_size,
        should_stop=None,
    ):
        """One epoch over the rows ``order`` (minibatches of ``batch_size``);
        updates ``params`` and ``optimizer`` in place.

        The compiled loop runs in calls of about ``CHUNK_SECONDS`` each; when
        ``should_stop()`` turns true, the epoch stops after the current call
        (a partial epoch: its minibatches are applied).

        Returns
        -------
        loss_sum : float
            Sum over the minibatches run of (minibatch loss x minibatch rows).
        n_rows : int
            Rows of ``order`` the minibatches run covered (all of them unless
            stopped).
        n_trained : int
            The rows of those minibatches that were trained: a minibatch
            whose weights sum to zero, or lie on fewer than two rows, is
            skipped.
        """
        self._check(data, params)
        order = np.asarray(order)
        n = order.shape[0]
        if order.dtype != np.intp or order.ndim != 1 or not order.flags.c_contiguous:
            raise ValueError("order must be a C-contiguous 1-D intp array")
        if n < 2:
            raise ValueError("an epoch needs at least 2 samples")
        if order.min() < 0 or order.max() >= data.n_samples:
            raise ValueError("order has indices out of range")
        if batch_size < 2:
            raise ValueError("batch_size must be at least 2")
        if min(batch_size + 1, n) > self.network.max_batch:
            raise ValueError("workspace too small for this batch size")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be an Optimizer, got {type(optimizer).__name__}"
            )
        for name, moment in optimizer.moments().items():
            _check_vector(moment, self.layout.n_params, self.dtype, name)
        pieces, n_threads = self.team_size
        if not (
            1 <= pieces <= _threads.MAX_PIECES
            and 1 <= n_threads <= _threads.MAX_THREADS
        ):
            raise ValueError(
                f"need 1 <= pieces <= {_threads.MAX_PIECES} and 1 <= threads "
                f"<= {_threads.MAX_THREADS}, got {self.team_size}"
            )
        # The pace compares the ways of running this team's pieces.
        network = (tuple(self.layout.units), int(batch_size), self.dtype.char, pieces)
        pinnable = _threads.can_pin(
            n_threads, int(batch_size) * multiply_adds_per_row(self.layout.units)
        )
        loss_sum, start, n_trained = 0.0, 0, 0
        while start < n and not (should_stop is not None and should_stop()):
            began = time.perf_counter()
            choice = _threads.TEAM_PACE.choose(network, n_threads, began, pinnable)
            loss_sum, end, degenerate, trained, threads_run = _training.train_epoch(
                self.network,
                data,
                params,
                optimizer,
                order,
                bool(order_is_identity),
                int(batch_size),
                start,
                self._batches_per_call,
                loss_sum,
                int(choice.threads),
                int(pieces),
                bool(choice.pinned),
            )
            seconds = time.perf_counter() - began
            # Not timed for the pace: an engine's first call when more of
            # the epoch follows (one minibatch, caches cold: far slower per
            # row than the next calls, whichever way ran it); a partial_fit
            # of one minibatch is all first calls. A team's call that the
            # pool ran on one thread (another Python thread's job held it)
            # counts as one thread's.
            if self._timed_calls or end >= n:
                if threads_run == 1 and choice.threads > 1:
                    choice = _threads.TeamChoice(1)
                _threads.TEAM_PACE.record(
                    network, n_threads, choice, seconds, end - start, began, pinnable
                )
            self._timed_calls = True
            start = end
            n_trained += trained
            self.degenerate_batches += degenerate
            self._pace(seconds, -(-n // batch_size))
        return loss_sum, start, n_trained

    def _pace(self, seconds, batches_per_epoch):
        """Minibatches per compiled call for the next ones to take about
        ``CHUNK_SECONDS`` (growing at most fourfold at a time, and never
        beyond an epoch)."""
        target = self._batches_per_call * CHUNK_SECONDS / max(seconds, 1e-6)
        self._batches_per_call = int(
            max(1, min(4 * self._batches_per_call, target, batches_per_epoch))
        )

    def loss_and_gradient(self, *, data, params, update_running=False, step=0):
        """The training-mode loss (batch statistics, L2 term) of all of
        ``data`` as one minibatch and its gradient, in the layout of
        ``params.theta``; the running statistics move only when
        ``update_running``. ``step`` picks the dropout masks (those of the
        optimizer's step ``step + 1``)."""
        self._check(data, params)
        if not 1 <= data.n_samples <= self.network.max_batch:
            raise ValueError("need between one row and the workspace's max_batch")
        loss, weight_sum, degenerate = _training.loss_and_gradient(
            self.network, data, params, bool(update_running), int(step)
        )
        if not weight_sum > 0:
            raise ValueError("sample weights sum to zero")
        if degenerate:
            raise ValueError("fewer than 2 rows have positive weight")
        return loss, self.network.grad.copy()

    # ------------------------------------------------------------------
    # Inference

    def predict(self, X, params):
        """Output-layer activations of the inference network (running
        statistics) for ``X``."""
        self._check(None, params)
        coefs, gammas, intercepts = self.layout.unpack(params.theta)
        folded = FoldedNetwork.fold(
            coefs,
            gammas,
            intercepts,
            self.layout.unpack_stats(params.running_mean),
            self.layout.unpack_stats(params.running_var),
            self.bn_epsilon,
            self.activation,
            self.out_activation,
        )
        return folded.predict(X)


def _check_vector(array, size, dtype, name):
    if not isinstance(array, np.ndarray) or array.ndim != 1 or array.shape[0] != size:
        raise ValueError(f"{name} must be a vector of {size} entries")
    if (
        array.dtype != dtype
        or not array.flags.c_contiguous
        or not array.flags.writeable
    ):
        raise ValueError(f"{name} must be a writable C-contiguous {dtype} vector")


def _csr_arrays(X, dtype, n_features):
    """``X`` as the arrays of a CSR matrix with sorted intp indices, checked
    first: every row's entries within bounds."""
    X = X.tocsr()
    indptr, indices = X.indptr, X.indices
    if (
        indptr.shape[0] != X.shape[0] + 1
        or indices.shape[0] != X.data.shape[0]
        or indptr[0] != 0
        or indptr[-1] != indices.shape[0]
        or np.any(np.diff(indptr) < 0)
    ):
        raise ValueError("malformed CSR input")
    if indices.shape[0] and (indices.min() < 0 or indices.max() >= n_features):
        raise ValueError("CSR column index out of range")
    X = X.astype(dtype, copy=False)
    if not X.has_sorted_indices:
        X = X.sorted_indices()
    return (
        np.ascontiguousarray(X.data, dtype=dtype),
        np.ascontiguousarray(X.indices, dtype=np.intp),
        np.ascontiguousarray(X.indptr, dtype=np.intp),
    )


def folded_layers(coefs, gammas, intercepts, running_means, running_vars, bn_epsilon):
    """Each layer's weights and bias with its batch norm folded in (see
    :class:`FoldedNetwork`), in float64."""
    for l, (W, b) in enumerate(zip(coefs, intercepts)):
        W = np.asarray(W, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if l < len(gammas):
            if any(
                np.shape(a[l]) != (W.shape[1],)
                for a in (gammas, running_means, running_vars)
            ):
                raise ValueError("the layers' shapes do not chain")
            var = np.asarray(running_vars[l], dtype=np.float64) + bn_epsilon
            if not np.all(var > 0):
                raise ValueError(f"hidden layer {l}: var + bn_epsilon must be positive")
            s = np.asarray(gammas[l], dtype=np.float64) / np.sqrt(var)
            W, b = W * s, b - running_means[l] * s
        yield W, b


def folds_finitely(
    coefs, gammas, intercepts, running_means, running_vars, bn_epsilon, dtype
):
    """Whether the folded network's weights are finite in ``dtype``: finite
    parameters of a diverged fit can fold beyond its range (a weight of 1e200
    times a scale of 1e200), and its predictions would all be NaN."""
    limit = np.finfo(dtype).max
    with np.errstate(over="ignore", invalid="ignore"):
        return all(
            np.all(np.abs(W) <= limit) and np.all(np.abs(b) <= limit)
            for W, b in folded_layers(
                coefs, gammas, intercepts, running_means, running_vars, bn_epsilon
            )
        )


class FoldedNetwork:
    """The inference network with batch norm folded into its weights:
    hidden layers ``act(a @ W + b)``, the output ``out_act(a @ W + b)``.

    ``gamma * (a @ W - mean) / sqrt(var + eps) + beta`` is ``a @ W' + b'``
    with ``W' = W * s``, ``b' = beta - mean * s`` and ``s = gamma /
    sqrt(var + eps)``.
    """

    def __init__(self, coefs, intercepts, activation, out_activation):
        self.activation = activation
        self.out_activation = out_activation
        units = [coefs[0].shape[0]] + [c.shape[1] for c in coefs]
        if len(intercepts) != len(coefs) or any(
            W.shape != (a, b) or np.shape(c) != (b,)
            for W, c, a, b in zip(coefs, intercepts, units[:-1], units[1:])
        ):
            raise ValueError("the layers' shapes do not chain")
        if activation not in ACTIVATIONS or out_activation not in OUT_ACTIVATIONS:
            raise ValueError(f"unknown activations {activation!r}, {out_activation!r}")
        self.layout = _training.FoldedLayout(units, activation, out_activation)
        self.params = self.layout.pack(coefs, intercepts)
        self.params.flags.writeable = False
        self.units = self.layout.units
        # Each layer's W and b as views of the packed vector, which a cached
        # network holds alone: one copy of the weights, not two.
        self.coefs, self.intercepts, start = [], [], 0
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            stop = start + fan_in * fan_out
            self.coefs.append(self.params[start:stop].reshape(fan_in, fan_out))
            self.intercepts.append(self.params[stop : stop + fan_out])
            start = stop + fan_out

    @classmethod
    def fold(
        cls,
        coefs,
        gammas,
        intercepts,
        running_means,
        running_vars,
        bn_epsilon,
        activation,
        out_activation,
        dtype=None,
    ):
        """Fold each hidden layer's batch norm into its weights, in float64,
        returned in ``dtype`` (default: the first layer's)."""
        dtype = np.dtype(coefs[0].dtype if dtype is None else dtype)
        folded_coefs, folded_intercepts = [], []
        for W, b in folded_layers(
            coefs, gammas, intercepts, running_means, running_vars, bn_epsilon
        ):
            folded_coefs.append(W.astype(dtype))
            folded_intercepts.append(b.astype(dtype))
        return cls(folded_coefs, folded_intercepts, activation, out_activation)

    def predict(self, X):
        """Output-layer activations for ``X`` (dense or sparse, validated by
        the caller, with ``units[0]`` columns), in the network's dtype.

        Rows whose outputs overflow the dtype (inputs near its largest
        values) are computed again in extended precision, so that
        probabilities stay finite for any finite input.
        """
        if X.shape[1] != self.units[0]:
            raise ValueError(f"X has {X.shape[1]} columns, expected {self.units[0]}")
        out = self._predict_fast(X)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            out[bad] = self._predict_wide(X[np.flatnonzero(bad)])
        return out

    def _predict_fast(self, X):
        dtype = self.params.dtype
        out = np.empty((X.shape[0], self.units[-1]), dtype=dtype)
        block = PREDICT_BLOCK_ROWS
        if sp.issparse(X):
            # The first layer by scipy, the others compiled, block by block.
            _threads._BLAS_OWNER.restore_after_fork()
            X = X.tocsr()
            W0, b0 = self.coefs[0], self.intercepts[0]
            for start in range(0, X.shape[0], block):
                stop = min(start + block, X.shape[0])
                Z = np.ascontiguousarray((X[start:stop] @ W0).astype(dtype, copy=False))
                Z += b0
                if len(self.coefs) == 1:
                    out[start:stop] = OUT_ACTIVATIONS[self.out_activation].forward(Z)
                else:
                    _forward(
                        self,
                        activation_forward(Z, self.activation),
                        1,
                        out[start:stop],
                        1,
                        block,
                    )
            return out
        X = np.ascontiguousarray(X, dtype=dtype)
        per_row = multiply_adds_per_row(self.units)
        with _threads.prediction_threads(X.shape[0], per_row, block) as (
            n_threads,
            rows,
        ):
            _forward(self, X, 0, out, n_threads, rows)
        return out

    def _predict_wide(self, X):
        """The forward pass in numpy's extended precision (``longdouble``:
        80-bit on x86, whose range is far beyond float64's)."""
        wide = np.longdouble
        a = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=wide)
        for l, (W, b) in enumerate(zip(self.coefs, self.intercepts)):
            a = a @ W.astype(wide) + b.astype(wide)
            if l < len(self.coefs) - 1:
                a = ACTIVATIONS[self.activation].forward(a)
        return OUT_ACTIVATIONS[self.out_activation].forward(a)


def population_statistics(
    X,
    sample_weight,
    *,
    coefs,
    gammas,
    intercepts,
    bn_epsilon,
    activation,
    dtype,
    stats_dtype,
):
    """The exact statistics of each hidden layer over the rows of ``X``, in
    inference mode, layer by layer.

    For hidden layer ``i``: the weighted mean and the unbiased variance of
    ``z = a @ coefs[i]`` over the rows, where ``a`` is the layer's input
    computed by the inference network whose hidden layers below ``i`` already
    normalize with their new statistics (rounded to ``stats_dtype``, as they
    are stored). The variance takes the correction ``m / (m - 1)`` of the
    running variance, with ``m`` from :func:`unbiased_counts`: the weight
    sum, or the number of rows with positive weight when that sum is below 2.

    Layer ``i``'s statistics need every row's ``z`` for the layers below
    fixed, so the rows go through the network once per hidden layer, up to
    that layer, in row blocks (a dense ``X`` and a CSR matrix are read in
    place; a CSC matrix is converted to CSR once, as prediction does). The
    folded products run in ``dtype`` with BLAS on one thread (the package's
    team shares the rows of a large block, see :mod:`sklearn_bn._threads`);
    the statistics are accumulated in float64 (block by block, merged with
    Chan et al.'s update) and returned in ``stats_dtype``.

    Parameters
    ----------
    X : ndarray or sparse matrix of shape (n_samples, units[0])
        Validated rows (finite, float32 or float64).
    sample_weight : ndarray of shape (n_samples,) or None
        Non-negative weights (repeat counts), not all zero.
    coefs, gammas, intercepts : lists of ndarray
        The network's parameters, as the fitted attributes hold them.
    bn_epsilon : float
    activation : str
        The hidden layers' activation.
    dtype : float32 or float64
        The dtype the forward pass computes in.
    stats_dtype : float32 or float64
        The dtype the statistics are stored in.

    Returns
    -------
    means, variances : lists of ndarray of shape (units[i + 1],), stats_dtype
        One per hidden layer.

    Raises
    ------
    ValueError
        When the rows cannot give an unbiased variance (fewer than 2 rows of
        positive weight and weights summing to less than 2), or when the
        statistics are not finite (values beyond the dtype's range).
    """
    dtype, stats_dtype = np.dtype(dtype), np.dtype(stats_dtype)
    if sp.issparse(X):
        X = X.tocsr()  # a CSR matrix is returned as it is
    n_rows = X.shape[0]
    weights = None
    n_positive = float(n_rows)
    if sample_weight is not None:
        weights = np.ascontiguousarray(sample_weight, dtype=dtype)
        n_positive = float(np.count_nonzero(weights > 0))
    widest = max((int(np.shape(g)[0]) for g in gammas), default=1)
    block_rows = int(
        np.clip(
            POPULATION_BLOCK_ELEMENTS // widest,
            POPULATION_MIN_ROWS,
            POPULATION_MAX_ROWS,
        )
    )
    means, variances = [], []
    with _threads._one_blas_thread():
        for layer in range(len(gammas)):
            # The inference network up to this layer's z: the layers below
            # folded with their new statistics, this one's coefficients alone.
            width = np.shape(coefs[layer])[1]
            network = FoldedNetwork.fold(
                coefs[: layer + 1],
                gammas[:layer],
                list(intercepts[:layer]) + [np.zeros(width)],
                means,
                variances,
                bn_epsilon,
                activation,
                "identity",
                dtype=dtype,
            )
            count, mean, var = np.zeros(width), np.zeros(width), np.zeros(width)
            for start in range(0, n_rows, block_rows):
                stop = min(start + block_rows, n_rows)
                z = network._predict_fast(X[start:stop])
                w = None if weights is None else weights[start:stop]
                mean_b, var_b, count_b = batch_stats(
                    z, w, False, *_threads.kernel_threads(*z.shape)
                )
                count, mean, var = merge_stats(count, mean, var, count_b, mean_b, var_b)
            m = unbiased_counts(count, np.full(width, n_positive))
            if np.any(m <= 1):
                raise ValueError(
                    "The batch-norm statistics need at least 2 samples of positive "
                    f"weight, or weights summing to 2 or more, to estimate an unbiased "
                    f"variance; got n_samples={n_rows}"
                    + (
                        "."
                        if weights is None
                        else f" with {int(n_positive)} of positive weight summing to "
                        f"{count[0]:g}."
                    )
                )
            with np.errstate(over="ignore", invalid="ignore"):
                var = var * (m / (m - 1))
                mean, var = mean.astype(stats_dtype), var.astype(stats_dtype)
            if not (np.isfinite(mean).all() and np.isfinite(var).all()):
                raise ValueError(
                    f"The statistics of hidden layer {layer} are not finite in "
                    f"{stats_dtype.name}: the input has values too large for this "
                    "network"
                    + (
                        ""
                        if weights is None
                        else ", or the sample weights are too large"
                    )
                    + ". Scale "
                    + (
                        "the input down."
                        if weights is None
                        else "the input or the weights down."
                    )
                )
            means.append(mean)
            variances.append(var)
    return means, variances


def _forward(folded, X, first_layer, out, n_threads, block_rows):
    _training.forward_folded(
        folded.layout, X, folded.params, first_layer, out, block_rows, n_threads
    )
