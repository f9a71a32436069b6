"""Peak memory of a launch: the driver, each trial's worker process, and Ray's own processes.

    python benchmarks/memory.py --quick   # whole_cls, 2 trials x 2 epochs at 64 px (~1 min)
    python benchmarks/memory.py           # whole_cls and segmentation, 4 trials x 3 epochs each

Runs the real ``launch.py`` (under ``timed_launch.py``, which also records the driver's own peak,
VmHWM, at exit) and samples every process of the machine from /proc every 0.2 s: Ray workers are
the driver's descendants whose command line starts with ``ray::``, Ray's services are ``raylet``,
``gcs_server`` and the other processes under ``ray/``. RSS counts shared pages (torch libraries,
memory-mapped caches) in every process that maps them, so the sum over processes overstates the
machine's use. Prints the largest per-trial worker peak last.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import PROJECT_DIR, WORK, load, rss_mb, synth_caches


def descends(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or one of its descendants (other Ray clusters may run here)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def classify(pid: int, driver: int) -> str | None:
    """'driver', 'worker', 'ray service' or None (not this launch's) for a process id."""
    if pid == driver:
        return "driver"
    if not descends(pid, driver):
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if cmd.startswith("ray::"):
        return "worker"
    if "/ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd:
        return "ray service"
    return None


def sample(driver: int, stop: threading.Event, peaks: dict[int, tuple[str, float]], totals: dict[str, float]) -> None:
    """Record each process's peak (VmHWM) and the peak sum of RSS per kind until ``stop``."""
    while not stop.is_set():
        now: dict[str, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            kind = classify(int(entry), driver)
            if kind is None:
                continue
            rss, hwm = rss_mb(entry)
            peaks[int(entry)] = (kind, max(hwm, peaks.get(int(entry), ("", 0.0))[1]))
            now[kind] = now.get(kind, 0.0) + rss
        for kind, value in now.items():
            totals[kind] = max(totals.get(kind, 0.0), value)
        stop.wait(0.2)


def measure(space: str, samples: int, epochs: int) -> tuple[float, float]:
    """(largest worker peak, driver peak) in MiB of one launch of ``space``."""
    out = WORK / f"memory-{space}-{time.time():.0f}.json"
    cmd = [sys.executable, str(PROJECT_DIR / "benchmarks" / "timed_launch.py"), str(out), "--", "--space", space,
           "--num-samples", str(samples), "--max-epochs", str(epochs), "--data", str(WORK / "synth-n300"),
           "--cache-dir", str(WORK / "cache"), "--tracking-uri", f"sqlite:///{WORK / 'mlflow.db'}",
           "--storage-path", str(WORK / "runs")]
    proc = subprocess.Popen(cmd, cwd=PROJECT_DIR, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop, peaks, totals = threading.Event(), {}, {}
    thread = threading.Thread(target=sample, args=(proc.pid, stop, peaks, totals))
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"launch failed:\n{err[-3000:]}")
    driver_hwm = json.loads(out.read_text())["phases"]["driver_peak_rss_mb"]
    workers = sorted(v for kind, v in peaks.values() if kind == "worker")
    trials = len({json.loads(line)["pid"] for line in Path(str(out) + ".trials.jsonl").read_text().splitlines()})
    print(f"[{space}] {samples} trials x {epochs} epochs ({load()}):")
    print(f"    driver peak RSS (VmHWM at exit)           {driver_hwm:7.0f} MiB")
    print(f"    worker processes that ran trials          {trials:7d} (of {len(workers)} ray:: processes seen)")
    print(f"    per worker peak RSS, largest / median     {workers[-1]:7.0f} / {workers[len(workers) // 2]:.0f} MiB")
    print(f"    peak sum of RSS: workers {totals.get('worker', 0):.0f} MiB, Ray services {totals.get('ray service', 0):.0f} MiB")
    return workers[-1], driver_hwm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    synth_caches()
    runs = [("whole_cls", 2, 2)] if args.quick else [("whole_cls", 4, 3), ("segmentation", 4, 3)]
    peaks = {space: measure(space, n, e) for space, n, e in runs}
    print("RATIO largest worker peak / driver peak = "
          + ", ".join(f"{s} {w:.0f} / {d:.0f} MiB = {w / d:.2f}" for s, (w, d) in peaks.items()))


if __name__ == "__main__":
    main()
