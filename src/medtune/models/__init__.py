"""Model registries: ``SEG_MODELS`` (lesion logits [B, 1, H, W]) and ``CLS_MODELS`` (logits [B, K]).

Build one with ``build(SEG_MODELS, "segmentation model", "unet", width=16)``; an unknown name raises
a ValueError listing the valid ones. torchvision is imported only when a torchvision model is built.
"""

from medtune.models.classification import CLS_MODELS, CLS_SPECS, cam_target_layer
from medtune.models.segmentation import SEG_MODELS
from medtune.names import build

__all__ = ["CLS_MODELS", "CLS_SPECS", "SEG_MODELS", "build", "cam_target_layer"]
