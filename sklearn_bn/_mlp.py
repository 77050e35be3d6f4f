"""Multilayer perceptrons whose hidden layers are batch-normalized.

Every hidden layer computes ``act(gamma * z_hat + beta)`` where ``z = a @ W``
and ``z_hat`` standardizes ``z`` over the minibatch (Ioffe & Szegedy, 2015).
Training runs whole epochs in the engine (``_engine.py`` over the compiled
``_training.pyx``); this module validates input and keeps scikit-learn's MLP
behaviour: encoding, schedules, early stopping, warm start, partial_fit,
messages.
"""

import copy
import functools
import warnings
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn import get_config
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    RegressorMixin,
    _fit_context,
    is_classifier,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import _safe_indexing, check_random_state, column_or_1d
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import (
    _check_partial_fit_first_call,
    type_of_target,
    unique_labels,
)
from sklearn.utils.validation import (
    _check_sample_weight,
    _check_y,
    check_consistent_length,
    check_is_fitted,
    validate_data,
)

from sklearn_bn import _preprocessing
from sklearn_bn._activation_registry import ACTIVATIONS
from sklearn_bn._callbacks import (
    CallbackSupportMixin,
    EpochTasks,
    has_callbacks,
    with_callbacks,
)
from sklearn_bn._engine import (
    Engine,
    FoldedNetwork,
    folds_finitely,
    population_statistics,
)
from sklearn_bn._optimizers import (
    OPTIMIZERS,
    SCHEDULES,
    batches_per_epoch,
    from_state_dict,
)
from sklearn_bn._utils import (
    _publish_now,
    _reads_fitted_state,
    _restore_on_failure,
    check_weight_range,
    deferred_interrupt,
)

# The folded networks of fitted arrays, by their first coefficient array and
# dtype (see _folded_network).
_FOLDED_NETWORKS = {}

# early_stopping="auto" is on above this many rows (HistGradientBoosting's).
_AUTO_EARLY_STOPPING_ROWS = 10_000

# What to do when a continued fit does not fit the fitted network; by
# whether the call is partial_fit.
_CONTINUED_NETWORK_HINT = {
    True: "partial_fit continues the fitted network: give it data, targets and "
    "parameters that fit it, or call fit to train a new network.",
    False: "warm_start continues the fitted network; set warm_start=False to "
    "train a new one.",
}

# The default batch_size. This value is clipped to fewer rows without a
# warning: a user who kept the default has nothing to change, and one who
# passes 128 cannot be told apart (__init__ stores its arguments as given).
_DEFAULT_BATCH_SIZE = 128

# The parameters a partial_fit of a fitted model reads. scikit-learn
# validates the parameters at a model's first partial_fit only (as its own
# estimators do); these, not all of them, are checked again at each later
# call, with that validation's error.
_PARTIAL_FIT_PARAMETERS = (
    "activation",
    "alpha",
    "batch_size",
    "bn_epsilon",
    "bn_momentum",
    "categorical_features",
    "class_weight",
    "dropout",
    "early_stopping",
    "hidden_layer_sizes",
    "input_preprocessing",
    "label_smoothing",
    "loss",
    "n_iter_no_change",
    "random_state",
    "shuffle",
    "tol",
    "verbose",
    "virtual_batch_size",
)


def _smoothed_targets(Y, label_smoothing, out_activation):
    """Label smoothing, in place on the 0/1 targets ``Y``: ``(1 - eps) *
    onehot + eps / K`` for a softmax over K classes, ``y * (1 - eps) + eps /
    2`` per output for logistic outputs (binary and multilabel). Computed in
    float64, rounded to ``Y``'s dtype once."""
    eps = float(label_smoothing)
    if eps == 0:
        return Y
    floor = eps / Y.shape[1] if out_activation == "softmax" else eps / 2
    smoothed = Y.astype(np.float64) * (1.0 - eps) + floor
    Y[...] = smoothed
    return Y


def _label_array(labels):
    """``labels`` as an array; of objects when numbers and strings mix (numpy
    would turn the numbers into strings)."""
    if isinstance(labels, np.ndarray):
        return labels
    array = np.asarray(labels)
    if array.dtype.kind in "US" and not all(isinstance(c, str) for c in labels):
        return np.asarray(labels, dtype=object)
    return array


def _label_indices(classes, y):
    """The index of each of ``y``'s labels in ``classes``, which a reassigned
    ``classes_`` may list in any order."""
    order = np.argsort(classes, kind="stable")
    return order[np.searchsorted(classes[order], y)]


def _checked_weights(sample_weight, X, dtype, name):
    """``sample_weight`` validated and converted to ``dtype``: non-negative,
    not all zero, and within the range where the weighted sums of batch norm
    and of the loss stay finite (as repeat counts, their sum must be a
    finite number in ``dtype``, and the smallest positive weight a normal
    one, whose inverse is finite)."""
    raw = None if sample_weight is None else np.asarray(sample_weight)
    if raw is not None and raw.dtype.kind == "f" and np.any(np.isposinf(raw)):
        if name == "sample_weight":  # the user's own: scikit-learn's message
            raise ValueError(
                "Input sample_weight contains infinity or a value too large for "
                "dtype('float64')."
            )
        raise ValueError(  # a product with the class weights overflowed
            f"{name} is too large: some weights are infinite in float64. Divide "
            "them by a common factor."
        )
    weights64 = _check_sample_weight(
        sample_weight, X, dtype=np.float64, ensure_non_negative=False
    )
    if np.any(weights64 < 0):
        raise ValueError(f"Negative values in {name} are not allowed.")
    if not np.any(weights64 > 0):
        raise ValueError(f"{name} must not sum to zero.")
    check_weight_range(weights64, name, dtype)
    return np.ascontiguousarray(weights64, dtype=dtype)


@dataclass
class _TrainingState:
    """The epochs' bookkeeping of a fit, which its fitted attributes record:
    epochs and samples seen, the loss curve, and the stopping rule's state
    (the best training loss, or with early stopping the validation scores
    and the best of them)."""

    n_iter: int = 0
    t: int = 0
    loss_curve: list = field(default_factory=list)
    no_improvement: int = 0
    best_loss: float = None
    validation_scores: list = None
    best_validation_score: float = None
    continued: bool = False  # a warm_start fit, or a later partial_fit
    batch_size: int = 0  # the minibatches' rows (0 before they are known)


def _concentration(sample_weight):
    """The largest share of the weights' sum one row carries (0 without
    weights)."""
    if sample_weight is None or len(sample_weight) == 0:
        return 0.0
    weights = np.asarray(sample_weight, dtype=np.float64)
    total = np.sum(weights / weights.max()) if weights.max() > 0 else 0.0
    return float(1.0 / total) if total > 0 else 0.0


def _in_dtype(X, dtype):
    """``X`` in the narrower ``dtype`` the engine trains in, or
    scikit-learn's error when a finite value is beyond its range."""
    try:
        with np.errstate(over="raise"):
            return X.astype(dtype)
    except FloatingPointError:
        raise ValueError(
            f"Input X contains infinity or a value too large for "
            f"{np.dtype(dtype)!r}: the model trains in {np.dtype(dtype).name}, the "
            "dtype of its first fit. Scale X, or fit a new model on float64 X."
        ) from None


def _unchangeable(array):
    """Whether nothing can write to ``array``'s values: it is read-only, and
    so is everything it is a view of, down to a read-only buffer that holds
    the values (bytes, a read-only mmap). A read-only view of a writable
    array changes when the array does, and an array that owns its values can
    be made writable again (``setflags``)."""
    while True:
        if isinstance(array, np.ndarray):
            if array.flags.writeable or array.base is None:
                return False
            array = array.base
        elif isinstance(array, memoryview):
            if not array.readonly:
                return False
            array = array.obj
        else:
            break
    try:  # bytes, a read-only mmap (joblib's mmap_mode='r'), ...
        return memoryview(array).readonly
    except TypeError:
        return False


def _read_only(array):
    """``array``'s values as an array that nothing can change (see
    :func:`_unchangeable`): ``array`` itself if it is one, else a view of a
    copy of its values in ``bytes``. The folded network is cached only for
    such arrays."""
    if _unchangeable(array):
        return array
    return np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)


class _Best:
    """The parameters a fit publishes: with early stopping, a copy of those
    of the best validation score so far; otherwise the trained ones."""

    def __init__(self, params, early_stopping):
        self.params = params.copy() if early_stopping else params


