"""GPU: mixed-precision step speed, trials per GPU, GPU utilisation during a search, loader sufficiency.

    python benchmarks/gpu.py             # one NVIDIA GPU, 224 px: 5-8 minutes estimated (never run on a GPU yet)
    python benchmarks/gpu.py --dry-run   # the same code paths on CPU at 32 px, 1 epoch, --gpus-per-trial 0

Without a CUDA GPU (and without ``--dry-run``) it exits 2 with one line. Three parts, on the synthetic
set generated at 224 px (``python -m medtune.data synth``, 800 images, 480 for training) under
``MEDTUNE_BENCH_DIR``:

(a) precision: whole_cls resnet50 (random init), batch 32, ``Trainer.fit`` from ``make_trainer`` (the
    trials' Trainer) over the same batches already on the GPU, for ``32-true``, ``16-mixed`` and
    ``bf16-mixed``; each fit runs 2 epochs, the first a warm-up; 3 rounds, order rotated; medians.
(b) trials per GPU: real ``launch.py`` searches of whole_cls with resnet50 fixed at 224 px, 4 trials x
    3 epochs (no ASHA stop: grace = max epochs, so each search does the same work), 3 CPUs per trial,
    at ``--gpus-per-trial`` 1, 0.5 and 0.25; ``nvidia-smi`` is polled every 0.5 s in a thread for
    utilisation and each process's GPU memory; the trials' MLflow runs give FINISHED / FAILED and OOM.
(c) loader: ``CachedDataModule.train_dataloader()`` at 224 px (augment 0.3, pinned memory) with a
    trial's workers (CPUs per trial - 1) and with all cores, against the ``16-mixed`` step of (a)
    (the launches' default precision); >= 3x is wanted.

They run in the order (b), (a), (c), so that during the searches no CUDA memory of this process sits
on the GPU. Prints a table, then the ratios last. Exit 1 if a launch or a trial failed (the table still prints).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from common import PROJECT_DIR, WORK, WORK_ARGS, load, median, synth_caches

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
LAUNCH_PRECISION = "16-mixed"  # launch.py's default --precision: the step the loader has to keep up with


@dataclass(frozen=True)
class Sizes:
    """What each part measures at (synthetic set, batches, searches)."""

    px: int
    n: int  # images of the synthetic set; 60% of each class is train
    batch: int
    batches: int  # batches per timed epoch in (a)
    rounds: int  # rounds of the three precisions in (a)
    trials: int  # per search in (b)
    epochs: int  # per trial in (b)
    fractions: tuple[float, ...]  # --gpus-per-trial of the searches in (b)
    cpus_per_trial: int
    timeout_s: int  # per launch; then Ctrl-C (the launch closes its runs), then kill


FULL = Sizes(
    px=224, n=800, batch=32, batches=20, rounds=3, trials=4, epochs=3, fractions=(1.0, 0.5, 0.25), cpus_per_trial=3,
    timeout_s=240,
)  # fmt: skip
DRY = Sizes(  # CPU-sized: checks every code path, measures nothing
    px=32, n=60, batch=8, batches=3, rounds=1, trials=2, epochs=1, fractions=(0.0,), cpus_per_trial=1, timeout_s=600
)  # fmt: skip


def config(s: Sizes) -> dict:
    return {
        "model.name": "resnet50",
        "model.weights": "none",
        "loss.name": "ce",
        "data.image_size": s.px,
        "data.batch_size": s.batch,
        "data.augment": 0.3,
        "train.optimizer": "adamw",
        "train.lr": 1e-3,
        "train.saliency_metric": False,
    }


def device_id() -> str:
    """The GPU the launches run on (and nvidia-smi reads): the first visible one."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"


