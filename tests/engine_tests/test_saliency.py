"""Tests for src/medtune/saliency.py: equivalence with pytorch_grad_cam, gradients, IoU, the loss."""

import functools

import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models import SwinTransformer, VisionTransformer, resnet18

from medtune.saliency import (
    CEntIoULoss,
    FeatureHook,
    hard_iou,
    hirescam,
    soft_iou,
    swin_reshape,
    valid_mean,
    vit_reshape,
)

# Both sides compute in float32 and torch bilinear (align_corners=False) equals cv2.resize
# INTER_LINEAR when upsampling (measured max diff ~1e-7), so only float rounding remains
# (max diff measured over all cases below: 7e-7).
ATOL = 5e-6


class TinyCNN(nn.Module):
    """Two conv blocks, global average pooling, linear head: a 16x16 map at 32 px input."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=3)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )
    # torchvision zero-initialises the ViT head: all logits 0, all gradients 0, all CAMs 0
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def _tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2], num_classes=3
    )


# (model factory, target layer getter, reshape, image size)
CASES = {
    "resnet18": (_resnet, lambda m: m.layer4, None, 64),
    "tiny_cnn": (_tiny, lambda m: m.features[3], None, 32),
    "vit": (_tiny_vit, lambda m: m.encoder.layers[-1].ln_1, functools.partial(vit_reshape, grid=4), 32),
    "swin": (_tiny_swin, lambda m: m.norm, swin_reshape, 32),
}


def _reference(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets, reshape) -> torch.Tensor:
    """pytorch_grad_cam's HiResCAM, hooks released on exit."""
    cam_targets = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets]
    with HiResCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=cam_targets))


@pytest.mark.e2e
@pytest.mark.parametrize("explicit_targets", [True, False], ids=["targets", "argmax"])
@pytest.mark.parametrize("case", list(CASES))
def test_hirescam_matches_pytorch_grad_cam(case: str, explicit_targets: bool) -> None:
    make, get_layer, reshape, size = CASES[case]
    model = make().eval()
    # seed 2: no all-zero CAM in any case (random-init models often have only negative evidence)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 2, 1]) if explicit_targets else None
    expected = _reference(model, get_layer(model), x, targets, reshape)
    logits, cams = hirescam(model, get_layer(model), x, targets, reshape=reshape)
    # same shape as the input, values in [0, 1], and the logits are the model's own
    assert cams.shape == (3, size, size)
    assert cams.min() >= 0 and cams.max() <= 1
    torch.testing.assert_close(logits, model(x))
    # the maps are not degenerate (otherwise the comparison would prove nothing)
    assert (expected.amax(dim=(1, 2)) > 0.99).all()
    assert (cams - expected).abs().max() < ATOL


@pytest.mark.e2e
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", ["resnet18", "tiny_cnn"])
def test_saliency_term_reaches_backbone(case: str, train: bool) -> None:
    make, get_layer, _, size = CASES[case]
    model = make().train(train)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(4, 1, size, size)
    masks[:, :, : size // 2, : size // 2] = 1
    first_conv = model.conv1.weight if case == "resnet18" else model.features[0].weight
    _, cams = hirescam(model, get_layer(model), x, torch.tensor([0, 1, 2, 0]), create_graph=True)
    iou, valid = soft_iou(cams, masks)
    (grad,) = torch.autograd.grad((1 - iou).mean(), first_conv)
    # the saliency term alone moves the first conv, which sits before the target layer
    assert grad.abs().sum() > 0


def _loss_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, ce_weight: float
) -> torch.Tensor:
    logits, cams = hirescam(model, model.layer4, x, y, create_graph=True)
    loss = CEntIoULoss(ce_weight=ce_weight)(logits, y, cams, masks)
    (grad,) = torch.autograd.grad(loss, model.layer1[0].conv1.weight)
    return grad


