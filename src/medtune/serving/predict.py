"""``predict.py``: run a logged or registered medtune model on new images and write what it answers.

The model is loaded with ``mlflow.pyfunc.load_model`` and asked through its own ``MedtuneModel``
(``medtune.serving.model``), so the command, a pyfunc caller and a served model give the same answers.
Loading runs the code stored with the model: it is checked first (``medtune.serving.trust``), and a
model whose code is not this medtune's is refused unless ``--trust-model-code``.
Images are decoded by ``medtune.data.imageio.read_image`` (any size; EXIF, 16-bit, DICOM) and sent in
batches of images of any mix of sizes.

What it writes under ``--out``:

* a segmenter: ``masks/<image name>.png`` (the name keeps its extension, ``scan.jpg`` ->
  ``masks/scan.jpg.png``: ``scan.jpg`` and ``scan.png`` never share a mask; 0 / 255, at the image's
  own size, letterbox undone) and ``predictions.json``, COCO with one RLE annotation per image with a lesion (``pycocotools.mask``),
  and per image ``lesion_area`` (pixels) and ``lesion_fraction``;
* a classifier: ``predictions.csv``, one row per image: ``file``, ``label`` (the class name) and one
  probability column per class. A masked classifier first runs the segmenter version recorded in its
  facts (``models:/<name>/<version>``), with the mask mode and threshold it was trained with.

Everything is written into a temporary folder beside ``--out`` and moved into ``--out`` at the end
(replacing an earlier run's ``masks/`` and predictions file), so a failure half-way (an unreadable
image) leaves ``--out`` as it was.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medtune.data.cocoio import DataError, escapes, images_dir_for, load_coco
from medtune.data.imageio import read_image
from medtune.serving.model import BATCH, MedtuneModel

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm"}
URI_FORMS = "models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>"


class PredictError(ValueError):
    """A bad --model, --input or --out, as one line."""


@dataclass(frozen=True)
class Item:
    """One input image: its file, the id it gets in the output, and its name there (relative path)."""

    path: Path
    image_id: int
    name: str


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Predict with a logged or registered medtune model.")
    p.add_argument("--model", required=True, help=URI_FORMS)
    p.add_argument("--input", required=True, type=Path, help="an image, a folder of images, or a COCO JSON file")
    p.add_argument("--out", required=True, type=Path, help="folder for the masks / predictions (created)")
    p.add_argument("--tracking-uri", help="MLflow tracking and registry URI [sqlite mlflow.db in the project folder]")
    p.add_argument("--batch-size", type=int, default=BATCH, help=f"images per forward pass [{BATCH}]")
    p.add_argument(
        "--trust-model-code",
        action="store_true",
        help="load a model whose stored code is not this medtune's (read its source first: loading runs it)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit status (2 with one line on stderr for bad input)."""
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download otherwise
    from medtune.tracking.store import TrackingError

    try:
        written = run(
            args.model,
            args.input,
            args.out,
            tracking_uri=args.tracking_uri,
            batch_size=args.batch_size,
            trust_code=args.trust_model_code,
        )
    except (PredictError, DataError, TrackingError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0


def run(
    model_uri: str,
    source: Path,
    out: Path,
    *,
    tracking_uri: str | None = None,
    batch_size: int = BATCH,
    trust_code: bool = False,
) -> str:
    """Predict every image of ``source`` with ``model_uri`` into ``out``; returns what was written."""
    if batch_size < 1:
        raise PredictError(f"--batch-size: expected a positive integer, got {batch_size}")
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out}: not a folder")
    items = collect(source)
    model = load(model_uri, tracking_uri, trust_code=trust_code)
    staging = stage_beside(out)
    try:
        predict_into(model, items, staging, batch_size)
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if model.facts.report_kind == "segmentation":
        return f"{len(items)} masks to {out / 'masks'} and {out / 'predictions.json'}"
    return f"{len(items)} predictions to {out / 'predictions.csv'}"


def predict_into(model: MedtuneModel, items: list[Item], out: Path, batch_size: int) -> None:
    """Write the masks and ``predictions.json`` (segmenter) or ``predictions.csv`` (classifier) into ``out``."""
    segmenter = model.facts.report_kind == "segmentation"
    rows: list[dict] = []  # per image: its COCO image entry (segmenter) or its probabilities (classifier)
    for start in range(0, len(items), batch_size):  # a batch at a time: full-size masks are not all kept
        chunk = items[start : start + batch_size]
        probs = model.probabilities([np.asarray(read_image(item.path)) for item in chunk], batch_size=batch_size)
        rows += [write_mask(model, item, p, out) if segmenter else p for item, p in zip(chunk, probs)]
    if segmenter:
        write_coco(model, rows, out)
    else:
        write_table(model, items, rows, out / "predictions.csv")


def stage_beside(out: Path) -> Path:
    """A new empty folder next to ``out`` (same file system, so moving from it is a rename)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.predict-", dir=out.parent))
    except OSError as err:
        raise PredictError(f"--out {out}: cannot create a folder beside it ({err.strerror})") from None


def publish(staging: Path, out: Path) -> None:
    """Move what ``staging`` holds into ``out``, replacing an earlier run's entries of the same names.

    ``masks/`` first, the predictions file last: a predictions file in ``out`` means its masks are there.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        old = staging / ".replaced"
        old.mkdir()
        for entry in sorted(staging.iterdir(), key=lambda p: (p.name.startswith("predictions"), p.name)):
            if entry == old:
                continue
            target = out / entry.name
            if target.exists() or target.is_symlink():
                target.rename(old / entry.name)  # removed with the staging folder
            entry.rename(target)
    except OSError as err:
        raise PredictError(f"--out {out}: cannot move the results into it ({err.strerror})") from None


