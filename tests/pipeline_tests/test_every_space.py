"""Every file in search_spaces/ smoke-runs through the real launch.py.

``segmentation``, ``masked_cls`` and ``whole_cls`` are the session's shared launches (conftest
``seg_launch``, ``masked_launch``, ``cls_launch``): checked here, launched once for every test that reads them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from medtune.config.spaces import available, load_space
from tests.helpers import PROJECT_DIR, Workspace, runs_of, tail

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.shared_ray]  # launches join the Ray head (conftest)
SHARED = {"segmentation": "seg_launch", "masked_cls": "masked_launch", "whole_cls": "cls_launch"}


@pytest.fixture(scope="module")
def multilabel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtune.data.tools.synth import generate

    out = tmp_path_factory.mktemp("synth_ml") / "data"
    generate(out, n=48, size=32, seed=0, multilabel=True)
    return out


OWN = sorted(set(available()) - set(SHARED) - {"seg_loss_grid"})  # that one: its own test below


AT_ONCE = 2  # smoke launches running together: more would start too many Ray clusters at once on 2 cores


@pytest.fixture(scope="module")
def smoke_launches(
    workspace: Workspace, synth_dir: Path, multilabel_dir: Path
) -> dict[str, subprocess.CompletedProcess]:
    """The smoke launch of every space in ``OWN``, ``AT_ONCE`` at a time (experiment ``smoke_<space>``).

    Plumbing only: each space's smoke block, cut to one one-epoch trial (the shared launches run theirs
    whole). A launch mostly waits (Ray start-up, imports), so two share the 2 cores well.
    """
    done = {}
    for first in range(0, len(OWN), AT_ONCE):
        procs = {}
        for name in OWN[first : first + AT_ONCE]:
            multilabel = load_space(name, smoke=True).task == "multilabel_classification"
            data = multilabel_dir if multilabel else synth_dir
            args = ("--space", name, "--smoke", "--num-samples", "1", "--max-epochs", "1", "--data", str(data))
            log = workspace.root / f"smoke_{name}.log"
            procs[name] = (workspace.start_launch(*args, "--experiment", f"smoke_{name}", log=log), log)
        for name, (proc, log) in procs.items():
            try:
                code = proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
            done[name] = subprocess.CompletedProcess(proc.args, code, log.read_text(), "")
    shutil.rmtree(workspace.root / "runs", ignore_errors=True)  # Ray checkpoints, never read
    return done


def _check_smoke(workspace: Workspace, experiment: str, trials: int) -> None:
    parents, children = runs_of(MlflowClient(workspace.tracking_uri), experiment)
    # One finished launch with a child per trial and the best trial's test metrics.
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == trials
    assert any(key.startswith("test/") for key in parents[0].data.metrics)


@pytest.mark.parametrize("name", OWN)
def test_space_smoke_runs(name: str, workspace: Workspace, smoke_launches: dict) -> None:
    assert smoke_launches[name].returncode == 0, tail(smoke_launches[name])
    _check_smoke(workspace, f"smoke_{name}", 1)


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_space_smoke_runs(name: str, shared_workspace: Workspace, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(SHARED[name])  # the session's launch of that space, its whole smoke block
    _check_smoke(shared_workspace, name, load_space(name, smoke=True).budget["num_samples"])


def grid_combinations(params: dict) -> list[dict]:
    """Every combination of a grid's ``choice`` lists, counted from the YAML (not by medtune.config.spaces).

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
    shared_workspace: Workspace, cls_launch: subprocess.CompletedProcess, repro_launch: subprocess.CompletedProcess
) -> None:
    # conftest ``repro_launch``: CLS_ARGS again, experiment "repro" (its winner then retrained with a second seed).
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
