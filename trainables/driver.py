"""The launch, driver side: prepare once, run (or resume) the Tune search, publish the winner.

``run`` returns the process exit code: 0 when a winner was published, ``INTERRUPTED`` (130) when
the search ended before every trial did (Ctrl-C, a lost cluster), so the caller can offer --resume.
Each phase's wall-clock time is printed at the end and recorded in the ``Phases`` passed in.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs
import ray
import torch
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis, ResultGrid, Tuner

import medtune
import trainables
from medtune.config.options import LaunchOptions
from medtune.data.coco import SPLITS
from medtune.engine.quiet import quiet_driver
from medtune.prepare.inputs import Prepared, prepare, start_parent_run
from medtune.publish.nested import NESTED_TAG
from medtune.publish.single import BestTrial
from medtune.publish.winner import publish_winner
from medtune.tracking.leaderboard import counts, format_table, leaderboard
from medtune.tracking.provenance import standard_tags
from medtune.tracking.redact import redact_uri
from medtune.tracking.store import (
    PARENT_TAG,
    TRIAL_TAG,
    TrackingError,
    experiment_id,
    latest_launch,
    open_client,
    retrying,
    transient,
    trial_runs,
)
from trainables import cleanup
from trainables.console import Console
from trainables.mlflow_trials import MLflowTrials, use_tracking_uri
from trainables.optuna_search import dashboard_command, study_storage
from trainables.phases import Phases
from trainables.sampling import flat_config
from trainables.search import Resources, SearchPolicy, can_restore, make_tuner, restore_tuner
from trainables.spool import PendingWrites, pending_writes, spool_file
from trainables.storage import Location, check_reachable, join, location, storage_root
from trainables.trial import CHECKPOINT_FILE, TrialContext, hand_over


def code_runtime_env() -> dict:
    """Ship the code to every worker through Ray (``py_modules``), not through a shared folder or
    PYTHONPATH: the nodes of a real cluster need not see this checkout."""
    return {"py_modules": [medtune, trainables]}


INTERRUPTED = 130  # the exit code of a search that ended before its trials did (as for SIGINT)
STUDY_TAGS = ("optuna_storage", "optuna_study")  # the parent run's record of where its Optuna study lives


@dataclasses.dataclass(frozen=True)
class Stage:
    """A nested launch's stage (an outer fold, the refit): its search's parent run is a child run of the
    nested launch's run, named ``name`` and tagged ``tags``, instead of a launch of its own."""

    launch_run_id: str
    name: str
    tags: dict[str, str]

    def find(self, client: MlflowClient, exp_id: str):
        """The stage's run under the launch, or None (the newest, if a failed start left two)."""
        runs = [r for r in trial_runs(client, exp_id, self.launch_run_id) if self._mine(r)]
        return max(runs, key=lambda r: r.info.start_time, default=None)

    def _mine(self, run) -> bool:
        return all(run.data.tags.get(key) == value for key, value in self.tags.items())


class RayStartError(RuntimeError):
    """Ray could not start its local node: one line for the terminal, not Ray's traceback."""


STARTUP_TIMEOUT = "timed out during startup"  # Ray's message when its node does not register in 30 s


def _init(address: str | None, level: str) -> None:
    """``ray.init`` with the code shipped to workers; a local node that did not come up in Ray's fixed 30 s
    (a machine busy with other work) is shut down and started once more before giving up in one line."""
    for attempt in (1, 2):
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=True,
                logging_level=getattr(logging, level),
                logging_config=ray.LoggingConfig(log_level=level),  # trials' loggers too (checkpoint notices)
                runtime_env=code_runtime_env(),
            )
            return
        except Exception as err:  # Ray raises a bare Exception for this
            if STARTUP_TIMEOUT not in str(err):
                raise
            ray.shutdown()
            if attempt == 2:
                raise RayStartError(
                    "Ray's node did not start within its 30 s, twice: the machine is too busy (see `uptime`)"
                ) from err
            print(f"[launch] Ray's node {STARTUP_TIMEOUT} (a busy machine?); starting it once more", file=sys.stderr)


@contextmanager
def ray_session(address: str | None = None, *, phases: Phases | None = None, verbose: bool = False) -> Iterator[None]:
    """Ray started (or joined at ``address``) with the code shipped to workers, shut down after.

    Trials' own output reaches the terminal (once per distinct line, ``RAY_DEDUP_LOGS``): their
    warnings and errors, the routine lines being silenced in the trials (``medtune.engine.quiet``).
    """
    phases = phases if phases is not None else Phases()
    if ray.is_initialized():  # a nested launch's stage: the launch's Ray session, started once for all stages
        yield
        return
    # Ray's new output engine prints its experiment box and a TensorBoard hint even at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    level = "INFO" if verbose else "WARNING"
    with phases.time("ray_init"):
        _init(address, level)
    try:
        yield
    finally:
        with phases.time("ray_shutdown"):
            ray.shutdown()


