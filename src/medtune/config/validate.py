"""The search-space schema's rules: each check refuses a space with one line naming the file and key.

``medtune.config.spaces`` reads a YAML file (the schema is in its docstring) and builds the
``SearchSpace`` from what these functions return. Here is every rule a key must follow: the top-level
keys, the task and the objective (metric and mode), the kinds and ranges of searched parameters, the
``budget`` and ``cv`` blocks, that every key names an argument its constructor accepts, and the task's
required data keys. ``SpaceError`` is what they raise.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from medtune.metrics import lower_is_better

if TYPE_CHECKING:  # types only: medtune.config.spaces imports this module to build its SearchSpace
    from medtune.config.spaces import Param, SearchSpace

KINDS = ("choice", "uniform", "loguniform", "int")
TOP_KEYS = {"task", "metric", "mode", "search", "fixed", "params", "budget", "cv", "smoke"}
SEARCHES = ("tpe", "grid")  # tpe: Optuna TPE + ASHA; grid: every combination, no early stopping
# repeats: seeds the winner is trained with (the search's run + repeats - 1 retrains; single-label
# classification only), so its test score carries training variance; 1 keeps the search's run alone.
BUDGET_DEFAULTS = {"num_samples": 8, "max_epochs": 5, "grace_period": 1, "reduction_factor": 2, "repeats": 1}
SCALARS = (str, int, float, bool, type(None))


class SpaceError(ValueError):
    """A search-space problem; the message is one line naming the file and key."""


def _build() -> ModuleType:
    """``medtune.engine.build``, imported when a space is checked, not when this module is: it pulls in
    torch, torchvision and Lightning (several seconds), which a process that only holds spaces (a replayed
    trial, a reader of stored runs) never needs."""
    from medtune.engine import build

    return build


def check_top(path: Path, raw: Any) -> None:
    """A space file holds a mapping whose keys are all in ``TOP_KEYS``."""
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SpaceError(f"{path}: unknown key '{first(unknown)}'; valid: {', '.join(sorted(TOP_KEYS))}")


def mapping(path: Path, raw: dict, key: str) -> dict:
    """``raw[key]`` (absent: ``{}``), which must be a mapping whose keys are strings."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise SpaceError(f"{path}: key '{key}': expected a mapping, got {type(value).__name__}")
    if bad := [k for k in value if not isinstance(k, str)]:
        raise SpaceError(f"{path}: key '{key}.{bad[0]}': keys must be strings, got {type(bad[0]).__name__}")
    return value


def first(keys: set) -> str:
    """The first of ``keys`` in sorted order; YAML keys need not be strings (``1:``, ``yes:``)."""
    return sorted(str(k) for k in keys)[0]


def task(path: Path, raw: dict) -> str:
    """``task``: a name in ``medtune.engine.build.TASKS``."""
    name = raw.get("task")
    tasks = _build().TASKS
    if not isinstance(name, str) or name not in tasks:
        raise SpaceError(f"{path}: key 'task': expected one of {', '.join(tasks)}, got {name!r}")
    return name


def check_objective(path: Path, metric: Any, mode: Any) -> None:
    """The objective is a validation metric (the search selects on val, never on train or test) and
    ``mode`` follows its direction (``medtune.metrics.lower_is_better``): ``val/loss`` with ``max``
    would pick the worst trial."""
    if not isinstance(metric, str) or not metric.startswith("val/") or metric == "val/":
        raise SpaceError(
            f"{path}: key 'metric': expected a validation metric val/<name> (e.g. val/iou), got {metric!r}"
        )
    if mode not in ("max", "min"):
        raise SpaceError(f"{path}: key 'mode': expected max or min, got {mode!r}")
    expected = "min" if lower_is_better(metric) else "max"
    if mode != expected:
        better = "lower" if expected == "min" else "higher"
        raise SpaceError(
            f"{path}: key 'mode': {metric} is better when {better}, so mode must be {expected}, got {mode}"
        )


def search(path: Path, raw: dict) -> str:
    """``search``: a name in ``SEARCHES`` (absent: ``tpe``)."""
    name = raw.get("search", "tpe")
    if name not in SEARCHES:
        raise SpaceError(f"{path}: key 'search': expected one of {', '.join(SEARCHES)}, got {name!r}")
    return name


def param(path: Path, key: str, spec: Any, fixed: dict) -> tuple[str, tuple, dict[str, tuple]]:
    """The kind, values and ``when`` (key -> allowed values) of ``params.<key>``, each checked."""

    def where(suffix: str = "") -> str:
        return f"{path}: key 'params.{key}{suffix}'"

    if key in fixed:
        raise SpaceError(f"{where()}: also in 'fixed'; a parameter is either fixed or searched")
    if not isinstance(spec, dict):
        raise SpaceError(f"{where()}: expected a mapping like {{choice: [...]}} or {{uniform: [low, high]}}")
    kinds = [k for k in spec if k != "when"]
    if len(kinds) != 1 or kinds[0] not in KINDS:
        raise SpaceError(f"{where()}: expected exactly one of {', '.join(KINDS)} (plus optional 'when'), got {kinds}")
    kind, values = kinds[0], spec[kinds[0]]
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where('.' + kind)}: expected a non-empty list")
    if kind != "choice":
        _check_range(where("." + kind), kind, values)
    if kind == "choice" and (bad := [v for v in values if not isinstance(v, SCALARS)]):
        raise SpaceError(f"{where('.choice')}: expected a list of values (names or numbers), got {bad[0]!r}")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise SpaceError(f"{where('.when')}: expected a mapping like {{model.name: unet}}")
    when = {k: tuple(v if isinstance(v, list) else [v]) for k, v in when.items()}
    for ref, allowed in when.items():
        if not isinstance(ref, str) or not all(isinstance(v, SCALARS) for v in allowed):
            raise SpaceError(f"{where('.when')}: expected a mapping like {{model.name: unet}}, got {ref!r}: {allowed}")
    return kind, tuple(values), when


