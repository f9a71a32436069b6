"""Trial overhead: one configuration trained by bare ``Trainer.fit`` vs through ``launch.py --config``.

    python benchmarks/trial_overhead.py --quick   # the ~10 s trial once each, plus 3 short trials (< 2 min)
    python benchmarks/trial_overhead.py           # ~10 s and ~60 s trials twice each (ABBA), reuse on/off
    python benchmarks/trial_overhead.py --ablate-checkpoints   # the ~60 s trial with/without checkpoints

Both sides are fresh processes (``python ...``), timed from spawn to exit, on the same caches with
one thread per trial. The launch runs under ``benchmarks/timed_launch.py``, which times its phases
(imports, prepare, MLflow, Ray start, worker start, per-epoch checkpoint + report, Ray shutdown,
and the finish: leaderboard, test evaluation, model logging). The short-trial part runs several 1-epoch trials in one launch
and reports seconds per trial with actor reuse (the platform's setting) and, in full mode, without.
Prints the ratio of the longest trial last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import PROJECT_DIR, WORK, WORK_ARGS, load, median, synth_caches

CONFIG = {  # the whole_cls space at fixed values: resnet18, 64 px, 180 training images per epoch
    "model.name": "resnet18",
    "model.weights": "none",
    "loss.name": "ce",
    "data.image_size": 64,
    "data.batch_size": 16,
    "data.augment": 0.3,
    "train.optimizer": "adamw",
    "train.scheduler": "cosine",
    "train.lr": 1e-3,
    "train.weight_decay": 1e-4,
}
EPOCHS = {"10s": 3, "60s": 17}  # about 3.5 s per epoch (train + validation) on one loaded core


def bare(epochs: int) -> None:
    """Child process: build with ``medtune.build`` and ``Trainer.fit`` as a trial does, no Ray/MLflow."""
    t0 = float(os.environ["BENCH_SPAWN"])
    import pytorch_lightning as pl
    import torch

    from medtune.build import build_datamodule, build_system
    from medtune.trainer import make_trainer  # plain Lightning, no Ray

    t_import = time.time()
    torch.set_num_threads(1)
    pl.seed_everything(0, workers=True, verbose=False)
    _, caches, k = synth_caches()
    system = build_system("classification", CONFIG, num_classes=k, epochs=epochs)
    data = build_datamodule(CONFIG, caches=caches)
    trainer = make_trainer(max_epochs=epochs, precision="32-true", callbacks=[])
    t_fit = time.time()
    trainer.fit(system, datamodule=data)
    end = time.time()
    print(json.dumps({"imports": t_import - t0, "fit": end - t_fit, "total": end - t0}))


def run_bare(epochs: int) -> dict:
    env = {**os.environ, "BENCH_SPAWN": repr(time.time()), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, __file__, "--bare", str(epochs)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_launch(tag: str, launch_args: list[str], *, reuse: bool = True, checkpoints: bool = True) -> dict:
    """Run ``launch.py`` under the phase timers; return the phases plus worker events."""
    out = WORK / f"launch-{tag}-{time.time():.0f}.json"
    cmd = [
        sys.executable,
        str(PROJECT_DIR / "benchmarks" / "timed_launch.py"),
        str(out),
        *([] if reuse else ["--no-reuse"]),
        *([] if checkpoints else ["--no-checkpoint"]),
        "--",
        *launch_args,
        *WORK_ARGS,
    ]
    env = {**os.environ, "BENCH_SPAWN": repr(time.time()), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
    if proc.returncode != 0 and checkpoints:
        raise RuntimeError(f"launch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    phases = json.loads(out.read_text())["phases"]
    trials = Path(str(out) + ".trials.jsonl")
    events = [json.loads(line) for line in trials.read_text().splitlines()] if trials.is_file() else []
    return {"phases": phases, "events": events}


def breakdown(run: dict) -> dict[str, float]:
    """Seconds per phase of one single-trial launch."""
    p, ev = run["phases"], run["events"]
    start = next(e["t"] for e in ev if e["event"] == "trial_start")
    reports = [e for e in ev if e["event"] == "report"]  # completed ones: the last may never return
    last_start = max(e["t"] for e in ev if e["event"] == "report_start")
    report_s = sum(e["seconds"] for e in reports)
    out = {
        "interpreter+imports": p["main"] - p["spawn"] + p["imports"],
        "prepare (checks, caches)": p["prepare"],
        "mlflow parent run": p["parent_run"],
        "ray.init": p["ray_init"],
        "worker start (fit -> trial fn)": start - p["tuner_fit_start"],
        "training (trial fn -> last report, minus reports)": last_start - start - report_s,
        "checkpoint+report, all epochs but the last": report_s,
        "  save_checkpoint alone, all epochs": sum(e["seconds"] for e in ev if e["event"] == "save_checkpoint"),
        "last checkpoint+report + tune tail (-> fit returns)": p["tuner_fit_end"] - last_start,
        "ray.shutdown": p["ray_shutdown"],
        "finish (leaderboard, test eval, model logging)": p.get("finish", 0.0),
        "total (spawn -> exit)": p["exit"] - p["spawn"],
    }
    return out


def ablate_checkpoints(epochs: int) -> float:
    """Training seconds inside the trial with and without per-epoch checkpoints, and bare, interleaved."""
    with_ck = run_launch("ck", ["--config", str(config_file(epochs))])
    without = run_launch("nock", ["--config", str(config_file(epochs))], checkpoints=False)
    bare_fit = run_bare(epochs)["fit"]
    seconds = {}
    for name, run in (("with checkpoints", with_ck), ("without checkpoints", without)):
        ev = run["events"]
        start = next(e["t"] for e in ev if e["event"] == "trial_start")
        seconds[name] = max(e["t"] for e in ev if e["event"] == "report_start") - start
        print(f"[ablate] trial function start -> last report, {name}: {seconds[name]:.1f} s ({load()})")
    print(
        f"[ablate] bare fit {bare_fit:.1f} s; per-epoch checkpoints cost {seconds['with checkpoints'] - seconds['without checkpoints']:.1f} s; "
        f"the trial without them is {100 * (seconds['without checkpoints'] / bare_fit - 1):.0f}% slower than bare"
    )
    return seconds["with checkpoints"] / seconds["without checkpoints"]


def config_file(epochs: int) -> Path:
    import yaml

    path = WORK / f"config-{epochs}.yaml"
    path.write_text(yaml.safe_dump({"space": "whole_cls", "config": CONFIG, "budget": {"max_epochs": epochs}}))
    return path


def compare(label: str, epochs: int, repeats: int) -> float:
    """Interleaved bare/launch repeats of one trial length; returns the median wall ratio."""
    bares, launches = [], []
    for r in range(repeats):
        for side in ["bare", "launch"] if r % 2 == 0 else ["launch", "bare"]:
            if side == "bare":
                bares.append(run_bare(epochs))
                print(
                    f"[{label}] bare   total {bares[-1]['total']:.1f} s (imports {bares[-1]['imports']:.1f}, "
                    f"fit {bares[-1]['fit']:.1f}) ({load()})"
                )
            else:
                launches.append(breakdown(run_launch(label, ["--config", str(config_file(epochs))])))
                print(f"[{label}] launch total {launches[-1]['total (spawn -> exit)']:.1f} s ({load()})")
    print(f"[{label}] {epochs} epochs, median over {repeats}: where the launch's time goes (s)")
    for key in launches[0]:
        print(f"    {key:<52} {median([b[key] for b in launches]):7.2f}")
    b_total, b_fit = median([b["total"] for b in bares]), median([b["fit"] for b in bares])
    l_total = median([b["total (spawn -> exit)"] for b in launches])
    print(
        f"[{label}] bare process {b_total:.1f} s (fit {b_fit:.1f} s); launch {l_total:.1f} s; "
        f"extra {l_total - b_total:.1f} s = {100 * (l_total / b_total - 1):.0f}% of the bare process, "
        f"{100 * (l_total - b_total) / b_fit:.0f}% of the bare fit"
    )
    return l_total / b_total


def short_trials(n: int, *, reuse: bool) -> float:
    """Seconds of ``Tuner.fit`` per 1-epoch trial, ``n`` trials of the smoke whole_cls space."""
    run = run_launch(
        f"short-{reuse}", ["--space", "whole_cls", "--smoke", "--num-samples", str(n), "--max-epochs", "1"], reuse=reuse
    )
    per = run["phases"]["tuner_fit"] / n
    workers = len({e["pid"] for e in run["events"] if e["event"] == "trial_start"})
    print(
        f"[short] {n} one-epoch trials, reuse_actors={reuse}: Tuner.fit {run['phases']['tuner_fit']:.1f} s, "
        f"{per:.1f} s per trial, {workers} worker processes ({load()})"
    )
    return per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--ablate-checkpoints", action="store_true", help="only: the ~60 s trial with and without checkpoints"
    )
    p.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare:
        return bare(args.bare)
    synth_caches()
    if args.ablate_checkpoints:
        ratio = ablate_checkpoints(EPOCHS["60s"])
        print(f"RATIO trial with / without per-epoch checkpoints = {ratio:.2f}")
        return
    if args.quick:
        short_trials(3, reuse=True)
        ratio = compare("10s", EPOCHS["10s"], 1)
        print(f"RATIO launch / bare process, ~10 s trial = {ratio:.2f} (target for 60 s trials: <= 1.05)")
        return
    short_trials(6, reuse=True)
    short_trials(6, reuse=False)
    compare("10s", EPOCHS["10s"], 2)
    ratio = compare("60s", EPOCHS["60s"], 2)
    print(f"RATIO launch / bare process, ~60 s trial = {ratio:.2f} (target <= 1.05)")


if __name__ == "__main__":
    main()
