"""Differentiable HiResCAM, saliency IoU metrics and the CEntIoU loss.

The original study trained with ``w * CE + (1 - w) * (1 - IoU(saliency, mask))`` but computed
the saliency with ``pytorch_grad_cam`` (numpy inside), so the IoU term was a constant to autograd
and never trained anything. Here HiResCAM is computed in torch: with ``create_graph=True`` the
CAM is differentiable w.r.t. the model parameters and the IoU term reaches the backbone.

``hirescam`` reproduces ``pytorch_grad_cam.HiResCAM`` (grad-cam 1.5.7) with one target layer:
``cam = ReLU(sum_c(dS/dA * A))`` where ``S`` is the target-class logit summed over the batch and
``A`` the target layer's output; each CAM is min-max scaled (``x - min``, ``/ (max + 1e-7)``),
bilinearly upsampled to the input size (torch ``align_corners=False`` equals ``cv2.resize``
INTER_LINEAR when upsampling), then min-max scaled again, the same order as
``scale_cam_image`` + ``aggregate_multi_layers``.

Empty-mask convention (images without a lesion, e.g. BUSI "normal"): a saliency IoU is
meaningless for them (a CAM explains the class; there is no lesion to localise). ``soft_iou`` and
``hard_iou`` return per-image values *and* a boolean ``valid`` tensor (mask non-empty); the value
of an invalid image is finite but meaningless (``hard_iou`` follows the one IoU rule of
``medtune.metrics``, the segmentation metric's). Every saliency average goes over valid images
only (``valid_mean``):

* metric: average over valid images, weighting each batch by ``valid.sum()``; skip a batch
  with none, so ``val/saliency_iou`` is never NaN and never polluted by images that have
  nothing to localise;
* loss: ``CEntIoULoss`` uses the mean of ``1 - soft IoU`` over valid images, and ``0`` when a
  batch has none, so the CE weight stays ``ce_weight`` in every batch.

Model mode: ``hirescam`` runs the model in whatever mode it is in (pytorch_grad_cam forces
eval). In train mode its forward updates BatchNorm statistics like any training forward, so use
the returned logits for the CE term rather than a second forward; BatchNorm also couples the
images of a batch, so each CAM then depends slightly on the others. Gradients are taken with
``torch.autograd.grad``, so no parameter's ``.grad`` is touched. It works under
``torch.no_grad`` and ``torch.inference_mode`` (a validation step): it re-enables grad inside.

Cost (resnet18, 64 px, batch 8, CPU, 1 thread): a CEntIoU step with target ``layer4`` took about
the time of a plain CE step (ratio 1.0-1.1), because ``dS/dA`` only crosses the pooling and the
head; with target ``layer3`` it took about 1.7x (the double backward re-crosses ``layer4``).

The rejected alternative, "IoU of an empty mask = 1 - mean(cam)", mixes a different quantity
into the metric, and min-max scaling makes every non-constant CAM reach 1 somewhere, so the only
"perfect" map for a normal image is an all-zero one: a degenerate target.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtune.metrics import per_image_iou

CAM_EPS = 1e-7  # the epsilon of pytorch_grad_cam's scale_cam_image, kept for equivalence


class FeatureHook:
    """Context manager that records the outputs of one module during forward.

    The hook handle is removed on exit, also when the body raises.

    Args:
        layer: the module whose forward output is recorded.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.outputs: list[Tensor] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> "FeatureHook":
        self.outputs = []
        self._handle = self.layer.register_forward_hook(self._save)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _save(self, module: nn.Module, inputs: tuple, output: object) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(module).__name__} returned {type(output).__name__}, "
                "not a Tensor: pick a target layer that outputs one tensor"
            )
        self.outputs.append(output)

    @property
    def activation(self) -> Tensor:
        """The single recorded output; fails if the layer ran zero or several times."""
        if len(self.outputs) != 1:
            raise RuntimeError(
                f"target layer ran {len(self.outputs)} times in one forward, "
                "expected once: pick a layer that is not shared or skipped"
            )
        return self.outputs[0]


