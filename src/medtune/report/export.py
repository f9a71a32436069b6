"""Export a launch's best configuration as the YAML that ``launch.py --config FILE`` trains once.

Format::

    space: whole_cls            # the search space the launch used
    task: classification
    config: {<flat dotted key>: value, ...}   # every parameter of the best trial, typed
    budget: {max_epochs: 8}     # the epoch budget the winner was trained with; raise it to train longer
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medtune.report.importance import distributions, typed
from medtune.report.load import Launch
from medtune.tracking.store import TrackingError


def _value(text: str, key: str, launch: Launch) -> Any:
    """A logged parameter string as its typed value: via the space's distribution, fixed value or YAML."""
    dist = distributions(launch.space).get(key)
    if dist is not None:
        try:
            return typed(text, dist)
        except ValueError:
            pass
    fixed = (launch.space.get("fixed") or {}).get(key)
    if fixed is not None and str(fixed) == text:
        return fixed
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def best_config(launch: Launch) -> dict:
    """The best trial's configuration in the ``launch.py --config`` format."""
    best = launch.best
    if best is None:
        raise TrackingError(f"launch {launch.run_id} of '{launch.experiment}' has no finished trial to export")
    return {
        "space": launch.tags.get("space", launch.experiment),
        "task": launch.task,
        "config": {key: _value(text, key, launch) for key, text in sorted(best.params.items())},
        "budget": {"max_epochs": launch.max_epochs},
    }


def export_best(launch: Launch, path: Path) -> Path:
    """Write :func:`best_config` to ``path`` with a header saying where it came from."""
    best = launch.best
    config = best_config(launch)
    header = (
        f"# best trial {best.name} (run {best.run_id}) of launch {launch.run_id} ({launch.experiment}):\n"
        f"# {launch.metric} = {best.objective:.4f}. Train it once: python launch.py --config {path}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path