def _context(prepared: Prepared, options: LaunchOptions, scratch: Path) -> TrialContext:
    """The trials' constants, their caches handed to Ray's object store (after ``ray.init``): trials on
    any node read them from there, never from ``--cache-dir``, which only the driver's machine has."""
    splits = ("pool", "test") if prepared.folds else SPLITS  # what a trial's data module opens
    caches, size = hand_over(prepared.caches, splits)
    pred_masks, more = hand_over(prepared.pred_masks, splits)
    print(f"[launch] caches handed to Ray's object store for the trials: {(size + more) / 2**20:.1f} MiB")
    return TrialContext(
        task=prepared.space.task,
        caches=caches,
        pred_masks=pred_masks,
        num_classes=prepared.dataset.num_classes,
        max_epochs=prepared.space.budget["max_epochs"],
        seed=options.seed,
        threads=max(1, int(options.cpus_per_trial)),
        precision=options.precision,
        folds=prepared.folds,
        scratch=str(scratch),
        metric=prepared.space.metric,
        mode=prepared.space.mode,
        checkpoint_every_s=60.0 * options.checkpoint_minutes,
    )


def _resources(options: LaunchOptions) -> Resources:
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else float(torch.cuda.is_available())
    return Resources(options.cpus_per_trial, gpus, options.max_concurrent, options.max_failures)


NAME_TRIES = 100  # launches of one experiment started in the same second that get a folder of their own


def new_location(storage_path: str, cache_dir: Path, experiment: str, *, now: float) -> Location:
    """A new launch's folders, named ``<experiment>-<date>-<time>`` at ``now`` (``-2``, ``-3``, ... after
    launches of the experiment started in the same second). The driver's folder is created exclusively
    (no ``exist_ok``): two launches never share a Ray folder, spool, scratch folder or Optuna study, and
    the first to finish never deletes the other's checkpoints. (Launches on two machines writing into one
    bucket at the same second are told apart only by their driver folders, on their own disks.)
    """
    stamp = f"{experiment}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    for n in range(1, NAME_TRIES + 1):
        loc = location(join(storage_path, stamp if n == 1 else f"{stamp}-{n}"), cache_dir)
        loc.driver.parent.mkdir(parents=True, exist_ok=True)
        try:
            loc.driver.mkdir()
        except FileExistsError:
            continue
        return loc
    raise TrackingError(f"{loc.driver.parent}: {NAME_TRIES} launches of '{experiment}' in one second; start it again")


def _parent(
    client: MlflowClient, prepared: Prepared, options: LaunchOptions, stage: Stage | None = None
) -> tuple[str, Location]:
    """The parent run and where its search is kept: a new launch (or nested stage), or the one ``--resume``
    continues."""
    if not options.resume:
        loc = new_location(options.storage_path, options.cache_dir, prepared.experiment, now=time.time())
        if stage is None:
            return start_parent_run(client, prepared, options, redact_uri(loc.ray), loc.name), loc
        tags = {**stage.tags, PARENT_TAG: stage.launch_run_id}
        return start_parent_run(client, prepared, options, redact_uri(loc.ray), stage.name, stage=tags), loc
    exp_id = experiment_id(client, prepared.experiment, create=False)
    run = stage.find(client, exp_id) if stage else latest_launch(client, exp_id)
    if "ray_path" not in run.data.tags:  # a nested launch: its stages hold the searches
        folds = run.data.tags.get(NESTED_TAG, "K")
        raise TrackingError(
            f"--resume: the latest launch of '{prepared.experiment}' is nested; resume it with --outer-folds {folds}"
        )
    loc = location(run.data.tags["ray_path"], options.cache_dir)
    if not can_restore(loc.ray):
        raise TrackingError(
            f"--resume: the latest launch of '{prepared.experiment}' has no restorable search at {loc.ray}"
        )
    if run.info.status == "FINISHED":  # its checkpoints are gone (trainables.cleanup); nothing is left to run
        raise TrackingError(
            f"--resume: the latest launch of '{prepared.experiment}' finished; start a new one without --resume"
        )
    client.update_run(run.info.run_id, "RUNNING")
    return run.info.run_id, loc


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
        parent_run_id, loc = _parent(client, prepared, options, stage)
        storage = _study(client, prepared, options, parent_run_id, loc)
    scratch = cleanup.new_scratch(loc.name)
    try:
        return _search(client, prepared, options, policy, phases, parent_run_id, loc, storage, scratch)
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
) -> int:
    """Run (or resume) the search and publish its winner; the exit code.

    A ``--resume`` of a launch whose search had finished (its publishing stopped by a store that went
    away) starts no Ray: it sends the trial writes kept in the spool, then publishes from Ray's results
    and checkpoints, kept for it.
    """
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
    if not _complete(grid, prepared.space.budget["num_samples"]):
        _close_runs(client, parent_run_id, prepared, "KILLED")
        code = INTERRUPTED
    else:
        try:
            with phases.time("finish"):
                code = _finish(client, prepared, options, parent_run_id, grid, scratch)
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
    grid = ResultGrid(ExperimentAnalysis(str(loc.ray), default_metric=space.metric, default_mode=space.mode))
    if not _complete(grid, space.budget["num_samples"]):
        return None
    print("[launch] --resume: the search had finished; publishing its winner", file=sys.stderr)
    exp_id = experiment_id(client, prepared.experiment, create=False)
    ids = {"experiment_id": exp_id, "parent_run_id": parent_run_id, "metric": space.metric, "mode": space.mode}
    writes = PendingWrites(tracking_uri=prepared.tracking_uri, **ids, spool=spool_file(loc.driver))
    writes.drain(time.monotonic() + OUTAGE_WAIT_S)
    return grid


