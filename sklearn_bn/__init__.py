"""Batch normalization for scikit-learn."""
__version__ = "0.1.0"
