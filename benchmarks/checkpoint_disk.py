"""Peak disk of a cross-validated launch: this tree's checkpoint handling vs another tree's, side by side.

    git archive <old commit> launch.py trainables | tar -x -C /tmp/medtune-before
    python benchmarks/checkpoint_disk.py --before /tmp/medtune-before            # 2 launches: 25 min at load 10-20
    python benchmarks/checkpoint_disk.py --before /tmp/medtune-before --quick    # 2 trials of 2 epochs

Runs the same launch (``whole_cls --smoke --folds 3`` at 64 px on the synthetic set, resnet18: each
trial's checkpoint is a folder of 3 fold checkpoints) once with ``launch.py`` and ``trainables/``
of ``--before`` and once with ``--after``'s (this tree), A then B, and samples every 0.5 s the bytes under the
launch's Ray storage folder (the trials' checkpoints) and its scratch folder (trials' temporary
checkpoint copies and cross-validation work folders: a running trial's fold files between rounds).
Prints each launch's peak (the two together, and each alone) and the ratio after / before.
Target (issue 26, item 7): at most a third.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import PROJECT_DIR, WORK, load, synth_caches

TARGET = 1 / 3


def launch_args(quick: bool) -> list[str]:
    trials, epochs = ("2", "2") if quick else ("4", "3")
    return ["--space", "whole_cls", "--smoke", "--folds", "3", "--num-samples", trials, "--max-epochs", epochs]
    # the rest is fixed in run(): 64 px, one CPU per trial, seed 0, this benchmark's folders


def folder_bytes(folders: list[Path]) -> int:
    """Bytes of the files under ``folders`` (files that vanish while counted are skipped)."""
    total = 0
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    continue
    return total


def run(tree: Path, tag: str, quick: bool) -> dict[str, int]:
    """Peak bytes of one launch from ``tree``: ``total`` (storage and scratch together), ``storage`` alone
    (the trials' Ray checkpoints) and ``scratch`` alone, each its own maximum over the samples."""
    data, _, _ = synth_caches()
    home = Path(tempfile.mkdtemp(prefix=f"disk-{tag}-", dir=WORK))
    storage, name = home / "runs", f"disk-{tag}-{int(time.time())}"
    args = [sys.executable, str(tree / "launch.py"), *launch_args(quick), "--set", "data.image_size=64"]
    args += ["--data", str(data), "--cache-dir", str(WORK / "cache"), "--tracking-uri", f"sqlite:///{home}/mlflow.db"]
    args += ["--storage-path", str(storage), "--experiment", name, "--cpus-per-trial", "1", "--seed", "0"]
    peak, stop = {"total": 0, "storage": 0, "scratch": 0}, threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            scratch = list(Path(tempfile.gettempdir()).glob(f"medtune-scratch-*{name}*"))
            now = {"storage": folder_bytes([storage]), "scratch": folder_bytes(scratch)}
            now["total"] = now["storage"] + now["scratch"]
            peak.update({key: max(peak[key], value) for key, value in now.items()})

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    done = subprocess.run(args, cwd=home, capture_output=True, text=True)
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"[{tag}] launch failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(
        f"[{tag}] {tree}: peak {peak['total'] / 2**20:.0f} MiB (Ray checkpoints alone {peak['storage'] / 2**20:.0f}, "
        f"scratch alone {peak['scratch'] / 2**20:.0f}) in {seconds:.0f} s ({load()})",
        flush=True,
    )
    return peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="a folder holding the old launch.py and trainables/")
    p.add_argument("--after", type=Path, default=PROJECT_DIR, help="the new one [this tree]")
    p.add_argument("--quick", action="store_true", help="2 trials of 2 epochs")
    args = p.parse_args()
    for flag, tree in (("--before", args.before), ("--after", args.after)):
        if not (tree / "launch.py").is_file() or not (tree / "trainables").is_dir():
            sys.exit(f"{flag} {tree}: expected a folder holding launch.py and trainables/")
    before = run(args.before, "before", args.quick)
    after = run(args.after, "after", args.quick)
    ratio = after["total"] / before["total"]
    print(
        f"RATIO peak disk after / before = {ratio:.2f} ({after['total'] / 2**20:.0f} / {before['total'] / 2**20:.0f} MiB; "
        f"Ray checkpoints alone {after['storage'] / before['storage']:.2f}; target <= {TARGET:.2f}: "
        f"{'met' if ratio <= TARGET else 'missed'})"
    )


if __name__ == "__main__":
    main()
