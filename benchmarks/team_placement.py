"""Where the thread team runs beside a busy process: the CPU time the team
and the busy process get during a fit, and the cores their threads last ran
on, sampled every millisecond (Linux: ``/proc``).

Run from the repository root after building the extensions, on an otherwise
idle machine::

    python benchmarks/team_placement.py

The team is held at its threads (``_threads.TEAM_PACE`` bypassed) on the
large network of ``bench_contention.py`` (20,000 x 64 float32 rows, hidden
(256, 256), batch 256), 8 epochs, beside one ``python -c "while True:
pass"``. The CPU seconds per wall second of each (the team's from
``time.process_time``, the busy process's from its ``/proc/<pid>/stat``)
tell how the cores were shared: fairly, by thread, the team would get 4/3
of a core and the busy process 2/3; one core each means that the team's two
threads share one core. The samples (a thread of this process reads
``/proc``, so it takes a core for an instant at each) show where: the most
frequent placements of the team's running or waiting threads and of the
busy process (docs/performance.rst, "Threads on a busy machine").
"""

import argparse
import collections
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_contention import team_held  # also puts the checkout on sys.path

from sklearn_bn import MLPBNClassifier


def stat_fields(stat_path):
    """The fields of a ``/proc`` stat file after the command's name (from
    the state letter on), or None when the task is gone."""
    try:
        with open(stat_path) as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def state_and_core(stat_path):
    """A task's state letter and the core it last ran on, or None."""
    fields = stat_fields(stat_path)
    return None if fields is None else (fields[0], int(fields[36]))


def busy_seconds(pid):
    """CPU seconds (user + system) of process ``pid`` so far."""
    fields = stat_fields(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    if not os.path.isdir("/proc/self/task"):
        sys.exit("needs Linux's /proc")
    from sklearn.datasets import make_classification

    X, y = make_classification(
        20_000, 64, n_informative=32, n_classes=10, random_state=0
    )
    X = X.astype(np.float32)
    params = dict(
        hidden_layer_sizes=(256, 256),
        batch_size=256,
        input_preprocessing=None,
        random_state=0,
    )
    warnings.simplefilter("ignore")
    MLPBNClassifier(max_iter=1, **params).fit(X, y)  # starts the engine's pool
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    samples = collections.Counter()
    done = threading.Event()

    def sample():
        me = str(threading.get_native_id())
        while not done.is_set():
            tasks = [t for t in os.listdir("/proc/self/task") if t != me]
            states = [state_and_core(f"/proc/self/task/{t}/stat") for t in tasks]
            cores = sorted(s[1] for s in states if s and s[0] == "R")
            other = state_and_core(f"/proc/{busy.pid}/stat")
            samples[tuple(cores), other[1] if other else None] += 1
            time.sleep(0.001)

    with team_held():
        try:
            time.sleep(0.5)
            busy_cpu = busy_seconds(busy.pid)
            cpu = time.process_time()
            t0 = time.perf_counter()
            MLPBNClassifier(max_iter=8, **params).fit(X, y)
            seconds = time.perf_counter() - t0
            team_cores = (time.process_time() - cpu) / seconds
            busy_cores = (busy_seconds(busy.pid) - busy_cpu) / seconds
            sampler = threading.Thread(target=sample)
            sampler.start()
            MLPBNClassifier(max_iter=8, **params).fit(X, y)
            done.set()
            sampler.join()
        finally:
            done.set()
            busy.kill()
            busy.wait()
    total = sum(samples.values())
    print(f"fit: {seconds:.2f} s")
    print(
        f"cores (CPU seconds per wall second): the team {team_cores:.2f}, "
        f"the busy process {busy_cores:.2f}\n"
    )
    print(f"a second fit, sampled: {total} samples\n")
    print("| team threads' cores | busy process's core | samples |")
    print("|---|---|---|")
    for (cores, other), count in samples.most_common(10):
        print(f"| {list(cores)} | {other} | {count} |")
    shared = sum(
        n
        for (cores, other), n in samples.items()
        if len(cores) == 2 and cores[0] == cores[1] and other != cores[0]
    )
    print(
        f"\nboth team threads on one core, the busy process on the other: "
        f"{shared} of {total} samples"
    )


if __name__ == "__main__":
    main()
