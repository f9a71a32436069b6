"""Every file in search_spaces/ smoke-runs through the real launch.py.

``segmentation``, ``masked_cls`` and ``whole_cls`` are the session's shared launches (conftest
``seg_launch``, ``masked_launch``, ``cls_launch``): checked here, launched once for every test that reads them.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from medtune.spaces import available, load_space
from tests.helpers import CLS_ARGS, PROJECT_DIR, Workspace, runs_of, tail

pytestmark = pytest.mark.slow
SHARED = {"segmentation": "seg_launch", "masked_cls": "masked_launch", "whole_cls": "cls_launch"}


@pytest.fixture(scope="module")
def multilabel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtune.data.synth import generate

    out = tmp_path_factory.mktemp("synth_ml") / "data"
    generate(out, n=48, size=32, seed=0, multilabel=True)
    return out


def _smoke_launch(name: str, request: pytest.FixtureRequest) -> tuple[Workspace, str]:
    """The store and experiment of a smoke launch of space ``name``: the shared one, or a new one."""
    if name in SHARED:
        request.getfixturevalue(SHARED[name])
        return request.getfixturevalue("shared_workspace"), name
    space = load_space(name, smoke=True)
    fixture = "multilabel_dir" if space.task == "multilabel_classification" else "synth_dir"
    data, workspace = request.getfixturevalue(fixture), request.getfixturevalue("workspace")
    # Plumbing only: the space's smoke block, cut to one one-epoch trial (the shared launches run theirs whole).
    args = ("--smoke", "--num-samples", "1", "--max-epochs", "1")
    result = workspace.launch("--space", name, *args, "--data", str(data), "--experiment", f"smoke_{name}")
    shutil.rmtree(workspace.root / "runs", ignore_errors=True)  # Ray checkpoints, never read
    assert result.returncode == 0, tail(result)
    return workspace, f"smoke_{name}"


@pytest.mark.parametrize("name", sorted(set(available()) - {"seg_loss_grid"}))  # that one: its own test below
def test_space_smoke_runs(name: str, request: pytest.FixtureRequest) -> None:
    workspace, experiment = _smoke_launch(name, request)
    parents, children = runs_of(MlflowClient(workspace.tracking_uri), experiment)
    # One finished launch with a child per trial and the best trial's test metrics.
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == (load_space(name, smoke=True).budget["num_samples"] if name in SHARED else 1)
    assert any(key.startswith("test/") for key in parents[0].data.metrics)


def grid_combinations(params: dict) -> list[dict]:
    """Every combination of a grid's ``choice`` lists, counted from the YAML (not by medtune.spaces).

    A parameter with ``when: {key: value}`` takes part only in the combinations where ``key`` has that value.
    """
    free = {k: v["choice"] for k, v in params.items() if "when" not in v}
    combos = [dict(zip(free, values)) for values in itertools.product(*free.values())]
    for key, spec in params.items():
        if "when" in spec:
            ((on, wanted),) = spec["when"].items()
            combos = [{**c, key: v} for c in combos for v in (spec["choice"] if c[on] == wanted else [None])]
    return [{k: v for k, v in c.items() if v is not None} for c in combos]


def test_seg_loss_grid_runs_every_combination_once(workspace: Workspace, synth_dir: Path) -> None:
    raw = yaml.safe_load((PROJECT_DIR / "search_spaces" / "seg_loss_grid.yaml").read_text())
    # The full grid: 4 networks x (bce, dice, focal and tversky at 9 alphas), as its header says.
    assert len(grid_combinations(raw["params"])) == 4 * (3 + 9) == 48
    smoke = {k: {**raw["params"][k], **v} for k, v in raw["smoke"]["params"].items()}  # keeps each ``when``
    expected = grid_combinations({**raw["params"], **smoke})
    result = workspace.launch("--space", "seg_loss_grid", "--smoke", "--data", str(synth_dir), "--experiment", "grid")
    assert result.returncode == 0, tail(result)
    _, children = runs_of(MlflowClient(workspace.tracking_uri), "grid")
    searched = sorted(raw["params"])
    drawn = [{k: yaml.safe_load(r.data.params[k]) for k in searched if k in r.data.params} for r in children]
    # One child run per combination of the smoke grid, none repeated and none missing.
    assert len(children) == len(expected) == 2
    assert sorted(sorted(d.items()) for d in drawn) == sorted(sorted(e.items()) for e in expected)


def test_same_seed_same_configs_and_metrics(
    shared_workspace: Workspace, cls_launch: subprocess.CompletedProcess, synth_dir: Path
) -> None:
    second = shared_workspace.launch(*CLS_ARGS, "--data", str(synth_dir), "--experiment", "repro")
    assert second.returncode == 0, tail(second)
    client = MlflowClient(shared_workspace.tracking_uri)
    runs = [sorted(runs_of(client, name)[1], key=lambda r: r.info.start_time) for name in ("whole_cls", "repro")]
    # The sampler proposes the same configurations in the same order, and on CPU they train identically.
    assert [r.data.params for r in runs[0]] == [r.data.params for r in runs[1]]
    for a, b in zip(*runs):
        assert a.data.metrics["val/loss"] == pytest.approx(b.data.metrics["val/loss"], rel=1e-5)
    parents = [runs_of(client, name)[0][0] for name in ("whole_cls", "repro")]
    # Each parent run records what is needed to reproduce it.
    for parent in parents:
        assert {"code_version", "dataset_fingerprint"} <= set(parent.data.tags)
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
            "search_space.yaml",
            "versions.json",
            "resolved_space.json",
        }
