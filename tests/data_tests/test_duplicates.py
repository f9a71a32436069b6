"""Near-duplicate detection (``medtune.data.duplicates``) and its use by ``check``, ``split``, ``stats``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from medtune.data import duplicates, similarity
from medtune.data.__main__ import main

SIZE = 64
N_DISTINCT = 30
COPIES = {0: 1, 3: 2, 7: 1, 12: 1, 20: 2}  # original index -> planted copies (groups of 2 and 3)


def distinct_image(seed: int) -> Image.Image:
    """A smooth random grey picture: 8 x 8 noise blown up to ``SIZE`` px (hashes of two differ a lot)."""
    cells = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    return Image.fromarray(cells).resize((SIZE, SIZE), Image.BICUBIC)


def planted_copy(image: Image.Image, k: int) -> Image.Image:
    """``image`` rescaled, cropped by 3 px, 10% brighter, rotated 2 degrees and saved as JPEG 60."""
    img = image.resize((SIZE * 9 // 10 + k, SIZE * 9 // 10 + k), Image.BILINEAR).crop(
        (3, 0, SIZE * 9 // 10 + k, SIZE * 9 // 10)
    )
    img = ImageEnhance.Brightness(img.rotate(2 * (-1) ** k, resample=Image.BILINEAR)).enhance(1.1)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("L")


def planted_set() -> tuple[list[Image.Image], list[list[int]]]:
    """Distinct images followed by planted copies, and the expected groups (indices)."""
    images = [distinct_image(seed) for seed in range(N_DISTINCT)]
    groups = []
    for original, n in COPIES.items():
        groups.append([original])
        for k in range(n):
            groups[-1].append(len(images))
            images.append(planted_copy(images[original], k))
    return images, groups


def write_dataset(folder: Path) -> tuple[Path, list[list[int]]]:
    """The planted set as PNGs and a COCO file (two classes, patient per image); groups as image ids."""
    images, groups = planted_set()
    (folder / "images").mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    for i, img in enumerate(images):
        img.save(folder / "images" / f"{i}.png")
        coco["images"].append(
            {"id": i + 1, "file_name": f"{i}.png", "width": img.width, "height": img.height, "patient_id": f"p{i // 4}"}
        )
        square = [1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0]
        coco["annotations"].append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1 + i % 2,
                "segmentation": [square],
                "area": 64.0,
                "bbox": [1, 1, 8, 8],
                "iscrowd": 0,
            }
        )
    path = folder / "all.json"
    path.write_text(json.dumps(coco))
    return path, [[i + 1 for i in group] for group in groups]


def test_detector_groups_planted_copies_and_only_them() -> None:
    images, expected = planted_set()
    prints = {i: duplicates.image_fingerprint(img) for i, img in enumerate(images)}
    found = duplicates.near_groups(prints, duplicates.Setting())
    # every planted copy joins its original; no two distinct images are grouped
    assert sorted(map(sorted, found)) == sorted(expected)
    # threshold 0 keeps exact copies only: transformed copies are not exact
    assert duplicates.near_groups(prints, duplicates.Setting(0, 1.0)) == []


def lookalikes(tmp_path: Path) -> list[Image.Image]:
    """Synthetic dermoscopy-like images at 64 px: every one a centred lesion on skin."""
    from medtune.data.tools.synth import generate

    generate(tmp_path / "synth", n=60, size=64, seed=0)
    return [Image.open(f).convert("RGB") for f in sorted((tmp_path / "synth" / "images").glob("*.png"))]


def test_lookalikes_are_not_grouped_but_their_copies_are(tmp_path: Path) -> None:
    images = lookalikes(tmp_path)
    prints = [duplicates.image_fingerprint(img) for img in images]
    candidates = duplicates.near_pairs(np.stack([p.bits for p in prints]), duplicates.DEFAULT_THRESHOLD)
    # the hash alone proposes look-alike pairs that chain into a large group (why verification exists)
    assert max(map(len, duplicates.union_groups(list(range(len(images))), candidates))) > 10
    # the correlation confirms none of them
    groups = duplicates.near_groups(dict(enumerate(prints)), duplicates.Setting())
    assert groups == [], groups
    originals = range(0, len(images), 6)
    prints += [duplicates.image_fingerprint(planted_copy(images[k].convert("L"), k % 2)) for k in originals]
    groups = duplicates.near_groups(dict(enumerate(prints)), duplicates.Setting())
    group_of = {i: set(g) for g in groups for i in g}
    # every planted copy (index len(images) + c) joins its original
    assert all(k in group_of.get(len(images) + c, ()) for c, k in enumerate(originals)), groups


def test_similarity_scores_copies_above_lookalikes() -> None:
    images, expected = planted_set()
    thumbs = np.stack([similarity.thumbnail(img) for img in images])
    copies = [(group[0], member) for group in expected for member in group[1:]]
    score = similarity.pair_similarity(thumbs, copies + [(0, 1), (2, 3), (0, 0)])
    # planted copies correlate above the default; distinct images below; identical thumbnails score 1
    assert (score[: len(copies)] >= duplicates.DEFAULT_SIMILARITY).all(), score
    assert (score[len(copies) : -1] < duplicates.DEFAULT_SIMILARITY).all() and score[-1] == 1.0, score


def framed(image: Image.Image, seed: int) -> Image.Image:
    """``image`` (RGB) seen through a dark circular frame (radius 0.3 of the side) with burnt-in text."""
    rng = np.random.default_rng(seed)
    side = image.width
    y, x = np.mgrid[:side, :side] + 0.5
    centre = side / 2 + rng.uniform(-0.5, 0.5, 2)
    inside = (((x - centre[0]) ** 2 + (y - centre[1]) ** 2) <= (0.3 * side) ** 2)[..., None]
    rgb = np.where(inside, np.asarray(image.convert("RGB"), dtype=np.float32), 10.0 + rng.normal(0, 2, (side, side, 1)))
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    ImageDraw.Draw(out).text((1, side - 11), "x20 SCOPE", fill=(255, 255, 255))
    return out


def framed_lesions(n: int, size: int = 96) -> list[Image.Image]:
    """``n`` distinct synthetic lesions (centred on skin: look-alikes) inside one dermoscope frame."""
    from medtune.data.tools.synth_render import render

    return [framed(render(np.random.default_rng(i), size, i % 3, i % 3)[0], i) for i in range(n)]


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


COPY_KINDS = {  # one transform per kind, at the strength the benchmark plants at most
    "rescale": lambda im: im.resize((im.width * 4 // 5, im.height * 4 // 5), Image.BILINEAR),
    "crop": lambda im: im.crop((3, 2, im.width - 2, im.height - 3)),  # 5% per side: the crop's frame moves
    "jpeg": jpeg,
    "brightness": lambda im: ImageEnhance.Brightness(im).enhance(0.85),
    "rotation": lambda im: im.rotate(4, resample=Image.BILINEAR),
}


@pytest.fixture(scope="module")
def lesions() -> list[Image.Image]:
    return framed_lesions(40)


def test_framed_distinct_lesions_form_no_group(lesions: list[Image.Image]) -> None:
    prints = {i: duplicates.image_fingerprint(img) for i, img in enumerate(lesions)}
    found = duplicates.near_grouping(prints, duplicates.Setting())
    # the shared frame joins nothing: no group, trusted or suspicious
    assert found.groups == [] and found.suspicious == [], found
    # the frame is found from the data: its pixels (thumbnail corners) weigh 0, the centre 1
    weights = similarity.content_weights(np.stack([p.thumb for p in prints.values()]))
    assert weights[0, 0] == 0 and weights[-1, -1] == 0 and weights[16, 16] == 1


@pytest.mark.parametrize("kind", sorted(COPY_KINDS))
def test_framed_transformed_copies_are_found(lesions: list[Image.Image], kind: str) -> None:
    originals = (0, 7, 22)
    images = lesions + [COPY_KINDS[kind](lesions[k]) for k in originals]
    found = duplicates.near_groups(
        {i: duplicates.image_fingerprint(im) for i, im in enumerate(images)}, duplicates.Setting()
    )
    # each copy is grouped with its original, and nothing else is grouped
    assert sorted(found) == [[k, len(lesions) + c] for c, k in enumerate(originals)], found


def test_brightness_only_copy_scores_one(lesions: list[Image.Image]) -> None:
    thumbs = [similarity.thumbnail(im) for im in lesions]
    weights = similarity.content_weights(np.stack(thumbs))
    darker = similarity.thumbnail(ImageEnhance.Brightness(lesions[3]).enhance(0.8))
    score = similarity.pair_similarity(np.stack([thumbs[3], darker]), [(0, 1)], weights=weights)
    # a brightness change scales the pixels: the normalised correlation is (almost exactly) 1
    assert score[0] >= 0.999, score


def textured(seed: int = 3) -> Image.Image:
    """A 128 px picture with detail at the thumbnail's scale (16 x 16 random cells, bicubic)."""
    cells = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    return Image.fromarray(cells).resize((128, 128), Image.BICUBIC)


