"""Bad input to launch.py: one clear line, a non-zero exit, no traceback, nothing in MLflow."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune.config.spaces import resolve_path
from trainables import launch


def edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / name
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return apply


def _set_first(key: str, field: str, value) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data[key][0][field] = value

    return change


DATA_CASES = {
    "malformed_json": (lambda d: (d / "train.json").write_text('{"images": [1, 2'), "not valid JSON"),
    "missing_image_folder": (lambda d: shutil.rmtree(d / "images"), "missing_file"),
    "escaping_file_name": (
        edit_json("val.json", _set_first("images", "file_name", "../../etc/passwd")),
        "escaping_file_name",
    ),
    "unknown_category": (edit_json("test.json", _set_first("annotations", "category_id", 99)), "unknown_category"),
    "empty_split": (edit_json("val.json", lambda d: d.update(images=[], annotations=[])), "'images' is empty"),
}


def run_launch(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = launch.main(
        [*args, "--tracking-uri", uri, "--storage-path", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    )
    return code, capsys.readouterr().err


def assert_clean_refusal(tmp_path: Path, code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    # The first line is the error itself; extra lines (at most 20) each name one problem.
    assert err.startswith("error: ") and len(err.strip().splitlines()) <= 21
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert [e.name for e in client.search_experiments()] in ([], ["Default"])
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_dataset(case: str, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    damage, expected = DATA_CASES[case]
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    damage(data)
    code, err = run_launch(tmp_path, capsys, "--space", "whole_cls", "--smoke", "--data", str(data))
    assert_clean_refusal(tmp_path, code, err, expected)


SPACE = """
task: classification
metric: val/acc
mode: max
fixed: {data.image_size: 32, loss.name: ce}
params:
  model.name: {choice: [resnet18]}
  train.lr: LR
"""


@pytest.mark.parametrize(
    "lr, expected",
    [("{loguniform: [1.0e-2, 1.0e-4]}", "low 0.01 > high 0.0001"), ("{normal: [0, 1]}", "expected exactly one of")],
)
def test_bad_space(lr: str, expected: str, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("LR", lr))
    code, err = run_launch(tmp_path, capsys, "--space", str(space), "--data", str(synth_dir))
    assert_clean_refusal(tmp_path, code, err, expected)
    assert str(space) in err  # names the file


def test_unknown_space(synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = run_launch(tmp_path, capsys, "--space", "nope", "--data", str(synth_dir))
    assert_clean_refusal(tmp_path, code, err, "unknown search space 'nope'; valid:")


def test_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = run_launch(tmp_path, capsys, "--space", "whole_cls", "--data", str(tmp_path / "absent"))
    assert_clean_refusal(tmp_path, code, err, "no such file or folder")


def test_multi_label_data_for_a_single_label_task(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medtune.data.tools.synth import generate

    generate(tmp_path / "ml", n=30, size=32, seed=0, multilabel=True)
    code, err = run_launch(tmp_path, capsys, "--space", "whole_cls", "--smoke", "--data", str(tmp_path / "ml"))
    # whole_cls needs one class per image: the error names the file, the image and the fix's reason.
    assert_clean_refusal(tmp_path, code, err, "different categories; single-label tasks need exactly one")


@pytest.mark.parametrize("samples", ["3", "60"])
def test_num_samples_other_than_a_grid_size_is_refused(
    samples: str, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # seg_loss_grid's smoke block crosses unet with {bce, tversky at alpha 0.3}: 2 combinations.
    args = ("--space", "seg_loss_grid", "--smoke", "--data", str(synth_dir), "--num-samples", samples)
    code, err = run_launch(tmp_path, capsys, *args)
    # One line naming the flag, the grid and its size; nothing started, nothing in MLflow.
    assert_clean_refusal(tmp_path, code, err, f"--num-samples: {resolve_path('seg_loss_grid')} is a grid of 2")
    assert len(err.strip().splitlines()) == 1 and f"got {samples}" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("ftp://host/runs", "--storage-path ftp://host/runs: expected a folder, file:///folder or a bucket URI"),
        ("s3:///runs", "--storage-path s3:///runs: expected s3://<bucket>/<prefix>"),
        ("{blocker}/runs", "--storage-path {blocker}/runs: cannot write there"),
    ],
)
def test_bad_storage_path(
    storage: str, expected: str, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "a-file"  # a file where a folder should be made
    blocker.write_text("")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = storage.format(blocker=blocker)
    args = ["--space", "whole_cls", "--smoke", "--data", str(synth_dir), "--tracking-uri", uri]
    code = launch.main([*args, "--storage-path", storage, "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert_clean_refusal(tmp_path, code, err, expected.format(blocker=blocker))
    # Refused before anything was prepared: no cache, no local folder named after the scheme.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
