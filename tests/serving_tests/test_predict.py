"""``predict.py`` and the logged pyfunc on the session's shared launches: the registered champions give back
what their launch logged on the test split, on raw images of any size, and a masked classifier runs the
segmenter version it was trained with even after the champion moved."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from pycocotools import mask as rle

import predict
from medtune.data.cache import letterbox
from medtune.data.coco import resolve_dataset
from medtune.data.imageio import read_image
from medtune.publish.single import registered_name
from medtune.tracking.registry import CHAMPION
from tests.helpers import Workspace, runs_of
from tests.serving_tests.test_model_trust import log_tiny_segmenter

pytestmark = pytest.mark.slow


def _launch(ws: Workspace, experiment: str) -> tuple[MlflowClient, object, str]:
    """The experiment's first launch (parent run) and the ``models:/name/version`` it registered."""
    client = MlflowClient(ws.tracking_uri, registry_uri=ws.tracking_uri)
    parent = runs_of(client, experiment)[0][0]
    return client, parent, f"models:/{parent.data.tags['registered_model']}"


def _logged(ws: Workspace, run_id: str) -> dict[str, np.ndarray]:
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="test_predictions.npz", tracking_uri=ws.tracking_uri
    )
    return dict(np.load(path))


def _predict(ws: Workspace, model: str, source: Path, out: Path) -> None:
    assert (
        predict.main(["--model", model, "--input", str(source), "--out", str(out), "--tracking-uri", ws.tracking_uri])
        == 0
    )


