"""
=====================================================================
Dropout, ghost batch norm and population statistics, side by side
=====================================================================

:class:`~sklearn_bn.MLPBNClassifier` has three training features beyond
plain batch norm:

* ``dropout``: inverted dropout on each hidden layer's output while training;
* ``virtual_batch_size``: ghost batch norm, each minibatch normalized in
  chunks of that many rows, with each chunk's own statistics;
* ``bn_stats="population"``: at the end of ``fit`` the running statistics
  are replaced by the exact statistics of the training rows, layer by layer.

Here they are compared on a data set where a (128, 128) network overfits:
4 classes, 40 features of which 10 informative and 10 redundant, 5% of the
labels flipped, 2,250 training rows. Each configuration is fitted with three
seeds; the seed sets the split and the initial weights, shared by every
configuration. The user guide's :ref:`table <mlp_features_measured>` has the
same comparison over five seeds and four data sets.
"""

# %%
# Data and configurations
# -----------------------

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_bn import MLPBNClassifier

X, y = make_classification(
    n_samples=3000,
    n_features=40,
    n_informative=10,
    n_redundant=10,
    n_classes=4,
    flip_y=0.05,
    random_state=0,
)
configurations = {
    "defaults": {},
    "dropout=0.1": {"dropout": 0.1},
    "dropout=0.2": {"dropout": 0.2},
    "virtual 32": {"virtual_batch_size": 32},
    "population\nstatistics": {"bn_stats": "population"},
}
seeds = [0, 1, 2]


def fit(seed, **params):
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=seed
    )
    model = make_pipeline(
        StandardScaler(),
        MLPBNClassifier(
            hidden_layer_sizes=(128, 128), max_iter=100, random_state=seed, **params
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    return model, model.score(X_train, y_train), model.score(X_test, y_test)


scores = {
    name: [fit(seed, **params)[1:] for seed in seeds]
    for name, params in configurations.items()
}
for name, runs in scores.items():
    train, test = np.mean(runs, axis=0)
    print(f"{name.replace(chr(10), ' '):28s} train {train:.3f}  test {test:.3f}")

# %%
# Train and test accuracy
# -----------------------
# Without dropout the network fits its training rows almost perfectly and
# the test accuracy stays far below; dropout narrows that gap. Ghost batch
# norm adds noise of its own (the statistics of 32 rows instead of the
# default minibatch's 128), which also regularizes: compare it with the
# defaults, the same minibatches without it.

names = list(configurations)
train_acc = np.array([[r[0] for r in scores[n]] for n in names])
test_acc = np.array([[r[1] for r in scores[n]] for n in names])
x = np.arange(len(names))
fig, ax = plt.subplots(figsize=(8, 4))
ax.bar(x - 0.2, train_acc.mean(1), 0.4, label="train", color="#c8c8c8")
ax.bar(
    x + 0.2,
    test_acc.mean(1),
    0.4,
    yerr=test_acc.std(1),
    label="test",
    color="#3c78b4",
    capsize=3,
)
ax.set_xticks(x, names, fontsize=8)
ax.set_ylim(0.6, 1.1)
ax.set_ylabel(f"accuracy (mean of {len(seeds)} seeds)")
ax.legend(loc="upper center", ncol=2)
ax.set_title("MLPBNClassifier (128, 128) on 2,250 training rows")
fig.tight_layout()

# %%
# What population statistics change
# ---------------------------------
# The running statistics are moving averages over the minibatches of the
# last epochs, taken while the weights were still moving. ``bn_stats=
# "population"`` (or :meth:`~sklearn_bn.MLPBNClassifier.recompute_bn_stats`
# on a fitted model) replaces them by the mean and variance of each hidden
# layer over the whole training set, with the final weights. For the first
# hidden layer they can be checked with numpy: its values before batch norm
# are the network's input (the scaled rows through its input handling, a
# smooth clip around each feature's median) times ``coefs_[0]``.

running, _, _ = fit(0)
population, _, _ = fit(0, bn_stats="population")
X_train = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)[0]
net = population[-1]
c = net.input_clip_
H = c * np.tanh(
    (running[0].transform(X_train) - net.input_center_) / (net.input_scale_ * c)
)
Z = H @ net.coefs_[0]
print(
    "population mean of layer 1 against numpy, largest difference:",
    f"{np.abs(population[-1].running_means_[0] - Z.mean(0)).max():.1e}",
)

fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
for ax, attribute, title in zip(
    axes, ["running_means_", "running_vars_"], ["mean", "variance"]
):
    before = getattr(running[-1], attribute)
    after = getattr(population[-1], attribute)
    for layer, color in zip(range(len(before)), ["#3c78b4", "#e08a3c"]):
        ax.scatter(
            after[layer],
            before[layer],
            s=8,
            color=color,
            label=f"hidden layer {layer + 1}",
        )
    low = min(min(a.min() for a in after), min(b.min() for b in before))
    high = max(max(a.max() for a in after), max(b.max() for b in before))
    ax.plot([low, high], [low, high], color="black", linewidth=0.8)
    ax.set_xlabel(f"population {title}")
    ax.set_ylabel(f"running {title}")
    ax.set_title(f"each unit's {title}")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %%
# Both fits are the same training run (``bn_stats`` acts after the last
# epoch), so the points' distance from the diagonal is how far the moving
# averages lag behind the final network: little, after 100 epochs of a
# network that has stopped moving. On this data set the difference in test
# accuracy is small (the first figure); population statistics matter most
# after a ``partial_fit`` stream or a short last epoch, where the moving
# averages have seen few minibatches of the final weights.

plt.show()