class _BaseMLPBN(CallbackSupportMixin, BaseEstimator, ABC):
    """Shared implementation of MLPBNClassifier and MLPBNRegressor."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": [
            "array-like",
            Interval(Integral, 1, None, closed="left"),
        ],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions(set(OPTIMIZERS))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [
            StrOptions({"auto"}),
            Interval(Integral, 2, None, closed="left"),
        ],
        "learning_rate": [StrOptions(set(SCHEDULES))],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean", StrOptions({"auto"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [
            Interval(Integral, 1, None, closed="left"),
            Options(Real, {np.inf}),
        ],
        "bn_momentum": [Interval(Real, 0, 1, closed="both"), None],
        "bn_epsilon": [Interval(Real, 0, None, closed="neither")],
        "bn_stats": [StrOptions({"running", "population"})],
        "dropout": [Interval(Real, 0, 1, closed="left"), "array-like"],
        "virtual_batch_size": [Interval(Integral, 2, None, closed="left"), None],
        "input_preprocessing": [StrOptions({"auto"}), None],
        "categorical_features": [StrOptions({"from_dtype"}), "array-like", None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    @abstractmethod
    def __init__(
        self,
        hidden_layer_sizes,
        activation,
        solver,
        alpha,
        batch_size,
        learning_rate,
        learning_rate_init,
        power_t,
        max_iter,
        loss,
        shuffle,
        random_state,
        tol,
        verbose,
        warm_start,
        momentum,
        nesterovs_momentum,
        early_stopping,
        validation_fraction,
        beta_1,
        beta_2,
        epsilon,
        n_iter_no_change,
        bn_momentum,
        bn_epsilon,
        bn_stats,
        dropout,
        virtual_batch_size,
        input_preprocessing,
        categorical_features,
        weight_decay,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.loss = loss
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.bn_stats = bn_stats
        self.dropout = dropout
        self.virtual_batch_size = virtual_batch_size
        self.input_preprocessing = input_preprocessing
        self.categorical_features = categorical_features
        self.weight_decay = weight_decay

    # ------------------------------------------------------------------
    # Validation helpers

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if not hasattr(sizes, "__iter__"):
            sizes = [sizes]
        sizes = list(sizes)
        if any(not isinstance(s, Integral) or isinstance(s, bool) for s in sizes):
            raise ValueError(
                "hidden_layer_sizes must hold integers (units per hidden layer), "
                f"got {self.hidden_layer_sizes!r}."
            )
        if any(s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _dropout_rates(self, n_hidden_layers):
        """One dropout rate per hidden layer, checked."""
        try:
            rates = np.asarray(self.dropout, dtype=np.float64)
        except (TypeError, ValueError):
            rates = None
        if rates is not None and rates.ndim == 0:  # one rate for every layer
            rates = np.full(n_hidden_layers, rates)
        if (
            rates is None
            or rates.shape != (n_hidden_layers,)
            or not np.all((rates >= 0) & (rates < 1))
        ):
            # The error scikit-learn's parameter validation raises (which
            # checks neither a sequence's rates nor its length).
            raise InvalidParameterError(
                "dropout must be a float in [0, 1) or a sequence of one such rate per "
                f"hidden layer ({n_hidden_layers}), got {self.dropout!r}."
            )
        return rates.tolist()

    def _validate_X_predict(self, X):
        """``X`` as the network's input: validated, and handled by the
        fitted input handling when there is one."""
        check_is_fitted(self)
        handling = _preprocessing.InputHandling.of(self)
        if handling is None:
            return validate_data(
                self,
                X,
                accept_sparse=["csr", "csc"],
                dtype=(np.float64, np.float32),
                reset=False,
            )
        X = _preprocessing.read(
            self, X, reset=False, fitted_mask=handling.is_categorical
        )
        return handling.transform(X)

    def _validate_X_y(self, X, y, reset, y_numeric=False):
        """Validated ``X`` and ``y``. Without input handling, ``X`` is a
        float array or sparse matrix as the network takes it; with it, the
        raw input as the handling reads it (see ``_preprocessing.read``)."""
        if self.input_preprocessing is None:
            if _preprocessing.names_categorical(self.categorical_features):
                raise ValueError(
                    "categorical_features names columns, which needs "
                    "input_preprocessing='auto' (the network's own input handling "
                    "encodes them); with input_preprocessing=None, X goes straight "
                    "into the first layer and must be numeric."
                )
            return validate_data(
                self,
                X,
                y,
                accept_sparse=["csr", "csc"],
                multi_output=True,
                y_numeric=y_numeric,
                dtype=(np.float64, np.float32),
                order="C",
                reset=reset,
            )
        if y is None:  # validate_data's message
            raise ValueError(
                f"This {type(self).__name__} estimator requires y to be passed, "
                "but the target y is None."
            )
        handling = None if reset else _preprocessing.InputHandling.of(self)
        X = _preprocessing.read(
            self,
            X,
            reset=reset,
            fitted_mask=None if handling is None else handling.is_categorical,
            continued=True,
        )
        y = _check_y(y, multi_output=True, y_numeric=y_numeric, estimator=self)
        check_consistent_length(X, y)
        return X, y

    def _check_input_handling_unchanged(self, incremental):
        """A continued fit (warm start, partial_fit) keeps the handling the
        model was trained with: ``input_preprocessing`` may not change."""
        fitted = hasattr(self, _preprocessing.ATTRIBUTES[0])
        if fitted != (self.input_preprocessing == "auto"):
            how = (
                "fit it again with partial_fit on a new estimator"
                if incremental
                else "set warm_start=False to refit"
            )
            raise ValueError(
                f"input_preprocessing={self.input_preprocessing!r}, but the model was "
                f"fitted with input_preprocessing={'auto' if fitted else None!r}: a "
                f"continued fit keeps the input handling it started with; {how}."
            )

    def _handle_input(self, X, sample_weight, first_pass):
        """The network's input for validated ``X``: with input handling, it
        is learned on the first pass (from ``sample_weight`` as repeat
        counts) and stored in the fitted attributes, then applied."""
        if self.input_preprocessing is None:
            for name in _preprocessing.ATTRIBUTES:
                self.__dict__.pop(name, None)
            return X
        if first_pass:
            self.__dict__.update(_preprocessing.learn(X, sample_weight))
        return _preprocessing.InputHandling.of(self).transform(X)

    def _n_network_inputs(self):
        """Units of the network's input layer: one per handled feature."""
        handling = _preprocessing.InputHandling.of(self)
        return self.n_features_in_ if handling is None else handling.n_outputs

    # ------------------------------------------------------------------
    # Fitting

    def _init_params(self, units, dtype, random_state):
        """Glorot-uniform coefficients drawn as scikit-learn's MLP draws them
        (same random stream); gammas at 1, intercepts and betas at 0."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        coefs, gammas, intercepts = [], [], []
        for l in range(len(units) - 1):
            fan_in, fan_out = units[l], units[l + 1]
            bound = np.sqrt(factor / (fan_in + fan_out))
            coefs.append(
                random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
            )
            random_state.uniform(-bound, bound, fan_out)  # sklearn's intercept draw
            intercepts.append(np.zeros(fan_out, dtype=dtype))
            if l < len(units) - 2:
                gammas.append(np.ones(fan_out, dtype=dtype))
        running_means = [np.zeros(u, dtype=dtype) for u in units[1:-1]]
        running_vars = [np.ones(u, dtype=dtype) for u in units[1:-1]]
        return coefs, gammas, intercepts, running_means, running_vars

    def _fit(self, X, y, sample_weight, incremental):
        if incremental and hasattr(self, "coefs_"):
            self._recheck_partial_fit_parameters()
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (
            not self.warm_start and not incremental
        )
        if (
            not isinstance(self.early_stopping, str)
            and self.early_stopping
            and incremental
        ):
            raise ValueError("partial_fit does not support early_stopping=True")

        dropout = self._dropout_rates(len(hidden))
        if not first_pass:
            self._check_input_handling_unchanged(incremental)
        raw_X = X
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        n_samples = X.shape[0]
        if n_samples == 1:
            raise ValueError(
                "n_samples=1: batch normalization needs at least 2 samples "
                "per minibatch, got 1 sample."
            )
        early_stopping = self._early_stopping_on(n_samples, incremental)
        dtype = X.dtype if first_pass else self.coefs_[0].dtype
        if not self._bn_epsilon_fits(dtype):
            warnings.warn(
                f"bn_epsilon={self.bn_epsilon:g} is too small for "
                f"{np.dtype(dtype).name}: 1 / sqrt(bn_epsilon), the scale of a hidden "
                "unit that is constant over a minibatch, is beyond its range, and "
                "training will produce "
                "non-finite weights if that happens. Use a larger bn_epsilon"
                + self._float64_remedy(dtype, continued=not first_pass)
                + ".",
                RuntimeWarning,
            )
        class_weights = self._class_weights_of_rows(y, incremental)
        Y = self._encode_targets(y, dtype)
        weights_name = "sample_weight"
        if class_weights is not None:
            weights_name = (
                "class_weight"
                if sample_weight is None
                else "sample_weight times class_weight"
            )
            # Multiplied in float64, then rounded to the model's dtype below:
            # exactly what sample_weight * compute_sample_weight(class_weight,
            # y) passed as sample_weight gives.
            if sample_weight is not None:
                with np.errstate(over="ignore"):  # too large: reported below
                    class_weights = class_weights * _check_sample_weight(
                        sample_weight, X, dtype=np.float64, ensure_non_negative=True
                    )
            sample_weight = class_weights
        if class_weights is not None and not np.any(class_weights > 0):
            raise ValueError(
                "The sample weights times the class weights (class_weight) sum to "
                "zero: no row would be trained on."
            )
        if sample_weight is not None:
            sample_weight = _checked_weights(sample_weight, X, dtype, weights_name)
        raw_rows = None
        if self.input_preprocessing is not None and has_callbacks(self):
            # The callbacks get the raw rows, as the model's predict takes
            # them (the epochs' rows are picked by _validation_split). Not
            # on the estimator: the epochs' fitted_estimator copies it.
            raw_X = (
                raw_X if hasattr(raw_X, "shape") else np.asarray(raw_X, dtype=object)
            )
            raw_rows = {"X": raw_X, "rows": None, "Y": Y}
        X = self._handle_input(X, sample_weight, first_pass)
        if np.dtype(dtype).itemsize < X.dtype.itemsize:
            X = _in_dtype(X, dtype)  # a float32 model continued on float64 X
        n_features = X.shape[1]
        Y = np.ascontiguousarray(Y.reshape(n_samples, -1), dtype=dtype)
        units = [n_features] + hidden + [Y.shape[1]]
        random_state = check_random_state(self.random_state)

        if first_pass:
            out_activation = self._out_activation(Y.shape[1])
            params = self._init_params(units, dtype, random_state)
            state = self._fresh_stopping_state(_TrainingState(), early_stopping)
        else:
            out_activation = self.out_activation_
            params = self._fitted_params(units, incremental)
            if self._out_activation(Y.shape[1]) != out_activation:
                raise ValueError(
                    f"loss={self.loss!r} needs the output activation "
                    f"{self._out_activation(Y.shape[1])!r}; the fitted network's "
                    f"is {out_activation!r}. " + _CONTINUED_NETWORK_HINT[incremental]
                )
            state = self._continued_state(early_stopping)
        Y = self._scaled_targets(Y, sample_weight, first_pass)

        # fit is the root task, with one subtask per epoch; partial_fit is
        # one task (see _callbacks).
        callback_ctx = self._init_callback_context(
            task_name="partial_fit" if incremental else "fit",
            max_subtasks=0 if incremental else self.max_iter,
        )
        metadata = None if sample_weight is None else {"sample_weight": sample_weight}
        callback_X = raw_X if raw_rows is not None else X
        callback_ctx.call_on_fit_task_begin(
            estimator=self, X=callback_X, y=y, metadata=metadata
        )

        # Updates of the running statistics so far: a new fit starts counting
        # again (the cumulative average of bn_momentum=None), partial_fit
        # goes on.
        tracked = getattr(self, "_n_batches_tracked", 0) if incremental else 0
        engine, params, optimizer = self._fit_stochastic(
            X,
            Y,
            sample_weight,
            units,
            params + (tracked,),
            state,
            out_activation,
            random_state,
            incremental,
            dropout,
            callback_ctx,
            early_stopping,
            raw_rows,
        )

        # Training is over: a Ctrl-C from here on no longer throws it away.
        with deferred_interrupt() as publishing:
            attributes = self._fitted_attributes(engine, params, state, out_activation)
            if params.fold_bound(self.bn_epsilon) > float(np.finfo(dtype).max) and not (
                folds_finitely(
                    *(attributes[name] for name in self._FITTED_ARRAYS),
                    self.bn_epsilon,
                    dtype,
                )
            ):
                raise ValueError(
                    self._non_finite_message(
                        dtype,
                        X.data if sp.issparse(X) else X,
                        Y,
                        sparse=sp.issparse(X),
                        sample_weight=sample_weight,
                        continued=state.continued,
                        kept_rate=self._kept_rate(optimizer, incremental, state),
                        batch_size=state.batch_size,
                    )
                )
            # Everything succeeded: publish the new state.
            self.__dict__.update(attributes)
            self._no_improvement_count = state.no_improvement
            self._optimizer_state = optimizer.state_dict()
            # The model is published: neither Ctrl-C in the last hook nor an
            # error of a callback there or in its teardown undoes it.
            _publish_now(self)
        with deferred_interrupt() as late:
            callback_ctx.call_on_fit_task_end(
                estimator=self,
                X=callback_X,
                y=y,
                metadata=metadata,
                reconstruction_attributes={},
            )
        if publishing.requested or late.requested:
            warnings.warn("Interrupted by user after training; the model is fitted.")
        return self

    def _fitted_attributes(self, engine, params, state, out_activation):
        """The fitted attributes of ``params`` (fresh read-only arrays) and of
        the epochs' bookkeeping ``state``."""
        layout = engine.layout
        coefs, gammas, intercepts = layout.unpack(params.theta)
        coefs, intercepts, extra = self._output_layer_attributes(coefs, intercepts)
        attributes = {
            "coefs_": coefs,
            "gammas_": gammas,
            "intercepts_": intercepts,
            "running_means_": layout.unpack_stats(params.running_mean),
            "running_vars_": layout.unpack_stats(params.running_var),
            "n_outputs_": int(layout.units[-1]),
            "n_layers_": len(layout.units),
            "out_activation_": out_activation,
            "n_iter_": state.n_iter,
            "t_": state.t,
            "loss_curve_": list(state.loss_curve),
            "loss_": state.loss_curve[-1] if state.loss_curve else None,
            "best_loss_": state.best_loss,
            "validation_scores_": (
                None
                if state.validation_scores is None
                else list(state.validation_scores)
            ),
            "best_validation_score_": state.best_validation_score,
            "_n_batches_tracked": params.n_batches_tracked,
            **extra,
        }
        for name in self._FITTED_ARRAYS:
            attributes[name] = [_read_only(a) for a in attributes[name]]
        return attributes

    def _class_weights_of_rows(self, y, incremental):
        """Each row's class weight (float64), or None: no class weights."""
        return None

    def _fitted_params(self, units, incremental):
        """The fitted per-layer parameters, for warm start and partial_fit."""
        if [c.shape for c in self.coefs_] != [
            (a, b) for a, b in zip(units[:-1], units[1:])
        ]:
            fitted = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
            units = list(units)
            changes = []
            if units[0] != fitted[0]:
                changes.append(
                    f"the data give {units[0]} input units, the fitted network "
                    f"has {fitted[0]}"
                )
            if units[1:-1] != fitted[1:-1]:
                changes.append(
                    f"hidden_layer_sizes gives hidden layers {units[1:-1]}, the "
                    f"fitted network has {fitted[1:-1]}"
                )
            if units[-1] != fitted[-1]:
                changes.append(
                    f"y gives {units[-1]} output units, the fitted network has "
                    f"{fitted[-1]}"
                )
            raise ValueError(
                "The network's shape changed since the last fit: "
                + "; ".join(changes)
                + ". "
                + _CONTINUED_NETWORK_HINT[incremental]
            )
        coefs, intercepts = self._network_output_layer(self.coefs_, self.intercepts_)
        return (
            coefs,
            self.gammas_,
            intercepts,
            self.running_means_,
            self.running_vars_,
        )

    def _scaled_targets(self, Y, sample_weight, first_pass):
        """The targets the network trains on (the classifier's as they
        are)."""
        return Y

    def _network_output_layer(self, coefs, intercepts):
        """The output layer in the units of the targets the network trains
        on, from the fitted one (the classifier's as it is)."""
        return coefs, intercepts

    def _output_layer_attributes(self, coefs, intercepts):
        """The fitted ``coefs`` and ``intercepts`` from the network's, and
        the private attributes that go with them."""
        return coefs, intercepts, {}

    def _early_stopping_on(self, n_samples, incremental):
        """Whether this fit holds out a validation set and stops on it:
        ``early_stopping``, where ``'auto'`` is on for a ``fit`` on more than
        10,000 rows (HistGradientBoosting's rule) and off for
        ``partial_fit``."""
        if isinstance(self.early_stopping, str):  # "auto"
            return not incremental and n_samples > _AUTO_EARLY_STOPPING_ROWS
        return bool(self.early_stopping)

    def _continued_state(self, early_stopping):
        """The epochs' bookkeeping where the last fit left it."""
        state = _TrainingState(
            t=self.t_,
            loss_curve=list(self.loss_curve_),
            no_improvement=getattr(self, "_no_improvement_count", 0),
            best_loss=self.best_loss_,
            validation_scores=(
                None
                if self.validation_scores_ is None
                else list(self.validation_scores_)
            ),
            best_validation_score=self.best_validation_score_,
            continued=True,
        )
        # early_stopping may have changed since the last fit (warm start,
        # partial_fit): the new stopping rule starts afresh, as on a first
        # fit. (A fit with early stopping keeps validation scores, one
        # without keeps None.)
        if (state.validation_scores is None) == early_stopping:
            state = self._fresh_stopping_state(state, early_stopping)
        return state

    def _fit_stochastic(
        self,
        X,
        Y,
        sample_weight,
        units,
        params,
        state,
        out_activation,
        random_state,
        incremental,
        dropout,
        callback_ctx,
        early_stopping,
        raw_rows=None,
    ):
        """Build the engine and train; return it with the trained parameters
        and the optimizer (nothing of the estimator changes here).
        ``raw_rows``: the callbacks' raw rows (see :meth:`_validation_split`)."""
        train, validation = self._validation_split(
            X, Y, sample_weight, random_state, early_stopping, raw_rows
        )
        X_train, Y_train, sw_train = train
        batch_size = state.batch_size = self._batch_size(X_train.shape[0])
        # Drawn only with dropout on, so that a fit without draws nothing more
        # from the random stream.
        dropout_seed = random_state.randint(2**31 - 1) if any(dropout) else 0
        # scikit-learn reports the squared error as a mean over outputs (its
        # gradient, like ours, is that of their sum); the other losses sum.
        data_loss_scale = 1.0 / Y.shape[1] if out_activation == "identity" else 1.0
        engine = Engine(
            units,
            activation=self.activation,
            out_activation=out_activation,
            dtype=Y.dtype,
            max_batch=min(batch_size + 1, X_train.shape[0]),
            sparse=sp.issparse(X_train),
            weighted=sw_train is not None,
            alpha=self.alpha,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            data_loss_scale=data_loss_scale,
            virtual_batch_size=self._virtual_batch_size(batch_size),
            dropout=dropout,
            dropout_seed=dropout_seed,
        )
        data = engine.bind(X_train, Y_train, sw_train)
        params = engine.parameters(*params)
        optimizer = self._make_optimizer(
            engine.layout.n_params,
            Y.dtype,
            incremental,
            self.max_iter * batches_per_epoch(X_train.shape[0], batch_size),
        )
        # Early stopping restores the parameters of the best validation score.
        best = _Best(params, early_stopping=validation is not None)
        epochs = None
        if not incremental and has_callbacks(self):
            epochs = self._epoch_tasks(
                callback_ctx, engine, best, state, train, out_activation, raw_rows
            )
        with deferred_interrupt() as interrupt, engine.team(batch_size):
            try:
                self._run_epochs(
                    engine,
                    data,
                    params,
                    optimizer,
                    state,
                    validation,
                    best,
                    random_state,
                    incremental,
                    batch_size,
                    interrupt,
                    epochs,
                )
            except KeyboardInterrupt:  # raised by a callback, say, between epochs
                interrupt.requested = True
        if state.validation_scores and not state.best_validation_score > -np.inf:
            # Nothing to return: the parameters before the first epoch.
            raise ValueError(
                "Early stopping found no epoch with a finite validation score "
                f"(last score: {state.validation_scores[-1]}): the network's "
                "predictions on the validation rows overflow, or are not finite. "
                "Scale X (input_preprocessing='auto' bounds every feature) or y, "
                "or set early_stopping=False."
            )
        if self.bn_stats == "population" and not incremental:
            # Once the best parameters are restored (early stopping), the
            # exact statistics of the training rows replace the running ones.
            # Ctrl-C now would throw the trained epochs away: it waits.
            with deferred_interrupt() as late:
                self._set_population_statistics(engine, best.params, X_train, sw_train)
            interrupt.requested |= late.requested
        if engine.degenerate_batches:
            warnings.warn(
                f"{engine.degenerate_batches} minibatch(es) or ghost-batch chunk(s) "
                "had their sample weight on fewer than two rows: batch norm cannot "
                "normalize them with their own statistics. Such a minibatch is "
                "skipped (no step, no update of the running statistics); such a "
                "chunk's rows are normalized to 0 (their activation is beta's) and "
                "the chunk leaves the running statistics alone. Shuffle the rows "
                "(shuffle=True), or use a larger batch_size (or virtual_batch_size).",
                UserWarning,
            )
        if interrupt.requested:
            warnings.warn("Training interrupted by user.")
        return engine, best.params, optimizer

    def _epoch_tasks(
        self, callback_ctx, engine, best, state, train, out_activation, raw_rows
    ):
        """The epochs as subtasks of the fit task: their data are the training
        rows (the validation split excluded) and their weights, and their
        ``fitted_estimator`` the model that fit would publish if it stopped
        there (with early stopping, the best parameters so far; with
        ``bn_stats='population'``, their population statistics). The labels
        and that model are built only if a callback asks for them."""
        X_train, Y_train, sw_train = train
        if raw_rows is not None:  # the targets before the regressor scaled them
            Y_train = (
                raw_rows["Y"]
                if raw_rows["rows"] is None
                else raw_rows["Y"][raw_rows["rows"]]
            )
        # The labels, decoded on the first call only.
        y_train = functools.cache(lambda: self._decode_targets(Y_train))

        def fitted_attributes():
            params = best.params
            if self.bn_stats == "population":
                params = params.copy()
                self._set_population_statistics(engine, params, X_train, sw_train)
            return self._fitted_attributes(engine, params, state, out_activation)

        rows = X_train
        if raw_rows is not None:

            def rows():
                return (
                    raw_rows["X"]
                    if raw_rows["rows"] is None
                    else _safe_indexing(raw_rows["X"], raw_rows["rows"])
                )

        return EpochTasks(
            callback_ctx,
            self,
            X=rows,
            y=y_train,
            metadata=None if sw_train is None else {"sample_weight": sw_train},
            fitted_attributes=fitted_attributes,
        )

    def _set_population_statistics(self, engine, params, X, sample_weight):
        """Replace the running statistics of ``params`` (in place) by the
        population statistics of the rows ``X`` (see recompute_bn_stats)."""
        layout, dtype = engine.layout, params.theta.dtype
        coefs, gammas, intercepts = layout.unpack(params.theta)
        means, variances = population_statistics(
            X,
            sample_weight,
            coefs=coefs,
            gammas=gammas,
            intercepts=intercepts,
            bn_epsilon=self.bn_epsilon,
            activation=self.activation,
            dtype=np.result_type(X.dtype, dtype),
            stats_dtype=dtype,
        )
        params.running_mean[:] = layout.pack_stats(means, dtype)
        params.running_var[:] = layout.pack_stats(variances, dtype)

    def _validation_split(
        self, X, Y, sample_weight, random_state, early_stopping, raw_rows=None
    ):
        """``(X, Y, weights)`` to train on, and the held-out ``(X, y,
        weights)`` of early stopping (None without). ``raw_rows`` (None, or
        ``{"X": the raw X, "rows": None, "Y": the unscaled targets}``) gets
        the training rows' indices in its ``"rows"``: the callbacks' raw
        training rows with input handling."""
        if not early_stopping:
            train, validation = (X, Y, sample_weight), None
        else:
            stratify = Y.ravel() if is_classifier(self) and Y.shape[1] == 1 else None
            arrays = [X, Y] + ([sample_weight] if sample_weight is not None else [])
            if raw_rows is not None:
                # The row indices are split along (the same permutation).
                arrays.append(np.arange(X.shape[0]))
            split = train_test_split(
                *arrays,
                random_state=random_state,
                test_size=self.validation_fraction,
                stratify=stratify,
            )
            X_train, X_val, Y_train, Y_val = split[:4]
            sw_train, sw_val = (
                (split[4], split[5]) if sample_weight is not None else (None, None)
            )
            if raw_rows is not None:
                raw_rows["rows"] = split[-2]
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase "
                    "'validation_fraction' or the size of your dataset."
                )
            if sw_train is not None and not sw_train.sum() > 0:
                raise ValueError(
                    "The sample weights of the training rows left after the "
                    "validation split of early stopping sum to zero: nothing to "
                    "train on. Give weight to more rows, or change "
                    "'validation_fraction' or 'random_state'."
                )
            if sw_val is not None and not sw_val.sum() > 0:
                raise ValueError(
                    "The sample weights of the validation rows of early stopping "
                    "sum to zero: no score to stop on. Give weight to more rows, "
                    "or change 'validation_fraction' or 'random_state'."
                )
            train = (X_train, Y_train, sw_train)
            validation = (X_val, self._decode_targets(Y_val), sw_val)
        if train[0].shape[0] < 2:
            raise ValueError(
                "n_samples=1: the training set left after the validation split "
                "has a single sample; batch normalization needs at least 2."
            )
        return train, validation

    def _recheck_partial_fit_parameters(self):
        """Validate the parameters a partial_fit of a fitted model reads (see
        ``_PARTIAL_FIT_PARAMETERS``)."""
        names = [
            name
            for name in _PARTIAL_FIT_PARAMETERS
            if name in self._parameter_constraints
        ]
        validate_parameter_constraints(
            {name: self._parameter_constraints[name] for name in names},
            {name: getattr(self, name) for name in names},
            caller_name=type(self).__name__,
        )

    def _batch_size(self, n_samples):
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples and self.batch_size != _DEFAULT_BATCH_SIZE:
            warnings.warn(
                "Got `batch_size` less than 1 or larger than "
                "sample size. It is going to be clipped"
            )
        return int(np.clip(self.batch_size, 2, n_samples))

    def _virtual_batch_size(self, batch_size):
        """Ghost batch norm's chunk size, or None for plain batch norm (also
        when it is at least the batch size: a minibatch that a trailing single
        row joins is then one chunk too)."""
        vbs = self.virtual_batch_size
        return None if vbs is None or vbs >= batch_size else int(vbs)

    def _make_optimizer(self, n_params, dtype, incremental, total_steps=0):
        """A fresh optimizer (the ``solver``'s entry of ``OPTIMIZERS``), or
        (partial_fit) a copy of the one the last fit left, so that a failed
        call leaves it as it was. ``total_steps``: the steps of ``max_iter``
        epochs, the horizon of a fit's cosine schedule (``partial_fit`` steps
        at ``learning_rate_init``)."""
        if incremental and hasattr(self, "_optimizer_state"):
            optimizer = from_state_dict(self._optimizer_state, dtype)
        else:
            optimizer = OPTIMIZERS[self.solver].from_estimator(self, n_params, dtype)
        optimizer.plan(0 if incremental else total_steps)
        return optimizer

    def _run_epochs(
        self,
        engine,
        data,
        params,
        optimizer,
        state,
        validation,
        best,
        random_state,
        incremental,
        batch_size,
        interrupt,
        epochs=None,
    ):
        """The epochs, until ``max_iter``, the stopping rule, one epoch for
        ``partial_fit``, Ctrl-C, or a callback's request; ``best.params``
        follows early stopping's best parameters. ``epochs`` (an ``EpochTasks``, or
        None without callbacks) opens and closes each epoch's callback task.

        Ctrl-C stops the epoch under way between two minibatches; that epoch
        is recorded as the others are (``n_iter_``, ``t_`` and
        ``loss_curve_``, the loss over its minibatches done), then training
        ends.
        """
        sample_idx = np.arange(data.n_samples, dtype=np.intp)
        # A fit, warm or not, fails when its first epoch trains nothing; a
        # partial_fit only on a new model (a stream goes on past a batch
        # it cannot train).
        must_train = not incremental or not state.loss_curve
        given_weights = data.sample_weight if data.weighted else None  # for errors
        for _ in range(self.max_iter):
            if epochs is not None:
                epochs.begin()
            if self.shuffle:
                # What sklearn.utils.shuffle draws (the same random stream as
                # MLPClassifier), without its validation, and in place.
                random_state.shuffle(sample_idx)
            loss_sum, n_rows, n_trained = engine.train_epoch(
                data=data,
                params=params,
                optimizer=optimizer,
                order=sample_idx,
                order_is_identity=not self.shuffle,
                batch_size=batch_size,
                should_stop=lambda: interrupt.requested,
            )
            if n_rows == 0 or (
                n_trained == 0 and must_train and interrupt.requested
            ):  # stopped before its first minibatch, or its first trained one
                if epochs is not None:
                    epochs.abandon()
                break
            if not params.is_finite():
                raise ValueError(
                    self._non_finite_message(
                        params.theta.dtype,
                        data.X_data if data.sparse else data.X,
                        data.Y,
                        sparse=data.sparse,
                        sample_weight=given_weights,
                        continued=state.continued,
                        kept_rate=self._kept_rate(optimizer, incremental, state),
                        batch_size=batch_size,
                    )
                )
            if not np.isfinite(loss_sum):
                raise ValueError(
                    self._non_finite_loss_message(
                        data.Y,
                        sample_weight=given_weights,
                        continued=state.continued,
                        kept_rate=self._kept_rate(optimizer, incremental, state),
                    )
                )
            if n_trained == 0 and must_train:
                raise ValueError(
                    "No minibatch could be trained: the sample weights of each "
                    "sum to zero or lie on fewer than 2 rows (batch normalization "
                    "needs 2). Give weight to more rows, or use a larger batch_size."
                )
            must_train = False
            state.n_iter += 1
            state.t += n_rows
            # The mean over the minibatches trained; an epoch that trained
            # none left the model, and so its loss, as they were.
            # np.float64, as scikit-learn's MLP records it.
            loss = (
                np.float64(loss_sum / n_trained) if n_trained else state.loss_curve[-1]
            )
            state.loss_curve.append(loss)
            if self.verbose:
                print(f"Iteration {state.n_iter:d}, loss = {loss:.8f}")
            if self._update_no_improvement(engine, params, state, validation, loss):
                best.params = params.copy()
            optimizer.iteration_ends(state.t)
            # The callbacks see the epoch recorded; one returning True ends
            # training here, as the stopping rule would.
            if epochs is not None and epochs.end():
                break
            if interrupt.requested:
                break
            if state.no_improvement > self.n_iter_no_change:
                message = self._no_improvement_message(validation is not None)
                if optimizer.trigger_stopping(message, self.verbose):
                    break
                state.no_improvement = 0
            if incremental:
                break
            if state.n_iter == self.max_iter:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter:d}) "
                    "reached and the optimization hasn't converged yet.",
                    ConvergenceWarning,
                )

    def _update_no_improvement(self, engine, params, state, validation, loss):
        """The stopping rule's bookkeeping after an epoch; whether these are
        the best parameters so far (early stopping)."""
        if validation is None:
            if loss > state.best_loss - self.tol:
                state.no_improvement += 1
            else:
                state.no_improvement = 0
            if loss < state.best_loss:
                state.best_loss = loss
            return False
        X_val, y_val, sw_val = validation
        proba = engine.predict(X_val, params)
        # A NaN score (non-finite validation output) is no improvement.
        score = (
            self._score_function(
                y_val, self._decode_output(proba), sample_weight=sw_val
            )
            if np.isfinite(proba).all()
            else np.nan
        )
        state.validation_scores.append(score)
        if self.verbose:
            print(f"Validation score: {score:f}")
        if not score >= state.best_validation_score + self.tol:
            state.no_improvement += 1
        else:
            state.no_improvement = 0
        if score > state.best_validation_score:
            state.best_validation_score = score
            return True
        return False

    def _bn_epsilon_fits(self, dtype):
        """Whether ``1 / sqrt(bn_epsilon)``, the scale of a hidden unit that
        is constant over a minibatch, is within ``dtype``'s range."""
        return self.bn_epsilon > (1.0 / float(np.finfo(dtype).max)) ** 2

    @staticmethod
    def _float64_remedy(dtype, continued):
        """The float64 alternative to a float32 model, as the end of a
        sentence ('' for a float64 one)."""
        if np.dtype(dtype) == np.float64:
            return ""
        if continued:
            return (
                ", or fit a new model on float64 input (a continued fit keeps "
                "the dtype of its first fit)"
            )
        return ", or float64 input"

    def _target_cause(self, Y, sample_weight, continued):
        """A regressor's targets far from the network's unit scale, as a
        cause of divergence with its remedy (None when they are not), and
        whether that cause names weights concentrated on one row."""
        peak_y = _largest_magnitude(Y) if Y is not None else 0.0
        # A regressor's outputs start near unit scale: targets far beyond it
        # make the first steps' gradients as large.
        if is_classifier(self) or not peak_y > 1e3:
            return None, False
        standardized = hasattr(self, "target_mean_")
        if continued:
            # Earlier fits trained in these units: y must come in them too.
            where = (
                " in the units of the first fit's target_mean_ and target_scale_"
                if standardized
                else ", far from the network's unit scale"
            )
            remedy = (
                "if y's scale changed, scale it as the earlier fits' was; else "
                "fit a new model"
            )
            if not standardized and self.loss == "poisson":
                remedy += " on y divided by a constant"
            elif not standardized and self.input_preprocessing is None:
                remedy += (
                    " with input_preprocessing='auto', which standardizes the targets"
                )
            return f"targets reaching {peak_y:.3g}{where} ({remedy})", False
        if standardized:
            concentrated = _concentration(sample_weight) > 0.5
            return (
                f"targets reaching {peak_y:.3g} after their standardization (a "
                "few targets far from most others"
                + (
                    ", or sample weights concentrated on one row"
                    if concentrated
                    else ""
                )
                + ")"
            ), concentrated
        if self.loss == "poisson":
            remedy = "divide y by a constant and multiply the predictions back"
        else:
            # The handling standardizes the squared error's targets only.
            remedy = (
                "scale y, with sklearn.compose.TransformedTargetRegressor for instance"
            )
            if self.input_preprocessing is None:
                remedy += ", or use input_preprocessing='auto', which standardizes them"
        return (
            f"targets reaching {peak_y:.3g}, far from the network's unit scale "
            f"({remedy})"
        ), False

    @staticmethod
    def _auto_remedy(continued):
        return "use input_preprocessing='auto'" + (
            " in a new model" if continued else ""
        )

    @staticmethod
    def _kept_rate(optimizer, incremental, state):
        """The rate a continued partial_fit keeps from the first fit's
        optimizer (its parameter no longer changes it); None otherwise."""
        return optimizer.learning_rate if incremental and state.continued else None

    def _rate_cause(self, kept_rate, what="too large for this network"):
        """The learning rate as a cause: the parameter, or the rate a
        continued partial_fit keeps from the first fit's optimizer
        (``kept_rate``), which the parameter no longer changes."""
        if kept_rate is None:
            return f"learning_rate_init={self.learning_rate_init:g} {what}"
        return (
            f"the learning rate partial_fit keeps from the first fit "
            f"({kept_rate:g}) {what} (partial_fit does not read "
            "learning_rate_init: fit a new model with a smaller one)"
        )

    def _weights_name(self):
        return (
            "sample or class weights"
            if is_classifier(self) and self.class_weight is not None
            else "sample weights"
        )

    def _weight_causes(self, sample_weight, batch_size, concentration=True):
        """How the weights given (None: none) can make training diverge: a
        small sum per minibatch of ``batch_size`` rows (alpha's L2 term is
        divided by it), or (with ``concentration``) one row carrying most of
        their sum."""
        if sample_weight is None or len(sample_weight) == 0:
            return []
        causes = []
        name = self._weights_name()
        n = len(sample_weight)
        rows = min(batch_size, n) if batch_size else n
        per_minibatch = float(np.sum(sample_weight, dtype=np.float64)) * rows / n
        if self.alpha > 0 and per_minibatch < 1:
            causes.append(
                f"{name} summing to about {per_minibatch:.3g} per minibatch: "
                "alpha's L2 term is divided by that sum (multiply them by a "
                "common factor)"
            )
        share = _concentration(sample_weight) if concentration else 0.0
        if share > 0.5:
            causes.append(
                f"{name} concentrated on one row ({100 * share:.4g}% of their sum)"
            )
        return causes

    def _non_finite_loss_message(self, Y, *, sample_weight, continued, kept_rate=None):
        """Why the training loss overflowed with finite weights: the causes
        that apply."""
        causes = []
        target, _ = self._target_cause(Y, sample_weight, continued)
        if target is not None:
            causes.append(target)
        if sample_weight is not None and np.max(sample_weight) > 1e150:
            causes.append(
                f"{self._weights_name()} too large (they reach "
                f"{float(np.max(sample_weight)):.3g}; divide them by a common factor)"
            )
        if not causes:
            causes.append(
                f"weights large enough for the L2 term (alpha={self.alpha:g}) to "
                "overflow: alpha, or " + self._rate_cause(kept_rate, what="too large")
            )
        return (
            "The training loss overflowed while the weights stayed finite. "
            + self._causes_sentence(causes)
        )

    @staticmethod
    def _causes_sentence(causes):
        listed = (
            causes[0]
            if len(causes) == 1
            else f"{', '.join(causes[:-1])}, or {causes[-1]}"
        )
        return f"Possible cause{'s' if len(causes) > 1 else ''}: {listed}."

    def _non_finite_message(
        self,
        dtype,
        X,
        Y=None,
        *,
        sparse=False,
        sample_weight=None,
        continued=False,
        kept_rate=None,
        batch_size=0,
    ):
        """Why training produced non-finite weights, the likeliest cause
        first; ``X`` is the network's input (a sparse input's values with
        ``sparse``), ``Y`` (if known) the targets it trained on,
        ``sample_weight`` the weights it trained with (None: none given),
        ``continued`` whether the fit continues an earlier one, ``kept_rate``
        the learning rate a continued ``partial_fit`` keeps from the first
        fit's optimizer (None otherwise) and ``batch_size`` its minibatches'
        rows. It names only causes that apply, and remedies that would change
        something."""
        message = "Solver produced non-finite parameter weights."
        peak = _largest_magnitude(X)
        # The handling scales dense input only (sparse input passes through).
        handled = self.input_preprocessing is not None and not sparse
        passed_through = self.input_preprocessing is not None and sparse
        # Squares of values beyond the square root of the dtype's range (in
        # the first layer's batch variance) overflow: that is the cause.
        if peak > np.sqrt(np.finfo(dtype).max) / 100:
            if passed_through:
                remedy = " (the input handling passes sparse input through)"
            elif self.input_preprocessing is None and not sparse:
                remedy = ", or " + self._auto_remedy(continued)
            else:
                remedy = ""
            return message + (
                f" The input's values reach {peak:.3g}, too large for "
                f"{np.dtype(dtype).name}: the first layer's batch statistics "
                f"overflow. Scale the input down{remedy}."
            )
        if not self._bn_epsilon_fits(dtype):
            return message + (
                f" bn_epsilon={self.bn_epsilon:g} is too small for "
                f"{np.dtype(dtype).name}: a hidden unit that is constant over a "
                "minibatch is scaled by 1 / sqrt(bn_epsilon), beyond its range. Use a "
                "larger bn_epsilon (the default is 1e-5)"
                + self._float64_remedy(dtype, continued)
                + "."
            )
        causes = []
        target, names_concentration = self._target_cause(Y, sample_weight, continued)
        if target is not None:
            causes.append(target)
        causes.append(self._rate_cause(kept_rate))
        causes.extend(
            self._weight_causes(
                sample_weight, batch_size, concentration=not names_concentration
            )
        )
        if not handled and peak > 1e3:
            if passed_through:
                causes.append(
                    f"input values too large (they reach {peak:.3g}, and the input "
                    "handling passes sparse input through: scale them)"
                )
            else:
                causes.append(
                    f"input values too large (they reach {peak:.3g}; scale them"
                    + (", or " + self._auto_remedy(continued) if not sparse else "")
                    + ")"
                )
        # The parameter's rate first among others: the first thing to try.
        rate_first = target is None and kept_rate is None and len(causes) > 1
        return f"{message} {self._causes_sentence(causes)}" + (
            " Try a smaller learning_rate_init first." if rate_first else ""
        )

    def _no_improvement_message(self, early_stopping):
        if early_stopping:
            return (
                f"Validation score did not improve more than tol={self.tol:f} for "
                f"{self.n_iter_no_change:d} consecutive epochs."
            )
        return (
            f"Training loss did not improve more than tol={self.tol:f} for "
            f"{self.n_iter_no_change:d} consecutive epochs."
        )

    def _fresh_stopping_state(self, state, early_stopping):
        """``state`` with the stopping rule's state before its first epoch:
        validation scores with early stopping, the best training loss
        without."""
        if early_stopping:
            return replace(
                state,
                no_improvement=0,
                best_loss=None,
                validation_scores=[],
                best_validation_score=-np.inf,
            )
        return replace(
            state,
            no_improvement=0,
            best_loss=np.inf,
            validation_scores=None,
            best_validation_score=None,
        )

    # ------------------------------------------------------------------
    # Inference: the folded network of the public fitted attributes

    _FITTED_ARRAYS = (
        "coefs_",
        "gammas_",
        "intercepts_",
        "running_means_",
        "running_vars_",
    )

    def _freeze_fitted_arrays(self):
        """Make the fitted arrays read-only: an in-place edit is refused
        (reassigning them takes effect), so the folded network can be cached
        while they are the same objects."""
        frozen = {}  # an array held twice stays one (the regressor's kept layer)

        def freeze(a):
            if not isinstance(a, np.ndarray):
                return a
            if id(a) not in frozen:
                frozen[id(a)] = (a, _read_only(a))  # a: its id stays its own
            return frozen[id(a)][1]

        for name in self._FITTED_ARRAYS:
            arrays = getattr(self, name)
            if isinstance(arrays, list):
                setattr(self, name, [freeze(a) for a in arrays])
        kept = getattr(self, "_target_output_layer", None)
        if isinstance(kept, tuple):
            self._target_output_layer = tuple(freeze(a) for a in kept)

    def _checked_fitted_arrays(self):
        """The fitted arrays by attribute, checked: lists of float arrays
        whose layers chain from ``n_features_in_`` to ``n_outputs_``. Copies
        of the lists, read once: an item another thread assigns meanwhile
        (``est.coefs_[0] = W``) is in none of them, or in the fold too."""
        check_is_fitted(self)
        groups = {
            name: list(value) if isinstance(value, (list, tuple)) else value
            for name, value in ((n, getattr(self, n)) for n in self._FITTED_ARRAYS)
        }
        coefs = groups["coefs_"]
        if not isinstance(coefs, (list, tuple)) or not coefs:
            raise ValueError("coefs_ must be a non-empty list of arrays.")
        units = [self._n_network_inputs()] + [np.shape(W)[-1] for W in coefs]
        expected = {
            "coefs_": list(zip(units[:-1], units[1:])),
            "intercepts_": [(u,) for u in units[1:]],
            "gammas_": [(u,) for u in units[1:-1]],
            "running_means_": [(u,) for u in units[1:-1]],
            "running_vars_": [(u,) for u in units[1:-1]],
        }
        for name, arrays in groups.items():
            shapes = (
                [np.shape(a) for a in arrays]
                if isinstance(arrays, (list, tuple))
                else None
            )
            # float16 to float64 (computed in float32 at least); numpy's
            # longdouble is beyond the kernels.
            floats = shapes is not None and all(
                isinstance(a, np.ndarray)
                and a.dtype.kind == "f"
                and a.dtype.itemsize <= 8
                for a in arrays
            )
            if shapes != expected[name] or not floats or units[-1] != self.n_outputs_:
                got = (
                    f"shapes {shapes}"
                    if shapes != expected[name]
                    else "dtypes ["
                    + ", ".join(
                        str(getattr(a, "dtype", type(a).__name__)) for a in arrays
                    )
                    + "]"
                    if not floats
                    else f"n_outputs_={self.n_outputs_}"
                )
                raise ValueError(
                    f"The fitted attributes do not describe the network of "
                    f"n_features_in_={self.n_features_in_} and n_outputs_="
                    f"{self.n_outputs_}: {name} must be a list of float (at most "
                    f"float64) arrays of shapes {expected[name]}, got {got}."
                )
        return groups

    def _folded_network(self, input_dtype=None):
        """The inference network of the fitted attributes, folded for inputs
        of ``input_dtype`` (it computes in that dtype and the weights'
        together: float64 in, float64 out, as scikit-learn's MLP); cached
        while those attributes are the same arrays that nothing can change
        (:func:`_unchangeable`: the fitted arrays, see :func:`_read_only`;
        the cache holds them weakly, and an entry goes with them). The cache
        lives outside the estimator: predicting changes nothing in it, and a
        snapshot of the estimator (see ``_reads_fitted_state``) finds the
        entry of the estimator it was taken from."""
        groups = self._checked_fitted_arrays()
        arrays = tuple(a for name in self._FITTED_ARRAYS for a in groups[name])
        key = (self.bn_epsilon, self.activation, self.out_activation_)
        # Keyed by the first coefficient array (its id, while it lives) and
        # the input's dtype, and holding every array weakly: an entry goes
        # with the arrays it was folded from.
        cache = _FOLDED_NETWORKS.get(id(arrays[0]), {})
        input_key = None if input_dtype is None else np.dtype(input_dtype)
        # Anything but a view of a read-only buffer may have changed since a
        # fold (an array that owns its values can be made writable again):
        # such arrays are folded at every call, never cached.
        cacheable = all(map(_unchangeable, arrays))

        def valid(entry):
            return (
                cacheable
                and entry[0] == key
                and len(entry[1]) == len(arrays)
                and all(ref() is a for ref, a in zip(entry[1], arrays))
            )

        cached = cache.get(input_key)
        if cached is not None and valid(cached):
            return cached[2]
        # The widest of the input's and the attributes' (a float32 model
        # gives float64 input float64 output, as scikit-learn's MLP), and
        # float32 at least.
        dtype = np.result_type(
            input_dtype or np.float32, *(a.dtype for a in arrays), np.float32
        )
        # An input dtype not seen yet may compute in the dtype of a fold
        # already made: that one, not a copy.
        same = [e for e in cache.values() if e[2].coefs[0].dtype == dtype and valid(e)]
        if same:
            folded = same[0][2]
        else:
            folded = FoldedNetwork.fold(
                *groups.values(),
                self.bn_epsilon,
                self.activation,
                self.out_activation_,
                dtype=dtype,
            )
        if cacheable:
            # A new dict, swapped in at once: safe under concurrent predicts.
            refs = tuple(weakref.ref(a) for a in arrays)
            if not cache:
                weakref.finalize(arrays[0], _FOLDED_NETWORKS.pop, id(arrays[0]), None)
            _FOLDED_NETWORKS[id(arrays[0])] = {**cache, input_key: (key, refs, folded)}
        return folded

    def _predict_raw(self, X):
        """Output-layer activations for validated ``X``."""
        return self._folded_network(X.dtype).predict(X)

    def __setstate__(self, state):
        super().__setstate__(state)
        if hasattr(self, "coefs_"):
            self._freeze_fitted_arrays()

    # ------------------------------------------------------------------
    # Public API shared by both estimators

    @_reads_fitted_state
    def to_sklearn(self):
        """Return an equivalent fitted scikit-learn MLP with batch norm folded in.

        Each hidden layer's batch norm (running statistics, ``gammas_`` and
        ``intercepts_``) is folded into its weights: ``W * gamma / sqrt(var +
        eps)`` and ``beta - gamma * mean / sqrt(var + eps)``. The result
        predicts what this model predicts (up to rounding) and works with
        anything that reads scikit-learn MLPs.

        With input handling (``input_preprocessing='auto'``), the result is
        a fitted :class:`~sklearn.pipeline.Pipeline` of scikit-learn classes
        that takes the same raw input: the numeric features go through a
        :class:`~sklearn.preprocessing.StandardScaler` (``mean_`` the
        centres, ``scale_`` the robust scales times the clip ``c``), a
        :class:`~sklearn.preprocessing.FunctionTransformer` of
        :func:`numpy.tanh` and a
        :class:`~sklearn.impute.SimpleImputer` (NaN to 0, with the missing
        indicators), the categorical ones through a
        :class:`~sklearn.preprocessing.OneHotEncoder` (``handle_unknown=
        'ignore'``), and the features of the piecewise-linear encoding through
        the same scaler, tanh and imputer (without indicators) and a
        :class:`~sklearn.preprocessing.SplineTransformer` with their knots,
        joined by a :class:`~sklearn.compose.ColumnTransformer` when there are
        categorical or encoded features; the last step is the MLP, whose
        first layer's rows of the numeric features are multiplied by ``c``.
        A model fitted on sparse input has the imputer alone, behind a
        ``StandardScaler(with_mean=False, with_std=False)`` that changes no
        value and reads integer and bool input as floats, as the network
        does. scikit-learn's scaler keeps float16 input in float16 (the
        network reads it as float64): cast such input to float32 or float64
        for the twin to predict as the model does. A model fitted
        on dense input takes sparse input, but its Pipeline does not (the
        scaler centres: scikit-learn raises a ``ValueError``); pass it dense
        input. Built under scikit-learn's ``transform_output='pandas'`` (or
        ``'polars'``), its steps keep that output (``set_output``) and its
        MLP knows the names of the columns they give it, so that it predicts
        without warnings under any later configuration.
        Nothing in it needs this package to load.

        Returns
        -------
        mlp : MLPClassifier, MLPRegressor or Pipeline
            Fitted, with ``coefs_`` and ``intercepts_`` the folded weights;
            with input handling, a Pipeline ending in that MLP. A regressor
            that standardized its target (``target_scale_``) gives its
            losses, those of the standardized target, with ``best_loss_``
            set to ``inf``: the twin's warm start compares its own losses,
            in the target's units, from afresh.
        """
        check_is_fitted(self)
        handling = _preprocessing.InputHandling.of(self)
        mlp = self._sklearn_class()(**self._sklearn_params())
        folded = self._folded_network()
        mlp.coefs_ = [c.copy() for c in folded.coefs]
        mlp.intercepts_ = [b.copy() for b in folded.intercepts]
        if handling is not None:
            steps, fold = _preprocessing.sklearn_steps(
                handling, getattr(self, "feature_names_in_", None), mlp.coefs_[0].dtype
            )
            mlp.coefs_[0][: handling.n_numeric] *= fold
            mlp.coefs_[0] = mlp.coefs_[0][_preprocessing.twin_input_rows(handling)]
            mlp.n_features_in_ = mlp.coefs_[0].shape[0]
        raw_features = (
            ("n_features_in_", "feature_names_in_") if handling is None else ()
        )
        for name in raw_features + (
            "n_outputs_",
            "n_layers_",
            "out_activation_",
            "loss_",
            "best_loss_",
            "loss_curve_",
            "validation_scores_",
            "best_validation_score_",
            "t_",
            "n_iter_",
        ):
            if hasattr(self, name):
                value = getattr(self, name)
                if isinstance(value, list):
                    value = list(value)
                elif isinstance(value, np.ndarray):
                    value = value.copy()  # the twin is edited apart from the model
                setattr(mlp, name, value)
        # Private state scikit-learn's partial_fit and warm start read.
        mlp._no_improvement_count = getattr(self, "_no_improvement_count", 0)
        if hasattr(self, "target_mean_") and mlp.best_loss_ is not None:
            # The losses are the standardized target's, the twin's the
            # target's own: its warm start compares its own from afresh.
            mlp.best_loss_, mlp._no_improvement_count = np.inf, 0
        mlp._best_coefs = [c.copy() for c in mlp.coefs_]
        mlp._best_intercepts = [b.copy() for b in mlp.intercepts_]
        self._copy_sklearn_extras(mlp)
        if handling is None:
            return mlp
        twin = Pipeline(steps + [("mlp", mlp)])
        output = get_config()["transform_output"]
        if output in ("pandas", "polars"):
            # The steps hand the MLP a frame, under any later configuration
            # too (their output is set): the MLP knows its column names.
            twin[:-1].set_output(transform=output)
            mlp.feature_names_in_ = np.asarray(
                twin[:-1].get_feature_names_out(), dtype=object
            )
        return twin

    @_restore_on_failure
    def recompute_bn_stats(self, X, sample_weight=None):
        """Replace the running statistics by the exact statistics of `X`.

        Layer by layer, in inference mode: for each hidden layer ``i``,
        ``running_means_[i]`` and ``running_vars_[i]`` become the mean and
        the unbiased variance of its values before normalization, ``z = a @
        coefs_[i]``, over the rows of `X`, where ``a`` is the layer's input
        computed with the layers below already normalizing with their new
        statistics. Afterwards the inference network standardizes `X`
        exactly: over `X`, every hidden unit's ``(z - running_means_[i]) /
        sqrt(running_vars_[i])`` has mean 0 and variance 1 (before
        ``bn_epsilon``). See the Notes of the class for the formulas.

        Use it after a :meth:`partial_fit` stream, on fresh data of the
        target distribution, or after changing the weights; ``fit`` does it
        on its training rows with ``bn_stats='population'``. ``predict``,
        ``score`` and :meth:`to_sklearn` use the new statistics. A failed
        call leaves the model unchanged.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The rows, validated as :meth:`predict` validates them (feature
            names, number of features; no infinity, and no NaN without the
            input handling). At least two rows, a row's weight counting
            as its repeats, as for the running variance: two rows of
            positive weight, or weights that sum to 2 or more (a single row
            of weight 2 or more gives variances of 0).

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the rows, acting as repeat counts (as in
            ``fit``), not all zero.

        Returns
        -------
        self : object
            The model, with new ``running_means_`` and ``running_vars_``
            (new read-only arrays, in the model's dtype).
        """
        X = self._validate_X_predict(X)
        groups = self._checked_fitted_arrays()
        model_dtype = groups["coefs_"][0].dtype
        # The dtype predict computes in (float64 input to a float32 model:
        # float64), so that predict standardizes these rows exactly.
        dtype = np.result_type(X.dtype, model_dtype)
        if sample_weight is not None:
            sample_weight = _checked_weights(sample_weight, X, dtype, "sample_weight")
        means, variances = population_statistics(
            X,
            sample_weight,
            coefs=groups["coefs_"],
            gammas=groups["gammas_"],
            intercepts=groups["intercepts_"],
            bn_epsilon=self.bn_epsilon,
            activation=self.activation,
            dtype=dtype,
            stats_dtype=model_dtype,
        )
        self.running_means_ = [_read_only(a) for a in means]
        self.running_vars_ = [_read_only(a) for a in variances]
        return self

    def _sklearn_params(self):
        names = [
            "hidden_layer_sizes",
            "activation",
            "solver",
            "alpha",
            "batch_size",
            "learning_rate",
            "learning_rate_init",
            "power_t",
            "max_iter",
            "shuffle",
            "random_state",
            "tol",
            "verbose",
            "warm_start",
            "momentum",
            "nesterovs_momentum",
            "early_stopping",
            "validation_fraction",
            "beta_1",
            "beta_2",
            "epsilon",
            "n_iter_no_change",
        ]
        params = {name: getattr(self, name) for name in names}
        if isinstance(params["early_stopping"], str):  # "auto"
            # What this fit did: it kept validation scores if it stopped early.
            params["early_stopping"] = self.validation_scores_ is not None
        if params["learning_rate"] == "cosine":
            # scikit-learn has no cosine schedule; the twin is fitted, and
            # continued training steps at learning_rate_init.
            params["learning_rate"] = "constant"
        return params

    def _copy_sklearn_extras(self, mlp):
        pass

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = self.input_preprocessing == "auto"
        return tags


