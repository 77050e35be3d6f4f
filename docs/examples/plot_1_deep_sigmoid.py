"""
=====================================
Deep sigmoid networks with batch norm
=====================================

A network of eight hidden layers of logistic units is hard to train with plain
gradient descent: the pre-activations of the deep layers drift into the flat
tails of the logistic function, the gradients that reach the first layers
vanish, and the network stays at chance level. Batch normalization re-centres
and re-scales every hidden layer's pre-activations at every step, so each layer
works in the steep part of its nonlinearity.

Here both networks get the same data (scikit-learn's digits), the same layers,
optimizer, learning rate and number of epochs.
"""

# %%
# Training both networks epoch by epoch
# -------------------------------------
# ``partial_fit`` runs one epoch over the data it is given, for both
# scikit-learn's :class:`~sklearn.neural_network.MLPClassifier` and
# :class:`~sklearn_bn.MLPBNClassifier`, so that the test accuracy can be
# measured after every epoch.

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from sklearn_bn import MLPBNClassifier

X, y = load_digits(return_X_y=True)
X = X / 16.0  # pixels in [0, 1]
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
classes = np.unique(y)

params = dict(hidden_layer_sizes=(64,) * 8, activation="logistic", random_state=0)
models = {
    "MLPBNClassifier": MLPBNClassifier(**params),
    "MLPClassifier": MLPClassifier(**params),
}
n_epochs = 20
history = {name: {"loss": [], "accuracy": []} for name in models}
for _ in range(n_epochs):
    for name, model in models.items():
        model.partial_fit(X_train, y_train, classes=classes)
        history[name]["loss"].append(model.loss_)
        history[name]["accuracy"].append(model.score(X_test, y_test))

for name in models:
    print(
        f"{name}: test accuracy after {n_epochs} epochs "
        f"{history[name]['accuracy'][-1]:.3f}"
    )

# %%
# Learning curves
# ---------------
# The plain network's loss stays at :math:`\ln 10 \approx 2.30`, the loss of a
# uniform guess over the 10 classes, and its accuracy at chance level. The
# batch-normalized network's training loss falls from the first epoch; its
# test accuracy follows a few epochs later, because prediction normalizes with
# the running statistics, not with those of a minibatch: they start at 0 and
# 1 and, with the default ``bn_momentum=0.1``, need a few dozen minibatches
# (11 per epoch here) to catch up with the network (see
# :ref:`mlp_running_statistics`).

epochs = np.arange(1, n_epochs + 1)
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
for name in models:
    ax_loss.plot(epochs, history[name]["loss"], label=name)
    ax_acc.plot(epochs, history[name]["accuracy"], label=name)
ax_loss.axhline(np.log(10), color="gray", ls=":", label="uniform guess")
ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
ax_acc.axhline(0.1, color="gray", ls=":", label="chance level")
ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy", ylim=(0, 1))
ax_loss.legend()
ax_acc.legend(loc="center right")
fig.suptitle("digits, 8 hidden logistic layers of 64 units")
plt.show()

# %%
# What the hidden layers see
# --------------------------
# A fitted :class:`~sklearn_bn.MLPBNClassifier` folds batch norm into its
# weights (:meth:`~sklearn_bn.MLPBNClassifier.to_sklearn`), so both trained
# networks can be run layer by layer with the same few lines of numpy. The
# spread of each layer's activations over the test images shows the
# difference: in the plain network it collapses layer after layer, until
# every image gives the deep layers the same input, and there is nothing left
# to classify.


def hidden_activations(mlp, X):
    """Activations of each hidden layer of a scikit-learn MLP (logistic)."""
    out = []
    a = X
    for W, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1]):
        a = 1 / (1 + np.exp(-(a @ W + b)))
        out.append(a)
    return out


# The twin is a pipeline: the network's input handling, then a plain
# MLPClassifier.
twin = models["MLPBNClassifier"].to_sklearn()
folded = twin[-1]
spread = {
    "MLPBNClassifier": hidden_activations(folded, twin[:-1].transform(X_test)),
    "MLPClassifier": hidden_activations(models["MLPClassifier"], X_test),
}
fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
layers = np.arange(1, 9)
for name, acts in spread.items():
    # standard deviation over the images, averaged over the units of a layer
    spreads = [a.std(axis=0).mean() for a in acts]
    ax.plot(layers, spreads, marker="o", label=name)
ax.set_yscale("log")
ax.set(
    xlabel="hidden layer",
    ylabel="std of activations over images",
    title="Spread of the hidden activations (test set)",
)
ax.legend()
plt.show()

# %%
# Batch norm does more than undo a bad initialization: with it, the
# statistics of every layer are reset at every step while the weights below
# change. See :ref:`user_guide` for the math, and
# ``python -m sklearn_bn --hidden 64,64,64,64,64,64,64,64 --activation
# logistic`` for the same comparison from the command line.
