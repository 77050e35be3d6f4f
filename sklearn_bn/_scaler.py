"""BatchNormScaler: batch-normalization statistics as a scikit-learn transformer.

The statistics come from :func:`sklearn_bn._batchnorm.batch_stats` (the same
kernel the networks use), the affine map from :mod:`sklearn_bn._scaling`.
Everything here works on vectors of ``n_features``; the data are read by the
kernels only: ``fit`` reads ``X`` once, ``transform`` reads it once and writes
the output once, and ``fit_transform`` does both on one validated array.
"""

import math
import warnings
from numbers import Real

import numpy as np
from scipy import sparse
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import assert_all_finite
from sklearn.utils._param_validation import Interval, validate_parameter_constraints
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_is_fitted,
    validate_data,
)

from sklearn_bn._batchnorm import batch_stats, merge_stats, unbiased_counts
from sklearn_bn._callbacks import CallbackSupportMixin, with_callbacks
from sklearn_bn._preprocessing import _is_polars_df
from sklearn_bn._scaling import (
    affine_columns,
    has_infinity,
    unweighted_rows_hold_infinity,
)
from sklearn_bn._threads import kernel_threads
from sklearn_bn._utils import (
    _callers_stacklevel,
    _publish_now,
    _reads_fitted_state,
    _restore_on_failure,
    check_weight_range,
    exponents_near,
)

_FLOAT_DTYPES = (np.float64, np.float32)

# Weights and counts above this are scaled down by a power of two, to about
# this, for the statistics' sums and merges (see _count_exponents).
_RESCALED_WEIGHTS_ABOVE = 2.0**64


def _count_exponents(largest, smallest, dtype=np.float64):
    """The powers of two by which weights or counts, whose largest and
    smallest positive are ``largest`` and ``smallest`` (arrays: one
    exponent each), are divided before sums that multiply them by squares
    (the statistics depend on their proportions only): 0 up to
    ``_RESCALED_WEIGHTS_ABOVE``, else the one that brings ``largest`` down
    to about that, or as far as ``smallest`` stays a normal ``dtype``
    number, so that the division is exact."""
    largest, smallest = np.broadcast_arrays(
        np.asarray(largest, dtype=np.float64), np.asarray(smallest, dtype=np.float64)
    )
    wanted = np.frexp(largest)[1] - np.frexp(_RESCALED_WEIGHTS_ABOVE)[1]
    room = np.frexp(smallest)[1] - np.frexp(np.finfo(dtype).tiny)[1]
    room = np.where(smallest > 0, room, wanted)
    return np.where(
        largest > _RESCALED_WEIGHTS_ABOVE, np.minimum(wanted, room), 0
    ).clip(0)


def _value_exponents(*means_and_variances):
    """Per feature, the exponent of a power of two near the largest of the
    magnitudes of the means and the standard deviations given (pairs of
    mean and variance arrays), 0 where none is finite and positive."""
    scales = []
    for k, values in enumerate(means_and_variances):
        values = np.abs(np.asarray(values, dtype=np.float64))
        scales.append(np.sqrt(values) if k % 2 else values)
    with np.errstate(invalid="ignore"):
        peak = np.max([np.where(np.isfinite(v), v, 0.0) for v in scales], axis=0)
    return exponents_near(peak)


def _unaligned_view_of(X_in, X):
    """Whether ``X_in`` is a writable C-contiguous array of ``X``'s dtype and
    shape whose only difference from ``X`` is that it is not aligned."""
    return (
        isinstance(X_in, np.ndarray)
        and X_in is not X
        and X_in.flags.writeable
        and X_in.flags.c_contiguous
        and not X_in.flags.aligned
        and X_in.dtype == X.dtype
        and X_in.shape == X.shape
    )


def _mapped_to_beta(gamma, std):
    """Where ``transform`` gives ``beta`` whatever ``X``: gamma is 0 or
    ``std`` (``running_var_``) is infinite."""
    return (gamma == 0) | np.isinf(std)


def _ratio_out_of_range(gamma, std):
    """Where ``gamma / std`` or its inverse is not a normal float64 number
    (``gamma`` nonzero, ``std`` finite): multiplying by it would give inf,
    NaN (``0 * inf``) or lose bits where the formula's value is finite."""
    tiny = np.finfo(np.float64).smallest_normal
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        ratios = (np.abs(gamma / std), np.abs(std / gamma))
    in_range = np.ones(np.shape(ratios[0]), dtype=bool)
    for ratio in ratios:
        in_range &= np.isfinite(ratio) & (ratio >= tiny)
    return ~_mapped_to_beta(gamma, std) & ~in_range


