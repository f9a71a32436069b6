"""A logged medtune model: an MLflow pyfunc that takes raw uint8 images of any size and answers.

Every model the platform logs (``medtune.publish.single.log_model``) is a :class:`MedtuneModel` with two
artifacts: ``network`` (the network, ``torch.export`` format: a graph and weights, no Python code) and
``facts`` (``medtune_model.json``, :class:`ModelFacts`: task, input size, letterbox, normalisation,
channels, threshold, class names and, for a masked classifier, its segmenter's registered name and
version with the mask mode and threshold it was trained with). The facts are also the MLmodel's
``metadata``. So ``mlflow.pyfunc.load_model(uri).predict(images)`` needs nothing but the store (it
runs the code stored with the model: ``medtune.serving.trust.load_pyfunc(uri)`` checks that code first):

* input: uint8 ``[N, H, W, 3]`` RGB (any H and W; one size per call, ``predict.py`` mixes sizes);
* segmenter: ``{"mask": uint8 [N, H, W] (0/1), "probability": float32 [N, H, W]}`` at the input size;
* classifier: a DataFrame, ``label`` (the class name; for multi-label, the names at or above the
  threshold joined by ``;``) and one probability column per class.

Images reach the network exactly as in training: letterboxed by ``medtune.data.cache.letterbox`` at the
model's size, then (masked classifiers) masked by the recorded segmenter's probabilities as the mask
cache computed them (``medtune.serving.segmenter.predict_probs``), then normalised and masked by the data
module's own ``CachedDataset`` with its test transform. A segmenter's probabilities are cut out of the
letterbox and resized (bilinear) back to the image's size before thresholding.
"""

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from PIL import Image
from torch.nn import functional as F

from medtune.data.cache import letterbox
from medtune.data.datasets import IMAGENET_MEAN, IMAGENET_STD, CachedDataset, build_transform
from medtune.serving.network import load_network

FACTS_FILE = "medtune_model.json"
FORMAT = 1  # of the facts file; a reader refuses another
BATCH = 32  # images per forward pass


