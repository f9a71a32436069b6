"""Each trial run carries its best objective and that epoch (``best/<metric>``, ``best/epoch``), as ranked."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from medtune.tracking.leaderboard import leaderboard
from medtune.tracking.store import experiment_id, latest_launch
from tests.helpers import SharedLaunch, Workspace


def test_every_trial_run_carries_the_leaderboards_best_epoch(
    first_launches: dict[str, SharedLaunch], shared_workspace: Workspace
) -> None:
    uri = shared_workspace.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    for experiment in first_launches:  # whole_cls, segmentation (2 folds: the fold mean), other_data
        exp_id = experiment_id(client, experiment, create=False)
        launch = latest_launch(client, exp_id)
        metric, mode = launch.data.params["metric"], launch.data.params["mode"]
        rows = leaderboard(client, exp_id, launch.info.run_id, metric, mode)
        assert rows, experiment
        for row in rows:
            metrics = client.get_run(row.run_id).data.metrics
            history = client.get_metric_history(row.run_id, metric)
            first_best = min(m.step for m in history if m.value == row.objective)
            # The value the leaderboard ranks the trial by, and the first epoch that reached it.
            assert metrics[f"best/{metric}"] == row.objective, (experiment, row.name)
            assert metrics["best/epoch"] == first_best, (experiment, row.name)
