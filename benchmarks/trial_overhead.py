"""Trial overhead: one configuration trained by bare ``Trainer.fit`` vs through ``launch.py --config``.

    python benchmarks/trial_overhead.py --quick   # the ~10 s trial once each, plus 3 short trials (< 2 min)
    python benchmarks/trial_overhead.py           # ~10 s and ~60 s trials twice each (ABBA), reuse on/off
    python benchmarks/trial_overhead.py --ablate-checkpoints   # the ~60 s trial with/without checkpoints

Both sides are fresh processes (``python ...``), timed from spawn to exit, on the same caches with
one thread per trial. The launch runs under ``benchmarks/timed_launch.py``, which times its phases
(imports, prepare, MLflow, Ray start, worker start, per-epoch report and checkpoint, Ray shutdown,
and the finish: leaderboard, test evaluation, model logging). Each launch uses the checkpoint policy
(``trainables.checkpoint_policy``: a checkpoint on a new best, on the last epoch and every 5 minutes);
the full mode also runs the ~60 s launch with ``--checkpoint-minutes 0`` (a checkpoint every epoch,
the platform before the policy) in the same interleaved order. The short-trial part runs several
1-epoch trials in one launch and reports seconds per trial with actor reuse (the platform's
setting) and, in full mode, without.

Two ratios for the longest trial, the trial's last:
- launch / bare process: everything, including what a launch pays once (Ray start and shutdown,
  a worker's start, publishing the winner), which a search shares among its trials;
- trial / bare fit: what one trial costs inside a search, from the trial function's start (model
  and data built) to ``Tuner.fit`` seeing it end, against ``Trainer.fit`` alone (target <= 1.10).
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
    """Child process: build with ``medtune.engine.build`` and ``Trainer.fit`` as a trial does, no Ray/MLflow."""
    t0 = float(os.environ["BENCH_SPAWN"])
    import pytorch_lightning as pl
    import torch

    from medtune.engine.build import build_datamodule, build_system
    from medtune.engine.trainer import make_trainer  # plain Lightning, no Ray

    t_import = time.time()
    torch.set_num_threads(1)
    pl.seed_everything(0, workers=True, verbose=False)
    _, caches, k = synth_caches()
    system = build_system("classification", CONFIG, num_classes=k, max_epochs=epochs)
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
        "report (+ checkpoint), all epochs but the last": report_s,
        "  save_checkpoint alone, all epochs": sum(e["seconds"] for e in ev if e["event"] == "save_checkpoint"),
        "  checkpoints written": float(sum(e["event"] == "save_checkpoint" for e in ev)),
        "last checkpoint+report + tune tail (-> fit returns)": p["tuner_fit_end"] - last_start,
        "ray.shutdown": p["ray_shutdown"],
        "finish (leaderboard, test eval, model logging)": p.get("finish", 0.0),
        "total (spawn -> exit)": p["exit"] - p["spawn"],
        "trial (trial fn -> fit returns)": p["tuner_fit_end"] - start,
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
    # repeats 1: the launch trains the configuration once, as the bare side does (whole_cls retrains its
    # winner with 3 seeds by default, which is publishing's work, not overhead)
    budget = {"max_epochs": epochs, "repeats": 1}
    path.write_text(yaml.safe_dump({"space": "whole_cls", "config": CONFIG, "budget": budget}))
    return path


def compare(label: str, epochs: int, repeats: int, *, every_epoch: bool = False) -> tuple[float, float]:
    """Interleaved bare/launch repeats of one trial length (and, with ``every_epoch``, a launch that
    checkpoints every epoch); returns the median (launch / bare process, trial / bare fit)."""
    sides = ["bare", "launch"] + (["every"] if every_epoch else [])
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    config = ["--config", str(config_file(epochs))]
    for r in range(repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            if side == "bare":
                runs[side].append(run_bare(epochs))
                b = runs[side][-1]
                print(
                    f"[{label}] bare   total {b['total']:.1f} s (imports {b['imports']:.1f}, fit {b['fit']:.1f}) ({load()})"
                )
                continue
            args = config + (["--checkpoint-minutes", "0"] if side == "every" else [])
            runs[side].append(breakdown(run_launch(f"{label}-{side}", args)))
            b = runs[side][-1]
            print(
                f"[{label}] {side:<6} total {b['total (spawn -> exit)']:.1f} s, trial {b['trial (trial fn -> fit returns)']:.1f} s, "
                f"{b['  checkpoints written']:.0f} checkpoints ({load()})"
            )
    b_total, b_fit = median([b["total"] for b in runs["bare"]]), median([b["fit"] for b in runs["bare"]])
    for side in sides[1:]:
        what = "checkpoint policy" if side == "launch" else "a checkpoint every epoch (--checkpoint-minutes 0)"
        print(f"[{label}] {epochs} epochs, {what}, median over {repeats}: where the launch's time goes (s)")
        for key in runs[side][0]:
            print(f"    {key:<52} {median([b[key] for b in runs[side]]):7.2f}")
        l_total = median([b["total (spawn -> exit)"] for b in runs[side]])
        trial = median([b["trial (trial fn -> fit returns)"] for b in runs[side]])
        print(
            f"[{label}] {what}: bare process {b_total:.1f} s (fit {b_fit:.1f} s); launch {l_total:.1f} s "
            f"({l_total / b_total:.2f}x the process); trial {trial:.1f} s ({trial / b_fit:.2f}x the fit)"
        )
    launch = runs["launch"]
    return (
        median([b["total (spawn -> exit)"] for b in launch]) / b_total,
        median([b["trial (trial fn -> fit returns)"] for b in launch]) / b_fit,
    )


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
        process, trial = compare("10s", EPOCHS["10s"], 1)
        print(f"launch / bare process, ~10 s trial = {process:.2f}")
        print(f"RATIO trial / bare fit, ~10 s trial = {trial:.2f} (target for 60 s trials: <= 1.10)")
        return
    short_trials(6, reuse=True)
    short_trials(6, reuse=False)
    compare("10s", EPOCHS["10s"], 2)
    process, trial = compare("60s", EPOCHS["60s"], 2, every_epoch=True)
    print(f"launch / bare process, ~60 s trial = {process:.2f} (once per launch: Ray, a worker's start, publishing)")
    print(f"RATIO trial / bare fit, ~60 s trial = {trial:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
