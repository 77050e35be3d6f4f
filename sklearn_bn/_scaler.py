"""BatchNormScaler (placeholder until implemented)."""
from sklearn.base import BaseEstimator, TransformerMixin


class BatchNormScaler(TransformerMixin, BaseEstimator):
    """Placeholder."""
