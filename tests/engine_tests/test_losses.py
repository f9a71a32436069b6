"""Loss registries: hand-checkable values on 2x2 masks, the relations between losses, a contract."""

import math

import pytest
import torch

from medtune.losses import CLS_LOSSES, SEG_LOSSES
from medtune.names import build

BIG = 20.0  # sigmoid(20) = 1 - 2e-9: a confident logit
LN2 = math.log(2)


def mask(*rows: list[int]) -> torch.Tensor:
    """One 2-D mask as a [1, 1, H, W] float batch."""
    return torch.tensor([[list(rows)]], dtype=torch.float)


def confident(target: torch.Tensor) -> torch.Tensor:
    """Logits predicting ``target`` with certainty; ``confident(1 - t)`` is fully wrong."""
    return (2 * target - 1) * BIG


LESION = mask([1, 0], [0, 0])  # 1 lesion pixel out of 4
HALF = mask([1, 1], [0, 0])
EMPTY = mask([0, 0], [0, 0])

# (name, kwargs, logits, target, expected loss); sums below are over the 4 pixels of one image.
CASES = [
    # Perfect prediction: 2TP + 1 = sum p + sum t + 1, Dice 1.
    ("dice", {}, confident(LESION), LESION, 0.0),
    # Fully wrong: TP = 0, sum p = 3, sum t = 1, Dice = 1 / 5.
    ("dice", {}, confident(1 - LESION), LESION, 0.8),
    # Empty target, empty prediction: smoothing alone gives Dice 1 / 1.
    ("dice", {}, confident(EMPTY), EMPTY, 0.0),
    # p = 0.5 everywhere: TP = 1, sum p = 2, sum t = 2, Dice = 3 / 5.
    ("dice", {}, torch.zeros(1, 1, 2, 2), HALF, 0.4),
    # All predicted lesion: TP = 1, FP = 3, FN = 0; alpha weighs the FPs: 3 / (2 + 0.6 + 1).
    ("tversky", {"alpha": 0.1, "beta": 0.9}, confident(1 - EMPTY), LESION, 1 - 3 / 3.6),
    # Same prediction, FPs weighted 0.9: 3 / (2 + 5.4 + 1).
    ("tversky", {"alpha": 0.9, "beta": 0.1}, confident(1 - EMPTY), LESION, 1 - 3 / 8.4),
    # Logit 0 is p = 0.5: ln 2 per pixel whatever the target.
    ("bce", {}, torch.zeros(1, 1, 2, 2), HALF, LN2),
    # pos_weight 3 on the 2 lesion pixels: (2 * 3 ln 2 + 2 ln 2) / 4.
    ("bce", {"pos_weight": 3.0}, torch.zeros(1, 1, 2, 2), HALF, 2 * LN2),
    # gamma 2 at p = 0.5: (1 - 0.5)^2 ln 2.
    ("focal", {"alpha": None, "gamma": 2.0}, torch.zeros(1, 1, 2, 2), HALF, 0.25 * LN2),
    # alpha 0.25 on lesion pixels, 0.75 on background, mean 0.5: 0.5 * 0.25 ln 2.
    ("focal", {"alpha": 0.25, "gamma": 2.0}, torch.zeros(1, 1, 2, 2), HALF, 0.125 * LN2),
    # 0.5 * ln 2 + 0.5 * 0.4 (the Dice case above).
    ("bce_dice", {}, torch.zeros(1, 1, 2, 2), HALF, 0.5 * LN2 + 0.2),
]


@pytest.mark.parametrize(("name", "kwargs", "logits", "target", "expected"), CASES)
def test_segmentation_loss_values(
    name: str, kwargs: dict, logits: torch.Tensor, target: torch.Tensor, expected: float
) -> None:
    loss = build(SEG_LOSSES, "segmentation loss", name, **kwargs)(logits, target)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_dice_is_computed_per_image_then_averaged() -> None:
    logits = torch.cat([confident(LESION), confident(1 - LESION)])
    target = torch.cat([LESION, LESION])
    # Mean of 0 (perfect) and 0.8 (fully wrong); a batch-wide Dice would give 1 - 3/7.
    assert SEG_LOSSES["dice"]()(logits, target).item() == pytest.approx(0.4, abs=1e-5)


def _random_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, 8, 8, generator=generator) * 3
    target = (torch.rand(3, 1, 8, 8, generator=generator) > 0.7).float()
    return logits, target


