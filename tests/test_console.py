"""The terminal of a launch: one line per trial start and end, no library chatter, the leaderboard's best."""

from __future__ import annotations

import re
import subprocess

from mlflow.tracking import MlflowClient

from tests.helpers import Workspace, runs_of

NOISE = (
    "TensorBoard",
    "litlogger",
    "study created in memory",
    "Creating initial MLflow database tables",
    "TPU available",
)


def test_launch_terminal_is_short_and_names_every_trial(
    shared_workspace: Workspace, cls_launch: subprocess.CompletedProcess
) -> None:
    out = cls_launch.stdout + cls_launch.stderr
    _, children = runs_of(MlflowClient(shared_workspace.tracking_uri), "whole_cls")
    names = [r.info.run_name for r in children]
    # Each trial starts and ends once on the terminal, under the name of its MLflow run ...
    for name in names:
        assert out.count(f"[trial] start {name}:") == 1, out[-3000:]
        assert out.count(f"[trial] end   {name}:") == 1, out[-3000:]
    # ... no routine chatter of Ray, Lightning, Optuna or MLflow, and no Ray status tables.
    assert not [word for word in NOISE if word in out]
    assert "Trial name" not in out and "│" not in out
    # The best objective the end lines report is the leaderboard's best.
    ended = [float(v) for v in re.findall(r"\[trial\] end .*?val/balanced_acc (\d\.\d+)", out)]
    best_line = re.search(r"best trial: \S+ val/balanced_acc=(\d\.\d+)", out)
    assert ended and best_line and max(ended) == float(best_line[1])
    assert len(out.splitlines()) < 40