def load(model_uri: str, tracking_uri: str | None, *, trust_code: bool = False) -> MedtuneModel:
    """The medtune model behind ``model_uri`` (its segmenter too, for a masked classifier), or one line why not.

    Its stored code is checked before it runs (``medtune.serving.trust``) unless ``trust_code``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from medtune.serving.trust import UntrustedModel, load_pyfunc
    from medtune.tracking.store import default_tracking_uri, open_client, sqlite_file

    if not model_uri.startswith(("models:/", "runs:/")) or model_uri.rstrip("/") in ("models:", "runs:"):
        raise PredictError(f"--model {model_uri}: expected {URI_FORMS}")
    uri = tracking_uri or default_tracking_uri()
    store = sqlite_file(uri)
    if store is not None and not store.is_file():
        raise PredictError(f"--tracking-uri {uri}: no such store (run launch.py first, or pass the store's URI)")
    open_client(uri)  # migrated under the store's lock if another process is opening it too
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        loaded = load_pyfunc(model_uri, trust=trust_code)
    except UntrustedModel as err:  # the model, or the segmenter a masked classifier loads in turn
        whose = "" if str(err).startswith(model_uri) else f"{model_uri}: its segmenter "
        raise PredictError(f"--model {whose}{err}") from None
    except Exception as err:  # noqa: BLE001 - not found, no such alias, unreadable: all a bad --model here
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PredictError(f"--model {model_uri}: cannot load it from {uri} ({why[:300]})") from None
    try:
        model = loaded.unwrap_python_model()
    except MlflowException:  # another flavor's pyfunc (e.g. an mlflow.pytorch model)
        model = None
    if not isinstance(model, MedtuneModel):
        raise PredictError(f"--model {model_uri}: not a medtune model (logged by launch.py since predict.py exists)")
    return model


def collect(source: Path) -> list[Item]:
    """The images of ``source``: one file, a folder's image files (recursively, sorted), or a COCO file's images."""
    if not source.exists():
        raise PredictError(f"--input {source}: no such file or folder")
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PredictError(f"--input {source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [Item(p, i + 1, p.relative_to(source).as_posix()) for i, p in enumerate(files)]
    if source.suffix.lower() == ".json":
        coco = load_coco(source)
        folder = images_dir_for(source, coco)
        items = []
        for img in coco["images"]:
            name = img.get("file_name") if isinstance(img, dict) else None
            if not isinstance(name, str) or not isinstance(img.get("id"), int) or escapes(name):
                raise DataError(f"{source}: image {img!r:.80}: expected an 'id' and a 'file_name' inside {folder}")
            items.append(Item(folder / name, img["id"], name))
        if not items:
            raise DataError(f"{source}: key 'images' is empty")
        return unique(items, source)
    return [Item(source, 1, source.name)]


def unique(items: list[Item], source: Path) -> list[Item]:
    """``items``, refused in one line when two share a ``file_name`` (their outputs would overwrite each other)."""
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise DataError(f"{source}: file_name {item.name!r} appears twice in 'images' (their masks would collide)")
        seen.add(item.name)
    return items


def write_mask(model: MedtuneModel, item: Item, prob: np.ndarray, out: Path) -> dict:
    """Write ``masks/<name>.png`` (at the image's size, the name with its extension); return its COCO image
    entry, ``rle`` included."""
    from pycocotools import mask as rle

    mask = (prob >= model.facts.threshold).astype(np.uint8)
    target = out / "masks" / f"{item.name}.png"  # scan.jpg -> scan.jpg.png: scan.png's mask is another file
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask * 255).save(target)
    height, width = mask.shape
    area = int(mask.sum())
    entry = {
        "id": item.image_id,
        "file_name": item.name,
        "width": width,
        "height": height,
        "mask_file": target.relative_to(out).as_posix(),
        "lesion_area": area,
        "lesion_fraction": area / (height * width),
    }
    if area:
        encoded = rle.encode(np.asfortranarray(mask))
        entry["rle"] = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
        entry["bbox"] = [float(v) for v in rle.toBbox(encoded)]
        entry["score"] = float(prob[mask > 0].mean())  # mean lesion probability inside the mask
    return entry


def write_coco(model: MedtuneModel, entries: list[dict], out: Path) -> None:
    """``predictions.json``: the image entries, one RLE annotation per image with a lesion."""
    annotations = []
    for entry in entries:
        if "rle" not in entry:
            continue
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": entry["id"],
                "category_id": 1,
                "segmentation": entry.pop("rle"),
                "area": entry["lesion_area"],
                "bbox": entry.pop("bbox"),
                "score": entry.pop("score"),
                "iscrowd": 0,
            }
        )
    coco = {
        "info": {"description": "medtune predict.py", "model": model.facts.to_json()},
        "images": entries,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "lesion"}],
    }
    (out / "predictions.json").write_text(json.dumps(coco, indent=1) + "\n", encoding="utf-8")


def write_table(model: MedtuneModel, items: list[Item], probs: list[np.ndarray], path: Path) -> None:
    """``predictions.csv``: file, label, one probability per class."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", *model.facts.classes])
        for item, p in zip(items, probs):
            writer.writerow([item.name, model.label(p), *(f"{float(v):.8g}" for v in p)])