_COMMON_PARAMS_DOC = """
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(512,)
        The ith element is the number of units of the ith hidden layer. Each
        hidden layer is ``linear (no bias) -> batch norm -> activation``.
        (scikit-learn's MLP: ``(100,)``. This default and those of ``alpha``,
        ``batch_size``, ``learning_rate``, ``learning_rate_init`` and
        ``max_iter`` were chosen on real tabular data: see the user guide's
        "Defaults for tabular data".)

    activation : {'identity', 'logistic', 'tanh', 'relu'}, default='relu'
        Activation function of the hidden layers, applied after batch norm.

    solver : {'adam', 'sgd'}, default='adam'
        The minibatch optimizer: ``'adam'`` (Kingma & Ba) or ``'sgd'``
        (stochastic gradient descent with momentum). scikit-learn's
        ``'lbfgs'`` is not offered: batch norm is defined on minibatches.

    alpha : float, default=0.01
        Strength of the L2 penalty on the coefficients ``coefs_`` (not on
        ``gammas_`` or ``intercepts_``), divided by the minibatch size (its
        weight sum when weighted) when added to the loss.

    batch_size : int >= 2 or 'auto', default=128
        Size of the minibatches; ``'auto'`` is ``min(200, n_samples)``. A
        value larger than the data is clipped to it, with a warning unless
        it is the default. A trailing minibatch of a single sample joins the
        previous one.

    learning_rate : {'constant', 'invscaling', 'adaptive', 'cosine'}, default='cosine'
        Learning-rate schedule. ``'constant'``: ``learning_rate_init``.
        ``'invscaling'`` and ``'adaptive'`` (``solver='sgd'`` only; Adam
        ignores them, as scikit-learn's does): divided by ``(t + 1) **
        power_t`` after each epoch (``t`` samples seen), or divided by 5 each
        time ``n_iter_no_change`` epochs fail to improve by ``tol``.
        ``'cosine'`` (both solvers): the ``t``-th step of the optimizer in
        ``fit`` (from 0, counted over the minibatches trained: a minibatch
        whose weights sum to zero, or lie on one row, takes no step, and the
        schedule then ends above 0) uses ``learning_rate_init * (1 + cos(pi * t
        / T)) / 2``, where ``T = max_iter *`` the minibatches of an epoch over
        the training rows (after the validation split of early stopping); a fit
        that stops early ends the schedule where it is, and ``warm_start``
        starts it again at ``t = 0``. For Adam, the bias corrections multiply
        this rate: the step size is ``lr_t * sqrt(1 - beta_2 ** s) / (1 -
        beta_1 ** s)`` at Adam's ``s``-th step. :meth:`partial_fit` steps at
        ``learning_rate_init``.

    learning_rate_init : float, default=0.002
        The initial learning rate (the step size of Adam, before its bias
        corrections).

    power_t : float, default=0.5
        Exponent of the ``'invscaling'`` schedule.

    max_iter : int, default=40
        Maximum number of epochs (passes over the data).

    shuffle : bool, default=True
        Whether to shuffle the sample order at each epoch. Minibatches are
        gathered through the shuffled index; X is never copied.

    random_state : int, RandomState instance or None, default=None
        Controls weight initialization, the train/validation split of early
        stopping and the shuffling. Pass an int for reproducible results.

    tol : float, default=1e-4
        Training stops when the loss (or validation score, with early
        stopping) does not improve by at least ``tol`` for
        ``n_iter_no_change`` consecutive epochs.

    verbose : bool, default=False
        Print ``Iteration N, loss = ...`` after each epoch.

    warm_start : bool, default=False
        Start ``fit`` from the previous solution (weights and running
        statistics) instead of a fresh initialization.

    momentum : float, default=0.9
        Momentum of ``solver='sgd'``, in [0, 1].

    nesterovs_momentum : bool, default=True
        Whether ``solver='sgd'`` uses Nesterov's momentum.

    early_stopping : bool or 'auto', default=False
        Hold out ``validation_fraction`` of the training data and stop when
        the validation score does not improve by ``tol`` for
        ``n_iter_no_change`` epochs; the best weights are restored.
        ``'auto'`` (HistGradientBoosting's rule) is on for a :meth:`fit` on
        more than 10,000 samples and off otherwise, and off in
        :meth:`partial_fit` (where ``True`` raises). Whether a fit stopped
        early shows in ``validation_scores_`` (None without).

    validation_fraction : float, default=0.1
        Fraction of the training data held out for early stopping.

    beta_1 : float, default=0.9
        Exponential decay of Adam's first-moment estimates, in [0, 1).

    beta_2 : float, default=0.999
        Exponential decay of Adam's second-moment estimates, in [0, 1).

    epsilon : float, default=1e-8
        Adam's numerical-stability constant.

    n_iter_no_change : int, default=10
        Number of epochs without ``tol`` improvement before stopping.

    bn_momentum : float or None, default=0.1
        Momentum of the running statistics (PyTorch's convention):
        ``running = (1 - bn_momentum) * running + bn_momentum * batch``, with
        the unbiased batch variance. ``None``: their cumulative average over
        the minibatches seen, as PyTorch's ``momentum=None``: after the
        ``k``-th, ``running += (batch - running) / k``. ``fit`` starts the
        count again; ``partial_fit`` goes on with it.

    bn_epsilon : float, default=1e-5
        Added to the variance before the square root in batch norm.
"""

