import os

import pytest

# scikit-learn's check_array_api_input runs (with plain numpy arrays) only when
# SciPy's array-API mode is on; it must be set before SciPy is first imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")


def pytest_configure(config):
    # Test the compiled package, never half-built sources.
    try:
        import sklearn_bn._training  # noqa: F401
    except ImportError as exc:
        pytest.exit(
            f'sklearn_bn is not built ({exc}): run `pip install ".[test]"` in the '
            "repository's root, then `pytest`.",
            returncode=4,
        )