def test_angle_refinement_matters() -> None:
    image = textured()
    thumbs = np.stack([similarity.thumbnail(image), similarity.thumbnail(image.rotate(1.5, resample=Image.BILINEAR))])
    refined = similarity.pair_similarity(thumbs, [(0, 1)])[0]
    grid_only = similarity.pair_similarity(thumbs, [(0, 1)], refine_from=2.0)[0]
    # 1.5 degrees lies halfway between grid angles: only the local search finds it (grid: about 0.984)
    assert refined >= 0.995 and grid_only < 0.99, (refined, grid_only)


def test_scale_refinement_matters() -> None:
    image = textured()
    zoomed = image.resize((137, 137), Image.BILINEAR).crop((4, 4, 132, 132))  # crop factor 0.934: off the grid
    thumbs = np.stack([similarity.thumbnail(image), similarity.thumbnail(zoomed)])
    refined = similarity.pair_similarity(thumbs, [(0, 1)])[0]
    grid_only = similarity.pair_similarity(thumbs, [(0, 1)], refine_from=2.0)[0]
    # the grid's crop factors are 0.9, 0.95, 1: the local search's scale steps reach 0.934 (grid: about 0.978)
    assert refined >= 0.985 and grid_only < 0.982, (refined, grid_only)


def test_bilinear_sampler_matches_scipy() -> None:
    from scipy.ndimage import map_coordinates

    thumb = np.random.default_rng(0).uniform(0, 255, (similarity.THUMB, similarity.THUMB)).astype(np.float32)
    params = np.array([[0.0, 1.0, 1.0, 0.3, -0.2], [np.deg2rad(2.5), 0.93, 0.97, 1.1, 0.7]])
    x, y = similarity._coordinates(params)
    inner = np.arange(similarity.MARGIN, similarity.THUMB - similarity.MARGIN)
    cols, rows = (a.ravel() for a in np.meshgrid(inner, inner))
    # no rotation or scale: a shift of (0.3, -0.2) pixels moves every sample by exactly that
    assert np.allclose(x[0], cols + 0.3) and np.allclose(y[0], rows - 0.2)
    index, weight = similarity._sampling(params)
    sampled = (thumb.ravel()[index] * weight).sum(axis=0)
    # the bilinear sampler equals scipy's order-1 interpolation at the same sub-pixel coordinates
    assert np.allclose(sampled, map_coordinates(thumb, [y.ravel(), x.ravel()], order=1).reshape(x.shape), atol=1e-3)


