"""Dataset tools (``python -m medtune.data check|simplify|split|stats|import-masks``) on tiny data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtune.data import cocoio
from medtune.data.__main__ import COMMANDS, main
from medtune.data.check import check_coco
from medtune.data.masks import segmentation_mask
from medtune.data.tools.defects import inject_defects
from medtune.data.tools.synth import generate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set (30 images of 32 px) with its defective copy in ``defects/``; read-only."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, n=30, size=32, seed=0)
    inject_defects(out, seed=0)
    return out


def tiny_coco(labels: list[list[str]], *, extra: list[dict] | None = None, size: tuple[int, int] = (10, 20)) -> dict:
    """COCO with one image per entry of ``labels`` (its category names), no image files.

    Every annotation is a square polygon of 4 x 4 px (area 16) on a ``size`` (width, height) image.
    """
    names = sorted({name for image in labels for name in image})
    ids = {name: i for i, name in enumerate(names, start=1)}
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in ids.items()]}
    square = [1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]
    for image_id, names_here in enumerate(labels, start=1):
        coco["images"].append(
            {
                "id": image_id,
                "file_name": f"{image_id}.png",
                "width": size[0],
                "height": size[1],
                **(extra[image_id - 1] if extra else {}),
            }
        )
        for name in names_here:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": ids[name],
                    "segmentation": [square],
                    "area": 16.0,
                    "bbox": [1, 1, 4, 4],
                    "iscrowd": 0,
                }
            )
    return coco


def write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def one_error_line(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err
    # user errors are exactly one line (no traceback) that names what is wrong
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------- check


def test_check_clean_set_passes(synthetic: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_coco(synthetic / "train.json").problems == []
    assert main(["check", "--coco", str(synthetic / "train.json")]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_check_finds_every_injected_defect(synthetic: Path, capsys: pytest.CaptureFixture) -> None:
    truth = json.loads((synthetic / "defects" / "truth.json").read_text())
    report = check_coco(synthetic / "defects" / "train.json")
    found = sorted((p.kind, str(p.image_id), p.file_name, str(p.annotation_id)) for p in report.problems)
    expected = sorted(
        (d["kind"], str(d["image_id"]), d["file_name"], str(d["annotation_id"])) for d in truth["defects"]
    )
    # exactly the injected defects, each with its image id, file name and annotation id
    assert found == expected
    assert report.counts() == truth["counts"]
    # the injector covers every kind check knows
    from medtune.data.check import KINDS

    assert set(truth["counts"]) == set(KINDS)
    assert main(["check", "--coco", str(synthetic / "defects" / "train.json")]) == 1
    out = capsys.readouterr().out
    assert "duplicate content: 1 group(s): 1 x 2 images" in out


def test_check_fast_opens_no_image(synthetic: Path) -> None:
    report = check_coco(synthetic / "defects" / "train.json", fast=True)
    # without decoding images, the three kinds that need pixels disappear and nothing else changes
    needs_pixels = {"unreadable_file", "size_mismatch", "duplicate_content"}
    truth = json.loads((synthetic / "defects" / "truth.json").read_text())
    assert report.counts() == {k: n for k, n in truth["counts"].items() if k not in needs_pixels}


def test_check_fix_output_passes_check(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "elsewhere" / "clean.json"
    assert main(["check", "--coco", str(synthetic / "defects" / "train.json"), "--fix", str(out)]) == 1
    assert "fix: wrote" in capsys.readouterr().out
    # the copy lies away from the images, so it names their folder and check finds them
    assert main(["check", "--coco", str(out)]) == 0
    fixed = json.loads(out.read_text())
    clean = json.loads((synthetic / "train.json").read_text())
    # all injected images go; of the original images only the one given a wrong width does
    assert len(fixed["images"]) == len(clean["images"]) - 1
    removed = json.loads((tmp_path / "elsewhere" / "clean.removed.json").read_text())
    assert {"images", "annotations", "categories"} == set(removed)
    assert all(entry["reasons"] for entries in removed.values() for entry in entries)


def test_empty_segmentation_with_zero_area_means_no_lesion(tmp_path: Path) -> None:
    coco = tiny_coco([["normal"], ["normal"]])
    (tmp_path / "images").mkdir()
    for img in coco["images"]:
        Image.new("L", (img["width"], img["height"]), 40 * img["id"]).save(tmp_path / "images" / img["file_name"])
    coco["annotations"][0].update(segmentation=[], area=0, bbox=[0, 0, 0, 0])
    coco["annotations"][1].update(segmentation=[], area=7)
    report = check_coco(write(tmp_path / "c.json", coco))
    # only the empty segmentation that claims an area is a problem
    assert [(p.kind, p.annotation_id) for p in report.problems] == [("degenerate_polygon", 2)]


def test_check_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--coco", str(tmp_path / "nope.json")]) == 2
    one_error_line(capsys, "nope.json", "not found")
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["check", "--coco", str(tmp_path / "bad.json")]) == 2
    one_error_line(capsys, "bad.json", "not valid JSON")
    write(tmp_path / "list.json", {"images": [], "annotations": {}})
    assert main(["check", "--coco", str(tmp_path / "list.json")]) == 2
    one_error_line(capsys, "list.json", "'annotations'")


# ---------------------------------------------------------------- simplify


def test_simplify_maps_fine_to_coarse(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "map.yaml").write_text("melanoma: malignant\nnevus: benign\natypical: benign\n")
    out = tmp_path / "coarse.json"
    assert (
        main(
            [
                "simplify",
                "--coco",
                str(synthetic / "train.json"),
                "--map",
                str(tmp_path / "map.yaml"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    before, after = json.loads((synthetic / "train.json").read_text()), json.loads(out.read_text())
    # ids follow the first appearance of each coarse name in the map
    assert after["categories"] == [{"id": 1, "name": "malignant"}, {"id": 2, "name": "benign"}]
    fine = {c["id"]: c["name"] for c in before["categories"]}
    expected = [1 if fine[a["category_id"]] == "melanoma" else 2 for a in before["annotations"]]
    assert [a["category_id"] for a in after["annotations"]] == expected
    assert main(["check", "--coco", str(out)]) == 0


def test_simplify_unmapped_label_is_an_error_unless_dropped(
    synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "map.yaml").write_text("nevus: benign\natypical: benign\n")
    args = [
        "simplify",
        "--coco",
        str(synthetic / "train.json"),
        "--map",
        str(tmp_path / "map.yaml"),
        "--out",
        str(tmp_path / "o.json"),
    ]
    assert main(args) == 2
    one_error_line(capsys, "melanoma", "--drop-unmapped")
    # nothing is written on error
    assert not (tmp_path / "o.json").exists()
    assert main([*args, "--drop-unmapped"]) == 0
    before = json.loads((synthetic / "train.json").read_text())
    n_melanoma = sum(a["category_id"] == 3 for a in before["annotations"])  # synth: 3 is melanoma
    assert f"dropped {n_melanoma} annotations" in capsys.readouterr().out
    after = json.loads((tmp_path / "o.json").read_text())
    # one lesion per synthetic image: the images go with their annotations
    assert len(after["images"]) == len(before["images"]) - n_melanoma
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    assert main([*args[:3], "--map", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o.json")]) == 2
    one_error_line(capsys, "bad.yaml", "mapping")


# ---------------------------------------------------------------- split


def split_fixture(tmp_path: Path) -> Path:
    """210 images: classes a/b/c 120/60/24, 6 images labelled a+b, patients of 1-3 images."""
    labels = [["a"]] * 120 + [["b"]] * 60 + [["c"]] * 24 + [["a", "b"]] * 6
    patients = [f"p{g}" for g in range(len(labels)) for _ in range(1 + g % 3)][: len(labels)]
    extra = [{"patient_id": p} for p in patients]
    return write(tmp_path / "all.json", tiny_coco(labels, extra=extra))


def split_ids(folder: Path) -> dict[str, list[int]]:
    return {
        s: [img["id"] for img in json.loads((folder / f"{s}.json").read_text())["images"]]
        for s in ("train", "val", "test")
    }


def test_split_is_stratified(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = split_fixture(tmp_path)
    assert main(["split", "--coco", str(source), "--out", str(tmp_path / "s"), "--seed", "3"]) == 0
    assert "class" in capsys.readouterr().out
    coco = json.loads(source.read_text())
    ids = split_ids(tmp_path / "s")
    # every image lands in exactly one split
    assert sorted(sum(ids.values(), [])) == [img["id"] for img in coco["images"]]
    for category in coco["categories"]:
        holders = {a["image_id"] for a in coco["annotations"] if a["category_id"] == category["id"]}
        shares = {s: len(holders & set(v)) / len(holders) for s, v in ids.items()}
        # each class reaches each split near its share (0.7 / 0.15 / 0.15, +-0.05)
        assert all(n > 0 for n in shares.values()), (category, shares)
        assert abs(shares["val"] - 0.15) <= 0.05 and abs(shares["test"] - 0.15) <= 0.05, (category, shares)


def test_split_keeps_groups_together(tmp_path: Path) -> None:
    source = split_fixture(tmp_path)
    assert main(["split", "--coco", str(source), "--out", str(tmp_path / "s"), "--group-by", "patient_id"]) == 0
    patient = {img["id"]: img["patient_id"] for img in json.loads(source.read_text())["images"]}
    where: dict[str, set[str]] = {}
    for split, ids in split_ids(tmp_path / "s").items():
        for i in ids:
            where.setdefault(patient[i], set()).add(split)
    # no patient straddles two splits
    assert all(len(splits) == 1 for splits in where.values())


def test_split_says_when_a_group_unbalances_a_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # 20 atypical and 80 common images; one patient holds 18 atypical and 10 common images.
    labels = [["atypical"]] * 20 + [["common"]] * 80
    patients = ["big"] * 18 + ["p1", "p2"] + ["big"] * 10 + [f"q{i}" for i in range(70)]
    source = write(tmp_path / "all.json", tiny_coco(labels, extra=[{"patient_id": p} for p in patients]))
    args = ["split", "--coco", str(source), "--out", str(tmp_path / "s"), "--ignore-duplicates"]
    assert main([*args, "--group-by", "patient_id"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "images per split" in line]
    # One line: the split sizes, their fair shares, the class left short and the group to blame.
    assert lines == [
        "warning: images per split: 76/12/12 (fair 70/15/15): class 'atypical' has 1 of 20 in val (fair 3) because a "
        "'patient_id' group of 28 images is kept whole in train; class 'atypical' has 1 of 20 in test (fair 3) "
        "because a 'patient_id' group of 28 images is kept whole in train"
    ]
    # Without the patient grouping every class reaches its share, and nothing is said.
    assert main(args) == 0
    assert "images per split" not in capsys.readouterr().err


def test_split_reports_a_suspicious_group_and_uses_it_only_if_accepted(
    synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    shutil.copytree(synthetic / "images", tmp_path / "images")
    coco = cocoio.load_coco(synthetic / "train.json")
    first = coco["images"][0]
    for n in range(11):  # eleven copies of one image: a group of 12, over the trusted bound of 10
        shutil.copy(tmp_path / "images" / first["file_name"], tmp_path / "images" / f"copy{n}.png")
        coco["images"].append({**first, "id": 1000 + n, "file_name": f"copy{n}.png"})
    coco["info"] = {k: v for k, v in coco.get("info", {}).items() if k != "images_dir"}
    source = write(tmp_path / "all.json", coco)
    args = ["split", "--coco", str(source), "--out", str(tmp_path / "s")]
    assert main(args) == 0
    captured = capsys.readouterr()
    # Said in one warning line, and not used: the split keeps no group together.
    assert "warning: suspicious near-duplicate group of 12 images" in captured.err
    assert "kept 0 near-duplicate groups" in captured.out
    assert main([*args, "--accept-groups"]) == 0
    captured = capsys.readouterr()
    # Accepted: the 12 images land in one split.
    assert "suspicious" not in captured.err and "kept 1 near-duplicate groups (12 images)" in captured.out
    where = {i: s for s, ids in split_ids(tmp_path / "s").items() for i in ids}
    assert len({where[i] for i in [first["id"], *range(1000, 1011)]}) == 1


def test_split_is_deterministic_per_seed(tmp_path: Path) -> None:
    source = split_fixture(tmp_path)
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert main(["split", "--coco", str(source), "--out", str(tmp_path / name), "--seed", seed]) == 0
    assert (tmp_path / "a" / "val.json").read_bytes() == (tmp_path / "b" / "val.json").read_bytes()
    assert split_ids(tmp_path / "a") != split_ids(tmp_path / "c")


def test_split_output_finds_the_images(synthetic: Path, tmp_path: Path) -> None:
    assert main(["split", "--coco", str(synthetic / "train.json"), "--out", str(tmp_path / "s")]) == 0
    # file_name is unchanged; info.images_dir points check (and the loader) at the source images
    assert json.loads((tmp_path / "s" / "val.json").read_text())["info"]["images_dir"] == str(
        (synthetic / "images").resolve()
    )
    assert all(main(["check", "--coco", str(tmp_path / "s" / f"{s}.json")]) == 0 for s in ("train", "val", "test"))


def test_split_small_class_warns_and_bad_fractions_fail(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = write(tmp_path / "c.json", tiny_coco([["a"]] * 20 + [["rare"]] * 2))
    assert main(["split", "--coco", str(source), "--out", str(tmp_path / "s")]) == 0
    # two images cannot cover three splits: a warning, not a crash
    assert "warning: class 'rare' (2 images) is missing from" in capsys.readouterr().err
    assert main(["split", "--coco", str(source), "--out", str(tmp_path / "s"), "--val", "0.6", "--test", "0.5"]) == 2
    one_error_line(capsys, "--val 0.6", "--test 0.5")
    assert main(["split", "--coco", str(source), "--out", str(tmp_path / "s"), "--group-by", "patient_id"]) == 2
    one_error_line(capsys, "patient_id")


# ---------------------------------------------------------------- stats


def test_stats_numbers_on_a_hand_made_coco(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = tiny_coco([["a"], ["a", "b"], ["n"], []], size=(10, 20))
    coco["images"][1]["width"] = 20  # 20 x 20
    coco["annotations"][3].update(segmentation=[], area=0)  # image 3: normal, no lesion
    del coco["annotations"][0]["area"]  # image 1: area from the polygon (16)
    assert main(["stats", "--coco", str(write(tmp_path / "c.json", coco)), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {k: (v["annotations"], v["images"]) for k, v in stats["classes"].items()} == {
        "a": (2, 2),
        "b": (1, 1),
        "n": (1, 1),
    }
    assert (
        stats["images_with_several_classes"],
        stats["images_without_lesion"],
        stats["images_without_annotations"],
    ) == (1, 1, 1)
    # coverage of the two images with lesions: 16 / 200 and (16 + 16) / 400
    assert stats["coverage"] == {"images": 2, "min": 0.08, "q1": 0.08, "median": 0.08, "q3": 0.08, "max": 0.08}
    assert stats["sizes"] == {
        "distinct": 2,
        "width": [10, 20],
        "height": [20, 20],
        "most_common": [["10x20", 3], ["20x20", 1]],
    }
    assert main(["stats", "--coco", str(tmp_path / "c.json")]) == 0
    assert "images without lesion (empty segmentation): 1" in capsys.readouterr().out


# ---------------------------------------------------------------- import-masks


def write_masks(synthetic: Path, folder: Path) -> dict[str, np.ndarray]:
    """Render the synthetic train masks as ``<stem>_mask.png`` (0/255), the first one empty."""
    coco = json.loads((synthetic / "train.json").read_text())
    folder.mkdir()
    masks = {}
    by_image = {a["image_id"]: a for a in coco["annotations"]}
    for k, img in enumerate(coco["images"]):
        mask = segmentation_mask(by_image[img["id"]]["segmentation"], img["height"], img["width"])
        masks[img["file_name"]] = mask if k else np.zeros_like(mask)
        Image.fromarray(masks[img["file_name"]].astype(np.uint8) * 255).save(
            folder / f"{Path(img['file_name']).stem}_mask.png"
        )
    return masks


def test_import_masks_round_trip(synthetic: Path, tmp_path: Path) -> None:
    masks = write_masks(synthetic, tmp_path / "masks")
    coco = json.loads((synthetic / "train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    truth = {img["file_name"]: names[a["category_id"]] for img, a in zip(coco["images"], coco["annotations"])}
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "label"), *truth.items()])
    out = tmp_path / "rebuilt.json"
    args = [
        "import-masks",
        "--images",
        str(synthetic / "images"),
        "--masks",
        str(tmp_path / "masks"),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--out",
        str(out),
        "--mask-pattern",
        "{stem}_mask.png",
    ]
    assert main(args) == 0
    rebuilt = json.loads(out.read_text())
    rebuilt_names = {c["id"]: c["name"] for c in rebuilt["categories"]}
    # categories are the sorted label names
    assert list(rebuilt_names.values()) == sorted(set(truth.values()))
    for img, ann in zip(rebuilt["images"], rebuilt["annotations"]):
        mask = segmentation_mask(ann["segmentation"], img["height"], img["width"])
        original = masks[img["file_name"]]
        iou = (mask & original).sum() / max((mask | original).sum(), 1)
        # pycocotools redraws the imported polygons as the mask they came from
        assert iou >= 0.99 or not original.any(), (img["file_name"], iou)
        assert rebuilt_names[ann["category_id"]] == truth[img["file_name"]]
        assert ann["area"] == int(original.sum())
    # the empty mask becomes the "no lesion" annotation
    first = rebuilt["annotations"][0]
    assert (first["segmentation"], first["area"], first["bbox"]) == ([], 0, [0, 0, 0, 0])
    # whatever else is in the folder (the synthetic val/test images) is skipped
    assert rebuilt["info"]["skipped"] == 12
    assert main(["check", "--coco", str(out)]) == 0


def test_import_masks_missing_mask_is_one_line(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_masks(synthetic, tmp_path / "masks")
    first = sorted((tmp_path / "masks").iterdir())[0]
    first.unlink()
    coco = json.loads((synthetic / "train.json").read_text())
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "label"), *((img["file_name"], "x") for img in coco["images"])])
    args = [
        "import-masks",
        "--images",
        str(synthetic / "images"),
        "--masks",
        str(tmp_path / "masks"),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--out",
        str(tmp_path / "o.json"),
    ]
    assert main([*args, "--mask-pattern", "{stem}_mask.png"]) == 2
    one_error_line(capsys, first.name, "not found")
    assert main([*args, "--label-column", "class"]) == 2
    one_error_line(capsys, "labels.csv", "'class'")
    assert not (tmp_path / "o.json").exists()


def test_mask_polygons_follow_pixel_edges() -> None:
    from medtune.data.tools.import_masks import mask_polygons

    mask = np.zeros((6, 7), dtype=bool)
    mask[1:4, 2:5] = True  # 3 x 3 block at x 2..4, y 1..3
    [polygon] = mask_polygons(mask)
    xs, ys = polygon[0::2], polygon[1::2]
    # the outline sits a quarter pixel inside the block's outer edges (x 2..5, y 1..4)
    assert (min(xs), max(xs), min(ys), max(ys)) == (2.25, 4.75, 1.25, 3.75)
    assert (segmentation_mask([polygon], 6, 7) == mask).all()


# ---------------------------------------------------------------- defects, imports


def test_inject_defects_refuses_a_foreign_folder(synthetic: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(synthetic, copy, ignore=shutil.ignore_patterns("defects"))
    (copy / "defects").mkdir()
    (copy / "defects" / "mine.txt").write_text("keep me")
    with pytest.raises(cocoio.DataError, match="not written by inject_defects"):
        inject_defects(copy, seed=0)
    assert (copy / "defects" / "mine.txt").exists()


def test_tools_do_not_import_torch() -> None:
    code = (
        "import sys; import medtune.data.check, medtune.data.split, medtune.data.tools.stats, medtune.data.tools.simplify, "
        "medtune.data.tools.import_masks, medtune.data.tools.defects; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_data_tool_prints_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # argparse formats each help text when printing it: a stray '%' raised a TypeError there.
    with pytest.raises(SystemExit) as exit_info:
        main([command, "-h"])
    assert exit_info.value.code == 0 and command in capsys.readouterr().out
