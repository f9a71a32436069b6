"""The report's parts on hand-made inputs, no store: bootstrap metrics, parameter importance, overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from medtune.report.importance import param_importance
from medtune.report.load import Launch
from medtune.scoring.bootstrap import METRICS, paired_bootstrap
from medtune.tracking.leaderboard import Row


def test_bootstrap_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    probs = rng.dirichlet(np.ones(3), size=60)
    expected = {
        "acc": accuracy_score(labels, probs.argmax(1)),
        "balanced_acc": balanced_accuracy_score(labels, probs.argmax(1)),
        "f1_macro": f1_score(labels, probs.argmax(1), average="macro"),
        "auroc": roc_auc_score(labels, probs, multi_class="ovr"),
    }
    for name, metric in METRICS.items():
        assert metric(labels, probs) == pytest.approx(expected[name]), name
    values, diffs = paired_bootstrap(labels, [probs, probs], METRICS["acc"], resamples=200)
    # A model against itself: every paired resample differs by exactly 0.
    assert (diffs[1].value, diffs[1].low, diffs[1].high) == (0.0, 0.0, 0.0)
    assert values[0].low <= values[0].value <= values[0].high


def test_importance_leaves_out_conditional_params() -> None:
    space = {
        "params": {
            "model.name": {"choice": ["a", "b"]},
            "model.width": {"int": [8, 32], "when": {"model.name": "a"}},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
        }
    }
    rows = [
        Row(
            f"r{i}",
            f"t{i}",
            "completed" if i % 3 else "stopped",
            2,
            float(i % 4) / 4,
            {
                "model.name": "ab"[i % 2],
                "train.lr": str(10 ** (-4 + i / 4)),
                **({"model.width": str(8 + i)} if i % 2 == 0 else {}),
            },
        )
        for i in range(8)
    ]
    launch = Launch("e", "p", {}, {"metric": "val/x", "mode": "max"}, {}, rows, {}, {}, space, None)
    result = param_importance(launch)
    # model.width exists only under model.name=a, so it is left out and named; the rest sum to 1.
    assert result.left_out == ["model.width"] and set(result.values) == {"model.name", "train.lr"}
    assert sum(result.values.values()) == pytest.approx(1.0) and "truncated" in result.note


def test_overlays_draw_from_arrays(tmp_path: Path) -> None:
    """Segmentation and saliency overlays from arrays in the ``test_predictions.npz`` layout."""
    from medtune.report.predictions import saliency_overlays, segmentation_overlays

    yy, xx = np.mgrid[:16, :16]
    disc = (((yy - 8) ** 2 + (xx - 8) ** 2) < 16).astype(np.uint8)[None, None].repeat(3, 0)  # [3,1,16,16]
    preds = {
        "images": np.full((3, 3, 16, 16), 128, np.uint8),
        "masks": disc,
        "probs": (disc * 0.9).astype(np.float16),
        "iou": np.array([1.0, np.nan, 0.5]),
        "cams": disc[:, 0].astype(float),
        "labels": np.arange(3),
    }
    for draw, name in ((segmentation_overlays, "seg.png"), (saliency_overlays, "cam.png")):
        path = draw(preds, tmp_path / name, title="t")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
