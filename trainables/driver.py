"""The launch, driver side: prepare once, run (or resume) the Tune search, publish the winner.

``run`` returns the process exit code: 0 when a winner was published, ``INTERRUPTED`` (130) when
the search ended before every trial did (Ctrl-C, a lost cluster), so the caller can offer --resume.
Each phase's wall-clock time is printed at the end and recorded in the ``Phases`` passed in.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis, ResultGrid, Tuner

from medtune.config.options import LaunchOptions
from medtune.data.coco import SPLITS
from medtune.engine.quiet import quiet_driver
from medtune.prepare.inputs import Prepared, prepare
from medtune.tracking.provenance import standard_tags
from medtune.tracking.redact import redact_uri
from medtune.tracking.store import (
    TrackingError,
    experiment_id,
    open_client,
    transient,
    trial_runs,
)
from trainables import cleanup
from trainables.console import Console
from trainables.mlflow_trials import MLflowTrials, use_tracking_uri
from trainables.optuna_search import dashboard_command
from trainables.parent import Stage, parent_run, study
from trainables.phases import Phases
from trainables.ray_session import ray_session
from trainables.search import Resources, SearchPolicy, make_tuner, restore_tuner
from trainables.spool import PendingWrites, pending_writes, spool_file
from trainables.state_copy import restore_cut_state
from trainables.storage import Location, check_reachable, is_remote, storage_root
from trainables.trial import TrialContext, hand_over
from trainables.winner import finish

INTERRUPTED = 130  # the exit code of a search that ended before its trials did (as for SIGINT)


def _context(prepared: Prepared, options: LaunchOptions, scratch: Path) -> TrialContext:
    """The trials' constants, their caches handed to Ray's object store (after ``ray.init``): trials on
    any node read them from there, never from ``--cache-dir``, which only the driver's machine has."""
    splits = ("pool", "test") if prepared.folds else SPLITS  # what a trial's data module opens
    caches, size = hand_over(prepared.caches, splits)
    pred_masks, more = hand_over(prepared.pred_masks, splits)
    print(f"[launch] caches handed to Ray's object store for the trials: {(size + more) / 2**20:.1f} MiB")
    return TrialContext(
        recipe=prepared.recipe(options),
        caches=caches,
        pred_masks=pred_masks,
        threads=max(1, int(options.cpus_per_trial)),
        folds=prepared.folds,
        scratch=str(scratch),
        checkpoint_every_s=60.0 * options.checkpoint_minutes,
    )


def _resources(options: LaunchOptions) -> Resources:
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else float(torch.cuda.is_available())
    return Resources(options.cpus_per_trial, gpus, options.max_concurrent, options.max_failures)


def run(
    options: LaunchOptions,
    *,
    default_data: Path,
    policy: SearchPolicy = SearchPolicy(),
    phases: Phases | None = None,
    stage: Stage | None = None,
) -> int:
    """The whole launch; returns the process exit code.

    Args:
        options: what the user asked for.
        default_data: the dataset used when ``options.data`` is None (generated if absent).
        policy: the search's sampler, scheduler, checkpoints and trainable [what users run].
        phases: filled with each phase's wall-clock time [a fresh one, printed only].
        stage: a nested launch's stage this search is (``trainables.nested``) [a launch of its own].
    """
    phases = phases if phases is not None else Phases()
    options = dataclasses.replace(options, storage_path=storage_root(options.storage_path))
    # A wrong, unreachable or read-only folder or bucket: one line before anything is prepared (on
    # --resume too: the resume hint repeats the launch's --storage-path, and the search writes there again).
    check_reachable(options.storage_path)
    if not options.verbose:
        quiet_driver()
    if swept := cleanup.sweep_stale(options.cache_dir):
        print(f"[launch] removed {swept} stale temporary file(s) of killed cache writes", file=sys.stderr)
    with phases.time("prepare"):
        prepared = prepare(options, default_data=default_data)
    client = open_client(prepared.tracking_uri)  # the first opener creates the store, under a lock
    with phases.time("parent_run"):
        parent_run_id, loc = parent_run(client, prepared, options, stage)
        storage = study(client, prepared, options, parent_run_id, loc)
    scratch = cleanup.new_scratch(loc.name)
    try:
        stopped = stage.stopped if stage else None
        return _search(client, prepared, options, policy, phases, parent_run_id, loc, storage, scratch, stopped)
    finally:  # also on a failure or Ctrl-C: the trials' temporary copies go (their checkpoints stay for --resume)
        shutil.rmtree(scratch, ignore_errors=True)


