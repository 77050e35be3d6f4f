"""scikit-learn's estimator checks on the batch-normalized MLPs."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_bn import MLPBNClassifier, MLPBNRegressor

# No check is expected to fail. scikit-learn itself skips one check,
# check_classifiers_multilabel_output_format_decision_function, because these
# MLPs (like scikit-learn's) have no decision_function.
EXPECTED_FAILED = {}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED.get(type(estimator).__name__, {})


# The checks fit default estimators (max_iter=200) on tiny data sets; that they
# stop before converging is expected and beside the point of the checks.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    [MLPBNClassifier(), MLPBNRegressor()],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