def smi(query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-<query> --format=csv,noheader,nounits`` for our GPU; [] without it."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits", "-i", device_id()],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:  # no driver or no such GPU: its message is not a row
        return []
    return [[v.strip() for v in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


@dataclass
class Poller:
    """Samples GPU utilisation, memory used and each compute process's memory every ``every`` s."""

    every: float = 0.5
    util: list[float] = field(default_factory=list)  # utilisation samples while a process was on the GPU
    used: list[float] = field(default_factory=list)  # MiB used on the GPU, every sample
    peaks: dict[str, float] = field(default_factory=dict)  # pid -> peak MiB
    most: int = 0  # most processes on the GPU at once

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            apps = [(row[0], number(row[1])) for row in smi("compute-apps=pid,used_memory") if len(row) >= 2]
            for row in [r for r in smi("gpu=utilization.gpu,memory.used") if len(r) >= 2][:1]:
                util, used = number(row[0]), number(row[1])
                self.used += [used] if used is not None else []
                self.util += [util] if util is not None and apps else []
            for pid, mib in apps:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), mib or 0.0)
            self.most = max(self.most, len(apps))
            self.stop.wait(self.every)

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def prepare(s: Sizes) -> tuple[str, dict[str, str], int]:
    """(dataset folder, split -> cache, classes): ``python -m medtune.data synth`` once, caches built once."""
    data = WORK / f"synth-n{s.n}-{s.px}px"
    if not (data / "train.json").is_file():
        cmd = [sys.executable, "-m", "medtune.data", "synth", "--out", str(data), "--n", str(s.n), "--size", str(s.px)]
        subprocess.run([*cmd, "--force"], check=True, cwd=PROJECT_DIR)
    _, caches, k = synth_caches(n=s.n, size=s.px, source=s.px)
    return str(data), caches, k