# After bn_stats (the signatures' order).
_LAYER_PARAMS_DOC = """
    dropout : float in [0, 1) or array-like of shape (n_layers - 2,), default=0.0
        Inverted dropout on each hidden layer's output, after its activation,
        during training only: each unit is kept with probability ``1 - p``
        and the kept ones are scaled by ``1 / (1 - p)``; a float applies the
        same rate ``p`` to every hidden layer. The masks depend on
        ``random_state`` (a seed drawn from it only when a rate is not 0), the
        optimizer's step, the layer, the row and the unit: a fit is
        reproducible for a given ``random_state`` and number of threads.
        Prediction never drops anything.

    virtual_batch_size : int >= 2 or None, default=None
        Ghost batch normalization (TabNet's ``virtual_batch_size``): each
        training minibatch of ``m`` rows is split into ``n = max(1, min(ceil(m
        / virtual_batch_size), m // 2))`` consecutive chunks, as
        ``numpy.array_split`` splits them (sizes differing by at most one,
        none below two rows). Every hidden layer normalizes each chunk with
        that chunk's statistics, and the running statistics are updated once
        per chunk, in order, with ``bn_momentum`` (what applying PyTorch's
        ``BatchNorm1d`` to each chunk in turn does). ``None``, or a value of
        at least ``batch_size`` (after its clipping to the number of rows):
        plain batch norm, also on a minibatch that a trailing single row
        joined.

    weight_decay : float >= 0, default=0.0
        Decoupled weight decay of the coefficients ``coefs_`` (Loshchilov &
        Hutter, 2019 [4]_; PyTorch's ``AdamW``), for both solvers: at every
        step the gradient is taken at the current coefficients ``W``, then
        ``W_new = W * (1 - lr_t * weight_decay) + step``, where ``step`` is
        the optimizer's usual update from that gradient and ``lr_t`` the
        schedule's learning rate at that step (``learning_rate_init`` for
        ``learning_rate='constant'``; not Adam's bias-corrected step size).
        ``gammas_`` and ``intercepts_`` are not decayed, and ``alpha`` keeps
        its meaning (an L2 term of the loss, whose gradient Adam rescales).
"""

