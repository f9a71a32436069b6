"""The shortcut share of ``analyze.py --compare``: hand-made predictions joined to a hand-made COCO test file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medtune.data.tools.synth import generate
from medtune.report.compare import Entry
from medtune.report.shortcut import cue_classes, shortcut_lines, shortcut_shares

# Category ids 10/20/30, listed out of order: the models' class index follows the sorted ids.
CATEGORIES = [{"id": 30, "name": "c"}, {"id": 10, "name": "a"}, {"id": 20, "name": "b"}]
# image id -> (true class index, marker category id); image 7 records no marker.
IMAGES = {1: (0, 10), 2: (1, 10), 3: (2, 30), 4: (0, 20), 5: (1, 20), 6: (2, 10), 7: (0, None)}


def _write_test_json(root: Path) -> Path:
    images = [
        {"id": i, "file_name": f"{i}.png", **({} if m is None else {"marker_class": m})} for i, (_, m) in IMAGES.items()
    ]
    (root / "test.json").write_text(json.dumps({"images": images, "annotations": [], "categories": CATEGORIES}))
    return root


def _entry(name: str, root: Path, ids: list[int], predicted: list[int]) -> Entry:
    """An entry whose one seed predicts ``predicted[k]`` for image ``ids[k]`` (one-hot probabilities)."""
    probs = np.eye(3)[predicted]
    return Entry(
        experiment=name,
        run_id=name * 8,
        dataset=str(root),
        fingerprint="f",
        labels=np.array([IMAGES[i][0] for i in ids]),
        probs=probs,
        probs_seeds=probs[None],
        image_ids=np.array(ids),
        saliency_iou=float("nan"),
    )


def test_cue_classes_map_category_ids_to_class_indices(tmp_path: Path) -> None:
    cues = cue_classes(_write_test_json(tmp_path) / "test.json")
    # Marker ids 10/20/30 become indices 0/1/2; image 7 (no marker) is left out.
    assert cues == {1: 0, 2: 0, 3: 2, 4: 1, 5: 1, 6: 0}


def test_share_counts_predictions_that_name_the_marker_class(tmp_path: Path) -> None:
    root = _write_test_json(tmp_path)
    ids = [1, 2, 3, 4, 5, 6, 7]
    # "marker" predicts the marker's class on images 1-6; "lesion" predicts the true class, in another order.
    marker = _entry("marker", root, ids, [0, 0, 2, 1, 1, 0, 1])
    shuffled = [7, 6, 5, 4, 3, 2, 1]
    lesion = _entry("lesion", root, shuffled, [IMAGES[i][0] for i in shuffled])
    shares = shortcut_shares([marker, lesion], cue_classes(root / "test.json"), resamples=200)
    assert not isinstance(shares, str)
    # Over the 6 images with a marker: "marker" follows it on all; the true class is the marker's on
    # images 1 (0=0), 3 (2=2) and 5 (1=1), so "lesion" follows it on 3 of 6, as often as it agrees.
    assert shares.images == 6
    assert shares.values[0].value == pytest.approx(1.0)
    assert shares.values[1].value == pytest.approx(3 / 6)
    assert shares.agreement == pytest.approx(3 / 6)
    assert shares.diffs[1].value == pytest.approx(-0.5)
    assert shares.values[1].low <= 0.5 <= shares.values[1].high
    assert shares.classes == 3


def test_lines_one_per_experiment_and_none_without_a_cue(tmp_path: Path) -> None:
    root = _write_test_json(tmp_path)
    ids = [1, 2, 3, 4, 5, 6]
    lines = shortcut_lines([_entry("whole", root, ids, [0, 0, 2, 1, 1, 0]), _entry("masked", root, ids, [0] * 6)])
    # One line per experiment (the second with its difference from the first), then what they mean.
    assert lines[0].startswith("shortcut share, whole: 100% [100%, 100%] of 6 test images")
    assert lines[1].startswith("shortcut share, masked: 50% [") and "vs whole -0.500" in lines[1]
    assert "chance with 3 classes: 33%" in lines[2]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "test.json").write_text(
        json.dumps({"images": [{"id": 1, "file_name": "1.png"}], "annotations": [], "categories": CATEGORIES})
    )
    # A dataset that records no cue (or a folder that is gone) prints nothing.
    assert shortcut_lines([_entry("whole", plain, [1], [0])]) == []
    assert shortcut_lines([_entry("whole", tmp_path / "gone", [1], [0])]) == []


def test_synth_records_the_marker_the_test_split_shifts(tmp_path: Path) -> None:
    generate(tmp_path / "s", n=60, size=16, seed=3)
    coco = json.loads((tmp_path / "s" / "test.json").read_text())
    labels = {a["image_id"]: a["category_id"] - 1 for a in coco["annotations"]}
    cues = cue_classes(tmp_path / "s" / "test.json")
    # Every synthetic test image records its marker, and on the shifted test split a third name the class.
    assert cues is not None and set(cues) == set(labels)
    assert np.mean([cues[i] == labels[i] for i in labels]) == pytest.approx(1 / 3, abs=0.01)
