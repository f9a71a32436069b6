"""Run a segmenter once over every image of a dataset and cache its lesion probabilities.

Masked classification trials read these caches, so the segmenter never runs per item or per epoch.
The cache is keyed by the segmenter (registered name and version) and the image cache it was
computed from; probabilities are stored as uint8 (0..255) at the classifier's image size.

A cross-validated segmenter (``cv_folds`` tag on its version, ``fold_models.json`` on its run) gives
out-of-fold masks: each train or val image's mask comes from the fold model that held that image out,
so the classifier trains on masks of the same quality as the ones it meets on new images; test images
(and any image no fold held out) get the registered fold ensemble's. The cache stores, per image, the
fold whose model drew its mask (``sources``; -1: the ensemble).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from medtune.data.cache import cache_ok, load_cache, save_tensors
from medtune.serving.segmenter import load_segmenter, predict_probs

__all__ = ["ENSEMBLE", "build_mask_cache", "fold_models", "load_segmenter", "mask_sources", "predict_probs"]


ENSEMBLE = -1  # the source of a mask drawn by the registered model (the fold ensemble, or the only model)


def build_mask_cache(
    model: nn.Module | Callable[[int], nn.Module],
    seg_image_cache: Path,
    out: Path,
    *,
    out_size: int,
    sources: list[int] | None = None,
) -> Path:
    """Write (once) the segmenter's probabilities over ``seg_image_cache`` (images at its input size).

    Args:
        model: the segmenter, or (with ``sources``) a function from a source (fold index or ``ENSEMBLE``)
            to the model that draws those images' masks.
        sources: per image, which model draws its mask [every image: ``ENSEMBLE``].
    """
    if cache_ok(out):
        return out
    images = load_cache(seg_image_cache)["images"]
    sources = [ENSEMBLE] * images.shape[0] if sources is None else sources
    pick = (lambda source: model) if isinstance(model, nn.Module) else model
    probs = torch.empty((images.shape[0], 1, out_size, out_size), dtype=torch.uint8)
    by_source = torch.tensor(sources, dtype=torch.long)
    for source in sorted(set(sources)):
        rows = torch.nonzero(by_source == source).flatten()
        probs[rows] = predict_probs(pick(source), images[rows], out_size=out_size)
    return save_tensors({"probs": probs, "sources": by_source}, out)


def fold_models(run_id: str) -> list[dict]:
    """The fold models of a cross-validated segmentation launch: ``fold``, ``model_uri``, ``val_image_ids``."""
    import mlflow.artifacts

    return mlflow.artifacts.load_dict(f"runs:/{run_id}/fold_models.json")["folds"]


def mask_sources(image_ids: list[int], folds: list[dict]) -> list[int]:
    """Per image: the fold that held it out (its model never trained on it), else ``ENSEMBLE``."""
    held_out = {int(i): int(f["fold"]) for f in folds for i in f["val_image_ids"]}
    return [held_out.get(int(i), ENSEMBLE) for i in image_ids]


def resolve_segmenter(client, *, name: str, uri: str | None, command: str) -> tuple[str, object]:
    """The segmenter's model URI and registry version: ``uri`` if given, else ``<name>@champion``.

    Raises ``TrackingError`` naming ``command`` (the one that creates a champion) when there is none.
    """
    from medtune.tracking.registry import CHAMPION, champion
    from medtune.tracking.store import TrackingError

    if uri is None:
        version = champion(client, name)
        if version is None:
            raise TrackingError(f"no champion segmenter '{name}' for this dataset; create one with: {command}")
        return f"models:/{name}@{CHAMPION}", version
    if not uri.startswith("models:/"):
        raise TrackingError(f"--segmenter {uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    ref = uri[len("models:/") :]
    try:
        if "@" in ref:
            model, alias = ref.split("@", 1)
            return uri, client.get_model_version_by_alias(model, alias)
        model, version = ref.rsplit("/", 1)
        return uri, client.get_model_version(model, version)
    except Exception as err:  # noqa: BLE001 - any registry failure is a bad --segmenter for the user
        raise TrackingError(
            f"--segmenter {uri}: not found in the model registry ({str(err).splitlines()[0]})"
        ) from None
