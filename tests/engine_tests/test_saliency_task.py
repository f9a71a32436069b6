"""The saliency task (CEntIoU training) and the saliency_iou metric every classifier reports.

64 px caches (the synthetic images are 32 px, upscaled): at 32 px resnet18's ``layer4`` is a 1x1
map, whose min-max scaled CAM is all zero, so neither the metric nor the IoU gradient would show.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medtune.data.cache import build_cache, load_cache
from medtune.data.coco import resolve_dataset
from medtune.engine.build import build_datamodule, build_system
from medtune.engine.trainer import make_trainer
from medtune.overlays import save_cam_overlays
from medtune.saliency import CEntIoULoss
from medtune.tasks.classification import ClassificationTask

SIZE = 64
CONFIG = {
    "data.image_size": SIZE,
    "data.batch_size": 4,
    "data.augment": 0.0,
    "train.lr": 1e-3,
    "model.name": "resnet18",
    "loss.name": "ce",
}


@pytest.fixture(scope="module")
def data(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cache")
    dataset = resolve_dataset(synth_dir, cache_root=root)
    caches = {s: str(build_cache(dataset, s, SIZE, root)) for s in ("train", "val", "test")}
    empty = dict(load_cache(caches["val"]))  # the val split with every lesion mask erased
    empty["masks"] = torch.zeros_like(empty["masks"])
    torch.save(empty, root / "val-empty.pt")
    return {"caches": caches, "empty_val": str(root / "val-empty.pt"), "num_classes": dataset.num_classes}


def system(task: str, data: dict, **train: object) -> ClassificationTask:
    torch.manual_seed(0)
    config = {**CONFIG, **{f"train.{k}": v for k, v in train.items()}}
    return build_system(task, config, num_classes=data["num_classes"], max_epochs=1)


def first_batch(data: dict, split: str = "train") -> dict:
    dataset = build_datamodule(CONFIG, caches=data["caches"]).dataset(split)
    return next(iter(DataLoader(dataset, batch_size=CONFIG["data.batch_size"])))


def test_saliency_term_changes_the_loss_and_the_backbone_gradient(data: dict) -> None:
    sal = system("saliency_classification", data, ce_weight=0.5)
    batch = first_batch(data)
    loss, logits = sal.step(batch)
    ce = sal.loss(logits, batch["label"])
    _, cams = sal.cam(batch["image"], batch["label"], create_graph=True)  # the CAMs step used
    # With loss.name ce the objective is exactly CEntIoULoss of medtune.saliency, and not plain CE.
    assert torch.allclose(loss, CEntIoULoss(ce_weight=0.5)(logits, batch["label"], cams, batch["mask"]), atol=1e-6)
    assert not torch.allclose(loss, ce)
    weight = sal.model.layer1[0].conv1.weight  # far from the CAM layer (layer4) and the head
    (with_iou,) = torch.autograd.grad(loss, weight, retain_graph=True)
    (ce_only,) = torch.autograd.grad(0.5 * ce, weight)
    # The IoU term backpropagates into the backbone: the gradient is not the CE gradient alone.
    assert (with_iou - ce_only).abs().max() > 1e-3 * ce_only.abs().max()


@pytest.mark.e2e
def test_val_and_test_saliency_iou_in_a_real_trainer(data: dict) -> None:
    whole = system("classification", data)
    datamodule = build_datamodule(CONFIG, caches=data["caches"])
    trainer = make_trainer(max_epochs=1, precision="32-true", callbacks=[])
    trainer.fit(whole, datamodule=datamodule)
    val = trainer.callback_metrics["val/saliency_iou"]
    # Every synthetic image has a lesion: the metric exists, is finite and is an IoU.
    assert torch.isfinite(val) and 0.0 <= val <= 1.0
    # Trainer.test runs under torch.inference_mode (fit's validation under no_grad): both work.
    test = trainer.test(whole, datamodule=datamodule, verbose=False)[0]
    assert 0.0 <= test["test/saliency_iou"] <= 1.0


@pytest.mark.e2e
def test_batch_without_lesion_gives_no_nan_and_no_weight(data: dict) -> None:
    batch = first_batch(data)
    batch["mask"] = torch.zeros_like(batch["mask"])
    sal = system("saliency_classification", data, ce_weight=0.7)
    loss, logits = sal.step(batch)
    # No lesion in the batch: the saliency term is 0, so the loss is the weighted CE, finite.
    assert torch.isfinite(loss) and torch.allclose(loss, 0.7 * sal.loss(logits, batch["label"]))
    whole = system("classification", data).eval()
    whole.log = lambda *args, **kwargs: None  # no Trainer here
    with torch.inference_mode():
        whole.validation_step(first_batch(data, "val"), 0)
        alone = whole.saliency_iou["val"].compute()
        whole.validation_step(batch, 1)
        # The lesion-free batch contributes nothing: the average is not pulled towards 0.
        assert alone > 0 and torch.equal(whole.saliency_iou["val"].compute(), alone)


def test_split_without_lesion_logs_no_saliency_iou(data: dict) -> None:
    whole = system("classification", data)
    empty = build_datamodule(CONFIG, caches={**data["caches"], "val": data["empty_val"]})
    metrics = make_trainer(max_epochs=1, precision="32-true", callbacks=[]).validate(
        whole, datamodule=empty, verbose=False
    )[0]
    # Nothing to localise: no saliency_iou rather than NaN; the other metrics are unaffected.
    assert "val/saliency_iou" not in metrics and torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_saliency_metric_can_be_turned_off(data: dict) -> None:
    whole = system("classification", data, saliency_metric=False)
    datamodule = build_datamodule(CONFIG, caches=data["caches"])
    metrics = make_trainer(max_epochs=1, precision="32-true", callbacks=[]).validate(
        whole, datamodule=datamodule, verbose=False
    )[0]
    assert "val/saliency_iou" not in metrics and "val/balanced_acc" in metrics


@pytest.mark.e2e
def test_cam_overlays_are_written(data: dict, tmp_path: Path) -> None:
    from medtune.engine.evaluate import test_predictions

    whole = system("classification", data)
    preds = test_predictions(whole, CONFIG, caches=data["caches"], max_overlays=5)
    paths = save_cam_overlays(preds, tmp_path / "cams", n=3)
    # Three PNGs, upscaled from 64 px by a whole factor to at least 224 px (256), in RGB.
    assert len(paths) == 3 and all(p.suffix == ".png" and p.is_file() for p in paths)
    with Image.open(paths[0]) as image:
        assert image.size == (256, 256) and image.mode == "RGB"
    # Named after the saved arrays: the first test image's id and true class.
    assert paths[0].name.startswith(f"cam_00_img{int(preds['image_ids'][0])}_true{int(preds['labels'][0])}_pred")


@pytest.mark.e2e
def test_test_predictions_carry_the_cams_the_report_draws(data: dict) -> None:
    from medtune.engine.evaluate import test_predictions
    from medtune.saliency import hard_iou

    whole = system("classification", data)
    preds = test_predictions(whole, CONFIG, caches=data["caches"], max_overlays=5)
    n = len(preds["labels"])
    # The first 5 test images with their lesion masks and the HiResCAM of their true class, in [0, 1].
    assert preds["images"].shape == (5, 3, SIZE, SIZE) and preds["masks"].shape == (5, 1, SIZE, SIZE)
    assert preds["cams"].shape == (5, SIZE, SIZE) and 0 <= preds["cams"].min() and preds["cams"].max() <= 1
    assert preds["probs"].shape[0] == n > 5
    # They are the maps behind saliency_iou: the same IoU as the task's own CAMs of those images.
    batch = next(iter(DataLoader(build_datamodule(CONFIG, caches=data["caches"]).dataset("test"), batch_size=5)))
    _, cams = whole.cam(batch["image"], batch["label"])
    expected, _ = hard_iou(cams, batch["mask"])
    got, _ = hard_iou(torch.from_numpy(preds["cams"]).float(), torch.from_numpy(preds["masks"]).float())
    assert torch.allclose(got, expected, atol=1e-3)