_INPUT_DOC = """
    input_preprocessing : {'auto'} or None, default='auto'
        ``'auto'``: the network's own input handling, learned in :meth:`fit`
        (kept when ``warm_start`` continues a fitted model) or in the first
        :meth:`partial_fit`, then fixed, and applied in every prediction
        (see the user guide's "Input handling" and the Notes). Numeric
        features are centred on their median, scaled by their interquartile
        range / 1.3489795 and smoothly clipped to +-3 of these robust standard
        deviations, ``3 * tanh(z / 3)``; NaN becomes the centre, with a
        missing-indicator column for each feature that had NaN in ``fit``;
        categorical features (``categorical_features``) are one-hot encoded.
        ``sample_weight`` weights what it learns as repeat counts. Sparse
        input is passed through (NaN becomes 0, with its indicators), so that
        it stays sparse. ``None``: ``X`` goes straight into the first layer,
        and must be numeric without NaN.

    categorical_features : 'from_dtype', array-like or None, default='from_dtype'
        The categorical features, with
        :class:`~sklearn.ensemble.HistGradientBoostingClassifier`'s meaning:
        ``'from_dtype'``: the pandas ``category`` columns and the polars
        ``Categorical`` and ``Enum`` columns of a DataFrame (none for other
        input); an array-like: their indices, their names (DataFrame input)
        or a boolean mask of shape (n_features,); ``None``: none. Needs
        ``input_preprocessing='auto'``, which one-hot encodes them: categories
        are matched by value (never by a pandas dtype's codes), NaN is a
        category of its own, at most the 100 heaviest categories of a feature
        (by total sample weight) get a column, and any other value (unseen in
        ``fit``, or beyond the 100) is encoded as all zeros. A DataFrame
        column of strings that is not categorical raises a ``ValueError``.
"""

