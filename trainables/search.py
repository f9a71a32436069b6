"""Build, run and restore the Tune search: OptunaSearch (seeded TPE) + ASHA by default.

What a benchmark or an ablation varies (sampler, scheduler, checkpoints kept, actor reuse, the
trainable itself) is a field of ``SearchPolicy``, passed to ``make_tuner``; the defaults are what
``launch.py`` runs. Nothing here is meant to be patched from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from ray import tune
from ray.air.execution._internal.actor_manager import RayActorManager
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator

from medtune.config.spaces import SearchSpace
from trainables.cleanup import CheckpointPruner
from trainables.optuna_search import AshaAwareOptunaSearch
from trainables.sampling import DefineByRun, grid_param_space
from trainables.state_copy import StateCopy
from trainables.storage import is_remote
from trainables.trial import TrialContext, run_trial


def _tpe(seed: int, startup: int) -> BaseSampler:
    return TPESampler(seed=seed, n_startup_trials=startup)


def _random(seed: int, startup: int) -> BaseSampler:
    return RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int, int], BaseSampler]] = {"tpe": _tpe, "random": _random}


def _asha(budget: dict[str, int]) -> TrialScheduler:
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=budget["max_epochs"],
        grace_period=min(budget["grace_period"], budget["max_epochs"]),
        reduction_factor=budget["reduction_factor"],
    )


def _fifo(budget: dict[str, int]) -> TrialScheduler:
    return FIFOScheduler()  # every trial runs to max_epochs


SCHEDULERS: dict[str, Callable[[dict[str, int]], TrialScheduler]] = {"asha": _asha, "fifo": _fifo}


@dataclass(frozen=True)
class SearchPolicy:
    """How a (non-grid) search samples, stops, checkpoints and runs its trials.

    A grid space ignores ``sampler``, ``tpe_startup`` and ``scheduler``: it runs every combination
    for the full budget.
    """

    sampler: str = "tpe"  # a name in SAMPLERS
    # Optuna's TPE samples its first 10 trials at random: more than every shipped space's
    # num_samples, so TPE would never run. None: warm up on a quarter of the budget (>= 2).
    tpe_startup: int | None = None
    scheduler: str = "asha"  # a name in SCHEDULERS
    # Ray's num_to_keep (None: Ray deletes none). Ray deletes a superseded checkpoint before its
    # snapshot records the new one, so a kill in between breaks that trial's resume; the launch
    # leaves deleting to ``prune_checkpoints`` instead (trainables.cleanup.CheckpointPruner: each
    # trial's best and latest kept, the others deleted two snapshots and a minute late).
    keep_checkpoints: int | None = None
    prune_checkpoints: bool = True
    reuse_actors: bool = True  # a fresh worker per trial costs about 9-10 s on a CPU
    trainable: Callable[[dict, TrialContext], None] = run_trial  # called as trainable(config, context=...)

    def __post_init__(self) -> None:
        for value, registry, what in ((self.sampler, SAMPLERS, "sampler"), (self.scheduler, SCHEDULERS, "scheduler")):
            if value not in registry:
                raise ValueError(f"unknown {what} '{value}'; valid: {', '.join(registry)}")


class WorkerLost(RayActorError):
    """A trial's worker process lost to something other than its own code (Ray's memory monitor, the OS's
    OOM killer, a crash): the trial fails with this one-line reason, and ``--max-failures`` retries it."""

    def __init__(self, cause: BaseException) -> None:
        text = " ".join(str(cause).split())
        super().__init__(error_msg=f"worker lost ({type(cause).__name__}): {text[:400]}")


def lost_workers_fail_their_trial() -> None:
    """Make a trial's worker lost to memory pressure a failed trial, not the end of the search.

    Ray 2.60's actor manager (``ray/air/execution/_internal/actor_manager.py``, ``_actor_task_failed``)
    hands a trial's error to Tune only when it is a ``RayActorError`` or a ``RayTaskError``; any other
    ``RayError`` of a trial's task (``OutOfMemoryError`` when the memory monitor killed the worker,
    ``WorkerCrashedError``, ``NodeDiedError``) is raised as ``RuntimeError: Caught unexpected exception``
    out of ``Tuner.fit``, and the whole search is lost with a traceback. Here those reach Tune as a
    ``WorkerLost`` (a ``RayActorError``), the way a dead actor does. Idempotent; driver only.
    """
    original = RayActorManager._actor_task_failed
    if getattr(original, "lost_workers_fail_their_trial", False):
        return

    def failed(self: RayActorManager, tracked_actor_task: object, exception: Exception) -> None:
        if isinstance(exception, RayError) and not isinstance(exception, (RayActorError, RayTaskError)):
            exception = WorkerLost(exception)
        original(self, tracked_actor_task=tracked_actor_task, exception=exception)

    failed.lost_workers_fail_their_trial = True  # type: ignore[attr-defined]
    RayActorManager._actor_task_failed = failed


@dataclass(frozen=True)
class Resources:
    """What each trial asks of the cluster and how many run at once."""

    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int  # 0: as many as the resources allow
    max_failures: int  # retries per trial before it counts as failed


def trial_dirname(trial) -> str:
    """Short trial folder names (Ray's default embeds every parameter value)."""
    return f"trial_{trial.trial_id}"


def _trainable(context: TrialContext, resources: Resources, policy: SearchPolicy):
    trainable = tune.with_parameters(policy.trainable, context=context)
    return tune.with_resources(trainable, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})


