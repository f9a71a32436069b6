"""Single-label image classification, on the whole image or on the segmenter-masked image.

Which image the network sees is decided by the data module (``data.mask_mode``); the system is the
same, so whole-image and masked classifiers are compared on equal terms.

Every classifier also reports ``val/saliency_iou`` and ``test/saliency_iou``: does the network look
at the lesion? It is the thresholded IoU (``medtune.saliency.hard_iou``, CAM >= 0.5) between the
HiResCAM of the backbone's CAM layer and the ground-truth lesion mask. The CAM explains the *true*
class, so the question is "when the model explains the right answer, is the evidence on the
lesion?", independent of whether it predicted that answer. Images without a lesion are left out
(the ``valid`` convention of ``medtune.saliency``); a split with no lesion at all logs no
``saliency_iou`` rather than NaN. ``saliency_metric=False`` turns the extra cost off: the forward
runs with grad, plus a backward down to the CAM layer (measured per validation step at 64 px,
batch 16, CPU, 1 thread: about 1.05x on resnet18, 1.3x on mobilenet_v3_small).

Test predictions (``predict_batch``): ``labels`` [N], ``probs`` [N,K] (softmax) and, with a CAM
layer, for the first images: ``images`` uint8 [M,3,S,S] (the view the network saw: masked or
cropped in masked classification), ``masks`` uint8 [M,1,S,S] (the lesion in that view), ``cams``
float16 [M,S,S] (HiResCAM of the true class) and ``saliency_iou`` [M] (NaN without a lesion).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassCohenKappa, MulticlassF1Score

from medtune.names import lookup
from medtune.saliency import FeatureHook, cam_ceiling, hard_iou, hirescam, swin_reshape, vit_reshape
from medtune.tasks.base import BaseTask, seen_images

# ``CLS_SPECS[name].cam_reshape`` -> how the CAM layer's output becomes [B, C, h, w].
CAM_RESHAPES: dict[str, Callable[[Tensor], Tensor] | None] = {
    "": None,  # conv nets: already [B, C, h, w]
    "vit_tokens": vit_reshape,  # [B, 1 + h*w, C]: drop the class token (grid = isqrt(tokens))
    "swin_nhwc": swin_reshape,  # [B, h, w, C]: permute
}


class ClassificationTask(BaseTask):
    """Classification system; ``num_classes`` and the CAM layer come from the platform, not the space.

    Args:
        model: the classifier (``CLS_MODELS``).
        loss: classification loss on (logits, labels).
        num_classes: classes in the dataset.
        saliency_metric: compute ``val/saliency_iou`` and ``test/saliency_iou``.
        cam_layer: dotted path of the layer HiResCAM hooks (``CLS_SPECS[name].cam_layer``, set by
            ``build_system``); required when ``saliency_metric`` is on.
        cam_reshape: a key of ``CAM_RESHAPES`` (``CLS_SPECS[name].cam_reshape``).
        **train_args: optimizer and scheduler arguments of ``BaseTask``.
    """

    report_kind = "classification"
    activation = "softmax"
    platform_args = ("max_epochs", "num_classes", "cam_layer", "cam_reshape")

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        *,
        num_classes: int,
        saliency_metric: bool = True,
        cam_layer: str = "",
        cam_reshape: str = "",
        **train_args,
    ) -> None:
        self.num_classes = num_classes
        super().__init__(model, loss, **train_args)
        if saliency_metric and not cam_layer:
            raise ValueError(
                "saliency_metric needs cam_layer (the HiResCAM layer, CLS_SPECS[name].cam_layer; "
                "build_system sets it), or set train.saliency_metric: false"
            )
        if cam_layer:
            model.get_submodule(cam_layer)  # fail now, not at the first validation, on a wrong path
        self.saliency_metric, self.cam_layer = saliency_metric, cam_layer
        self.cam_reshape = lookup(CAM_RESHAPES, "CAM reshape", cam_reshape)
        self.saliency_iou = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self._cam_checked = False

    def make_metrics(self, prefix: str) -> MetricCollection:
        k = self.num_classes
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(k, average="micro"),
                "balanced_acc": MulticlassAccuracy(k, average="macro"),  # mean per-class recall
                "f1_macro": MulticlassF1Score(k, average="macro"),
                "auroc": MulticlassAUROC(k, average="macro"),
                "kappa": MulticlassCohenKappa(k),
            },
            prefix=prefix,
        )

    def cam(self, images: Tensor, labels: Tensor, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """``(logits [B, K], cams [B, H, W])``: HiResCAM of the true ``labels`` at ``cam_layer``."""
        layer = self.model.get_submodule(self.cam_layer)
        logits, cams = hirescam(self.model, layer, images, labels, create_graph=create_graph, reshape=self.cam_reshape)
        if not self._cam_checked:  # once, e.g. resnet18 at 32 px: layer4 is 1x1, its scaled CAM all 0
            self._cam_checked = True
            if not cams.detach().amax() > 0:
                warnings.warn(
                    f"every HiResCAM of the first batch is zero ('{self.cam_layer}' is a 1x1 map at "
                    f"{images.shape[-1]} px, or the head is all zero as in a fresh torchvision ViT): "
                    "saliency_iou is 0 and the IoU term has no gradient while it lasts",
                    stacklevel=2,
                )
        return logits, cams

    def objective(self, logits: Tensor, batch: dict, cams: Tensor | None) -> Tensor:
        """The loss of a batch; ``cams`` are unused here (the saliency task adds a term)."""
        return self.loss(logits, batch["label"])

    def step(self, batch: dict) -> tuple[Tensor, Tensor]:
        logits = self.model(batch["image"])
        return self.objective(logits, batch, None), logits

    def update_metrics(self, stage: str, logits: Tensor, batch: dict) -> None:
        self.metrics[stage].update(torch.softmax(logits, dim=1), batch["label"])

    def _eval_step(self, stage: str, batch: dict) -> None:
        if not self.saliency_metric:
            return super()._eval_step(stage, batch)
        # One forward serves loss, metrics and CAM: hirescam's logits, detached.
        logits, cams = self.cam(batch["image"], batch["label"])
        logits = logits.detach()
        loss = self.objective(logits, batch, cams)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=batch["image"].shape[0])
        self.update_metrics(stage, logits, batch)
        iou, valid = hard_iou(cams, batch["mask"])
        if valid.any():  # a batch without a lesion contributes nothing
            self.saliency_iou[stage].update(iou, valid.to(iou.dtype))

    @property
    def has_cam(self) -> bool:
        """A backbone with a CAM layer: test predictions carry HiResCAMs to draw."""
        return bool(self.cam_layer)

    @torch.no_grad()
    def cam_grid(self, images: Tensor) -> tuple[int, int]:
        """The (h, w) of the CAM layer's map for ``images`` (its resolution before upsampling)."""
        with FeatureHook(self.model.get_submodule(self.cam_layer)) as hook:
            self.model(images[:1])
        activation = hook.activation if self.cam_reshape is None else self.cam_reshape(hook.activation)
        return int(activation.shape[-2]), int(activation.shape[-1])

    def predict_batch(self, batch: dict, *, overlays: int) -> dict[str, Tensor]:
        """Labels and softmax probabilities; the seen images, lesions and CAMs for figures.

        With a CAM layer, every image also gets ``saliency_iou`` (``hard_iou`` of its true-class
        HiResCAM; NaN without a lesion, so comparisons can bootstrap it over images), ``cam_grid``
        (the CAM's h, w) and ``saliency_ceiling`` (the ``cam_ceiling`` IoU at that resolution).
        """
        if not self.has_cam:
            return {"labels": batch["label"], "probs": torch.softmax(self.model(batch["image"]), dim=1)}
        logits, cams = self.cam(batch["image"], batch["label"])  # one forward serves probabilities and CAMs
        out = {"labels": batch["label"], "probs": torch.softmax(logits.detach(), dim=1)}
        iou, valid = hard_iou(cams, batch["mask"])
        out["saliency_iou"] = iou.where(valid, float("nan"))
        grid = self.cam_grid(batch["image"])
        ceiling, valid = cam_ceiling(batch["mask"], grid)
        out["saliency_ceiling"] = ceiling.where(valid, float("nan"))
        out["cam_grid"] = torch.tensor(grid).expand(len(ceiling), 2)
        if overlays:
            images, masks = batch["image"][:overlays], batch["mask"][:overlays]
            out["images"], out["masks"] = seen_images(images), (masks > 0.5).to(torch.uint8)
            out["cams"] = cams[:overlays].detach().half()
        return out

    def _log_saliency(self, stage: str) -> None:
        metric = self.saliency_iou[stage]
        if metric.weight > 0:  # no lesion in the whole split: log nothing rather than NaN
            self.log(f"{stage}/saliency_iou", metric.compute())
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_saliency("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_saliency("test")