def _search(
    client: MlflowClient,
    prepared: Prepared,
    options: LaunchOptions,
    policy: SearchPolicy,
    phases: Phases,
    parent_run_id: str,
    loc: Location,
    storage: str | None,
    scratch: Path,
    stopped: threading.Event | None = None,
) -> int:
    """Run (or resume) the search and publish its winner; the exit code (``INTERRUPTED`` also when ``stopped``
    was set: a nested launch's Ctrl-C).

    A ``--resume`` of a launch whose search had finished (its publishing stopped by a store that went
    away) starts no Ray: it sends the trial writes kept in the spool, then publishes from Ray's results
    and checkpoints, kept for it.
    """
    if options.resume and not is_remote(loc.ray):  # a local folder: Tune's state may have been cut by a kill
        for name in restore_cut_state(Path(loc.ray)):
            print(
                f"[launch] --resume: {name} was cut (killed while written); its last complete copy is used",
                file=sys.stderr,
            )
    grid = _finished_search(client, prepared, parent_run_id, loc) if options.resume else None
    try:
        if grid is None:
            with ray_session(options.address, phases=phases, verbose=options.verbose):
                tuner = _tuner(client, prepared, options, policy, parent_run_id, loc, storage, scratch)
                with phases.time("tuner_fit"):
                    grid = tuner.fit()
    except BaseException:
        _close_runs(client, parent_run_id, prepared, "FAILED")
        raise
    if unsent := pending_writes(spool_file(loc.driver)):  # the store stayed away: nothing to close or publish there
        raise TrackingError(_unreachable(prepared, f"({unsent} trial writes kept in {spool_file(loc.driver)})"))
    samples = prepared.space.budget["num_samples"]
    interrupted = stopped is not None and stopped.is_set()
    if interrupted or not _complete(grid, samples) or not _complete(_saved_grid(prepared, loc), samples):
        _close_runs(client, parent_run_id, prepared, "KILLED")
        code = INTERRUPTED
    else:
        try:
            with phases.time("finish"):
                code = finish(client, prepared, options, parent_run_id, grid, scratch)
        except BaseException as err:  # testing, retraining or logging the winner failed: never leave RUNNING
            if transient(err):  # ... unless the store went away: then nothing can be closed there
                raise TrackingError(_unreachable(prepared, "while the winner was published")) from None
            _close_runs(client, parent_run_id, prepared, "FAILED")
            raise
    _clean_up(loc, options, code, scratch)
    print(f"[launch] phases: {phases.summary()}", file=sys.stderr)
    if storage:
        print(f"[launch] optuna study {loc.name}: {dashboard_command(storage)}", file=sys.stderr)
    return code


def _finished_search(client: MlflowClient, prepared: Prepared, parent_run_id: str, loc: Location) -> ResultGrid | None:
    """The results of the launch's search when it had finished (read from Ray's folder, no Ray started),
    after sending the trial writes its spool kept; None when trials are left to run."""
    space = prepared.space
    grid = _saved_grid(prepared, loc)
    if not _complete(grid, space.budget["num_samples"]):
        return None
    print("[launch] --resume: the search had finished; publishing its winner", file=sys.stderr)
    exp_id = experiment_id(client, prepared.experiment, create=False)
    ids = {"experiment_id": exp_id, "parent_run_id": parent_run_id, "metric": space.metric, "mode": space.mode}
    writes = PendingWrites(tracking_uri=prepared.tracking_uri, **ids, spool=spool_file(loc.driver))
    writes.drain(time.monotonic() + OUTAGE_WAIT_S)
    return grid


OUTAGE_WAIT_S = 60.0  # how long a resumed launch tries to send its spool before it says the store is away


