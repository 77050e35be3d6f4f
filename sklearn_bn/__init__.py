"""Batch normalization for scikit-learn.

``BatchNormScaler`` standardizes features with batch-norm statistics;
``MLPBNClassifier`` and ``MLPBNRegressor`` are multilayer perceptrons whose
hidden layers are ``linear -> batch norm -> activation``.
"""

try:
    from sklearn_bn import _training  # noqa: F401  (compiled)
except ImportError as exc:  # pragma: no cover - unbuilt source tree
    raise ImportError(
        f"sklearn_bn's compiled modules cannot be imported ({exc}). In a source "
        "checkout, build them with `pip install .` from its root."
    ) from exc

from sklearn_bn._mlp import MLPBNClassifier, MLPBNRegressor
from sklearn_bn._scaler import BatchNormScaler

__version__ = "0.1.0"

__all__ = ["BatchNormScaler", "MLPBNClassifier", "MLPBNRegressor", "__version__"]
