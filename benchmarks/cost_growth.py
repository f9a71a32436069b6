"""Cost as the work grows: the platform's own cost per trial at 30 vs 300 trials, per image at 2,000 vs 20,000.

    python benchmarks/cost_growth.py --quick     # 2 vs 8 trials, 200 vs 1,000 images from 64 px sources (< 2 min)
    python benchmarks/cost_growth.py             # 30, 300, 30 trials; 2,000 vs 20,000 images, cache at 224 px (~40 min)
    python benchmarks/cost_growth.py --part a    # only the searches (--part b: only the cache)

(a) Searches: the real ``launch.py`` (under ``timed_launch.py``) of the smoke whole_cls space with
its smallest model (mobilenet_v3_small at 32 px, 180 training and 60 validation images, one epoch
per trial; resnet18 would keep a 128 MB checkpoint per trial until the launch ends: 38 GB at 300
trials), each size on a fresh MLflow store of its own. A trial's training is its worker's time from
the trial function's start to its epoch's report (model and data setup included); the platform's
time is the launch's wall time (spawn to exit) minus the time some trial was training, per trial.
Trials run one at a time (``--max-concurrent 1``) so that nothing hides behind training. The
launch's fixed costs (imports, Ray start, publishing the winner) are spread over the trials, which
favours the large search, so the same is also given within ``Tuner.fit`` alone. Also: the gap
between one trial's report and the next trial's start early and late in the large search, the
driver's peak memory (VmHWM, which counts file pages it maps, and the peak of its RssAnon sampled
each second), the peak summed RSS of Ray's services, the MLflow store's size (sqlite file and
artifact folder) and ``analyze.py`` on the large search's experiment, report included. In full mode
the small search runs before and after the large one (their mean is the baseline: load drifts).

(b) Cache: synthetic images generated at 128 px (``--source``: generation, timed apart as it is not
the cache's cost, took about 31 ms per image at 224 px and 15 ms at 128 px, a build from either
about 4 ms) merged into one split of 2,000 and one of 20,000 images; ``build_cache`` of that split
at 224 px in a child process with a fresh cache folder. Memory: the child's VmHWM before and after
the build and the peak of its RssAnon sampled every 0.1 s; the build writes with plain file writes,
so the page cache it fills is not in the child's RSS. Generated images and caches are deleted at
the end (``--keep`` keeps them); the search stores stay under ``WORK/cost_growth``.

Prints the ratios last: per-trial platform time large/small (target <= 1.2; within ``Tuner.fit``
too), ``analyze.py`` seconds (target < 60) and the cache's per-image time large/small (<= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import PROJECT_DIR, WORK, load, median, synth_caches
from memory import classify, descends

BASE = WORK / "cost_growth"
SEARCH = [  # the smoke whole_cls space (32 px, batch 8) with its smallest model: checkpoints of 128 MB (resnet18) x 300
    *("--space", "whole_cls", "--smoke", "--set", "model.name=mobilenet_v3_small", "--max-epochs", "1"),
    *("--data", str(WORK / "synth-n300")),
]
TARGET_RATIO, TARGET_ANALYZE_S = 1.2, 60.0


def status_kib(pid: int | str, *keys: str) -> dict[str, float]:
    """Fields of /proc/<pid>/status in KiB (0 when the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return dict.fromkeys(keys, 0.0)
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: float(fields.get(k, "0 kB").split()[0]) for k in keys}


class Sampler(threading.Thread):
    """Peak RssAnon of one process and, with ``services``, the peak summed RSS of its Ray services."""

    def __init__(self, pid: int, interval: float, *, services: bool = False) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.services = pid, interval, services
        self.stop, self.anon_kib, self.services_kib = threading.Event(), 0.0, 0.0

    def run(self) -> None:
        ours: dict[int, bool] = {}  # pid -> whether it descends from ``pid`` (a worker renames itself later)
        while not self.stop.is_set():
            self.anon_kib = max(self.anon_kib, status_kib(self.pid, "RssAnon")["RssAnon"])
            if self.services:
                for pid in (int(e) for e in os.listdir("/proc") if e.isdigit()):
                    if pid not in ours:
                        ours[pid] = descends(pid, self.pid)
                kinds = {pid: classify(pid, self.pid) for pid, mine in ours.items() if mine}
                total = sum(status_kib(p, "VmRSS")["VmRSS"] for p, kind in kinds.items() if kind == "ray service")
                self.services_kib = max(self.services_kib, total)
            self.stop.wait(self.interval)