def _unreachable(prepared: Prepared, what: str) -> str:
    """The one line of a launch whose tracking store stopped answering: what it kept, how to go on."""
    return (
        f"the tracking store {redact_uri(prepared.tracking_uri)} stopped answering {what}; the trials' checkpoints are "
        "kept: "
        "once it answers, run the same command with --resume (it sends what is pending, then publishes the winner)"
    )


def _clean_up(loc: Location, options: LaunchOptions, code: int, scratch: Path) -> None:
    """A finished launch deletes its trials' checkpoints (the winner is in MLflow) unless asked to keep
    them; an interrupted one keeps them for --resume. The trials' scratch copies go in both cases."""
    if code == 0 and not options.keep_checkpoints:
        print(cleanup.summary(*cleanup.drop_checkpoints(loc, scratch), loc.ray), file=sys.stderr)
    else:
        shutil.rmtree(scratch, ignore_errors=True)


def _complete(grid: ResultGrid, num_samples: int) -> bool:
    """Whether every sampled trial ended (finished or failed) and every sample was drawn."""
    return grid.num_terminated + grid.num_errors == len(grid) and len(grid) >= num_samples


def _saved_grid(prepared: Prepared, loc: Location) -> ResultGrid:
    """The search as Tune's saved experiment state has it: what ``--resume`` reads.

    After a stop signal (Ctrl-C or SIGUSR1, which Tune handles) ``Tuner.fit`` returns the trials it stopped as
    terminated but saves them as running: with every sample drawn, its grid alone looks complete,
    and a half-trained trial would be published (and its checkpoints deleted). The saved state does not.
    """
    space = prepared.space
    fs, path = loc.filesystem()  # a bucket's URI keeps its options (endpoint, region) in this filesystem
    analysis = ExperimentAnalysis(path, storage_filesystem=fs, default_metric=space.metric, default_mode=space.mode)
    return ResultGrid(analysis)


def _tuner(
    client: MlflowClient,
    prepared: Prepared,
    options: LaunchOptions,
    policy: SearchPolicy,
    parent_run_id: str,
    loc: Location,
    storage: str | None,
    scratch: Path,
) -> Tuner:
    """The new or restored Tuner, with the MLflow trial logger attached (and the study's ``storage``)."""
    space = prepared.space
    context, resources = _context(prepared, options, scratch), _resources(options)
    if options.resume:  # the restored logger holds the URI without credentials: the full one is this launch's
        use_tracking_uri(prepared.tracking_uri)
        return restore_tuner(loc.ray, context=context, resources=resources, policy=policy)
    seg = prepared.segmenter
    tags = (
        {"segmenter_version": f"{seg.name}/{seg.version}", "segmenter_foreign": str(seg.foreign).lower()} if seg else {}
    )
    tags = {**standard_tags(), **tags}  # the UI's User and Source columns, as on the parent run
    logger = MLflowTrials(
        tracking_uri=prepared.tracking_uri,
        experiment_id=experiment_id(client, prepared.experiment, create=False),
        parent_run_id=parent_run_id,
        max_epochs=space.budget["max_epochs"],
        searched=[p.name for p in space.params],
        tags=tags,
        metric=space.metric,
        mode=space.mode,
        spool=spool_file(loc.driver),
    )
    console = Console(
        metric=space.metric,
        mode=space.mode,
        max_epochs=space.budget["max_epochs"],
        searched=[p.name for p in space.params],
        num_samples=space.budget["num_samples"],
    )
    verbose = options.verbose
    return make_tuner(
        space,
        context=context,
        resources=resources,
        storage_path=loc.root,
        name=loc.name,
        seed=options.seed,
        callbacks=[logger] if verbose else [logger, console],
        policy=policy,
        verbose=verbose,
        study_storage=storage,
    )


def _close_runs(client: MlflowClient, parent_run_id: str, prepared: Prepared, status: str) -> None:
    """Mark the parent run and any trial run still RUNNING as ``status`` (never left RUNNING)."""
    exp_id = experiment_id(client, prepared.experiment, create=False)
    for run in trial_runs(client, exp_id, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
    client.set_terminated(parent_run_id, status)
