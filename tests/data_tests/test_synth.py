"""The embedded synthetic dataset: determinism, valid COCO, stratified splits and the spurious cue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from medtune.data import __main__ as data_cli
from medtune.data.tools.synth import generate
from medtune.data.tools.synth_plan import assign_splits
from medtune.data.tools.synth_render import CLASSES, FINDING_SHARE, FINDINGS, SPLITS

N, SIZE = 30, 32  # 10 images per class: 6 train, 2 val, 2 test


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One small generated set and the summary ``generate`` returned; read-only."""
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, generate(out, n=N, size=SIZE, seed=0)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(synth: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = synth
    generate(tmp_path / "again", n=N, size=SIZE, seed=0)
    # every JSON, PNG and the README are byte-identical
    assert _files(tmp_path / "again") == _files(out)


def test_other_seed_gives_other_data(synth: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = synth
    generate(tmp_path / "other", n=N, size=SIZE, seed=1)
    first, other = _files(out), _files(tmp_path / "other")
    # same file names (they depend only on n and the shares) but different pixels and polygons
    assert first.keys() == other.keys()
    assert first["images/train_00001.png"] != other["images/train_00001.png"]
    assert first["train.json"] != other["train.json"]


def test_layout_and_info(synth: tuple[Path, dict]) -> None:
    out, summary = synth
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "images", "test.json", "train.json", "val.json"]
    assert len(list((out / "images").glob("*.png"))) == N
    info = json.loads((out / "train.json").read_text())["info"]
    assert (info["seed"], info["size"], info["n"], info["cue_agreement"]) == (0, SIZE, N, 0.9)
    assert summary["path"] == str(out.absolute())


def test_coco_loads_and_masks_are_inside_the_image(synth: tuple[Path, dict]) -> None:
    out, _ = synth
    ids: list[int] = []
    for split in SPLITS:
        coco = COCO(str(out / f"{split}.json"))
        ids += coco.getImgIds()
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        for img in coco.loadImgs(coco.getImgIds()):
            # file_name is relative to images/ and the file has the declared size
            assert (out / "images" / img["file_name"]).is_file()
            (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            mask = coco.annToMask(ann)
            assert mask.shape == (SIZE, SIZE) and mask.sum() > 0
            # the lesion polygon has >= 12 points, all inside the image
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            assert len(poly) >= 12 and poly.min() >= 0 and poly.max() <= SIZE
            # area (shoelace) and bbox agree with the rasterised mask
            assert abs(mask.sum() - ann["area"]) <= 0.15 * ann["area"]
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert abs(xs.min() - x) <= 1.5 and abs(ys.min() - y) <= 1.5 and abs(xs.max() + 1 - (x + w)) <= 1.5
            # lesions cover roughly 8-35% of the image
            assert 0.05 * SIZE**2 <= ann["area"] <= 0.4 * SIZE**2
    # image ids are unique across the three files
    assert len(ids) == len(set(ids)) == N


def test_splits_are_stratified_and_balanced(synth: tuple[Path, dict]) -> None:
    out, summary = synth
    for split, per_class in [("train", 6), ("val", 2), ("test", 2)]:
        labels = [a["category_id"] for a in json.loads((out / f"{split}.json").read_text())["annotations"]]
        # every class in every split, in the 60/20/20 proportions of N // 3 = 10 images per class
        assert [labels.count(c) for c in (1, 2, 3)] == [per_class] * 3, split
        # and the summary reports the same counts
        assert summary["counts"][split] == dict.fromkeys(CLASSES, per_class)


def test_uneven_n_stays_balanced() -> None:
    plan = assign_splits(31)
    labels = [label for split in SPLITS for label, _ in plan[split]]
    # the one extra image goes to the first class: 11 / 10 / 10
    assert [labels.count(c) for c in range(len(CLASSES))] == [11, 10, 10]


def test_marker_follows_train_in_val_and_is_shifted_in_test(synth: tuple[Path, dict]) -> None:
    out, _ = synth
    # train and val: round(0.9 * n) agree (16 of 18, 5 of 6); test: a balanced random shift, 2 of 6 agree
    for split, expected in [("train", 16 / 18), ("val", 5 / 6), ("test", 1 / 3)]:
        coco = json.loads((out / f"{split}.json").read_text())
        label = {a["image_id"]: a["category_id"] for a in coco["annotations"]}
        agree = np.mean([img["marker_class"] == label[img["id"]] for img in coco["images"]])
        assert agree == pytest.approx(expected), split


@pytest.mark.parametrize(("shift", "shifted"), [("test", {"test"}), ("val+test", {"val", "test"}), ("none", set())])
def test_marker_is_random_in_shifted_splits_on_a_large_plan(shift: str, shifted: set[str]) -> None:
    plan = assign_splits(3000, seed=3, shift=shift)
    agreement = {split: np.mean([y == m for y, m in plan[split]]) for split in SPLITS}
    # unshifted splits agree exactly at cue_agreement; shifted ones (600 images each) at chance, 1/3
    for split in SPLITS:
        assert agreement[split] == pytest.approx(1 / 3 if split in shifted else 0.9), split
    # independence: within each class of a shifted split, each marker colour takes roughly a third (200 per class)
    for split in shifted:
        for label in range(len(CLASSES)):
            markers = [m for y, m in plan[split] if y == label]
            assert all(40 <= markers.count(m) <= 95 for m in range(len(CLASSES))), markers


def test_unknown_shift_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shift must be one of"):
        generate(tmp_path / "data", n=30, size=32, shift="train")


@pytest.fixture
def synth_only_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher with only ``synth`` registered, so this test does not import the other commands."""
    monkeypatch.setattr(data_cli, "COMMANDS", {"synth": data_cli.COMMANDS["synth"]})


def test_cli_writes_then_refuses_a_non_empty_folder(
    synth_only_cli: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--n", "15", "--size", "32", "--seed", "2"]
    assert data_cli.main(argv) == 0
    # one summary line naming the folder and the split counts
    assert capsys.readouterr().out.strip() == f"synth: wrote {out} (train 9, val 3, test 3; 32 px, seed 2)"
    before = _files(out)
    assert data_cli.main(argv) != 0
    # the refusal is one stderr line naming the folder, and nothing was changed
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--force" in err
    assert _files(out) == before
    (out / "notes.txt").write_text("kept")
    (out / "defects").mkdir()  # as left by an earlier --defects run, now stale
    assert data_cli.main([*argv[:-1], "3", "--force"]) == 0
    # --force replaces what a run writes (stale defects/ included) and leaves unrelated files alone
    assert _files(out)["images/train_00001.png"] != before["images/train_00001.png"]
    assert (out / "notes.txt").read_text() == "kept" and not (out / "defects").exists()


def test_cli_rejects_bad_arguments(synth_only_cli: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert data_cli.main(["synth", "--out", str(tmp_path / "x"), "--size", "8"]) != 0
    # the error names the argument, and nothing is written
    assert "size" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_multilabel_adds_findings_and_keeps_the_lesions(synth: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = synth
    summary = generate(tmp_path / "ml", n=N, size=SIZE, seed=0, multilabel=True)
    single, multi = _files(out), _files(tmp_path / "ml")
    for split in SPLITS:
        coco = json.loads((tmp_path / "ml" / f"{split}.json").read_text())
        plain = json.loads((out / f"{split}.json").read_text())
        # the findings are two extra categories after the lesion classes
        assert [c["name"] for c in coco["categories"]] == list(CLASSES) + list(FINDINGS)
        findings = [a for a in coco["annotations"] if a["category_id"] > len(CLASSES)]
        # the lesion annotations are those of the single-label set; findings add no mask
        assert [a for a in coco["annotations"] if a["category_id"] <= len(CLASSES)] == plain["annotations"]
        assert all(a["segmentation"] == [] and a["area"] == 0 for a in findings)
        # each finding is on its share of the split's images (at least one, never all)
        n = len(coco["images"])
        counts = [sum(a["category_id"] == len(CLASSES) + 1 + f for a in findings) for f in range(len(FINDINGS))]
        assert (
            counts
            == [min(max(round(s * n), 1), n - 1) for s in FINDING_SHARE]
            == list(summary["findings"][split].values())
        )
        # an image without findings is pixel for pixel the single-label image; one with findings is not
        marked = {a["image_id"] for a in findings}
        for img in coco["images"]:
            key = f"images/{img['file_name']}"
            assert (multi[key] == single[key]) == (img["id"] not in marked)
    # annotation ids stay unique across the three files
    ids = [a["id"] for s in SPLITS for a in json.loads((tmp_path / "ml" / f"{s}.json").read_text())["annotations"]]
    assert len(ids) == len(set(ids))
