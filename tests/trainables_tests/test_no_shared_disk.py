"""A cluster without a shared disk, the parts without a cluster: caches handed to trials as arrays
(``medtune.data.shared``) give the same items as the file, without copies; a trial's scratch folder and
``--storage-path`` need no driver path.

Ray hands the arrays back read-only; the tests make them read-only the same way. tests/trainables_tests/test_multinode.py
runs the real hand-over on two nodes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medtune.data.cache import load_cache
from medtune.data.datasets import CachedDataset, build_transform
from medtune.data.shared import Ragged, from_arrays, to_arrays
from medtune.tracking.store import TrackingError
from trainables.storage import DRIVER_FOLDER, check_reachable, join, location, storage_root
from trainables.trial import made


def read_only(arrays: dict) -> dict:
    """``arrays`` as Ray's object store returns them: numpy arrays that refuse writes."""
    parts = [p for v in arrays.values() for p in ((v.values, v.offsets) if isinstance(v, Ragged) else (v,))]
    for part in parts:
        part.flags.writeable = False
    return arrays


def test_round_trip_gives_the_file_contents_without_copying(task_caches: dict) -> None:
    path = task_caches["caches"]["train"]
    arrays = read_only(to_arrays(load_cache(path)))
    opened, original = from_arrays(arrays), load_cache(path)
    assert set(opened) == set(original)
    for key in ("images", "masks", "image_ids"):
        assert torch.equal(opened[key], original[key])
    # Label sets keep their lengths (an image may have none or several).
    assert [t.tolist() for t in opened["labels"]] == [t.tolist() for t in original["labels"]]
    # The tensors view the store's memory: a trial maps the images, it does not copy them.
    assert opened["images"].data_ptr() == arrays["images"].ctypes.data


@pytest.mark.parametrize("mask_mode", ["none", "crop"])
def test_dataset_items_equal_from_file_and_from_arrays(task_caches: dict, mask_mode: str) -> None:
    files, preds = task_caches["caches"], task_caches["pred_masks"]
    transform = build_transform(0.0, train=True)
    rows = [4, 0, 2]  # a fold's rows, out of order
    kwargs = {"num_classes": task_caches["num_classes"], "mask_mode": mask_mode, "rows": rows}
    from_file = CachedDataset(files["val"], transform, pred_masks=preds["val"], **kwargs)
    handed = {
        name: from_arrays(read_only(to_arrays(load_cache(p)))) for name, p in (("c", files["val"]), ("p", preds["val"]))
    }
    from_store = CachedDataset(handed["c"], transform, pred_masks=handed["p"], **kwargs)
    assert len(from_store) == len(from_file) == len(rows)
    for i in range(len(rows)):
        a, b = from_file[i], from_store[i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_empty_label_list_and_a_foreign_entry() -> None:
    arrays = to_arrays({"labels": [], "image_ids": torch.zeros(0, dtype=torch.long)})
    assert from_arrays(arrays)["labels"] == [] and np.array_equal(arrays["labels"].offsets, [0])
    # Anything but tensors and lists of 1-D tensors has no zero-copy form: refused, naming the entry.
    with pytest.raises(TypeError, match="'note'"):
        to_arrays({"note": "text"})


def test_scratch_folder_falls_back_to_the_nodes_temp_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    # The driver's scratch path cannot be made here (a file is in the way, as root too) ...
    folder = made(str(blocker / "medtune-scratch-launch-x"))
    # ... so the trial uses a folder of the same name in this node's temp folder.
    assert folder == str(Path(tempfile.gettempdir()) / "medtune-scratch-launch-x") and Path(folder).is_dir()
    Path(folder).rmdir()
    assert made(None) is None and made(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")


def test_storage_path_takes_folders_file_uris_and_buckets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage_root(f"file://{tmp_path}/runs") == storage_root("runs") == str(tmp_path / "runs")
    # A bucket URI is kept as typed, its query (pyarrow's options) at the end of every folder below it.
    bucket = "s3://bucket/medtune?endpoint_override=http://127.0.0.1:9000&region=eu-west-1"
    assert storage_root(bucket) == bucket
    ray = join(bucket, "seg-20260101-000000")
    assert ray == "s3://bucket/medtune/seg-20260101-000000?endpoint_override=http://127.0.0.1:9000&region=eu-west-1"
    # What only the driver reads stays on its disk, under --cache-dir, by the launch's name.
    loc = location(ray, Path("cache"))
    assert loc.name == "seg-20260101-000000" and loc.root == bucket
    assert loc.driver == tmp_path / "cache" / DRIVER_FOLDER / "seg-20260101-000000"
    # A local experiment folder is the driver's folder too.
    local = location(join(storage_root("runs"), "seg-1"), Path("cache"))
    assert local.driver == tmp_path / "runs" / "seg-1" and local.root == str(tmp_path / "runs")
    # Unknown schemes and bucket URIs without a bucket: one line naming the flag, no folder made.
    with pytest.raises(
        TrackingError, match="^--storage-path ftp://host/x: expected a folder, file:///folder or a bucket"
    ):
        storage_root("ftp://host/x")
    with pytest.raises(TrackingError, match="^--storage-path s3:///x: expected s3://<bucket>/<prefix>"):
        storage_root("s3:///x")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_storage_path_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match=f"^--storage-path {blocker}/runs: cannot write there .* is a file"):
        check_reachable(str(blocker / "runs"))
    # A folder still to be made is fine, and is not made here (Ray makes it when the search starts).
    check_reachable(str(tmp_path / "new" / "runs"))
    assert not (tmp_path / "new").exists()
