"""Make ``bench_tabular.png``: per data set, each model's score relative to the
best model on that set, from the raw results of one ``bench_tabular.py`` run.

    python benchmarks/bench_tabular.py --json docs/figures/bench_tabular.json  # measure
    python docs/figures/bench_tabular.py  # draw

Left: classification, the model's mean accuracy minus the best mean accuracy
of any model on that data set (percentage points; 0 is the best). Right:
regression, the model's mean RMSE over the lowest mean RMSE on that set (1 is
the best). The legend gives each model's total fit time over the suite
relative to scikit-learn's MLP. Needs matplotlib only (not the package): it
draws what the JSON holds.
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
MARKERS = "osD^vP*Xh<>p"
COLORS = {"MLP": "#e08a3c", "HGB": "#4caf50", "RealMLP": "#8e44ad", "MLPBN": "#3c78b4"}
OTHER_COLORS = [
    "#1f3f7a",
    "#17becf",
    "#d62728",
    "#7f7f7f",
    "#bcbd22",
    "#e377c2",
    "#8c564b",
]


def relative(data, task):
    """{data set: {model: value}} relative to the best model on each set."""
    out = {}
    for dname, meta in data["datasets"].items():
        if meta["task"] != task:
            continue
        means = {
            m: statistics.fmean(r["score"] for r in per_set[dname])
            for m, per_set in data["results"].items()
            if dname in per_set
        }
        if task == "classification":
            best = max(means.values())
            out[dname] = {m: 100 * (v - best) for m, v in means.items()}
        else:
            best = min(means.values())
            out[dname] = {m: v / best for m, v in means.items()}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=HERE / "bench_tabular.json", type=Path)
    parser.add_argument("--out", default=HERE / "bench_tabular.png", type=Path)
    args = parser.parse_args()
    data = json.loads(args.json.read_text())
    models = [m for m, per_set in data["results"].items() if per_set]
    others = iter(OTHER_COLORS * len(models))
    style = {
        m: (MARKERS[i % len(MARKERS)], COLORS.get(m) or next(others))
        for i, m in enumerate(models)
    }
    panels = [(task, relative(data, task)) for task in ("classification", "regression")]
    panels = [(t, rel) for t, rel in panels if rel]
    heights = [len(rel) for _, rel in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(11, 0.42 * max(heights) + 2.2), squeeze=False
    )
    for ax, (task, rel) in zip(axes[0], panels):
        sets = list(rel)[::-1]
        for j, m in enumerate(models):
            marker, color = style[m]
            pts = [
                (rel[d][m], i + (j - len(models) / 2) * 0.06)
                for i, d in enumerate(sets)
                if m in rel[d]
            ]
            if pts:
                ax.scatter(
                    *zip(*pts),
                    marker=marker,
                    color=color,
                    s=28,
                    alpha=0.85,
                    label=m,
                    zorder=3,
                )
        ax.set_yticks(
            range(len(sets)),
            [f"{d} ({data['datasets'][d]['n_samples']:,})" for d in sets],
            fontsize=8,
        )
        ax.grid(axis="x", color="#dddddd", zorder=0)
        if task == "classification":
            ax.axvline(0, color="#888888", lw=0.8)
            ax.set_xlabel("accuracy minus the best model's (points)")
        else:
            ax.axvline(1, color="#888888", lw=0.8)
            ax.set_xlabel("RMSE / the best model's")
        ax.set_title(task, fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    summary = data.get("summary", {})
    labels = [
        f"{m} (fit {summary[m]['fit_time_ratio']:.2g}x MLP's)"
        if summary.get(m, {}).get("fit_time_ratio")
        else m
        for m in labels
    ]
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(4, len(labels)),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"Real tabular data: {data['folds']}-fold cross-validation, the same folds "
        f"for every model (mean over folds)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06 + 0.025 * (len(labels) // 4), 1, 1))
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