_INPUT_ATTRIBUTES_DOC = """
    is_categorical_ : ndarray of shape (`n_features_in_`,) of bool
        Which raw features are categorical (``input_preprocessing='auto'``
        only, as the next ones).

    input_center_ : ndarray of shape (n_numeric_features,)
        The centre of each numeric feature (in the order of the raw
        columns): its weighted median; 0 for sparse input. float64, as the
        other statistics of the input handling, whatever the input's dtype
        (the network's own arrays follow the input's).

    input_scale_ : ndarray of shape (n_numeric_features,)
        The robust standard deviation of each numeric feature: its weighted
        interquartile range / 1.3489795 (twice the standard normal's 0.75
        quantile), or its weighted standard deviation where that range is 0, or
        1 for a constant feature; 1 for sparse input. At most half the largest
        number of the data's dtype divided by `input_clip_`, so that the
        divisor stays finite.

    input_clip_ : float
        The smooth clip's bound ``c``, in robust standard deviations: a
        numeric feature enters the network as ``c * tanh((x - center) /
        (scale * c))``, computed in the input's dtype, as ``to_sklearn()``
        and the ONNX export compute it (a value whose distance to the centre
        is beyond that dtype's range, within a factor 2 of its largest
        number, enters as ``+-c``). ``inf`` for sparse input (passed through).

    input_missing_indicators_ : ndarray of int
        The raw indices of the numeric features that get a missing indicator
        (1 where NaN, else 0): those with NaN in rows of positive weight
        during ``fit``.

    input_categories_ : list of ndarray
        For each categorical feature, the categories that get a one-hot
        column, in the order of the columns: sorted by value, NaN last;
        float64 when they are numbers (booleans as 0.0 and 1.0, as
        scikit-learn's encoder reads them), else objects.

    input_spline_features_ : ndarray of int
        The raw indices of the numeric features that get a piecewise-linear
        encoding (7 hat columns each, after the one-hot columns): none
        unless there are at most 32 numeric features and the training rows
        number at least 500 per numeric feature, and only features whose
        knots are at least 1e-4 apart.

    input_spline_knots_ : ndarray of shape (n_spline_features, 8)
        float64. Each encoded feature's knots: its weighted quantiles ``q``
        at the levels 0, 1/7, ..., 1, taken to the clipped scale,
        ``tanh((q - center) / (scale * c))``. Hat ``k`` of a feature is 1 at
        knot ``k`` and 0 at knots ``k - 1`` and ``k + 1``; the first hat
        stays 1 below the first knot
        (the degree-1 B-splines of scikit-learn's ``SplineTransformer``,
        ``extrapolation='constant'``, ``include_bias=False``).
"""

_CLASS_WEIGHT_DOC = """
    class_weight : dict, 'balanced' or None, default=None
        Weights of the classes, as in
        :class:`~sklearn.linear_model.LogisticRegression`: row ``j`` of class
        ``c`` weighs ``sample_weight[j] * class_weight[c]`` (1 for a missing
        ``sample_weight`` or a class not in the dict) in the loss, the batch
        statistics and early stopping's validation score. ``'balanced'``
        gives class ``c`` the weight ``n_samples / (n_classes *
        n_samples_in_c)``, from the ``y`` given to :meth:`fit`. Exactly as
        passing ``sample_weight * compute_sample_weight(class_weight, y)`` as
        ``sample_weight`` (see
        :func:`~sklearn.utils.class_weight.compute_sample_weight`; the
        product is taken in float64). A label of the dict that is not a class
        raises a ``ValueError``. For multilabel targets only ``'balanced'``
        is accepted, with scikit-learn's meaning for several outputs: for
        each label, the balanced weight of the row's 0 or 1, multiplied over
        the labels. :meth:`partial_fit` looks each row's class up in the dict
        (a batch need not hold every class) and refuses ``'balanced'``, as
        :class:`~sklearn.linear_model.SGDClassifier` does: the class
        frequencies of the whole stream are unknown.
"""

_LABEL_SMOOTHING_DOC = """
    label_smoothing : float in [0, 1), default=0.0
        Label smoothing (Szegedy et al., 2016): the network is trained on
        targets ``(1 - label_smoothing) * onehot + label_smoothing / K`` with
        K classes (softmax output, multiclass), and ``y * (1 -
        label_smoothing) + label_smoothing / 2`` per output for binary and
        multilabel targets (logistic outputs), so that it is not pushed
        towards infinitely confident logits. ``loss_`` and ``loss_curve_``
        are the log loss against these targets; the early-stopping score,
        ``score`` and the predictions use the true labels. As PyTorch's
        ``CrossEntropyLoss(label_smoothing=...)`` for the multiclass case.
"""

_BN_STATS_DOC = """
    bn_stats : {'running', 'population'}, default='running'
        The statistics the trained network normalizes with at prediction.
        ``'running'``: the running averages of the minibatch statistics
        (``bn_momentum``). ``'population'``: at the end of :meth:`fit` (after
        early stopping has restored the best weights), the running
        statistics are replaced by the exact statistics of the training rows
        (the validation split excluded; weighted by the fit's sample and
        class weights), computed as :meth:`recompute_bn_stats` computes them
        (see Notes). Training is
        the same either way: only ``running_means_`` and ``running_vars_``
        differ. :meth:`partial_fit` keeps the running statistics; call
        :meth:`recompute_bn_stats` after a stream.
"""

# The regressor's target standardization (its fitted state).
_TARGET_ATTRIBUTES = ("target_mean_", "target_scale_")


def _largest_magnitude(X):
    """The largest absolute value of a dense or sparse ``X`` (0 when empty)."""
    values = X.data if sp.issparse(X) else X
    return float(np.max(np.abs(values), initial=0.0))


def _target_statistics(Y, sample_weight):
    """Each column's weighted mean and standard deviation (float64), the
    deviation 1 for a column constant to ``Y``'s rounding."""
    Y64 = Y.astype(np.float64)
    # Divided by each column's largest magnitude first: a spread beyond the
    # square root of the largest float does not overflow its square.
    peak = np.max(np.abs(Y64), axis=0)
    peak[peak == 0] = 1.0
    Z = Y64 / peak
    mean = np.average(Z, axis=0, weights=sample_weight)
    scale = np.sqrt(np.average((Z - mean) ** 2, axis=0, weights=sample_weight))
    constant = ~(scale > 10 * np.finfo(Y.dtype).eps * np.abs(mean))
    mean, scale = mean * peak, scale * peak
    scale[constant] = 1.0
    return mean, scale


_COMMON_ATTRIBUTES_DOC = """
    loss_ : float
        The loss of the last epoch (mean over its minibatches, weighted by
        their rows, L2 term included). Skipped minibatches (see the notes
        on sample weights below) do not count; an epoch that could
        train none keeps the loss before it, and a fit whose first epoch
        can train none raises a ``ValueError``.

    best_loss_ : float or None
        The minimum loss reached; None with ``early_stopping=True``.

    loss_curve_ : list of shape (`n_iter_`,)
        The loss of each epoch.

    validation_scores_ : list of shape (`n_iter_`,) or None
        Score on the held-out set at each epoch with ``early_stopping=True``,
        else None.

    best_validation_score_ : float or None
        Best validation score with ``early_stopping=True``, else None.

    t_ : int
        The number of training samples seen.

    coefs_ : list of shape (n_layers - 1,)
        ``coefs_[i]`` is the weight matrix of layer ``i``, shape
        ``(units[i], units[i + 1])``.

    intercepts_ : list of shape (n_layers - 1,)
        For a hidden layer, the batch-norm shift ``beta`` (which replaces the
        linear bias); for the output layer, its bias.

    gammas_ : list of shape (n_layers - 2,)
        The batch-norm scale ``gamma`` of each hidden layer.

    running_means_ : list of shape (n_layers - 2,)
        Running mean of ``a @ coefs_[i]`` in each hidden layer, used at
        inference; with ``bn_stats='population'`` or after
        :meth:`recompute_bn_stats`, its exact mean over the rows given.

    running_vars_ : list of shape (n_layers - 2,)
        Running (unbiased) variance of ``a @ coefs_[i]`` in each hidden
        layer; with ``bn_stats='population'`` or after
        :meth:`recompute_bn_stats`, its exact unbiased variance over the rows
        given.

    n_features_in_ : int
        Number of features seen during fit (raw columns: with input handling,
        ``coefs_[0]`` has instead a row per handled feature).

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string feature names.

    n_iter_ : int
        The number of epochs run.

    n_layers_ : int
        Number of layers, input and output included.

    n_outputs_ : int
        Number of outputs.

    out_activation_ : str
        Name of the output activation.
"""

