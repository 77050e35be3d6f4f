"""The networks' own input handling, ``input_preprocessing="auto"``.

Learned once from the training rows (``fit``, or the first ``partial_fit``),
then fixed: every prediction applies it. Row ``x`` of the raw input becomes
the network's input row, laid out as

    [numeric features] + [missing indicators] + [one-hot blocks] + [hats]

* numeric feature ``j`` (in the order of the raw columns):
  ``c * tanh((x_j - center_j) / (scale_j * c))`` with ``c = clip_`` (a smooth
  clip to ``+-c`` robust standard deviations, slope 1 at the centre); NaN
  becomes 0, the centre. ``center_j`` is the weighted median and ``scale_j``
  the weighted interquartile range / 1.3489795 (twice the standard normal's
  0.75 quantile), or the weighted standard deviation where that range is 0,
  or 1 for a constant column. Sparse input is passed through (centre 0,
  scale 1, no clip), so that it stays sparse;
* a missing indicator (1 where NaN, else 0) for each numeric feature that had
  NaN in rows of positive weight during ``fit``;
* categorical feature ``k``: one column per learned category, in the order of
  ``categories[k]`` (sorted by value, NaN last): 1 for that category, all
  zeros for a category not learned (unseen, or beyond the cap);
* a piecewise-linear encoding of the numeric features, when the rows number
  at least ``_SPLINE_ROWS_PER_FEATURE`` per numeric feature and there are at
  most ``_SPLINE_MAX_FEATURES`` numeric features: ``K - 1`` hats
  per feature over ``K = _SPLINE_KNOTS`` knots at its weighted quantiles, in
  the clipped scale ``u = tanh((x_j - center_j) / (scale_j * c))`` (see
  :meth:`InputHandling.spline_ramps`).

Weights are repeat counts everywhere: quantiles use the inverted cumulative
distribution (averaged at ties of the two sides, as numpy's
``"averaged_inverted_cdf"``), which integer weights make equal to repeating
rows, and a row of weight 0 is absent.

The fitted state lives in the estimator's public attributes (see
``ATTRIBUTES``); :class:`InputHandling` is rebuilt from them for each call.
"""

import datetime
import numbers
import sys
from fractions import Fraction

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.utils.validation import check_array, validate_data

from sklearn_bn._utils import exponents_near

# Internal knobs, kept here so that a defaults study can revisit them.
_CLIP = 3.0  # smooth clip at +-_CLIP robust standard deviations
_IQR_PER_SD = 1.3489795003921634  # interquartile range of a normal, in SDs
_MAX_CATEGORIES = 100  # one-hot columns per categorical feature, the heaviest
_BLOCK_ELEMENTS = 1 << 20  # elements of a working block (statistics, transform)
_SPLINE_KNOTS = 8  # knots of a numeric feature's piecewise-linear encoding
_SPLINE_ROWS_PER_FEATURE = 500  # rows per numeric feature it needs (see learn)
_SPLINE_MAX_FEATURES = 32  # numeric features beyond which it is not used

# The estimator's attributes that hold the fitted handling.
ATTRIBUTES = (
    "is_categorical_",
    "input_center_",
    "input_scale_",
    "input_clip_",
    "input_missing_indicators_",
    "input_categories_",
    "input_spline_features_",
    "input_spline_knots_",
)


def _is_pandas_df(X):
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(X, pd.DataFrame)


def _is_polars_df(X):
    pl = sys.modules.get("polars")
    return pl is not None and isinstance(X, pl.DataFrame)


def is_frame(X):
    return _is_pandas_df(X) or _is_polars_df(X)


def _all_sparse_columns(X):
    """Whether ``X`` is a pandas frame whose columns all hold pandas' sparse
    arrays of numbers, with 0 as the value they leave out: a sparse matrix
    with column names."""
    if not _is_pandas_df(X) or X.shape[1] == 0:
        return False
    import pandas as pd

    return all(
        isinstance(dtype, pd.SparseDtype)
        and dtype.subtype.kind in "biuf"
        and dtype.fill_value == 0
        for dtype in X.dtypes
    )


def _numpy_dtype(dtype):
    """The numpy dtype of a numeric pandas column's values (nullable and
    sparse columns included)."""
    return np.dtype(getattr(dtype, "numpy_dtype", getattr(dtype, "subtype", dtype)))


def names_categorical(categorical_features):
    """Whether ``categorical_features`` explicitly names some columns."""
    if categorical_features is None or isinstance(categorical_features, str):
        return False
    values = np.asarray(categorical_features)
    if values.dtype.kind == "b":
        return bool(values.any())
    return values.size > 0


# ---------------------------------------------------------------------------
# Reading the raw input


class Columns:
    """Validated raw input split by kind: ``numeric`` (n_samples,
    n_numeric) float array or sparse matrix, and the categorical columns'
    values (1-D arrays, or pandas ``Categorical`` for the fast path)."""

    def __init__(self, numeric, categorical, is_categorical, dtype, n_samples):
        self.numeric = numeric
        self.categorical = categorical
        self.is_categorical = is_categorical
        self.dtype = np.dtype(dtype)
        self.shape = (n_samples, len(is_categorical))

    def __len__(self):
        return self.shape[0]


class _NonNumericColumns(ValueError):
    """Columns read as numbers hold strings or categories; ``names`` lists
    them (None when unknown, as for arrays)."""

    def __init__(self, message, names=None):
        super().__init__(message)
        self.names = names


def _shown(names):
    return ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")


def _string_columns_error(names, categorical_dtype=()):
    shown = _shown(names)
    if categorical_dtype and len(categorical_dtype) == len(names):
        return _NonNumericColumns(
            f"The column(s) {shown} have a categorical dtype but are not in "
            "categorical_features, which names the categorical columns: add them "
            "to it, use categorical_features='from_dtype', or drop them.",
            names,
        )
    return _NonNumericColumns(
        f"The column(s) {shown} hold strings (or other non-numeric values) and are "
        "not marked as categorical. Mark them as categorical, for example with "
        'X[col] = X[col].astype("category") (polars: pl.col(col).cast(pl.Categorical)) '
        "or categorical_features=[...] with their names or indices, or drop them.",
        names,
    )


