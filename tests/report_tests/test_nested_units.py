"""Nested cross-validation's pieces without a launch: outer folds, pooling, pooled scores, agreement, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medtune.data import duplicates
from medtune.data.coco import SPLITS, resolve_dataset
from medtune.data.outer import INNER_VAL, outer_dataset, plan_outer
from medtune.publish.nested import OuterFold, agreement, pool, pooled_scores
from medtune.report import nested as report_nested
from medtune.scoring.bootstrap import balanced_accuracy
from medtune.tracking.store import LAUNCH_TAG, TrackingError


def _ids(path: Path) -> set[int]:
    return {img["id"] for img in json.loads(path.read_text())["images"]}


def test_outer_folds_hold_out_every_image_once_and_their_datasets_never_train_on_it(
    synth_dir: Path, tmp_path: Path
) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    everything = set().union(*(_ids(dataset.coco_files[s]) for s in SPLITS))
    plan = plan_outer(dataset, 3, seed=0, cache_root=tmp_path, near=duplicates.Setting())
    assert sorted(plan.pool_ids) == sorted(everything) and sorted(plan.sizes()) == [16, 16, 16]
    held = []
    for k in range(3):
        folder = outer_dataset(dataset, plan, k, cache_root=tmp_path, seed=0)
        fold = resolve_dataset(folder, cache_root=tmp_path)  # an ordinary dataset: its images resolve
        test, train, val = (_ids(fold.coco_files[s]) for s in ("test", "train", "val"))
        assert test == set(plan.val_image_ids(k))
        assert not test & (train | val) and train | val | test == everything
        assert abs(len(val) - INNER_VAL * (len(train) + len(val))) <= 2
        held += sorted(test)
        assert fold.name == f"{dataset.name}-outer{k}of3"
    assert sorted(held) == sorted(everything)
    # Written once: the same folder (and fingerprint) for the next launch with the same plan.
    again = resolve_dataset(outer_dataset(dataset, plan, 0, cache_root=tmp_path, seed=0), cache_root=tmp_path)
    assert (
        again.fingerprint
        == resolve_dataset(folder.parent / f"{dataset.name}-outer0of3", cache_root=tmp_path).fingerprint
    )


def test_outer_folds_refuse_fewer_than_two(synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    with pytest.raises(Exception, match="--outer-folds: expected an integer >= 2, got 1"):
        plan_outer(dataset, 1, seed=0, cache_root=tmp_path, near=duplicates.Setting())


def _fold(k: int, ids: list[int], labels: list[int], probs: np.ndarray, config: dict) -> OuterFold:
    arrays = {
        "report_kind": np.array("classification"),
        "image_ids": np.array(ids),
        "labels": np.array(labels),
        "probs": probs,
        "images": np.zeros((1, 3, 4, 4)),  # an overlay of the first image only: not pooled
    }
    return OuterFold(k, f"run{k}", {"test/balanced_acc": 0.5}, config, arrays)


def test_pool_concatenates_the_folds_per_image_arrays_and_the_pooled_score_is_over_all_images() -> None:
    rng = np.random.default_rng(0)
    p0, p1 = rng.dirichlet([1, 1], 6), rng.dirichlet([1, 1], 4)
    folds = [
        _fold(0, [5, 1, 9, 3, 7, 11], [0, 1, 0, 1, 0, 1], p0, {}),
        _fold(1, [2, 4, 6, 8], [1, 0, 1, 0], p1, {}),
    ]
    arrays = pool(folds)
    assert arrays["image_ids"].tolist() == [5, 1, 9, 3, 7, 11, 2, 4, 6, 8]
    assert arrays["outer_fold"].tolist() == [0] * 6 + [1] * 4
    assert np.array_equal(arrays["probs"], np.concatenate([p0, p1])) and "images" not in arrays
    scores = pooled_scores(arrays)
    expected = balanced_accuracy(arrays["labels"], arrays["probs"])
    assert scores["balanced_acc"].value == pytest.approx(expected)
    assert scores["balanced_acc"].low <= expected <= scores["balanced_acc"].high


def test_pooled_segmentation_score_is_the_mean_image_iou_with_an_interval() -> None:
    iou = np.array([0.2, 0.4, 0.9, 1.0])
    arrays = {"report_kind": np.array("segmentation"), "iou": iou, "image_ids": np.arange(4)}
    score = pooled_scores(arrays)["image_iou"]
    assert score.value == pytest.approx(0.625) and 0.2 <= score.low < 0.625 < score.high <= 1.0


def test_agreement_tells_choices_apart_from_sampled_numbers() -> None:
    folds = [
        _fold(0, [1], [0], np.ones((1, 2)) / 2, {"model.name": "resnet18", "train.lr": "0.001"}),
        _fold(1, [2], [0], np.ones((1, 2)) / 2, {"model.name": "resnet18", "train.lr": "0.004"}),
    ]
    kinds = {"model.name": "choice", "train.lr": "loguniform"}
    lines = agreement(folds, kinds)
    assert lines[0] == "The 2 outer folds' winners agree on every choice; numeric keys vary as listed."
    assert "`model.name`: resnet18 in all 2 outer folds" in lines
    assert "`train.lr`: 0.001 to 0.004 over 2 folds, a factor 4 apart" in lines
    folds[1] = _fold(1, [2], [0], np.ones((1, 2)) / 2, {"model.name": "mobilenet_v3_small", "train.lr": "0.004"})
    lines = agreement(folds, kinds)
    assert lines[0].startswith("The 2 outer folds' winners differ in model.name:")
    assert "`model.name`: resnet18 (1), mobilenet_v3_small (1) of 2 folds" in lines


def test_compare_refuses_a_nested_launch_beside_an_ordinary_one_or_other_outer_folds(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e")
    tags = {LAUNCH_TAG: "true", "nested_outer_folds": "2"}
    a = client.get_run(client.create_run(exp, tags={**tags, "outer_folds_digest": "aaaa"}).info.run_id)
    b = client.get_run(client.create_run(exp, tags={**tags, "outer_folds_digest": "bbbb"}).info.run_id)
    plain = client.get_run(client.create_run(exp, tags={LAUNCH_TAG: "true"}).info.run_id)
    with pytest.raises(TrackingError, match="nested launches used different outer folds"):
        report_nested.check_alike(client, [("a", a), ("b", b)])
    with pytest.raises(TrackingError, match="a is nested .* and p not"):
        report_nested.check_alike(client, [("a", a), ("p", plain)])
    with pytest.raises(TrackingError, match="the nested launch of 'a' has not finished its outer folds"):
        report_nested.check_alike(client, [("a", a), ("a2", a)])
    report_nested.check_alike(client, [("p", plain), ("q", plain)])  # ordinary launches: nothing to refuse here
