"""``launch.py --set key=value``: fixed values and the budget changed from the command line.

``--set data.image_size=48``, ``--set budget.max_epochs=1``, ``--set train.lr=0.001`` (a searched key
becomes fixed at that value). Values are YAML scalars (``yaml.safe_load``); the changed space passes
the checks a space file gets (``medtune.config.spaces.revalidate``) and each value must have the kind the
space (or the constructor's default) gives its key. Every problem is one ``SpaceError`` line naming
``--set <key>`` and what was expected.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import yaml

from medtune.config.spaces import SearchSpace, revalidate
from medtune.config.validate import BUDGET_DEFAULTS, SCALARS, SpaceError
from medtune.data.datasets import CachedDataModule
from medtune.engine import build
from medtune.tasks.base import BaseTask

POSITIVE_INTS = {"data.image_size"}  # read by the driver (caches are built per size), not by a constructor
INTEGER, NUMBER, FLAG, NAME = "an integer", "a number", "true or false", "a name"


def parse(items: Sequence[str]) -> dict[str, Any]:
    """``["data.image_size=48", ...]`` -> ``{"data.image_size": 48, ...}`` (YAML scalars), in order."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpaceError(f"--set {item}: expected key=value, e.g. --set data.image_size=48")
        if key in values:
            raise SpaceError(f"--set {key}: given twice; give each key once")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text  # e.g. "a: b": not a scalar; the kind check below names what was expected
        if not isinstance(value, SCALARS):
            raise SpaceError(f"--set {key}: expected one value (a number, a name, true or false), got {text!r}")
        values[key] = value
    return values


def apply_overrides(space: SearchSpace, items: Sequence[str]) -> SearchSpace:
    """``space`` with the ``--set`` items applied in order, each checked as the space file is."""
    values = parse(items)
    for key, value in values.items():
        space = _apply_one(space, key, value)
    if space.search == "grid" and values.get("budget.num_samples", space.budget["num_samples"]) != (
        size := space.budget["num_samples"]
    ):
        # A grid runs each combination once (as --num-samples is refused for a grid).
        raise SpaceError(f"--set budget.num_samples: {space.path} is a grid of {size} combinations, each run once")
    return space


def describe(items: Sequence[str]) -> str:
    """The overrides as one line for the parent run's ``overrides`` param: ``key=value, ...``."""
    return ", ".join(f"{key}={value}" for key, value in parse(items).items())


def _apply_one(space: SearchSpace, key: str, value: Any) -> SearchSpace:
    group, _, arg = key.partition(".")
    if group == "budget" and arg in BUDGET_DEFAULTS:
        changed = dataclasses.replace(space, budget={**space.budget, arg: value})
    elif group == "budget":
        raise SpaceError(f"--set {key}: unknown budget key '{arg}'; valid: {', '.join(BUDGET_DEFAULTS)}")
    elif group in build.GROUPS and arg:
        params = tuple(p for p in space.params if p.name != key)  # a searched key becomes fixed
        value = _checked(space, key, value)
        changed = dataclasses.replace(space, fixed={**space.fixed, key: value}, params=params)
    else:
        groups = ", ".join(("budget", *build.GROUPS))
        raise SpaceError(f"--set {key}: unknown key; expected <group>.<name> with group one of {groups}")
    try:
        return revalidate(changed)
    except SpaceError as err:  # "<path>: key '<key>': <what>" -> "--set <key>: <what>"
        message = str(err).removeprefix(f"{space.path}: ").removeprefix(f"key '{key}': ")
        raise SpaceError(f"--set {key}: {message}") from None


def _checked(space: SearchSpace, key: str, value: Any) -> Any:
    """``value`` if it has the kind ``key`` takes (a numeric string such as ``1e-3`` becomes a float)."""
    kinds, nullable = _expected(space, key)
    if isinstance(value, str) and NUMBER in kinds and _kind(value) not in kinds:
        try:  # PyYAML reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if key in POSITIVE_INTS and not (_kind(value) == INTEGER and value >= 1):
        raise SpaceError(f"--set {key}: expected a positive integer, got {value!r}")
    if value is None and nullable:
        return value
    if kinds and not (_kind(value) in kinds or (_kind(value) == INTEGER and NUMBER in kinds)):
        raise SpaceError(f"--set {key}: expected {' or '.join(sorted(kinds))}, got {value!r}")
    return value


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return FLAG
    if isinstance(value, int):
        return INTEGER
    return NUMBER if isinstance(value, float) else NAME if isinstance(value, str) else None


def _expected(space: SearchSpace, key: str) -> tuple[set[str], bool]:
    """The kinds ``key`` takes (empty: any) and whether it may be null, from the space's value or
    parameter and the constructor's default. An integer default (or an ``int`` parameter) asks for an
    integer; otherwise any number will do (a YAML ``0`` for a float argument must not refuse ``0.01``)."""
    param = next((p for p in space.params if p.name == key), None)
    refs = [space.fixed[key]] if key in space.fixed else list(param.values) if param and param.kind == "choice" else []
    default = _default(space, key)
    if default is not inspect.Parameter.empty:
        refs.append(default)
    kinds = {NUMBER if k == INTEGER else k for k in map(_kind, refs) if k}
    if param and param.kind in ("uniform", "loguniform"):
        kinds.add(NUMBER)
    if (param and param.kind == "int") or (_kind(default) == INTEGER and kinds == {NUMBER}):
        kinds = {INTEGER}
    return kinds, any(ref is None for ref in refs)


def _default(space: SearchSpace, key: str) -> Any:
    """The default of the constructor argument ``key`` names (``Parameter.empty``: none found)."""
    group, _, arg = key.partition(".")
    if group in ("model", "loss"):
        registry = build.registry(space.task, group)
        functions = [registry[n] for n in space.possible_values(f"{group}.name") if n in registry]
    elif group == "train":
        functions = [build.task_spec(space.task).system.__init__, BaseTask.__init__]
    else:
        functions = [CachedDataModule.__init__]
    for function in functions:
        param = inspect.signature(function).parameters.get(arg)
        if param is not None and param.default is not param.empty:
            return param.default
    return inspect.Parameter.empty
