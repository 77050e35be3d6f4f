"""
==================================================
Grid search over ``bn_momentum`` and hidden layers
==================================================

The estimators of sklearn_bn are ordinary scikit-learn estimators: they go in
a :class:`~sklearn.pipeline.Pipeline`, and
:class:`~sklearn.model_selection.GridSearchCV` tunes them through the usual
``step__parameter`` names. Here the search covers the network's hidden layers
and ``bn_momentum``, the weight of each new minibatch in the running
statistics that the network uses for prediction.
"""

# %%
# The pipeline and the grid
# -------------------------

import warnings

import matplotlib.pyplot as plt
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline

from sklearn_bn import BatchNormScaler, MLPBNClassifier

# A fixed budget of 15 epochs per fit keeps the search short.
warnings.filterwarnings("ignore", category=ConvergenceWarning)

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)

pipeline = make_pipeline(
    BatchNormScaler(),
    MLPBNClassifier(max_iter=15, batch_size=128, random_state=0),
)
grid = {
    "mlpbnclassifier__hidden_layer_sizes": [(32,), (128,), (64, 64)],
    "mlpbnclassifier__bn_momentum": [0.01, 0.1, 0.5, 0.9],
}
search = GridSearchCV(pipeline, grid, cv=3)
search.fit(X_train, y_train)
print("best parameters:", search.best_params_)
print(
    f"cross-validated accuracy {search.best_score_:.3f}, "
    f"test accuracy {search.score(X_test, y_test):.3f}"
)

# %%
# The results
# -----------
# ``cv_results_`` holds one row per candidate; a pivot table puts the hidden
# layers in rows and ``bn_momentum`` in columns.

results = pd.DataFrame(search.cv_results_)
results["hidden layers"] = results["param_mlpbnclassifier__hidden_layer_sizes"].astype(
    str
)
table = results.pivot_table(
    index="hidden layers",
    columns="param_mlpbnclassifier__bn_momentum",
    values="mean_test_score",
)
print(table.round(3))

# %%
# ``bn_momentum`` is the weight of the newest minibatch in the running
# statistics: with 0.9, they are mostly the mean and variance of the last
# minibatch or two, estimated from 128 images each, and every prediction is
# normalized with those noisy estimates. Accuracy drops as ``bn_momentum``
# grows, most for the narrowest network. Between 0.01 and 0.1 (the default,
# as in PyTorch) the statistics average over tens to hundreds of minibatches
# and the choice hardly matters here; the width of the network matters more.
# See :ref:`mlp_running_statistics` for when to move ``bn_momentum``.

fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
for hidden, row in table.iterrows():
    ax.plot(
        row.index.astype(float),
        row.to_numpy(),
        marker="o",
        label=f"hidden={hidden}",
    )
ax.set_xscale("log")
ax.set_xticks([0.01, 0.1, 0.5, 0.9], ["0.01", "0.1", "0.5", "0.9"])
ax.set(
    xlabel="bn_momentum",
    ylabel="mean cross-validated accuracy",
    title="GridSearchCV over bn_momentum and hidden layers",
)
ax.legend()
plt.show()
