"""Training samplers: each registered sampler draws an epoch of valid indices, and each does its job."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from medtune.data.datasets import CachedDataModule
from medtune.data.samplers import SAMPLERS, LeastSampledFirst, lesion_weights
from tests.helpers import BASE, TASK_CONFIGS, fit_one_step


def sets(*label_sets: list[int]) -> list[torch.Tensor]:
    """Label sets as the cache stores them: one LongTensor of sorted class indices per image."""
    return [torch.tensor(s, dtype=torch.long) for s in label_sets]


def masks_with_areas(*pixels: int, side: int = 4) -> torch.Tensor:
    """uint8 masks [N, 1, side, side] whose first ``pixels[i]`` pixels are lesion."""
    out = torch.zeros(len(pixels), side * side, dtype=torch.uint8)
    for i, n in enumerate(pixels):
        out[i, :n] = 1
    return out.view(len(pixels), 1, side, side)


def draws(sampler: torch.utils.data.Sampler, epochs: int) -> list[int]:
    return [i for _ in range(epochs) for i in sampler]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_trains_one_step(name: str, task_caches: dict) -> None:
    # The contract of every registry: one training and one validation step (on the small U-Net).
    config = {**BASE, **TASK_CONFIGS["segmentation"], "data.sampler": name}
    assert torch.isfinite(fit_one_step("segmentation", config, task_caches).callback_metrics["train/loss"])


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"none"}))  # none: no sampler, see the next test
def test_every_sampler_draws_one_epoch_of_valid_indices(name: str) -> None:
    labels, masks = sets([0], [1], [0, 2], []), masks_with_areas(8, 1, 0, 4)
    sampler = SAMPLERS[name](labels, masks, floor=0.05)
    drawn = list(sampler)
    # An epoch keeps the dataset's length and only names existing images.
    assert len(sampler) == len(drawn) == 4 and set(drawn) <= {0, 1, 2, 3}


def test_class_balanced_draws_classes_evenly() -> None:
    torch.manual_seed(0)
    labels = sets(*[[0]] * 90, *[[1]] * 9, [2])  # 90 / 9 / 1 images
    drawn = Counter(int(labels[i]) for i in draws(SAMPLERS["class_balanced"](labels, None, floor=0.05), 30))
    shares = [drawn[c] / 3000 for c in range(3)]
    # Each class gets about a third of 3000 draws (the single class-2 image too), not 90/9/1 %.
    assert all(abs(s - 1 / 3) < 0.04 for s in shares), shares


def test_least_sampled_first_covers_a_rare_label_and_unlabelled_images() -> None:
    torch.manual_seed(0)
    # 96 images of label 0, 2 with label 1 only, 1 with labels 0 and 1, 1 with no label.
    labels = sets(*[[0]] * 96, [1], [1], [0, 1], [])
    drawn = list(LeastSampledFirst(labels))
    per_label = Counter(label for i in drawn for label in labels[i].tolist())
    # Three groups (label 0, label 1, no label) take turns: label 1, on 3% of the images, is on about
    # a third of the 100 draws, and the unlabelled image, a group of its own, is drawn as often.
    assert per_label[1] >= 25 and drawn.count(99) >= 25


def test_least_sampled_first_is_deterministic_under_the_torch_seed() -> None:
    labels = sets(*[[0]] * 20, *[[1]] * 5, [2], [0, 2])
    sampler = LeastSampledFirst(labels)
    torch.manual_seed(1)
    first = list(sampler)
    torch.manual_seed(1)
    # Same global seed, same epoch; the next epoch (seed moved on) differs.
    assert list(sampler) == first and list(sampler) != first


def test_lesion_weights_are_area_shares_with_a_floor() -> None:
    # 8 of 16 pixels, 2 of 16, none: shares 0.5, 0.125, 0 -> the empty mask is raised to the floor.
    weights = lesion_weights(masks_with_areas(8, 2, 0), floor=0.05)
    assert weights.tolist() == pytest.approx([0.5, 0.125, 0.05])


def test_lesion_size_prefers_big_lesions_but_draws_empty_masks() -> None:
    torch.manual_seed(0)
    sampler = SAMPLERS["lesion_size"](sets([0], [0], [0]), masks_with_areas(8, 2, 0), floor=0.05)
    drawn = Counter(draws(sampler, 200))  # 600 draws, expected 446 / 111 / 45
    # Drawn in proportion to the weights 0.5 : 0.125 : 0.05 ...
    assert drawn[0] > 3 * drawn[1] > 0
    # ... and the floor keeps the empty mask in play.
    assert 20 <= drawn[2] <= 80


def test_lesion_size_refuses_a_zero_floor() -> None:
    with pytest.raises(ValueError, match="sampler_floor must be > 0"):
        SAMPLERS["lesion_size"](sets([0]), masks_with_areas(0), floor=0.0)


@pytest.fixture
def caches(tmp_path: Path) -> dict[str, str]:
    """Tiny hand-made caches: 10 training images (8 of class 0, 2 of class 1), 3 validation images."""
    files = {}
    for split, labels in (("train", [[0]] * 8 + [[1]] * 2), ("val", [[0], [1], [0]])):
        n = len(labels)
        data = {
            "images": torch.zeros(n, 3, 8, 8, dtype=torch.uint8),
            "masks": torch.zeros(n, 1, 8, 8, dtype=torch.uint8),
            "labels": sets(*labels),
            "image_ids": torch.arange(n),
        }
        files[split] = str(tmp_path / f"{split}.pt")
        torch.save(data, files[split])
    return files


def test_datamodule_resamples_the_training_split_only(caches: dict[str, str]) -> None:
    data = CachedDataModule(caches=caches, batch_size=5, augment=0.0, sampler="class_balanced")
    train, val = data.train_dataloader(), data.val_dataloader()
    # The training loader draws through the sampler, one dataset length per epoch; validation is read in order.
    assert train.sampler.__class__.__name__ == "WeightedRandomSampler" and len(train.sampler) == 10
    assert [int(x) for b in val for x in b["label"]] == [0, 1, 0]


def test_no_sampler_leaves_shuffling_to_the_loader(caches: dict[str, str]) -> None:
    assert SAMPLERS["none"](sets([0], [1]), masks_with_areas(1, 0), floor=0.05) is None
    torch.manual_seed(0)
    train = CachedDataModule(caches=caches, batch_size=10, augment=0.0, sampler="none").train_dataloader()
    epochs = [[int(i) for b in train for i in b["label"]] for _ in range(2)]
    # The loader shuffles the training split: each epoch is a permutation of its 8 + 2 labels ...
    assert isinstance(train.sampler, torch.utils.data.RandomSampler)
    assert all(sorted(e) == [0] * 8 + [1] * 2 for e in epochs)
    # ... drawn anew each epoch (under seed 0 neither is the file order, and they differ).
    assert [0] * 8 + [1] * 2 not in epochs and epochs[0] != epochs[1]


def test_unknown_sampler_lists_the_valid_names(caches: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unknown sampler 'balanced'; valid: class_balanced, least_sampled_first"):
        CachedDataModule(caches=caches, sampler="balanced")