def size_mb(path: Path) -> float:
    """MiB of a file or of everything under a folder (0 when missing)."""
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.is_dir() else 0.0


def training_intervals(events: list[dict]) -> list[tuple[float, float]]:
    """(trial function start, its last epoch's report start) of every trial, from the worker events."""
    by_pid: dict[int, list[dict]] = {}
    for event in events:
        by_pid.setdefault(event["pid"], []).append(event)
    out = []
    for pid_events in by_pid.values():  # a reused worker runs its trials one after another
        start = None
        for event in sorted(pid_events, key=lambda e: e["t"]):
            if event["event"] == "trial_start":
                start = event["t"]
                out.append([start, start])
            elif event["event"] == "report_start" and start is not None:
                out[-1][1] = event["t"]
    return sorted((a, b) for a, b in out)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds during which at least one interval was open."""
    total, end = 0.0, float("-inf")
    for a, b in intervals:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def launch(trials: int, tag: str, max_concurrent: int) -> tuple[Path, dict, list[dict], Sampler]:
    """Run one search on a fresh store in ``BASE/search-<tag>``: (folder, phases, worker events, sampler)."""
    folder = BASE / f"search-{tag}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / "phases.json"
    store = [
        *("--num-samples", str(trials), "--max-concurrent", str(max_concurrent), "--experiment", f"cost-growth-{tag}"),
        *("--cache-dir", str(WORK / "cache"), "--storage-path", str(folder / "runs")),
        *("--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"),
    ]
    cmd = [sys.executable, str(PROJECT_DIR / "benchmarks" / "timed_launch.py"), str(out), "--", *SEARCH, *store]
    env = {**os.environ, "BENCH_SPAWN": repr(time.time()), "PYTHONWARNINGS": "ignore"}
    with open(folder / "launch.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid, 1.0, services=True)
        sampler.start()
        proc.wait()
        sampler.stop.set()
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"launch of {trials} trials failed ({proc.returncode}); see {folder / 'launch.log'}")
    events = [json.loads(line) for line in Path(f"{out}.trials.jsonl").read_text().splitlines()]
    return folder, json.loads(out.read_text())["phases"], events, sampler


def search(trials: int, tag: str, max_concurrent: int) -> dict:
    """One launch of ``trials`` one-epoch trials on a fresh store; its per-trial platform time and sizes."""
    folder, phases, events, sampler = launch(trials, tag, max_concurrent)
    intervals = training_intervals(events)
    if len(intervals) != trials:
        raise RuntimeError(f"expected {trials} trials, the workers recorded {len(intervals)}; see {folder}")
    training, wall = union_seconds(intervals), phases["exit"] - phases["spawn"]
    gaps = [nxt[0] - cur[1] for cur, nxt in zip(intervals, intervals[1:])]
    tenth = max(1, len(gaps) // 10)
    fixed = ("imports", "prepare", "parent_run", "ray_init", "ray_shutdown", "finish")
    result = {
        **{"trials": trials, "wall": wall, "training": training, "tuner_fit": phases["tuner_fit"]},
        "per_trial": (wall - training) / trials,
        "fit_per_trial": (phases["tuner_fit"] - training) / trials,
        "gap_first": median(gaps[:tenth]) if gaps else 0.0,
        "gap_last": median(gaps[-tenth:]) if gaps else 0.0,
        "fixed": {k: phases.get(k, 0.0) for k in fixed},
        "driver_hwm": phases["driver_peak_rss_mb"],
        **{"driver_anon": sampler.anon_kib / 1024, "services": sampler.services_kib / 1024},
        "mlflow_db": sum(size_mb(p) for p in folder.glob("mlflow.db*") if not p.name.endswith(".lock")),
        **{"mlruns": size_mb(folder / "mlruns"), "optuna_db": size_mb(folder / "optuna.db")},
        "ray_runs": size_mb(folder / "runs"),
        "state": sum(size_mb(p) for p in (folder / "runs").glob("*/experiment_state-*.json")),
        **{"folder": folder, "experiment": f"cost-growth-{tag}"},
    }
    print_search(result)
    return result


def print_search(r: dict) -> None:
    n = r["trials"]
    print(f"[a] {n} trials ({load()}): launch {r['wall']:.1f} s, training {r['training']:.1f} s")
    print(f"    per-trial platform time (wall - training) / trials   {r['per_trial']:7.2f} s")
    print(f"    the same within Tuner.fit ({r['tuner_fit']:.1f} s)             {r['fit_per_trial']:7.2f} s")
    print(f"    gap report -> next trial, first / last tenth         {r['gap_first']:7.2f} / {r['gap_last']:.2f} s")
    print("    fixed phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["fixed"].items()))
    print(
        f"    driver peak: VmHWM {r['driver_hwm']:.0f} MiB, RssAnon {r['driver_anon']:.0f} MiB; "
        f"Ray services peak RSS {r['services']:.0f} MiB"
    )
    print(
        f"    MLflow store {r['mlflow_db'] + r['mlruns']:.1f} MiB (sqlite {r['mlflow_db']:.1f}, artifacts "
        f"{r['mlruns']:.1f}); optuna.db {r['optuna_db']:.1f} MiB; Ray folder {r['ray_runs']:.1f} MiB (its experiment "
        f"state {r['state']:.1f} MiB, rewritten after every trial's checkpoint)"
    )


def analyze(result: dict) -> float:
    """Seconds of ``analyze.py`` (a fresh process, report written) on the experiment of ``result``."""
    folder = result["folder"]
    cmd = [
        *(sys.executable, str(PROJECT_DIR / "analyze.py"), "--experiment", result["experiment"]),
        *("--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--out", str(folder / "report")),
    ]
    start = time.time()
    proc = subprocess.run(
        cmd, cwd=PROJECT_DIR, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    seconds = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"analyze.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    print(
        f"[a] analyze.py on {result['trials']} trials: {seconds:.1f} s, report {size_mb(folder / 'report'):.1f} MiB ({load()})"
    )
    return seconds


def part_a(args: argparse.Namespace) -> tuple[float, float, float]:
    """Per-trial platform time large / small (launch, then ``Tuner.fit`` alone) and analyze seconds."""
    synth_caches()  # the 300-image dataset the searches use
    small = [search(args.trials_small, f"{args.trials_small}", args.max_concurrent)]
    large = search(args.trials_large, f"{args.trials_large}", args.max_concurrent)
    if not args.quick:  # the small search again: load drifts over a long benchmark
        small.append(search(args.trials_small, f"{args.trials_small}-again", args.max_concurrent))
    seconds = analyze(large)
    baseline = sum(r["per_trial"] for r in small) / len(small)
    fit_baseline = sum(r["fit_per_trial"] for r in small) / len(small)
    print(
        f"[a] per-trial platform time {args.trials_large} / {args.trials_small} trials = {large['per_trial']:.2f} / "
        f"{baseline:.2f} s = {large['per_trial'] / baseline:.2f}; within Tuner.fit {large['fit_per_trial']:.2f} / "
        f"{fit_baseline:.2f} s = {large['fit_per_trial'] / fit_baseline:.2f}"
    )
    return large["per_trial"] / baseline, large["fit_per_trial"] / fit_baseline, seconds


def images(n: int, source: int) -> Path:
    """The synthetic dataset of ``n`` images at ``source`` px, generated once (timed)."""
    folder = BASE / f"synth-{n}-{source}px"
    if not (folder / "train.json").is_file():
        from medtune.data.tools.synth import generate

        start = time.time()
        generate(folder, n=n, size=source, seed=0, force=True)
        print(
            f"[b] generated {n} images at {source} px in {time.time() - start:.1f} s (not the cache's cost; {load()})"
        )
    return folder


def one_split(source: Path, n: int) -> Path:
    """A dataset folder whose train split is the first ``n`` images of ``source`` (val and test: one each)."""
    cocos = [json.loads((source / f"{s}.json").read_text()) for s in ("train", "val", "test")]
    pool = [img for coco in cocos for img in coco["images"]][:n]
    keep = {img["id"] for img in pool}
    annotations = [a for coco in cocos for a in coco["annotations"] if a["image_id"] in keep]
    info = {"description": f"first {n} images of {source.name}", "images_dir": str(source / "images")}
    folder = BASE / f"split-{n}-{source.name}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", pool), ("val", pool[:1]), ("test", pool[:1])):
        ids = {img["id"] for img in rows}
        coco = {"info": info, "images": rows, "categories": cocos[0]["categories"]}
        coco["annotations"] = [a for a in annotations if a["image_id"] in ids]
        (folder / f"{name}.json").write_text(json.dumps(coco))
    return folder


def build_child(data: str, size: str) -> None:
    """Child process: resolve the dataset, then ``build_cache`` of its train split; one JSON line."""
    from medtune.data.cache import build_cache
    from medtune.data.coco import resolve_dataset

    cache = Path(data) / "cache"
    start = time.time()
    dataset = resolve_dataset(Path(data), cache_root=cache)
    resolved = time.time()
    before = status_kib("self", "VmHWM", "RssAnon")
    path = build_cache(dataset, "train", int(size), cache)
    built = time.time()
    after = status_kib("self", "VmHWM")
    print(
        json.dumps(
            {
                "resolve": resolved - start,
                "build": built - resolved,
                "hwm_before": before["VmHWM"] / 1024,
                "anon_before": before["RssAnon"] / 1024,
                "hwm_after": after["VmHWM"] / 1024,
                "file_mb": path.stat().st_size / 2**20,
            }
        )
    )


def build(split: Path, n: int, size: int) -> dict:
    """Time ``build_cache`` of ``split``'s train split (a fresh cache folder) in a child; its memory."""
    shutil.rmtree(split / "cache", ignore_errors=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--build-child", str(split), str(size)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, 0.1)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"cache build of {n} images failed ({proc.returncode}):\n{err[-2000:]}")
    r = {**json.loads(out.strip().splitlines()[-1]), "images": n, "anon_peak": sampler.anon_kib / 1024}
    r["per_image_ms"] = 1000 * r["build"] / n
    print(
        f"[b] {n} images -> {size} px cache ({load()}): build {r['build']:.1f} s = {r['per_image_ms']:.2f} ms per image, "
        f"file {r['file_mb']:.0f} MiB (resolving the dataset, image hashes included: {r['resolve']:.1f} s)"
    )
    print(
        f"    child memory: VmHWM {r['hwm_before']:.0f} MiB before the build, {r['hwm_after']:.0f} MiB after; "
        f"RssAnon {r['anon_before']:.0f} MiB before, peak {r['anon_peak']:.0f} MiB"
    )
    return r


def part_b(args: argparse.Namespace) -> float:
    """Per-image build time, large / small."""
    need = (
        args.images_large * (1.1 * 4 * args.image_size**2 + 1.5 * args.source**2)
        + args.images_small * 4.4 * args.image_size**2
    )
    free = shutil.disk_usage(WORK.parent if not WORK.exists() else WORK).free
    if need > 0.9 * free:
        raise SystemExit(f"error: part b needs about {need / 2**30:.1f} GiB under {WORK}, {free / 2**30:.1f} GiB free")
    source = images(args.images_large, args.source)
    results = []
    try:
        for n in (args.images_small, args.images_large):
            results.append(build(one_split(source, n), n, args.image_size))
            if not args.keep:
                shutil.rmtree(BASE / f"split-{n}-{source.name}")
    finally:
        if not args.keep:
            shutil.rmtree(source, ignore_errors=True)
    small, large = results
    ratio = large["per_image_ms"] / small["per_image_ms"]
    print(
        f"[b] per-image build time {args.images_large} / {args.images_small} images = {large['per_image_ms']:.2f} / {small['per_image_ms']:.2f} ms = {ratio:.2f}"
    )
    return ratio


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 vs 8 trials, 200 vs 1,000 images from 64 px sources")
    p.add_argument("--part", choices=("a", "b", "ab"), default="ab", help="a: searches, b: cache (default both)")
    p.add_argument("--trials-small", type=int, help="trials of the small search [30; --quick 2]")
    p.add_argument("--trials-large", type=int, help="trials of the large search [300; --quick 8]")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials at once [1: nothing hides behind training]")
    p.add_argument("--images-small", type=int, help="images of the small cache [2000; --quick 200]")
    p.add_argument("--images-large", type=int, help="images of the large cache [20000; --quick 1000]")
    p.add_argument("--source", type=int, help="side of the generated images in px [128; --quick 64]")
    p.add_argument("--image-size", type=int, default=224, help="side of the cache in px [224]")
    p.add_argument("--keep", action="store_true", help="keep the generated images and caches of part b")
    p.add_argument("--build-child", nargs=2, help=argparse.SUPPRESS)
    p.error = lambda message: p.exit(2, f"error: {message}\n")  # one line, no usage block
    args = p.parse_args()
    defaults = {"trials_small": (30, 2), "trials_large": (300, 8), "images_small": (2000, 200)}
    defaults |= {"images_large": (20000, 1000), "source": (128, 64)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    for small, large in (("trials_small", "trials_large"), ("images_small", "images_large")):
        if not 1 <= getattr(args, small) < getattr(args, large):
            p.error(f"need 1 <= --{small.replace('_', '-')} < --{large.replace('_', '-')}")
    if min(args.max_concurrent, args.source, args.image_size) < 1 or args.images_small < 2:
        p.error("--max-concurrent, --source and --image-size must be >= 1, --images-small >= 2")
    return args


def main() -> int:
    args = parse()
    if args.build_child:
        build_child(*args.build_child)
        return 0
    try:
        print("; ".join(run(args)).join(("RATIO ", f" ({load()})")))
    except RuntimeError as err:  # a launch, analyze.py or a build failed: its log is named
        print(f"error: {' '.join(str(err).split())[:1000]}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> list[str]:
    """Run the parts asked for; their ratios with verdicts."""
    print(
        f"cost_growth: {'quick' if args.quick else 'full'}, part {args.part} ({load()}), {time.strftime('%Y-%m-%d %H:%M')}"
    )
    ratios = []
    if "a" in args.part:
        trial_ratio, fit_ratio, analyze_s = part_a(args)
        verdict = "met" if trial_ratio <= TARGET_RATIO else "MISSED"
        ratios.append(
            f"per-trial platform time {args.trials_large}/{args.trials_small} trials = {trial_ratio:.2f} "
            f"(target <= {TARGET_RATIO}: {verdict}; within Tuner.fit {fit_ratio:.2f})"
        )
        verdict = "met" if analyze_s < TARGET_ANALYZE_S else "MISSED"
        ratios.append(
            f"analyze.py on {args.trials_large} trials {analyze_s:.1f} s = {analyze_s / TARGET_ANALYZE_S:.2f} of the {TARGET_ANALYZE_S:.0f} s target ({verdict})"
        )
    if "b" in args.part:
        image_ratio = part_b(args)
        verdict = "met" if image_ratio <= TARGET_RATIO else "MISSED"
        ratios.append(
            f"cache per-image time {args.images_large}/{args.images_small} images = {image_ratio:.2f} (target <= {TARGET_RATIO}: {verdict})"
        )
    return ratios


if __name__ == "__main__":
    sys.exit(main())