def categorical_mask(categorical_features, X, n_features, feature_names, fitted_mask):
    """The boolean mask of categorical features of raw input ``X``."""
    if fitted_mask is not None:
        return fitted_mask
    if categorical_features is None:
        return np.zeros(n_features, dtype=bool)
    if isinstance(categorical_features, str):  # "from_dtype"
        return _categorical_dtypes(X, n_features)
    values = np.asarray(categorical_features)
    if values.size == 0:
        return np.zeros(n_features, dtype=bool)
    if values.ndim != 1:
        raise ValueError("categorical_features must be 1-dimensional.")
    if values.dtype.kind == "b":
        if values.shape[0] != n_features:
            raise ValueError(
                "categorical_features as a boolean mask must have shape "
                f"({n_features},) (the number of features), got {values.shape}."
            )
        return values.copy()
    mask = np.zeros(n_features, dtype=bool)
    if values.dtype.kind in "OUS":
        if feature_names is None and _is_polars_df(X):
            raise ValueError(
                "categorical_features names columns, but scikit-learn "
                f"{sklearn.__version__} reads no column names from this polars "
                "DataFrame (those of polars 2 need scikit-learn >= 1.8): give "
                "indices or a boolean mask, or upgrade scikit-learn."
            )
        if feature_names is None:
            raise ValueError(
                "categorical_features names columns, but X has no feature names: "
                "pass a DataFrame with string column names, or give indices or a "
                "boolean mask."
            )
        position = {name: i for i, name in enumerate(feature_names)}
        missing = [name for name in values.tolist() if name not in position]
        if missing:
            raise ValueError(
                f"categorical_features names {missing}, which are not columns of X; "
                f"its columns are {list(feature_names)}."
            )
        mask[[position[name] for name in values.tolist()]] = True
        return mask
    if values.dtype.kind not in "iu":
        raise ValueError(
            "categorical_features must be 'from_dtype', None, or an array-like of "
            f"column indices, names or a boolean mask; got {categorical_features!r}."
        )
    if values.min() < 0 or values.max() >= n_features:
        raise ValueError(
            f"categorical_features has indices out of range [0, {n_features}): "
            f"{values.tolist()}."
        )
    mask[values] = True
    return mask


def _categorical_dtypes(X, n_features):
    """pandas ``category`` and polars ``Categorical``/``Enum`` columns."""
    if _is_pandas_df(X):
        import pandas as pd

        return np.array(
            [isinstance(d, pd.CategoricalDtype) for d in X.dtypes], dtype=bool
        )
    if _is_polars_df(X):
        import polars as pl

        return np.array(
            [isinstance(d, (pl.Categorical, pl.Enum)) for d in X.dtypes], dtype=bool
        )
    return np.zeros(n_features, dtype=bool)


def _holds_pandas_na(X):
    """Whether the array-like ``X`` holds pandas' ``NA``."""
    pd = sys.modules.get("pandas")
    if pd is None:  # not imported: X cannot hold its NA
        return False
    values = np.asarray(X, dtype=object)
    return any(value is pd.NA for value in values.ravel())


def read(
    estimator, X, *, reset, fitted_mask, continued=False, accept_sparse=("csr", "csc")
):
    """Validate raw ``X`` for the handling: a float array or sparse matrix
    (numeric input, through scikit-learn's validation with NaN allowed), or
    :class:`Columns` (frames, and input with categorical features). A
    ``continued`` fit (warm start, partial_fit) keeps the fitted mask: a
    ``categorical_features`` that now picks other columns is an error."""
    if continued and fitted_mask is not None:
        _check_mask_unchanged(estimator, X, fitted_mask)
    explicit = names_categorical(estimator.categorical_features)
    any_categorical = explicit if fitted_mask is None else fitted_mask.any()
    if _all_sparse_columns(X) and not any_categorical:
        # A sparse matrix with column names, as for scikit-learn's estimators
        # (which convert it to float64: its float32 stays float32 here).
        validate_data(estimator, X, reset=reset, skip_check_array=True)
        return check_array(
            X.sparse.to_coo(),
            accept_sparse=list(accept_sparse),
            dtype=(np.float64, np.float32),
            ensure_all_finite="allow-nan",
            estimator=estimator,
        )
    frame = is_frame(X)
    # Only numpy's dtypes: a tensor's or a pandas array's is left to
    # scikit-learn's validation.
    if isinstance(getattr(X, "dtype", None), np.dtype) and X.dtype.kind in "mM":
        # scikit-learn's validation would read them as numbers since 1970;
        # categories are read from a frame's date columns only.
        raise ValueError(
            f"X has dtype {X.dtype}, which the input handling does not take: "
            "convert it to numbers, or pass a DataFrame and mark the column as "
            "categorical."
        )
    if not frame and not any_categorical:
        try:
            numeric = validate_data(
                estimator,
                X,
                reset=reset,
                accept_sparse=list(accept_sparse),
                dtype=(np.float64, np.float32),
                ensure_all_finite="allow-nan",
                order="C",
            )
        except ValueError as exc:
            if "could not convert string to float" not in str(exc):
                raise
            raise ValueError(
                f"{exc}. X holds strings: mark their columns as categorical with "
                "categorical_features=[their indices], or pass a DataFrame whose "
                "categorical columns have the category dtype."
            ) from exc
        except TypeError:
            # float() refuses pandas' NA among numbers: the columns' own
            # reader below takes it as missing. Other objects keep
            # scikit-learn's TypeError.
            if not _holds_pandas_na(X):
                raise
        else:
            features = estimator.categorical_features
            if fitted_mask is None and not (
                features is None or isinstance(features, str)
            ):
                # A mask naming no column still has HistGradientBoosting's
                # shape check.
                categorical_mask(features, numeric, numeric.shape[1], None, None)
            return numeric
    if frame:
        validate_data(estimator, X, reset=reset, skip_check_array=True)
        n_features = X.shape[1]
    else:
        if sp.issparse(X):
            raise ValueError(
                "Categorical features need dense input: got a sparse matrix with "
                "categorical_features set. Pass a dense array or a DataFrame."
            )
        X = validate_data(
            estimator, X, reset=reset, dtype=None, ensure_all_finite=False
        )
        n_features = X.shape[1]
    mask = categorical_mask(
        estimator.categorical_features,
        X,
        n_features,
        getattr(estimator, "feature_names_in_", None),
        fitted_mask,
    )
    try:
        if _is_pandas_df(X):
            columns = _read_pandas(X, mask)
        elif _is_polars_df(X):
            columns = _read_polars(X, mask)
        else:
            columns = _read_array(X, mask)
    except _NonNumericColumns as error:
        if fitted_mask is None:
            # A plain ValueError, as scikit-learn raises: the private class
            # would show in the user's traceback.
            raise ValueError(*error.args) from None
        # The fitted model's columns are fixed: no marking can help now.
        which = (
            "Some columns"
            if error.names is None
            else (f"The column(s) {_shown(error.names)}")
        )
        raise ValueError(
            f"{which} held numbers when the model was fitted and now hold strings "
            "or categories: pass them as numbers (or missing values), as in fit."
        ) from None
    if columns.shape[1] == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={columns.shape}) while a minimum "
            f"of 1 is required by {type(estimator).__name__}."
        )
    if columns.shape[0] < 1:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={columns.shape}) while a minimum "
            f"of 1 is required by {type(estimator).__name__}."
        )
    for values in columns.categorical:
        if _has_infinity(values):
            raise ValueError(
                "Input X contains infinity in a categorical feature: infinity is "
                "not a category; replace it, with NaN for example."
            )
    if columns.numeric is not None:
        columns.numeric = check_array(
            columns.numeric,
            dtype=columns.dtype,
            ensure_all_finite="allow-nan",
            ensure_min_features=0,
            order="C",
            estimator=estimator,
        )
    return columns


