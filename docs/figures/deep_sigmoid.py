"""Make ``deep_sigmoid.png``: the figure of the README, of the documentation's
index and of the user guide.

Scikit-learn's digits (pixels / 16, ``train_test_split(random_state=0)``),
8 hidden logistic layers of 64 units, Adam, at most 40 epochs, for
``MLPBNClassifier`` and ``MLPClassifier`` with the same settings (the test
``test_deep_sigmoid_network_trains_with_batch_norm`` asserts the accuracies).

    python docs/figures/deep_sigmoid.py      # from the repository's root

Needs the package built and matplotlib; takes a few seconds.
"""

import sys
import warnings
from pathlib import Path

# The checkout's package first, built in place (python setup.py build_ext
# --inplace), when the script runs from it without an install.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from sklearn_bn import MLPBNClassifier

OUT = Path(__file__).with_suffix(".png")


def main():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16, y, random_state=0)
    params = dict(
        hidden_layer_sizes=(64,) * 8, activation="logistic", max_iter=40, random_state=0
    )
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    with threadpool_limits(1), warnings.catch_warnings():  # as the test runs it
        warnings.simplefilter("ignore", ConvergenceWarning)
        for cls in (MLPBNClassifier, MLPClassifier):
            model = cls(**params).fit(X_train, y_train)
            accuracy = model.score(X_test, y_test)
            curve = model.loss_curve_
            stopped = (
                "" if model.n_iter_ == 40 else f", stopped after {model.n_iter_} epochs"
            )
            ax.plot(
                np.arange(1, len(curve) + 1),
                curve,
                label=f"{cls.__name__}: test accuracy {accuracy:.3f}{stopped}",
            )
            print(
                f"{cls.__name__}: test accuracy {accuracy:.3f}, {model.n_iter_} epochs"
            )
    ax.axhline(
        np.log(10), color="gray", ls=":", label="loss of a uniform guess (ln 10)"
    )
    ax.set(
        xlabel="epoch",
        ylabel="training loss (loss_curve_)",
        ylim=(0, 2.5),
        title="digits, 8 hidden logistic layers of 64 units",
    )
    ax.legend(loc="center right", fontsize=9)
    fig.savefig(OUT, dpi=100)
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
