"""Tests of sklearn_bn.onnx: skl2onnx converters through the scikit-learn twins.

onnxruntime runs each exported graph and its outputs are compared with the
estimator's own ``predict``, ``predict_proba`` and ``transform``. Tolerances:
float64 graphs compute in float64 and agree to 1e-10; float32 graphs compute
in float32, as the estimators do on float32 data, and agree to float32
rounding: 1e-5 absolute on probabilities and on standardized features (a few
float32 roundings of the largest term, see ``_transform_bound``), 1e-5
relative on regression outputs. Predicted labels are equal wherever the two
largest probabilities are further apart than the tolerance.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_diabetes, load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline

from sklearn_bn import BatchNormScaler, MLPBNClassifier, MLPBNRegressor

skl2onnx = pytest.importorskip("skl2onnx")
ort = pytest.importorskip("onnxruntime")

from sklearn_bn.onnx import register_converters  # noqa: E402

DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module", autouse=True)
def converters():
    register_converters()


def _tol(dtype):
    return 1e-5 if dtype == np.float32 else 1e-10


def _fit(est, X, y=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # short fits on purpose
        return est.fit(X, y)


def _run(model, X, options=None):
    """Export ``model`` for inputs like ``X``, run it on ``X`` with onnxruntime."""
    onx = skl2onnx.to_onnx(model, X[:1], options=options)
    session = ort.InferenceSession(
        onx.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["X"]
    return session.run(None, {"X": X})


def _proba_matrix(proba, classes):
    """ZipMap's list of {class: probability} dicts as an array."""
    if isinstance(proba, list):
        return np.array([[row[c] for c in classes] for row in proba])
    return proba


def _assert_labels(labels, model, X, proba, dtype):
    expected = model.predict(X)
    top2 = np.sort(proba, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 10 * _tol(dtype)
    assert clear.mean() > 0.9
    assert_array_equal(labels[clear], expected[clear])


def _classification(dtype, binary=False):
    X, y = load_iris(return_X_y=True)
    if binary:
        y = np.where(y == 0, "setosa", "other")
    return X.astype(dtype), y


def _transform_bound(scaler, X):
    """A few roundings, in X's dtype, of the largest term of the exported
    graph's ``(X - mean_) / scale_`` (the StandardScaler twin's ``mean_``
    holds beta folded in)."""
    plain = scaler.to_sklearn()
    terms = (np.abs(X.astype(np.float64)) + np.abs(plain.mean_)) / np.abs(plain.scale_)
    return 8 * np.finfo(X.dtype).eps * (terms + np.abs(scaler.transform(X)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"gamma": 0.5, "beta": 1.0},
        {
            "gamma": [1.0, 2.0, -0.5, 3.0],
            "beta": [0.0, 1.0, 2.0, -1.0],
            "momentum": 0.2,
        },
    ],
)
def test_scaler_transform(dtype, params):
    X, _ = _classification(dtype)
    X = X * [1.0, 100.0, 1e-3, 10.0] + [
        0.0,
        1e3,
        5.0,
        -20.0,
    ]  # features of other scales
    X = X.astype(dtype)
    scaler = BatchNormScaler(**params).fit(X)
    (got,) = _run(scaler, X)
    expected = scaler.transform(X)
    assert got.dtype == dtype and got.shape == expected.shape
    assert np.all(
        np.abs(got.astype(np.float64) - expected) <= _transform_bound(scaler, X)
    )


def test_scaler_float32_graph_keeps_transforms_precision():
    # The graph computes as transform does: the centre rounded to float32,
    # its rounding error in the shift. The StandardScaler twin's float32
    # (x - mean_) / scale_ would move these features by mean_'s rounding
    # over their spread: 0.05 for the first, beta + 0.12 for 1e4 below.
    rng = np.random.default_rng(0)
    X = (1e4 + rng.normal(scale=0.01, size=(200, 1))).astype(np.float32)
    scaler = BatchNormScaler().fit(X)
    (got,) = _run(scaler, X)
    assert_allclose(got, scaler.transform(X), atol=1e-6)
    constant = np.full((50, 3), [651.0, 1e4, 1e6], dtype=np.float32)
    scaler = BatchNormScaler(beta=0.5).fit(constant)
    (got,) = _run(scaler, constant)
    assert_array_equal(got, np.full_like(constant, 0.5))
    # With skl2onnx's div option, the twin's graph, as documented: its
    # float32 (x - mean_) / scale_ (which scikit-learn 1.7's own transform
    # computes in float64).
    (got,) = _run(scaler, constant, options={id(scaler): {"div": "div"}})
    twin = scaler.to_sklearn()
    f32 = np.float32
    assert_allclose(got, (constant - twin.mean_.astype(f32)) / twin.scale_.astype(f32))
    assert np.abs(got - 0.5).max() > 0.1


