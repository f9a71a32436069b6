"""Replayed learning curves (trainables.replay): the table's rows, and searches through make_tuner."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trainables.replay import (
    ROW_KEY,
    CurveTable,
    ReplayContext,
    TableError,
    load_table,
    replay_trial,
    save_table,
    space_of,
)

META = {"name": "hand", "metric": "val/acc", "mode": "max", "task": "classification", "source": "hand-made"}
PARAMS = {"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "arch": {"choice": ["good", "bad"]}}


def table(path: Path, lrs: list[float], archs: list[str], curves: list[list[float]]) -> CurveTable:
    save_table(
        path, meta={**META, "params": PARAMS}, columns={"lr": np.array(lrs), "arch": np.array(archs)}, curves=curves
    )
    return load_table(path)


def test_row_is_nearest_on_a_log_scale_among_the_same_choices(tmp_path: Path) -> None:
    t = table(tmp_path / "t.npz", [1e-3, 1e-1, 2e-2], ["good", "good", "bad"], [[0.1], [0.2], [0.3]])
    # 2e-2 is nearer 1e-3 on a linear scale (0.019 vs 0.08) and nearer 1e-1 on a log one (0.7 vs 1.3 decades).
    assert t.row({"lr": 2e-2, "arch": "good"}) == 1
    # A choice must match exactly: the only "bad" row, though another row has the very same lr.
    assert t.row({"lr": 1e-3, "arch": "bad"}) == 2


def test_a_table_round_trips_and_a_bad_file_is_one_line(tmp_path: Path) -> None:
    t = table(tmp_path / "t.npz", [1e-3, 1e-2], ["good", "bad"], [[0.25, 0.5], [0.125, float("nan")]])
    assert t.epochs == 2 and t.best() == 0.5 and t.best(1) == 0.25
    assert [p.kind for p in space_of(t, num_samples=4).params] == ["loguniform", "choice"]
    (tmp_path / "bad.npz").write_text("not a table")
    with pytest.raises(TableError, match="bad.npz: not a curve table"):
        load_table(tmp_path / "bad.npz")
    with pytest.raises(TableError, match="no row has the choices"):
        t.row({"lr": 1e-3, "arch": "other"})


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Path]:
    """A Ray of its own (2 CPUs, temp folder), shut down after the module; yields a scratch folder."""
    import ray

    import trainables

    folder = Path(tempfile.mkdtemp(prefix="replay-"))  # short: Ray's socket paths must stay under 108 bytes
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(folder / "ray"),
        logging_level="WARNING",
        runtime_env={"py_modules": [trainables]},
    )
    yield folder
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def replay(t: CurveTable, folder: Path, *, scheduler: str, samples: int, seed: int) -> list[tuple[dict, list, list]]:
    """A random-sampler search over ``t`` through make_tuner, one trial at a time; per trial in start
    order: (configuration, reported values, reported rows)."""
    from ray import tune

    from trainables.search import Resources, SearchPolicy, make_tuner

    class Reports(tune.Callback):
        def __init__(self) -> None:
            self.by_trial: dict[str, list[dict]] = {}  # in start order

        def on_trial_start(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
            self.by_trial[trial.trial_id] = []

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
            self.by_trial[trial.trial_id].append(result)

    reports = Reports()
    space = space_of(t, num_samples=samples, grace_period=1, reduction_factor=2)
    tuner = make_tuner(
        space,
        context=ReplayContext(table=t, max_epochs=t.epochs),
        resources=Resources(cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1, max_failures=0),
        storage_path=folder / "runs",
        name=f"{scheduler}-{seed}",
        seed=seed,
        callbacks=[reports],
        policy=SearchPolicy(sampler="random", scheduler=scheduler, prune_checkpoints=False, trainable=replay_trial),
    )
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    configs = {result.metrics["trial_id"]: result.config for result in grid}
    return [
        (configs[trial_id], [r[t.metric] for r in results], [r[ROW_KEY] for r in results])
        for trial_id, results in reports.by_trial.items()
    ]


@pytest.mark.e2e
def test_a_replayed_search_reports_the_tables_curves_exactly(ray_cluster: Path) -> None:
    rng = np.random.default_rng(0)
    lrs = list(np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), 6)))
    curves = rng.uniform(0, 1, (6, 3)).round(3)
    curves[5, 2] = np.nan  # the last row's training stopped itself after 2 epochs
    t = table(ray_cluster / "exact.npz", lrs, ["good", "bad"] * 3, curves)
    trials = replay(t, ray_cluster, scheduler="fifo", samples=5, seed=1)
    assert len(trials) == 5
    for config, values, rows in trials:
        row = t.row(config)
        expected = [float(v) for v in t.curves[row] if not np.isnan(v)]
        # Each trial reported its configuration's nearest row, every epoch, with the table's values.
        assert rows == [row] * len(expected) and values == expected, (config, row, values)


@pytest.mark.e2e
def test_asha_stops_the_clearly_worse_trials_at_the_grace_period(ray_cluster: Path) -> None:
    lrs = list(np.geomspace(1e-4, 1e-1, 8))
    archs = ["good", "bad"] * 4
    good, bad = [0.8, 0.85, 0.9], [0.1, 0.2, 0.3]
    t = table(ray_cluster / "asha.npz", lrs, archs, [good if a == "good" else bad for a in archs])
    trials = replay(t, ray_cluster, scheduler="asha", samples=8, seed=3)
    runs = [(config["arch"], len(values)) for config, values, _ in trials]
    # ASHA's rule, trials one at a time (grace period 1, reduction factor 2: rungs at epochs 1 and 2):
    # a trial stops at a rung when its value is below the median of the values earlier trials had there.
    for i, (kind, epochs) in enumerate(runs):
        curve, expected = good if kind == "good" else bad, 3
        for rung in (1, 2):
            seen = [(good if k == "good" else bad)[rung - 1] for k, e in runs[:i] if e >= rung]
            if seen and curve[rung - 1] < np.percentile(seen, 50):
                expected = rung
                break
        assert epochs == expected, (i, runs)
    # The good half always runs to the end; bad trials stop at the grace period once good ones set the bar.
    assert all(epochs == 3 for kind, epochs in runs if kind == "good"), runs
    assert sum(kind == "bad" and epochs == 1 for kind, epochs in runs) >= 2, runs  # seed 3: not vacuous