def _check_mask_unchanged(estimator, X, fitted_mask):
    """A ``categorical_features`` naming columns (names, indices, a mask)
    must pick the fitted ones. 'from_dtype' is not checked: a column's
    dtype may change between chunks (``category`` in one, strings read
    from a CSV in the next), and the fitted mask reads them as
    ``predict`` does; a fitted numeric column that now holds strings or
    categories gets its own error there."""
    features = estimator.categorical_features
    if isinstance(features, str):
        return
    names = getattr(estimator, "feature_names_in_", None)
    requested = categorical_mask(features, X, len(fitted_mask), names, None)
    if not np.array_equal(requested, fitted_mask):
        raise ValueError(
            f"categorical_features={features!r} picks other columns than those the "
            "model was fitted with: a continued fit (warm start, partial_fit) keeps "
            "the input handling it started with; refit to change them."
        )


def _numeric_columns(n_rows, parts, float32_flags, bad, bad_categorical=()):
    """The numeric columns a frame reader read one by one (``parts``), as one
    array (None without any), and its dtype: float32 when there are numeric
    columns and all are float32. ``bad`` names the columns of strings that
    are not numbers (``bad_categorical`` those of them with a categorical
    dtype): a ValueError says how to mark them."""
    if bad:
        raise _string_columns_error(bad, bad_categorical)
    dtype = np.float32 if float32_flags and all(float32_flags) else np.float64
    if not parts:
        return None, dtype
    numeric = np.empty((n_rows, len(parts)), dtype=dtype)
    for k, part in enumerate(parts):
        numeric[:, k] = part
    return numeric, dtype


def _read_pandas(X, mask):
    import pandas as pd

    numeric_idx = np.flatnonzero(~mask)
    bad, bad_categorical, flags, parts = [], [], [], []
    for i in numeric_idx:
        col = X.iloc[:, i]
        dtype = col.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            values = np.asarray(col.astype(object), dtype=object)
        elif pd.api.types.is_complex_dtype(dtype):
            raise ValueError(f"Complex data not supported: column {X.columns[i]!r}.")
        elif pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
            flags.append(_numpy_dtype(dtype) == np.float32)
            parts.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
            continue
        elif pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
            values = col.to_numpy(dtype=object, na_value=np.nan)
        else:
            raise ValueError(
                f"Column {X.columns[i]!r} has dtype {dtype}, which the input handling "
                "does not take: convert it to numbers, or mark it as categorical."
            )
        converted = _to_float(values)
        if converted is None:
            bad.append(X.columns[i])
            if isinstance(dtype, pd.CategoricalDtype):
                bad_categorical.append(X.columns[i])
            continue
        flags.append(False)
        parts.append(converted)
    numeric, dtype = _numeric_columns(X.shape[0], parts, flags, bad, bad_categorical)
    categorical = []
    for i in np.flatnonzero(mask):
        col = X.iloc[:, i]
        if isinstance(col.dtype, pd.CategoricalDtype):
            categorical.append(col.array)  # a pandas Categorical: codes and values
        else:
            values = col.to_numpy(dtype=object, na_value=np.nan)
            categorical.append(values)
    return Columns(numeric, categorical, mask, dtype, X.shape[0])


def _read_polars(X, mask):
    import polars as pl

    bad, bad_categorical, flags, parts = [], [], [], []
    for i in np.flatnonzero(~mask):
        col = X.to_series(int(i))
        if col.dtype.is_numeric() or col.dtype == pl.Boolean:
            flags.append(col.dtype == pl.Float32)
            parts.append(col.cast(pl.Float64).fill_null(np.nan).to_numpy())
            continue
        if col.dtype.is_temporal():
            raise ValueError(
                f"Column {X.columns[i]!r} has dtype {col.dtype}, which the input "
                "handling does not take: convert it to numbers, or mark it as "
                "categorical."
            )
        _refuse_nested(col, X.columns[i])
        values = np.asarray(col.to_numpy(), dtype=object)
        converted = _to_float(values)
        if converted is None:
            bad.append(X.columns[i])
            if isinstance(col.dtype, (pl.Categorical, pl.Enum)):
                bad_categorical.append(X.columns[i])
            continue
        flags.append(False)
        parts.append(converted)
    numeric, dtype = _numeric_columns(X.shape[0], parts, flags, bad, bad_categorical)
    categorical = []
    for i in np.flatnonzero(mask):
        col = X.to_series(int(i))
        if isinstance(col.dtype, (pl.Categorical, pl.Enum)):
            col = col.cast(pl.String)
        _refuse_nested(col, X.columns[i])
        if col.dtype == pl.Date:
            col = col.cast(pl.Datetime("us"))  # as pandas reads a date: a Timestamp
        if (col.dtype.is_integer() and col.null_count()) or col.dtype.is_temporal():
            # to_numpy() makes an integer column with nulls float64, which
            # merges integers beyond 2**53 (hashed IDs), and datetimes of
            # nanoseconds integers: Python's ints and datetimes, None.
            values = np.empty(len(col), dtype=object)
            values[:] = col.to_list()
            categorical.append(values)
            continue
        categorical.append(np.asarray(col.to_numpy(), dtype=object))
    return Columns(numeric, categorical, mask, dtype, X.shape[0])


def _refuse_nested(col, name):
    if col.dtype.is_nested():
        raise ValueError(
            f"Column {name!r} has dtype {col.dtype}, whose values are lists or "
            "records: the input handling takes numbers and categories; unnest or "
            "drop it."
        )


def _read_array(X, mask):
    X = np.asarray(X)
    numeric = X[:, ~mask]
    if X.dtype.kind in "US":
        # A list of numbers and strings becomes an array of strings: the
        # numbers as text, which the numeric columns read back.
        X = X.astype(object)
        try:
            numeric = numeric.astype(np.float64)
        except ValueError:
            numeric = numeric.astype(object)
    if numeric.dtype.kind not in "fiub":
        converted = _to_float(numeric)
        if converted is None:
            raise _NonNumericColumns(
                "The features not marked as categorical must be numbers; got "
                "non-numeric values. Mark them with categorical_features=[...]."
            )
        numeric = converted
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    categorical = [X[:, i] for i in np.flatnonzero(mask)]
    return Columns(
        numeric if numeric.shape[1] else None, categorical, mask, dtype, X.shape[0]
    )


