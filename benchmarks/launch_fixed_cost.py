"""A small launch's wall time, today's code against a baseline commit, side by side in one run.

    python benchmarks/launch_fixed_cost.py --baseline fb66d3e --runs 3

Issue 26 item 5: a ``whole_cls --smoke`` launch (2 trials, 2 epochs, 32 px) is mostly fixed cost
(imports in the driver and in each Ray worker, Ray's start and stop, publishing the winner). The
baseline's files come from ``git archive`` into a temporary folder and run with that folder first on
``PYTHONPATH`` (the venv's packages are shared, so only the project's code differs). Every launch gets a
fresh project folder (its own ``mlflow.db``, ``optuna.db``, Ray results) and the same synthetic
dataset, generated once beforehand; baseline and current alternate, so that a drift in the machine's
load falls on both. Prints each wall time, the medians and the ratio current / baseline (target: at
most 0.5). The last line is ``RATIO``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PROJECT_DIR, load

LAUNCH = ("--space", "whole_cls", "--smoke")


def export(commit: str, folder: Path) -> None:
    """The files of ``commit`` in ``folder`` (no repository, nothing installed)."""
    archive = subprocess.run(["git", "archive", commit], cwd=PROJECT_DIR, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)


def timed_launch(code: Path, data: Path, project: Path) -> float:
    """Wall seconds of ``launch.py`` of ``code`` (its ``src`` first on the path) in the empty folder ``project``."""
    project.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{code / 'src'}{os.pathsep}{code}", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(code / "launch.py"), *LAUNCH, "--data", str(data)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{code}: launch.py exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the commit to compare with (e.g. the issue's day: fb66d3e)")
    parser.add_argument("--runs", type=int, default=3, help="launches of each, alternating")
    args = parser.parse_args()
    from medtune.data.tools.synth import generate

    with tempfile.TemporaryDirectory(prefix="fixed-cost-") as tmp:
        root = Path(tmp)
        baseline, data = root / "baseline", root / "data"
        baseline.mkdir()
        export(args.baseline, baseline)
        generate(data)
        times: dict[str, list[float]] = {"baseline": [], "current": []}
        for run in range(args.runs):
            for name, code in (("baseline", baseline), ("current", PROJECT_DIR)):
                seconds = timed_launch(code, data, root / f"{name}-{run}")
                times[name].append(seconds)
                print(f"run {run + 1} {name}: {seconds:.1f} s ({load()})", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["current"] / medians["baseline"]
    print(
        f"median of {args.runs}: baseline ({args.baseline}) {medians['baseline']:.1f} s, current {medians['current']:.1f} s"
    )
    print(f"RATIO whole_cls --smoke launch, current / baseline: {ratio:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
