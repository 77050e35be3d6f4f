"""
======================================================
Streaming with ``partial_fit``: chunks and Dask blocks
======================================================

Data that do not fit in memory, or that keep arriving, are learned chunk by
chunk with ``partial_fit``. :class:`~sklearn_bn.BatchNormScaler` keeps two
kinds of statistics:

* ``momentum=None``: the exact mean and variance of every sample seen, so any
  split of the data into ``partial_fit`` calls gives what ``fit`` gives;
* ``momentum=m``: batch norm's exponential moving averages, which follow a
  stream whose distribution drifts.

Both are checked here against numpy, on plain chunks and on the blocks of a
Dask array, and a network is then trained on the same blocks.
"""

# %%
# A drifting stream
# -----------------
# Forty chunks of 250 samples and 3 features; the mean of the first feature
# drifts upwards from chunk to chunk.

import dask.array as da
import matplotlib.pyplot as plt
import numpy as np

from sklearn_bn import BatchNormScaler

rng = np.random.default_rng(0)
n_chunks, chunk_size = 40, 250
drift = np.linspace(0.0, 4.0, n_chunks)
chunks = [
    rng.normal(size=(chunk_size, 3)) * [1.0, 10.0, 0.1] + [d, 5.0, -1.0] for d in drift
]
X = np.concatenate(chunks)

# %%
# Exact statistics: any split equals ``fit``
# ------------------------------------------

exact = BatchNormScaler()
for chunk in chunks:
    exact.partial_fit(chunk)
whole = BatchNormScaler().fit(X)
print(
    "partial_fit over 40 chunks vs fit, largest difference:",
    f"mean {np.abs(exact.running_mean_ - whole.running_mean_).max():.1e},",
    f"variance {np.abs(exact.running_var_ - whole.running_var_).max():.1e}",
)

# %%
# Moving averages: batch norm's running statistics
# ------------------------------------------------
# With ``momentum=m`` the first chunk sets the statistics to its mean and
# unbiased variance, and every later chunk does
# ``running = (1 - m) * running + m * chunk_statistic``, as
# ``torch.nn.BatchNorm1d`` does. The same recursion in numpy gives the same
# numbers.

momenta = [0.05, 0.3]
trajectories = {m: [] for m in momenta}
trajectories[None] = []
scalers = {m: BatchNormScaler(momentum=m) for m in [None, *momenta]}
for chunk in chunks:
    for m, scaler in scalers.items():
        scaler.partial_fit(chunk)
        trajectories[m].append(scaler.running_mean_[0])

for m in momenta:
    mean = chunks[0].mean(axis=0)
    var = chunks[0].var(axis=0, ddof=1)
    for chunk in chunks[1:]:
        mean = (1 - m) * mean + m * chunk.mean(axis=0)
        var = (1 - m) * var + m * chunk.var(axis=0, ddof=1)
    print(
        f"momentum={m}: largest difference from numpy's recursion: "
        f"mean {np.abs(scalers[m].running_mean_ - mean).max():.1e}, "
        f"variance {np.abs(scalers[m].running_var_ - var).max():.1e}"
    )

fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
steps = np.arange(1, n_chunks + 1)
ax.plot(
    steps,
    [c[:, 0].mean() for c in chunks],
    ".",
    color="gray",
    label="mean of each chunk",
)
ax.plot(steps, trajectories[None], label="momentum=None (exact, all samples)")
for m in momenta:
    ax.plot(steps, trajectories[m], label=f"momentum={m}")
ax.set(
    xlabel="chunks seen",
    ylabel="running_mean_ of feature 0",
    title="BatchNormScaler.partial_fit on a drifting stream",
)
ax.legend()
plt.show()

# %%
# The blocks of a Dask array
# --------------------------
# A Dask array is a grid of numpy blocks, computed one at a time (here by
# Dask's local threads; on a cluster, by its workers). Feeding the blocks to
# ``partial_fit`` in turn learns the statistics of the whole array without
# holding it in memory, and ``map_blocks`` transforms it block by block,
# lazily.

X_dask = da.from_array(X, chunks=(1000, 3))
streamed = BatchNormScaler()
for k in range(X_dask.numblocks[0]):
    streamed.partial_fit(X_dask.blocks[k].compute())
print(
    f"{X_dask.numblocks[0]} blocks: largest difference from fit: "
    f"{np.abs(streamed.running_mean_ - whole.running_mean_).max():.1e}"
)
scaled = X_dask.map_blocks(streamed.transform, dtype=X.dtype)
print(
    "transformed lazily, block by block:",
    np.allclose(scaled.compute(), whole.transform(X)),
)

# %%
# A network trained block by block
# --------------------------------
# :class:`~sklearn_bn.MLPBNClassifier` learns the same way: each
# ``partial_fit`` call is one pass over the block it is given, in minibatches
# of ``batch_size``. Three passes over the blocks of the digits images:

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_bn import MLPBNClassifier

digits_X, digits_y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    digits_X / 16.0, digits_y, stratify=digits_y, random_state=0
)
X_blocks = da.from_array(X_train, chunks=(200, 64))
y_blocks = da.from_array(y_train, chunks=200)
classes = np.unique(digits_y)

clf = MLPBNClassifier(hidden_layer_sizes=(64,), learning_rate_init=0.01, random_state=0)
seen, accuracy = [], []
for _ in range(3):
    for k in range(X_blocks.numblocks[0]):
        clf.partial_fit(
            X_blocks.blocks[k].compute(),
            y_blocks.blocks[k].compute(),
            classes=classes,
        )
        seen.append(clf.t_)
        accuracy.append(clf.score(X_test, y_test))
print(f"test accuracy after 3 passes: {accuracy[-1]:.3f}")

fig, ax = plt.subplots(figsize=(6.4, 3.4), layout="constrained")
ax.plot(seen, accuracy, marker=".")
for n_pass in range(1, 3):
    ax.axvline(n_pass * X_train.shape[0], color="gray", ls=":")
ax.set(
    xlabel="training samples seen",
    ylabel="test accuracy",
    ylim=(0, 1),
    title="MLPBNClassifier.partial_fit over a Dask array's blocks",
)
plt.show()

# %%
# On a Dask cluster, dask-ml's ``Incremental`` wrapper runs the same
# ``partial_fit`` calls on the workers; see :ref:`dask`.