def test_tversky_with_equal_weights_is_dice() -> None:
    logits, target = _random_batch()
    tversky = SEG_LOSSES["tversky"](alpha=0.5, beta=0.5)(logits, target)
    torch.testing.assert_close(tversky, SEG_LOSSES["dice"]()(logits, target))


@pytest.mark.parametrize("bce_weight", [0.0, 0.3, 1.0])
def test_bce_dice_is_the_weighted_sum(bce_weight: float) -> None:
    logits, target = _random_batch()
    mixed = SEG_LOSSES["bce_dice"](bce_weight=bce_weight)(logits, target)
    bce, dice = SEG_LOSSES["bce"]()(logits, target), SEG_LOSSES["dice"]()(logits, target)
    torch.testing.assert_close(mixed, bce_weight * bce + (1 - bce_weight) * dice)


@pytest.mark.parametrize(("alpha", "scale"), [(None, 1.0), (0.5, 0.5)])
def test_focal_without_focusing_is_scaled_bce(alpha: float | None, scale: float) -> None:
    logits, target = _random_batch()
    focal = SEG_LOSSES["focal"](alpha=alpha, gamma=0.0)(logits, target)
    # gamma 0 removes the focusing term; alpha 0.5 weighs both classes by one half.
    torch.testing.assert_close(focal, scale * SEG_LOSSES["bce"]()(logits, target))


def test_focal_down_weights_easy_pixels() -> None:
    logits, target = _random_batch()
    # (1 - p_true)^gamma < 1, so focusing can only lower the loss.
    assert SEG_LOSSES["focal"](alpha=None)(logits, target) < SEG_LOSSES["bce"]()(logits, target)


LOGITS_2 = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # 2 images, 2 classes
TARGET_2 = torch.tensor([0, 1])


def test_cross_entropy_uniform_logits_is_log_k() -> None:
    # Uniform logits put 1/K on every class, whatever the label smoothing.
    for smoothing in (0.0, 0.2):
        ce = CLS_LOSSES["ce"](label_smoothing=smoothing)
        assert ce(torch.zeros(3, 4), torch.tensor([0, 1, 3])).item() == pytest.approx(math.log(4))


def test_class_weights_change_cross_entropy() -> None:
    per_image = torch.nn.functional.cross_entropy(LOGITS_2, TARGET_2, reduction="none")
    weighted = CLS_LOSSES["ce"](class_weights=[1.0, 3.0])(LOGITS_2, TARGET_2)
    # Weighted mean: (1 * loss_0 + 3 * loss_1) / (1 + 3), not the plain mean.
    assert weighted.item() == pytest.approx(((per_image[0] + 3 * per_image[1]) / 4).item())
    assert weighted.item() != pytest.approx(per_image.mean().item())


@pytest.mark.parametrize("class_weights", [None, [1.0, 3.0]])
def test_focal_ce_without_focusing_is_ce(class_weights: list[float] | None) -> None:
    focal = CLS_LOSSES["focal_ce"](gamma=0.0, class_weights=class_weights)(LOGITS_2, TARGET_2)
    ce = CLS_LOSSES["ce"](class_weights=class_weights)(LOGITS_2, TARGET_2)
    torch.testing.assert_close(focal, ce)


def test_focal_ce_matches_hand_value() -> None:
    # Image 0: p_true = e^2 / (e^2 + 1); image 1: p_true = 0.5; loss = -(1 - p)^2 log p, averaged.
    p0 = math.exp(2) / (math.exp(2) + 1)
    expected = (-((1 - p0) ** 2) * math.log(p0) + 0.25 * LN2) / 2
    assert CLS_LOSSES["focal_ce"]()(LOGITS_2, TARGET_2).item() == pytest.approx(expected)


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown segmentation loss 'iou'; valid: bce, bce_dice, "):
        build(SEG_LOSSES, "segmentation loss", "iou")


@pytest.mark.parametrize("name", sorted(SEG_LOSSES))
def test_segmentation_loss_contract(name: str) -> None:
    logits, target = _random_batch()
    logits.requires_grad_(True)
    loss = SEG_LOSSES[name]()(logits, target)
    loss.backward()
    # A finite scalar whose gradient reaches every logit finitely.
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", sorted(CLS_LOSSES))
def test_classification_loss_contract(name: str) -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    loss = CLS_LOSSES[name]()(logits, torch.tensor([0, 1, 2, 1]))
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(logits.grad).all()
