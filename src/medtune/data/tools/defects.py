"""Inject one known instance of every problem ``check`` detects into a copy of a clean dataset.

``inject_defects(out, seed=...)`` reads ``out/train.json`` (a clean synthetic set) and writes
``out/defects/train.json``, the image files it needs in ``out/defects/images/`` (copies) and
``out/defects/truth.json``, the list of injected defects. ``check`` on that file must report exactly
these, one per kind, which is what the tests and ``synth --defects`` rely on.
"""

from __future__ import annotations

import copy
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medtune.data import cocoio
from medtune.data.check import KINDS


def inject_defects(out_dir: Path, *, seed: int) -> dict:
    """Write the defective copy of ``out_dir/train.json`` into ``out_dir/defects``; returns the truth."""
    source = Path(out_dir) / "train.json"
    coco = cocoio.load_coco(source)
    src_images = cocoio.images_dir_for(source, coco)
    dst = Path(out_dir) / "defects"
    if dst.exists() and not (dst / "truth.json").is_file():
        raise cocoio.DataError(f"{dst}: exists and was not written by inject_defects; remove it first")
    staging = Path(tempfile.mkdtemp(prefix=".defects.", dir=out_dir))  # moved in whole at the end
    try:
        (staging / "images").mkdir()
        for img in coco["images"]:
            shutil.copyfile(src_images / img["file_name"], staging / "images" / img["file_name"])
        truth = _Injector(coco, staging / "images", random.Random(seed)).inject_all()
        cocoio.write_json_atomic(staging / "train.json", coco)
        cocoio.write_json_atomic(staging / "truth.json", truth)
        shutil.rmtree(dst, ignore_errors=True)
        staging.rename(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return truth


class _Injector:
    """Mutates ``coco`` in place; each method adds one defect and records it in ``self.defects``."""

    def __init__(self, coco: dict, images_dir: Path, rng: random.Random) -> None:
        self.coco, self.images_dir, self.rng = coco, images_dir, rng
        first_ann: dict = {}
        for ann in coco["annotations"]:
            first_ann.setdefault(ann["image_id"], ann)
        hosts = [img for img in coco["images"] if img["id"] in first_ann]
        if len(hosts) < 9:  # 8 defects alter an existing image, plus one untouched template
            raise cocoio.DataError("train.json: needs >= 9 annotated images to inject defects")
        self.hosts = rng.sample(hosts, len(hosts))  # each altering defect takes its own image
        self.template = self.hosts.pop()  # size and annotation for the new image entries
        self.first_ann = first_ann
        self.next_image_id = max(img["id"] for img in coco["images"]) + 1
        self.next_ann_id = max(ann["id"] for ann in coco["annotations"]) + 1
        self.defects: list[dict] = []

    def inject_all(self) -> dict:
        for kind in KINDS:
            getattr(self, kind)()
        return {"source": "train.json", "defects": self.defects, "counts": {d["kind"]: 1 for d in self.defects}}

    def _host(self) -> dict:
        return self.hosts.pop()

    def _record(self, kind: str, image_id: object, file_name: str | None, annotation_id: object = None) -> None:
        self.defects.append(
            {"kind": kind, "image_id": image_id, "file_name": file_name, "annotation_id": annotation_id}
        )

    def _annotation(self, image_id: int, like: dict, **changes: object) -> dict:
        ann = copy.deepcopy(self.first_ann[like["id"]])
        ann.update({"id": self.next_ann_id, "image_id": image_id, **changes})
        self.next_ann_id += 1
        self.coco["annotations"].append(ann)
        return ann

    def _new_image(self, file_name: str, like: dict, *, annotate: bool = True, image_id: int | None = None) -> dict:
        if image_id is None:
            image_id, self.next_image_id = self.next_image_id, self.next_image_id + 1
        img = {**like, "id": image_id, "file_name": file_name}
        self.coco["images"].append(img)
        if annotate:
            self._annotation(image_id, like)
        return img

    def _write_noise(self, file_name: str, like: dict) -> None:
        from PIL import Image

        noise = np.random.default_rng(self.rng.randrange(2**32)).integers(0, 256, (like["height"], like["width"], 3))
        Image.fromarray(noise.astype(np.uint8)).save(self.images_dir / file_name)

    def malformed_entry(self) -> None:
        host = self._host()
        ann = self._annotation(host["id"], host)
        del ann["category_id"]
        self._record("malformed_entry", None, None)

    def missing_file(self) -> None:
        img = self._new_image("missing.png", self.template)
        self._record("missing_file", img["id"], img["file_name"])

    def unreadable_file(self) -> None:
        img = self._new_image("corrupt.png", self.template)
        (self.images_dir / img["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        self._record("unreadable_file", img["id"], img["file_name"])

    def size_mismatch(self) -> None:
        host = self._host()
        host["width"] += 5  # larger than the file: its polygons stay inside
        self._record("size_mismatch", host["id"], host["file_name"])

    def escaping_file_name(self) -> None:
        img = self._new_image("../x.png", self.template)
        self._record("escaping_file_name", img["id"], img["file_name"])

    def absolute_file_name(self) -> None:
        img = self._new_image("/nonexistent/medtune/x.png", self.template)
        self._record("absolute_file_name", img["id"], img["file_name"])

    def duplicate_image_id(self) -> None:
        host = self._host()
        self._write_noise("same_id.png", host)
        img = self._new_image("same_id.png", host, annotate=False, image_id=host["id"])
        self._record("duplicate_image_id", img["id"], img["file_name"])

    def duplicate_annotation_id(self) -> None:
        host = self._host()
        ann = self._annotation(host["id"], host, id=self.first_ann[host["id"]]["id"])
        self._record("duplicate_annotation_id", host["id"], host["file_name"], ann["id"])

    def duplicate_category_id(self) -> None:
        first = self.coco["categories"][0]
        self.coco["categories"].append({"id": first["id"], "name": f"{first['name']}_again"})
        self._record("duplicate_category_id", None, None)

    def unknown_image(self) -> None:
        missing_id = self.next_image_id + 1000
        ann = self._annotation(missing_id, self.template)
        self._record("unknown_image", missing_id, None, ann["id"])

    def unknown_category(self) -> None:
        host = self._host()
        ann = self._annotation(host["id"], host, category_id=max(c["id"] for c in self.coco["categories"]) + 100)
        self._record("unknown_category", host["id"], host["file_name"], ann["id"])

    def degenerate_polygon(self) -> None:
        host = self._host()
        ann = self._annotation(host["id"], host, segmentation=[[1.0, 1.0, 2.0, 2.0]], area=0)
        self._record("degenerate_polygon", host["id"], host["file_name"], ann["id"])

    def polygon_outside(self) -> None:
        host = self._host()
        w = host["width"]
        ann = self._annotation(host["id"], host, segmentation=[[w - 4.0, 1.0, w + 6.0, 1.0, w - 4.0, 8.0]])
        self._record("polygon_outside", host["id"], host["file_name"], ann["id"])

    def image_without_annotation(self) -> None:
        self._write_noise("lonely.png", self.template)
        img = self._new_image("lonely.png", self.template, annotate=False)
        self._record("image_without_annotation", img["id"], img["file_name"])

    def duplicate_content(self) -> None:
        host = self._host()
        shutil.copyfile(self.images_dir / host["file_name"], self.images_dir / "copy.png")
        img = self._new_image("copy.png", host)
        self._record("duplicate_content", img["id"], img["file_name"])
