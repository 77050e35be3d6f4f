"""scikit-learn's estimator checks on the batch-normalized MLPs."""

import inspect
import re

import pytest
from sklearn.utils import get_tags

from sklearn_bn import BatchNormScaler, MLPBNClassifier, MLPBNRegressor

from reference import parametrize_with_checks

# No check is expected to fail on the defaults. scikit-learn itself skips one
# check, check_classifiers_multilabel_output_format_decision_function, because
# these MLPs (like scikit-learn's) have no decision_function.
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


# The same checks with the features on: each pairs an estimator with the
# checks it cannot pass and why (each a property of the feature, not a bug).
_REPEATS_ARE_NOT_WEIGHTS = (
    "check_sample_weight_equivalence_on_dense_data",
    "check_sample_weight_equivalence_on_sparse_data",
)
_DROPOUT = (
    "dropout draws a mask per row: a row repeated twice gets two masks, a row "
    "of weight 2 one"
)
_GHOST = (
    "ghost batches are runs of consecutive rows: repeating rows moves the "
    "chunks' boundaries, a weight does not"
)
_BALANCED_PARTIAL_FIT = (
    "class_weight='balanced' needs the class frequencies of the whole data, "
    "which partial_fit does not see: it raises, as SGDClassifier's does"
)
_BALANCED_REPEATS = (
    "'balanced' weights are computed from the rows: repeating rows changes the "
    "class frequencies, so repeats and weights give other class weights"
)
CONFIGURED = [
    (MLPBNClassifier(input_preprocessing=None), {}),
    (MLPBNClassifier(solver="sgd", learning_rate="adaptive"), {}),
    (MLPBNClassifier(bn_stats="population", bn_momentum=None), {}),
    (MLPBNClassifier(label_smoothing=0.1, weight_decay=0.01), {}),
    (MLPBNClassifier(activation="tanh", hidden_layer_sizes=(8, 8)), {}),
    (
        MLPBNClassifier(dropout=0.2),
        {check: _DROPOUT for check in _REPEATS_ARE_NOT_WEIGHTS},
    ),
    (
        MLPBNClassifier(virtual_batch_size=4),
        {check: _GHOST for check in _REPEATS_ARE_NOT_WEIGHTS},
    ),
    (
        MLPBNClassifier(class_weight="balanced"),
        {
            "check_fit_score_takes_y": _BALANCED_PARTIAL_FIT,
            "check_n_features_in_after_fitting": _BALANCED_PARTIAL_FIT,
            "check_estimators_partial_fit_n_features": _BALANCED_PARTIAL_FIT,
            **{check: _BALANCED_REPEATS for check in _REPEATS_ARE_NOT_WEIGHTS},
        },
    ),
    (MLPBNRegressor(input_preprocessing=None, solver="sgd"), {}),
    (MLPBNRegressor(loss="poisson"), {}),
    (MLPBNRegressor(bn_stats="population", weight_decay=0.01), {}),
]
_CONFIGURED_FAILS = {id(estimator): fails for estimator, fails in CONFIGURED}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    [estimator for estimator, _ in CONFIGURED],
    expected_failed_checks=lambda estimator: _CONFIGURED_FAILS[id(estimator)],
)
def test_sklearn_compatible_configured_estimator(estimator, check):
    check(estimator)


def test_poisson_regressor_is_tagged_for_non_negative_targets():
    # As PoissonRegressor: the checks then draw non-negative targets, which
    # the Poisson loss needs (negative ones raise a ValueError).
    assert get_tags(MLPBNRegressor(loss="poisson")).target_tags.positive_only
    assert not get_tags(MLPBNRegressor()).target_tags.positive_only


def _documented_parameters(cls):
    """The names in the class docstring's numpydoc Parameters section.

    ``inspect.getdoc``: Python 3.13 strips a docstring's indentation when it
    compiles it, earlier releases keep it.
    """
    section = inspect.getdoc(cls).split("Parameters\n----------\n", 1)[1]
    section = section.split("\nAttributes\n----------\n", 1)[0]
    return re.findall(r"^(\w+) : ", section, flags=re.MULTILINE)


@pytest.mark.parametrize(
    "cls", [BatchNormScaler, MLPBNClassifier, MLPBNRegressor], ids=lambda c: c.__name__
)
def test_docstring_documents_every_parameter_in_the_signatures_order(cls):
    # As scikit-learn's check_docstring_parameters: same names, same order.
    assert _documented_parameters(cls) == list(inspect.signature(cls).parameters)
