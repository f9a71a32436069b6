"""When a trial's epoch report carries a checkpoint: what publishing and ``--resume`` need, no more.

Writing a Lightning checkpoint and Ray's copy of it cost about 0.6 s per epoch for a resnet18 at
64 px on a CPU, 20% of a 2.7 s epoch, and most of them were deleted by the next one. A report now
carries a checkpoint only when one is needed:

* ``best``: the objective beat the trial's best so far. The launch publishes the best epoch of the
  best trial (Ray keeps each trial's best-scoring checkpoint), so every new best is written.
* ``last``: the trial's last epoch (its budget, or its own patience stopped it), so a launch killed
  between this report and Ray's record of the trial's end resumes it with nothing left to train.
* ``due``: ``every_s`` seconds passed since the trial's last checkpoint, which bounds what a kill
  costs: ``--resume`` re-trains at most that much per running trial (plus the epoch in flight).

ASHA's rung epochs need nothing: a trial ASHA stops is never resumed, and its best epoch is already
written. ``every_s=0`` writes every epoch (``launch.py --checkpoint-minutes 0``).

Resume semantics: Ray restarts an unfinished trial from its latest checkpoint, epoch k, with its
iteration counter at k, and the trial re-trains epochs k+1 onwards. Those epochs train exactly as
before (``medtune.engine.trainer.EpochSeed`` seeds each epoch from the seed and its number, and the
checkpoint holds weights, optimizer, scheduler and early-stopping state), and the driver's MLflow
logger skips epochs a run already has (``mlflow_trials``): no epoch is logged twice. The policy's
own state (the best so far) travels in the checkpoint.

What is kept of a checkpoint once it is neither the latest nor of a running trial: its
``WEIGHTS_KEYS`` (``trainables.cleanup.CheckpointPruner``); ``resumable`` tells the two kinds apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# What a checkpoint keeps once no resume can need it (``trainables.cleanup.weights_only``): the weights,
# all that publishing reads (``medtune.engine.evaluate.load_system``), and the epoch they are from.
# The optimizer's state goes (AdamW: two tensors per weight, 2/3 of a full checkpoint), and with it
# the schedulers', loops' and callbacks' state, which only a resume reads.
WEIGHTS_KEYS = ("state_dict", "epoch", "global_step", "pytorch-lightning_version")
EVERY_S = 300.0  # launch.py --checkpoint-minutes 5: the most a kill costs a running trial, in seconds


@dataclass
class CheckpointPolicy:
    """Decides, epoch by epoch, whether the report carries a checkpoint (see the module doc).

    Args:
        metric: the search's objective ("" : no objective known, so every epoch is written).
        mode: ``max`` or ``min``.
        every_s: the longest a trial goes without a checkpoint, in seconds (0: every epoch).
    """

    metric: str
    mode: str = "max"
    every_s: float = EVERY_S
    best: float | None = None
    saved_at: float = field(default_factory=time.monotonic)

    def reason(self, metrics: Mapping[str, float], *, last: bool, now: float | None = None) -> str | None:
        """Why this epoch's report carries a checkpoint (``best``, ``last``, ``due``), or None; records it."""
        now = time.monotonic() if now is None else now
        value = metrics.get(self.metric) if self.metric else None
        improved = value is not None and math.isfinite(value) and (self.best is None or self._better(value))
        if improved:
            self.best = float(value)
        why = "best" if improved else "last" if last else "due" if self._due(now) else None
        if why is not None:
            self.saved_at = now
        return why

    def _better(self, value: float) -> bool:
        return value > self.best if self.mode == "max" else value < self.best

    def _due(self, now: float) -> bool:
        return not self.metric or self.every_s <= 0 or now - self.saved_at >= self.every_s

    def state_dict(self) -> dict:
        """What a resumed trial needs to go on deciding: the best so far (the clock restarts)."""
        return {"best": self.best}

    def load_state_dict(self, state: Mapping) -> None:
        self.best = state.get("best")


def resumable(files: Iterable[Path]) -> bool:
    """Whether the checkpoint ``files`` hold the training state that a resume restores.

    A trial's latest checkpoint always does while the trial runs. When the trial ends, the launch
    keeps its weights only (``trainables.cleanup.CheckpointPruner``), at once; a launch killed before
    its next snapshot recorded the end resumes that trial, which then has nothing left to do.
    """
    import torch  # here: the driver's policy needs no torch

    return all("optimizer_states" in torch.load(f, map_location="cpu", mmap=True, weights_only=True) for f in files)
