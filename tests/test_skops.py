"""Saving and loading with skops.io (the secure alternative to pickle).

skops refuses to load a type it does not trust; the types to trust for this
package are exactly its three estimator classes (documented in the user
guide's "Saving and exporting models" page). The scikit-learn twins from
``to_sklearn()`` hold no type of this package and load with skops' defaults.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline

from sklearn_bn import BatchNormScaler, MLPBNClassifier, MLPBNRegressor

sio = pytest.importorskip("skops.io")

TRUSTED = {
    BatchNormScaler: "sklearn_bn._scaler.BatchNormScaler",
    MLPBNClassifier: "sklearn_bn._mlp.MLPBNClassifier",
    MLPBNRegressor: "sklearn_bn._mlp.MLPBNRegressor",
}


def _fitted(cls, **params):
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32) if cls is MLPBNRegressor else X  # both dtypes covered
    if cls is BatchNormScaler:
        return cls(momentum=0.1, gamma=0.5).fit(X), X, None
    est = cls(hidden_layer_sizes=(8, 4), max_iter=5, random_state=0, **params)
    target = y if cls is MLPBNClassifier else X[:, 0] * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, target)
    return est, X, target


def _outputs(est, X):
    if isinstance(est, BatchNormScaler):
        return [est.transform(X), est.inverse_transform(X)]
    if hasattr(est, "predict_proba"):
        return [est.predict(X), est.predict_proba(X)]
    return [est.predict(X)]


def _dump(est, tmp_path):
    path = tmp_path / "model.skops"
    sio.dump(est, path)
    return path


@pytest.mark.parametrize("cls", list(TRUSTED))
def test_dump_load_round_trip(cls, tmp_path):
    est, X, target = _fitted(cls)
    path = _dump(est, tmp_path)
    assert sio.get_untrusted_types(file=path) == [TRUSTED[cls]]
    with pytest.raises(sio.exceptions.UntrustedTypesFoundException):
        sio.load(path)
    restored = sio.load(path, trusted=[TRUSTED[cls]])
    assert type(restored) is cls
    assert restored.get_params() == est.get_params()
    for got, expected in zip(_outputs(restored, X), _outputs(est, X)):
        assert got.dtype == expected.dtype
        assert_array_equal(got, expected)
    if target is not None:
        # Training continues identically: the optimizer state was saved too.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.partial_fit(X, target)
            restored.partial_fit(X, target)
        for a, b in zip(est.coefs_ + est.gammas_, restored.coefs_ + restored.gammas_):
            assert_array_equal(a, b)


def test_pipeline_needs_the_estimators_types_only(tmp_path):
    X, y = load_iris(return_X_y=True)
    model = make_pipeline(
        BatchNormScaler(),
        MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    path = _dump(model, tmp_path)
    untrusted = sio.get_untrusted_types(file=path)
    assert sorted(untrusted) == sorted(
        [TRUSTED[BatchNormScaler], TRUSTED[MLPBNClassifier]]
    )
    restored = sio.load(path, trusted=untrusted)
    assert_array_equal(restored.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("cls", list(TRUSTED))
def test_sklearn_twin_loads_with_skops_defaults(cls, tmp_path):
    # The networks' twin without input handling: the MLP alone (with it, a
    # pipeline: see the next test).
    params = {} if cls is BatchNormScaler else {"input_preprocessing": None}
    est, X, _ = _fitted(cls, **params)
    path = _dump(est.to_sklearn(), tmp_path)
    assert sio.get_untrusted_types(file=path) == []
    twin = sio.load(path)  # nothing of sklearn_bn to trust
    assert type(twin).__module__.startswith("sklearn.")
    tol = 1e-5 if X.dtype == np.float32 else 1e-6
    if cls is BatchNormScaler:
        assert_allclose(twin.transform(X), est.transform(X), rtol=tol, atol=tol)
    elif cls is MLPBNClassifier:
        assert_allclose(twin.predict_proba(X), est.predict_proba(X), rtol=tol, atol=tol)
    else:
        assert_allclose(twin.predict(X), est.predict(X), rtol=tol, atol=tol)


@pytest.mark.parametrize("cls", [MLPBNClassifier, MLPBNRegressor])
def test_twin_pipeline_with_input_handling_needs_no_type_of_sklearn_bn(cls, tmp_path):
    # The input handling's twin holds scikit-learn's SimpleImputer, whose
    # fitted dtype skops does not trust by default (as for any fitted
    # SimpleImputer): numpy.dtype is the one type to trust, none of sklearn_bn.
    est, X, _ = _fitted(cls)
    path = _dump(est.to_sklearn(), tmp_path)
    untrusted = sio.get_untrusted_types(file=path)
    assert set(untrusted) <= {"numpy.dtype"}
    twin = sio.load(path, trusted=untrusted)
    tol = 1e-5 if X.dtype == np.float32 else 1e-6
    if cls is MLPBNClassifier:
        assert_allclose(twin.predict_proba(X), est.predict_proba(X), rtol=tol, atol=tol)
    else:
        assert_allclose(twin.predict(X), est.predict(X), rtol=tol, atol=tol)


def test_twin_pipeline_with_the_piecewise_linear_encoding(tmp_path):
    # With the encoding (500 rows per numeric feature), the twin also holds
    # a fitted SplineTransformer, whose BSpline and asarray skops lists too
    # (as for any fitted SplineTransformer); still none of sklearn_bn.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(1100, 2))
    y = (X[:, 0] + np.sin(3 * X[:, 1]) > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPBNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(
            X, y
        )
    assert len(est.input_spline_features_) == 2
    path = _dump(est.to_sklearn(), tmp_path)
    untrusted = sio.get_untrusted_types(file=path)
    # (their exact names depend on the scipy version)
    assert "numpy.dtype" in untrusted
    assert any(name.endswith("BSpline") for name in untrusted)
    assert all(name.split(".")[0] in ("numpy", "scipy") for name in untrusted)
    twin = sio.load(path, trusted=untrusted)
    assert_allclose(twin.predict_proba(X), est.predict_proba(X), rtol=1e-6, atol=1e-9)