def _to_float(values):
    """``values`` as float64 with missing values as NaN, or None when some
    value is not a number."""
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    values = np.where(_missing(values), np.nan, values)
    if values.dtype.kind == "c" or any(
        isinstance(v, (str, bytes, complex, np.complexfloating)) for v in values.flat
    ):
        return None
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        return None


def _has_infinity(values):
    """Whether a categorical column holds an infinite number."""
    if _is_categorical_array(values):
        values = np.asarray(values.categories, dtype=object)
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return bool(np.isinf(values).any())
    if values.dtype.kind != "O":
        return False
    return any(isinstance(v, (float, np.floating)) and np.isinf(v) for v in values.flat)


def _missing(values):
    """Where ``values`` (a 1-D or 2-D array) is missing: None, NaN, pd.NA,
    NaT."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "mM":
        return np.isnat(values)
    if values.dtype.kind != "O":
        return np.zeros(values.shape, dtype=bool)
    pd = sys.modules.get("pandas")
    na = pd.NA if pd is not None else None
    nat = pd.NaT if pd is not None else None

    def is_missing(v):
        return (
            v is None
            or v is na
            or v is nat
            or (isinstance(v, (float, np.floating)) and v != v)
            or (isinstance(v, (np.datetime64, np.timedelta64)) and np.isnat(v))
        )

    return np.fromiter(
        map(is_missing, values.flat), dtype=bool, count=values.size
    ).reshape(values.shape)


# ---------------------------------------------------------------------------
# Weighted statistics, exact for repeat counts


def weighted_quantiles(X, sample_weight, quantiles):
    """Quantiles of each column of ``X`` (NaN ignored) under weights that
    act as repeat counts: the averaged inverted CDF (numpy's
    ``"averaged_inverted_cdf"``): with ``C(v)`` the total weight of values
    ``<= v`` and ``W`` the column's total weight, the mean of the smallest
    ``v`` with ``C(v) >= q W`` and the smallest ``v`` with ``C(v) > q W``
    (that one capped at the largest value). A column without weight gets
    NaN. Returns (len(quantiles), n_features) float64 and the weight totals.
    """
    n, d = X.shape
    # Each level as a fraction num / den (a float's exact one, or a
    # Fraction's), so that q W is exact where it is a whole number.
    q = [Fraction(qj) for qj in quantiles]
    out = np.full((len(q), d), np.nan)
    totals = np.zeros(d)
    w = None if sample_weight is None else np.asarray(sample_weight, np.float64)
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, d, step):
        # Columns as contiguous rows: the sorts run along memory.
        block = np.array(X[:, start : start + step].T, dtype=np.float64, order="C")
        k = block.shape[0]
        if w is None:
            values = np.sort(block, axis=1)  # NaN last
            weights = (~np.isnan(values)).astype(np.float64)
        else:
            order = np.argsort(block, axis=1)  # ties: equal values, any order
            values = np.take_along_axis(block, order, axis=1)
            weights = np.where(np.isnan(values), 0.0, w[order])
        cum = np.cumsum(weights, axis=1)
        total = cum[:, -1]
        totals[start : start + k] = total
        rows = np.arange(k)
        # The total scaled by a power of two (exactly): num * total must not
        # overflow for totals near float64's largest number.
        exponent = np.frexp(total)[1]
        unit_total = np.ldexp(total, -exponent)
        for j, qj in enumerate(q):
            # As floats (exact: a float's numerator has 53 bits at most and
            # its denominator is a power of two; k and 7 for the knots):
            # numpy 1 would make an object array of a Python int beyond int64.
            num, den = float(qj.numerator), float(qj.denominator)
            target = np.ldexp(num * unit_total / den, exponent)
            target = target[:, None]
            # Leading rows of weight 0 (cum 0) are absent, also at q = 0.
            lo = np.maximum((cum < target).sum(axis=1), (cum <= 0).sum(axis=1))
            lo = np.minimum(lo, n - 1)
            hi = np.minimum((cum <= target).sum(axis=1), n - 1)
            lo_v, hi_v = values[rows, lo], values[rows, hi]
            hi_v = np.where(np.isnan(hi_v) | (weights[rows, hi] == 0), lo_v, hi_v)
            out[j, start : start + k] = np.where(
                total > 0, 0.5 * lo_v + 0.5 * hi_v, np.nan
            )
    return out, totals


def _weighted_std(X, sample_weight):
    """Weighted (ddof=0) standard deviation of each column, NaN ignored."""
    w = np.ones(X.shape[0]) if sample_weight is None else sample_weight
    std = np.zeros(X.shape[1])
    step = max(1, _BLOCK_ELEMENTS // max(X.shape[0], 1))
    for start in range(0, X.shape[1], step):
        block = np.asarray(X[:, start : start + step], dtype=np.float64)
        present = ~np.isnan(block)
        # Scaled by a power of two near each column's largest magnitude
        # (exactly: the same bits for moderate values), so that squares of
        # values beyond 1e154 do not overflow, nor those below 1e-154
        # vanish.
        peak = np.max(np.where(present, np.abs(block), 0.0), axis=0)
        exponent = exponents_near(peak)
        block = np.ldexp(block, -exponent)
        ww = np.where(present, w[:, None], 0.0)
        total = ww.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean = np.where(present, block, 0.0).T @ w / np.where(total > 0, total, 1)
            dev = np.where(present, block - mean, 0.0)
            var = (ww * dev * dev).sum(axis=0) / np.where(total > 0, total, 1)
        std[start : start + block.shape[1]] = np.ldexp(np.sqrt(var), exponent)
    return std


def _range_is_zero(X, sample_weight):
    """Columns whose values in rows of positive weight are all equal."""
    present = ~np.isnan(X)
    if sample_weight is not None:
        present &= (np.asarray(sample_weight) > 0)[:, None]
    lo = np.min(np.where(present, X, np.inf), axis=0)
    hi = np.max(np.where(present, X, -np.inf), axis=0)
    return ~(hi > lo)


# ---------------------------------------------------------------------------
# Learning


def learn(columns, sample_weight):
    """The fitted attributes of the handling for validated raw input
    ``columns`` (a float array, a sparse matrix, or :class:`Columns`)."""
    if isinstance(columns, Columns):
        numeric, categorical, mask = (
            columns.numeric,
            columns.categorical,
            columns.is_categorical,
        )
    else:
        numeric, categorical = columns, []
        mask = np.zeros(columns.shape[1], dtype=bool)
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    numeric_idx = np.flatnonzero(~mask)
    spline_features, spline_knots = _no_encoding()
    if numeric is None or numeric.shape[1] == 0:
        center, scale, clip = np.zeros(0), np.ones(0), _CLIP
        had_nan = np.zeros(0, dtype=bool)
    elif sp.issparse(numeric):
        center, scale, clip = (
            np.zeros(numeric.shape[1]),
            np.ones(numeric.shape[1]),
            np.inf,
        )
        had_nan = _sparse_nan_columns(numeric, sw)
    else:
        # One sort of the columns serves the scaling and the encoding's knots.
        levels = _spline_levels(numeric, sw)
        quantiles, totals = weighted_quantiles(numeric, sw, [0.25, 0.5, 0.75, *levels])
        q25, q50, q75 = quantiles[:3]
        with np.errstate(over="ignore", invalid="ignore"):
            iqr = q75 - q25
            # The difference, exact for close quantiles; past float64's
            # range, the difference of the quotients.
            scale = np.where(
                np.isfinite(iqr),
                iqr / _IQR_PER_SD,
                q75 / _IQR_PER_SD - q25 / _IQR_PER_SD,
            )
        flat = np.flatnonzero(~(scale > 0))  # the std, or 1 when constant
        if len(flat):
            sub = numeric[:, flat]
            std = _weighted_std(sub, sw)
            scale[flat] = np.where(_range_is_zero(sub, sw), 1.0, std)
        # The transform divides by scale * clip in the data's dtype: beyond
        # its range the divisor would be inf, and the feature 0 (half the
        # range leaves room for rounding).
        largest = float(np.finfo(numeric.dtype).max) / (2 * _CLIP)
        scale = np.where(scale > 0, np.minimum(scale, largest), 1.0)
        center = np.where(totals > 0, q50, 0.0)
        center = np.where(np.isfinite(center), center, 0.0)
        nan = np.isnan(numeric)
        if sw is not None:
            nan &= (sw > 0)[:, None]
        had_nan = nan.any(axis=0)
        clip = _CLIP
        splined, spline_knots = _learn_splines(quantiles[3:], center, scale)
        spline_features = numeric_idx[splined]
    categories = [_learn_categories(values, sw) for values in categorical]
    return {
        "is_categorical_": mask,
        "input_center_": center,
        "input_scale_": scale,
        "input_clip_": float(clip),
        "input_missing_indicators_": numeric_idx[had_nan],
        "input_categories_": categories,
        "input_spline_features_": spline_features,
        "input_spline_knots_": spline_knots,
    }


def _spline_levels(numeric, sample_weight):
    """The quantile levels of the piecewise-linear encoding's knots: the
    ``_SPLINE_KNOTS`` evenly spaced levels from 0 to 1, or none when the
    data do not get the encoding.

    A network gains from the encoding where there are enough rows to learn
    a shape per feature: it is used only when there are
    ``_SPLINE_ROWS_PER_FEATURE`` rows (total weight) per numeric feature.
    The encoding multiplies the numeric part of the network's input (and of
    its first layer's work) by ``_SPLINE_KNOTS``: it is not used beyond
    ``_SPLINE_MAX_FEATURES`` numeric features, where no measurement showed
    it to pay for that.
    """
    d = numeric.shape[1]
    rows = len(numeric) if sample_weight is None else sample_weight.sum()
    if (
        _SPLINE_KNOTS < 2
        or d > _SPLINE_MAX_FEATURES
        or not rows >= _SPLINE_ROWS_PER_FEATURE * d
    ):
        return []
    # Exact fractions: 5/7 of a total weight of 700 must be 500, which the
    # float 5/7 times 700 is not.
    return [Fraction(k, _SPLINE_KNOTS - 1) for k in range(_SPLINE_KNOTS)]


def _learn_splines(quantiles, center, scale):
    """The numeric features that get a piecewise-linear encoding, as
    positions among the numeric features, and their knots, from their
    ``quantiles`` at the levels of :func:`_spline_levels` (no rows: none).

    The knots are the quantiles in the clipped scale the network sees
    (``tanh((x - center) / (scale * c))``); only the features whose knots
    are distinct get the encoding (not a feature of few values, which its
    linear term already fits).
    """
    if len(quantiles) == 0:
        return _no_encoding()
    with np.errstate(over="ignore"):  # beyond the range: a knot at +-1
        knots = np.tanh((quantiles - center) / (scale * _CLIP)).T
    # Distinct in float32 too: a knot interval of at least 1e-4 of the range.
    distinct = np.all(np.diff(knots, axis=1) > 1e-4, axis=1) & np.all(
        np.isfinite(knots), axis=1
    )
    if not distinct.any():
        return _no_encoding()
    return np.flatnonzero(distinct), knots[distinct]


def _no_encoding():
    """The features and knots of no piecewise-linear encoding."""
    return np.zeros(0, dtype=np.intp), np.zeros((0, _SPLINE_KNOTS))


def _sparse_nan_columns(X, sample_weight):
    X = X.tocoo()
    nan = np.isnan(X.data)
    if sample_weight is not None:
        nan &= sample_weight[X.row] > 0
    had = np.zeros(X.shape[1], dtype=bool)
    had[X.col[nan]] = True
    return had


def _codes(values):
    """``(uniques, codes)`` of the non-missing values (codes -1 where missing)."""
    if _is_categorical_array(values):
        cats = np.asarray(values.categories, dtype=object)
        return cats, np.asarray(values.codes, dtype=np.intp)
    values = np.asarray(values)
    missing = _missing(values)
    codes = np.full(len(values), -1, dtype=np.intp)
    present = values[~missing]
    try:
        uniques, inverse = np.unique(present, return_inverse=True)
    except TypeError:  # values of kinds that do not compare (str and int)
        index = {}
        inverse = np.fromiter(
            (index.setdefault(v, len(index)) for v in present),
            dtype=np.intp,
            count=len(present),
        )
        uniques = np.empty(len(index), dtype=object)
        uniques[:] = list(index)
    codes[~missing] = inverse
    return np.asarray(uniques, dtype=object), codes


def _is_categorical_array(values):
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(values, pd.Categorical)


def _sorted_categories(values, with_nan):
    """Categories as OneHotEncoder keeps them: float64 when all are numbers
    (booleans as 0 and 1, as scikit-learn reads a boolean category column),
    else object; sorted by value (when they do not compare, as numbers and
    strings in one column: the numbers by value, then the rest by kind and
    text), NaN last. Integers that float64 cannot hold exactly (beyond 2**53,
    such as hashed IDs) stay objects: as floats, distinct ones would merge."""
    values = list(values)
    all_numbers = all(
        isinstance(v, (bool, int, float, np.number)) and not _beyond_float64(v)
        for v in values
    )
    if all_numbers:
        out = np.sort(np.asarray(values, dtype=np.float64))
        return np.append(out, np.nan) if with_nan else out
    try:
        values = sorted(values)
    except TypeError:
        values = sorted(values, key=_mixed_sort_key)
    out = np.empty(len(values) + with_nan, dtype=object)
    out[: len(values)] = values
    if with_nan:
        out[-1] = np.nan
    return out


def _mixed_sort_key(value):
    """Orders values that do not compare among themselves: numbers first,
    by value, then the others by kind and text."""
    if isinstance(value, (bool, np.bool_, numbers.Real)):
        return (0, "", value)
    return (1, type(value).__name__, str(value))


# Integers up to this size are exact in float64.
_EXACT_INTEGERS = 2**53


def _beyond_float64(v):
    """Whether ``v`` is an integer that float64 cannot hold exactly."""
    return isinstance(v, (int, np.integer)) and abs(int(v)) > _EXACT_INTEGERS


def _learn_categories(values, sample_weight):
    """The categories of one column: those of positive total weight, at most
    ``_MAX_CATEGORIES`` of them (the heaviest; ties by value), NaN included
    as a category of its own."""
    uniques, codes = _codes(values)
    w = np.ones(len(codes)) if sample_weight is None else sample_weight
    weights = np.bincount(codes + 1, weights=w, minlength=len(uniques) + 1)
    nan_weight, weights = weights[0], weights[1:]
    candidates = [(weight, k) for k, weight in enumerate(weights) if weight > 0]
    # Ties broken by value: rank by value first.
    by_value = _sorted_categories(uniques, False)
    rank = {_key(v): r for r, v in enumerate(by_value)}
    candidates.sort(key=lambda t: (-t[0], rank[_key(uniques[t[1]])]))
    items = [(weight, uniques[k]) for weight, k in candidates]
    if nan_weight > 0:
        items.append((nan_weight, None))
        items.sort(key=lambda t: -t[0])  # stable: NaN after the ties above it
    kept = items[:_MAX_CATEGORIES]
    with_nan = any(v is None for _, v in kept)
    return _sorted_categories([v for _, v in kept if v is not None], with_nan)


def _key(v):
    """A hashable key under which equal category values coincide."""
    if isinstance(v, (np.floating, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, (np.integer, np.bool_)):
        return int(v)
    if isinstance(v, np.str_):
        return str(v)
    return v


# ---------------------------------------------------------------------------
# Transforming


class InputHandling:
    """The fitted handling of an estimator, from its attributes."""

    def __init__(self, attributes):
        self.is_categorical = np.asarray(attributes["is_categorical_"], dtype=bool)
        self.center = np.asarray(attributes["input_center_"], dtype=np.float64)
        self.scale = np.asarray(attributes["input_scale_"], dtype=np.float64)
        self.clip = float(attributes["input_clip_"])
        self.indicators = np.asarray(
            attributes["input_missing_indicators_"], dtype=np.intp
        )
        self.categories = list(attributes["input_categories_"])
        self.numeric_idx = np.flatnonzero(~self.is_categorical)
        # Missing indicators as positions among the numeric features.
        self.indicator_pos = np.searchsorted(self.numeric_idx, self.indicators)
        self.spline_features = np.asarray(
            attributes["input_spline_features_"], dtype=np.intp
        )
        self.spline_knots = np.asarray(attributes["input_spline_knots_"], np.float64)
        self.spline_pos = np.searchsorted(self.numeric_idx, self.spline_features)

    @classmethod
    def of(cls, estimator):
        if not hasattr(estimator, ATTRIBUTES[0]):
            return None
        # A model fitted before the encoding existed has no encoding.
        missing = dict(
            zip(("input_spline_features_", "input_spline_knots_"), _no_encoding())
        )
        return cls(
            {name: getattr(estimator, name, missing.get(name)) for name in ATTRIBUTES}
        )

    @property
    def n_numeric(self):
        return len(self.numeric_idx)

    @property
    def n_outputs(self):
        return (
            self.n_numeric
            + len(self.indicators)
            + sum(len(c) for c in self.categories)
            + self.n_spline_outputs
        )

    @property
    def n_spline_outputs(self):
        return self.spline_knots.shape[0] * max(self.spline_knots.shape[1] - 1, 0)

    def spline_ramps(self):
        """The piecewise-linear encoding as ramps, one per output column:
        ``(column, left, rise_slope, rise_floor, right, fall_slope)``, and
        the output is ``clip(min((u - left) * rise_slope + rise_floor,
        (right - u) * fall_slope), 0, 1)`` of the clipped numeric feature
        ``u = tanh((x - center) / (scale * c))`` (0 where NaN) at position
        ``column`` among the numeric features.

        For knots ``t_0 < ... < t_{K-1}`` of a feature, output ``k`` (``0 <=
        k < K - 1``) is the hat that is 1 at ``t_k`` and 0 at ``t_{k-1}``
        and ``t_{k+1}``, the first one held at 1 below ``t_0``: the degree-1
        B-splines of scikit-learn's ``SplineTransformer`` with
        ``extrapolation="constant"`` and ``include_bias=False``.
        """
        t = self.spline_knots
        n, k = t.shape[0], max(t.shape[1] - 1, 0)
        column = np.repeat(self.spline_pos, k)
        left = np.zeros((n, k))
        left[:, 1:] = t[:, : k - 1]
        centre, right = t[:, :k], t[:, 1:]
        rise_slope = np.zeros((n, k))
        rise_slope[:, 1:] = 1.0 / (centre[:, 1:] - left[:, 1:])
        rise_floor = np.zeros((n, k))
        rise_floor[:, 0] = 1.0
        fall_slope = 1.0 / (right - centre)
        return (
            column,
            left.ravel(),
            rise_slope.ravel(),
            rise_floor.ravel(),
            right.ravel(),
            fall_slope.ravel(),
        )

    @property
    def passthrough(self):
        return not np.isfinite(self.clip)

    def transform(self, columns):
        """The network's input for validated raw input ``columns``, in its
        float dtype."""
        if isinstance(columns, Columns):
            numeric, categorical = columns.numeric, columns.categorical
        else:
            numeric, categorical = columns, []
        dtype = np.dtype(columns.dtype)
        if self.is_categorical.any() and not categorical:
            raise ValueError("The categorical features are missing from X.")
        if sp.issparse(numeric) and not self.is_categorical.any():
            if self.passthrough:
                return self._transform_sparse(numeric, dtype)
            numeric = numeric.toarray()
        n = numeric.shape[0] if numeric is not None else len(categorical[0])
        out = np.zeros((n, self.n_outputs), dtype=dtype)
        if self.n_numeric:
            if sp.issparse(numeric):
                numeric = numeric.toarray()
            self._transform_numeric(numeric, out)
        offset = self.n_numeric + len(self.indicators)
        for values, cats in zip(categorical, self.categories):
            index = _category_index(values, cats)
            rows = np.flatnonzero(index >= 0)
            out[rows, offset + index[rows]] = 1
            offset += len(cats)
        if self.n_spline_outputs:
            self._transform_splines(out, offset)
        return out

    def _transform_splines(self, out, offset):
        """The piecewise-linear encoding, from the clipped numeric features
        already in ``out``, into its columns from ``offset`` on."""
        dtype = out.dtype
        column, left, rise, floor, right, fall = (
            a.astype(dtype) for a in self.spline_ramps()
        )
        column = column.astype(np.intp)
        clip = dtype.type(self.clip)
        step = max(1, _BLOCK_ELEMENTS // max(len(column), 1))
        for start in range(0, out.shape[0], step):
            u = out[start : start + step, column] / clip
            up = (u - left) * rise + floor
            down = np.multiply(right - u, fall, out=u)
            np.minimum(up, down, out=up)
            np.clip(up, 0, 1, out=up)
            out[start : start + step, offset:] = up

    def _transform_numeric(self, X, out):
        """Numeric features and missing indicators into ``out``, in blocks of
        rows (the temporaries stay small), in ``out``'s dtype."""
        dtype = out.dtype
        center = self.center.astype(dtype)
        divisor = (
            self.scale * self.clip if not self.passthrough else self.scale
        ).astype(dtype)
        clip = dtype.type(self.clip)
        d, pos = self.n_numeric, self.indicator_pos
        step = max(1, _BLOCK_ELEMENTS // max(d, 1))
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, X.shape[0], step):
                block = np.asarray(X[start : start + step], dtype=dtype)
                z = out[start : start + step, :d]
                np.subtract(block, center, out=z)
                np.divide(z, divisor, out=z)
                if not self.passthrough:
                    np.tanh(z, out=z)
                    np.multiply(z, clip, out=z)
                nan = np.isnan(z)
                z[nan] = 0
                if len(pos):
                    out[start : start + step, d : d + len(pos)] = np.isnan(
                        block[:, pos]
                    )

    def _transform_sparse(self, X, dtype):
        """Passed through: explicit NaN becomes 0 (an explicit zero), and the
        missing indicators are appended, sparse."""
        X = X.astype(dtype, copy=True)
        # A cell stored twice holds the sum of its entries (NaN if either
        # is): merged first, so that it is one value, and NaN one indicator.
        X.sum_duplicates()
        coo = X.tocoo()
        nan = np.isnan(coo.data)
        if nan.any():
            X.data[np.isnan(X.data)] = 0
        if not len(self.indicators):
            return X
        column = np.full(X.shape[1], -1, dtype=np.intp)
        column[self.indicator_pos] = np.arange(len(self.indicator_pos))
        rows, cols = coo.row[nan], column[coo.col[nan]]
        keep = cols >= 0
        indicator = sp.csr_matrix(
            (np.ones(int(keep.sum()), dtype=dtype), (rows[keep], cols[keep])),
            shape=(X.shape[0], len(self.indicator_pos)),
        )
        return sp.hstack([X, indicator], format=X.format, dtype=dtype)