@pytest.mark.e2e
def test_centiou_changes_backbone_gradient() -> None:
    model = _resnet().eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 1])
    masks = torch.zeros(4, 64, 64)
    masks[:, 16:48, 8:40] = 1
    pure_ce = _loss_grad(model, x, y, masks, ce_weight=1.0)
    mixed = _loss_grad(model, x, y, masks, ce_weight=0.5)
    # ce_weight=1.0 is plain CE: it must equal the gradient of F.cross_entropy
    (ce_only,) = torch.autograd.grad(F.cross_entropy(model(x), y), model.layer1[0].conv1.weight)
    torch.testing.assert_close(pure_ce, ce_only)
    # the saliency term changes what the backbone learns (it would not if it were constant)
    assert not torch.allclose(mixed, 0.5 * pure_ce, atol=1e-8, rtol=1e-3)


@pytest.mark.e2e
def test_without_create_graph_cam_is_detached_and_grads_untouched() -> None:
    model = _resnet().train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.tensor([0, 2])
    logits, cams = hirescam(model, model.layer4, x, y)
    # no graph through the CAM: this is why the numpy original never trained the backbone
    assert cams.grad_fn is None and not cams.requires_grad
    # autograd.grad, not backward: no parameter .grad is written by the CAM computation
    assert all(p.grad is None for p in model.parameters())
    # the logits keep their graph, so a CE loss on them still trains the model
    F.cross_entropy(logits, y).backward()
    assert model.fc.weight.grad is not None


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_hirescam_runs_in_validation_contexts(context) -> None:
    model = _tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    expected = hirescam(model, model.features[3], x)[1]
    with context():
        x_ctx = x.clone()  # under inference_mode this is an inference tensor, as in validation
        _, cams = hirescam(model, model.features[3], x_ctx)
    # grad is re-enabled inside, so the CAM is the same as outside any context
    torch.testing.assert_close(cams, expected)


def test_frozen_backbone_still_gives_cam() -> None:
    model = _tiny().eval()
    for p in model.features.parameters():
        p.requires_grad_(False)
    _, cams = hirescam(model, model.features[3], torch.randn(2, 3, 32, 32))
    # the layer output needed a graph from the input; the maps are normalised, not all zero
    assert torch.isclose(cams.amax(dim=(1, 2)), torch.ones(2), atol=1e-4).all()


def test_hooks_removed_even_on_error() -> None:
    model = _resnet().eval()
    before = len(model.layer4._forward_hooks)
    hirescam(model, model.layer4, torch.randn(2, 3, 64, 64), create_graph=True)
    assert len(model.layer4._forward_hooks) == before
    # class 7 does not exist among 3 logits: gather raises after the forward
    with pytest.raises(RuntimeError):
        hirescam(model, model.layer4, torch.randn(2, 3, 64, 64), torch.tensor([7, 7]))
    assert len(model.layer4._forward_hooks) == before


def test_feature_hook_rejects_shared_layer() -> None:
    layer = nn.Conv2d(3, 3, 1)
    twice = nn.Sequential(layer, layer)
    with FeatureHook(layer) as hook:
        twice(torch.randn(1, 3, 4, 4))
    # a layer run twice per forward is ambiguous to explain
    with pytest.raises(RuntimeError, match="ran 2 times"):
        _ = hook.activation


def test_reshape_helpers() -> None:
    tokens = torch.arange(2 * 17 * 5, dtype=torch.float32).reshape(2, 17, 5)
    grid_map = vit_reshape(tokens, grid=4)
    # class token dropped; token 1 + (row * 4 + col) lands at [:, :, row, col]
    assert grid_map.shape == (2, 5, 4, 4)
    torch.testing.assert_close(grid_map[:, :, 1, 2], tokens[:, 1 + 6, :])
    # grid inferred as isqrt(17) = 4
    torch.testing.assert_close(vit_reshape(tokens), grid_map)
    channels_last = torch.randn(2, 3, 4, 8)
    assert swin_reshape(channels_last).shape == (2, 8, 3, 4)