def test_a_chain_is_not_one_group() -> None:
    a, c = (np.asarray(distinct_image(seed), dtype=np.float32) for seed in (40, 41))
    b = (a + c) / 2  # like both (correlation about 0.7), while a and c are unlike
    images = [Image.fromarray(x.astype(np.uint8)) for x in (a, b, c)]
    prints = {i: duplicates.image_fingerprint(im) for i, im in enumerate(images)}
    setting = duplicates.Setting(duplicates.HASH_BITS - 1, 0.6)
    assert len(duplicates.confirmed_pairs(list(prints.values()), setting)) == 2  # a~b and b~c, not a~c
    # b joins one of them; a and c never share a group
    assert duplicates.near_groups(prints, setting) in ([[0, 1]], [[1, 2]])


def test_coherent_groups_merge_only_mostly_confirmed_groups() -> None:
    table = {(0, 1): 0.99, (1, 2): 0.98, (0, 2): 0.5, (2, 3): 0.97, (0, 3): 0.96, (1, 3): 0.95}

    def scores(pairs: list[tuple[int, int]]) -> np.ndarray:
        return np.array([table.get((min(p), max(p)), 0.0) for p in pairs])

    edges = sorted(table, key=table.get, reverse=True)
    # {0, 1} then 2 (1 of 2 cross pairs: refused), {2, 3}, then {0, 1} + {2, 3}: 3 of 4 cross pairs (< 80%)
    assert duplicates.coherent_groups(edges, scores, 0.94) == [[0, 1], [2, 3]]
    table[(0, 2)] = 0.95  # now every pair is confirmed: one group
    assert duplicates.coherent_groups(edges, scores, 0.94) == [[0, 1, 2, 3]]


