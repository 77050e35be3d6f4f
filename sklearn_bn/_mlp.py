"""Batch-normalized MLPs (placeholder until implemented)."""
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin


class MLPBNClassifier(ClassifierMixin, BaseEstimator):
    """Placeholder."""


class MLPBNRegressor(RegressorMixin, BaseEstimator):
    """Placeholder."""
