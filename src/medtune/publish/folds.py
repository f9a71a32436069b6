"""After a cross-validated search: the winner's K fold models on the test split, alone and as an ensemble.

Recorded on the launch's parent run (``analyze.py`` reads these names):

* ``test/*``: the fold ensemble (mean of the K models' probabilities, ``medtune.engine.ensemble``), the
  model that is logged and registered (its champion candidate is the ensemble);
  ``test_fold{k}/*``: each fold model alone; for single-label classifiers ``test_seeds/*``: the
  ensemble's 95% interval over the test images (``publish.evaluation.log_seed_scores``, one model);
* ``cv/fold{k}/<val metric>``, ``cv/mean/<val metric>``, ``cv/sd/<val metric>``: the winner's
  held-out fold scores at its selected round (what the search ranked it by);
* ``test_predictions.npz``: the ensemble's per-image test predictions, plus ``probs_folds`` [K, N, C]
  when the task has probabilities; ``oof_predictions.npz``: every train+val image predicted by the
  fold model that held it out (``fold``, ``image_ids`` and the task's arrays);
* for segmenters, ``fold_models.json``: each fold model's URI and held-out image ids, from which
  masked tasks draw out-of-fold masks (``medtune.engine.segmenter_masks``).

The test score rests on the ensemble: a launch with ``cv`` does not retrain with more seeds
(``repeats``); the folds already show how much the score moves between trainings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader

from medtune.data.cache import load_cache
from medtune.data.folds import FoldPlan
from medtune.engine.build import task_spec
from medtune.engine.crossval import FOLD_FILE, PREFIX, fold_data
from medtune.engine.ensemble import ensemble_system
from medtune.engine.evaluate import test_metrics, test_predictions
from medtune.engine.recipe import Recipe
from medtune.publish.evaluation import (
    log_cam_overlays,
    log_predictions,
    log_seed_scores,
    log_winner,
    saliency_ceiling,
)
from medtune.publish.single import BestTrial, Lineage, Published, log_model, model_facts, register
from medtune.serving.model import ModelFacts
from medtune.tasks.base import BaseTask
from medtune.tracking.store import retrying


def publish_folds(
    client: MlflowClient,
    *,
    parent_run_id: str,
    recipe: Recipe,
    plan: FoldPlan,
    best: BestTrial,
    register_as: str | None = None,
    version_tags: dict[str, str] | None = None,
    lineage: Lineage = Lineage(),
) -> Published:
    """Evaluate the cross-validated winner (``best.checkpoint_file``: its folder of fold files); record it.

    ``recipe`` is how the search trained ``best`` (caches ``pool`` and ``test`` at its image size), ``plan`` its folds.
    """
    folds = plan.folds
    members = [recipe.load(best.checkpoint_file / FOLD_FILE.format(k=k)) for k in range(folds)]
    test: dict[str, float] = {}
    fold_probs = []
    for k, member in enumerate(members):
        scores = test_metrics(member, recipe.config, caches=recipe.caches, pred_masks=recipe.pred_masks)
        test.update({f"test_fold{k}/{key.split('/', 1)[1]}": value for key, value in scores.items()})
        arrays = test_predictions(
            member, recipe.config, caches=recipe.caches, pred_masks=recipe.pred_masks, max_overlays=0
        )
        fold_probs.append(arrays.get("probs"))
    ensemble = ensemble_system(recipe.system(), members)
    test.update(test_metrics(ensemble, recipe.config, caches=recipe.caches, pred_masks=recipe.pred_masks))
    arrays = test_predictions(ensemble, recipe.config, caches=recipe.caches, pred_masks=recipe.pred_masks)
    if all(p is not None for p in fold_probs):
        arrays["probs_folds"] = np.stack(fold_probs).astype(np.float32)
    test.update(saliency_ceiling(client, parent_run_id, arrays))
    log_predictions(client, parent_run_id, arrays)
    _log_npz(client, parent_run_id, out_of_fold(recipe, plan, members), "oof_predictions.npz")
    if ensemble.has_cam:
        log_cam_overlays(client, parent_run_id, arrays)
    cv = fold_scores(best.metrics or {})
    retrying(lambda: client.log_param(parent_run_id, "repeats", 1))
    scores = None
    if task_spec(recipe.task).single_label:  # the ensemble's interval over the test images (one model, no seeds)
        scores = log_seed_scores(client, parent_run_id, arrays["labels"], arrays["probs"][None])
    log_winner(client, parent_run_id, best, recipe.metric, {**test, **cv}, test)
    size = int(recipe.config["data.image_size"])
    facts = model_facts(recipe.task, recipe.config, ensemble, lineage)
    images = load_cache(recipe.caches["test"])["images"]
    info = log_model(parent_run_id, ensemble, facts, images)
    if register_as is None:
        return Published(test, info.model_uri, seeds=scores, facts=facts)
    if task_spec(recipe.task).model_kind == "segmentation":  # masked tasks draw out-of-fold masks from these
        _log_fold_models(client, parent_run_id, plan, members, facts, images)
    tags = {
        "val_score": repr(best.val_score),
        "metric": recipe.metric,
        "image_size": str(size),
        "run_id": best.run_id,
        "cv_folds": str(folds),
        "cv_folds_digest": plan.digest,
        "selection": f"{folds}-fold cross-validation",
        **(version_tags or {}),
    }
    version, promoted = register(client, parent_run_id, register_as, info, tags, best, recipe.mode)
    return Published(test, info.model_uri, f"{register_as}/{version}", promoted, scores, facts)


def fold_scores(reported: dict) -> dict[str, float]:
    """``cv/fold{k}/*`` and ``cv/sd/*`` of the selected round, and ``cv/mean/*`` (the round's fold means)."""
    out = {k: float(v) for k, v in reported.items() if k.startswith(PREFIX) and isinstance(v, (int, float))}
    names = {key.split("/", 2)[2] for key in out if key.startswith(f"{PREFIX}sd/")}
    out.update({f"{PREFIX}mean/{name}": float(reported[name]) for name in names if name in reported})
    return out


def out_of_fold(recipe: Recipe, plan: FoldPlan, members: list[BaseTask]) -> dict[str, np.ndarray]:
    """Every pooled image predicted by the fold model that held it out, with its ``fold`` and ``image_ids``."""
    parts: list[dict[str, np.ndarray]] = []
    for k, member in enumerate(members):
        data = fold_data(recipe, plan, k)
        arrays = member.predictions(DataLoader(data.dataset("val"), batch_size=data.batch_size), max_overlays=0)
        ids = plan.val_image_ids(k)
        parts.append({**arrays, "image_ids": np.array(ids), "fold": np.full(len(ids), k)})
    joined = {}
    for key, value in parts[0].items():
        joined[key] = value if value.ndim == 0 else np.concatenate([p[key] for p in parts])
    return joined


def _log_npz(client: MlflowClient, run_id: str, arrays: dict[str, np.ndarray], name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        np.savez_compressed(path, **arrays)
        retrying(lambda: client.log_artifact(run_id, str(path)))


def _log_fold_models(
    client: MlflowClient,
    run_id: str,
    plan: FoldPlan,
    members: list[BaseTask],
    facts: ModelFacts,
    images: torch.Tensor,
) -> None:
    """Each fold segmenter as a logged model, and ``fold_models.json`` naming it and the images it held out."""
    folds = []
    for k, member in enumerate(members):
        info = log_model(run_id, member, facts, images, name=f"fold{k}")
        folds.append({"fold": k, "model_uri": info.model_uri, "val_image_ids": plan.val_image_ids(k)})
    retrying(lambda: client.log_dict(run_id, {"digest": plan.digest, "folds": folds}, "fold_models.json"))