def _ratio_in_parts(numerator, denominator):
    """``numerator / denominator`` as ``multiplier * 2 ** exponent``, the
    multiplier of magnitude in (1/8, 1/2), however far the ratio lies beyond
    float64's range."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m_num, e_num = np.frexp(numerator)
        m_den, e_den = np.frexp(denominator)
        multiplier = m_num / m_den / 4
    return multiplier, e_num - e_den + 2  # int32, as frexp's exponents


def _is_constant_feature(var, mean, n_samples):
    """Features indistinguishable from constants, as ``StandardScaler`` decides.

    The bound is the error of the two-pass variance algorithm (Chan, Golub
    and LeVeque), the same test as ``sklearn.preprocessing._data``.
    """
    eps = np.finfo(np.float64).eps
    # A bound beyond float64 is infinite (and a constant's variance of 0 is
    # below it); an infinite variance is not a constant's.
    with np.errstate(over="ignore", invalid="ignore"):
        upper_bound = n_samples * eps * var + (n_samples * mean * eps) ** 2
    return np.isfinite(var) & (var <= upper_bound)


# What ``_parameter_constraints`` accepts, tested cheaply (at every
# transform): anything else goes through scikit-learn's validation.
_VALID_AT_A_GLANCE = {
    "momentum": lambda m: m is None or (isinstance(m, Real) and 0 < m <= 1),
    "epsilon": lambda e: isinstance(e, Real) and 0 <= e < math.inf,
    "copy": lambda c: isinstance(c, (bool, np.bool_)),
}


class BatchNormScaler(
    CallbackSupportMixin, OneToOneFeatureMixin, TransformerMixin, BaseEstimator
):
    """Standardize features with batch-normalization statistics.

    Each feature is centered and scaled with the mean and variance of the
    data, then given the scale ``gamma`` and offset ``beta`` that suit the
    layer that follows::

        X_out = gamma * (X - running_mean_) / sqrt(running_var_ + epsilon) + beta

    With ``momentum=None`` the statistics are exact over every sample seen,
    as in :class:`~sklearn.preprocessing.StandardScaler`; with a
    ``momentum`` they are the exponential moving averages that batch
    normalization keeps, so that the scaler tracks a drifting stream fed
    through :meth:`partial_fit`.

    Read more in the :doc:`user guide </user_guide/scaler>`.

    Parameters
    ----------
    momentum : float in (0, 1] or None, default=None
        ``None``: exact statistics (mean and ``ddof=0`` variance) over all
        samples seen by :meth:`fit` or the :meth:`partial_fit` calls since
        the last :meth:`fit`; ``fit`` then equals any split of the same rows
        into ``partial_fit`` calls. A float ``m``: exponential moving
        average with PyTorch's convention: the first batch sets
        ``running_mean_`` and ``running_var_`` to its mean and unbiased
        variance, each later batch does
        ``running = (1 - m) * running + m * batch_statistic``. A feature
        with values in a batch must then have at least two that are not NaN
        (with ``sample_weight``: see Notes); a feature with none keeps its
        statistics (NaN until a batch has values for it, which then sets
        them as a first batch does).

    epsilon : float, default=1e-5
        Added to the variance before the square root, as in batch
        normalization. With ``epsilon=0`` and ``momentum=None`` the output
        equals :class:`~sklearn.preprocessing.StandardScaler`'s, constant
        features included (they are centered but not scaled).

    gamma : float or array-like of shape (n_features,), default=1.0
        Scale of the output: its standard deviation, per feature or for all.
        0.5 puts most inputs of a ``tanh`` unit in its linear part.

    beta : float or array-like of shape (n_features,), default=0.0
        Offset of the output: its mean, per feature or for all.

    copy : bool, default=True
        If False, :meth:`transform`, :meth:`fit_transform` and
        :meth:`inverse_transform` overwrite
        ``X`` when numpy reads it as a writable C-contiguous float32 or
        float64 array without a copy (an ndarray, but also a memoryview or a
        CPU tensor that shares its memory, as with ``StandardScaler``);
        other inputs are converted (copied) anyway.

    Attributes
    ----------
    running_mean_ : ndarray of shape (n_features,), dtype float64
        Mean of each feature (exact, or its moving average). Kept in float64
        whatever the input dtype, as ``StandardScaler.mean_``. NaN for a
        feature that has had no sample yet (all NaN, or zero weight), as
        there: :meth:`transform` outputs NaN for it.

    running_var_ : ndarray of shape (n_features,), dtype float64
        Variance of each feature: ``ddof=0`` with ``momentum=None``, the
        moving average of unbiased batch variances otherwise. NaN where
        ``running_mean_`` is.

    n_samples_seen_ : int or ndarray of shape (n_features,)
        Samples counted in the statistics, as in ``StandardScaler``: an
        integer when no sample is missing and no weights are given, the sum
        of the weights with ``sample_weight`` (then a float), and a
        per-feature array when NaN made the counts differ. Reset by
        :meth:`fit`, increased by :meth:`partial_fit`.

    n_features_in_ : int
        Number of features seen during :term:`fit`.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :term:`fit`. Defined only when `X`
        has feature names that are all strings.

    See Also
    --------
    sklearn.preprocessing.StandardScaler : Exact mean and variance, without
        the ``gamma``/``beta`` output range or moving averages.
    sklearn_bn.MLPBNClassifier : Batch normalization inside every hidden
        layer of a multilayer perceptron.

    Notes
    -----
    NaN values are ignored when learning the statistics and kept by
    :meth:`transform`; a feature with no value (all NaN) gets NaN statistics
    and NaN output, as in ``StandardScaler``. Infinite values raise a
    ``ValueError``. Sparse input is refused: centering makes it dense.
    Finite data whose mean or variance exceeds the float64 range (a spread
    of about 1e154 and more) give a ``RuntimeWarning`` naming the overflow and
    the features, as ``StandardScaler`` warns. So do outputs that are
    ``+-inf`` because they, or a value on the way, pass the dtype's range:
    :meth:`transform` computes in the dtype of `X`, so a float32 value whose
    distance to the mean passes float32's largest number (about 3.4e38)
    gives ``+-inf``, as in ``StandardScaler``, and float64 input keeps it
    finite.

    A failed :meth:`fit` or :meth:`partial_fit` leaves the scaler as it was,
    except when a callback raises at the end of the call (its last hook or
    its teardown, after the statistics are learned): the scaler is then
    fitted, as scikit-learn's estimators are, and the error propagates.

    With scikit-learn 1.9 or later, ``set_callbacks`` registers
    :mod:`sklearn.callback` callbacks, as on
    :class:`~sklearn.preprocessing.StandardScaler`: each :meth:`fit`,
    :meth:`partial_fit` and :meth:`fit_transform` call is one task (named
    ``'fit'``, as there) without subtasks, whose hooks get the
    validated `X`, `y` and ``{'sample_weight': ...}``, and at its end the
    fitted scaler.

    The statistics are computed per cache-sized block of rows (deviations
    from a shift and their sums over runs of 32 rows in the input's
    precision, then accumulated in double; a block whose shift was far from
    its mean is reduced again, from cache, around its own mean), merged with
    Chan et al.'s update, and stored in float64: in float32 they are
    accurate to about 1e-7 of the spread, whatever the number of rows.
    :meth:`transform` computes in the input's dtype, so float32 data stay
    float32 with no float64 copy.
    It subtracts the mean (rounded to that dtype, the rounding error going
    into the offset) before scaling, so that no cancellation between large
    terms occurs: a constant feature maps to ``beta``, in float32 too.
    Large arrays are processed in row blocks on as many threads as the
    package's OpenMP code may use (limit them with ``OMP_NUM_THREADS`` or
    ``threadpoolctl.threadpool_limits``); the result does not depend on the
    number of threads.

    With a ``momentum`` and ``epsilon=0``, features whose running standard
    deviation is (near) zero are not scaled, as ``StandardScaler`` does.

    ``sample_weight`` weights the statistics as repeat counts. With a
    ``momentum``, the unbiased correction ``m / (m - 1)`` of a batch's
    variance takes ``m`` as the networks' running statistics do
    (:class:`~sklearn_bn.MLPBNClassifier`): the sum of the batch's weights
    or, when that sum is below 2 (weights normalized to sum to 1, as
    :class:`~sklearn.ensemble.AdaBoostClassifier` passes them), the number
    of rows with positive weight; both per feature, over the values that
    are not NaN. A batch in which a feature with values has ``m <= 1``
    raises a ``ValueError``, and so do weights that are all zero.

    References
    ----------
    .. [1] S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep
       Network Training by Reducing Internal Covariate Shift", ICML 2015,
       :arxiv:`1502.03167`.
    .. [2] Y. LeCun, L. Bottou, G. B. Orr and K.-R. Müller, "Efficient
       BackProp", in Neural Networks: Tricks of the Trade, Springer, 1998.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_bn import BatchNormScaler
    >>> X = np.array([[-1.0, 0.0], [1.0, 0.0], [-1.0, 2.0], [1.0, 2.0]])
    >>> scaler = BatchNormScaler(epsilon=0.0).fit(X)
    >>> scaler.running_mean_
    array([0., 1.])
    >>> scaler.running_var_
    array([1., 1.])
    >>> scaler.transform([[3.0, 1.0]])
    array([[3., 0.]])

    For a ``tanh`` layer, squeeze the inputs into its linear part:

    >>> tanh_scaler = BatchNormScaler(epsilon=0.0, gamma=0.5).fit(X)
    >>> tanh_scaler.transform(X)
    array([[-0.5, -0.5],
           [ 0.5, -0.5],
           [-0.5,  0.5],
           [ 0.5,  0.5]])

    On a stream, ``momentum`` keeps batch normalization's running averages:

    >>> stream = BatchNormScaler(momentum=0.1)
    >>> stream = stream.partial_fit(X[:2]).partial_fit(X[2:])
    >>> stream.running_mean_
    array([0. , 0.2])
    >>> stream.running_var_
    array([2., 0.])
    """

    _parameter_constraints: dict = {
        "momentum": [Interval(Real, 0, 1, closed="right"), None],
        "epsilon": [Interval(Real, 0, None, closed="left")],
        "gamma": [Real, "array-like"],
        "beta": [Real, "array-like"],
        "copy": ["boolean"],
    }

    def __init__(self, *, momentum=None, epsilon=1e-5, gamma=1.0, beta=0.0, copy=True):
        self.momentum = momentum
        self.epsilon = epsilon
        self.gamma = gamma
        self.beta = beta
        self.copy = copy

    # ------------------------------------------------------------------
    # Fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Forget earlier statistics, then learn them from `X` as one batch.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The data. NaN values are ignored.

        y : None
            Ignored.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples, acting as repeat counts;
            not all zero. With a ``momentum``, see Notes for the unbiased
            variance of a weighted batch.

        Returns
        -------
        self : object
            Fitted scaler.
        """
        self._fit(X, y, sample_weight, reset=True)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, sample_weight=None):
        """Update the statistics with one more batch `X`.

        The first call on an unfitted scaler acts as :meth:`fit`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The batch. NaN values are ignored.

        y : None
            Ignored.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples, acting as repeat counts;
            not all zero. With a ``momentum``, see Notes for the unbiased
            variance of a weighted batch.

        Returns
        -------
        self : object
            Fitted scaler.
        """
        self._fit(X, y, sample_weight, reset=not hasattr(self, "n_samples_seen_"))
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, sample_weight=None):
        """Fit to `X`, then transform it, validating and reading it once.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The data. NaN values are ignored by the statistics and kept.

        y : None
            Ignored.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples, acting as repeat counts;
            not all zero. With a ``momentum``, see Notes for the unbiased
            variance of a weighted batch.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
            Transformed data, with the dtype of `X` (float32 or float64).
        """
        X_in = X
        X = self._fit(X, y, sample_weight, reset=True)
        # fit has rejected infinite values: no need to look for them again.
        return self._affine(
            X,
            X_in,
            self._coefficients(X.dtype),
            self.copy,
            "fit_transform",
            check_inf=False,
        )

    @_restore_on_failure
    @with_callbacks  # inside: torn down before a restore, after a publication
    def _fit(self, X, y, sample_weight, reset):
        """Learn or update the statistics; return the validated `X`.

        Everything is computed into locals and assigned at the end; if
        anything fails, the estimator's ``__dict__`` is restored, so a failed
        call leaves a fitted scaler unchanged (``validate_data`` itself sets
        ``n_features_in_`` and ``feature_names_in_`` when ``reset``). The
        state is published before the callbacks' last hook: an error from
        there on keeps it.

        Each call is one callback task (a leaf), as ``StandardScaler``'s
        ``fit`` and ``partial_fit`` are.
        """
        if not reset:
            # scikit-learn validates the parameters at a partial_fit of an
            # unfitted estimator only; set_params may have changed them since.
            # (Read here, from the working copy the call then uses.)
            self._recheck_parameters(("momentum", "epsilon"))
        _reject_sparse(X, self)
        X = self._validate_X(X, reset)
        n_features = X.shape[1]
        self._affine_params(n_features)  # wrong gamma/beta: fail before work
        if sample_weight is not None:
            # Checked in float64 before they are rounded to X's dtype, where
            # a tiny positive weight would become 0 and a huge one infinite.
            weights64 = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
            # scikit-learn >= 1.8 checks this too; older releases do not. (Not
            # their sum: it may overflow, which check_weight_range reports.)
            if not weights64.max() > 0:
                raise ValueError(
                    "Sample weights must contain at least one non-zero number."
                )
            if weights64.max() > np.finfo(X.dtype).max:
                raise ValueError(
                    "Input sample_weight contains infinity or a value too large "
                    f"for {X.dtype!r}."
                )
            # The statistics are summed in float64, and n_samples_seen_ adds
            # this batch's weight sum to the earlier batches'.
            check_weight_range(
                weights64,
                "sample_weight",
                X.dtype,
                sum_dtype=np.float64,
                seen=0.0 if reset else float(np.max(self.n_samples_seen_)),
            )
            sample_weight = _aligned(weights64.astype(X.dtype, copy=False))
        callback_ctx = self._init_callback_context()
        metadata = {"sample_weight": sample_weight}
        callback_ctx.call_on_fit_task_begin(estimator=self, X=X, y=y, metadata=metadata)
        if self.momentum is not None and X.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__}(momentum={self.momentum}) needs at least "
                "2 samples per batch to estimate an unbiased variance, got "
                f"n_samples={X.shape[0]}."
            )

        count_b, mean_b, var_b, has_nan = _batch_statistics(X, sample_weight, self)

        # Previous statistics, as per-feature float vectors.
        if reset:
            count_prev = np.zeros(n_features)
            integer_counts = sample_weight is None
        else:
            # A scalar or a per-feature array: both broadcast below.
            count_prev = np.asarray(self.n_samples_seen_, dtype=np.float64)
            integer_counts = sample_weight is None and np.issubdtype(
                np.asarray(self.n_samples_seen_).dtype, np.integer
            )

        if self.momentum is None:
            if reset:
                count, mean, var = count_b, mean_b, var_b
            else:
                # A feature with no sample yet has NaN statistics, and no weight.
                unseen = count_prev == 0
                # The merge multiplies variances by counts: large counts are
                # scaled alike by a power of two first (exactly), as the
                # batch's weights are (see _batch_statistics).
                larger = np.maximum(count_prev, count_b)
                both = (count_prev > 0) & (count_b > 0)
                exponent = _count_exponents(
                    larger, np.where(both, np.minimum(count_prev, count_b), larger)
                )
                mean_prev = np.where(unseen, 0.0, self.running_mean_)
                var_prev = np.where(unseen, 0.0, self.running_var_)
                # And the values by a power of two near their magnitude (the
                # same bits for moderate ones): the products of variances of
                # about 1e306 by counts stay in range.
                magnitude = _value_exponents(mean_prev, var_prev, mean_b, var_b)
                count, mean, var = merge_stats(
                    np.ldexp(count_prev, -exponent),
                    np.ldexp(mean_prev, -magnitude),
                    np.ldexp(var_prev, -2 * magnitude),
                    np.ldexp(count_b, -exponent),
                    np.ldexp(mean_b, -magnitude),
                    np.ldexp(var_b, -2 * magnitude),
                )
                count = np.ldexp(count, exponent)
                with np.errstate(over="ignore"):  # the caller warns
                    mean = np.ldexp(mean, magnitude)
                    var = np.ldexp(var, 2 * magnitude)
            # As StandardScaler: the statistics of a feature that has had no
            # sample (all NaN, or no weight) are undefined, and transform
            # gives NaN for it, rather than x / sqrt(epsilon).
            mean = np.where(count == 0, np.nan, mean)
            var = np.where(count == 0, np.nan, var)
        else:
            # A feature with no value in this batch (all NaN, or no weight)
            # keeps its statistics: NaN, as in exact mode, until a batch has
            # values for it; that batch then sets them, as a first batch does.
            absent = count_b == 0
            n_unbiased = unbiased_counts(
                count_b, _rows_with_weight(X, sample_weight, count_b, has_nan)
            )
            too_few = (n_unbiased <= 1) & ~absent
            if np.any(too_few):
                raise ValueError(_too_few_message(self, too_few, sample_weight))
            with np.errstate(divide="ignore", invalid="ignore"):
                var_b = var_b * (n_unbiased / (n_unbiased - 1))
            count = count_prev + count_b
            if reset:
                r_mean = r_var = np.full(n_features, np.nan)
            else:
                r_mean, r_var = self.running_mean_, self.running_var_
            m = self.momentum
            # Exact where the batch repeats the running value: a constant
            # feature keeps its mean to the last bit (transform then maps it
            # to beta), which (1 - m) * r + m * r need not give.
            mean = np.where(mean_b == r_mean, r_mean, (1 - m) * r_mean + m * mean_b)
            var = np.where(var_b == r_var, r_var, (1 - m) * r_var + m * var_b)
            first = count_prev == 0
            mean = np.where(first, mean_b, mean)
            var = np.where(first, var_b, var)
            mean[absent], var[absent] = r_mean[absent], r_var[absent]

        overflow = (count > 0) & ~(np.isfinite(mean) & np.isfinite(var))
        if np.any(overflow):
            warnings.warn(
                _overflow_message(self, overflow),
                RuntimeWarning,
                stacklevel=_callers_stacklevel(),
            )

        if integer_counts:
            count = np.rint(count).astype(np.int64)
        # Like StandardScaler: a scalar when every feature has the same count.
        n_samples_seen = count[0] if count.min() == count.max() else count

        self.running_mean_ = mean
        self.running_var_ = var
        self.n_samples_seen_ = n_samples_seen
        _publish_now(self)  # an error of a callback from here on keeps the fit
        callback_ctx.call_on_fit_task_end(
            estimator=self, X=X, y=y, metadata=metadata, reconstruction_attributes={}
        )
        return X

    # ------------------------------------------------------------------
    # Transforming

    @_reads_fitted_state
    def transform(self, X, copy=None):
        """Standardize `X`, then apply ``gamma`` and ``beta``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The data. NaN values are kept.

        copy : bool, default=None
            Whether to leave `X` untouched; ``None`` uses the ``copy``
            parameter.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
            ``gamma * (X - running_mean_) / sqrt(running_var_ + epsilon) +
            beta``, with the dtype of `X` (float32 or float64).
        """
        check_is_fitted(self)
        _reject_sparse(X, self)
        if copy is None:
            self._recheck_parameters(("copy",))
            copy = self.copy
        X_in = X
        X = self._validate_X(X, reset=False)
        return self._affine(X, X_in, self._coefficients(X.dtype), copy, "transform")

    def _validate_X(self, X, reset):
        """``validate_data`` as a C-contiguous float32/float64 array.

        Infinite values are not looked for here: they make the statistics
        non-finite, and the transform kernel reports them, so no extra pass
        over the data is needed.

        A fitted scaler given a C-contiguous float ndarray of the right width
        and no feature names to check skips ``validate_data``, whose
        dataframe detection costs more than the statistics of a small batch:
        every check it would make on such an array is made here, with the
        same error.
        """
        if (
            not reset
            and type(X) is np.ndarray
            and X.ndim == 2
            and X.dtype in _FLOAT_DTYPES
            and X.flags.c_contiguous
            and X.shape[0] > 0
            and X.shape[1] > 0
            and not hasattr(self, "feature_names_in_")
            and hasattr(self, "n_features_in_")
        ):
            if X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but {type(self).__name__} "
                    f"is expecting {self.n_features_in_} features as input."
                )
            return _aligned(X)
        if _is_float32_polars(X):
            # scikit-learn's validation reads a polars frame as float64.
            validate_data(self, X, reset=reset, skip_check_array=True)
            X = check_array(
                X.to_numpy(),
                dtype=_FLOAT_DTYPES,
                order="C",
                ensure_all_finite=False,
                estimator=self,
            )
            return _aligned(X)
        return _aligned(
            validate_data(
                self,
                X,
                reset=reset,
                dtype=_FLOAT_DTYPES,
                order="C",
                ensure_all_finite=False,
            )
        )

    @_reads_fitted_state
    def inverse_transform(self, X, copy=None):
        """Undo :meth:`transform`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Transformed data. NaN values are kept.

        copy : bool, default=None
            Whether to leave `X` untouched; ``None`` uses the ``copy``
            parameter.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
            Data in the original feature space.
        """
        check_is_fitted(self)
        _reject_sparse(X, self)
        if copy is None:
            self._recheck_parameters(("copy",))
            copy = self.copy
        X_in = X
        X = _aligned(
            check_array(
                X,
                dtype=_FLOAT_DTYPES,
                order="C",
                ensure_all_finite=False,
                input_name="X",
                estimator=self,
            )
        )
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input."
            )
        return self._affine(
            X,
            X_in,
            self._coefficients(X.dtype, inverse=True),
            copy,
            "inverse_transform",
        )

    def _affine_params(self, n_features):
        """``gamma`` and ``beta``, checked: each a float or a float64 vector."""
        params = []
        for name in ("gamma", "beta"):
            value = getattr(self, name)
            if isinstance(value, Real) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise ValueError(f"{name} must be finite, got {value!r}.")
                params.append(float(value))
                continue
            try:
                array = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"{name} must be a float or an array of {n_features} floats, "
                    f"got {value!r}."
                ) from exc
            if array.ndim == 0:
                array = array[()]
            elif array.shape != (n_features,):
                raise ValueError(
                    f"{name} must be a float or an array of shape (n_features,) = "
                    f"({n_features},), got an array of shape {array.shape}."
                )
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} must be finite, got {value!r}.")
            params.append(array)
        return params

    def _coefficients(self, dtype, inverse=False):
        """``center``, ``scale`` and ``shift`` in ``dtype``, with
        ``transform(X) = (X - center) * scale + shift`` (or
        :meth:`inverse_transform`'s, with ``inverse``).

        Computed in float64 from the statistics and the current parameters.
        ``center`` is the mean (``beta`` for the inverse) rounded to ``dtype``
        and ``shift`` takes the rounding error, so that ``X - center`` is
        exact near the center: no cancellation between ``X * scale`` and
        ``shift``, and a constant feature maps to ``beta`` in float32 too.
        """
        gamma, beta = self._affine_params(self.n_features_in_)
        mean = self.running_mean_
        std = self._std()
        gamma, beta = np.broadcast_arrays(gamma, beta, mean)[:2]
        with np.errstate(over="ignore", under="ignore"):
            scale = gamma / std
        # Where gamma / std is beyond float64's normal numbers (inf, or a
        # subnormal number or 0 that lost gamma's bits), the features take
        # the ratio as a mantissa and a power of two instead, in float64
        # (below).
        ratio = _ratio_out_of_range(gamma, std)
        if not inverse:
            origin, target, numerator, denominator = mean, beta, gamma, std
        else:
            mapped_to_beta = _mapped_to_beta(gamma, std)
            if np.any(mapped_to_beta):
                raise ValueError(
                    "inverse_transform is undefined where gamma is 0 or "
                    "running_var_ is infinite (features "
                    f"{np.flatnonzero(mapped_to_beta).tolist()}): transform maps "
                    "them to beta whatever the input."
                )
            origin, target, numerator, denominator = beta, mean, std, gamma
            with np.errstate(over="ignore", divide="ignore"):
                scale = 1.0 / scale
        # Out of dtype's range (a float64 fit, a float32 transform) or NaN:
        # center 0, and the shift carries everything. So too where gamma is
        # 0 or running_var_ infinite: the result is the shift whatever X,
        # and X - center must not overflow into inf * 0 = NaN.
        center = np.where(
            (np.abs(origin) <= np.finfo(dtype).max) & (scale != 0), origin, 0.0
        )
        center = center.astype(dtype)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            shift = target + (center - origin) * scale
            scale_in_dtype, shift_in_dtype = scale.astype(dtype), shift.astype(dtype)
        # Coefficients dtype cannot hold (a float32 spread below its smallest
        # normal number at epsilon=0, a huge gamma, a shift beyond its range,
        # a scale that rounds to 0 or loses bits as a subnormal number): these
        # features are computed in float64, where the formula's values are
        # (finite ones too, where only the scale is beyond dtype's range, as
        # StandardScaler's division gives).
        wide = np.flatnonzero(
            ~(np.isfinite(scale_in_dtype) & np.isfinite(shift_in_dtype))
            | (
                (scale != 0)
                & (np.abs(scale_in_dtype) < np.finfo(dtype).smallest_normal)
            )
            | ratio
        )
        if wide.size:
            scale_in_dtype[wide] = shift_in_dtype[wide] = 0
            # (X - origin) * multiplier * 2 ** exponent + target, with
            # numerator / denominator as multiplier * 2 ** exponent where it
            # is beyond float64's range (_affine applies the power exactly);
            # the other wide features multiply by the float64 scale
            # (exponent 0), with the float64 formula's bits.
            multiplier, exponent = _ratio_in_parts(numerator, denominator)
            multiplier = np.where(ratio, multiplier, scale)[wide]
            exponent = np.where(ratio, exponent, 0)[wide].astype(np.int32)
            wide = (wide, origin[wide], multiplier, exponent, target[wide])
        else:
            wide = None
        return center, scale_in_dtype, shift_in_dtype, wide

    def _recheck_parameters(self, names):
        """Validate the parameters `names` of a fitted scaler, which
        scikit-learn's validation at ``fit`` no longer covers after
        ``set_params``: a cheap test first, the full constraints for the
        error."""
        for name in names:
            if not _VALID_AT_A_GLANCE[name](getattr(self, name)):
                break
        else:
            return
        validate_parameter_constraints(
            {name: self._parameter_constraints[name] for name in names},
            {name: getattr(self, name) for name in names},
            caller_name=type(self).__name__,
        )

    def _std(self):
        """``sqrt(running_var_ + epsilon)``, 1 for constant features at epsilon=0."""
        self._recheck_parameters(("epsilon",))
        var = self.running_var_
        std = np.sqrt(var + self.epsilon)
        if self.epsilon == 0:
            # StandardScaler's test, relative to the feature's scale (with
            # momentum, on the running statistics: a constant feature's
            # running variance is 0 there too).
            constant = _is_constant_feature(
                var, self.running_mean_, self.n_samples_seen_
            )
            std = np.where(constant, 1.0, std)
        return std

    def _affine(self, X, X_in, coefficients, copy, method, check_inf=True):
        """``(X - center) * scale + shift``, in place when allowed, in row blocks.

        Results beyond the dtype's range are ``+-inf``, as in
        ``StandardScaler``, with a ``RuntimeWarning`` naming `method` and the
        features (where numpy's arithmetic there warns of the overflow).
        """
        center, scale, shift, wide = coefficients
        suspects = np.empty(X.shape[1], dtype=np.uint8)
        # Whether float64 data gives finite results (always, where the
        # kernel's float32 coefficients are finite).
        finite_in_float64 = np.ones(X.shape[1], dtype=bool)
        if wide is not None:  # read before an in-place kernel overwrites them
            columns, origin, multiplier, exponent, target = wide
            with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                centred = X[:, columns] - origin
                wide_out = centred * multiplier
                powered = exponent != 0
                if powered.any():
                    # One rounding in the product of two mantissas; the power
                    # of two is exact unless the result is subnormal.
                    mantissa, power = np.frexp(centred[:, powered])
                    wide_out[:, powered] = np.ldexp(
                        mantissa * multiplier[powered], power + exponent[powered]
                    )
                wide_out += target
            finite_in_float64[columns] = ~np.isinf(wide_out).any(axis=0)
        # Is X our own conversion of the input (free to overwrite)? Another
        # object's conversion may be a view of the caller's memory (a
        # memoryview, a ctypes array, __array_interface__) or its own data
        # (__array__): only an array that validation allocated is ours.
        if X is X_in or not X.flags.writeable:
            private = False
        elif isinstance(X_in, np.ndarray):
            private = not np.may_share_memory(X, X_in)
        else:
            private = X.flags.owndata and not hasattr(X_in, "__array__")
        if private:
            out = X
        elif copy or not X.flags.writeable:
            out = np.empty_like(X)
        else:
            out = X
            if check_inf and has_infinity(X, *kernel_threads(*X.shape)):
                # In place on the caller's array: check before writing.
                _raise_infinite(X, self)
        if (
            affine_columns(
                X,
                center,
                scale,
                shift,
                out,
                *kernel_threads(*X.shape),
                may_overflow=suspects,
            )
            and check_inf
        ):
            _raise_infinite(X, self)
        if wide is not None:
            with np.errstate(over="ignore"):
                out[:, columns] = wide_out
            suspects[columns] = True
        if suspects.any():
            _warn_overflow(
                self, method, out, np.flatnonzero(suspects), finite_in_float64
            )
        if not copy and out is X and _unaligned_view_of(X_in, X):
            # numpy reads X_in without a copy, the kernels needed one.
            X_in[...] = out
            return X_in
        return out

    @_reads_fitted_state
    def to_sklearn(self):
        """Return an equivalent fitted scikit-learn ``StandardScaler``.

        ``gamma`` and ``beta`` are folded into the statistics, so that the
        returned scaler's ``(X - mean_) / scale_`` is this scaler's
        ``gamma * (X - running_mean_) / sqrt(running_var_ + epsilon) + beta``:

        - ``scale_ = sqrt(running_var_ + epsilon) / gamma`` (features that
          :meth:`transform` leaves unscaled keep ``1 / gamma``);
        - ``mean_ = running_mean_ - beta * scale_``.

        Its :meth:`~sklearn.preprocessing.StandardScaler.transform` and
        :meth:`~sklearn.preprocessing.StandardScaler.inverse_transform` give
        this scaler's results up to rounding, with the same handling of NaN
        (kept) and of float32 input (float32 output), and the same
        ``set_output`` configuration. Anything that reads a
        ``StandardScaler`` (pickle without sklearn_bn, skops, skl2onnx)
        works with it.

        Returns
        -------
        scaler : sklearn.preprocessing.StandardScaler
            Fitted, with ``mean_`` and ``scale_`` as above, ``var_`` set to
            ``running_var_``, and ``n_samples_seen_``, ``n_features_in_`` and
            ``feature_names_in_`` copied from this scaler.

        Raises
        ------
        ValueError
            If ``gamma`` is 0 for some feature: this scaler then maps the
            feature to ``beta`` whatever the input, which no
            ``StandardScaler`` can do (its ``scale_`` would be infinite).
            Also if ``sqrt(running_var_ + epsilon) / gamma`` or
            ``running_mean_ - beta * sqrt(running_var_ + epsilon) / gamma``
            is beyond float64's normal range (``gamma=1e300`` over a spread
            of 1e-40, say).

        Notes
        -----
        ``StandardScaler.transform`` subtracts ``mean_`` rounded to the input's
        dtype (in scikit-learn 1.9; 1.7 subtracts it in float64 and rounds the
        difference). With float32 input, a feature whose ``mean_`` is large
        against its spread (``sqrt(running_var_ + epsilon) / gamma``) then moves
        by that rounding over the spread, which this scaler's :meth:`transform`
        avoids (it keeps the rounding error in its shift): a float32 feature of
        mean 1e4 and standard deviation 0.01 moves by up to 0.05, and a constant
        float32 feature with ``beta=0.5`` maps to 0.5 here but to 0.50-0.62
        there for constants of 651 to 1e4, and to 0 for 1e6. The ONNX export
        (:func:`sklearn_bn.onnx.register_converters`) computes as
        :meth:`transform` does. In float64 the twin agrees to about 1e-15
        relative to the largest term.

        The returned scaler is meant for ``transform`` and
        ``inverse_transform``. Calling its ``partial_fit`` continues its own
        exact statistics from ``mean_`` and ``var_``, which are this scaler's
        only with the defaults ``gamma=1.0``, ``beta=0.0``, ``epsilon=0`` and
        ``momentum=None``.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_bn import BatchNormScaler
        >>> X = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
        >>> scaler = BatchNormScaler(gamma=0.5, beta=1.0).fit(X)
        >>> plain = scaler.to_sklearn()
        >>> type(plain).__name__
        'StandardScaler'
        >>> bool(np.allclose(plain.transform(X), scaler.transform(X)))
        True
        """
        from sklearn.preprocessing import StandardScaler

        check_is_fitted(self)
        gamma, beta = self._affine_params(self.n_features_in_)
        # transform(X) = (X - mean) / std * gamma + beta, where std is 1 for
        # the features that transform leaves unscaled.
        std = self._std()
        gamma = np.broadcast_to(gamma, std.shape)
        zero = _mapped_to_beta(gamma, std)
        if np.any(zero):
            raise ValueError(
                "to_sklearn() cannot express gamma=0 or an infinite "
                f"running_var_ (features {np.flatnonzero(zero).tolist()}): this "
                "scaler maps them to beta whatever the input, and a "
                "StandardScaler would need an infinite scale_."
            )
        with np.errstate(all="ignore"):  # checked below
            scale = np.where(
                _ratio_out_of_range(gamma, std), std / gamma, 1.0 / (gamma / std)
            )
            mean = self.running_mean_ - beta * scale
        # A subnormal scale_ has too few bits to agree with transform.
        beyond = ~(np.isfinite(scale) & (np.abs(scale) >= np.finfo(np.float64).tiny))
        if np.any(beyond | ~np.isfinite(mean)):
            raise ValueError(
                "to_sklearn() cannot express features "
                f"{np.flatnonzero(beyond | ~np.isfinite(mean)).tolist()}: a "
                "StandardScaler's scale_ = sqrt(running_var_ + epsilon) / gamma "
                "or mean_ = running_mean_ - beta * scale_ would be beyond "
                "float64's normal range."
            )
        std_scaler = StandardScaler(copy=self.copy)
        std_scaler.scale_ = scale
        std_scaler.mean_ = mean
        std_scaler.var_ = self.running_var_.copy()
        std_scaler.n_samples_seen_ = (
            self.n_samples_seen_.copy()
            if isinstance(self.n_samples_seen_, np.ndarray)
            else self.n_samples_seen_
        )
        std_scaler.n_features_in_ = self.n_features_in_
        if hasattr(self, "feature_names_in_"):
            std_scaler.feature_names_in_ = self.feature_names_in_.copy()
        output = getattr(self, "_sklearn_output_config", {}).get("transform")
        if output is not None:
            std_scaler.set_output(transform=output)
        return std_scaler

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _aligned(array):
    """``array``, or an aligned copy of it: the kernels read aligned data, and
    validation accepts arrays that start at any byte (``np.frombuffer`` or
    ``np.memmap`` at an odd offset, the blocks Dask ships between workers)."""
    if array.flags.aligned:
        return array
    return np.require(array, requirements=("C", "A"))


