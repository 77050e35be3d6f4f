"""
========================================
Normalizing the inputs of a ReLU network
========================================

Gradient descent trains a network fastest when its inputs are centred and
have comparable scales (LeCun et al., *Efficient BackProp*, 1998): a feature
measured in thousands gets gradients a million times larger than one measured
in thousandths, and no single learning rate suits both. This example compares
three ways of feeding such data to a ReLU network: no scaling,
:class:`~sklearn.preprocessing.StandardScaler`, and
:class:`~sklearn_bn.BatchNormScaler`, for scikit-learn's
:class:`~sklearn.neural_network.MLPClassifier` and for
:class:`~sklearn_bn.MLPBNClassifier`.
"""

# %%
# Data with features of very different scales
# -------------------------------------------
# Three classes, twenty features, twelve of them informative; each feature is
# then measured in its own unit, from thousandths to thousands, with an offset
# of a few times its scale (as prices, counts and ratios sit side by side in a
# real table).

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_bn import BatchNormScaler, MLPBNClassifier

# Every model below gets the same fixed budget of epochs, on purpose.
warnings.filterwarnings("ignore", category=ConvergenceWarning)

X, y = make_classification(
    n_samples=3000,
    n_features=20,
    n_informative=12,
    n_redundant=0,
    n_classes=3,
    class_sep=1.5,
    random_state=0,
)
rng = np.random.default_rng(0)
units = 10.0 ** rng.permutation(np.linspace(-3, 3, 20))
X = X * units + 5 * units * rng.uniform(-1, 1, size=20)
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)

scaled = BatchNormScaler().fit(X_train).transform(X_train)
fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
features = np.arange(X.shape[1])
ax.scatter(features, X_train.std(axis=0), label="raw features", marker="o")
ax.scatter(features, scaled.std(axis=0), label="after BatchNormScaler", marker="x")
ax.set_yscale("log")
ax.set(
    xlabel="feature",
    ylabel="standard deviation",
    title="The scale of each feature",
)
ax.legend()
plt.show()

# %%
# BatchNormScaler and StandardScaler
# ----------------------------------
# With ``epsilon=0`` and the default exact statistics, ``BatchNormScaler``
# computes what ``StandardScaler`` computes, and that is how it is used below.
# Its default ``epsilon=1e-5`` (as in batch norm) changes the scaled values
# in the sixth digit, which a fixed-budget fit can turn into a few test
# samples either way; ``gamma`` and ``beta`` set the output's scale and offset
# for the units that read it (see :ref:`scaler_user_guide`).

difference = np.abs(
    BatchNormScaler(epsilon=0.0).fit_transform(X_train)
    - StandardScaler().fit_transform(X_train)
).max()
print(f"largest difference from StandardScaler: {difference:.1e}")

# %%
# Six models, same budget
# -----------------------
# Every network has one hidden layer of 64 ReLU units and trains for 50
# epochs of Adam from the same initial weights, each estimator with its own
# defaults otherwise (sklearn_bn's were chosen on tabular data: a cosine
# schedule, ``alpha=0.01``, minibatches of 128).

preprocessing = {
    "no scaling": None,
    "StandardScaler": StandardScaler(),
    "BatchNormScaler": BatchNormScaler(epsilon=0.0),
}
networks = {
    "MLPClassifier": MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=50, random_state=0
    ),
    # input_preprocessing=None: X straight into the first layer, to show
    # what batch norm alone does (its own input handling, on by default,
    # would scale the raw features itself).
    "MLPBNClassifier": MLPBNClassifier(
        hidden_layer_sizes=(64,),
        max_iter=50,
        random_state=0,
        input_preprocessing=None,
    ),
}
scores, curves = {}, {}
for net_name, network in networks.items():
    for prep_name, scaler in preprocessing.items():
        steps = [network] if scaler is None else [scaler, network]
        model = make_pipeline(*steps).fit(X_train, y_train)
        scores[net_name, prep_name] = model.score(X_test, y_test)
        curves[net_name, prep_name] = list(model[-1].loss_curve_)
        print(
            f"{net_name:>15} + {prep_name:<15}: test accuracy "
            f"{scores[net_name, prep_name]:.3f}"
        )

# %%
# Results
# -------
# Without scaling, the plain network learns mostly from the few features with
# the largest numbers and its training loss stalls high. Batch norm inside the
# network copes better, since the hidden layer normalizes what it receives,
# but the first layer's weights still get gradients of wildly different sizes
# and the small features are left behind. With the inputs standardized, both
# networks train smoothly, and the two scalers give the same result. (With
# its default ``input_preprocessing='auto'``, MLPBNClassifier robustly scales
# raw features itself: see :ref:`mlp_input_handling`.)

fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
width = 0.38
positions = np.arange(len(preprocessing))
for k, net_name in enumerate(networks):
    values = [scores[net_name, p] for p in preprocessing]
    bars = ax_bar.bar(positions + (k - 0.5) * width, values, width, label=net_name)
    ax_bar.bar_label(bars, fmt="%.3f", fontsize=8)
ax_bar.set_xticks(positions, list(preprocessing))
ax_bar.set(ylim=(0.4, 1.02), ylabel="test accuracy", title="Test accuracy")
ax_bar.legend(loc="lower right")
for (net_name, prep_name), curve in curves.items():
    style = "-" if net_name == "MLPBNClassifier" else "--"
    ax_curve.plot(curve, style, label=f"{net_name}, {prep_name}")
ax_curve.set_yscale("log")
ax_curve.set(xlabel="epoch", ylabel="training loss", title="Training loss")
ax_curve.legend(fontsize=7)
plt.show()

# %%
# ``BatchNormScaler`` goes further than ``StandardScaler`` in two ways:
# ``gamma`` and ``beta`` give the output the range that suits the next layer's
# nonlinearity (``gamma=0.5`` for ``tanh`` units, for example), and
# ``momentum`` keeps batch norm's moving averages over a stream fed through
# ``partial_fit`` (see :ref:`sphx_glr_auto_examples_plot_5_streaming.py`).
