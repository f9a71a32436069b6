"""Peak memory of a launch: the driver, each trial's worker process, and Ray's own processes.

    python benchmarks/memory.py --quick   # whole_cls, 2 trials x 2 epochs at 64 px (~1 min)
    python benchmarks/memory.py           # whole_cls and segmentation, 4 trials x 3 epochs, one 60 s trial

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

from common import PROJECT_DIR, WORK, WORK_ARGS, load, rss_mb, synth_caches
from trial_overhead import EPOCHS, config_file


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


def cpu_seconds(pid: str) -> float:
    """User + system CPU seconds a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(driver: int, stop: threading.Event, peaks: dict, totals: dict[str, float], cpu: dict) -> None:
    """Record each process's peak (VmHWM), CPU seconds, and the peak sum of RSS per kind until ``stop``."""
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
            cpu[int(entry)] = (kind, cpu_seconds(entry))
            now[kind] = now.get(kind, 0.0) + rss
        for kind, value in now.items():
            totals[kind] = max(totals.get(kind, 0.0), value)
        stop.wait(0.2)


def measure(space: str, launch_args: list[str]) -> tuple[float, float]:
    """(largest worker peak, driver peak) in MiB of one launch (``launch_args``)."""
    out = WORK / f"memory-{space}-{time.time():.0f}.json"
    cmd = [
        sys.executable,
        str(PROJECT_DIR / "benchmarks" / "timed_launch.py"),
        str(out),
        "--",
        *launch_args,
        *WORK_ARGS,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_DIR,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop, peaks, totals, cpu = threading.Event(), {}, {}, {}
    thread = threading.Thread(target=sample, args=(proc.pid, stop, peaks, totals, cpu))
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"launch failed:\n{err[-3000:]}")
    driver_hwm = json.loads(out.read_text())["phases"]["driver_peak_rss_mb"]
    workers = sorted(v for kind, v in peaks.values() if kind == "worker")
    trials = len({json.loads(line)["pid"] for line in Path(str(out) + ".trials.jsonl").read_text().splitlines()})
    print(f"[{space}] {' '.join(launch_args[:6])} ({load()}):")
    print(f"    driver peak RSS (VmHWM at exit)           {driver_hwm:7.0f} MiB")
    print(f"    worker processes that ran trials          {trials:7d} (of {len(workers)} ray:: processes seen)")
    print(f"    per worker peak RSS, largest / median     {workers[-1]:7.0f} / {workers[len(workers) // 2]:.0f} MiB")
    used = {kind: sum(c for k, c in cpu.values() if k == kind) for kind in ("driver", "worker", "ray service")}
    print("    CPU seconds used: " + ", ".join(f"{k} {v:.1f}" for k, v in used.items()))
    print(
        f"    peak sum of RSS: workers {totals.get('worker', 0):.0f} MiB, Ray services {totals.get('ray service', 0):.0f} MiB"
    )
    return workers[-1], driver_hwm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    synth_caches()
    search = lambda space, n, e: ["--space", space, "--num-samples", str(n), "--max-epochs", str(e)]  # noqa: E731
    runs = {"whole_cls": search("whole_cls", 2, 2)}
    if not args.quick:  # bigger searches, and the 17-epoch (~60 s) resnet18 trial of trial_overhead.py
        runs = {
            "whole_cls": search("whole_cls", 4, 3),
            "segmentation": search("segmentation", 4, 3),
            "one 60 s trial": ["--config", str(config_file(EPOCHS["60s"]))],
        }
    peaks = {label: measure(label, launch_args) for label, launch_args in runs.items()}
    print(
        "RATIO largest worker peak / driver peak = "
        + ", ".join(f"{s} {w:.0f} / {d:.0f} MiB = {w / d:.2f}" for s, (w, d) in peaks.items())
    )


if __name__ == "__main__":
    main()
