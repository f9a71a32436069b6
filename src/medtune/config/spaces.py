"""Search-space files: the declarative schema in ``search_spaces/*.yaml`` and its validation.

Schema (every key checked; errors name the file and the key)::

    # Which segmenter delineates lesions best?   <- leading comment lines: the MLflow experiment's description
    task: segmentation            # a name in medtune.tasks.TASKS
    metric: val/iou               # the objective: a validation metric (val/*), reported by every trial each epoch
    mode: max                     # its direction: min for lower-is-better metrics (medtune.metrics), else max
    fixed:                        # constants, flat dotted keys (see medtune.engine.build for the groups)
      data.image_size: 64
    params:                       # searched parameters, in sampling order
      model.name: {choice: [unet, deeplabv3_mobilenet_v3_large]}
      model.width: {int: [8, 32], when: {model.name: unet}}   # only exists under that choice
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      train.weight_decay: {uniform: [0.0, 0.1]}
    budget: {num_samples: 8, max_epochs: 6, grace_period: 2, reduction_factor: 2, repeats: 3}
    cv: {folds: 5}                # optional: every trial trains 5 folds of train+val (medtune.folds)
    smoke: {fixed: {...}, params: {...}, budget: {...}}       # merged over the above by --smoke
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from medtune.config import project
from medtune.engine import build
from medtune.metrics import lower_is_better

KINDS = ("choice", "uniform", "loguniform", "int")
TOP_KEYS = {"task", "metric", "mode", "search", "fixed", "params", "budget", "cv", "smoke"}
SEARCHES = ("tpe", "grid")  # tpe: Optuna TPE + ASHA; grid: every combination, no early stopping
# repeats: seeds the winner is trained with (the search's run + repeats - 1 retrains; single-label
# classification only), so its test score carries training variance; 1 keeps the search's run alone.
BUDGET_DEFAULTS = {"num_samples": 8, "max_epochs": 5, "grace_period": 1, "reduction_factor": 2, "repeats": 1}


class SpaceError(ValueError):
    """A search-space problem; the message is one line naming the file and key."""


@dataclass(frozen=True)
class Param:
    """One searched parameter: ``kind`` is a name in ``KINDS``; ``when`` maps key -> allowed values."""

    name: str
    kind: str
    values: tuple
    when: dict[str, tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space."""

    name: str
    path: Path
    task: str
    metric: str
    mode: str
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    budget: dict[str, int]
    search: str = "tpe"
    folds: int = 0  # cross-validation folds of train+val per trial (``cv.folds``); 0: train on train, select on val
    description: str = ""  # the file's header comment: the question the space asks (the experiment's description)

    def possible_values(self, key: str) -> tuple:
        """Every value ``key`` can take (fixed value or choice list); empty if continuous or absent."""
        if key in self.fixed:
            return (self.fixed[key],)
        for p in self.params:
            if p.name == key and p.kind == "choice":
                return p.values
        return ()


def available() -> list[str]:
    """Space names of the project's ``search_spaces/`` and the shipped ones (``medtune.config.project``)."""
    return sorted({p.stem for folder in project.spaces_dirs() for p in folder.glob("*.yaml")})


def resolve_path(name: str) -> Path:
    """A space name (``segmentation``) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    for folder in project.spaces_dirs():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path.resolve()
    raise SpaceError(f"unknown search space '{name}'; valid: {', '.join(available())} (or a path to a .yaml file)")


def merge(base: dict, override: dict) -> dict:
    """``override`` merged into ``base`` key by key (nested mappings merged too): how a smoke block applies."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_space(name: str, *, smoke: bool = False) -> SearchSpace:
    """Load, merge the ``smoke`` block when asked, and validate a search space."""
    path = resolve_path(name)
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SpaceError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    except OSError as err:
        raise SpaceError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SpaceError(f"{path}: unknown key '{_first(unknown)}'; valid: {', '.join(sorted(TOP_KEYS))}")
    if smoke:
        raw = merge(raw, _mapping(path, raw, "smoke"))
    return replace(_validate(path, raw), description=header_comment(text))


