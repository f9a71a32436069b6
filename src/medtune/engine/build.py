"""Turn a flat trial configuration into a Lightning system and data module.

A configuration is a flat dict of dotted keys, one group per constructor it feeds:

* ``model.name`` + ``model.<arg>``: a factory in the task's model registry;
* ``loss.name`` + ``loss.<arg>``: a factory in the task's loss registry (``loss.class_weights`` and
  ``loss.pos_weight`` may be ``balanced``: computed from the training split, see ``medtune.losses.BALANCED``);
* ``train.<arg>``: the task system (optimizer, lr, scheduler, ...);
* ``data.<arg>``: the data module (batch_size, augment, mask_mode, ...) and ``data.image_size``.

``accepted_args`` tells which ``<arg>`` each group takes, so search spaces are validated against
the real constructor signatures before anything runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from medtune.data.cache import CacheSource, load_cache
from medtune.data.datasets import CachedDataModule
from medtune.losses import BALANCED, LOSSES_BY_KIND
from medtune.models import CLS_MODELS, CLS_SPECS, SEG_MODELS
from medtune.names import lookup
from medtune.tasks import TASKS, TaskSpec
from medtune.tasks.base import BaseTask

GROUPS = ("model", "loss", "train", "data")
DRIVER_DATA_ARGS = {"image_size"}  # used by the driver to build caches, not by the data module
# set by the platform, never searched (cam_*: the HiResCAM layer of the backbone, from CLS_SPECS)
PROVIDED = {"caches", "pred_masks", "num_classes", "max_epochs", "cam_layer", "cam_reshape", "subsets"}


def task_spec(task: str) -> TaskSpec:
    return lookup(TASKS, "task", task)


def registry(task: str, group: str) -> dict[str, Callable[..., nn.Module]]:
    """The model or loss registry of ``task``."""
    spec = task_spec(task)
    if group == "model":
        return SEG_MODELS if spec.model_kind == "segmentation" else CLS_MODELS
    return LOSSES_BY_KIND[spec.loss_kind]


def _keyword_args(fn: Callable) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"self"}


def accepted_args(task: str, group: str, name: str | None = None) -> set[str]:
    """Keyword arguments a group accepts; ``name`` picks the model or loss factory."""
    if group in ("model", "loss"):
        return _keyword_args(lookup(registry(task, group), group, name)) - PROVIDED
    if group == "train":
        system = task_spec(task).system
        return (_keyword_args(BaseTask.__init__) | _keyword_args(system.__init__)) - {"model", "loss"} - PROVIDED
    if group == "data":
        return (_keyword_args(CachedDataModule.__init__) | DRIVER_DATA_ARGS) - PROVIDED
    raise ValueError(f"unknown parameter group '{group}'; valid: {', '.join(GROUPS)}")


def group_args(config: dict, group: str) -> dict:
    """The ``group.*`` entries of ``config`` without the prefix (``name`` included)."""
    prefix = f"{group}."
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def _resolve_balanced(task: str, args: dict, *, train_cache: str | None, num_classes: int | None) -> dict:
    """Replace loss arguments set to ``balanced`` (``medtune.losses.BALANCED``) by training-split weights
    (and ``none`` by None, so a space can choose between ``none`` and ``balanced``)."""
    for key, weights in BALANCED.items():
        if args.get(key) == "none":
            args[key] = None
        if args.get(key) != "balanced":
            continue
        if task_spec(task).loss_kind == "segmentation" or train_cache is None or num_classes is None:
            raise ValueError(
                f"loss.{key}: 'balanced' needs the image labels of the training split "
                "(a classification task, and build_system(..., train_cache=...))"
            )
        args[key] = weights(load_cache(train_cache)["labels"], num_classes)
    return args


def build_part(task: str, group: str, config: dict, *, train_cache: str | None = None, **provided) -> nn.Module:
    """Build the model or loss named by ``config['<group>.name']``.

    ``train_cache`` (the training split's cache file) is read only to resolve ``balanced`` loss weights.
    """
    args = group_args(config, group)
    factory = lookup(registry(task, group), group, args.pop("name"))
    if group == "loss":
        args = _resolve_balanced(task, args, train_cache=train_cache, num_classes=provided.get("num_classes"))
    wanted = _keyword_args(factory)
    return factory(**args, **{k: v for k, v in provided.items() if k in wanted})


def build_system(
    task: str, config: dict, *, num_classes: int, max_epochs: int, train_cache: CacheSource | None = None
) -> BaseTask:
    """The Lightning system for one trial configuration.

    ``train_cache``: the training split's cache file, needed when a loss weight is ``balanced``.
    """
    system = task_spec(task).system
    model = build_part(task, "model", config, num_classes=num_classes)
    loss = build_part(task, "loss", config, train_cache=train_cache, num_classes=num_classes)
    provided = platform_args(system, config, num_classes=num_classes, max_epochs=max_epochs)
    return system(model, loss, **provided, **group_args(config, "train"))


def platform_args(system: type[BaseTask], config: dict, *, num_classes: int, max_epochs: int) -> dict:
    """The values of the platform-provided arguments ``system.platform_args`` declares.

    ``cam_layer``/``cam_reshape`` come from the backbone's ``CLS_SPECS`` entry (``model.name``), at the
    block ``model.cam_block`` names (``last`` unless the space sets it).
    """
    wanted = set(system.platform_args)
    unknown = wanted - PROVIDED
    if unknown:
        raise ValueError(f"{system.__name__}.platform_args: unknown {sorted(unknown)}; valid: {sorted(PROVIDED)}")
    values: dict = {"num_classes": num_classes, "max_epochs": max_epochs}
    if wanted & {"cam_layer", "cam_reshape"}:
        cam = lookup(CLS_SPECS, "classification model", config["model.name"])
        values.update(cam_layer=cam.cam_path(config.get("model.cam_block", "last")), cam_reshape=cam.cam_reshape)
    return {k: values[k] for k in system.platform_args if k in values}


def build_datamodule(
    config: dict,
    *,
    caches: dict[str, CacheSource],
    pred_masks: dict[str, CacheSource] | None = None,
    num_classes: int | None = None,
    subsets: dict[str, list[int]] | None = None,
) -> CachedDataModule:
    """The data module over the driver-built caches (files, or open: ``medtune.data.shared``) for one configuration.

    ``num_classes`` sizes the multi-hot ``targets``; None lets the data module infer it from the caches.
    ``subsets``: split -> rows of its cache (a cross-validation fold, ``medtune.engine.crossval``).
    """
    args = {k: v for k, v in group_args(config, "data").items() if k not in DRIVER_DATA_ARGS}
    return CachedDataModule(caches=caches, pred_masks=pred_masks, num_classes=num_classes, subsets=subsets, **args)