@dataclass(frozen=True)
class SegmenterRef:
    """The registered segmenter a masked classifier was trained on."""

    name: str
    version: str
    image_size: int

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class ModelFacts:
    """What prediction needs besides the network (written as ``medtune_model.json``)."""

    task: str
    report_kind: str  # segmentation | classification | multilabel
    activation: str  # sigmoid | softmax
    image_size: int  # letterbox side, px
    threshold: float | None = None  # lesion (segmenter) or label (multi-label) probability threshold
    classes: tuple[str, ...] = ()
    mask_mode: str = "none"  # masked classifiers: soft | hard | crop
    mask_threshold: float = 0.5
    crop_margin: float = 0.1
    segmenter: SegmenterRef | None = None
    dataset_fingerprint: str = ""

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["classes"] = list(self.classes)
        out["segmenter"] = {**out["segmenter"], "uri": self.segmenter.uri} if self.segmenter else None
        return {
            "format": FORMAT,
            **out,
            # Constants of this code, recorded so a reader outside medtune can reproduce the input.
            "channels": "RGB",
            "decoder": "medtune.data.imageio.read_image (EXIF upright; 16-bit, float and DICOM min-max or VOI window)",
            "letterbox": {
                "size": self.image_size,
                "resize": "longest side, PIL bilinear",
                "pad": 0,
                "anchor": "centre",
            },
            "normalize": {"scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        }

    @classmethod
    def from_json(cls, data: dict, source: str) -> "ModelFacts":
        if data.get("format") != FORMAT:
            raise ValueError(f"{source}: facts format {data.get('format')!r}, this code reads {FORMAT}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["classes"] = tuple(values.get("classes") or ())
        seg = values.get("segmenter")
        values["segmenter"] = SegmenterRef(seg["name"], str(seg["version"]), int(seg["image_size"])) if seg else None
        return cls(**values)


def letterboxed(images: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 [N, 3, size, size]: each RGB image letterboxed as the training cache does."""
    out = torch.zeros((len(images), 3, size, size), dtype=torch.uint8)
    for i, image in enumerate(images):
        out[i] = torch.from_numpy(letterbox(Image.fromarray(image), size, Image.BILINEAR)).permute(2, 0, 1)
    return out


def unletterbox(probs: torch.Tensor, height: int, width: int) -> np.ndarray:
    """float32 (height, width): the image's part of a letterboxed map [S, S], resized back (bilinear)."""
    size = probs.shape[-1]
    scale = size / max(width, height)  # the geometry of ``medtune.data.cache.letterbox``
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    crop = probs[top : top + nh, left : left + nw].float()[None, None]
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 image as (H, W, 3) RGB: grey is replicated (as ``read_image`` does), alpha dropped."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype} (decode with medtune.data.imageio.read_image)")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise ValueError(f"expected an image (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")


def network_inputs(images: torch.Tensor, probs: torch.Tensor | None, facts: ModelFacts) -> torch.Tensor:
    """float [N, 3, S, S]: letterboxed uint8 ``images`` as the data module's test split gives them.

    The views come from ``CachedDataset`` itself (mask mode, threshold, crop margin, normalisation),
    so prediction can never drift from training; it reads files, hence the temporary ones.
    """
    n, size = images.shape[0], images.shape[-1]
    with tempfile.TemporaryDirectory() as folder:
        cache, pred = Path(folder) / "images.pt", Path(folder) / "probs.pt"
        empty = [torch.zeros(0, dtype=torch.long)] * n
        torch.save(
            {"images": images, "masks": torch.zeros((n, 1, size, size), dtype=torch.uint8), "labels": empty}, cache
        )
        if probs is not None:
            torch.save({"probs": probs}, pred)
        data = CachedDataset(
            str(cache),
            build_transform(0.0, train=False),
            pred_masks=str(pred) if probs is not None else None,
            mask_mode=facts.mask_mode,
            mask_threshold=facts.mask_threshold,
            crop_margin=facts.crop_margin,
        )
        return torch.stack([data[i]["image"] for i in range(n)])


class MedtuneModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of every logged medtune model (see the module docstring); holds no state until loaded."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        facts_file = context.artifacts["facts"]
        self.facts = ModelFacts.from_json(json.loads(Path(facts_file).read_text()), facts_file)
        self.network_file = context.artifacts["network"]
        self.network = load_network(self.network_file)  # on the CPU; moved on first use (``_ready``)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.segmenter = None
        if self.facts.segmenter is not None:
            from medtune.serving.segmenter import load_segmenter
            from medtune.serving.trust import trusted

            # Checked as this model was (medtune.serving.trust), with the caller's --trust-model-code.
            self.segmenter = load_segmenter(self.facts.segmenter.uri, trust_code=trusted())

    def _ready(self) -> torch.nn.Module:
        if self.device.type != "cpu" and not getattr(self, "_moved", False):
            self.network, self._moved = load_network(self.network_file, self.device), True
        return self.network

    @torch.no_grad()
    def probabilities(self, images: list[np.ndarray], *, batch_size: int = BATCH) -> list[np.ndarray]:
        """Per image: a segmenter's lesion probability (H, W) at its size, or a classifier's [K]."""
        facts, network, out = self.facts, self._ready(), []
        for start in range(0, len(images), batch_size):
            chunk = [rgb(image) for image in images[start : start + batch_size]]
            probs = None
            if self.segmenter is not None:  # as the mask cache did: at the segmenter's size, resized to ours
                from medtune.serving.segmenter import predict_probs

                seg_images = letterboxed(chunk, facts.segmenter.image_size)
                probs = predict_probs(self.segmenter, seg_images, out_size=facts.image_size)
            inputs = network_inputs(letterboxed(chunk, facts.image_size), probs, facts)
            logits = network(inputs.to(self.device)).float().cpu()
            if facts.activation == "softmax":
                out += list(torch.softmax(logits, dim=1).numpy())
            elif facts.report_kind == "segmentation":
                probs = torch.sigmoid(logits[:, 0])
                out += [unletterbox(p, *image.shape[:2]) for p, image in zip(probs, chunk)]
            else:
                out += list(torch.sigmoid(logits).numpy())
        return out

    def answer(self, probs: list[np.ndarray]) -> dict[str, np.ndarray] | pd.DataFrame:
        """The pyfunc output of :meth:`probabilities` (masks and probabilities, or the labelled table)."""
        facts = self.facts
        if facts.report_kind == "segmentation":
            stacked = np.stack(probs).astype(np.float32)
            return {"mask": (stacked >= facts.threshold).astype(np.uint8), "probability": stacked}
        table = pd.DataFrame(np.stack(probs).astype(np.float32), columns=list(facts.classes))
        table.insert(0, "label", [self.label(p) for p in probs])
        return table

    def label(self, probs: np.ndarray) -> str:
        """The predicted class name (argmax), or for multi-label the names at or above the threshold."""
        if self.facts.activation == "softmax":
            return self.facts.classes[int(np.argmax(probs))]
        return ";".join(c for c, p in zip(self.facts.classes, probs) if p >= self.facts.threshold)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None):  # noqa: ANN001 - MLflow's
        """uint8 [N, H, W, 3] images (or one (H, W, 3)) -> the answer of the module docstring."""
        images = np.asarray(model_input)
        return self.answer(self.probabilities(list(images[None] if images.ndim == 3 else images)))


def signature(facts: ModelFacts) -> ModelSignature:
    """Input: uint8 RGB images [N, H, W, 3] of any size; output: the answer of the module docstring."""
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    if facts.report_kind == "segmentation":
        outputs = Schema(
            [
                TensorSpec(np.dtype(np.uint8), (-1, -1, -1), "mask"),
                TensorSpec(np.dtype(np.float32), (-1, -1, -1), "probability"),
            ]
        )
    else:
        outputs = Schema([ColSpec("string", "label"), *(ColSpec("float", name) for name in facts.classes)])
    return ModelSignature(inputs=inputs, outputs=outputs)