def test_scaler_graph_of_a_spread_beyond_float32_computes_in_float64():
    # At epsilon=0 a spread below float32's smallest normal number gives a
    # scale beyond float32's range; transform computes such features in
    # float64, and so does the graph.
    X = np.array([[0.0, 1.0], [1e-45, 2.0], [0.0, 3.0]], dtype=np.float32)
    scaler = BatchNormScaler(epsilon=0.0).fit(X)
    (got,) = _run(scaler, X)
    assert got.dtype == np.float32
    assert_array_equal(got, scaler.transform(X))


def test_scaler_graph_of_a_scale_beyond_float64_computes_as_transform():
    # gamma / std is inf in float64: transform multiplies that feature by a
    # mantissa and powers of two, and so does the graph (by 1 for the
    # others, which changes no bit).
    X = np.array([[0.0, 1.0], [1e-40, 2.0], [2e-40, 5.0], [1.5e-40, 7.0]])
    scaler = BatchNormScaler(gamma=[1e300, 2.0], epsilon=0.0).fit(X)
    (got,) = _run(scaler, X)
    expected = scaler.transform(X)
    assert np.all(np.isfinite(expected)) and np.abs(expected[:, 0]).max() > 1e299
    assert_array_equal(got, expected)


def test_scaler_graph_of_integer_input_computes_in_float32():
    # As skl2onnx's StandardScaler converter: int64 in, float32 out.
    X = np.random.default_rng(0).integers(0, 10, (60, 3))
    y = (X[:, 0] > 4).astype(int)
    scaler = BatchNormScaler(gamma=2.0, beta=1.0).fit(X)
    (got,) = _run(scaler, X)
    assert got.dtype == np.float32
    assert_allclose(got, scaler.transform(X.astype(np.float32)), atol=1e-6)
    pipeline = _fit(
        make_pipeline(
            BatchNormScaler(), MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=3)
        ),
        X,
        y,
    )
    _, proba = _run(pipeline, X, options={"zipmap": False})
    assert_allclose(proba, pipeline.predict_proba(X), atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaler_of_a_dataframe_takes_one_input_per_column(dtype):
    # skl2onnx gives a DataFrame one input per column; the scaler joins them
    # as skl2onnx's StandardScaler converter does.
    pd = pytest.importorskip("pandas")
    X, _ = _classification(dtype)
    frame = pd.DataFrame(X, columns=list("abcd"))
    scaler = BatchNormScaler(gamma=2.0, beta=1.0).fit(frame)
    onx = skl2onnx.to_onnx(scaler, frame[:1])
    session = ort.InferenceSession(
        onx.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == list("abcd")
    (got,) = session.run(None, {c: frame[[c]].to_numpy() for c in frame.columns})
    assert np.all(
        np.abs(got.astype(np.float64) - scaler.transform(frame))
        <= _transform_bound(scaler, X)
    )


@pytest.mark.parametrize("kind", ["scaler", "classifier", "regressor"])
@pytest.mark.parametrize("width", [3, 5])
def test_declared_input_of_another_width_is_refused_at_export(kind, width):
    # skl2onnx's StandardScaler converter refuses it too; without the check
    # the graph was built and refused only by the runtime that loads it.
    from skl2onnx.common.data_types import FloatTensorType

    X, y = _classification(np.float32)  # 4 features
    model = {
        "scaler": lambda: BatchNormScaler().fit(X),
        "classifier": lambda: _fit(MLPBNClassifier(max_iter=2), X, y),
        "regressor": lambda: _fit(MLPBNRegressor(max_iter=2), X, y * 1.0),
    }[kind]()
    with pytest.raises(ValueError, match=f"X has {width} features, but .* 4"):
        skl2onnx.convert_sklearn(
            model, initial_types=[("x", FloatTensorType([None, width]))]
        )
    # A width left open is checked by the runtime, with the data.
    skl2onnx.convert_sklearn(
        model, initial_types=[("x", FloatTensorType([None, None]))]
    )


def test_conversion_leaves_the_callers_options_alone():
    X, y = _classification(np.float32)
    model = _fit(MLPBNClassifier(hidden_layer_sizes=(4,), max_iter=3), X, y)
    options = {}
    skl2onnx.to_onnx(model, X[:1], options=options)
    assert options == {}
    options = {id(model): {"zipmap": False}}
    (labels, proba) = _run(model, X, options=options)
    assert options == {id(model): {"zipmap": False}}
    assert isinstance(proba, np.ndarray)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_classifier_labels_and_probabilities(dtype, binary):
    X, y = _classification(dtype, binary)
    clf = _fit(
        MLPBNClassifier(hidden_layer_sizes=(16, 8), max_iter=30, random_state=0), X, y
    )
    labels, proba = _run(clf, X, options={"zipmap": False})
    expected = clf.predict_proba(X)
    assert proba.dtype == dtype and proba.shape == expected.shape
    assert_allclose(proba, expected, rtol=0, atol=_tol(dtype))
    _assert_labels(labels, clf, X, expected, dtype)


def test_classifier_zipmap_float32():
    # skl2onnx's default output for classifiers: one {class: probability}
    # dict per row (ZipMap takes float32 only, as for scikit-learn's own).
    X, y = _classification(np.float32)
    clf = _fit(
        MLPBNClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0), X, y
    )
    labels, proba = _run(clf, X)
    assert isinstance(proba, list) and set(proba[0]) == set(clf.classes_.tolist())
    expected = clf.predict_proba(X)
    assert_allclose(
        _proba_matrix(proba, clf.classes_.tolist()), expected, rtol=0, atol=1e-5
    )
    _assert_labels(labels, clf, X, expected, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_regressor_predictions(dtype, n_outputs):
    X, y = load_diabetes(return_X_y=True)
    X = X.astype(dtype)
    y = y if n_outputs == 1 else np.c_[y, -0.5 * y]
    reg = _fit(
        MLPBNRegressor(hidden_layer_sizes=(16,), max_iter=30, random_state=0), X, y
    )
    (got,) = _run(reg, X)
    expected = reg.predict(X)
    assert got.dtype == dtype and got.shape == (X.shape[0], n_outputs)
    assert_allclose(
        got.reshape(expected.shape),
        expected,
        rtol=_tol(dtype),
        atol=_tol(dtype) * np.abs(expected).max(),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_poisson_regressor_predictions(dtype, n_outputs):
    # skl2onnx has no exponential output: the graph adds an Exp node.
    X, y = load_diabetes(return_X_y=True)
    X = X.astype(dtype)
    y = y / y.mean() if n_outputs == 1 else np.c_[y / y.mean(), np.abs(X[:, 2]) * 10]
    reg = _fit(
        MLPBNRegressor(
            loss="poisson", hidden_layer_sizes=(16,), max_iter=30, random_state=0
        ),
        X,
        y,
    )
    (got,) = _run(reg, X)
    expected = reg.predict(X)
    assert got.dtype == dtype and got.shape == (X.shape[0], n_outputs)
    assert_allclose(
        got.reshape(expected.shape),
        expected,
        rtol=_tol(dtype),
        atol=_tol(dtype) * np.abs(expected).max(),
    )


def test_float32_model_float64_graph_agrees_to_float32_weights():
    # The twin holds the folded weights in the model's dtype: with float64
    # input, a float32 model's graph and twin round its folded weights to
    # float32, where predict folds them in float64 (the docs' figure).
    X, y = _classification(np.float64)
    clf = _fit(
        MLPBNClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0),
        X.astype(np.float32),
        y,
    )
    expected = clf.predict_proba(X)
    labels, proba = _run(clf, X, options={"zipmap": False})
    assert proba.dtype == np.float64
    assert_allclose(proba, expected, rtol=0, atol=1e-6)
    assert_allclose(clf.to_sklearn().predict_proba(X), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pipeline_of_scaler_and_network(dtype):
    X, y = _classification(dtype)
    X = (X * [1.0, 100.0, 1e-3, 10.0]).astype(dtype)
    model = _fit(
        make_pipeline(
            BatchNormScaler(),
            MLPBNClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0),
        ),
        X,
        y,
    )
    labels, proba = _run(model, X, options={"zipmap": False})
    expected = model.predict_proba(X)
    assert_allclose(proba, expected, rtol=0, atol=_tol(dtype))
    _assert_labels(labels, model, X, expected, dtype)

    reg_X, reg_y = load_diabetes(return_X_y=True)
    reg_X = reg_X.astype(dtype)
    reg = _fit(
        make_pipeline(
            BatchNormScaler(gamma=0.5),
            MLPBNRegressor(hidden_layer_sizes=(8,), max_iter=30, random_state=0),
        ),
        reg_X,
        reg_y,
    )
    (got,) = _run(reg, reg_X)
    expected = reg.predict(reg_X)
    assert_allclose(
        got.ravel(),
        expected,
        rtol=_tol(dtype),
        atol=_tol(dtype) * np.abs(expected).max(),
    )


def test_register_converters_twice_is_harmless():
    register_converters()
    X, y = _classification(np.float64)
    scaler = BatchNormScaler().fit(X)
    (got,) = _run(scaler, X)
    assert_allclose(got, scaler.transform(X), rtol=1e-12, atol=1e-12)
