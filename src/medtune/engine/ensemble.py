"""The K fold models of a cross-validated winner as one network: the mean of their probabilities.

``FoldEnsemble`` returns logits whose activation (the task's ``activation``) gives the members' mean
probability: ``log(mean softmax)`` for single-label classifiers, ``logit(mean sigmoid)`` for
segmenters and multi-label classifiers. So the task's metrics, predictions, the logged MLflow model
and the segmenter-mask code use it exactly as they use one network.
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.tasks.base import BaseTask

EPS = 1e-6  # keeps log/logit of a mean probability of 0 or 1 finite


class FoldEnsemble(nn.Module):
    """Mean probability of ``members`` (same input, same output shape) as logits.

    Args:
        members: the fold models.
        activation: ``softmax`` (over dim 1) or ``sigmoid``.
    """

    def __init__(self, members: list[nn.Module], activation: str) -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"FoldEnsemble: unknown activation '{activation}'; valid: softmax, sigmoid")
        self.members, self.activation = nn.ModuleList(members), activation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([member(images) for member in self.members])
        if self.activation == "softmax":
            return torch.log(torch.softmax(outputs, dim=2).mean(0).clamp_min(EPS))
        return torch.logit(torch.sigmoid(outputs).mean(0), eps=EPS)


def ensemble_system(shell: BaseTask, members: list[BaseTask]) -> BaseTask:
    """``shell`` (a fresh system of the winning configuration) running the ensemble of ``members``' networks.

    A task with a CAM draws it at the first member's layer, for the ensemble's output (the gradient
    reaches that member only): the saliency of one fold model within the ensemble's decision.
    """
    shell.model = FoldEnsemble([m.model for m in members], shell.activation)
    if getattr(shell, "cam_layer", ""):
        shell.cam_layer = f"members.0.{shell.cam_layer}"
    return shell.eval()
