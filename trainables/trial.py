"""The Ray Tune function trainable: build the task from the sampled config and train it.

Each epoch ends with one ``tune.report`` of every logged metric, so ASHA can stop the trial after any
epoch; the report carries a Lightning checkpoint when ``CheckpointPolicy`` says one is needed (a new
best, the last epoch, or minutes since the last one), and ``--resume`` continues from the latest.

Trials get their data from Ray, not from the driver's disk (a cluster need not share one): the driver
puts each cache file once into the object store (``hand_over``) and each trial maps it from its own
node's shared memory (``received``; ``medtune.data.shared`` says why numpy and how).

A trial trains in a thread of its worker process (Tune's runner thread, a daemon). Tune stops a trial
without waiting for that thread, and a worker process then exits: a daemon thread still inside torch
when Python finalizes is ended by ``pthread_exit`` from inside the C++ call, which aborts the process
with a native stack trace (``TerminateHandler``) on the driver's terminal. ``guard_training`` ends the
thread at its next batch once Tune stopped its trial or the process is exiting, and the process waits
for it (``EXIT_WAIT_S``) before finalizing.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import ray
import torch
from ray import tune
from ray.train._internal.session import get_session

from medtune.data.cache import load_cache
from medtune.data.folds import FoldPlan
from medtune.data.shared import from_arrays, nbytes, to_arrays
from medtune.engine.crossval import FOLD_FILE, rounds_done, train_folds
from medtune.engine.recipe import Recipe
from medtune.engine.trainer import make_trainer
from trainables.checkpoint_policy import EVERY_S, CheckpointPolicy, resumable
from trainables.sampling import flat_config

CHECKPOINT_FILE = "checkpoint"
POLICY_FILE = "checkpoint_policy.json"  # a cross-validated trial's policy state, beside its fold files
EXIT_WAIT_S = 60.0  # how long an exiting worker waits for its training thread to reach its next batch
_EXITING = threading.Event()  # set when this worker process starts to exit
_TRAINING: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # threads that ran a trial in this process


class StopAtBatch(pl.Callback):
    """End training (``SystemExit(0)``, which Tune's runner thread takes as a clean end) at the start of the
    next batch once ``stop`` or ``_EXITING`` is set: no thread of a stopped trial runs torch code on."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def _check(self, *args: Any) -> None:
        if self.stop.is_set() or _EXITING.is_set():
            raise SystemExit(0)

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = _check


def guard_training() -> StopAtBatch:
    """The callback that ends the calling thread's training when Tune stops its trial (the session's stop
    event) or its process exits; the process then waits up to ``EXIT_WAIT_S`` for the thread (``atexit``)."""
    _TRAINING.add(threading.current_thread())
    stop = getattr(get_session(), "stop_event", None)  # None outside Tune: only the exit stops it
    return StopAtBatch(stop if stop is not None else threading.Event())


def _wait_for_training() -> None:
    """At exit, before Python finalizes: ask the training threads to end and wait for them."""
    _EXITING.set()
    for thread in list(_TRAINING):
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(EXIT_WAIT_S)


atexit.register(_wait_for_training)  # after Ray's own exit handlers are registered, so it runs before them


class EpochReport(pl.Callback):
    """One ``tune.report`` per epoch: every logged metric, three facts for the driver, a checkpoint when
    ``policy`` wants one.

    The facts, recorded on the trial's MLflow run: ``early_stopped`` (1.0 when the task's own
    patience ended training, so the driver can tell it from an ASHA stop), ``node_id`` (the Ray
    node the trial ran on, for multi-node clusters) and ``start_epoch`` (the epoch this fit resumed
    from, 0 when it started from scratch).

    Reports at ``on_train_epoch_end``, which Lightning calls after the epoch's validation, so train
    and val metrics are both in. The task's EarlyStopping decides at validation end (see
    ``medtune.tasks.base``), so ``trainer.should_stop`` is already set here on the stopping epoch.

    Args:
        checkpoints: attach Lightning checkpoints to reports (False: metrics only, to measure what
            checkpoints cost; ``--resume`` and publishing need them).
        scratch: folder for the checkpoint's temporary copy [the system temp folder]; the launch
            passes its own (``TrialContext.scratch``) and deletes it.
        policy: which epochs carry one [every epoch]; its state (the best so far) is saved in each
            checkpoint, so a resumed trial goes on deciding as before.
    """

    def __init__(
        self, *, checkpoints: bool = True, scratch: str | None = None, policy: CheckpointPolicy | None = None
    ) -> None:
        self.checkpoints = checkpoints
        self.scratch = scratch
        self.policy = policy if policy is not None else CheckpointPolicy(metric="", every_s=0)
        self.start_epoch = 0

    def state_dict(self) -> dict:
        return self.policy.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.policy.load_state_dict(state_dict)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_epoch = trainer.current_epoch  # a restored checkpoint's epoch count (restored by now), else 0

    def metrics(self, trainer: pl.Trainer) -> dict:
        """The report's metrics: Lightning's logged values plus ``early_stopped``, ``node_id`` and ``start_epoch``."""
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        metrics["early_stopped"] = float(trainer.should_stop)
        metrics["node_id"] = ray.get_runtime_context().get_node_id()
        metrics["start_epoch"] = self.start_epoch
        return metrics

    def save(self, trainer: pl.Trainer, folder: str) -> None:
        """Write the trainer's full state (weights, optimizer, epoch) as ``folder/CHECKPOINT_FILE``."""
        trainer.save_checkpoint(os.path.join(folder, CHECKPOINT_FILE))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self.metrics(trainer)
        last = trainer.should_stop or trainer.current_epoch + 1 >= trainer.max_epochs
        if self.policy.reason(metrics, last=last) is None or not self.checkpoints:
            tune.report(metrics)
            return
        # Ray copies the folder into the trial's storage during report; the temporary one can go.
        with tempfile.TemporaryDirectory(dir=made(self.scratch)) as folder:
            self.save(trainer, folder)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


@dataclass(frozen=True)
class TrialContext:
    """Constants every trial receives from the driver, prepared once.

    ``recipe`` is the launch-wide part of every trial's ``Recipe`` (task, classes, epoch budget, objective,
    seed, precision; an empty configuration and no caches): each trial derives its own (``recipe_for``).
    ``caches`` and ``pred_masks`` hold, per image size and split, the ObjectRef of a cache the driver put
    into Ray's object store (``hand_over``); a cache file's absolute path also works, where every node
    reads the same disk (a benchmark on one machine).
    """

    recipe: Recipe
    caches: dict[int, dict[str, Any]]  # image size -> split -> ObjectRef of the cache (or its file)
    pred_masks: dict[int, dict[str, Any]] | None  # image size -> split -> segmenter probabilities, the same way
    threads: int  # the trial's CPUs: torch threads, and DataLoader workers beyond the first (see run_trial)
    folds: FoldPlan | None = None  # cross-validation: caches (and pred_masks) then hold "pool" and "test"
    # The launch's folder for temporary checkpoint copies: a trial stopped while reporting can leave
    # one behind, and the launch deletes this folder when it ends (trainables.cleanup).
    scratch: str | None = None
    # The longest stretch without a checkpoint (trainables.checkpoint_policy); a new best by the recipe's
    # metric and mode is always written ("" as metric: every epoch).
    checkpoint_every_s: float = EVERY_S

    def recipe_for(self, config: dict) -> Recipe:
        """The trial's recipe: ``config`` and the caches at its image size, opened from Ray's object store."""
        size = int(config["data.image_size"])
        masks = received(self.pred_masks[size]) if self.pred_masks else None
        return replace(self.recipe, config=config, caches=received(self.caches[size]), pred_masks=masks)

    def checkpoint_policy(self) -> CheckpointPolicy:
        """A fresh policy for one trial (each trial decides on its own epochs)."""
        return CheckpointPolicy(metric=self.recipe.metric, mode=self.recipe.mode, every_s=self.checkpoint_every_s)


def made(folder: str | None) -> str | None:
    """``folder``, created if missing (None: the system temp folder).

    The folder is a path on the driver's machine; where it cannot be made (a node without that temp
    folder, or not allowed to write there), the trial uses a folder of that name in its node's temp folder.
    """
    if folder is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        folder = os.path.join(tempfile.gettempdir(), os.path.basename(folder))
        os.makedirs(folder, exist_ok=True)
    return folder


def hand_over(
    files: dict[int, dict[str, str]] | None, splits: Iterable[str]
) -> tuple[dict[int, dict[str, ray.ObjectRef]] | None, int]:
    """Put the cache ``files`` of ``splits`` into Ray's object store, one object per file; returns the
    refs (for ``TrialContext``) and the bytes put. Driver only, after ``ray.init``.

    Objects live while the driver holds their refs (the TrialContext, until the search ends); a trial
    on any node then reads them from its node's shared memory, never from the driver's cache folder.
    """
    if files is None:
        return None, 0
    refs: dict[int, dict[str, ray.ObjectRef]] = {}
    total = 0
    for size, by_split in files.items():
        refs[size] = {}
        for split in splits:
            arrays = to_arrays(load_cache(by_split[split]))
            total += nbytes(arrays)
            refs[size][split] = ray.put(arrays)
    return refs, total


def received(handed: dict[str, Any]) -> dict[str, Any]:
    """Split -> the open cache (``load_cache``'s dict, viewing the object store) for each ObjectRef in
    ``handed``; a path is passed on as it is (no Ray call then: a benchmark or test outside Ray starts none)."""
    keys = [key for key, value in handed.items() if isinstance(value, ray.ObjectRef)]
    got = dict(zip(keys, ray.get([handed[key] for key in keys]))) if keys else {}
    return {key: from_arrays(got[key]) if key in got else value for key, value in handed.items()}


def run_trial(config: dict, context: TrialContext, *, report: EpochReport | None = None) -> None:
    """Train one configuration, reporting validation metrics every epoch (and checkpoints, ``EpochReport``).

    Args:
        config: the sampled configuration (flat dotted keys, or a grid point).
        context: the driver's constants.
        report: the per-epoch report [``EpochReport()``]; a benchmark passes a subclass that times it.
    """
    config = flat_config(config)
    torch.set_num_threads(context.threads)
    # Loading scales with the trial's CPUs unless the space sets data.num_workers; one CPU keeps 0
    # workers (a worker process costs seconds to start, more than a smoke trial's loading).
    config.setdefault("data.num_workers", max(0, context.threads - 1))
    if context.folds is not None:
        run_folds(config, context)
        return
    recipe = context.recipe_for(config)
    system = recipe.system(seed=recipe.seed)
    data = recipe.datamodule()
    callbacks = [report or EpochReport(scratch=context.scratch, policy=context.checkpoint_policy()), guard_training()]
    trainer = make_trainer(
        max_epochs=recipe.max_epochs, precision=recipe.precision, callbacks=callbacks, seed=recipe.seed
    )
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trainer.fit(system, datamodule=data)
        return
    with checkpoint.as_directory() as folder:
        if not resumable([Path(folder) / CHECKPOINT_FILE]):
            return  # it had finished: see ``resumable``
        trainer.fit(system, datamodule=data, ckpt_path=os.path.join(folder, CHECKPOINT_FILE))


def run_folds(config: dict, context: TrialContext) -> None:
    """Cross-validated trial: the folds in lockstep (``medtune.engine.crossval``), one report per round.

    The report holds the fold means (the objective ASHA and TPE see), each fold's validation metrics
    and their sd, and, when the checkpoint policy wants it, the folder of fold checkpoints (with the
    policy's state in ``POLICY_FILE``); ``--resume`` continues from the latest one.
    """
    recipe = context.recipe_for(config)
    policy = context.checkpoint_policy()
    guard = guard_training()

    with tempfile.TemporaryDirectory(dir=made(context.scratch)) as work:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as saved:
                shutil.copytree(saved, work, dirs_exist_ok=True)
        if not resumable(sorted(Path(work).glob(FOLD_FILE.format(k="*")))):
            return  # it had finished: see ``resumable``
        if (Path(work) / POLICY_FILE).is_file():
            policy.load_state_dict(json.loads((Path(work) / POLICY_FILE).read_text()))
        start = rounds_done(Path(work))

        def report(metrics: dict[str, float], finished: bool, folder: Path) -> None:
            node = ray.get_runtime_context().get_node_id()
            facts = {"early_stopped": float(finished), "node_id": node, "start_epoch": start}
            last = finished or rounds_done(folder) >= recipe.max_epochs
            if policy.reason(metrics, last=last) is None:
                tune.report({**metrics, **facts})
                return
            (folder / POLICY_FILE).write_text(json.dumps(policy.state_dict()))
            tune.report({**metrics, **facts}, checkpoint=tune.Checkpoint.from_directory(str(folder)))

        train_folds(recipe, context.folds, Path(work), report, callbacks=lambda: [guard])
