"""Task registry: what a search space's ``task:`` names, and how its parts are built.

To add a task, write its system (a ``BaseTask`` with ``report_kind``, ``platform_args`` and
``predict_batch``) and add one ``TaskSpec`` here. ``model_kind``/``loss_kind`` select the model and
loss registries; ``needs_segmenter`` makes the launcher resolve the champion segmenter and cache its
masks. What the system predicts, how the report draws it and which platform arguments (e.g. the
HiResCAM layer) it takes, the system class says itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from medtune.tasks.base import BaseTask
from medtune.tasks.classification import ClassificationTask
from medtune.tasks.multilabel import MultiLabelTask
from medtune.tasks.saliency import SaliencyClassificationTask
from medtune.tasks.segmentation import SegmentationTask


@dataclass(frozen=True)
class TaskSpec:
    """How to build one task: its system class, registries, and data requirements."""

    system: type[BaseTask]
    model_kind: str  # "segmentation" or "classification"
    needs_segmenter: bool = False
    loss_kind: str = ""  # a key of medtune.losses.LOSSES_BY_KIND; empty: the same as model_kind
    # data.<arg> keys a space must set, with the values allowed (checked when the space is loaded)
    required_data: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.loss_kind:
            object.__setattr__(self, "loss_kind", self.model_kind)

    @property
    def single_label(self) -> bool:
        """One class per image (the data must say which): the system reports as a classifier."""
        return self.system.report_kind == "classification"


TASKS: dict[str, TaskSpec] = {
    "segmentation": TaskSpec(SegmentationTask, "segmentation"),
    "classification": TaskSpec(ClassificationTask, "classification"),
    # A masked task without a mask mode would train on whole images under the name "masked".
    "masked_classification": TaskSpec(
        ClassificationTask,
        "classification",
        needs_segmenter=True,
        required_data=(("mask_mode", ("soft", "hard", "crop")),),
    ),
    "saliency_classification": TaskSpec(SaliencyClassificationTask, "classification"),
    "multilabel_classification": TaskSpec(MultiLabelTask, "classification", loss_kind="multilabel"),
}