def _is_float32_polars(X):
    """Whether ``X`` is a polars frame of Float32 columns only."""
    if not _is_polars_df(X) or X.width == 0:
        return False
    import polars as pl

    return all(dtype == pl.Float32 for dtype in X.dtypes)


def _reject_sparse(X, estimator):
    if sparse.issparse(X):
        raise TypeError(
            f"{type(estimator).__name__} does not accept sparse input: centering "
            "(subtracting running_mean_) would make a sparse matrix dense. Convert "
            "it with X.toarray() if it fits in memory, or scale without centering "
            "with StandardScaler(with_mean=False) or MaxAbsScaler."
        )


def _raise_infinite(X, estimator):
    """Raise scikit-learn's error for infinite values in `X`."""
    assert_all_finite(
        X, allow_nan=True, estimator_name=type(estimator).__name__, input_name="X"
    )
    raise ValueError("Input X contains infinity.")  # pragma: no cover


# float32 features whose variance is below this are measured in float64 (see
# _batch_statistics): squares of their deviations would come near float32's
# smallest normal number, 1.2e-38.
_FLOAT32_TINY_VARIANCE = 1e-30


def _batch_statistics(X, sample_weight, estimator):
    """Per-feature (weight sum, mean, ddof=0 variance) of one batch, NaN ignored,
    and whether `X` may hold NaN (False: it holds none).

    One pass of the ``batch_stats`` kernel. NaN and infinity make the plain
    pass non-finite: then infinity raises, and the statistics are
    recomputed with NaN skipped (that second pass only happens on data with
    missing values). Rows of weight 0 are dropped first, so infinity is
    looked for in them apart.
    """
    blocks = kernel_threads(*X.shape)
    if sample_weight is not None and unweighted_rows_hold_infinity(X, sample_weight):
        _raise_infinite(X, estimator)
    if sample_weight is not None and not sample_weight.all():
        # Rows of weight 0 are absent: dropped, so that none of their values
        # enters the sums (the kernel's shift is the mean of a block's first
        # rows, weighted or not: a huge value there would cancel the rest).
        kept = sample_weight > 0
        X, sample_weight = np.ascontiguousarray(X[kept]), sample_weight[kept]
        blocks = kernel_threads(*X.shape)
    # The mean and variance do not change when every weight is scaled alike,
    # but the weighted sums of squares grow with the weights: large weights
    # are scaled by a power of two first (exactly), and the sums back.
    weight_exponent = 0
    largest = None if sample_weight is None else sample_weight.max()
    if largest is not None and largest > _RESCALED_WEIGHTS_ABOVE:
        smallest = sample_weight[sample_weight > 0].min()
        weight_exponent = int(_count_exponents(largest, smallest, sample_weight.dtype))
        sample_weight = np.ldexp(sample_weight, -weight_exponent)
    mean, var, count = batch_stats(X, sample_weight, False, *blocks)
    has_nan = False
    # One NaN or infinity makes a sum non-finite (an overflow of huge but
    # finite values only sends us down the careful path for nothing).
    if not math.isfinite(mean.sum() + var.sum()):
        if has_infinity(X, *blocks):
            _raise_infinite(X, estimator)
        mean, var, count = batch_stats(X, sample_weight, True, *blocks)
        has_nan = True
    if X.dtype == np.float32:
        # The kernel squares float32 deviations in float32: below a spread of
        # about 1e-19 the squares lose their precision (subnormal numbers),
        # then vanish. Such features again, in float64. A constant feature's
        # variance is 0 and every value its first: it needs no second look
        # (a cheaper test than that look; a variance of 0 and a mean equal
        # to the first value also hold for a, a + d, a - d with d tiny).
        tiny = np.flatnonzero(var < _FLOAT32_TINY_VARIANCE)
        if tiny.size:
            zero = tiny[var[tiny] == 0]
            constant = zero[(X[:, zero] == X[0, zero]).all(axis=0)]
            tiny = np.setdiff1d(tiny, constant, assume_unique=True)
        if tiny.size:
            X_tiny = np.ascontiguousarray(X[:, tiny], dtype=np.float64)
            mean[tiny], var[tiny], count[tiny] = batch_stats(
                X_tiny,
                None if sample_weight is None else sample_weight.astype(np.float64),
                has_nan,
                *kernel_threads(*X_tiny.shape),
            )
    overflow = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(var)) & (count > 0))
    if overflow.size:
        # Squared deviations beyond float64's range: values of about 1e154
        # and more, or a huge constant feature whose shift is one rounding
        # off (and, merging blocks, a NaN where the first block's squared
        # mean overflows while its weight is 0). These features again,
        # each scaled by a power of two near its largest magnitude (exactly),
        # their statistics scaled back: a mean or variance beyond the range
        # stays infinite, and the caller warns.
        # (Rows of weight 0 were dropped above: every row here counts.)
        sub = X[:, overflow].astype(np.float64)
        peak = np.max(np.where(np.isnan(sub), 0.0, np.abs(sub)), axis=0)
        exponent = exponents_near(peak)
        scaled = np.ascontiguousarray(np.ldexp(sub, -exponent))
        sub_mean, sub_var, _ = batch_stats(
            scaled,
            None if sample_weight is None else sample_weight.astype(np.float64),
            has_nan,
            *kernel_threads(*scaled.shape),
        )
        with np.errstate(over="ignore"):
            mean[overflow] = np.ldexp(sub_mean, exponent)
            var[overflow] = np.ldexp(sub_var, 2 * exponent)
    return np.ldexp(count, weight_exponent), mean, var, has_nan


