"""Masked classification hides the background: no pixel the segmenter calls background reaches the network.

A hand-made 16 px image carries a background no lesion pixel has (green 255; the lesion has green 0),
so any green in what the network receives came from the background, whatever the mode did to the
geometry (``crop`` resizes). The predicted probability is 1.0 in the lesion's core, 0.75 on its rim,
0.45 in a halo just outside it and 0.2 everywhere else: a segmenter's soft output, with the halo and
the far background both below the 0.5 threshold. Items go through ``CachedDataset.__getitem__``: with
a transform that only scales to [0, 1] the check is exact; with the platform's evaluation transform
the green channel must be the normalised value of 0 everywhere. (Training augmentation runs after
masking, on the masked image: colour jitter can lift black to grey, but only from masked pixels.)
"""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from medtune.data.datasets import IMAGENET_MEAN, IMAGENET_STD, CachedDataset, build_transform

SIZE, THRESHOLD, MARGIN = 16, 0.5, 0.25
LESION_RGB, BACKGROUND_RGB = (200, 0, 120), (30, 255, 90)  # green only in the background
MODES = ("hard", "soft", "crop")


def _grid() -> torch.Tensor:
    """Distance of each pixel from the image centre."""
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return ((ys - 7.5) ** 2 + (xs - 7.5) ** 2).sqrt()


def _probability() -> torch.Tensor:
    """float [1, S, S]: 1.0 core (r < 3), 0.75 rim (r < 4.5), 0.45 halo (r < 6), 0.2 beyond."""
    r = _grid()
    prob = torch.full((SIZE, SIZE), 0.2)
    for radius, value in ((6.0, 0.45), (4.5, 0.75), (3.0, 1.0)):
        prob[r < radius] = value
    return prob[None]


def _image(lesion: torch.Tensor) -> torch.Tensor:
    """uint8 [3, S, S]: the lesion colour where ``lesion`` [1, S, S], the background colour elsewhere."""
    colour = torch.tensor(LESION_RGB, dtype=torch.uint8)[:, None, None]
    background = torch.tensor(BACKGROUND_RGB, dtype=torch.uint8)[:, None, None]
    return torch.where(lesion, colour, background)


def _dataset(mode: str, prob: torch.Tensor, transform: v2.Transform | None = None) -> CachedDataset:
    """One image whose lesion is exactly what ``_probability`` predicts (prob >= threshold)."""
    cache = {
        "images": _image(_probability() >= THRESHOLD)[None],
        "masks": (_probability() >= THRESHOLD).to(torch.uint8)[None],
        "labels": [torch.tensor([0])],
    }
    probs = {"probs": (prob * 255).round().to(torch.uint8)[None]}
    return CachedDataset(
        cache,
        transform or v2.ToDtype(torch.float32, scale=True),
        pred_masks=probs,
        mask_mode=mode,
        mask_threshold=THRESHOLD,
        crop_margin=MARGIN,
    )


@pytest.mark.parametrize("mode", MODES)
def test_no_background_pixel_reaches_the_network(mode: str) -> None:
    image = _dataset(mode, _probability())[0]["image"]
    # Green exists only in the background (prob 0.2 far away, 0.45 in the halo): none may survive.
    assert image[1].abs().max().item() == 0.0
    # The lesion itself is seen (red 200 in its core, at most slightly blurred by crop's resize).
    assert image[0].max().item() > 0.7
    normalised = _dataset(mode, _probability(), build_transform(0.0, train=False))[0]["image"]
    # Through the evaluation transform the green channel is exactly the normalised black everywhere.
    black = -IMAGENET_MEAN[1] / IMAGENET_STD[1]
    assert torch.allclose(normalised[1], torch.full((SIZE, SIZE), black))


def test_soft_keeps_the_soft_edge_and_nothing_below_the_threshold() -> None:
    prob = _probability()
    image = _dataset("soft", prob)[0]["image"] * 255
    lesion = _image(prob >= THRESHOLD).float()
    # Inside the lesion each pixel is weighted by its probability (rim 0.75, core 1.0); outside it is 0.
    expected = torch.where(prob >= THRESHOLD, (lesion * prob).round(), torch.zeros(()))
    assert torch.allclose(image, expected, atol=1e-3)
    # The soft edge is there: the rim's red is 150 (0.75 of 200), the core's 200.
    assert set(image[0][prob[0] >= THRESHOLD].round().unique().tolist()) == {150.0, 200.0}


@pytest.mark.parametrize("mode", MODES)
def test_empty_prediction_gives_an_all_black_image(mode: str) -> None:
    # Every probability under the threshold: the segmenter found no lesion, so nothing is shown,
    # not the whole image (crop) nor a dimmed one (soft).
    image = _dataset(mode, torch.full((1, SIZE, SIZE), 0.45))[0]["image"]
    assert image.abs().max().item() == 0.0


def test_crop_zooms_on_the_lesion_with_black_around_it() -> None:
    crop, whole = _dataset("crop", _probability())[0], _dataset("hard", _probability())[0]
    lesion_share = (crop["image"][0] > 0.5).float().mean().item()
    # The lesion's box (9 px, plus a quarter on each side: 14 of 16 px) is zoomed to the full size,
    # so the lesion covers (16/14)^2 = 1.3 times its share of the whole hard-masked frame.
    assert lesion_share > 1.2 * (whole["image"][0] > 0.5).float().mean().item()
    # The margin's corners lie outside the round lesion: black, not background.
    assert crop["image"][:, 0, 0].abs().max().item() == 0.0 and crop["image"][:, -1, -1].abs().max().item() == 0.0
    # The ground-truth mask was cropped with the image: zoomed the same way.
    assert crop["mask"].mean().item() > 1.2 * whole["mask"].mean().item()
