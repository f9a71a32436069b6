"""Multi-label classification: one image, a set of findings (as in chest X-ray and fundus studies).

The network outputs one logit per label (the dataset's categories); the loss (``ML_LOSSES``) compares
them with the data module's multi-hot ``targets``, built from every COCO category annotated on the
image. Metrics use sigmoid probabilities (``threshold`` for F1 and kappa), per label, then averaged
over the labels a split can score: those with at least one positive and one negative image. AUROC
and kappa are undefined otherwise, so a rare label absent from a small validation split is left out
rather than scored 0 (a split where no label qualifies gives NaN).

* ``auroc`` (macro) and ``auroc_<k>`` for each scored label, k its index in the categories' order;
* ``f1_macro``: F1 per label, averaged;
* ``kappa``: Cohen's kappa between prediction and truth per label, averaged;
* ``challenge_score``: mean(kappa, f1_macro, auroc), the final score of the ODIR-2019 fundus
  challenge (there on pooled labels, here on the per-label averages above).

No saliency metric: HiResCAM explains one class, and an image here has a set of them.

Test predictions (``predict_batch``): ``labels`` uint8 [N,K] (multi-hot, 1 = label present) and
``probs`` [N,K] (sigmoid, one per label).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAUROC, MultilabelStatScores

from medtune.tasks.base import BaseTask


def multilabel_scores(auroc: Tensor, stats: Tensor) -> dict[str, Tensor]:
    """Averaged metrics from per-label AUROC [K] and stat scores [K, 5] (tp, fp, tn, fn, support)."""
    tp, fp, tn, fn = stats[:, :4].double().unbind(1)
    n, pos = tp + fp + tn + fn, tp + fn
    scored = (pos > 0) & (pos < n)
    expected = ((tp + fp) * pos + (tn + fn) * (tn + fp)) / n**2  # chance agreement; < 1 when scored
    per_label = {
        "auroc": auroc.double(),
        "f1_macro": 2 * tp / (2 * tp + fp + fn),
        "kappa": ((tp + tn) / n - expected) / (1 - expected),
    }
    out = {name: values[scored].mean() for name, values in per_label.items()}
    out["challenge_score"] = (out["kappa"] + out["f1_macro"] + out["auroc"]) / 3
    out.update({f"auroc_{k}": auroc[k].double() for k in scored.nonzero().flatten().tolist()})
    return {name: value.float() for name, value in out.items()}


class MultiLabelTask(BaseTask):
    """Multi-label system; ``num_classes`` (the number of labels) comes from the platform.

    Args:
        model: the classifier (``CLS_MODELS``), one logit per label.
        loss: a multi-label loss (``ML_LOSSES``) on (logits, multi-hot targets).
        num_classes: labels in the dataset.
        threshold: probability from which a label counts as predicted (F1 and kappa, not AUROC).
        **train_args: optimizer and scheduler arguments of ``BaseTask``.
    """

    report_kind = "multilabel"
    activation = "sigmoid"
    platform_args = ("max_epochs", "num_classes")

    def __init__(
        self, model: nn.Module, loss: nn.Module, *, num_classes: int, threshold: float = 0.5, **train_args
    ) -> None:
        self.num_classes, self.threshold = num_classes, threshold
        super().__init__(model, loss, **train_args)

    def make_metrics(self, prefix: str) -> MetricCollection:
        k = self.num_classes
        return MetricCollection(
            {
                "auroc": MultilabelAUROC(k, average=None),
                "stats": MultilabelStatScores(k, threshold=self.threshold, average=None),
            }
        )

    def targets(self, batch: dict) -> Tensor:
        """The batch's multi-hot targets [B, K], checked against the model's K outputs."""
        targets = batch["targets"]
        if targets.shape[1] != self.num_classes:
            raise ValueError(
                f"the data has {targets.shape[1]} labels but the model {self.num_classes}; "
                "build the data module with num_classes (build_datamodule(..., num_classes=...))"
            )
        return targets

    def step(self, batch: dict) -> tuple[Tensor, Tensor]:
        logits = self.model(batch["image"])
        return self.loss(logits, self.targets(batch)), logits

    def update_metrics(self, stage: str, logits: Tensor, batch: dict) -> None:
        self.metrics[stage].update(torch.sigmoid(logits), self.targets(batch).long())

    def predict_batch(self, batch: dict, *, overlays: int) -> dict[str, Tensor]:
        """Multi-hot labels and sigmoid probabilities (no figures: no CAM for a set of labels)."""
        probs = torch.sigmoid(self.model(batch["image"]))
        return {"labels": self.targets(batch).to(torch.uint8), "probs": probs}

    def _log_scores(self, stage: str) -> None:
        with warnings.catch_warnings():  # labels without positives (or negatives): multilabel_scores leaves them out
            warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
            values = self.metrics[stage].compute()
        scores = multilabel_scores(values["auroc"], values["stats"])
        self.log_dict({f"{stage}/{name}": value for name, value in scores.items()})
        self.metrics[stage].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")
