"""Batch normalization for scikit-learn.

``BatchNormScaler`` standardizes features with batch-norm statistics;
``MLPBNClassifier`` and ``MLPBNRegressor`` are multilayer perceptrons whose
hidden layers are ``linear -> batch norm -> activation``.
"""

from sklearn_bn._scaler import BatchNormScaler
from sklearn_bn._mlp import MLPBNClassifier, MLPBNRegressor

__version__ = "0.1.0"

__all__ = ["BatchNormScaler", "MLPBNClassifier", "MLPBNRegressor", "__version__"]