def test_two_copy_pairs_of_lookalikes_stay_apart_while_a_second_copy_joins() -> None:
    # scores as measured on the synthetic benchmark set: copies 0.99+, look-alikes 0.94-0.96
    table = {(0, 1): 0.995, (2, 3): 0.994, (0, 2): 0.95, (0, 3): 0.951, (1, 2): 0.947, (1, 3): 0.952}
    table |= {(4, 5): 0.996, (4, 6): 0.985, (5, 6): 0.978}  # an original (4) and two copies

    def scores(pairs: list[tuple[int, int]]) -> np.ndarray:
        return np.array([table.get((min(p), max(p)), 0.0) for p in pairs])

    edges = sorted(table, key=table.get, reverse=True)
    # every cross pair of {0, 1} and {2, 3} is confirmed (>= 0.94) but 0.045 below their own level:
    # two pictures with a copy each, not four copies; the second copy (6) joins its original
    assert sorted(duplicates.coherent_groups(edges, scores, 0.94)) == [[0, 1], [2, 3], [4, 5, 6]]


def test_candidates_are_bounded_per_image() -> None:
    rng = np.random.default_rng(0)
    n, k = 600, 8
    hashes = np.zeros((n, 16), dtype=np.uint8)  # every pair within any threshold: the quadratic case
    rows = similarity._unit_rows(rng.normal(size=(n, 12)).astype(np.float32))
    rows[[5, 9]] = rows[3]  # two exact copies of row 3
    rows[[20, 21]] = 0.0  # two flat images
    pairs = duplicates.candidate_pairs(hashes, rows, threshold=0, floor=-1.0, k=k)
    # at most k per image (not n^2 / 2), each image's best k among them, copies and flat images included
    assert len(pairs) <= k * n and len(set(pairs)) == len(pairs) and all(i < j for i, j in pairs)
    best = np.argsort(-(rows[100] @ rows.T))[1 : k + 1]
    assert all((min(100, j), max(100, j)) in pairs for j in best)
    assert {(3, 5), (3, 9), (5, 9), (20, 21)} <= set(pairs)
    # the hash still gates: nothing within 0 bits of a different hash
    hashes[1::2, 0] = 255
    assert all((i - j) % 2 == 0 for i, j in duplicates.candidate_pairs(hashes, rows, threshold=0, floor=-1.0, k=k))


def test_a_large_group_is_suspicious_unless_accepted(lesions: list[Image.Image]) -> None:
    many = [ImageEnhance.Brightness(lesions[0]).enhance(1 - 0.01 * k) for k in range(12)]  # 12 > group_bound(52)
    prints = {i: duplicates.image_fingerprint(im) for i, im in enumerate(lesions[1:] + many)}
    assert duplicates.group_bound(len(prints)) == 10
    found = duplicates.near_grouping(prints, duplicates.Setting())
    # the 12 are one coherent group, over the bound: reported apart, not returned for splits
    assert found.groups == [] and [len(g) for g in found.suspicious] == [12]
    assert duplicates.near_groups(prints, duplicates.Setting()) == []
    accepted = duplicates.near_grouping(prints, duplicates.Setting(accept_large=True))
    assert [len(g) for g in accepted.groups] == [12] and accepted.suspicious == []


def test_check_reports_a_suspicious_group(
    tmp_path: Path, lesions: list[Image.Image], capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "images").mkdir()
    images = lesions[:30] + [ImageEnhance.Brightness(lesions[0]).enhance(1 - 0.01 * k) for k in range(1, 12)]
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    for i, img in enumerate(images):
        img.save(tmp_path / "images" / f"{i}.png")
        coco["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": img.width, "height": img.height})
        box = [1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0]
        coco["annotations"].append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "segmentation": [box],
                "area": 64.0,
                "bbox": [1, 1, 8, 8],
                "iscrowd": 0,
            }
        )
    (tmp_path / "all.json").write_text(json.dumps(coco))
    assert main(["check", "--coco", str(tmp_path / "all.json")]) == 0
    out = capsys.readouterr().out
    # one line with the group's size and a few file names; the group is not listed as a near-duplicate group
    assert "suspicious near-duplicate group of 12 images" in out and "0.png, 30.png, 31.png, ..." in out, out
    assert "near duplicates (" not in out
    assert main(["check", "--coco", str(tmp_path / "all.json"), "--accept-groups"]) == 0
    out = capsys.readouterr().out
    assert "suspicious" not in out and "group of 12:" in out, out


def test_exact_copy_mode_groups_exact_copies() -> None:
    images, _ = planted_set()
    prints = {i: duplicates.image_fingerprint(img) for i, img in enumerate(images)}
    prints["copy of 4"] = duplicates.image_fingerprint(images[4].copy())
    prints["copy of 9"] = duplicates.image_fingerprint(images[9].copy())
    # threshold 0, similarity 1: only the identical pictures are grouped
    assert duplicates.near_groups(prints, duplicates.Setting(0, 1.0)) == [[4, "copy of 4"], [9, "copy of 9"]]


