"""Cross-validated search: the folds, the lockstep trainer, and the shared CV launches through launch.py.

The session's shared ``segmentation`` and ``masked_cls`` launches run with ``--folds 2`` (conftest
``seg_launch``, ``masked_launch``): Ray, Optuna, ASHA, MLflow and the registry are real; this module
reads what they recorded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medtune.data import cocoio
from medtune.data.cache import build_cache
from medtune.data.coco import resolve_dataset
from medtune.data.folds import FoldPlan, plan_folds, pool_cache
from medtune.engine.crossval import train_folds
from medtune.engine.recipe import Recipe
from medtune.report.cv import read_fold_scores
from medtune.tracking.registry import champion, segmenter_name
from tests.helpers import Workspace, runs_of
from trainables import launch


def _copy_dataset(synth_dir: Path, out: Path) -> Path:
    shutil.copytree(synth_dir, out)
    return out


def test_folds_are_stratified_deterministic_and_keep_duplicates_together(synth_dir: Path, tmp_path: Path) -> None:
    data = _copy_dataset(synth_dir, tmp_path / "data")
    # Plant a copy of a train image as a new val image: a near-duplicate pair across the pool.
    train, val = (cocoio.load_coco(data / f"{s}.json") for s in ("train", "val"))
    images_dir = cocoio.images_dir_for(data / "train.json", train)
    original = train["images"][0]
    copy_name = "copy_of_" + Path(original["file_name"]).name
    shutil.copy(images_dir / original["file_name"], images_dir / copy_name)
    new_id = 1 + max(
        img["id"] for img in train["images"] + val["images"] + cocoio.load_coco(data / "test.json")["images"]
    )
    val["images"].append({**original, "id": new_id, "file_name": copy_name})
    anns = [a for a in train["annotations"] if a["image_id"] == original["id"]]
    next_ann = 1 + max(a["id"] for a in train["annotations"] + val["annotations"])
    val["annotations"] += [{**a, "id": next_ann + i, "image_id": new_id} for i, a in enumerate(anns)]
    cocoio.write_json_atomic(data / "val.json", val)

    dataset = resolve_dataset(data, cache_root=tmp_path / "cache")
    plan = plan_folds(dataset, 3, seed=0, cache_root=tmp_path / "cache")
    fold = dict(zip(plan.pool_ids, plan.fold_of))
    # The copy is held out by the same fold as its original: no fold trains on one and scores the other.
    assert fold[original["id"]] == fold[new_id] and plan.duplicate_groups >= 1
    # Every pooled image is held out exactly once, every fold holds out every class, sizes within 25%.
    assert sorted(plan.pool_ids) == sorted(img["id"] for img in train["images"] + val["images"])
    labels = {a["image_id"]: a["category_id"] for a in train["annotations"] + val["annotations"]}
    sizes = [len(plan.val_indices(k)) for k in range(3)]
    assert max(sizes) <= 1.25 * min(sizes)
    for k in range(3):
        assert {labels[i] for i in plan.val_image_ids(k)} == set(labels.values())
        assert set(plan.train_indices(k)).isdisjoint(plan.val_indices(k))
    # Same dataset and seed: the same folds (read back from the cache), another seed: others.
    assert plan_folds(dataset, 3, seed=0, cache_root=tmp_path / "other_cache").digest == plan.digest
    assert plan_folds(dataset, 3, seed=1, cache_root=tmp_path / "cache").digest != plan.digest


class Kill(Exception):
    """Stands for the process dying right after a round was reported."""


@pytest.mark.e2e
def test_lockstep_rounds_resume_exactly(synth_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    dataset = resolve_dataset(synth_dir, cache_root=root)
    plan = plan_folds(dataset, 2, seed=0, cache_root=root)
    caches = {"pool": str(pool_cache(dataset, 32, root)), "test": str(build_cache(dataset, "test", 32, root))}
    config = {
        "data.image_size": 32,
        "data.batch_size": 8,
        "model.name": "unet",
        "model.width": 4,
        "model.depth": 2,
        "loss.name": "bce_dice",
        "train.lr": 3e-3,
    }
    recipe = Recipe("segmentation", config, caches, None, dataset.num_classes, max_epochs=2, seed=0)
    whole: list[dict] = []
    (tmp_path / "a").mkdir()
    train_folds(recipe, plan, tmp_path / "a", lambda m, done, folder: whole.append(m))

    resumed: list[dict] = []

    def die_after_first(metrics: dict, done: bool, folder: Path) -> None:
        resumed.append(metrics)
        if len(resumed) == 1:
            raise Kill

    (tmp_path / "b").mkdir()
    with pytest.raises(Kill):
        train_folds(recipe, plan, tmp_path / "b", die_after_first)
    train_folds(recipe, plan, tmp_path / "b", lambda m, done, folder: resumed.append(m))
    # One report per round, each with the fold means, every fold's score and their sd ...
    assert len(whole) == 2 and {"val/iou", "cv/fold0/val/iou", "cv/fold1/val/iou", "cv/sd/val/iou"} <= set(whole[0])
    assert whole[0]["val/iou"] == pytest.approx((whole[0]["cv/fold0/val/iou"] + whole[0]["cv/fold1/val/iou"]) / 2)
    # ... and a round resumed from the folder trains exactly as the uninterrupted run did.
    assert len(resumed) == 2
    for a, b in zip(whole, resumed):
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-5)


def _artifact(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(tmp_path)))


@pytest.mark.slow
def test_cv_launches_record_folds_oof_and_ensemble(
    shared_workspace: Workspace,
    seg_launch: subprocess.CompletedProcess,
    masked_launch: subprocess.CompletedProcess,
    synth_dir: Path,
    tmp_path: Path,
) -> None:
    uri = shared_workspace.tracking_uri  # registry too: an earlier in-process test may set MLflow's global one
    client = MlflowClient(uri, registry_uri=uri)
    (seg,), seg_trials = runs_of(client, "segmentation")
    folds = json.loads(_artifact(client, seg.info.run_id, "folds.json", tmp_path).read_text())
    assert folds["folds"] == 2 and seg.data.params["cv_folds"] == "2"
    # Every trial run holds each fold's validation metrics per epoch and their sd; the launch the winner's.
    for trial in seg_trials:
        assert {"cv/fold0/val/iou", "cv/fold1/val/iou", "cv/sd/val/iou", "val/iou"} <= set(trial.data.metrics)
        history = client.get_metric_history(trial.info.run_id, "cv/fold1/val/iou")
        assert len(history) == int(trial.data.tags["epochs_run"])
    metrics = seg.data.metrics
    assert metrics["cv/mean/val/iou"] == pytest.approx((metrics["cv/fold0/val/iou"] + metrics["cv/fold1/val/iou"]) / 2)
    # The ensemble's test metrics and each fold model's, and the out-of-fold predictions of every pooled image.
    assert {"test/iou", "test_fold0/iou", "test_fold1/iou"} <= set(metrics)
    oof = np.load(_artifact(client, seg.info.run_id, "oof_predictions.npz", tmp_path))
    held_out = {i: k for k, ids in enumerate(folds["val_image_ids"]) for i in ids}
    assert sorted(oof["image_ids"].tolist()) == sorted(held_out) and len(held_out) == folds["pool_size"]
    assert all(held_out[int(i)] == int(k) for i, k in zip(oof["image_ids"], oof["fold"]))
    # The registered champion is the fold ensemble, tagged as cross-validated.
    dataset = resolve_dataset(synth_dir, cache_root=shared_workspace.root / "cache")
    version = champion(client, segmenter_name(dataset.name, dataset.fingerprint))
    assert version.tags["cv_folds"] == "2" and version.tags["cv_folds_digest"] == folds["digest"]

    (masked,), _ = runs_of(client, "masked_cls")
    assert masked.data.tags["segmenter_masks"] == "out-of-fold"
    models = json.loads(_artifact(client, seg.info.run_id, "fold_models.json", tmp_path).read_text())["folds"]
    trained_on = {f["fold"]: set(folds_pool(folds)) - set(f["val_image_ids"]) for f in models}
    sources = json.loads(_artifact(client, masked.info.run_id, "mask_sources.json", tmp_path).read_text())["splits"]
    for split in ("train", "val"):
        entries = list(zip(sources[split]["image_ids"], sources[split]["sources"]))
        # Every train/val mask comes from a fold model, and never from one that trained on that image.
        assert entries and all(source >= 0 for _, source in entries)
        assert not [i for i, source in entries if i in trained_on[source]]
    # Test images get the registered model's (the ensemble's) masks.
    assert set(sources["test"]["sources"]) == {-1}
    # analyze.py reads the launch's fold scores as the launch wrote them (the contract between the two).
    scores = read_fold_scores(client, "masked_cls", client.get_run(masked.info.run_id))
    assert not isinstance(scores, str) and scores.folds == 2 and scores.sizes.pool == folds["pool_size"]
    assert scores.scores["val/balanced_acc"].mean() == pytest.approx(masked.data.metrics["cv/mean/val/balanced_acc"])


def folds_pool(folds: dict) -> list[int]:
    return [i for ids in folds["val_image_ids"] for i in ids]


@pytest.mark.parametrize("folds", ["1", "-2"])
def test_folds_flag_is_validated(folds: str, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--space", "whole_cls", "--smoke", "--folds", folds, "--data", str(synth_dir), "--tracking-uri", store]
    assert launch.main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    # One line naming the flag and what it expects; nothing written to MLflow.
    assert err.count("\n") == 1 and "--folds" in err and ">= 2" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_fold_plan_json_is_what_analyze_reads() -> None:
    plan = FoldPlan(folds=2, seed=3, pool_ids=(5, 6, 7, 8), fold_of=(0, 1, 1, 0))
    out = plan.as_json()
    assert out["val_image_ids"] == [[5, 8], [6, 7]] and out["pool_size"] == 4 and out["digest"] == plan.digest
    assert json.loads(json.dumps(out)) == out  # plain JSON
