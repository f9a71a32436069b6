"""Segmentation registry: the U-Net family, SegNet and three torchvision models.

Every model maps a normalised float image [B, 3, H, W] to lesion logits [B, 1, H, W] at the input
resolution. ``SEG_MODELS`` maps each name to a factory whose keyword arguments are what search
spaces set (``model.width: 16``). torchvision is imported inside the factories.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from medtune.models.classification import load_pretrained, resolve_weights
from medtune.models.unet import ConvBlock, unet, unet_dilated, unet_strided
from medtune.names import lookup


class SegNet(nn.Module):
    """SegNet (Badrinarayanan et al. 2017): the decoder unpools with the encoder's max-pool indices.

    No skip features are concatenated, only the indices are passed, so any input size works: each
    unpooling restores the exact size its pooling saw.

    Args:
        in_channels: image channels.
        out_channels: logit channels (1 for binary segmentation).
        width: channels of the first level; they double at each deeper level.
        depth: number of pool/unpool steps.
        dropout: Dropout2d probability after every conv block.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 1,
        width: int = 16,
        depth: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"SegNet needs depth >= 1 and width >= 1, got {depth=}, {width=}")
        channels = [width * 2**level for level in range(depth)]
        self.encoders = nn.ModuleList(
            ConvBlock(c_in, c_out, dropout=dropout) for c_in, c_out in zip([in_channels, *channels[:-1]], channels)
        )
        # Deepest first; each decoder level returns to the channels of the level above it.
        self.decoders = nn.ModuleList(
            ConvBlock(c_in, c_out, dropout=dropout) for c_in, c_out in zip(channels[::-1], [*channels[-2::-1], width])
        )
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map [B, C, H, W] to logits [B, out_channels, H, W]."""
        pooled: list[tuple[torch.Tensor, torch.Size]] = []
        for encoder in self.encoders:
            x = encoder(x)
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, return_indices=True)
            pooled.append((indices, size))
        for decoder in self.decoders:
            indices, size = pooled.pop()
            x = decoder(F.max_unpool2d(x, indices, 2, output_size=size))
        return self.head(x)


def segnet(*, width: int = 16, depth: int = 3, dropout: float = 0.0) -> nn.Module:
    """SegNet with max-unpooling (see ``SegNet`` for the arguments)."""
    return SegNet(width=width, depth=depth, dropout=dropout)


class OutOnly(nn.Module):
    """Make a torchvision segmentation model return its ``out`` logits instead of a dict."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, 1, H, W]; torchvision already upsamples them to the input size."""
        return self.net(x)["out"]


# torchvision segmentation model -> the classifier its backbone weights come from.
TORCHVISION_BACKBONES: dict[str, str] = {
    "fcn_resnet50": "resnet50",
    "deeplabv3_resnet50": "resnet50",
    "deeplabv3_mobilenet_v3_large": "mobilenet_v3_large",
}


def torchvision_segmenter(name: str, *, weights: str = "none", weights_backbone: str = "none") -> nn.Module:
    """Build a torchvision segmentation model with one output channel and no auxiliary head.

    Args:
        name: a key of ``TORCHVISION_BACKBONES`` (bound by ``SEG_MODELS``).
        weights: ``"none"``, ``"DEFAULT"`` or a torchvision weights name for the whole model
            (COCO with VOC labels); its 21-class last conv is replaced by a 1-class one, and
            ``weights_backbone`` is then ignored (the full weights include the backbone).
        weights_backbone: ``"none"``, ``"DEFAULT"`` or a weights name for the ImageNet backbone.

    Raises:
        RuntimeError: pretrained weights were asked for but are neither cached nor downloadable.
    """
    from torchvision import models as tvm

    backbone = lookup(TORCHVISION_BACKBONES, "torchvision segmentation model", name)
    full = resolve_weights(tvm.get_model_weights(name), weights, model=name)
    if full is not None:
        net = load_pretrained(lambda: tvm.get_model(name, weights=full), full, model=name, arg="weights", value=weights)
        last = net.classifier[-1]
        net.classifier[-1] = nn.Conv2d(last.in_channels, 1, 1)
        net.aux_classifier = None
        return OutOnly(net)
    base = resolve_weights(tvm.get_model_weights(backbone), weights_backbone, model=name, arg="weights_backbone")
    net = load_pretrained(
        lambda: tvm.get_model(name, weights=None, weights_backbone=base, num_classes=1, aux_loss=False),
        base,
        model=name,
        arg="weights_backbone",
        value=weights_backbone,
    )
    return OutOnly(net)


SEG_MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": unet,
    "unet_strided": unet_strided,
    "unet_dilated": unet_dilated,
    "segnet": segnet,
    **{name: partial(torchvision_segmenter, name) for name in TORCHVISION_BACKBONES},
}