def _table(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def _test_files(synth_dir: Path) -> dict[int, str]:
    return {img["id"]: img["file_name"] for img in json.loads((synth_dir / "test.json").read_text())["images"]}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _pyfunc(ws: Workspace, uri: str) -> mlflow.pyfunc.PyFuncModel:
    mlflow.set_tracking_uri(ws.tracking_uri)
    mlflow.set_registry_uri(ws.tracking_uri)
    return mlflow.pyfunc.load_model(uri)


def test_segmenter_champion_reproduces_the_logged_test_masks(
    shared_workspace: Workspace, seg_launch: subprocess.CompletedProcess, synth_dir: Path, tmp_path: Path
) -> None:
    client, parent, uri = _launch(shared_workspace, "segmentation")
    name, version = uri.removeprefix("models:/").split("/")
    dataset = resolve_dataset(synth_dir, cache_root=shared_workspace.root / "cache")
    # The launch's champion: registered under the dataset's segmenter name and promoted.
    assert name == registered_name("segmentation", "segmentation", dataset.name, dataset.fingerprint)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == version
    _predict(shared_workspace, f"models:/{name}@{CHAMPION}", synth_dir / "test.json", tmp_path)
    coco = json.loads((tmp_path / "predictions.json").read_text())
    entries = {img["id"]: img for img in coco["images"]}
    logged, size = _logged(shared_workspace, parent.info.run_id), int(coco["info"]["model"]["image_size"])
    assert len(logged["probs"]) == len(entries) == len(_test_files(synth_dir))  # every test image has its map
    for image_id, probs in zip(logged["image_ids"], logged["probs"]):
        entry = entries[int(image_id)]
        png = np.asarray(Image.open(tmp_path / entry["mask_file"]))
        original = read_image(synth_dir / "images" / entry["file_name"])
        # The mask is at the image's own size; letterboxed back as the cache does, it is the launch's mask.
        assert png.shape == (original.height, original.width) and entry["lesion_area"] == int((png > 0).sum())
        back = letterbox(Image.fromarray(png), size, Image.BILINEAR) >= 128
        assert _iou(back, probs[0] >= 0.5) >= 0.99, image_id
    # One RLE annotation per image with a lesion, decoding to its PNG.
    for ann in coco["annotations"]:
        png = np.asarray(Image.open(tmp_path / entries[ann["image_id"]]["mask_file"])) > 0
        assert np.array_equal(
            rle.decode({**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}), png
        )
    assert len(coco["annotations"]) == sum(1 for e in entries.values() if e["lesion_area"] > 0) > 0


def test_best_whole_classifier_is_registered_and_reproduces_the_logged_probabilities(
    shared_workspace: Workspace, cls_launch: subprocess.CompletedProcess, synth_dir: Path, tmp_path: Path
) -> None:
    client, parent, uri = _launch(shared_workspace, "whole_cls")
    name, version = uri.removeprefix("models:/").split("/")
    dataset = resolve_dataset(synth_dir, cache_root=shared_workspace.root / "cache")
    tags = client.get_model_version(name, version).tags
    # Registered as <space>-<dataset>-<fingerprint>, tagged with the fingerprint, promoted (the first one).
    assert name == f"whole_cls-{dataset.name}-{dataset.fingerprint[:8]}"
    assert tags["dataset_fingerprint"] == dataset.fingerprint and parent.data.tags["promoted_to_champion"] == "true"
    _predict(shared_workspace, uri, synth_dir / "test.json", tmp_path)
    rows, files = _table(tmp_path / "predictions.csv"), _test_files(synth_dir)
    logged = _logged(shared_workspace, parent.info.run_id)
    ours = np.array([[float(rows[files[int(i)]][c]) for c in dataset.categories] for i in logged["image_ids"]])
    assert np.abs(ours - logged["probs"]).max() < 1e-4
    assert [rows[files[int(i)]]["label"] for i in logged["image_ids"]] == [
        dataset.categories[k] for k in logged["probs"].argmax(1)
    ]


def test_pyfunc_predicts_on_raw_images_of_a_new_size_as_predict_py_does(
    shared_workspace: Workspace,
    seg_launch: subprocess.CompletedProcess,
    cls_launch: subprocess.CompletedProcess,
    synth_dir: Path,
    tmp_path: Path,
) -> None:
    first = sorted((synth_dir / "images").iterdir())[0]
    raw = np.asarray(read_image(first).resize((45, 70), Image.BILINEAR))  # not square, not the trained 32 px
    Image.fromarray(raw).save(tmp_path / "raw.png")
    _, _, seg_uri = _launch(shared_workspace, "segmentation")
    segmenter = _pyfunc(shared_workspace, seg_uri)
    # The signature: uint8 RGB images of any size; the facts travel in the model's metadata.
    assert segmenter.metadata.get_input_schema().inputs[0].shape == (-1, -1, -1, 3)
    size = int(segmenter.metadata.metadata["medtune"]["image_size"])
    answer = segmenter.predict(raw[None])
    assert answer["mask"].shape == (1, 70, 45) and set(np.unique(answer["mask"])) <= {0, 1}
    # The mask lands where the lesion is: letterboxed back, it is the mask of the letterboxed image
    # (inside the image's part of the square: the padding is not part of the image).
    square = segmenter.predict(letterbox(Image.fromarray(raw), size, Image.BILINEAR)[None])["mask"][0] > 0
    back = letterbox(Image.fromarray(answer["mask"][0] * 255), size, Image.BILINEAR) >= 128
    inside = letterbox(Image.fromarray(np.full(raw.shape[:2], 255, np.uint8)), size, Image.BILINEAR) >= 128
    assert 0 < inside.sum() < size * size and _iou(back & inside, square & inside) >= 0.9
    # predict.py writes the same mask.
    _predict(shared_workspace, seg_uri, tmp_path / "raw.png", tmp_path / "seg")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "seg" / "masks" / "raw.png.png")) > 0, answer["mask"][0] > 0)
    _, _, cls_uri = _launch(shared_workspace, "whole_cls")
    table = _pyfunc(shared_workspace, cls_uri).predict(raw[None])
    classes = list(table.columns[1:])
    assert table.shape == (1, 1 + len(classes)) and table[classes].sum(axis=1).iloc[0] == pytest.approx(1.0, abs=1e-5)
    _predict(shared_workspace, cls_uri, tmp_path / "raw.png", tmp_path / "cls")
    row = _table(tmp_path / "cls" / "predictions.csv")["raw.png"]
    assert row["label"] == table["label"].iloc[0]
    assert [float(row[c]) for c in classes] == pytest.approx(table[classes].iloc[0].tolist(), abs=1e-6)


