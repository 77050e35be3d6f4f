"""Cost of one training epoch of MLPBN networks relative to scikit-learn's
MLP defaults, on the training rows of one fold of a bench_tabular data set
(the defaults study, ``../defaults_study.md``).

    python benchmarks/results/study/epoch_cost.py diamonds census magic

One thread (threadpoolctl), the raw frame for MLPBN (its own input
handling) and bench_tabular's encoded input for MLP; each fit of 3 epochs is
timed after a warm-up fit, twice, interleaved, and the best is kept.
"""

import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import bench_tabular  # noqa: E402  (puts the checkout on sys.path)
import tabular_data  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from sklearn_bn import MLPBNClassifier, MLPBNRegressor  # noqa: E402

NETWORKS = [(100,), (256,), (512,), (128, 128), (192, 192), (256, 256)]
EPOCHS = 3


def epoch_seconds(make, X, y):
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make().fit(X, y)
        t0 = time.perf_counter()
        make().fit(X, y)
        return (time.perf_counter() - t0) / EPOCHS


def main(names):
    for name in names:
        X, y = tabular_data.load(name)
        classification = tabular_data.DATASETS[name].task == "classification"
        n = int(0.8 * len(X))
        X, y = X.iloc[:n], y.iloc[:n]
        if not classification:
            y = (y - y.mean()) / y.std()
        mlp, bn = ((MLPClassifier, MLPBNClassifier) if classification
                   else (MLPRegressor, MLPBNRegressor))
        makers = {"MLP": lambda: make_pipeline(bench_tabular.encoded(X),
                                               mlp(max_iter=EPOCHS, random_state=0))}
        for sizes in NETWORKS:
            makers[f"MLPBN {sizes}"] = (lambda s=sizes: bn(hidden_layer_sizes=s,
                                                           max_iter=EPOCHS, random_state=0))
        best = {}
        for _ in range(2):
            for label, make in makers.items():
                t = epoch_seconds(make, X, y)
                best[label] = min(best.get(label, t), t)
        for label, t in best.items():
            print(f"{name}: {label}: {t:.3f} s/epoch, {t / best['MLP']:.2f}x MLP's",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["diamonds", "census", "magic", "splice", "phoneme"])
