"""Smoke runs of the benchmark scripts on small sizes: they keep working as the
package changes. Nothing here looks at the timings."""

import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")

RUNS = {
    "kernels": ["bench_kernels.py", "--quick"],
    "scaler": ["bench_scaler.py", "--n-samples", "20000", "--chunk", "2000", "--repeat", "1"],
    "fit": ["bench_fit.py", "--quick", "--what", "fit,predict", "--dtype", "float32"],
}


@pytest.mark.skipif(not os.path.isdir(BENCHMARKS), reason="no benchmarks folder (not a clone)")
@pytest.mark.parametrize("run", list(RUNS))
def test_benchmark_script_runs(run):
    script, *args = RUNS[run]
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), *args],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table_rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table_rows) >= 3, result.stdout[-2000:]
