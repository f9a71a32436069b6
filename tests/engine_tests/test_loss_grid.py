"""The segmentation loss grid matches its source: focal without alpha, no degenerate Tversky endpoints."""

from __future__ import annotations

import torch

from medtune.config.spaces import load_space
from medtune.losses import SEG_LOSSES


def test_focal_default_has_no_alpha() -> None:
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.8).float()
    # The grid's "focal" uses the default: equal weight for lesion and background pixels, like the source.
    torch.testing.assert_close(SEG_LOSSES["focal"]()(logits, target), SEG_LOSSES["focal"](alpha=None)(logits, target))


def test_tversky_endpoints_are_degenerate_and_left_out_of_the_grid() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:5, 2:5] = 1
    everything, nothing = torch.full_like(target, 20.0), torch.full_like(target, -20.0)
    # alpha = 0: an all-lesion prediction is perfect; alpha = 1 (beta = 0): an empty one is.
    assert SEG_LOSSES["tversky"](alpha=0.0)(everything, target).item() < 1e-6
    assert SEG_LOSSES["tversky"](alpha=1.0)(nothing, target).item() < 1e-6
    alphas = next(p.values for p in load_space("seg_loss_grid").params if p.name == "loss.alpha")
    assert all(0.0 < float(a) < 1.0 for a in alphas)
