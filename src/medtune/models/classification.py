"""torchvision classifiers adapted to ``num_classes``, plus the pretrained-weights helpers.

One table, ``CLS_SPECS``, says for each backbone which torchvision builder makes it, which layer is
the classification head (replaced by a fresh ``num_classes`` one) and which layer HiResCAM hooks.
``CLS_MODELS`` maps each name to a factory ``(*, num_classes, weights="none",
freeze_backbone=False, bn_momentum=0.1)``; ``vit_b_16`` also takes ``image_size``. torchvision is
imported inside the functions: importing this module stays cheap.

Every model maps [B, 3, H, W] to logits [B, num_classes].
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from medtune.names import lookup


def resolve_weights(weights_enum: Any, value: str, *, model: str, arg: str = "weights") -> Any:
    """Turn a config string into a torchvision weights member, or None for random init.

    Args:
        weights_enum: the torchvision ``WeightsEnum`` class of the model (or of its backbone).
        value: ``"none"``, ``"DEFAULT"`` or a member name like ``IMAGENET1K_V2``, in any case.
        model: model name, for the error message.
        arg: the config argument (``weights`` or ``weights_backbone``), for the error message.

    Raises:
        ValueError: for a name the enum does not have; the message lists the valid ones.
    """
    choices = {"none": None, **weights_enum.__members__}
    by_upper = {key.upper(): key for key in choices}
    return lookup(choices, f"{model} {arg}", by_upper.get(value.upper(), value))


def load_pretrained(builder: Callable[[], nn.Module], weights: Any, *, model: str, arg: str, value: str) -> nn.Module:
    """Call ``builder``; when it needs pretrained ``weights``, turn a failed download into one line.

    With ``MEDTUNE_OFFLINE=1`` and no file in the torch hub cache this fails at once instead of
    waiting for the network (about 5 s here before the URLError).

    Args:
        builder: makes the model, downloading ``weights`` if they are not cached.
        weights: the resolved weights member, or None (then ``builder`` is simply called).
        model: model name, for the message.
        arg: config argument that asked for the weights, for the message.
        value: the config value as written, for the message.

    Raises:
        RuntimeError: ``pretrained weights 'DEFAULT' for resnet18 are not available (...)``.
    """
    if weights is None:
        return builder()
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    message = (
        f"pretrained {arg} '{value}' for {model} are not available (not cached in {cache} and no "
        f"network): use {arg}: none, or pre-download them"
    )
    cached = (cache / Path(urlparse(weights.url).path).name).is_file()
    if not cached and os.environ.get("MEDTUNE_OFFLINE", "") not in ("", "0"):
        raise RuntimeError(message)
    try:
        return builder()
    except OSError as err:  # urllib's URLError and HTTPError are OSErrors
        raise RuntimeError(message) from err


@dataclass(frozen=True)
class ClassifierSpec:
    """How one torchvision classifier is built and adapted.

    Attributes:
        builder: name for ``torchvision.models.get_model``.
        head: dotted path of the last layer, replaced by one with ``num_classes`` outputs.
        cam_layer: dotted path of the layer HiResCAM hooks: the last conv/feature block.
        min_size: smallest square input (px) that runs (measured in eval mode); far below what a
            useful CAM needs, it is here so tests and configs can check a size before training.
        mid_cam_layer: an earlier block for ``cam_block: mid``: stride 8 for conv nets and Swin (an
            8x8 CAM at 64 px where the last block gives 2x2), the 6th of 12 encoder layers for ViT
            (whose token grid is the same at every depth).
        cam_reshape: how to turn the CAM layer's activations into [B, C, h, w]: ``""`` for conv
            nets (already that shape); ``"vit_tokens"``: [B, 1 + h*w, C], drop the class token and
            reshape; ``"swin_nhwc"``: [B, h, w, C], permute. Transformers need this reshape
            transform when the CAM is drawn.
    """

    builder: str
    head: str
    cam_layer: str
    min_size: int
    mid_cam_layer: str
    cam_reshape: str = ""

    def cam_path(self, block: str) -> str:
        """The dotted path of the CAM layer for ``block`` (a name in ``CAM_BLOCKS``)."""
        return lookup({"last": self.cam_layer, "mid": self.mid_cam_layer}, "cam_block", block)


CAM_BLOCKS = ("last", "mid")  # values of the classifiers' cam_block argument
# mid_cam_layer (stride 8): resnets' layer2, mobilenet/efficientnet features.3, densenet's second
# dense block, convnext's second stage, swin's second stage (at 64 px each gives an 8x8 map).
CLS_SPECS: dict[str, ClassifierSpec] = {
    "resnet18": ClassifierSpec("resnet18", "fc", "layer4", 1, "layer2"),
    "resnet50": ClassifierSpec("resnet50", "fc", "layer4", 1, "layer2"),
    "mobilenet_v3_small": ClassifierSpec("mobilenet_v3_small", "classifier.3", "features", 1, "features.3"),
    "efficientnet_b0": ClassifierSpec("efficientnet_b0", "classifier.1", "features", 1, "features.3"),
    # Stride-4 stem, then three unpadded 2x2 average pools: below 29 px the last one gets a 1x1 map.
    "densenet121": ClassifierSpec("densenet121", "classifier", "features", 29, "features.denseblock2"),
    # Stride-4 stem, then three unpadded 2x2 downsamplings: below 32 px the last one gets a 1x1 map.
    "convnext_small": ClassifierSpec("convnext_small", "classifier.2", "features", 32, "features.3"),
    # Head: Dropout, Conv2d(512, K, 1), ReLU, AvgPool; its logits are >= 0 (torchvision design).
    # Its mid block (after the second max pool, stride about 9) is a 7x7 map at 64 px.
    "squeezenet1_0": ClassifierSpec("squeezenet1_0", "classifier.1", "features", 21, "features.7"),
    # ViT takes exactly image_size (224 unless the factory is given another multiple of 16).
    "vit_b_16": ClassifierSpec(
        "vit_b_16", "heads.head", "encoder.ln", 16, "encoder.layers.encoder_layer_5", "vit_tokens"
    ),
    # Swin pads to its 7x7 windows, so small inputs run; it needs the 4x4 patch embedding to fit.
    "swin_s": ClassifierSpec("swin_s", "head", "norm", 4, "features.3", "swin_nhwc"),
}


class Hardsigmoid(nn.Module):
    """``relu6(x + 3) / 6``: the same function as ``nn.Hardsigmoid``, but twice differentiable.

    PyTorch has no derivative for ``hardsigmoid_backward``, so the saliency loss (which
    backpropagates through a HiResCAM gradient) failed on MobileNetV3 whenever its CAM layer sat
    before a squeeze-excitation block (``cam_block: mid``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3.0) / 6.0