def vit_reshape(tensor: Tensor, grid: int | None = None) -> Tensor:
    """Turns ViT tokens ``[B, extra + grid*grid, C]`` into a map ``[B, C, grid, grid]``.

    Leading extra tokens (class, register) are dropped. Use ``functools.partial(vit_reshape,
    grid=14)`` as ``reshape``, or leave ``grid`` None to take ``isqrt(tokens)`` (right whenever
    there are fewer than ``2 * grid + 1`` extra tokens).

    Args:
        tensor: token sequence ``[B, tokens, C]``.
        grid: patches per side.
    """
    batch, tokens, channels = tensor.shape
    grid = math.isqrt(tokens) if grid is None else grid
    if tokens < grid * grid:
        raise ValueError(f"{tokens} tokens cannot hold a {grid}x{grid} patch grid")
    patches = tensor[:, tokens - grid * grid :, :]
    return patches.reshape(batch, grid, grid, channels).permute(0, 3, 1, 2)


def swin_reshape(tensor: Tensor) -> Tensor:
    """Turns channels-last Swin features ``[B, h, w, C]`` (torchvision) into ``[B, C, h, w]``."""
    if tensor.dim() != 4:
        raise ValueError(f"expected Swin features [B, h, w, C], got shape {tuple(tensor.shape)}")
    return tensor.permute(0, 3, 1, 2)


def _minmax(cams: Tensor) -> Tensor:
    """Scales each map of ``[B, H, W]`` as pytorch_grad_cam does: ``(x - min) / (max + eps)``."""
    cams = cams - cams.amin(dim=(-2, -1), keepdim=True)
    return cams / (CAM_EPS + cams.amax(dim=(-2, -1), keepdim=True))