def _category_index(values, cats):
    """Each value's position in ``cats`` (-1: not a learned category)."""
    n_cats = len(cats)
    nan_index = -1
    if n_cats and isinstance(cats[-1], (float, np.floating)) and cats[-1] != cats[-1]:
        nan_index = n_cats - 1
    if _is_categorical_array(values):
        lookup = _category_index(np.asarray(values.categories, dtype=object), cats)
        lookup = np.append(lookup, nan_index)  # code -1 (missing) reads the last entry
        return lookup[np.asarray(values.codes, dtype=np.intp)]
    values = np.asarray(values)
    missing = _missing(values)
    index = np.full(len(values), -1, dtype=np.intp)
    index[missing] = nan_index
    present = ~missing
    if cats.dtype.kind == "f":
        known = cats[: n_cats if nan_index < 0 else n_cats - 1]
        floats = (
            _to_float(values[present])
            if values.dtype.kind not in "fiub"
            else (values[present].astype(np.float64))
        )
        if floats is None:  # strings where numbers were learned: all unknown
            return index
        pos = np.minimum(np.searchsorted(known, floats), max(len(known) - 1, 0))
        hit = (
            (known[pos] == floats) if len(known) else np.zeros(len(floats), dtype=bool)
        )
        index[present] = np.where(hit, pos, -1)
        return index
    table = {_key(v): k for k, v in enumerate(cats) if k != nan_index}
    index[present] = np.fromiter(
        (table.get(_key(v), -1) for v in values[present]),
        dtype=np.intp,
        count=int(present.sum()),
    )
    return index


