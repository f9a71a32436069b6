"""Which searched parameters mattered: Optuna's fANOVA over a launch's finished trials.

The trials are replayed into an in-memory Optuna study, with distributions taken from the search
space the launch logged (``choice`` -> categorical, ``uniform`` / ``loguniform`` -> float,
``int`` -> int), or inferred from the logged values when the space file is missing. A parameter
that exists only under another choice (``when:``) is missing from some trials; fANOVA needs every
parameter in every trial, so such parameters are left out and named. Trials stopped early by ASHA
enter with their truncated objective (their best over the epochs they ran), which favours
parameters that learn fast; the note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from medtune.report.load import Launch
from medtune.tracking.leaderboard import Row, varying_params

MIN_TRIALS = 3  # fewer finished trials leave fANOVA's forest nothing to split


@dataclass
class Importance:
    """fANOVA importances (summing to 1, most important first); empty when not available."""

    values: dict[str, float]
    trials: int  # finished trials used
    left_out: list[str] = field(default_factory=list)  # conditional parameters absent from some trials
    note: str = ""
    constant: list[str] = field(default_factory=list)  # searched, but one value in every finished trial


def distributions(space: dict) -> dict[str, BaseDistribution]:
    """Optuna distributions of the searched parameters of a search-space mapping."""
    out: dict[str, BaseDistribution] = {}
    for name, spec in (space.get("params") or {}).items():
        kinds = [k for k in spec if k != "when"] if isinstance(spec, dict) else []
        if len(kinds) != 1:
            continue
        kind, values = kinds[0], spec[kinds[0]]
        if kind == "choice":
            out[name] = CategoricalDistribution(values)
        elif kind in ("uniform", "loguniform"):
            out[name] = FloatDistribution(float(values[0]), float(values[-1]), log=kind == "loguniform")
        elif kind == "int":
            out[name] = IntDistribution(int(values[0]), int(values[-1]))
    return out


def inferred(rows: list[Row]) -> dict[str, BaseDistribution]:
    """Distributions guessed from the logged values of the parameters that vary between trials."""
    out: dict[str, BaseDistribution] = {}
    for name in varying_params(rows):
        texts = sorted({r.params[name] for r in rows if name in r.params})
        try:
            numbers = [float(t) for t in texts]
            out[name] = FloatDistribution(min(numbers), max(numbers))
        except ValueError:
            out[name] = CategoricalDistribution(texts)
    return out


def typed(text: str, dist: BaseDistribution) -> Any:
    """A logged (string) parameter value as the value ``dist`` holds."""
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"'{text}' is not one of {list(dist.choices)}")
    return int(float(text)) if isinstance(dist, IntDistribution) else float(text)


def param_importance(launch: Launch) -> Importance:
    """fANOVA importances of the launch's searched parameters over its completed and stopped trials."""
    rows = [r for r in launch.rows if r.status in ("completed", "stopped") and not math.isnan(r.objective)]
    if len(rows) < MIN_TRIALS:
        return Importance(
            {}, len(rows), note=f"not available: {len(rows)} finished trial(s); fANOVA needs at least {MIN_TRIALS}"
        )
    dists = distributions(launch.space) or inferred(rows)
    searched = [n for n, d in dists.items() if not d.single()]
    present = [n for n in searched if all(n in r.params for r in rows)]
    left_out = [n for n in searched if n not in present]
    constant = [n for n in present if len({r.params[n] for r in rows}) == 1]  # fANOVA would give exactly 0
    used = [n for n in present if n not in constant]
    if not used:
        return Importance(
            {}, len(rows), left_out, "not available: no searched parameter varies across every finished trial", constant
        )
    try:
        study = _study(rows, {n: dists[n] for n in used}, launch.mode)
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), normalize=True)
    except (ValueError, RuntimeError) as err:
        return Importance({}, len(rows), left_out, f"not available: {str(err).splitlines()[0]}", constant)
    return Importance(dict(values), len(rows), left_out, _note(rows, left_out, constant), constant)


def _study(rows: list[Row], dists: dict[str, BaseDistribution], mode: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for row in rows:
        params = {name: typed(row.params[name], dist) for name, dist in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=row.objective))
    return study


def _note(rows: list[Row], left_out: list[str], constant: list[str]) -> str:
    stopped = sum(r.status == "stopped" for r in rows)
    parts = [f"fANOVA over {len(rows)} finished trials"]
    if stopped:
        parts.append(f"{stopped} stopped early by ASHA enter with their truncated objective")
    if left_out:
        parts.append(f"left out (absent from some trials): {', '.join(left_out)}")
    if constant:
        parts.append(f"one value in every trial: {', '.join(constant)}")
    return "; ".join(parts)