def header_comment(text: str) -> str:
    """The leading ``#`` lines of a YAML file, without their ``# ``; "" when it starts otherwise.

    A space file opens with the question it asks, in words: that text describes its experiment.
    Blank lines before the comment are skipped; the first other line ends it.
    """
    lines: list[str] = []
    for line in text.splitlines():
        if not line.strip() and not lines:
            continue
        if not line.startswith("#"):
            break
        body = line[1:]
        lines.append(body[1:] if body.startswith(" ") else body)
    return "\n".join(lines).strip()


def load_config(path: Path) -> SearchSpace:
    """A single configuration to train once (``analyze.py --export-best``), as a one-trial space.

    The file holds ``space`` (whose task, metric and mode are used), ``config`` (flat dotted keys,
    all fixed) and optionally ``budget`` (e.g. more ``max_epochs`` than the search used).
    """
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise SpaceError(f"{path}: cannot read config ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict) or "space" not in raw:
        raise SpaceError(f"{path}: expected keys 'space' (a search space name) and 'config' (a mapping)")
    base = load_space(str(raw["space"]))
    budget = {**base.budget, **_mapping(path, raw, "budget"), "num_samples": 1}
    space = SearchSpace(
        name=base.name,
        path=path,
        task=base.task,
        metric=base.metric,
        mode=base.mode,
        fixed=dict(_mapping(path, raw, "config")),
        params=(),
        budget=_budget(path, budget),
        folds=base.folds,
        description=base.description,  # the space's question; the config file's header says which trial
    )
    _check_keys(space)
    _check_required_data(space)  # a masked config without its mask mode would train on whole images
    return space


def _mapping(path: Path, raw: dict, key: str) -> dict:
    """``raw[key]`` (absent: ``{}``), which must be a mapping whose keys are strings."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise SpaceError(f"{path}: key '{key}': expected a mapping, got {type(value).__name__}")
    if bad := [k for k in value if not isinstance(k, str)]:
        raise SpaceError(f"{path}: key '{key}.{bad[0]}': keys must be strings, got {type(bad[0]).__name__}")
    return value


def _first(keys: set) -> str:
    """The first of ``keys`` in sorted order; YAML keys need not be strings (``1:``, ``yes:``)."""
    return sorted(str(k) for k in keys)[0]


SCALARS = (str, int, float, bool, type(None))


def _validate(path: Path, raw: dict) -> SearchSpace:
    task = raw.get("task")
    if not isinstance(task, str) or task not in build.TASKS:
        raise SpaceError(f"{path}: key 'task': expected one of {', '.join(build.TASKS)}, got {task!r}")
    _check_objective(path, raw.get("metric"), raw.get("mode"))
    search = raw.get("search", "tpe")
    if search not in SEARCHES:
        raise SpaceError(f"{path}: key 'search': expected one of {', '.join(SEARCHES)}, got {search!r}")
    fixed = _mapping(path, raw, "fixed")
    params = tuple(_param(path, key, spec, fixed) for key, spec in _mapping(path, raw, "params").items())
    if search == "grid":
        for param in params:
            if param.kind != "choice":
                raise SpaceError(
                    f"{path}: key 'params.{param.name}': a grid search needs choice lists, got {param.kind}"
                )
    space = SearchSpace(
        name=path.stem,
        path=path,
        task=task,
        metric=raw["metric"],
        mode=raw["mode"],
        fixed=fixed,
        params=params,
        budget=_budget(path, _mapping(path, raw, "budget")),
        search=search,
        folds=_folds(path, _mapping(path, raw, "cv")),
    )
    _check_keys(space)
    _check_required_data(space)
    if search == "grid":  # a grid's size is its sample count: every combination once
        space = replace(space, budget={**space.budget, "num_samples": len(grid_points(space))})
    return space


def _check_objective(path: Path, metric: Any, mode: Any) -> None:
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


def revalidate(space: SearchSpace) -> SearchSpace:
    """The checks a space file gets, for a space changed in code (``launch.py --set``): budget, keys and
    the task's required data keys; a grid's sample count is recounted. Errors name ``space.path``."""
    space = replace(space, budget=_budget(space.path, space.budget))
    _check_keys(space)
    _check_required_data(space)
    if space.search == "grid":
        space = replace(space, budget={**space.budget, "num_samples": len(grid_points(space))})
    return space


def grid_points(space: SearchSpace) -> list[dict]:
    """Every combination of the choice lists, in file order; a ``when`` parameter varies only
    where its condition holds (so tversky's alpha is crossed with tversky alone)."""
    points = [dict(space.fixed)]
    for param in space.params:
        grown = []
        for point in points:
            if all(point.get(ref) in allowed for ref, allowed in param.when.items()):
                grown += [{**point, param.name: value} for value in param.values]
            else:
                grown.append(point)
        points = grown
    return points


def _param(path: Path, key: str, spec: Any, fixed: dict) -> Param:
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
    return Param(key, kind, tuple(values), when)


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


def _folds(path: Path, raw: dict) -> int:
    """``cv.folds``: an integer >= 2 (absent ``cv``: 0, no cross-validation)."""
    unknown = set(raw) - {"folds"}
    if unknown:
        raise SpaceError(f"{path}: key 'cv.{_first(unknown)}': unknown; valid: folds")
    folds = raw.get("folds", 0) if raw else 0
    if raw and (not isinstance(folds, int) or isinstance(folds, bool) or folds < 2):
        raise SpaceError(f"{path}: key 'cv.folds': expected an integer >= 2, got {folds!r}")
    return folds


def _budget(path: Path, raw: dict) -> dict[str, int]:
    unknown = set(raw) - set(BUDGET_DEFAULTS)
    if unknown:
        raise SpaceError(f"{path}: key 'budget.{_first(unknown)}': unknown; valid: {', '.join(BUDGET_DEFAULTS)}")
    budget = {**BUDGET_DEFAULTS, **raw}
    for key, value in budget.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpaceError(f"{path}: key 'budget.{key}': expected a positive integer, got {value!r}")
    if budget["reduction_factor"] < 2:
        raise SpaceError(f"{path}: key 'budget.reduction_factor': expected >= 2, got {budget['reduction_factor']}")
    return budget


def _check_keys(space: SearchSpace) -> None:
    """Every key must name a group and an argument its constructor accepts (for each possible name)."""
    seen = set(space.fixed)
    for key in list(space.fixed) + [p.name for p in space.params]:
        where = f"{space.path}: key '{key}'"
        param = next((p for p in space.params if p.name == key), None)
        group, _, arg = key.partition(".")
        if group not in build.GROUPS or not arg:
            raise SpaceError(f"{where}: expected <group>.<argument> with group one of {', '.join(build.GROUPS)}")
        if param:
            for ref in param.when:
                if ref not in seen:
                    raise SpaceError(
                        f"{space.path}: key 'params.{key}.when': '{ref}' must be fixed or a parameter listed before '{key}'"
                    )
            seen.add(key)
        _check_arg(space, where, group, arg, param)


def _check_required_data(space: SearchSpace) -> None:
    """The task's required ``data.*`` keys are set (fixed or searched) to allowed values only."""
    for arg, allowed in build.task_spec(space.task).required_data:
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
                valid = build.accepted_args(space.task, group, name)
            except ValueError as err:
                raise SpaceError(f"{where}: {err}") from None
            if arg != "name" and arg not in valid:
                raise SpaceError(
                    f"{where}: {group} '{name}' takes no argument '{arg}'; valid: {', '.join(sorted(valid))}"
                )
        return
    valid = build.accepted_args(space.task, group)
    if arg not in valid:
        raise SpaceError(f"{where}: unknown argument '{arg}' for {group}; valid: {', '.join(sorted(valid))}")