_NOTES_DOC = """
    Hidden layer ``i`` computes, with ``a`` its input::

        z     = a @ coefs_[i]
        z_hat = (z - mean) / sqrt(var + bn_epsilon)
        a'    = activation(gammas_[i] * z_hat + intercepts_[i])

    where ``mean`` and ``var`` (ddof=0) are the minibatch statistics of
    ``z`` during training (weighted by ``sample_weight``) and the running
    statistics at inference. The running statistics start at 0 and 1 and
    follow PyTorch's update with ``bn_momentum``. ``predict`` runs the
    network with batch norm folded into the weights (see :meth:`to_sklearn`),
    folded from the fitted attributes as they are: reassigning one takes
    effect, and they are read-only arrays.

    Training runs whole epochs in compiled code without the GIL; matrix
    products use BLAS through :mod:`scipy.linalg.cython_blas`. When a
    minibatch is large enough, its work is cut into as many pieces as BLAS
    may run threads (its :mod:`threadpoolctl` limit, also capped by
    ``OMP_NUM_THREADS``, threadpoolctl's ``openmp`` limits and the cores the
    process may use), which the engine's threads take in turn, each calling
    BLAS on its piece, with BLAS limited to one thread during ``fit`` and
    ``partial_fit``; the results depend on the pieces, not on the threads
    (see the user guide's "Threads"). Prediction runs BLAS on one thread
    too, the package's threads sharing the rows of a large prediction. A
    refit publishes the new model at once: a prediction or a ``to_sklearn()``
    running in another thread meanwhile uses the old model or the new one.
    float32 input is trained and predicted in float32; float64 input to a
    float32 model is predicted in float64. Ctrl-C stops a fit between two
    minibatches, keeping what was trained (see the user guide).

    Every minibatch needs at least 2 samples: ``batch_size`` must be >= 2,
    and fitting on a single sample raises ``ValueError``.

    Sample weights act as repeat counts: they weight the loss and the batch
    statistics, and the unbiased correction ``m / (m - 1)`` of the running
    variance uses ``m`` = the minibatch's weight sum. When that sum is below
    2 (weights normalized to sum to 1, say), ``m`` is the number of rows with
    positive weight instead. A minibatch whose weights sum to zero is skipped
    (it holds nothing to learn from). So is one whose weight lies on a
    single row (batch norm cannot normalize it with its own statistics; a
    ghost-batch chunk of the kind has no gradient and leaves the running
    statistics alone): ``fit`` and ``partial_fit`` then warn, once, with how
    many there were.

    Population statistics (``bn_stats='population'``, and
    :meth:`recompute_bn_stats`): over rows ``j`` of weights ``s_j`` (1
    without weights), with ``S = sum_j s_j`` and ``z_j = a_j @ coefs_[i]``,
    hidden layer ``i`` gets::

        running_means_[i] = sum_j s_j z_j / S
        running_vars_[i]  = sum_j s_j (z_j - running_means_[i]) ** 2 / S * m / (m - 1)

    with ``m = S`` (the number of rows of positive weight when ``S < 2``),
    the running variance's rule. The layers are done in order, and ``a_j``
    is computed by the inference network whose layers below ``i`` already
    normalize with their new statistics, so that the network standardizes
    these rows exactly: over them, every hidden unit's ``(z - mean) /
    sqrt(var)`` has mean 0 and unbiased variance 1. The batch-norm paper's
    Algorithm 2 [1]_ fixes the inference network's statistics from the
    training data by averaging minibatch statistics, as detectron2's
    "precise BN" and PyTorch's ``torch.optim.swa_utils.update_bn`` do with
    the network in training mode; these are exact over every row, with the
    layers below already in their inference form. The rows go
    through the network once per hidden layer, up to that layer, in blocks
    of at most 8192 rows: no copy of ``X`` is made (a CSC matrix is
    converted to CSR once, as prediction does). The products run with BLAS
    on one thread, the statistics are accumulated in float64 and stored in
    the model's dtype.

    With scikit-learn 1.9 or later, ``set_callbacks`` registers
    :mod:`sklearn.callback` callbacks (``ProgressBar``, ``ScoringMonitor``,
    or one's own). :meth:`fit` is a task with one subtask per epoch (at most
    ``max_iter``): each epoch's hooks get the training rows (the validation
    split excluded), their labels and, as ``metadata``,
    ``{'sample_weight': ...}`` with the fit's weights (class weights
    included), or ``None`` rather than a dict when unweighted, and a
    ``fitted_estimator`` that predicts as the model ``fit`` would publish if
    it stopped there (the best weights so far under early stopping, the
    population statistics with ``bn_stats='population'``), built only for
    the callbacks that ask for it. A callback whose ``on_fit_task_end``
    returns True at an epoch stops training after that epoch, which is then
    the last of ``n_iter_`` and ``loss_curve_``. Each :meth:`partial_fit`
    call is one task. Without callbacks, a fit does no per-epoch work for
    them. ``ProgressBar`` needs ``rich`` (the ``progress`` extra).
"""

_REFERENCES_DOC = """
    .. [1] Ioffe, S. and Szegedy, C. (2015). "Batch Normalization:
       Accelerating Deep Network Training by Reducing Internal Covariate
       Shift." :arxiv:`1502.03167`.
    .. [2] LeCun, Y., Bottou, L., Orr, G. and Mueller, K. (1998). "Efficient
       BackProp." In Neural Networks: Tricks of the Trade.
    .. [3] Kingma, D. and Ba, J. (2014). "Adam: A method for stochastic
       optimization." :arxiv:`1412.6980`.
    .. [4] Loshchilov, I. and Hutter, F. (2019). "Decoupled Weight Decay
       Regularization." :arxiv:`1711.05101`.
"""