# ---------------------------------------------------------------------------
# The scikit-learn twin


def _with_none(cats):
    """A column's categories for the encoder: with ``None`` before a NaN
    category of objects, which the encoder (unlike the handling) tells from
    NaN; its one-hot column repeats NaN's (see :func:`twin_input_rows`)."""
    if cats.dtype == object and len(cats) and _missing(cats[-1:])[0]:
        out = np.empty(len(cats) + 1, dtype=object)
        out[:-2], out[-2], out[-1] = cats[:-1], None, np.nan
        return out
    return cats


def twin_input_rows(handling):
    """For each input column of the twin's network, the handled input
    column it repeats: the handling's layout, with NaN's one-hot column
    repeated for the ``None`` category :func:`_with_none` adds."""
    rows = list(range(handling.n_numeric + len(handling.indicators)))
    start = len(rows)
    for cats in handling.categories:
        block = list(range(start, start + len(cats)))
        if len(_with_none(cats)) > len(cats):
            block.insert(-1, block[-1])
        rows += block
        start += len(cats)
    rows += range(start, start + handling.n_spline_outputs)
    return np.array(rows, dtype=np.intp)


def sklearn_steps(handling, feature_names, dtype):
    """The handling as fitted scikit-learn transformers: ``(steps, fold)``,
    the steps of a :class:`~sklearn.pipeline.Pipeline` that end where the
    network's input starts (in the layout of :func:`twin_input_rows`), and
    the factor to multiply the first layer's rows of the numeric features
    by (the clip's ``c``: the steps give ``tanh((x - center) / (scale *
    c))``, the network's input is ``c`` times that).

    Only scikit-learn classes and numpy functions: the result loads without
    this package. Each transformer is fitted on a few made-up rows (which
    sets its bookkeeping: feature counts and names, the missing indicator's
    columns, the encoder's output layout), then its learned values are
    replaced by the handling's.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        FunctionTransformer,
        OneHotEncoder,
        SplineTransformer,
        StandardScaler,
    )

    numeric_steps = []
    if not handling.passthrough:
        numeric_steps += [
            ("scale", StandardScaler()),
            ("clip", FunctionTransformer(np.tanh, feature_names_out="one-to-one")),
        ]
    else:
        # Values pass through, but the imputer refuses integers and bools
        # (counts from a CountVectorizer, say), which the network reads as
        # floats: this scaler, which changes no value, converts them.
        numeric_steps.append(
            ("to_float", StandardScaler(with_mean=False, with_std=False))
        )
    numeric_steps.append(
        (
            "impute",
            SimpleImputer(strategy="constant", fill_value=0.0, add_indicator=True),
        )
    )
    categories = [_with_none(c) for c in handling.categories]
    n_cats = [len(c) for c in categories]
    n_rows = max([2] + n_cats)
    n_features = len(handling.is_categorical)
    columns = []
    for j in range(n_features):
        if handling.is_categorical[j]:
            cats = categories[len(columns) - int((~handling.is_categorical[:j]).sum())]
            values = np.empty(n_rows, dtype=cats.dtype)
            values[:] = [cats[r % len(cats)] for r in range(n_rows)]
        else:
            values = np.zeros(n_rows, dtype=dtype)
            if j in set(handling.indicators.tolist()):
                values[0] = np.nan
        columns.append(values)
    if feature_names is not None:
        import pandas as pd

        # Object columns stay objects (pandas would infer strings, and take
        # None for NaN).
        X = pd.DataFrame(
            {
                name: pd.Series(values, dtype=values.dtype)
                for name, values in zip(feature_names, columns)
            },
            columns=list(feature_names),
        )
    elif handling.is_categorical.any():
        X = np.empty((n_rows, n_features), dtype=object)
        for j, values in enumerate(columns):
            X[:, j] = values
    else:
        X = np.column_stack(columns) if columns else np.zeros((n_rows, 0), dtype=dtype)

    fold = 1.0 if handling.passthrough else handling.clip
    if not handling.is_categorical.any() and not handling.n_spline_outputs:
        numeric = Pipeline(numeric_steps).fit(X)
        _set_scaler(numeric, handling, slice(None))
        return list(numeric.steps), fold
    transformers = []
    if handling.n_numeric:
        transformers.append(
            ("numeric", Pipeline(numeric_steps), handling.numeric_idx.tolist())
        )
    if handling.is_categorical.any():
        transformers.append(
            (
                "categorical",
                OneHotEncoder(
                    handle_unknown="ignore",
                    sparse_output=False,
                    dtype=np.dtype(dtype).type,
                ),
                np.flatnonzero(handling.is_categorical).tolist(),
            )
        )
    if handling.n_spline_outputs:
        spline_steps = [
            ("scale", StandardScaler()),
            ("clip", FunctionTransformer(np.tanh, feature_names_out="one-to-one")),
            ("impute", SimpleImputer(strategy="constant", fill_value=0.0)),
            (
                "spline",
                SplineTransformer(
                    degree=1,
                    knots=handling.spline_knots.T,
                    extrapolation="constant",
                    include_bias=False,
                ),
            ),
        ]
        transformers.append(
            ("spline", Pipeline(spline_steps), handling.spline_features.tolist())
        )
    try:
        ct = ColumnTransformer(transformers, sparse_threshold=0).fit(X)
    except TypeError as exc:
        # The handling sorts any hashable categories; scikit-learn's encoder
        # takes strings only or numbers only.
        raise ValueError(
            "These categories cannot be exported to scikit-learn's OneHotEncoder, "
            f"which takes categories that are all strings or all numbers ({exc}). "
            "Convert such a column's values to strings before fitting, to export "
            "the model."
        ) from exc
    if handling.n_numeric:
        _set_scaler(ct.named_transformers_["numeric"], handling, slice(None))
    if handling.n_spline_outputs:
        _set_scaler(ct.named_transformers_["spline"], handling, handling.spline_pos)
    if handling.is_categorical.any():
        encoder = ct.named_transformers_["categorical"]
        if [len(c) for c in encoder.categories_] != n_cats:
            raise ValueError("The categories cannot be exported to a OneHotEncoder.")
        encoder.categories_ = [_exported_categories(c) for c in categories]
    return [("preprocess", ct)], fold


def _exported_categories(cats):
    """A column's categories as OneHotEncoder compares them with the
    column's values: integers beyond float64's exact ones (which the
    handling keeps as objects) as int64, or as uint64 when some exceed
    2**63 or are numpy unsigned integers."""
    if (
        cats.dtype == object
        and any(_missing(cats[-1:]))
        and any(
            isinstance(v, (datetime.date, datetime.time, datetime.timedelta))
            for v in cats
        )
    ):
        raise ValueError(
            "The categories cannot be exported to a OneHotEncoder: dates or times "
            "with missing values, which the encoder reads as NaT, none of its "
            "categories. Fill them (or convert the column to strings) before fitting."
        )
    pd = sys.modules.get("pandas")
    if pd is not None and cats.dtype == object:
        # Dates and times as pandas' Timestamp and Timedelta, which the
        # encoder matches with datetime64 values of any unit (a datetime
        # object only with microseconds).
        cats = np.array(
            [
                pd.Timestamp(v)
                if isinstance(v, datetime.date)
                else pd.Timedelta(v)
                if isinstance(v, datetime.timedelta)
                else v
                for v in cats
            ],
            dtype=object,
        )
    if cats.dtype != object or not any(_beyond_float64(v) for v in cats):
        return cats.copy()
    if not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in cats
    ):
        raise ValueError(
            "The categories cannot be exported to a OneHotEncoder: integers beyond "
            f"2**53 with other values (got {cats.tolist()[:5]}...); scikit-learn "
            "reads such a column as floats, which merge them."
        )
    # uint64 values: int64 categories would be compared with them as floats
    # (numpy's promotion), which merges them.
    unsigned = any(isinstance(v, np.unsignedinteger) for v in cats)
    dtype = np.uint64 if unsigned or max(cats) > np.iinfo(np.int64).max else np.int64
    if not np.iinfo(dtype).min <= min(cats) <= max(cats) <= np.iinfo(dtype).max:
        raise ValueError(
            "The categories cannot be exported to a OneHotEncoder: integers beyond "
            f"{np.dtype(dtype).name}'s range (got {cats.tolist()[:5]}...)."
        )
    return np.array(cats, dtype=dtype)


def _set_scaler(pipeline, handling, positions):
    """The handling's centre and ``scale * c`` of the numeric features at
    ``positions`` into the pipeline's scaler."""
    if handling.passthrough:
        return
    scaler = pipeline.named_steps["scale"]
    scaler.mean_ = handling.center[positions].copy()
    scaler.scale_ = handling.scale[positions] * handling.clip
    with np.errstate(over="ignore"):  # var_ is bookkeeping: inf for huge scales
        scaler.var_ = scaler.scale_**2