def _maps(*rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


TOP = [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
BOTTOM = [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
LEFT = [[1, 1, 0, 0]] * 4
EMPTY = [[0] * 4] * 4


@pytest.mark.parametrize("iou_fn", [soft_iou, hard_iou])
def test_iou_hand_checked(iou_fn) -> None:
    cams = _maps(TOP, TOP, LEFT, TOP)
    masks = _maps(TOP, BOTTOM, TOP, EMPTY)
    iou, valid = iou_fn(cams, masks)
    # identical -> 1; disjoint -> 0; left half vs top half: 4 shared of 12 pixels -> 1/3
    torch.testing.assert_close(iou[:3], torch.tensor([1.0, 0.0, 1 / 3]), atol=1e-6, rtol=0)
    # the empty mask is flagged invalid and its value is finite
    assert valid.tolist() == [True, True, True, False]
    assert torch.isfinite(iou).all()


def test_soft_and_hard_iou_on_graded_map() -> None:
    cams = torch.full((1, 2, 2), 0.5)
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # soft: inter 0.5, union 2 + 1 - 0.5 = 2.5 -> 0.2
    torch.testing.assert_close(soft_iou(cams, masks)[0], torch.tensor([0.2]), atol=1e-6, rtol=0)
    # hard: every pixel >= 0.5 is salient -> 1 shared of 4
    torch.testing.assert_close(hard_iou(cams, masks)[0], torch.tensor([0.25]))
    # raising the threshold above the map empties it -> 0
    torch.testing.assert_close(hard_iou(cams, masks, threshold=0.6)[0], torch.tensor([0.0]))


def test_mask_layouts_and_resize() -> None:
    cams = _maps(TOP, LEFT)
    masks = _maps(TOP, TOP)
    flat = soft_iou(cams, masks)[0]
    torch.testing.assert_close(soft_iou(cams, masks[:, None])[0], flat)
    # a 2x-larger mask is resized to the CAM with nearest interpolation: same IoU
    big = masks.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    torch.testing.assert_close(soft_iou(cams, big)[0], flat)


def test_empty_masks_give_no_nan() -> None:
    cams = torch.rand(3, 8, 8, requires_grad=True)
    masks = torch.zeros(3, 1, 8, 8)
    iou, valid = soft_iou(cams, masks)
    # no valid image: the mean is 0, not NaN, and still differentiable
    mean = valid_mean(iou, valid)
    assert mean.item() == 0.0
    mean.backward()
    assert torch.isfinite(cams.grad).all()
    # only valid images count in the mean
    iou2, valid2 = soft_iou(_maps(TOP, TOP), _maps(TOP, EMPTY))
    torch.testing.assert_close(valid_mean(iou2, valid2), torch.tensor(1.0), atol=1e-6, rtol=0)


def test_centiou_loss_values() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    ce = F.cross_entropy(logits, y)
    cams = _maps(TOP, LEFT)
    loss = CEntIoULoss(ce_weight=0.25)
    # lesion masks: 0.25 * CE + 0.75 * (1 - mean(1, 1/3))
    expected = 0.25 * ce + 0.75 * (1 - (1 + 1 / 3) / 2)
    torch.testing.assert_close(loss(logits, y, cams, _maps(TOP, TOP)), expected, atol=1e-6, rtol=0)
    # no lesion in the batch: the saliency term vanishes, CE keeps its weight
    torch.testing.assert_close(loss(logits, y, cams, _maps(EMPTY, EMPTY)), 0.25 * ce)
    # class weights are passed to cross-entropy
    weighted = CEntIoULoss(ce_weight=1.0, class_weights=[1.0, 1.0, 3.0])
    ce_w = F.cross_entropy(logits, y, weight=torch.tensor([1.0, 1.0, 3.0]))
    torch.testing.assert_close(weighted(logits, y, cams, _maps(TOP, TOP)), ce_w)
    with pytest.raises(ValueError, match="ce_weight"):
        CEntIoULoss(ce_weight=1.5)


def test_cam_ceiling_is_exact_at_full_resolution_and_lower_when_coarse() -> None:
    from medtune.saliency import cam_ceiling

    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, 20:36, 24:40] = 1  # a 16x16 lesion off the 2x2 grid lines; image 1 has none
    full, valid = cam_ceiling(masks, (64, 64))
    # A map as fine as the image is the mask itself; an image without a lesion is not scored.
    assert full[0].item() == pytest.approx(1.0) and valid.tolist() == [True, False]
    coarse = {g: cam_ceiling(masks, (g, g))[0][0].item() for g in (2, 8)}
    # 8x8 outlines the lesion well, 2x2 cannot: the ceiling rises with resolution.
    assert coarse[2] < 0.5 < coarse[8] <= 1.0
