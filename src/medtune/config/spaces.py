"""Search-space files: the declarative schema in ``search_spaces/*.yaml``, loaded and merged.

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
                                  # and/or outer_folds: 5, nested cross-validation (medtune.data.outer)
    smoke: {fixed: {...}, params: {...}, budget: {...}}       # merged over the above by --smoke

Each key's rules, and the one-line ``SpaceError`` naming file and key, are in ``medtune.config.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from medtune.config import project, validate
from medtune.config.validate import SpaceError


@dataclass(frozen=True)
class Param:
    """One searched parameter: ``kind`` is a name in ``validate.KINDS``; ``when`` maps key -> allowed values."""

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
    outer_folds: int = 0  # nested cross-validation's outer folds over all images (``cv.outer_folds``); 0: none
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
    validate.check_top(path, raw)
    if smoke:
        raw = merge(raw, validate.mapping(path, raw, "smoke"))
    return replace(_build(path, raw), description=header_comment(text))


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
    budget = {**base.budget, **validate.mapping(path, raw, "budget"), "num_samples": 1}
    space = SearchSpace(
        name=base.name,
        path=path,
        task=base.task,
        metric=base.metric,
        mode=base.mode,
        fixed=dict(validate.mapping(path, raw, "config")),
        params=(),
        budget=validate.budget(path, budget),
        folds=base.folds,
        description=base.description,  # the space's question; the config file's header says which trial
    )
    validate.check_keys(space)
    validate.check_required_data(space)  # a masked config without its mask mode would train on whole images
    return space


def _build(path: Path, raw: dict) -> SearchSpace:
    """The space a file's mapping describes, each key checked in file-schema order (``validate``)."""
    task = validate.task(path, raw)
    validate.check_objective(path, raw.get("metric"), raw.get("mode"))
    search = validate.search(path, raw)
    fixed = validate.mapping(path, raw, "fixed")
    params = tuple(
        Param(key, *validate.param(path, key, spec, fixed))
        for key, spec in validate.mapping(path, raw, "params").items()
    )
    if search == "grid":
        validate.check_grid(path, params)
    space = SearchSpace(
        name=path.stem,
        path=path,
        task=task,
        metric=raw["metric"],
        mode=raw["mode"],
        fixed=fixed,
        params=params,
        budget=validate.budget(path, validate.mapping(path, raw, "budget")),
        search=search,
        folds=validate.folds(path, validate.mapping(path, raw, "cv")),
        outer_folds=validate.folds(path, validate.mapping(path, raw, "cv"), "outer_folds"),
    )
    validate.check_keys(space)
    validate.check_required_data(space)
    if search == "grid":  # a grid's size is its sample count: every combination once
        space = replace(space, budget={**space.budget, "num_samples": len(grid_points(space))})
    return space


def revalidate(space: SearchSpace) -> SearchSpace:
    """The checks a space file gets, for a space changed in code (``launch.py --set``): budget, keys and
    the task's required data keys; a grid's sample count is recounted. Errors name ``space.path``."""
    space = replace(space, budget=validate.budget(space.path, space.budget))
    validate.check_keys(space)
    validate.check_required_data(space)
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