def _rows_with_weight(X, sample_weight, weight_sum, has_nan):
    """Per feature, the rows of `X` with positive weight whose value is not NaN.

    :func:`unbiased_counts` reads them only where the weight sum is below 2,
    so NaN are only counted there (and only if `X` may hold some).
    """
    if sample_weight is None:
        return weight_sum  # the rows that are not NaN
    positive = sample_weight > 0
    n_rows = np.full(X.shape[1], np.count_nonzero(positive), dtype=np.float64)
    low = np.flatnonzero(weight_sum < 2)
    if has_nan and low.size:
        n_rows[low] = np.count_nonzero(~np.isnan(X[positive][:, low]), axis=0)
    return n_rows


def _warn_overflow(estimator, method, out, suspects, finite_in_float64):
    """Warn of the features among `suspects` whose output holds +-inf.

    `X` held no infinity (the caller raised otherwise), so an infinity in
    `out` comes from an intermediate value or a result beyond the dtype's
    range. `finite_in_float64`: per feature, whether float64 data gives
    finite values.
    """
    features = suspects[np.isinf(out[:, suspects]).any(axis=0)]
    if not features.size:
        return
    dtype = out.dtype
    helped = features[finite_in_float64[features]] if dtype == np.float32 else []
    if len(helped) == len(features):
        remedy = "; float64 data keeps them finite"
    elif len(helped):
        remedy = f"; float64 data keeps features {_shown(helped)} finite"
    else:
        remedy = ""
    warnings.warn(
        f"{type(estimator).__name__}: overflow encountered in {method} of "
        f"features {_shown(features)}: an intermediate value or the result "
        f"passes {dtype.name}'s largest number and is +-inf there, as in "
        f"StandardScaler{remedy}.",
        RuntimeWarning,
        stacklevel=_callers_stacklevel(),
    )


def _shown(features):
    """The first ten of `features`, then "..." if there are more."""
    return features[:10].tolist() + (["..."] if features.size > 10 else [])


def _overflow_message(estimator, overflow):
    shown = _shown(np.flatnonzero(overflow))
    return (
        f"{type(estimator).__name__}: overflow encountered in the statistics of "
        f"feature(s) {shown}: their mean or variance is beyond the float64 range "
        "(about 1.8e308; a variance gets there for a spread near 1e154), so "
        "transform gives NaN or beta for them. Scale these features down "
        "before fitting."
    )


def _too_few_message(estimator, too_few, sample_weight):
    name = f"{type(estimator).__name__}(momentum={estimator.momentum})"
    shown = _shown(np.flatnonzero(too_few))
    if sample_weight is None:
        what = "fewer than 2 samples that are not NaN"
        need = "at least 2 samples that are not NaN"
    else:
        what = (
            "a sum of sample weights below 2 and fewer than 2 samples of "
            "positive weight, NaN excluded"
        )
        need = "weights summing to 2 or more, or at least 2 samples of positive weight"
    return (
        f"{name} cannot estimate an unbiased variance from this batch: "
        f"feature(s) {shown} have {what}. Every feature with values in a batch "
        f"needs {need}."
    )