def _scale_to_input(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Normalise, upsample to ``size``, normalise again (pytorch_grad_cam's order)."""
    cams = F.interpolate(_minmax(cams)[:, None], size=size, mode="bilinear", align_corners=False, antialias=False)
    return _minmax(cams[:, 0])


def _forward_with_hook(model: nn.Module, layer: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Runs the model once and returns (logits, target-layer output)."""
    with FeatureHook(layer) as hook:
        logits = model(images)
    acts = hook.activation
    if not acts.requires_grad:  # every layer up to the target is frozen: graph from the input
        with FeatureHook(layer) as hook:
            logits = model(images.detach().requires_grad_(True))
        acts = hook.activation
    return logits, acts


def hirescam(
    model: nn.Module,
    target_layer: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    reshape: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """HiResCAM of ``images`` in torch, optionally differentiable (see "Model mode" above).

    Args:
        model: classifier returning logits ``[B, K]``.
        target_layer: module whose output is explained (e.g. ``resnet.layer4``).
        images: input batch ``[B, C, H, W]``.
        targets: class per image ``[B]``; None explains the predicted class (argmax).
        create_graph: keep the CAM differentiable w.r.t. the parameters (for a loss). False
            returns detached CAMs, as the numpy original did.
        reshape: maps the layer output to ``[B, C, h, w]`` (``vit_reshape``, ``swin_reshape``).

    Returns:
        ``(logits [B, K], cams [B, H, W])``, each CAM in ``[0, 1]``. The logits keep their
        graph (``retain_graph=True``), so a CE loss on them can still backpropagate.
    """
    with torch.inference_mode(False), torch.enable_grad():
        if images.is_inference():
            images = images.clone()
        if targets is not None and targets.is_inference():  # gather saves them for backward
            targets = targets.clone()
        logits, acts = _forward_with_hook(model, target_layer, images)
        if targets is None:
            targets = logits.argmax(dim=1)
        score = logits.gather(1, targets.to(logits.device).long().view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, acts, create_graph=create_graph, retain_graph=True)
        if not create_graph:
            acts = acts.detach()
        if reshape is not None:
            acts, grads = reshape(acts), reshape(grads)
        cams = torch.relu((grads * acts).sum(dim=1))
        return logits, _scale_to_input(cams, tuple(images.shape[-2:]))


def _match_masks(masks: Tensor, size: torch.Size) -> Tensor:
    """Masks ``[B, 1, H, W]`` or ``[B, H, W]`` -> float ``[B, h, w]`` at ``size`` (nearest)."""
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"expected one mask channel, got shape {tuple(masks.shape)}")
        masks = masks[:, 0]
    masks = masks.float()
    if masks.shape[-2:] != size:
        masks = F.interpolate(masks[:, None], size=tuple(size), mode="nearest")[:, 0]
    return masks


def soft_iou(cams: Tensor, masks: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Differentiable IoU per image: ``sum(c*m) / (sum(c) + sum(m) - sum(c*m) + eps)``.

    For binary masks and CAMs in ``[0, 1]`` this equals the min/max (Ruzicka) form
    ``sum(min(c, m)) / sum(max(c, m))`` value for value; the product form is chosen because it
    is smooth everywhere (no ties for min/max to break), also for soft masks.

    Args:
        cams: saliency maps ``[B, H, W]`` in ``[0, 1]``.
        masks: ground truth ``[B, 1, H', W']`` or ``[B, H', W']`` in ``{0, 1}``; resized to the
            CAM size with nearest interpolation when the sizes differ.
        eps: keeps the ratio finite when both maps are empty.

    Returns:
        ``(iou [B], valid [B] bool)``; ``valid`` is False for empty masks, whose IoU is
        undefined (see the module docstring): average over valid images only.
    """
    masks = _match_masks(masks, cams.shape[-2:]).to(cams.dtype)
    inter = (cams * masks).sum(dim=(-2, -1))
    union = cams.sum(dim=(-2, -1)) + masks.sum(dim=(-2, -1)) - inter
    return inter / (union + eps), masks.sum(dim=(-2, -1)) > 0


def hard_iou(cams: Tensor, masks: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Thresholded IoU per image (``cam >= threshold`` vs ``mask > 0.5``), for reporting.

    Args:
        cams: saliency maps ``[B, H, W]`` in ``[0, 1]``.
        masks: ground truth as in ``soft_iou``.
        threshold: CAM value from which a pixel counts as salient.

    Returns:
        ``(iou [B], valid [B] bool)``: ``medtune.metrics.per_image_iou`` of the salient pixels and
        the mask (so 1.0 when both are empty), and ``valid`` = mask non-empty, as in ``soft_iou``:
        a CAM on a lesion-free image localises nothing, so saliency averages skip those images.
    """
    masks = _match_masks(masks, cams.shape[-2:]) > 0.5
    return per_image_iou(cams.detach() >= threshold, masks), masks.flatten(1).any(1)


def cam_ceiling(masks: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """What a CAM of ``grid`` resolution can reach: ``hard_iou`` of the mask's own coarse map.

    The map is the lesion mask averaged over each of the ``grid`` cells (the best coarse summary
    of the lesion in the squared-error sense), drawn exactly as a CAM is (normalised, bilinear
    upsampling, normalised again, thresholded at 0.5). A 2x2 map cannot outline a lesion, an 8x8
    one mostly can: the ceiling tells whether ``saliency_iou`` can tell models apart at all.

    Args:
        masks: lesion masks [B, 1, H, W] or [B, H, W] in {0, 1}.
        grid: the CAM layer's (h, w).

    Returns:
        ``(iou [B], valid [B])`` with the ``hard_iou`` convention (images without a lesion invalid).
    """
    target = masks.float() if masks.dim() == 4 else masks.float()[:, None]
    coarse = F.adaptive_avg_pool2d(target, grid)[:, 0]
    return hard_iou(_scale_to_input(coarse, tuple(target.shape[-2:])), target)


def valid_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over ``valid`` entries; 0 (still on the graph) when none is valid."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


class CEntIoULoss(nn.Module):
    """``ce_weight * CE + (1 - ce_weight) * (1 - mean soft IoU over images with a lesion)``.

    A batch without any lesion mask has a saliency term of 0 (not a renormalised CE), so the CE
    term has the same weight in every batch and the loss stays bounded and NaN-free. The CAMs
    must come from ``hirescam(..., create_graph=True)`` for the IoU term to train anything;
    ``targets=labels`` there explains the true class, None (pytorch_grad_cam's default) the
    predicted one.

    Args:
        ce_weight: weight of cross-entropy in ``[0, 1]``; 1.0 is plain CE.
        class_weights: optional per-class CE weights (length K).
    """

    def __init__(self, *, ce_weight: float = 0.5, class_weights: list[float] | None = None) -> None:
        super().__init__()
        if not 0.0 <= ce_weight <= 1.0:
            raise ValueError(f"ce_weight must be in [0, 1], got {ce_weight}")
        self.ce_weight = ce_weight
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weights)

    def forward(self, logits: Tensor, targets: Tensor, cams: Tensor, masks: Tensor) -> Tensor:
        """Loss of a batch: logits ``[B, K]``, targets ``[B]``, cams ``[B, H, W]``, masks."""
        ce = F.cross_entropy(logits, targets, weight=self.class_weights)
        iou, valid = soft_iou(cams, masks)
        return self.ce_weight * ce + (1.0 - self.ce_weight) * valid_mean(1.0 - iou, valid)
