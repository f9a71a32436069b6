"""Multi-label classification and class imbalance: metrics, BCE, training-split weights, targets, crop mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from medtune.data.cache import build_cache
from medtune.data.coco import resolve_dataset
from medtune.data.datasets import CachedDataset, build_transform, crop_box
from medtune.data.tools.synth import generate
from medtune.engine import evaluate
from medtune.engine.build import build_datamodule, build_system
from medtune.losses import ML_LOSSES, MultiLabelBCELoss, balanced_class_weights, balanced_pos_weight
from medtune.tasks.multilabel import MultiLabelTask, multilabel_scores

K = 5  # 3 lesion classes + the ruler and ink_mark findings of synth --multilabel
CONFIG = {"data.image_size": 32, "data.batch_size": 4, "model.name": "resnet18", "loss.name": "bce"}


@pytest.fixture(scope="module")
def ml(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A multi-label synthetic set (24 images at 32 px) and its caches."""
    root = tmp_path_factory.mktemp("ml")
    generate(root / "data", n=24, size=32, seed=0, multilabel=True)
    dataset = resolve_dataset(root / "data", cache_root=root)
    caches = {s: str(build_cache(dataset, s, 32, root)) for s in ("train", "val", "test")}
    return {"root": root / "data", "caches": caches, "num_classes": dataset.num_classes}


def coco_label_sets(path: Path) -> list[set[int]]:
    """Category indices (id - 1) of each image, read straight from the COCO file."""
    coco = json.loads(path.read_text())
    found: dict[int, set[int]] = {img["id"]: set() for img in coco["images"]}
    for ann in coco["annotations"]:
        found[ann["image_id"]].add(ann["category_id"] - 1)
    return [found[img["id"]] for img in coco["images"]]


@pytest.mark.filterwarnings("ignore:No positive samples")  # label 2, on purpose
def test_scores_on_a_hand_checked_batch() -> None:
    metrics = MultiLabelTask(nn.Identity(), MultiLabelBCELoss(), num_classes=3).metrics["val"]
    # Label 0: truth 1 1 0 0, predicted (>= 0.5) 1 0 1 0: F1 2/4, kappa 0 (chance), AUROC 3/4 pairs.
    # Label 1: truth 1 0 0 0, predicted 1 0 0 0: all three are 1. Label 2: no positive image.
    probs = torch.tensor([[0.9, 0.8, 0.7], [0.4, 0.3, 0.2], [0.6, 0.2, 0.1], [0.1, 0.1, 0.6]])
    targets = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    metrics.update(probs, targets)
    values = metrics.compute()
    scores = multilabel_scores(values["auroc"], values["stats"])
    # Label 2 cannot be scored (AUROC, kappa undefined), so it is left out of every average.
    assert {k: round(float(v), 4) for k, v in scores.items()} == {
        "auroc": 0.875,
        "f1_macro": 0.75,
        "kappa": 0.5,
        "challenge_score": round((0.875 + 0.75 + 0.5) / 3, 4),
        "auroc_0": 0.75,
        "auroc_1": 1.0,
    }


def test_bce_and_its_pos_weight() -> None:
    logits, target = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    # p = 0.5: each label costs ln 2.
    assert MultiLabelBCELoss()(logits, target).item() == pytest.approx(math.log(2))
    # pos_weight 3 on label 0 triples its (positive) term: (3 ln2 + ln2) / 2.
    assert MultiLabelBCELoss(pos_weight=[3.0, 1.0])(logits, target).item() == pytest.approx(2 * math.log(2))


@pytest.mark.parametrize("name", sorted(ML_LOSSES))
def test_multilabel_loss_contract(name: str) -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    loss = ML_LOSSES[name]()(logits, torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]))
    loss.backward()
    # A finite scalar whose gradient reaches every logit finitely.
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_balanced_weights_on_hand_counts() -> None:
    labels = [
        torch.tensor(s, dtype=torch.long) for s in ([0, 1], [0], [0], [])
    ]  # label 0 on 3 images, label 1 on 1, label 2 on none
    # n / (K * count): 4 labels counted over 3 classes; a class with no image gets 1.
    assert balanced_class_weights(labels, 3) == pytest.approx([4 / 9, 4 / 3, 1.0])
    # negatives / positives over the 4 images: 1/3, 3/1, and 1 for the label never present.
    assert balanced_pos_weight(labels, 3) == pytest.approx([1 / 3, 3.0, 1.0])


