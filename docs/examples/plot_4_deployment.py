"""
========================================
Deployment: scikit-learn, ONNX and skops
========================================

A fitted model of sklearn_bn can leave sklearn_bn behind:

* ``to_sklearn()`` turns each estimator into its scikit-learn twin: a
  :class:`~sklearn.preprocessing.StandardScaler` for
  :class:`~sklearn_bn.BatchNormScaler`, and for
  :class:`~sklearn_bn.MLPBNClassifier` a pipeline of scikit-learn
  transformers (its input handling) ending in an
  :class:`~sklearn.neural_network.MLPClassifier` with batch norm folded into
  its weights;
* :func:`sklearn_bn.onnx.register_converters` lets skl2onnx export the
  estimators, and pipelines holding them, to ONNX, which onnxruntime (or any
  other ONNX runtime) executes without Python;
* ``skops.io`` saves the model itself, as a safer alternative to pickle.

Each route is checked here against the model's own predictions.
"""

# %%
# A model to deploy
# -----------------

import pickle

import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from sklearn_bn import BatchNormScaler, MLPBNClassifier
from sklearn_bn.onnx import register_converters

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)

model = make_pipeline(
    BatchNormScaler(),
    MLPBNClassifier(hidden_layer_sizes=(64, 64), early_stopping=True, random_state=0),
)
model.fit(X_train, y_train)
proba = model.predict_proba(X_test)
print(f"test accuracy {model.score(X_test, y_test):.3f}")

# %%
# The scikit-learn twin
# ---------------------
# Both steps convert, so the exported pipeline keeps the scaler in front of
# the network, and it holds no class of sklearn_bn: it pickles and loads
# where only scikit-learn is installed.

plain = make_pipeline(model[0].to_sklearn(), model[-1].to_sklearn())
print(plain)
plain_proba = plain.predict_proba(X_test)
print(
    "same predictions:",
    np.array_equal(plain.predict(X_test), model.predict(X_test)),
)
print(f"largest probability difference: {np.abs(plain_proba - proba).max():.1e}")
print(f"pickled size: {len(pickle.dumps(plain)) / 1024:.0f} KiB")

# %%
# ONNX, in float32 and float64
# ----------------------------
# After :func:`~sklearn_bn.onnx.register_converters`, skl2onnx converts each
# step as its twin. The input's dtype chooses the graph's precision;
# ``zipmap=False`` returns the probabilities as one array (ONNX's ZipMap,
# skl2onnx's default for classifiers, takes float32 only).

register_converters()

onnx_proba = {}
for dtype in (np.float32, np.float64):
    X_typed = X_test.astype(dtype)
    onx = to_onnx(model, X_typed[:1], options={"zipmap": False})
    session = ort.InferenceSession(
        onx.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    labels, onnx_proba[dtype] = session.run(None, {"X": X_typed})
    size = len(onx.SerializeToString()) / 1024
    same = np.array_equal(labels, model.predict(X_typed))
    diff = np.abs(onnx_proba[dtype] - model.predict_proba(X_typed)).max()
    print(
        f"{dtype.__name__}: {size:.0f} KiB of ONNX, same labels: {same}, "
        f"largest probability difference: {diff:.1e}"
    )

# %%
# How close is close
# ------------------
# The differences are rounding: a float64 graph agrees with the model to
# about 1e-15, a float32 one to about 1e-7, the precision of float32 itself.

fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
bins = np.logspace(-19, -5, 57)
for dtype, label in [
    (np.float64, "ONNX float64"),
    (np.float32, "ONNX float32"),
]:
    diff = np.abs(onnx_proba[dtype] - model.predict_proba(X_test.astype(dtype))).ravel()
    ax.hist(np.maximum(diff, 1e-19), bins=bins, alpha=0.7, label=label)
diff = np.abs(plain_proba - proba).ravel()
ax.hist(
    np.maximum(diff, 1e-19),
    bins=bins,
    alpha=0.7,
    label="to_sklearn() pipeline",
)
ax.set_xscale("log")
ax.set(
    xlabel="|probability - model's probability| (exact zeros drawn at 1e-19)",
    ylabel="count",
    title="Exported models against the original, test set",
)
ax.legend()
plt.show()

# %%
# skops: saving the model itself
# ------------------------------
# ``skops.io`` loads only the types it is told to trust. For sklearn_bn these
# are its estimator classes; ``get_untrusted_types`` lists the ones a file
# holds, to be checked before loading. The twins from ``to_sklearn()`` need no
# type of sklearn_bn at all.

import skops.io as sio

data = sio.dumps(model)
untrusted = sio.get_untrusted_types(data=data)
print("types to trust:", untrusted)
restored = sio.loads(data, trusted=untrusted)
print(
    "same probabilities after loading:",
    np.array_equal(restored.predict_proba(X_test), proba),
)
print(
    "types to trust for the twin:",
    sio.get_untrusted_types(data=sio.dumps(plain)),
)
