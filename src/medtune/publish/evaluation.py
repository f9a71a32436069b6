"""The winner's test evaluation as recorded on MLflow runs: scores, predictions, overlays and the seed interval.

``medtune.publish.single`` (one model) and ``medtune.publish.folds`` (the fold ensemble) test their
winner and record it here; logging the model and registering it stay in ``medtune.publish.single``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from medtune.engine.build import task_spec
from medtune.engine.recipe import Recipe
from medtune.engine.repeats import seed_predictions
from medtune.scoring.bootstrap import SeedScore, seed_scores
from medtune.tracking.store import retrying

if TYPE_CHECKING:  # single.py imports this module: its dataclass is only named here, in annotations
    from medtune.publish.single import BestTrial


def log_winner(
    client: MlflowClient, run_id: str, best: BestTrial, metric: str, shown: dict[str, float], test: dict[str, float]
) -> None:
    """The winner's test scores on the parent run (``shown``) and on its own trial run (``test``), and which it is."""
    retrying(lambda: client.log_batch(run_id, metrics=[metric_entry(k, v) for k, v in shown.items()]))
    retrying(lambda: client.log_metric(run_id, f"best_{metric}", best.val_score))
    retrying(lambda: client.set_tag(run_id, "best_run_id", best.run_id))
    retrying(lambda: client.set_tag(best.run_id, "best", "true"))
    retrying(lambda: client.log_batch(best.run_id, metrics=[metric_entry(k, v) for k, v in test.items()]))


def over_seeds(
    client: MlflowClient,
    run_id: str,
    recipe: Recipe,
    arrays: dict[str, np.ndarray],
    *,
    repeats: int,
    full: bool = True,
) -> dict[str, SeedScore] | None:
    """The winner's test scores over ``repeats`` seeds, for a single-label classifier (else None).

    With ``repeats`` > 1 adds ``probs_seeds`` [R, N, K] and ``seeds`` [R] to ``arrays`` (the retrains
    of ``medtune.engine.repeats``; seed 0 is the winner when it ran its ``full`` budget, else retrained too,
    said by the tag ``seed0``). Logs the param ``repeats`` (the seeds the test score rests on: 1 for other
    tasks, which are not retrained) and, for a single-label classifier, ``test_seeds/*``
    (``log_seed_scores``); with one seed that is the bootstrap over test images alone.
    """
    single = task_spec(recipe.task).single_label
    retrain = repeats > 1 and single
    retrying(lambda: client.log_param(run_id, "repeats", repeats if retrain else 1))
    if not single:
        return None
    if retrain:
        seed0 = "search winner" if full else "retrained: ASHA stopped the winner early"
        retrying(lambda: client.set_tag(run_id, "seed0", seed0))
        arrays.update(seed_predictions(recipe, arrays["probs"] if full else None, repeats=repeats))
    return log_seed_scores(client, run_id, arrays["labels"], arrays.get("probs_seeds", arrays["probs"][None]))


def log_seed_scores(
    client: MlflowClient, run_id: str, labels: np.ndarray, probs_seeds: np.ndarray
) -> dict[str, SeedScore]:
    """``test_seeds/<metric>_{mean,sd,low,high}`` of a single-label classifier's test probabilities [R, N, K].

    The interval every reader of the run quotes (the terminal, the model card): the two-level
    bootstrap of ``medtune.scoring.bootstrap`` over the N test images and the R seeds.
    """
    scores = seed_scores(labels.astype(int), probs_seeds)
    metrics = [metric_entry(key, value) for name, score in scores.items() for key, value in score.metrics(name).items()]
    retrying(lambda: client.log_batch(run_id, metrics=metrics))
    return scores


def saliency_ceiling(client: MlflowClient, run_id: str, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """``test/saliency_iou_ceiling`` (mean over test images with a lesion) and the ``cam_grid`` tag.

    Logged beside ``test/saliency_iou`` so a reader sees how far from what the CAM's resolution
    allows the model's saliency is (``medtune.saliency.cam_ceiling``).
    """
    if "saliency_ceiling" not in arrays or np.isnan(arrays["saliency_ceiling"]).all():
        return {}
    h, w = (int(v) for v in arrays["cam_grid"][0])
    retrying(lambda: client.set_tag(run_id, "cam_grid", f"{h}x{w}"))
    return {"test/saliency_iou_ceiling": float(np.nanmean(arrays["saliency_ceiling"]))}


def log_predictions(client: MlflowClient, run_id: str, arrays: dict[str, np.ndarray]) -> None:
    """Log ``test_predictions.npz`` and, for a single-label classifier, the test confusion matrix."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "test_predictions.npz"
        np.savez_compressed(path, **arrays)
        retrying(lambda: client.log_artifact(run_id, str(path)))
    if str(arrays["report_kind"]) == "classification":  # rows = truth
        k = arrays["probs"].shape[1]
        matrix = np.zeros((k, k), dtype=int)
        np.add.at(matrix, (arrays["labels"].astype(int), arrays["probs"].argmax(1)), 1)
        table = {"rows": "true class", "columns": "predicted class", "matrix": matrix.tolist()}
        retrying(lambda: client.log_dict(run_id, table, "confusion_matrix.json"))


def log_cam_overlays(client: MlflowClient, run_id: str, arrays: dict[str, np.ndarray]) -> None:
    """HiResCAM overlays of the test images saved in the predictions (what the classifier looks at)."""
    from medtune.overlays import save_cam_overlays

    with tempfile.TemporaryDirectory() as folder:
        save_cam_overlays(arrays, Path(folder), n=8)
        retrying(lambda: client.log_artifacts(run_id, folder, "cam_overlays"))


def metric_entry(key: str, value: float) -> Metric:
    return Metric(key, value, int(time.time() * 1000), 0)