class MLPBNClassifier(ClassifierMixin, _BaseMLPBN):
    __doc__ = (
        """Multilayer perceptron classifier with batch-normalized hidden layers.

    The parameters, methods and behaviour of scikit-learn's
    :class:`~sklearn.neural_network.MLPClassifier` with the ``'adam'`` and
    ``'sgd'`` solvers (six defaults differ: ``hidden_layer_sizes``,
    ``alpha``, ``batch_size``, ``learning_rate``, ``learning_rate_init`` and
    ``max_iter``), plus ``bn_momentum``, ``bn_epsilon``, ``bn_stats``,
    ``weight_decay``, ``dropout``, ``virtual_batch_size``,
    ``label_smoothing``, ``class_weight``, ``input_preprocessing`` and
    ``categorical_features``: every hidden layer is ``linear -> batch norm
    -> activation`` (Ioffe & Szegedy, 2015), with the batch-norm scale and
    shift learned by backpropagation.

    Read more in the :doc:`user guide </user_guide/mlp>`.

    Parameters
    ----------"""
        + _COMMON_PARAMS_DOC
        + _BN_STATS_DOC
        + _LAYER_PARAMS_DOC
        + _CLASS_WEIGHT_DOC
        + _LABEL_SMOOTHING_DOC
        + _INPUT_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray or list of ndarray of shape (n_classes,)
        Class labels for each output.
"""
        + _COMMON_ATTRIBUTES_DOC
        + _INPUT_ATTRIBUTES_DOC
        + """
    See Also
    --------
    MLPBNRegressor : The regressor twin.
    sklearn.neural_network.MLPClassifier : The same network without batch norm.
    BatchNormScaler : Batch-norm statistics as a transformer.

    Notes
    -----"""
        + _NOTES_DOC
        + """
    References
    ----------"""
        + _REFERENCES_DOC
        + """
    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import train_test_split
    >>> from sklearn_bn import MLPBNClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> X_train, X_test, y_train, y_test = train_test_split(
    ...     X / 16, y, random_state=0)
    >>> clf = MLPBNClassifier(hidden_layer_sizes=(64,), early_stopping=True,
    ...                       random_state=0).fit(X_train, y_train)
    >>> clf.predict(X_test[:3]).shape
    (3,)
    >>> round(clf.score(X_test, y_test), 1) >= 0.9
    True
    """
    )

    _parameter_constraints: dict = {
        **_BaseMLPBN._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
    }

    def __init__(
        self,
        hidden_layer_sizes=(512,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.01,
        batch_size=_DEFAULT_BATCH_SIZE,
        learning_rate="cosine",
        learning_rate_init=0.002,
        power_t=0.5,
        max_iter=40,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        bn_momentum=0.1,
        bn_epsilon=1e-5,
        bn_stats="running",
        dropout=0.0,
        virtual_batch_size=None,
        weight_decay=0.0,
        class_weight=None,
        label_smoothing=0.0,
        input_preprocessing="auto",
        categorical_features="from_dtype",
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            loss="log_loss",
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            bn_stats=bn_stats,
            dropout=dropout,
            virtual_batch_size=virtual_batch_size,
            input_preprocessing=input_preprocessing,
            categorical_features=categorical_features,
            weight_decay=weight_decay,
        )
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validate_X_y(X, y, reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            decoder = (
                self._decoder(self.coefs_[-1].shape[1])
                if hasattr(self, "coefs_")
                else self._label_binarizer
            )
            if decoder is not self._label_binarizer:
                # A reassigned classes_ (see _decoder) is the labels the
                # continued training reads too.
                self._label_binarizer = decoder
                self.classes_ = decoder.classes_
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same "
                        "classes as in the previous call to fit. Previously "
                        f"got {self.classes_}, `y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    "`y` has classes not in `self.classes_`. "
                    f"`self.classes_` has {self.classes_}. 'y' has {classes}."
                )
        return X, y

    def _class_weights_of_rows(self, y, incremental):
        """Each row's class weight (float64), or None without ``class_weight``.

        ``fit`` takes them from ``compute_sample_weight(class_weight, y)``
        (``'balanced'`` from this ``y``; for multilabel targets, the product
        over the labels, as scikit-learn defines it for several outputs);
        ``partial_fit`` looks each row's class up in the dict (a batch need
        not hold every class of ``classes_``).
        """
        class_weight = self.class_weight
        if class_weight is None:
            return None
        if isinstance(class_weight, dict):
            if self._label_binarizer.y_type_.startswith("multilabel"):
                raise ValueError(
                    "class_weight must be 'balanced' or None for multilabel "
                    "targets: a dict {label: weight} names classes of one output, "
                    "and scikit-learn's compute_sample_weight refuses one for "
                    "several outputs."
                )
            classes = set(self.classes_.tolist())
            unknown = [label for label in class_weight if label not in classes]
            if unknown:
                raise ValueError(
                    f"class_weight has labels that are not classes: {unknown}; the "
                    f"classes are {self.classes_.tolist()}."
                )
            for label, weight in class_weight.items():
                if not (
                    isinstance(weight, Real) and np.isfinite(weight) and weight >= 0
                ):
                    raise ValueError(
                        "class_weight values must be non-negative finite numbers, "
                        f"got {weight!r} for class {label!r}."
                    )
            if incremental:
                table = np.array(
                    [float(class_weight.get(c, 1.0)) for c in self.classes_.tolist()]
                )
                return table[_label_indices(self._label_binarizer.classes_, y)]
        return compute_sample_weight(class_weight, y)

    def _encode_targets(self, y, dtype):
        """Training targets as the network's output matrix, built directly in
        ``dtype`` (LabelBinarizer would make an int64 matrix first: 2x the
        memory), with ``label_smoothing`` applied."""
        lb = self._label_binarizer
        if lb.y_type_.startswith("multilabel"):
            Y = lb.transform(y)
            Y = Y.toarray() if sp.issparse(Y) else Y
            Y = np.ascontiguousarray(Y, dtype=dtype)
        elif np.ndim(y) == 2:
            # LabelBinarizer's own check, which the direct encoding skips.
            raise ValueError("The object was not fitted with multilabel input.")
        else:
            index = _label_indices(lb.classes_, y)
            if len(lb.classes_) <= 2:
                Y = (index == 1).astype(dtype).reshape(-1, 1)
            else:
                Y = np.zeros((len(index), len(lb.classes_)), dtype=dtype)
                Y[np.arange(len(index)), index] = 1
        return _smoothed_targets(
            Y, self.label_smoothing, self._out_activation(Y.shape[1])
        )

    def _out_activation(self, n_outputs):
        if self._label_binarizer.y_type_ == "multiclass":
            return "softmax"
        return "logistic"

    def _decode_targets(self, Y):
        return self._label_binarizer.inverse_transform(
            Y.ravel() if Y.shape[1] == 1 else Y
        )

    def _decoder(self, n_outputs):
        """The label binarizer that decodes ``n_outputs`` network outputs
        into ``classes_`` as it is now: a reassigned ``classes_`` takes
        effect, as a reassigned fitted array does (multilabel outputs are
        the indicator matrix, whatever ``classes_`` holds)."""
        lb = self._label_binarizer
        if self.classes_ is lb.classes_ or lb.y_type_.startswith("multilabel"):
            return lb
        classes = _label_array(self.classes_)
        if classes.dtype == lb.classes_.dtype and np.array_equal(classes, lb.classes_):
            return lb
        expected = n_outputs if n_outputs > 1 else len(lb.classes_)
        if classes.ndim != 1 or len(classes) != expected:
            raise ValueError(
                f"classes_ must be a 1-D array of {expected} labels for a network "
                f"of {n_outputs} output{'s' if n_outputs > 1 else ''}, got shape "
                f"{classes.shape}."
            )
        decoder = copy.copy(lb)
        decoder.classes_ = classes
        return decoder

    def _decode_output(self, proba):
        decoder = self._decoder(proba.shape[1])
        if proba.shape[1] == 1:
            proba = proba.ravel()
        return decoder.inverse_transform(proba)

    @staticmethod
    def _score_function(y, y_pred, sample_weight=None):
        return accuracy_score(y, y_pred, sample_weight=sample_weight)

    @staticmethod
    def _sklearn_class():
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier

    def _copy_sklearn_extras(self, mlp):
        decoder = self._decoder(self.coefs_[-1].shape[1])
        mlp.classes_ = np.array(
            self.classes_ if decoder is self._label_binarizer else decoder.classes_
        )
        mlp._label_binarizer = copy.deepcopy(decoder)

    @_fit_context(prefer_skip_nested_validation=True)
    @_restore_on_failure
    @with_callbacks  # inside: torn down before a restore, after a publication
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data. Sparse matrices (CSR or CSC) are used directly
            by the first layer.

        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The class labels, or a label-indicator matrix (multilabel). A
            single class is fitted as :class:`~sklearn.neural_network.MLPClassifier`
            fits it: the model predicts that class.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative sample weights. They weight the loss and the
            batch-norm statistics (as repeat counts would).

        Returns
        -------
        self : object
            The fitted model.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    @_restore_on_failure
    @with_callbacks  # inside: torn down before a restore, after a publication
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The target labels.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative sample weights.

        classes : array of shape (n_classes,), default=None
            Classes across all calls to partial_fit; required on the first
            call. Later calls may leave it out; if given, it must be the same
            (a ``ValueError`` otherwise), as in scikit-learn.

        Returns
        -------
        self : object
            The updated model.

        Notes
        -----
        Each call goes on with the optimizer of the latest :meth:`fit`, or
        of the first ``partial_fit`` (its state, its steps and its
        settings), as scikit-learn's MLP does: ``solver``, ``learning_rate``,
        ``learning_rate_init``, ``power_t``, ``momentum``,
        ``nesterovs_momentum``, ``beta_1``, ``beta_2``, ``epsilon`` and
        ``weight_decay`` set since then take effect at the next :meth:`fit`.
        The loss's settings (``alpha``, ``label_smoothing``) and
        ``bn_momentum`` take effect at once. The parameters a call reads are
        validated at every call (scikit-learn validates them at the first
        only): an invalid value set since then raises scikit-learn's
        ``InvalidParameterError`` and leaves the model as it was.
        """
        if self.class_weight == "balanced":
            raise ValueError(
                "class_weight='balanced' is not supported by partial_fit: the "
                "class frequencies of the whole training set are unknown. Compute "
                "them with compute_class_weight('balanced', classes=classes, y=y) "
                "on the whole target (or a large enough sample of it) and pass the "
                "resulting weights as a dict."
            )
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    @_reads_fitted_state
    def predict(self, X):
        """Predict using the batch-normalized MLP classifier.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_classes)
            The predicted classes.
        """
        X = self._validate_X_predict(X)
        return self._decode_output(self._predict_raw(X))

    @_reads_fitted_state
    def predict_proba(self, X):
        """Probability estimates.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y_prob : ndarray of shape (n_samples, n_classes)
            The probability of each class, in the order of ``classes_``.
        """
        X = self._validate_X_predict(X)
        y_pred = self._predict_raw(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """Return the log of probability estimates.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        log_y_prob : ndarray of shape (n_samples, n_classes)
            ``log(predict_proba(X))``.
        """
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPBNRegressor(RegressorMixin, _BaseMLPBN):
    __doc__ = (
        """Multilayer perceptron regressor with batch-normalized hidden layers.

    The parameters, methods and behaviour of scikit-learn's
    :class:`~sklearn.neural_network.MLPRegressor` with the ``'adam'`` and
    ``'sgd'`` solvers (six defaults differ: ``hidden_layer_sizes``,
    ``alpha``, ``batch_size``, ``learning_rate``, ``learning_rate_init`` and
    ``max_iter``), plus ``bn_momentum``, ``bn_epsilon``, ``bn_stats``,
    ``weight_decay``, ``dropout``, ``virtual_batch_size``,
    ``input_preprocessing`` and ``categorical_features``: every hidden layer
    is ``linear -> batch norm -> activation``.

    Read more in the :doc:`user guide </user_guide/mlp>`.

    Parameters
    ----------
    loss : {'squared_error', 'poisson'}, default='squared_error'
        Half squared error (identity output), or half Poisson deviance
        (exponential output, ``y >= 0``). With several outputs the gradient
        is that of the loss summed over them, and ``loss_`` reports the half
        squared error averaged over outputs and the half Poisson deviance
        summed over them, as scikit-learn does (so that ``tol`` means the
        same).
"""
        + _COMMON_PARAMS_DOC
        + _BN_STATS_DOC
        + _LAYER_PARAMS_DOC
        + _INPUT_DOC
        + """
    Attributes
    ----------"""
        + _COMMON_ATTRIBUTES_DOC
        + _INPUT_ATTRIBUTES_DOC
        + """
    target_mean_ : ndarray of shape (`n_outputs_`,)
        With ``input_preprocessing='auto'`` and ``loss='squared_error'``
        only (as the next one): the mean of each target in the first
        ``fit`` or ``partial_fit`` (weighted by ``sample_weight``, as repeat
        counts; kept by continued fits, as the input handling is, so that a
        stream whose first batch holds a single value of a target only
        centres it). float64.

    target_scale_ : ndarray of shape (`n_outputs_`,)
        The standard deviation of each target there (weighted the same
        way), or 1 for a constant one. The network trains on ``(y -
        target_mean_) / target_scale_``, and the fitted output layer
        (``coefs_[-1]``, ``intercepts_[-1]``) is scaled back into the
        target's units, so that it predicts ``y`` itself; ``loss_``,
        ``loss_curve_`` and ``best_loss_`` are those of the standardized
        target, and so are the output layer's initial draw and its share of
        ``alpha``'s L2 term (on ``coefs_[-1] / target_scale_``).

    See Also
    --------
    MLPBNClassifier : The classifier twin.
    sklearn.neural_network.MLPRegressor : The same network without batch norm.

    Notes
    -----"""
        + _NOTES_DOC
        + """
    With ``input_preprocessing='auto'`` the regressor also standardizes a
    squared-error target (see ``target_mean_`` and ``target_scale_``), so
    that a raw target far from unit scale trains as well as a standardized
    one; the output layer is scaled back, and the predictions are in the
    target's units. With ``input_preprocessing=None`` the target goes in as
    it is (the network's output starts near 0: small initial weights,
    intercepts at 0): standardize it yourself (for instance with
    ``TransformedTargetRegressor(MLPBNRegressor(input_preprocessing=None),
    transformer=StandardScaler())``). Poisson
    targets are never scaled: divide counts of a large mean by a constant.

    References
    ----------"""
        + _REFERENCES_DOC
        + """
    Examples
    --------
    >>> from sklearn.datasets import make_regression
    >>> from sklearn_bn import MLPBNRegressor
    >>> X, y = make_regression(n_samples=200, n_features=10, noise=1.0,
    ...                        random_state=0)
    >>> reg = MLPBNRegressor(hidden_layer_sizes=(32,), max_iter=300,
    ...                      learning_rate_init=0.01, random_state=0)
    >>> reg.fit(X, y).score(X, y) > 0.9
    True
    """
    )

    _parameter_constraints: dict = {
        **_BaseMLPBN._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(512,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.01,
        batch_size=_DEFAULT_BATCH_SIZE,
        learning_rate="cosine",
        learning_rate_init=0.002,
        power_t=0.5,
        max_iter=40,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        bn_momentum=0.1,
        bn_epsilon=1e-5,
        bn_stats="running",
        dropout=0.0,
        virtual_batch_size=None,
        weight_decay=0.0,
        input_preprocessing="auto",
        categorical_features="from_dtype",
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            loss=loss,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            bn_stats=bn_stats,
            dropout=dropout,
            virtual_batch_size=virtual_batch_size,
            input_preprocessing=input_preprocessing,
            categorical_features=categorical_features,
            weight_decay=weight_decay,
        )

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validate_X_y(X, y, reset, y_numeric=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError(
                "Some value(s) of y are negative which is not allowed for "
                "Poisson regression."
            )
        return X, y

    def _out_activation(self, n_outputs):
        return "exp" if self.loss == "poisson" else "identity"

    def _encode_targets(self, y, dtype):
        if sp.issparse(y):
            raise ValueError("MLPBNRegressor takes a dense y: pass y.toarray().")
        with np.errstate(over="ignore"):
            Y = np.ascontiguousarray(y.reshape(len(y), -1), dtype=dtype)
        if not np.isfinite(Y).all():  # finite in float64, not in float32
            raise ValueError(
                f"y has values too large for {np.dtype(dtype).name}, the dtype the "
                "model trains in (that of X): pass float64 X, or scale y."
            )
        return Y

    def _decode_targets(self, Y):
        return Y.ravel() if Y.shape[1] == 1 else Y

    def _decode_output(self, y_pred):
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def _scaled_targets(self, Y, sample_weight, first_pass):
        """With the input handling and the squared error, each target
        standardized: its weighted mean and standard deviation (repeat
        counts, as the input handling's), learned on the first pass and
        stored, then applied."""
        if first_pass:
            for name in _TARGET_ATTRIBUTES + ("_target_output_layer",):
                self.__dict__.pop(name, None)
            if self.input_preprocessing is None or self.loss != "squared_error":
                return Y
            self.target_mean_, self.target_scale_ = _target_statistics(Y, sample_weight)
        if not hasattr(self, "target_mean_"):
            return Y
        with np.errstate(over="ignore", invalid="ignore"):
            centred = Y - self.target_mean_
        if not np.isfinite(centred).all():
            # Predictions in the targets' units would overflow as well.
            raise ValueError(
                "The targets' range is beyond the float64 range (about 1.8e308): "
                "y minus its mean overflows. Scale y down before fitting."
            )
        scaled = centred / self.target_scale_
        if first_pass:
            return scaled.astype(Y.dtype)
        # A later partial_fit's targets far from the first one's: their
        # squared errors would overflow the loss (float64), or the values
        # the model's dtype, whatever the learning rate.
        limit = min(np.sqrt(np.finfo(np.float64).max), np.finfo(Y.dtype).max) / 4
        if not np.all(np.abs(scaled) <= limit):
            raise ValueError(
                "The targets are too far from those the model was first fitted on "
                f"(target_mean_ {np.max(np.abs(self.target_mean_)):.3g}, "
                f"target_scale_ {np.max(self.target_scale_):.3g}): in those units "
                f"they reach {np.max(np.abs(scaled)):.3g}, beyond what the loss "
                f"(or {np.dtype(Y.dtype).name}) can hold. Scale y as in the first "
                "fit, or fit again."
            )
        return scaled.astype(Y.dtype)

    def _network_output_layer(self, coefs, intercepts):
        if not hasattr(self, "target_mean_"):
            return coefs, intercepts
        # The network's own output layer, as the last fit left it (a float32
        # layer scaled back and forth would lose the steps smaller than its
        # rounding), unless it was replaced since.
        kept = getattr(self, "_target_output_layer", None)
        if (
            kept is not None
            and np.array_equal(kept[0], coefs[-1])
            and np.array_equal(kept[1], intercepts[-1])
        ):
            W, b = kept[2], kept[3]
        else:
            W = coefs[-1] / self.target_scale_
            b = (intercepts[-1] - self.target_mean_) / self.target_scale_
        dtype = coefs[-1].dtype
        return [*coefs[:-1], W.astype(dtype)], [*intercepts[:-1], b.astype(dtype)]

    def _output_layer_attributes(self, coefs, intercepts):
        if not hasattr(self, "target_mean_"):
            return coefs, intercepts, {}
        # Fresh arrays (the layout's copies, the products): the published
        # layer and the network's own are kept side by side.
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            W = (coefs[-1] * self.target_scale_).astype(coefs[-1].dtype)
            b = (intercepts[-1] * self.target_scale_ + self.target_mean_).astype(
                W.dtype
            )
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            # The network's own layer is finite (the engine checks it): its
            # rescaling to the targets' units overflows the dtype.
            raise ValueError(
                "Solver produced non-finite parameter weights: the output "
                "layer, scaled back to the targets' units (target_scale_ up "
                f"to {np.max(self.target_scale_):.3g}), overflows "
                f"{W.dtype.name}. Use float64 input, or divide y by a constant "
                "and multiply the predictions back."
            )
        kept = tuple(_read_only(a) for a in (W, b, coefs[-1], intercepts[-1]))
        W, b = kept[:2]
        return (
            [*coefs[:-1], W],
            [*intercepts[:-1], b],
            {"_target_output_layer": kept},
        )

    @staticmethod
    def _score_function(y, y_pred, sample_weight=None):
        return r2_score(y, y_pred, sample_weight=sample_weight)

    @staticmethod
    def _sklearn_class():
        from sklearn.neural_network import MLPRegressor

        return MLPRegressor

    def _sklearn_params(self):
        return {**super()._sklearn_params(), "loss": self.loss}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # The Poisson loss refuses negative targets, as PoissonRegressor does
        # (and tags itself so).
        tags.target_tags.positive_only = self.loss == "poisson"
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    @_restore_on_failure
    @with_callbacks  # inside: torn down before a restore, after a publication
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The target values.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative sample weights.

        Returns
        -------
        self : object
            The fitted model.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    @_restore_on_failure
    @with_callbacks  # inside: torn down before a restore, after a publication
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The target values.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative sample weights.

        Returns
        -------
        self : object
            The updated model.

        Notes
        -----
        Each call goes on with the optimizer of the latest :meth:`fit`, or
        of the first ``partial_fit`` (its state, its steps and its
        settings), as scikit-learn's MLP does: ``solver``, ``learning_rate``,
        ``learning_rate_init``, ``power_t``, ``momentum``,
        ``nesterovs_momentum``, ``beta_1``, ``beta_2``, ``epsilon`` and
        ``weight_decay`` set since then take effect at the next :meth:`fit`.
        The loss's ``alpha`` and ``bn_momentum`` take effect at once. The
        parameters a call reads are validated at every call (scikit-learn
        validates them at the first only): an invalid value set since then
        raises scikit-learn's ``InvalidParameterError`` and leaves the model
        as it was.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    @_reads_fitted_state
    def predict(self, X):
        """Predict using the batch-normalized MLP regressor.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            The predicted values.
        """
        X = self._validate_X_predict(X)
        return self._decode_output(self._predict_raw(X))