def _check_range(where: str, kind: str, values: list) -> None:
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SpaceError(f"{where}: expected [low, high] numbers, got {values}")
    low, high = values
    if low > high:
        raise SpaceError(f"{where}: low {low} > high {high}")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise SpaceError(f"{where}: int needs integer bounds, got {values}")


def check_grid(path: Path, params: tuple[Param, ...]) -> None:
    """A grid search crosses choice lists only: a range has no finite set of points."""
    for p in params:
        if p.kind != "choice":
            raise SpaceError(f"{path}: key 'params.{p.name}': a grid search needs choice lists, got {p.kind}")


def folds(path: Path, raw: dict, key: str = "folds") -> int:
    """``cv.folds`` (every trial cross-validated) or ``cv.outer_folds`` (nested cross-validation): an
    integer >= 2 (absent: 0, none)."""
    unknown = set(raw or {}) - {"folds", "outer_folds"}
    if unknown:
        raise SpaceError(f"{path}: key 'cv.{first(unknown)}': unknown; valid: folds, outer_folds")
    count = raw.get(key, 0) if raw else 0
    if raw and key in raw and (not isinstance(count, int) or isinstance(count, bool) or count < 2):
        raise SpaceError(f"{path}: key 'cv.{key}': expected an integer >= 2, got {count!r}")
    return count


def budget(path: Path, raw: dict) -> dict[str, int]:
    """The ``budget`` block over ``BUDGET_DEFAULTS``: positive integers, ``reduction_factor`` >= 2."""
    unknown = set(raw) - set(BUDGET_DEFAULTS)
    if unknown:
        raise SpaceError(f"{path}: key 'budget.{first(unknown)}': unknown; valid: {', '.join(BUDGET_DEFAULTS)}")
    out = {**BUDGET_DEFAULTS, **raw}
    for key, value in out.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpaceError(f"{path}: key 'budget.{key}': expected a positive integer, got {value!r}")
    if out["reduction_factor"] < 2:
        raise SpaceError(f"{path}: key 'budget.reduction_factor': expected >= 2, got {out['reduction_factor']}")
    return out


def check_keys(space: SearchSpace) -> None:
    """Every key must name a group and an argument its constructor accepts (for each possible name)."""
    seen, groups = set(space.fixed), _build().GROUPS
    for key in list(space.fixed) + [p.name for p in space.params]:
        where = f"{space.path}: key '{key}'"
        found = next((p for p in space.params if p.name == key), None)
        group, _, arg = key.partition(".")
        if group not in groups or not arg:
            raise SpaceError(f"{where}: expected <group>.<argument> with group one of {', '.join(groups)}")
        if found:
            for ref in found.when:
                if ref not in seen:
                    raise SpaceError(
                        f"{space.path}: key 'params.{key}.when': '{ref}' must be fixed or a parameter listed before '{key}'"
                    )
            seen.add(key)
        _check_arg(space, where, group, arg, found)


def check_required_data(space: SearchSpace) -> None:
    """The task's required ``data.*`` keys are set (fixed or searched) to allowed values only."""
    for arg, allowed in _build().task_spec(space.task).required_data:
        values = space.possible_values(f"data.{arg}")
        if not values:
            raise SpaceError(
                f"{space.path}: key 'data.{arg}' is required for task {space.task}: expected one of {', '.join(allowed)}"
            )
        if bad := [v for v in values if v not in allowed]:
            raise SpaceError(
                f"{space.path}: key 'data.{arg}': {bad[0]!r} is not valid for task {space.task}; "
                f"expected one of {', '.join(allowed)}"
            )


def _check_arg(space: SearchSpace, where: str, group: str, arg: str, param: Param | None) -> None:
    if group in ("model", "loss"):
        names = space.possible_values(f"{group}.name")
        if not names:
            raise SpaceError(f"{space.path}: key '{group}.name' is required (fixed or a choice)")
        if param and f"{group}.name" in param.when:
            names = param.when[f"{group}.name"]
        for name in names:
            if not isinstance(name, str):
                raise SpaceError(f"{space.path}: key '{group}.name': expected a {group} name, got {name!r}")
            try:
                valid = _build().accepted_args(space.task, group, name)
            except ValueError as err:
                raise SpaceError(f"{where}: {err}") from None
            if arg != "name" and arg not in valid:
                raise SpaceError(
                    f"{where}: {group} '{name}' takes no argument '{arg}'; valid: {', '.join(sorted(valid))}"
                )
        return
    valid = _build().accepted_args(space.task, group)
    if arg not in valid:
        raise SpaceError(f"{where}: unknown argument '{arg}' for {group}; valid: {', '.join(sorted(valid))}")
