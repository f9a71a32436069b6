"""The search's winner, driver side: the trial with the best checkpoint, the leaderboard, then publishing
(``medtune.publish.winner``, plain MLflow and Lightning)."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.fs
from mlflow.tracking import MlflowClient
from ray.tune import ResultGrid

from medtune.config.options import LaunchOptions
from medtune.prepare.inputs import Prepared
from medtune.publish.single import BestTrial
from medtune.publish.winner import publish_winner
from medtune.tracking.leaderboard import counts, format_table, leaderboard
from medtune.tracking.store import TRIAL_TAG, TrackingError, experiment_id, retrying, trial_runs
from trainables.sampling import flat_config
from trainables.trial import CHECKPOINT_FILE


def best_trial(
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


def finish(
    client: MlflowClient,
    prepared: Prepared,
    options: LaunchOptions,
    parent_run_id: str,
    grid: ResultGrid,
    scratch: Path,
) -> int:
    space = prepared.space
    best = best_trial(client, prepared, parent_run_id, grid, scratch)
    exp_id = experiment_id(client, prepared.experiment, create=False)
    rows = leaderboard(client, exp_id, parent_run_id, space.metric, space.mode)
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts(rows).items()))
    print(f"\n== {prepared.experiment}: {len(rows)} trials ({tally}) ==\n{format_table(rows, space.metric)}")
    if best is None:
        retrying(lambda: client.set_terminated(parent_run_id, "FAILED"))
        raise TrackingError(f"every trial of '{prepared.experiment}' failed; see the errors above and in mlflow ui")
    publish_winner(client, prepared, options, parent_run_id, best)
    return 0
