"""Run the real launch with the driver's phase timer and a timed trainable; write the times as JSON.

    python benchmarks/timed_launch.py OUT.json [--no-reuse] [--no-checkpoint] [--keep-all] -- <launch.py arguments>

Nothing in the platform is patched: the launch is ``trainables.driver.run`` with the options
``launch.py`` would build, a ``Phases`` to fill (prepare, MLflow parent run, Ray start, ``Tuner.fit``,
Ray shutdown, finish = leaderboard + test evaluation + model logging), and a ``SearchPolicy`` whose
trainable is ``timed_trial`` below: ``run_trial`` with a timed ``EpochReport`` (the launch's
checkpoint policy, ``--checkpoint-minutes``) that appends, to a JSON-lines file, when the worker
started, how long each epoch's report took and which epochs wrote a checkpoint. ``--no-reuse`` turns ``reuse_actors`` off, to measure what actor reuse saves;
``--no-checkpoint`` reports metrics without checkpoints (the launch then fails at publishing,
having no checkpoint: use it for the training phases only); ``--keep-all`` keeps every checkpoint
(no pruning). Times are wall clock (``time.time``) so driver and
worker events share one axis; ``BENCH_SPAWN`` (set by the caller) anchors process start.
"""

from __future__ import annotations

import json
import os
import sys
import time

T_MAIN = time.time()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRIAL_LOG = ""  # set in main(); captured by value when Ray pickles timed_trial
SAVE_CHECKPOINTS = True  # --no-checkpoint: report metrics only (to isolate the checkpoints' cost)
FLAGS = ("--no-reuse", "--no-checkpoint", "--keep-all")


def _write(**event: object) -> None:
    with open(TRIAL_LOG, "a") as log:
        log.write(json.dumps({"pid": os.getpid(), **event}) + "\n")


def timed_trial(config: dict, context) -> None:
    """``run_trial`` with a timed per-epoch report (runs in the Ray worker)."""
    import pytorch_lightning as pl

    from trainables.trial import EpochReport, run_trial

    class TimedReport(EpochReport):
        def save(self, trainer: pl.Trainer, folder: str) -> None:
            start = time.time()
            super().save(trainer, folder)
            _write(event="save_checkpoint", t=start, seconds=time.time() - start, epoch=trainer.current_epoch)

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            start = time.time()
            _write(event="report_start", t=start, epoch=trainer.current_epoch)  # the last may never return
            super().on_train_epoch_end(trainer, pl_module)
            _write(event="report", t=start, seconds=time.time() - start, epoch=trainer.current_epoch)

    _write(event="trial_start", t=time.time())
    report = TimedReport(checkpoints=SAVE_CHECKPOINTS, scratch=context.scratch, policy=context.checkpoint_policy())
    run_trial(config, context, report=report)
    _write(event="trial_end", t=time.time())  # a trial ASHA or the budget stops at its last report never gets here


def flat_phases(phases) -> dict[str, float]:
    """``name`` (seconds), ``name_start`` and ``name_end`` (wall clock) for every recorded phase."""
    out: dict[str, float] = {}
    for name, phase in phases.phases.items():
        out[name] = phase.seconds
        out.update({f"{name}_{k}": v for k, v in (("start", phase.start), ("end", phase.end)) if v is not None})
    return out


def main() -> int:
    global TRIAL_LOG, SAVE_CHECKPOINTS
    split = sys.argv.index("--")
    out, flags, launch_args = sys.argv[1], sys.argv[2:split], sys.argv[split + 1 :]
    if set(flags) - set(FLAGS):
        print(f"error: unknown flags {sorted(set(flags) - set(FLAGS))}; valid: {', '.join(FLAGS)}", file=sys.stderr)
        return 2
    TRIAL_LOG, SAVE_CHECKPOINTS = out + ".trials.jsonl", "--no-checkpoint" not in flags
    times = {"spawn": float(os.environ.get("BENCH_SPAWN", T_MAIN)), "main": T_MAIN}
    from medtune.prepare.inputs import USER_ERRORS
    from trainables import launch
    from trainables.driver import run
    from trainables.phases import Phases
    from trainables.search import SearchPolicy

    times["imports"] = time.time() - T_MAIN
    policy = SearchPolicy(
        trainable=timed_trial,
        reuse_actors="--no-reuse" not in flags,
        prune_checkpoints="--keep-all" not in flags,
    )
    phases = Phases()
    try:
        options = launch.options_from(launch.parse_args(launch_args))
        code = run(
            options, default_data=launch.project.project_dir() / launch.DEFAULT_DATA, policy=policy, phases=phases
        )
    except USER_ERRORS as err:  # e.g. --no-checkpoint: no checkpoint to publish
        print(f"error: {err}", file=sys.stderr)
        code = 2
    times.update(flat_phases(phases), exit=time.time(), driver_peak_rss_mb=_peak_rss_mb())
    with open(out, "w") as f:
        json.dump({"code": code, "phases": times}, f, indent=1)
    return code


def _peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
