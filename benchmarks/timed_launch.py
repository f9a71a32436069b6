"""Run the real ``launch.py`` with timers around its phases; write them as JSON.

    python benchmarks/timed_launch.py OUT.json [--no-reuse] [--no-checkpoint] [--keep-all] -- <launch.py arguments>

Nothing in the platform changes: the driver's functions are wrapped (prepare, MLflow parent run,
``ray.init``, ``Tuner.fit``, ``ray.shutdown``, the MLflow trial callback, test evaluation, model
logging), and the trial function is wrapped so the worker appends, to a JSON-lines file, when it
started and how long each epoch's checkpoint + ``tune.report`` took. ``--no-reuse`` turns
``reuse_actors`` off, to measure what actor reuse saves; ``--no-checkpoint`` reports metrics without checkpoints (the
launch then fails at publishing, having no checkpoint: use it for the training phases only);
``--keep-all`` drops ``num_to_keep`` from the CheckpointConfig (no deletions, no forced snapshots). Times are wall clock (``time.time``) so
driver and worker events share one axis; ``BENCH_SPAWN`` (set by the caller) anchors process start.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import time

T_MAIN = time.time()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRIAL_LOG = ""  # set in main(); captured by value when Ray pickles timed_trial
SAVE_CHECKPOINTS = True  # --no-checkpoint: report metrics only (to isolate the checkpoints' cost)
PHASES: dict[str, float] = {}


def _wrap(owner: object, name: str, label: str) -> None:
    """Accumulate the seconds spent in ``owner.name`` under ``label``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: object, **kwargs: object) -> object:
        start = time.time()
        PHASES.setdefault(f"{label}_start", start)
        try:
            return original(*args, **kwargs)
        finally:
            PHASES[label] = PHASES.get(label, 0.0) + time.time() - start
            PHASES[f"{label}_end"] = time.time()

    setattr(owner, name, wrapper)


def timed_trial(config: dict, context) -> None:
    """``run_trial`` plus worker-side timestamps (runs in the Ray worker)."""
    import pytorch_lightning as pl

    from trainables import trial

    log = open(TRIAL_LOG, "a")
    write = lambda **kv: (log.write(json.dumps({"pid": os.getpid(), **kv}) + "\n"), log.flush())  # noqa: E731
    write(event="trial_start", t=time.time())
    handle, save = trial.EpochReport._handle, pl.Trainer.save_checkpoint

    def timed_handle(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_checkpoints = SAVE_CHECKPOINTS
        start = time.time()
        write(event="report_start", t=start, epoch=trainer.current_epoch)  # the last report may never return
        handle(self, trainer, pl_module)
        write(event="report", t=start, seconds=time.time() - start, epoch=trainer.current_epoch)

    def timed_save(self, *args: object, **kwargs: object) -> None:
        start = time.time()
        save(self, *args, **kwargs)
        write(event="save_checkpoint", t=start, seconds=time.time() - start)

    trial.EpochReport._handle, pl.Trainer.save_checkpoint = timed_handle, timed_save
    try:
        trial.run_trial(config, context)
    finally:
        trial.EpochReport._handle, pl.Trainer.save_checkpoint = handle, save


def main() -> int:
    global TRIAL_LOG, SAVE_CHECKPOINTS
    split = sys.argv.index("--")
    out, flags, launch_args = sys.argv[1], sys.argv[2:split], sys.argv[split + 1 :]
    TRIAL_LOG = out + ".trials.jsonl"
    PHASES["spawn"] = float(os.environ.get("BENCH_SPAWN", T_MAIN))
    PHASES["main"] = T_MAIN
    import ray
    from ray import tune

    import launch
    import medtune.publish as publish
    import trainables.driver as driver
    import trainables.search as search
    from trainables.mlflow_trials import MLflowTrials

    PHASES["imports"] = time.time() - T_MAIN
    _wrap(driver, "prepare", "prepare")
    _wrap(driver, "start_parent_run", "mlflow_parent_run")
    _wrap(ray, "init", "ray_init")
    _wrap(ray, "shutdown", "ray_shutdown")
    _wrap(tune.Tuner, "fit", "tuner_fit")
    _wrap(driver, "_finish", "finish")
    for name in ("test_metrics", "test_predictions", "_log_cam_overlays", "_log_predictions"):
        _wrap(publish, name, f"publish.{name}")
    _wrap(
        importlib.import_module("mlflow.pytorch"), "log_model", "publish.log_model"
    )  # the module, not mlflow's lazy proxy
    for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
        _wrap(MLflowTrials, name, "mlflow_callbacks")
    search.run_trial = timed_trial
    SAVE_CHECKPOINTS = "--no-checkpoint" not in flags
    if "--keep-all" in flags:  # CheckpointConfig without num_to_keep: no deletions, no forced snapshots
        keep = search.CheckpointConfig
        search.CheckpointConfig = lambda **kw: keep(**{k: v for k, v in kw.items() if k != "num_to_keep"})
    if "--no-reuse" in flags:
        original = search.TuneConfig
        search.TuneConfig = lambda **kw: original(**{**kw, "reuse_actors": False})
    code = launch.main(launch_args)
    PHASES["exit"] = time.time()
    PHASES["driver_peak_rss_mb"] = _peak_rss_mb()
    with open(out, "w") as f:
        json.dump({"code": code, "phases": PHASES}, f, indent=1)
    return code


def _peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
