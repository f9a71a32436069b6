"""Turn a validated ``SearchSpace`` into an Optuna define-by-run function for ``OptunaSearch``.

Define-by-run lets a parameter exist only under another choice (``when:``): it is suggested only
when every condition holds for the values sampled before it, so TPE never sees phantom values.
"""

from __future__ import annotations

from typing import Any

from medtune.config.spaces import Param, SearchSpace, grid_points


def _suggest(trial: Any, param: Param) -> Any:
    low, high = param.values[0], param.values[-1]
    if param.kind == "choice":
        return trial.suggest_categorical(param.name, list(param.values))
    if param.kind == "uniform":
        return trial.suggest_float(param.name, float(low), float(high))
    if param.kind == "loguniform":
        return trial.suggest_float(param.name, float(low), float(high), log=True)
    return trial.suggest_int(param.name, int(low), int(high))


class DefineByRun:
    """The callable OptunaSearch invokes per trial; returns the fixed values as constants.

    A class rather than a closure: the searcher is pickled with the experiment state (resume).
    """

    def __init__(self, space: SearchSpace) -> None:
        self.fixed, self.params = dict(space.fixed), space.params

    def __call__(self, trial: Any) -> dict:
        values = dict(self.fixed)
        for param in self.params:
            if all(values.get(ref) in allowed for ref, allowed in param.when.items()):
                values[param.name] = _suggest(trial, param)
        return dict(self.fixed)


GRID_KEY = "grid_point"


def grid_param_space(space: SearchSpace) -> dict:
    """A grid search as one Tune grid over whole configurations (conditional keys included)."""
    from ray import tune

    return {GRID_KEY: tune.grid_search(grid_points(space))}


def flat_config(config: dict) -> dict:
    """The flat dotted configuration of a trial, whichever search produced it."""
    return dict(config[GRID_KEY]) if GRID_KEY in config else dict(config)