def precision_fit(batches: list[dict], k: int, s: Sizes, precision: str) -> tuple[float, float]:
    """(images/s of the second epoch, peak GPU MiB) of ``Trainer.fit`` over ``batches`` at ``precision``."""
    import pytorch_lightning as pl

    from medtune.engine.build import build_system
    from medtune.engine.trainer import make_trainer

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.start, self.seconds = 0.0, []

        def on_train_epoch_start(self, *_: object) -> None:
            self.start = sync_time()

        def on_train_epoch_end(self, *_: object) -> None:
            self.seconds.append(sync_time() - self.start)

    warnings.filterwarnings("ignore", ".*no `val_dataloader`")  # (a) times training steps only
    pl.seed_everything(0, verbose=False)
    clock, gpu = EpochClock(), torch.cuda.is_available()
    system = build_system("classification", config(s), num_classes=k, max_epochs=2)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = make_trainer(max_epochs=2, precision=precision, callbacks=[clock])
    trainer.fit(system, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else 0.0
    return len(batches) * s.batch / clock.seconds[-1], peak


def sync_time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def precisions(caches: dict[str, str], k: int, s: Sizes) -> dict[str, tuple[float, float]]:
    """Precision -> (median images/s, peak MiB) over ``s.rounds`` rounds in rotated order."""
    from medtune.engine.build import build_datamodule

    batches: list[dict] = []
    while len(batches) < s.batches:
        loader = build_datamodule(config(s), caches=caches).train_dataloader()
        batches += [b for b in loader if len(b["image"]) == s.batch]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = [{key: v.to(device) for key, v in b.items()} for b in batches[: s.batches]]
    out: dict[str, list[tuple[float, float]]] = {p: [] for p in PRECISIONS}
    for r in range(s.rounds):
        for p in PRECISIONS[r:] + PRECISIONS[:r]:
            out[p].append(precision_fit(batches, k, s, p))
            print(f"(a) round {r}: {p} {out[p][-1][0]:.0f} img/s, peak {out[p][-1][1]:.0f} MiB ({load()})")
    return {p: (median([v[0] for v in vs]), max(v[1] for v in vs)) for p, vs in out.items()}


def loader_rate(caches: dict[str, str], s: Sizes, workers: int) -> float:
    """Images/s of the train loader with ``workers`` workers, after one warm-up pass (workers persist)."""
    from medtune.engine.build import build_datamodule

    loader = build_datamodule({**config(s), "data.num_workers": workers}, caches=caches).train_dataloader()
    for _ in loader:  # warm-up: worker start, page cache
        pass
    seen, start = 0, time.perf_counter()
    while seen < 3 * len(loader.dataset):
        for batch in loader:
            seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def launch_args(s: Sizes, data: str, fraction: float, experiment: str) -> list[str]:
    sets = [f"data.image_size={s.px}", f"data.batch_size={s.batch}", "model.name=resnet50"]
    sets += [f"budget.grace_period={s.epochs}"]  # no ASHA stop: every search does the same work
    return [
        *("--space", "whole_cls", "--num-samples", str(s.trials), "--max-epochs", str(s.epochs), "--repeats", "1"),
        *[arg for kv in sets for arg in ("--set", kv)],
        *("--gpus-per-trial", f"{fraction:g}", "--cpus-per-trial", str(s.cpus_per_trial), "--experiment", experiment),
        *WORK_ARGS,
        *("--data", data),  # after WORK_ARGS' --data: argparse keeps the last
    ]


def run_launch(args: list[str], s: Sizes, log: str) -> tuple[int, float]:
    """(exit code, wall seconds) of ``launch.py args``, its output in ``log``; Ctrl-C past the timeout."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": device_id()}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "launch.py", *args], cwd=PROJECT_DIR, env=env, stdout=out, stderr=out)
        try:
            code = proc.wait(timeout=s.timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(2)  # SIGINT: the launch marks its runs KILLED and stops Ray
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    return code, time.perf_counter() - start


def trial_runs(experiment: str) -> dict[str, int]:
    """Count of the experiment's trial runs by MLflow status, plus ``OOM`` (errors naming out of memory)."""
    from mlflow.tracking import MlflowClient

    from medtune.tracking.store import TRIAL_TAG

    client = MlflowClient(WORK_ARGS[WORK_ARGS.index("--tracking-uri") + 1])
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    counts: dict[str, int] = {"OOM": 0}
    for run in (r for r in runs if TRIAL_TAG in r.data.tags):
        counts[run.info.status] = counts.get(run.info.status, 0) + 1
        counts["OOM"] += "out of memory" in run.data.tags.get("error", "").lower()
    return counts


def search(s: Sizes, data: str, fraction: float) -> dict:
    """One launch at ``--gpus-per-trial fraction``, with nvidia-smi polled during it."""
    experiment = f"gpu-{fraction:g}-{time.strftime('%Y%m%d-%H%M%S')}"
    log = str(WORK / f"{experiment}.log")
    with Poller() as poll:
        code, wall = run_launch(launch_args(s, data, fraction, experiment), s, log)
    text = open(log).read()
    fit = re.search(r"tuner_fit ([\d.]+) s", text)
    runs = trial_runs(experiment)
    row = {
        "fraction": fraction,
        "code": code,
        "wall": wall,
        "fit": float(fit.group(1)) if fit else wall,
        "finished": runs.get("FINISHED", 0),
        "failed": runs.get("FAILED", 0) + runs.get("KILLED", 0),
        "oom": runs["OOM"] + text.lower().count("out of memory") > 0,
        "poll": poll,
    }
    print(f"(b) gpus-per-trial {fraction:g}: exit {code}, {wall:.0f} s, trial runs {runs}, log {log} ({load()})")
    return row


def shown(fn: Callable[[list[float]], float], values: list[float]) -> str:
    """``fn(values)`` rounded, or '-' when nvidia-smi gave no values (no GPU, or a dry run)."""
    return f"{fn(values):.0f}" if values else "-"


def report(s: Sizes, prec: dict, rows: list[dict], loaders: dict[int, float]) -> None:
    """The three tables."""
    base = prec["32-true"][0]
    print(f"\n(a) precision: resnet50, {s.px} px, batch {s.batch}, median of {s.rounds}; peak includes the {s.batches} "
          f"batches kept on the device; TF32 convolutions {torch.backends.cudnn.allow_tf32}")  # fmt: skip
    print("    precision     img/s  peak MiB  vs 32-true")
    for p, (rate, peak) in prec.items():
        print(f"    {p:<12} {rate:6.0f} {peak:9.0f} {rate / base:10.2f}x")
    print(
        f"(b) searches: whole_cls resnet50, {s.px} px, {s.trials} trials x {s.epochs} epochs, {s.cpus_per_trial} CPUs each"
    )
    print("    gpus/trial  on GPU at once  Tuner.fit s  launch s  trials/min  train img/s  util % (busy median)  "
          "peak MiB/process  peak MiB GPU  finished/failed  OOM")  # fmt: skip
    train_images = round(0.6 * s.n)
    for r in rows:
        p = r["poll"]
        util, peak, used = shown(median, p.util), shown(max, list(p.peaks.values())), shown(max, p.used)
        print(
            f"    {r['fraction']:<10g}  {p.most:14d}  {r['fit']:11.0f}  {r['wall']:8.0f}  "
            f"{60 * r['finished'] / r['fit']:10.2f}  {r['finished'] * s.epochs * train_images / r['fit']:11.0f}  "
            f"{util:>20}  {peak:>16}  {used:>12}  "
            f"{r['finished']:>8}/{r['failed']:<6}  {'yes' if r['oom'] else 'no'}"
        )
    step = prec[LAUNCH_PRECISION][0]
    print(f"(c) loader at {s.px} px vs the {LAUNCH_PRECISION} step ({step:.0f} img/s):")
    for workers, rate in loaders.items():
        print(f"    {workers:2d} workers: {rate:6.0f} img/s = {rate / step:.2f}x the step")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, 32 px, 1 epoch, --gpus-per-trial 0: checks the script")
    args = p.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU visible (torch.cuda.is_available() is False); run on a GPU machine, or --dry-run",
            file=sys.stderr,
        )
        return 2
    s = DRY if args.dry_run else FULL
    if args.dry_run:
        torch.set_num_threads(1)  # a shared CPU
    gpu = ", ".join(next(iter(smi("gpu=name,memory.total,driver_version")), ["none"]))
    print(f"GPU {gpu} (name, MiB, driver); torch {torch.__version__}; {load()}")
    data, caches, k = prepare(s)
    # (b) first: this process has not touched CUDA yet, so the GPU holds only the launches' processes
    rows = [search(s, data, f) for f in s.fractions]
    prec = precisions(caches, k, s)
    loaders = {w: loader_rate(caches, s, w) for w in sorted({s.cpus_per_trial - 1, (os.cpu_count() or 2) - 1})}
    print("(c) loader: " + ", ".join(f"{w} workers {r:.0f} img/s" for w, r in loaders.items()) + f" ({load()})")
    report(s, prec, rows, loaders)
    base, step, one = prec["32-true"][0], prec[LAUNCH_PRECISION][0], max(rows[0]["finished"], 1) / rows[0]["fit"]
    packed = [f"{r['fraction']:g} {r['finished'] / r['fit'] / one:.2f}x" for r in rows[1:]] or ["(one setting)"]
    print(
        "RATIO "
        + ", ".join(f"{p} / 32-true step = {prec[p][0] / base:.2f}x" for p in PRECISIONS[1:])
        + "; trials/min vs gpus-per-trial "
        + f"{rows[0]['fraction']:g}: "
        + ", ".join(packed)
        + "; loader / step = "
        + ", ".join(f"{w} workers {r / step:.2f}x" for w, r in loaders.items())
        + " (>= 3x wanted)"
        + (" [dry run on CPU: every precision ran 32-true, no GPU polled]" if args.dry_run else "")
    )
    return 1 if any(r["code"] != 0 or r["failed"] or r["oom"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
