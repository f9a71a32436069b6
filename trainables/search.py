"""Build, run and restore the Tune search: OptunaSearch (seeded TPE) + ASHA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from optuna.samplers import TPESampler
from ray import tune
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from medtune.spaces import SearchSpace
from trainables.sampling import DefineByRun, grid_param_space
from trainables.trial import TrialContext, run_trial


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


def _trainable(context: TrialContext, resources: Resources):
    trainable = tune.with_parameters(run_trial, context=context)
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
) -> Tuner:
    """A fresh Tuner for ``space``; results go to ``storage_path/name``."""
    budget = space.budget
    if space.search == "grid":
        # Every combination once, each trained for the full budget: no sampler, no early stopping.
        tuner = _tuner(
            space,
            BasicVariantGenerator(),
            FIFOScheduler(),
            context=context,
            resources=resources,
            storage_path=storage_path,
            name=name,
            callbacks=callbacks,
            param_space=grid_param_space(space),
        )
        return tuner
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=budget["max_epochs"],
        grace_period=min(budget["grace_period"], budget["max_epochs"]),
        reduction_factor=budget["reduction_factor"],
    )
    # A define-by-run space never receives TuneConfig's metric/mode (Ray only forwards them along
    # with a param_space), so the searcher is told here; the scheduler gets them from TuneConfig.
    # Optuna's TPE samples its first 10 trials at random (n_startup_trials=10): more than every
    # shipped space's num_samples, so TPE would never run. Warm up on a quarter of the budget (>= 2).
    sampler = TPESampler(seed=seed, n_startup_trials=max(2, budget["num_samples"] // 4))
    searcher = OptunaSearch(space=DefineByRun(space), metric=space.metric, mode=space.mode, sampler=sampler)
    return _tuner(
        space,
        searcher,
        scheduler,
        context=context,
        resources=resources,
        storage_path=storage_path,
        name=name,
        callbacks=callbacks,
    )


def _tuner(
    space: SearchSpace,
    searcher,
    scheduler,
    *,
    context: TrialContext,
    resources: Resources,
    storage_path: Path,
    name: str,
    callbacks: list,
    param_space: dict | None = None,
) -> Tuner:
    budget = space.budget
    tune_config = TuneConfig(
        metric=space.metric,
        mode=space.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=1 if param_space else budget["num_samples"],
        max_concurrent_trials=resources.max_concurrent or None,
        reuse_actors=True,
        trial_dirname_creator=trial_dirname,
    )
    run_config = RunConfig(
        name=name,
        storage_path=str(storage_path),
        callbacks=callbacks,
        verbose=1,
        checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=space.metric, checkpoint_score_order=space.mode
        ),
        failure_config=FailureConfig(max_failures=resources.max_failures),
    )
    return Tuner(
        _trainable(context, resources), param_space=param_space, tune_config=tune_config, run_config=run_config
    )


def restore_tuner(path: Path, *, context: TrialContext, resources: Resources) -> Tuner:
    """Continue an interrupted search: finished trials stay, unfinished ones resume from checkpoints."""
    return Tuner.restore(
        str(path), trainable=_trainable(context, resources), resume_unfinished=True, resume_errored=False
    )


def can_restore(path: Path) -> bool:
    return Tuner.can_restore(str(path))
