"""Make ``performance_fit.png``, the figure of the performance page and the
README: seconds per epoch of the benchmark network, from the raw results of
one ``bench_fit.py`` run.

    python benchmarks/bench_fit.py --json docs/figures/bench_fit.json   # measure
    python docs/figures/performance_fit.py                              # draw

Needs matplotlib only (not the package): it draws what the JSON holds.
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
OUT = HERE / "performance_fit.png"

# (key in the results, label), top to bottom.
BARS = [
    ("floor_c", "numpy's products, 2 threads x 1 BLAS thread (floor)"),
    ("floor_b", "numpy's products, 1 thread"),
    ("MLPBNClassifier", "MLPBNClassifier, 2 threads"),
    ("MLPBNClassifier_dropout", "MLPBNClassifier, dropout=0.1"),
    ("MLPBNClassifier_1thread", "MLPBNClassifier, 1 thread"),
    ("MLPClassifier", "scikit-learn MLPClassifier (no batch norm)"),
]
COLORS = {"floor_c": "#9e9e9e", "floor_b": "#c8c8c8", "MLPClassifier": "#e08a3c"}


def main():
    results = json.loads((HERE / "bench_fit.json").read_text())
    fits = {r["dtype"]: r for r in results if r["section"] == "fit"}
    fig, axes = plt.subplots(1, len(fits), figsize=(10, 3.4), sharey=True)
    for ax, (dtype, res) in zip(axes, sorted(fits.items())):
        bars = [(key, label) for key, label in BARS if res.get(key) is not None]
        values = [res[key] for key, _ in bars]
        y = range(len(bars))[::-1]
        ax.barh(list(y), values, color=[COLORS.get(k, "#3c78b4") for k, _ in bars])
        for yi, v in zip(y, values):
            ax.text(
                v, yi, f" {v:.3f} s ({v / res['floor']:.2f}x)", va="center", fontsize=8
            )
        ax.set_yticks(list(y), [label for _, label in bars], fontsize=8)
        ax.set_xlim(0, max(values) * 1.45)
        ax.set_xlabel("seconds per epoch")
        ax.set_title(dtype, fontsize=10)
    fig.suptitle(
        "40,000 x 64 rows, hidden (256, 256), batch 256, Adam; two cores "
        "(ratios to the floor)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