def test_union_groups_is_transitive() -> None:
    # 0-1 and 1-2 are pairs, so 0, 1, 2 form one group even without the pair 0-2
    assert duplicates.union_groups(list("abcde"), [(0, 1), (1, 2), (3, 3)]) == [["a", "b", "c"]]


def test_check_lists_groups_and_a_straddling_group_fails_a_split_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source, groups = write_dataset(tmp_path)
    assert main(["check", "--coco", str(source)]) == 0  # near duplicates in one file: information
    out = capsys.readouterr().out
    assert f"near duplicates ({duplicates.Setting().label}): {len(groups)} group(s)" in out
    coco = json.loads(source.read_text())
    original, copy = groups[0][0], groups[0][1]
    test_ids = {original} | set(range(25, 31))
    folder = tmp_path / "split"
    folder.mkdir()
    for split, keep in (
        ("train", lambda i: i not in test_ids and i != copy),
        ("val", lambda i: i == copy),
        ("test", lambda i: i in test_ids),
    ):
        part = {**coco, "images": [m for m in coco["images"] if keep(m["id"])]}
        part["annotations"] = [a for a in coco["annotations"] if keep(a["image_id"])]
        part["info"] = {"images_dir": str(tmp_path / "images")}
        (folder / f"{split}.json").write_text(json.dumps(part))
    assert main(["check", "--coco", str(folder)]) == 1
    out = capsys.readouterr().out
    # the straddling group is named with its splits, ids and file names
    assert f"id val:{copy} ({copy - 1}.png)" in out and f"id test:{original} ({original - 1}.png)" in out
    assert "straddling_duplicates: 1 group(s)" in out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_never_separates_a_group(tmp_path: Path, capsys: pytest.CaptureFixture, seed: int) -> None:
    source, groups = write_dataset(tmp_path)
    args = [
        "split",
        "--coco",
        str(source),
        "--out",
        str(tmp_path / "s"),
        "--seed",
        str(seed),
        "--group-by",
        "patient_id",
    ]
    assert main(args) == 0
    assert f"kept {len(groups)} near-duplicate groups" in capsys.readouterr().out
    where = {}
    for split in ("train", "val", "test"):
        for img in json.loads((tmp_path / "s" / f"{split}.json").read_text())["images"]:
            where[img["id"]] = (split, img["patient_id"])
    # each duplicate group lies in one split, and so does each patient (--group-by still holds)
    assert all(len({where[i][0] for i in group}) == 1 for group in groups)
    by_patient: dict[str, set[str]] = {}
    for split, patient in where.values():
        by_patient.setdefault(patient, set()).add(split)
    assert all(len(splits) == 1 for splits in by_patient.values())
    assert main(["check", "--coco", str(tmp_path / "s")]) == 0
    assert f"{len(groups)} duplicate group(s), 0 straddling" in capsys.readouterr().out


def test_split_opt_out_can_separate_groups(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, groups = write_dataset(tmp_path)
    separated = 0
    for seed in range(4):
        assert (
            main(
                [
                    "split",
                    "--coco",
                    str(source),
                    "--out",
                    str(tmp_path / "s"),
                    "--seed",
                    str(seed),
                    "--ignore-duplicates",
                ]
            )
            == 0
        )
        splits = {
            img["id"]: s
            for s in ("train", "val", "test")
            for img in json.loads((tmp_path / "s" / f"{s}.json").read_text())["images"]
        }
        separated += sum(len({splits[i] for i in group}) > 1 for group in groups)
    # without grouping, the random split puts some group across the line (what the default prevents)
    assert separated > 0


def test_stats_prints_the_group_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, groups = write_dataset(tmp_path)
    assert main(["stats", "--coco", str(source)]) == 0
    n_images = sum(map(len, groups))
    assert f"{len(groups)} groups, {n_images} images" in capsys.readouterr().out
    assert main(["stats", "--coco", str(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["duplicate_groups"]["groups"] == len(groups)


@pytest.mark.parametrize("command", ["check", "split", "stats"])
@pytest.mark.parametrize(
    ("flag", "value"),
    [("--near-threshold", v) for v in ("abc", "-1", "128")]
    + [("--near-similarity", v) for v in ("x", "-0.1", "1.5", "nan")],
)
def test_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, command: str, flag: str, value: str
) -> None:
    source, _ = write_dataset(tmp_path)
    extra = ["--out", str(tmp_path / "s")] if command == "split" else []
    assert main([command, "--coco", str(source), *extra, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err, err
