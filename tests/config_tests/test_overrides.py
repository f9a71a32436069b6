"""``launch.py --set key=value`` and what a finished launch deletes (its trials' Ray checkpoints).

The overrides are checked in-process (no search starts); what a launch records and leaves on disk is
read from the session's shared launches (conftest ``cls_launch``, ``seg_launch``), not from new ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune.config.options import LaunchOptions
from medtune.config.overrides import apply_overrides
from medtune.config.spaces import load_space
from medtune.config.validate import SpaceError
from medtune.prepare.inputs import load_and_override
from tests.helpers import Workspace, runs_of
from trainables import cleanup, launch
from trainables.storage import location


def test_set_overrides_fixed_searched_and_budget_after_smoke() -> None:
    options = LaunchOptions(
        space="whole_cls",
        smoke=True,
        overrides=("data.image_size=48", "budget.max_epochs=1", "train.lr=1e-3", "model.weights=DEFAULT"),
    )
    space = load_and_override(options)
    # Applied after --smoke: the smoke block's 32 px and its 2 samples give way to 48 px, 1 epoch.
    assert space.fixed["data.image_size"] == 48 and space.fixed["data.batch_size"] == 8
    assert space.budget["max_epochs"] == 1 and space.budget["num_samples"] == 2
    # A searched key becomes fixed; PyYAML's string "1e-3" is read as the number the key takes.
    assert space.fixed["train.lr"] == pytest.approx(1e-3) and "train.lr" not in [p.name for p in space.params]
    assert space.fixed["model.weights"] == "DEFAULT"
    # The explicit flag wins over budget.* (documented in --help).
    flagged = load_and_override(LaunchOptions(space="whole_cls", smoke=True, overrides=options.overrides, max_epochs=3))
    assert flagged.budget["max_epochs"] == 3


def test_set_on_a_grid_recounts_its_combinations() -> None:
    grid = load_space("seg_loss_grid", smoke=True)
    loss = next(p for p in grid.params if p.name == "loss.name")
    fixed = apply_overrides(grid, [f"loss.name={loss.values[0]}"])
    # Fixing the loss leaves the other choice lists' combinations (those of the kept loss only).
    assert 1 <= fixed.budget["num_samples"] < grid.budget["num_samples"]


BAD = {
    "unknown key": ("nope=1", "--set nope: unknown key; expected <group>.<name>"),
    "unknown argument": ("data.nope=1", "--set data.nope: unknown argument 'nope' for data"),
    "size not a number": ("data.image_size=big", "--set data.image_size: expected a positive integer, got 'big'"),
    "size zero": ("data.image_size=0", "--set data.image_size: expected a positive integer, got 0"),
    "batch size fractional": ("data.batch_size=8.5", "--set data.batch_size: expected an integer, got 8.5"),
    "lr a name": ("train.lr=fast", "--set train.lr: expected a number, got 'fast'"),
    "no samples": ("budget.num_samples=0", "--set budget.num_samples: expected a positive integer, got 0"),
    "unknown budget key": ("budget.epochs=2", "--set budget.epochs: unknown budget key 'epochs'; valid: num_samples"),
    "no value": ("data.image_size", "--set data.image_size: expected key=value"),
    "a list": ("data.image_size=[32, 48]", "--set data.image_size: expected one value"),
    "unknown model": ("model.name=unet", "unknown model 'unet'; valid:"),
}


@pytest.mark.parametrize("item,expected", BAD.values(), ids=BAD.keys())
def test_bad_set_is_one_line_naming_the_key(item: str, expected: str) -> None:
    with pytest.raises(SpaceError) as err:
        load_and_override(LaunchOptions(space="whole_cls", smoke=True, overrides=(item,)))
    message = str(err.value)
    # One line that starts with the flag and the key (here: whatever the value's kind).
    assert message.startswith(f"--set {item.split('=')[0]}") and "\n" not in message
    assert expected in message


def test_set_twice_and_grid_samples_are_refused() -> None:
    with pytest.raises(SpaceError, match="--set data.image_size: given twice"):
        load_and_override(LaunchOptions(space="whole_cls", overrides=("data.image_size=48", "data.image_size=64")))
    with pytest.raises(SpaceError, match="--set budget.num_samples: .* is a grid of"):
        load_and_override(LaunchOptions(space="seg_loss_grid", smoke=True, overrides=("budget.num_samples=999",)))


@pytest.mark.parametrize("item", ["nope=1", "data.image_size=big"])
def test_launch_refuses_a_bad_set_before_anything_runs(
    item: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = launch.main(
        ["--space", "whole_cls", "--set", item, "--tracking-uri", uri, "--storage-path", str(tmp_path / "runs")]
    )
    err = capsys.readouterr().err
    # Exit 2 and a single "error: --set <key>: ..." line; no store, no Ray folder.
    assert code == 2 and err.strip().splitlines() == [err.strip()], err
    assert err.startswith(f"error: --set {item.split('=')[0]}:") and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_shared_launch_records_its_override(shared_workspace: Workspace, cls_launch: object) -> None:
    client = MlflowClient(shared_workspace.tracking_uri)
    parent = runs_of(client, "whole_cls")[0][0]
    # CLS_ARGS sets data.batch_size=8: the parent run lists it and the resolved space holds it.
    assert parent.data.params["overrides"] == "data.batch_size=8"
    resolved = json.loads(Path(client.download_artifacts(parent.info.run_id, "resolved_space.json")).read_text())
    assert resolved["overrides"] == ["data.batch_size=8"] and resolved["fixed"]["data.batch_size"] == 8


def test_finished_launch_deleted_its_checkpoints(seg_launch) -> None:
    # The Ray experiment folder kept its record (trial results, the tuner) but no checkpoint folder.
    assert any(re.search(r"/trial_[^/]+/result\.json$", f) for f in seg_launch.ray_files), seg_launch.ray_files
    assert not [f for f in seg_launch.ray_files if "/checkpoint_" in f]
    freed = re.search(
        r"\[launch\] deleted (\d+) Ray checkpoint folder\(s\) under (\S+), ([\d.]+) MiB", seg_launch.stderr
    )
    assert freed and int(freed[1]) >= 2 and float(freed[3]) > 0, seg_launch.stderr[-2000:]
    # The trials' scratch folder (temporary checkpoint copies) is gone too; what is left is small.
    assert not cleanup.scratch_folder(Path(freed[2]).name).exists()
    assert seg_launch.ray_bytes < 5 * 2**20


def test_drop_checkpoints_keeps_the_record(tmp_path: Path) -> None:
    experiment = tmp_path / "exp-20260101-000000"
    for trial in ("trial_a", "trial_b"):
        (experiment / trial / "checkpoint_000001").mkdir(parents=True)
        (experiment / trial / "checkpoint_000001" / "checkpoint").write_bytes(b"x" * 1000)
        (experiment / trial / "result.json").write_text("{}")
    (experiment / "tuner.pkl").write_bytes(b"t")
    folders, freed = cleanup.drop_checkpoints(location(str(experiment), tmp_path / "cache"))
    # Two checkpoint folders of 1000 bytes each; results and the tuner stay.
    assert (folders, freed) == (2, 2000)
    assert sorted(p.name for p in experiment.rglob("*") if p.is_file()) == ["result.json", "result.json", "tuner.pkl"]
