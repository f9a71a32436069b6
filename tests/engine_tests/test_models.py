"""Contract tests for the model registries: every entry is built tiny, run forward and backward."""

import inspect
from collections.abc import Iterator
from urllib.error import URLError

import pytest
import torch
from torch import nn

from medtune.models import CLS_MODELS, CLS_SPECS, SEG_MODELS, build, cam_target_layer

BATCH = 2  # 2, not 1: BatchNorm in train mode (e.g. DeepLab's image pooling) needs > 1 value
SIZE = 32  # smallest side every torchvision entry accepts (convnext_small needs 32)
NUM_CLASSES = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny inputs gain nothing from intra-op threads, and on a busy 2-core machine the threads
    spin-wait: this file took 118 s with the default 2 threads and 16 s with 1 under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_kwargs(factory: object) -> dict[str, int]:
    """Shrink the entries that take width/depth or image_size, so every test stays fast."""
    params = inspect.signature(factory).parameters
    kwargs = {"width": 4, "depth": 2} if "width" in params else {}
    if "image_size" in params:
        kwargs["image_size"] = SIZE
    return kwargs


def _assert_finite_grads(model: nn.Module) -> None:
    for pname, param in model.named_parameters():
        if param.requires_grad:
            # Every trainable parameter takes part in the forward pass and gets a usable gradient.
            assert param.grad is not None and torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("name", sorted(SEG_MODELS))
def test_segmentation_contract(name: str) -> None:
    torch.manual_seed(0)
    model = build(SEG_MODELS, "segmentation model", name, **_tiny_kwargs(SEG_MODELS[name]))
    logits = model(torch.randn(BATCH, 3, SIZE, SIZE))
    # A tensor (not torchvision's dict) of one-channel logits at the input resolution.
    assert isinstance(logits, torch.Tensor) and logits.shape == (BATCH, 1, SIZE, SIZE)
    logits.square().mean().backward()
    _assert_finite_grads(model)


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (29, 45)])
@pytest.mark.parametrize("name", ["unet", "unet_strided", "unet_dilated", "segnet"])
def test_own_segmentation_models_keep_any_size(name: str, size: tuple[int, int]) -> None:
    model = build(SEG_MODELS, "segmentation model", name, width=4, depth=3)
    # 29 x 45 is not a multiple of 2**depth: padding (U-Net) or sized unpooling (SegNet) copes.
    assert model(torch.randn(BATCH, 3, *size)).shape == (BATCH, 1, *size)


def test_unet_variants_differ_by_constructor_arguments() -> None:
    def layers(name: str) -> list[nn.Module]:
        return list(build(SEG_MODELS, "segmentation model", name, width=4, depth=3).modules())

    assert not any(isinstance(m, nn.ConvTranspose2d) for m in layers("unet"))
    assert any(isinstance(m, nn.ConvTranspose2d) for m in layers("unet_strided"))
    # The dilated variant pools once (not depth times) and dilates the deeper convolutions.
    dilated = layers("unet_dilated")
    assert sum(isinstance(m, nn.MaxPool2d) for m in dilated) == 1
    assert any(isinstance(m, nn.Conv2d) and m.dilation == (4, 4) for m in dilated)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(CLS_MODELS))
