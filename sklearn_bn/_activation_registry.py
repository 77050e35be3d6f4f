"""The activations, declared once: the hidden layers' and the output layer's.

Each list is in the order of the activations' codes. It drives:

* the compiled code: ``setup.py`` renders ``_activations.pxd`` from
  ``_activations.pxd.tp`` with these lists (the codes and names, the tag type
  the batch-norm kernels are compiled for, which inputs a derivative reads);
* the estimators' ``activation`` parameter and the demo's choices;
* the numpy forms: prediction's fallback in extended precision
  (``_engine.FoldedNetwork``) and the tests' references.

The compiled math of each activation is written in the template, next to the
others' (see CONTRIBUTING.md, "Adding an activation"). This module imports
nothing of the package, so that ``setup.py`` can read it before anything is
built.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.special import expit, softmax


class HiddenActivation(NamedTuple):
    """A hidden layer's activation ``a = f(y)``.

    ``forward`` and ``derivative`` take ``y`` (any float dtype, ``longdouble``
    included) and return ``f(y)`` and ``f'(y)`` in its dtype. ``reads`` says
    which of ``y`` (``"input"``) and ``a = f(y)`` (``"output"``) the
    compiled derivative reads (``"nothing"``: a constant).
    """

    name: str
    tag: str  # the C tag type the kernels are compiled for
    reads: str
    forward: Callable
    derivative: Callable


class OutputActivation(NamedTuple):
    """The output layer's activation, which also picks the loss.

    ``forward`` takes the raw outputs (rows) in any float dtype.
    """

    name: str
    loss: str
    forward: Callable


def _logistic(y):
    # 0.5 * (1 + tanh(y / 2)): never overflows, in any dtype.
    return 0.5 * (1 + np.tanh(0.5 * y))


HIDDEN = (
    HiddenActivation("identity", "Identity", "nothing", lambda y: y, np.ones_like),
    HiddenActivation(
        "relu",
        "Relu",
        "input",
        lambda y: np.maximum(y, 0),
        lambda y: (y > 0).astype(y.dtype),
    ),
    HiddenActivation("tanh", "Tanh", "output", np.tanh, lambda y: 1 - np.tanh(y) ** 2),
    HiddenActivation(
        "logistic",
        "Logistic",
        "output",
        _logistic,
        lambda y: _logistic(y) * (1 - _logistic(y)),
    ),
)

OUTPUT = (
    OutputActivation("identity", "half squared error", lambda z: z),
    OutputActivation("logistic", "binary log loss", expit),
    OutputActivation("softmax", "log loss", lambda z: softmax(z, axis=1)),
    OutputActivation("exp", "half Poisson deviance", np.exp),
)

ACTIVATIONS = {a.name: a for a in HIDDEN}
OUT_ACTIVATIONS = {a.name: a for a in OUTPUT}