def make_tuner(
    space: SearchSpace,
    *,
    context: TrialContext,
    resources: Resources,
    storage_path: Path,
    name: str,
    seed: int,
    callbacks: list,
    policy: SearchPolicy = SearchPolicy(),
    verbose: bool = False,
    study_storage: str | None = None,
) -> Tuner:
    """A fresh Tuner for ``space``; results go to ``storage_path/name``.

    Args:
        space: the validated space; its budget sets samples, epochs and ASHA's rungs.
        context: constants every trial receives.
        resources: per-trial resources, concurrency and retries.
        storage_path: folder of Ray's experiment folders.
        name: this experiment's folder name.
        seed: the sampler's seed.
        callbacks: driver-side Tune callbacks (e.g. the MLflow trial logger).
        policy: sampler, scheduler, checkpoints, actor reuse and trainable [what launch.py runs].
        verbose: Ray's own progress tables (else quiet: pass a ``trainables.console.Console`` callback).
        study_storage: Optuna storage URL keeping the study, named ``name``, for ``optuna-dashboard`` and
            resume (``optuna_search.study_storage``) [None: in memory]; a grid space has no study.
    """
    budget = space.budget
    if space.search == "grid":
        # Every combination once, each trained for the full budget: no sampler, no early stopping.
        searcher, scheduler, param_space = BasicVariantGenerator(), FIFOScheduler(), grid_param_space(space)
    else:
        startup = policy.tpe_startup if policy.tpe_startup is not None else max(2, budget["num_samples"] // 4)
        sampler = SAMPLERS[policy.sampler](seed, startup)
        # A define-by-run space never receives TuneConfig's metric/mode (Ray only forwards them
        # along with a param_space), so the searcher is told here; the scheduler gets them from
        # TuneConfig.
        # ASHA-stopped trials reach Optuna as PRUNED, finished ones with their best epoch (optuna_search.py).
        searcher = AshaAwareOptunaSearch(
            space=DefineByRun(space),
            metric=space.metric,
            mode=space.mode,
            sampler=sampler,
            max_epochs=budget["max_epochs"],
            storage_url=study_storage,
            study_name=name if study_storage else None,
        )
        scheduler, param_space = SCHEDULERS[policy.scheduler](budget), None
    prune = policy.prune_checkpoints and policy.keep_checkpoints is None
    tune_config = TuneConfig(
        metric=space.metric,
        mode=space.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=1 if param_space else budget["num_samples"],  # a grid_search runs each point once
        max_concurrent_trials=resources.max_concurrent or None,
        reuse_actors=policy.reuse_actors,
        trial_dirname_creator=trial_dirname,
    )
    run_config = RunConfig(
        name=name,
        storage_path=str(storage_path),
        callbacks=callbacks
        + ([CheckpointPruner(metric=space.metric, mode=space.mode)] if prune else [])
        + ([] if is_remote(str(storage_path)) else [StateCopy(str(Path(storage_path) / name))]),
        verbose=1 if verbose else 0,
        checkpoint_config=CheckpointConfig(
            num_to_keep=policy.keep_checkpoints,
            checkpoint_score_attribute=space.metric,
            checkpoint_score_order=space.mode,
        ),
        failure_config=FailureConfig(max_failures=resources.max_failures),
    )
    trainable = _trainable(context, resources, policy)
    lost_workers_fail_their_trial()
    return Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def restore_tuner(
    path: Path, *, context: TrialContext, resources: Resources, policy: SearchPolicy = SearchPolicy()
) -> Tuner:
    """Continue an interrupted search: finished trials stay, unfinished ones resume from checkpoints.

    Only ``policy.trainable`` applies: the rest of the search was saved with the experiment, and the
    searcher reattaches to its Optuna study by name (``optuna_search``).
    """
    trainable = _trainable(context, resources, policy)
    lost_workers_fail_their_trial()
    return Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False)


def can_restore(path: Path) -> bool:
    return Tuner.can_restore(str(path))