OUTAGE_WAIT_S = 60.0  # how long a resumed launch tries to send its spool before it says the store is away


def _study(
    client: MlflowClient, prepared: Prepared, options: LaunchOptions, parent_run_id: str, loc: Location
) -> str | None:
    """The Optuna storage keeping the launch's study (named ``loc.name``), recorded on the parent run;
    None for a grid (no searcher) and for a resumed launch that recorded none (its study is in memory)."""
    if options.resume:  # the restored searcher reattaches to the study its launch recorded
        return client.get_run(parent_run_id).data.tags.get(STUDY_TAGS[0])
    if prepared.space.search == "grid":
        return None
    storage = study_storage(prepared.tracking_uri, loc.driver.parent)
    for tag, value in zip(STUDY_TAGS, (storage, loc.name)):
        client.set_tag(parent_run_id, tag, value)
    return storage


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


def _best_trial(
    client: MlflowClient, prepared: Prepared, parent_run_id: str, grid: ResultGrid, scratch: Path
) -> BestTrial | None:
    """The trial with the best checkpoint score over all its epochs (failed trials excluded); a checkpoint
    in a bucket is downloaded into the launch's scratch folder, which the launch removes."""
    space = prepared.space
    sign = 1.0 if space.mode == "max" else -1.0
    best = None  # (signed score, result, checkpoint, score, reported metrics)
    for result in grid:
        for checkpoint, metrics in (result.best_checkpoints or []) if result.error is None else []:
            score = float(metrics.get(space.metric, math.nan))
            if math.isfinite(score) and (best is None or sign * score > best[0]):
                best = (sign * score, result, checkpoint, score, metrics)
    if best is None:
        return None
    _, result, checkpoint, score, metrics = best
    trial_id = result.metrics["trial_id"]
    exp_id = experiment_id(client, prepared.experiment, create=False)
    run_id = next(
        r.info.run_id for r in trial_runs(client, exp_id, parent_run_id) if r.data.tags.get(TRIAL_TAG) == trial_id
    )
    # Read in place: to_directory() without a folder would copy it into a checkpoint_tmp_* folder of /tmp
    # that nobody deletes (128 MiB per resnet18 fold); the launch deletes the original once the winner is logged.
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        folder = Path(checkpoint.path)
    else:
        folder = Path(checkpoint.to_directory(str(scratch / "winner")))
    local = folder if prepared.folds else folder / CHECKPOINT_FILE  # cross-validated: the folder of fold files
    return BestTrial(run_id, flat_config(result.config), local, score, dict(metrics))


def _finish(
    client: MlflowClient,
    prepared: Prepared,
    options: LaunchOptions,
    parent_run_id: str,
    grid: ResultGrid,
    scratch: Path,
) -> int:
    space = prepared.space
    best = _best_trial(client, prepared, parent_run_id, grid, scratch)
    exp_id = experiment_id(client, prepared.experiment, create=False)
    rows = leaderboard(client, exp_id, parent_run_id, space.metric, space.mode)
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts(rows).items()))
    print(f"\n== {prepared.experiment}: {len(rows)} trials ({tally}) ==\n{format_table(rows, space.metric)}")
    if best is None:
        retrying(lambda: client.set_terminated(parent_run_id, "FAILED"))
        raise TrackingError(f"every trial of '{prepared.experiment}' failed; see the errors above and in mlflow ui")
    publish_winner(client, prepared, options, parent_run_id, best)
    return 0
