"""Optimizer and learning-rate scheduler registries shared by every task.

Search spaces set them with ``train.optimizer``, ``train.lr``, ``train.weight_decay``, ``train.momentum`` and
``train.scheduler`` (arguments of ``BaseTask``); the task passes its parameters and budget in. Schedulers
step per epoch except ``onecycle`` and ``cyclic`` (per step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer, lr_scheduler

from medtune.names import lookup


def _adam(params, *, lr: float, weight_decay: float, momentum: float) -> Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _adamw(params, *, lr: float, weight_decay: float, momentum: float) -> Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _sgd(params, *, lr: float, weight_decay: float, momentum: float) -> Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}


def _cosine(opt: Optimizer, *, epochs: int, steps_per_epoch: int, lr: float) -> dict:
    return {"scheduler": lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs)), "interval": "epoch"}


def _linear(opt: Optimizer, *, epochs: int, steps_per_epoch: int, lr: float) -> dict:
    sched = lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.05, total_iters=max(1, epochs))
    return {"scheduler": sched, "interval": "epoch"}


def _onecycle(opt: Optimizer, *, epochs: int, steps_per_epoch: int, lr: float) -> dict:
    sched = lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=max(1, epochs), steps_per_epoch=max(1, steps_per_epoch))
    return {"scheduler": sched, "interval": "step"}


def _cyclic(opt: Optimizer, *, epochs: int, steps_per_epoch: int, lr: float) -> dict:
    # Triangular2: the cycle's amplitude halves each cycle; two cycles over the budget.
    half_cycle = max(1, epochs * steps_per_epoch // 4)
    sched = lr_scheduler.CyclicLR(
        opt, base_lr=lr / 10, max_lr=lr, step_size_up=half_cycle, mode="triangular2", cycle_momentum=False
    )
    return {"scheduler": sched, "interval": "step"}


def _plateau(opt: Optimizer, *, epochs: int, steps_per_epoch: int, lr: float) -> dict:
    sched = lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2)
    return {"scheduler": sched, "interval": "epoch", "monitor": "val/loss"}


def _constant(opt: Optimizer, *, epochs: int, steps_per_epoch: int, lr: float) -> dict | None:
    return None


SCHEDULERS: dict[str, Callable[..., dict | None]] = {
    "constant": _constant,
    "cosine": _cosine,
    "linear": _linear,
    "onecycle": _onecycle,
    "cyclic": _cyclic,
    "plateau": _plateau,
}


def configure(
    params,
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    scheduler: str,
    epochs: int,
    steps_per_epoch: int,
) -> dict:
    """Build the optimizer and scheduler in Lightning's ``configure_optimizers`` format."""
    opt = lookup(OPTIMIZERS, "optimizer", optimizer)(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    sched = lookup(SCHEDULERS, "scheduler", scheduler)(opt, epochs=epochs, steps_per_epoch=steps_per_epoch, lr=lr)
    return {"optimizer": opt, "lr_scheduler": sched} if sched else {"optimizer": opt}
