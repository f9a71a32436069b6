"""Shared helpers of the benchmarks: machine load, the synthetic dataset's caches, /proc memory.

Benchmarks write only under ``WORK`` (``/tmp/medtune-bench``): data, caches, MLflow store, Ray runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
WORK = Path(os.environ.get("MEDTUNE_BENCH_DIR", "/tmp/medtune-bench"))
SPLITS = ("train", "val", "test")
# launch.py flags that keep a benchmark's launch inside WORK (the dataset synth_caches builds, n=300)
WORK_ARGS = [
    "--data",
    str(WORK / "synth-n300"),
    "--cache-dir",
    str(WORK / "cache"),
    "--tracking-uri",
    f"sqlite:///{WORK / 'mlflow.db'}",
    "--storage-path",
    str(WORK / "runs"),
]


def load() -> str:
    """The 1-minute load average and core count, to print next to every measurement."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def synth_caches(*, n: int = 300, size: int = 64, source: int = 64) -> tuple[Path, dict[str, str], int]:
    """(dataset folder, split -> cache file, num_classes) of the synthetic data at ``size`` px, built once.

    ``source`` is the side of the generated images (``python -m medtune.data synth --size``); the
    cache letterboxes them to ``size``. 60% of each class goes to train (``n=53``: 32 images).
    """
    from medtune.data.cache import build_cache
    from medtune.data.coco import resolve_dataset
    from medtune.data.tools.synth import generate

    data = WORK / (f"synth-n{n}" if source == 64 else f"synth-n{n}-{source}px")
    if not (data / "train.json").is_file():
        generate(data, n=n, size=source, seed=0)
    dataset = resolve_dataset(data, cache_root=WORK / "cache", seed=0)
    caches = {s: str(build_cache(dataset, s, size, WORK / "cache")) for s in SPLITS}
    return data, caches, dataset.num_classes


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc; (0, 0) when it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0, 0.0
    kib = lambda key: float(fields.get(key, "0 kB").split()[0])  # noqa: E731
    return kib("VmRSS") / 1024, kib("VmHWM") / 1024


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