def test_balanced_loss_weights_come_from_the_training_split(ml: dict) -> None:
    sets = coco_label_sets(ml["root"] / "train.json")
    pos = np.array([sum(k in s for s in sets) for k in range(K)])
    config = {**CONFIG, "loss.pos_weight": "balanced"}
    system = build_system(
        "multilabel_classification", config, num_classes=K, max_epochs=1, train_cache=ml["caches"]["train"]
    )
    # pos_weight = negatives / positives per label, counted in train.json.
    assert system.loss.pos_weight.tolist() == pytest.approx(((len(sets) - pos) / pos).tolist())
    cls = {**CONFIG, "loss.name": "ce", "loss.class_weights": "balanced"}
    system = build_system("classification", cls, num_classes=K, max_epochs=1, train_cache=ml["caches"]["train"])
    # class_weights = n / (K * count_k), n = labels counted.
    assert system.loss.class_weights.tolist() == pytest.approx((pos.sum() / (K * pos)).tolist())
    # "none" is no weighting; "balanced" without the training split says what is missing.
    assert (
        build_system(
            "multilabel_classification", {**CONFIG, "loss.pos_weight": "none"}, num_classes=K, max_epochs=1
        ).loss.pos_weight
        is None
    )
    with pytest.raises(ValueError, match="loss.pos_weight: 'balanced' needs the image labels of the training split"):
        build_system("multilabel_classification", config, num_classes=K, max_epochs=1)


def test_items_carry_multi_hot_targets(ml: dict) -> None:
    dataset = build_datamodule(CONFIG, caches=ml["caches"]).dataset("train")
    sets = coco_label_sets(ml["root"] / "train.json")
    for i in range(len(dataset)):
        item = dataset[i]
        # The data module inferred K from the caches; targets mark exactly the image's categories.
        assert item["targets"].shape == (K,) and set(item["targets"].nonzero().flatten().tolist()) == sets[i]
        # ``label`` stays the single-label contract: the class, or -1 for a set of several.
        assert int(item["label"]) == (min(sets[i]) if len(sets[i]) == 1 else -1)


@pytest.mark.e2e
def test_one_training_step_with_balanced_weights_and_sampler(ml: dict) -> None:
    config = {**CONFIG, "loss.pos_weight": "balanced", "data.sampler": "least_sampled_first"}
    system = build_system(
        "multilabel_classification", config, num_classes=K, max_epochs=1, train_cache=ml["caches"]["train"]
    )
    data = build_datamodule(config, caches=ml["caches"], num_classes=K)
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(system, datamodule=data)
    # The objective of the multi-label spaces is logged, and the loss is finite.
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and "val/challenge_score" in trainer.callback_metrics
    preds = evaluate.test_predictions(system, config, caches=ml["caches"])
    n_test = len(coco_label_sets(ml["root"] / "test.json"))
    # Test predictions: multi-hot labels and one sigmoid probability per label.
    assert preds["labels"].shape == preds["probs"].shape == (n_test, K) and set(np.unique(preds["labels"])) <= {0, 1}
    assert ((preds["probs"] >= 0) & (preds["probs"] <= 1)).all()


def test_crop_box_squares_the_box_with_its_margin() -> None:
    region = torch.zeros(1, 16, 16, dtype=torch.bool)
    region[0, 4:8, 6:8] = True  # rows 4-7, columns 6-7: a 4 x 2 box
    # Side: longer side 4 plus 25% on each side = 6; centred on (6, 7): top 3, left 4.
    assert crop_box(region, 0.25) == (3, 4, 6)
    # Near the border the square is shifted back inside; a huge margin is capped at the image.
    region[:] = False
    region[0, 0:2, 14:16] = True
    assert crop_box(region, 0.5) == (0, 12, 4) and crop_box(region, 10.0) == (0, 0, 16)
    assert crop_box(torch.zeros(1, 16, 16, dtype=torch.bool), 0.1) is None


def test_crop_mode_zooms_on_the_predicted_lesion(tmp_path: Path) -> None:
    masks = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    masks[:, 0, 4:8, 4:8] = 1  # a 4 x 4 lesion in both images: 1/16 of the image
    cache, pred = tmp_path / "cache.pt", tmp_path / "pred.pt"
    torch.save(
        {
            "images": torch.full((2, 3, 16, 16), 100, dtype=torch.uint8),
            "masks": masks,
            "labels": [torch.tensor([0]), torch.tensor([1])],
            "image_ids": torch.arange(2),
        },
        cache,
    )
    probs = masks * 255
    probs[1] = 0  # the segmenter found nothing in image 1
    torch.save({"probs": probs}, pred)
    dataset = CachedDataset(
        str(cache), build_transform(0.0, train=False), pred_masks=str(pred), mask_mode="crop", crop_margin=0.25
    )
    # Image 0 is cropped to the 6 x 6 square around the lesion and resized back to 16 px: the lesion
    # now covers (4/6)^2 of the image (the ground-truth mask follows the crop).
    assert dataset[0]["mask"].mean().item() == pytest.approx((4 / 6) ** 2, abs=0.03)
    # The crop is of the hard-masked image: the margin around the 4 x 4 lesion is black (normalised 0).
    black = CachedDataset(str(cache), build_transform(0.0, train=False))
    black.images = torch.zeros_like(black.images)
    assert torch.equal(dataset[0]["image"][:, 0, 0], black[0]["image"][:, 0, 0])
    assert not torch.equal(dataset[0]["image"][:, 8, 8], black[0]["image"][:, 8, 8])  # the lesion's centre
    # Image 1 (empty prediction) is all black, not the whole image; its mask stays whole (uncropped).
    assert dataset[1]["mask"].mean().item() == pytest.approx(1 / 16)
    assert torch.equal(dataset[1]["image"], black[1]["image"])