def _twice_differentiable(model: nn.Module) -> None:
    """Swap every ``nn.Hardsigmoid`` for the identical ``Hardsigmoid`` above."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Hardsigmoid):
            model.set_submodule(name, Hardsigmoid())


def _replace_head(model: nn.Module, path: str, num_classes: int) -> nn.Module:
    """Swap the Linear or 1x1 Conv2d at ``path`` for a fresh one with ``num_classes`` outputs."""
    old = model.get_submodule(path)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size)
    else:
        raise TypeError(f"cannot replace head '{path}' of type {type(old).__name__}")
    model.set_submodule(path, new)
    return new


def _build(
    name: str,
    *,
    num_classes: int,
    weights: str,
    freeze_backbone: bool,
    bn_momentum: float,
    builder_args: dict[str, Any],
) -> nn.Module:
    """Build ``CLS_SPECS[name]`` with (optional) pretrained weights and a ``num_classes`` head."""
    from torchvision import models as tvm

    if not 0.0 < bn_momentum <= 1.0:
        raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")

    spec = lookup(CLS_SPECS, "classification model", name)
    resolved = resolve_weights(tvm.get_model_weights(spec.builder), weights, model=name)
    model = load_pretrained(
        lambda: tvm.get_model(spec.builder, weights=resolved, **builder_args),
        resolved,
        model=name,
        arg="weights",
        value=weights,
    )
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = bn_momentum
    _twice_differentiable(model)
    head = _replace_head(model, spec.head, num_classes)
    if freeze_backbone:
        model.requires_grad_(False)
        head.requires_grad_(True)
    return model


BN_MOMENTUM = 0.1  # PyTorch's default; torchvision builds MobileNetV3 with 0.01 (see below)


def classifier(
    name: str,
    *,
    num_classes: int,
    weights: str = "none",
    freeze_backbone: bool = False,
    bn_momentum: float = BN_MOMENTUM,
    cam_block: str = "last",
) -> nn.Module:
    """Build the torchvision classifier ``name`` with a ``num_classes`` head.

    Args:
        name: a key of ``CLS_SPECS`` (bound by ``CLS_MODELS``, so configs never set it).
        num_classes: outputs of the new head.
        weights: ``"none"`` (random init), ``"DEFAULT"`` or a torchvision weights name.
        freeze_backbone: train only the new head.
        bn_momentum: momentum of every BatchNorm's running statistics. torchvision's
            MobileNetV3 uses 0.01: after a short training from scratch its running statistics
            still lag the weights, and in eval mode every image got the same class (val
            balanced accuracy exactly 1/3 in all 8 epochs on the synthetic set, 0.57 with batch
            statistics). 0.1 for every backbone unless a space sets it.
        cam_block: which block HiResCAM explains (``CAM_BLOCKS``): ``last`` (the last feature
            block, 2x2 at 64 px for most backbones) or ``mid`` (stride 8: 8x8 at 64 px). The network
            is the same; the task reads the layer from ``CLS_SPECS[name].cam_path(cam_block)``.
    """
    CLS_SPECS[name].cam_path(cam_block)  # an unknown block fails here, naming the valid ones
    return _build(
        name,
        num_classes=num_classes,
        weights=weights,
        freeze_backbone=freeze_backbone,
        bn_momentum=bn_momentum,
        builder_args={},
    )


def vit_b_16(
    *,
    num_classes: int,
    weights: str = "none",
    freeze_backbone: bool = False,
    image_size: int = 224,
    bn_momentum: float = BN_MOMENTUM,
    cam_block: str = "last",
) -> nn.Module:
    """ViT-B/16; it accepts only ``image_size`` x ``image_size`` inputs.

    Args:
        num_classes: outputs of the new head.
        weights: as in ``classifier``; pretrained weights fix ``image_size`` (224, 384 or 518,
            torchvision raises a ValueError naming the expected size otherwise).
        freeze_backbone: train only the new head.
        image_size: input side in px, a multiple of the 16 px patch.
        bn_momentum: accepted like every classifier's (ViT has no BatchNorm), so one space can
            fix it for a choice of backbones.
        cam_block: as in ``classifier``; ViT's token grid is image_size / 16 at every depth.
    """
    CLS_SPECS["vit_b_16"].cam_path(cam_block)
    if image_size <= 0 or image_size % 16:
        raise ValueError(f"vit_b_16 image_size must be a positive multiple of 16, got {image_size}")
    return _build(
        "vit_b_16",
        num_classes=num_classes,
        weights=weights,
        freeze_backbone=freeze_backbone,
        bn_momentum=bn_momentum,
        builder_args={"image_size": image_size},
    )


CLS_MODELS: dict[str, Callable[..., nn.Module]] = {
    **{name: partial(classifier, name) for name in CLS_SPECS},
    "vit_b_16": vit_b_16,
}


def cam_target_layer(model: nn.Module, name: str, block: str = "last") -> nn.Module:
    """The layer HiResCAM should hook in ``model``, built as ``CLS_MODELS[name]``, at ``block``.

    For ``vit_b_16`` and ``swin_s`` the activations need the reshape named by
    ``CLS_SPECS[name].cam_reshape`` before a CAM can be drawn.
    """
    return model.get_submodule(lookup(CLS_SPECS, "classification model", name).cam_path(block))