def test_classification_contract(name: str) -> None:
    torch.manual_seed(0)
    model = build(CLS_MODELS, "classification model", name, num_classes=NUM_CLASSES, **_tiny_kwargs(CLS_MODELS[name]))
    seen: list[torch.Tensor] = []
    cam_target_layer(model, name).register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
    logits = model(torch.randn(BATCH, 3, SIZE, SIZE))
    assert logits.shape == (BATCH, NUM_CLASSES)
    logits.logsumexp(dim=1).mean().backward()
    _assert_finite_grads(model)
    # The CAM layer ran once; conv nets give [B, C, h, w], ViT tokens [B, 1 + h*w, C], Swin NHWC.
    expected_dims = {"": 4, "vit_tokens": 3, "swin_nhwc": 4}[CLS_SPECS[name].cam_reshape]
    assert len(seen) == 1 and seen[0].dim() == expected_dims


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "resnet18"])
def test_batchnorm_momentum_is_the_constructor_argument(name: str) -> None:
    def momenta(**kwargs: object) -> set[float]:
        model = build(CLS_MODELS, "classification model", name, num_classes=NUM_CLASSES, **kwargs)
        return {m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    # 0.1 everywhere by default (torchvision builds MobileNetV3 with 0.01), else what was asked.
    assert momenta() == {0.1} and momenta(bn_momentum=0.3) == {0.3}
    with pytest.raises(ValueError, match="bn_momentum"):
        momenta(bn_momentum=0.0)


# A top-level Linear head, one inside a Sequential and a 1x1 Conv2d head; the contract test
# already checks every entry's head path (its output has NUM_CLASSES columns).
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_0"])
def test_freeze_backbone_trains_only_the_head(name: str) -> None:
    model = build(
        CLS_MODELS,
        "classification model",
        name,
        num_classes=NUM_CLASSES,
        freeze_backbone=True,
        **_tiny_kwargs(CLS_MODELS[name]),
    )
    trainable = {pname for pname, p in model.named_parameters() if p.requires_grad}
    head = {
        f"{CLS_SPECS[name].head}.{pname}" for pname, _ in model.get_submodule(CLS_SPECS[name].head).named_parameters()
    }
    # Exactly the new head's weight and bias stay trainable.
    assert trainable == head and len(head) == 2


@pytest.mark.parametrize(
    ("registry", "kind"), [(SEG_MODELS, "segmentation model"), (CLS_MODELS, "classification model")]
)
def test_unknown_name_lists_valid_names(registry: dict, kind: str) -> None:
    with pytest.raises(ValueError, match=f"unknown {kind} 'foo'; valid: ") as info:
        build(registry, kind, "foo")
    assert all(name in str(info.value) for name in registry)


def test_unknown_weights_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid: DEFAULT, IMAGENET1K_V1, none"):
        build(CLS_MODELS, "classification model", "resnet18", num_classes=2, weights="imagenet")


def test_vit_image_size_must_be_a_multiple_of_the_patch() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        build(CLS_MODELS, "classification model", "vit_b_16", num_classes=2, image_size=40)


@pytest.mark.parametrize(
    ("registry", "name", "kwargs"),
    [
        (CLS_MODELS, "resnet18", {"num_classes": 2, "weights": "DEFAULT"}),
        (SEG_MODELS, "fcn_resnet50", {"weights": "default"}),
        (SEG_MODELS, "deeplabv3_mobilenet_v3_large", {"weights_backbone": "DEFAULT"}),
    ],
)
def test_missing_pretrained_weights_fail_fast_offline(
    registry: dict, name: str, kwargs: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("MEDTUNE_OFFLINE", "1")
    with pytest.raises(RuntimeError) as info:
        build(registry, "model", name, **kwargs)
    message = str(info.value)
    # One line that names the empty cache and tells what to set instead.
    assert "\n" not in message and str(tmp_path) in message and "none, or pre-download" in message
    arg = "weights_backbone" if "weights_backbone" in kwargs else "weights"
    assert f"use {arg}: none" in message


def test_failed_download_becomes_runtime_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as tv_api

    def offline(*_args: object, **_kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("MEDTUNE_OFFLINE", raising=False)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="weights 'DEFAULT' for squeezenet1_0 are not available"):
        build(CLS_MODELS, "classification model", "squeezenet1_0", num_classes=2, weights="DEFAULT")


def _offline_cache(tmp_path, monkeypatch: pytest.MonkeyPatch, weights: object, state_dict: dict) -> None:
    """Put ``state_dict`` where torch hub looks for ``weights``, and forbid downloads."""
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state_dict, checkpoints / weights.url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("MEDTUNE_OFFLINE", "1")


def test_cached_pretrained_weights_load_and_head_is_replaced(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import SqueezeNet1_0_Weights, squeezenet1_0

    saved = squeezenet1_0().state_dict()
    _offline_cache(tmp_path, monkeypatch, SqueezeNet1_0_Weights.DEFAULT, saved)
    model = build(CLS_MODELS, "classification model", "squeezenet1_0", num_classes=2, weights="IMAGENET1K_V1")
    # The backbone comes from the cached file; the head is a fresh 2-class 1x1 conv.
    assert torch.equal(model.features[0].weight, saved["features.0.weight"])
    assert model.classifier[1].out_channels == 2


def test_cached_segmentation_weights_get_a_one_class_head(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models.segmentation import (
        DeepLabV3_MobileNet_V3_Large_Weights,
        deeplabv3_mobilenet_v3_large,
    )

    # Pretrained DeepLab weights have 21 VOC classes and an auxiliary head.
    saved = deeplabv3_mobilenet_v3_large(weights_backbone=None, num_classes=21, aux_loss=True)
    _offline_cache(tmp_path, monkeypatch, DeepLabV3_MobileNet_V3_Large_Weights.DEFAULT, saved.state_dict())
    model = build(SEG_MODELS, "segmentation model", "deeplabv3_mobilenet_v3_large", weights="DEFAULT")
    # Backbone loaded, aux head dropped, and one logit channel at the input size.
    assert torch.equal(model.net.backbone["0"][0].weight, saved.backbone["0"][0].weight)
    assert model.net.aux_classifier is None
    assert model(torch.randn(BATCH, 3, SIZE, SIZE)).shape == (BATCH, 1, SIZE, SIZE)


@pytest.mark.parametrize("name", sorted(CLS_MODELS))
def test_every_backbone_has_a_finer_cam_block(name: str) -> None:
    model = build(CLS_MODELS, "classification model", name, num_classes=NUM_CLASSES, **_tiny_kwargs(CLS_MODELS[name]))
    model.eval()
    grids = {}
    for block in ("last", "mid"):
        seen: list[torch.Tensor] = []
        hook = cam_target_layer(model, name, block).register_forward_hook(
            lambda _m, _i, out, seen=seen: seen.append(out)
        )
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64) if name != "vit_b_16" else torch.randn(1, 3, SIZE, SIZE))
        hook.remove()
        out = seen[0]
        reshape = CLS_SPECS[name].cam_reshape
        grids[block] = out.shape[-2:] if reshape == "" else out.shape[1:3] if reshape == "swin_nhwc" else out.shape[1:2]
    if name == "vit_b_16":  # the token grid is the same at every depth: only another layer
        assert grids["mid"] == grids["last"]
    else:  # 64 px: the mid block's CAM is at least 7x7 (8x8 but squeezenet's 7x7), finer than the last block's
        assert min(grids["mid"]) >= 7 and grids["mid"][0] > grids["last"][0], grids
    with pytest.raises(ValueError, match="unknown cam_block 'first'; valid: last, mid"):
        build(CLS_MODELS, "classification model", name, num_classes=NUM_CLASSES, cam_block="first")


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "resnet18"])
def test_saliency_loss_backpropagates_through_the_mid_cam_block(name: str) -> None:
    from medtune.saliency import hirescam

    torch.manual_seed(0)
    model = build(CLS_MODELS, "classification model", name, num_classes=NUM_CLASSES, cam_block="mid")
    # No torch Hardsigmoid is left: it has no second derivative (MobileNetV3's squeeze-excitation used it).
    assert not any(isinstance(m, nn.Hardsigmoid) for m in model.modules())
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    _, cams = hirescam(model, cam_target_layer(model, name, "mid"), images, labels, create_graph=True)
    cams.mean().backward()  # the CAM's own gradient reaches the weights (the saliency loss's path)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_replacement_hardsigmoid_is_the_same_function() -> None:
    from medtune.models.classification import Hardsigmoid

    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(Hardsigmoid()(x), nn.Hardsigmoid()(x))