def test_masked_classifier_runs_its_recorded_segmenter_after_a_newer_champion(
    shared_workspace: Workspace, masked_launch: subprocess.CompletedProcess, synth_dir: Path, tmp_path: Path
) -> None:
    _, parent, uri = _launch(shared_workspace, "masked_cls")
    # A copy of the store where the segmenter's champion then moves to another network (its fold 0 model).
    # Only the database is copied: it names the artifacts by absolute path in the shared store.
    (tmp_path / "store").mkdir()
    shutil.copy2(shared_workspace.root / "mlflow.db", tmp_path / "store" / "mlflow.db")
    ws = Workspace(tmp_path / "store")
    client = MlflowClient(ws.tracking_uri, registry_uri=ws.tracking_uri)
    recorded = parent.data.tags["segmenter_version"]
    seg_name, seg_version = recorded.split("/")
    seg_run = client.get_model_version(seg_name, seg_version).run_id
    mlflow.set_tracking_uri(ws.tracking_uri)
    mlflow.set_registry_uri(ws.tracking_uri)
    folds = mlflow.artifacts.load_dict(f"runs:/{seg_run}/fold_models.json")["folds"]
    newer = mlflow.register_model(folds[0]["model_uri"], seg_name)
    client.set_registered_model_alias(seg_name, CHAMPION, newer.version)
    facts = _pyfunc(ws, uri).metadata.metadata["medtune"]
    best = client.get_run(parent.data.tags["best_run_id"]).data.params
    # The classifier carries its segmenter version and the mask mode it was trained with ...
    assert f"{facts['segmenter']['name']}/{facts['segmenter']['version']}" == recorded != f"{seg_name}/{newer.version}"
    assert facts["mask_mode"] == best["data.mask_mode"]
    # ... and predict.py, which runs that version, gives back the launch's test probabilities.
    _predict(ws, uri, synth_dir / "test.json", tmp_path / "out")
    rows, files = _table(tmp_path / "out" / "predictions.csv"), _test_files(synth_dir)
    logged = _logged(ws, parent.info.run_id)
    ours = np.array([[float(rows[files[int(i)]][c]) for c in facts["classes"]] for i in logged["image_ids"]])
    assert np.abs(ours - logged["probs"]).max() < 1e-4


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "seg-x/1"], "expected models:/<name>@<alias>"),
        (["--model", "models:/nope/1"], "cannot load it"),
        (["--model", "models:/nope/1", "--input", "missing.png"], "no such file or folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    shared_workspace: Workspace,
    seg_launch: subprocess.CompletedProcess,
    synth_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    args: list[str],
    expected: str,
) -> None:
    argv = ["--input", str(synth_dir / "test.json"), "--out", str(tmp_path), "--tracking-uri"]
    argv = [*argv, shared_workspace.tracking_uri, *args]  # a later --input overrides the first
    assert predict.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store with a tiny segmenter ``models:/seg-tiny/1`` logged as launch.py logs one (no search)."""
    return log_tiny_segmenter(tmp_path_factory.mktemp("tiny"))


def _scan(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(path)
    return path


def _tiny_predict(store: str, source: Path, out: Path, *flags: str) -> int:
    argv = ["--model", "models:/seg-tiny/1", "--input", str(source), "--out", str(out), "--tracking-uri", store]
    return predict.main([*argv, *flags])


@pytest.mark.e2e
def test_masks_keep_the_source_extension(tiny_store: str, tmp_path: Path) -> None:
    _scan(tmp_path / "in" / "scan.jpg", 0)
    _scan(tmp_path / "in" / "scan.png", 1)
    assert _tiny_predict(tiny_store, tmp_path / "in", tmp_path / "out") == 0
    entries = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    # scan.jpg and scan.png: two images, two mask files, each named after its whole source name.
    assert sorted(e["mask_file"] for e in entries) == ["masks/scan.jpg.png", "masks/scan.png.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["scan.jpg.png", "scan.png.png"]


@pytest.mark.e2e
def test_unreadable_later_image_leaves_the_output_folder_as_it_was(
    tiny_store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _scan(tmp_path / "in" / "a.png", 0)
    (tmp_path / "in" / "b.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("an earlier run's\n")
    # One image per batch: a.png's mask is computed and written before b.png is read.
    assert _tiny_predict(tiny_store, tmp_path / "in", out, "--batch-size", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "b.png" in err and "\n" not in err and "Traceback" not in err
    # No partial masks/, the earlier predictions untouched, no temporary folder left beside it.
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json"]
    assert (out / "predictions.json").read_text() == "an earlier run's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    # Once the image is fixed, the run replaces the earlier results.
    _scan(tmp_path / "in" / "b.png", 1)
    assert _tiny_predict(tiny_store, tmp_path / "in", out) == 0
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 2
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png.png", "b.png.png"]


def test_coco_file_naming_one_image_twice_is_refused(
    tiny_store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _scan(tmp_path / "images" / "scan.png", 0)
    image = {"file_name": "scan.png", "width": 20, "height": 24}
    coco = {"images": [{**image, "id": 1}, {**image, "id": 2}], "annotations": [], "categories": []}
    (tmp_path / "test.json").write_text(json.dumps(coco))
    # Two entries would write one mask file: refused in one line before anything is written.
    assert _tiny_predict(tiny_store, tmp_path / "test.json", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "'scan.png' appears twice" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
