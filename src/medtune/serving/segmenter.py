"""A registered segmenter as the masked tasks use it: loaded from the store (its code checked, its network
read with weights only) and run over images to give lesion probabilities.

The mask caches (``medtune.engine.segmenter_masks``) and the logged masked classifier
(``medtune.serving.model.MedtuneModel``) both go through these two functions, so training and serving
mask an image the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from medtune.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from medtune.serving.network import load_network


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, *, out_size: int, batch_size: int = 32) -> torch.Tensor:
    """Lesion probabilities uint8 [N,1,out,out] for uint8 images [N,3,S,S] at the segmenter's size."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, out_size, out_size), dtype=torch.uint8)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].float() / 255.0
        probs = torch.sigmoid(model((batch - mean) / std))
        probs = F.interpolate(probs, size=(out_size, out_size), mode="bilinear", align_corners=False)
        out[start : start + batch_size] = (probs.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


def load_segmenter(model_uri: str, *, trust_code: bool = False) -> nn.Module:
    """Load a logged segmenter's network as a callable CPU module (normalised input at its size).

    Its files are downloaded and checked first (``medtune.serving.trust``: a model that is not this
    medtune's is refused unless ``trust_code``, i.e. ``--trust-model-code``). The stored code of a
    ``medtune.serving.model.MedtuneModel`` never runs here: its ``torch.export`` network is read with weights
    only. Segmenters logged before MedtuneModel are ``mlflow.pytorch`` "pt2" models, not medtune's:
    MLflow loads them, when trusted. Either was exported in eval mode (the exported graph does not
    support ``.eval()`` again). Raises ``TrackingError`` (one line) when it cannot.
    """
    import tempfile

    import mlflow.pytorch
    from mlflow.models import Model

    from medtune.serving.trust import checked, refusal
    from medtune.tracking.store import TrackingError

    with tempfile.TemporaryDirectory(prefix="medtune-segmenter-") as files:
        folder = checked(model_uri, Path(files), trust=trust_code)
        try:
            flavors = Model.load(str(folder)).flavors
            if "pytorch" in flavors and refusal(folder) is not None:  # not medtune's: trusted by the user
                return mlflow.pytorch.load_model(str(folder))
            return load_network(folder / flavors["python_function"]["artifacts"]["network"]["path"])
        except Exception as err:  # noqa: BLE001 - a broken or crafted model: one line, never a traceback
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrackingError(f"{model_uri}: cannot load its network ({why[:300]})") from None
