"""Nested cross-validation's pieces pinned where mutation testing found them loose (issue 24).

``tests/report_tests/test_nested_units.py`` tests the outer folds, pooling, agreement and the refusals
on their main path; these tests add what mutants of ``medtune.publish.nested``, ``medtune.data.outer``
and ``medtune.report.nested`` slipped past: what a fold run is read as and what is logged on the
launch's run (a real sqlite MLflow store), which arrays are pooled and which are not, the pooled
intervals, every line of the words, and what the report side reads back.
"""

from __future__ import annotations

import atexit
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from medtune.data import duplicates
from medtune.data.coco import SPLITS, resolve_dataset
from medtune.data.outer import INNER_VAL, describe, outer_dataset, plan_outer
from medtune.publish import nested
from medtune.publish.nested import OuterFold, agreement, estimate_line, pool, pooled_scores
from medtune.report import nested as report_nested
from medtune.scoring.bootstrap import METRICS, Interval, seed_bootstrap
from medtune.tracking.store import LAUNCH_TAG, PARENT_TAG, TrackingError, read_artifact

_TEMPLATE: list[Path] = []  # an empty migrated store, made once per process


def _empty_store() -> Path:
    """An empty sqlite store's file: creating one (MLflow's migrations) costs 2 s of CPU and up to 20 s on a
    busy disk, copying it 0.1 s; mutation testing runs this module's tests once per mutant in forks of one
    process, which all copy the same file. Removed at exit by the process that made it."""
    if not (_TEMPLATE and _TEMPLATE[0].is_file()):
        folder, owner = Path(tempfile.mkdtemp(prefix="medtune-empty-store-")), os.getpid()
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
        _TEMPLATE[:] = [folder / "mlflow.db"]
    return _TEMPLATE[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, str]:
    """A sqlite store of the module's own (a copy of an empty one), artifacts beside it."""
    root = tmp_path_factory.mktemp("store")
    shutil.copy(_empty_store(), root / "mlflow.db")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client, client.create_experiment("nested", artifact_location=str(root / "artifacts"))


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _log_bytes(client: MlflowClient, run_id: str, name: str, data: bytes, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    client.log_artifact(run_id, str(path))


def _fold(k: int, ids: list[int], *, test: dict | None = None, config: dict | None = None, **arrays) -> OuterFold:
    base = {"report_kind": np.array(arrays.pop("kind", "classification")), "image_ids": np.array(ids)}
    return OuterFold(k, f"run{k}", test or {}, config or {}, {**base, **arrays})


# ---- medtune.publish.nested: reading an outer fold's run -------------------------------------------------


def test_read_fold_keeps_test_metrics_searched_values_and_the_predictions(store, tmp_path: Path) -> None:
    client, exp = store
    run_id = client.create_run(exp).info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric("test/balanced_acc", 0.75, 0, 0), Metric("val/balanced_acc", 0.9, 0, 0)],
    )
    for key, value in {"best.model.name": "resnet18", "best.train.lr": "0.001", "train.lr": "0.5"}.items():
        client.log_param(run_id, key, value)
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    _log_bytes(client, run_id, "test_predictions.npz", _npz({"image_ids": np.array([4, 2]), "probs": probs}), tmp_path)
    fold = nested.read_fold(client, client.get_run(run_id), 3, ["model.name", "train.lr", "train.batch_size"])
    assert (fold.k, fold.run_id) == (3, run_id)
    # Only test/ metrics; only searched keys, from their best.<key> params (a key with no param is left out).
    assert fold.test == {"test/balanced_acc": 0.75}
    assert fold.config == {"model.name": "resnet18", "train.lr": "0.001"}
    assert sorted(fold.arrays) == ["image_ids", "probs"] and np.array_equal(fold.arrays["probs"], probs)
    assert fold.arrays["image_ids"].tolist() == [4, 2]


def test_read_fold_refuses_a_run_without_predictions_or_with_pickled_ones(store, tmp_path: Path) -> None:
    client, exp = store
    run = client.get_run(client.create_run(exp).info.run_id)
    with pytest.raises(
        RuntimeError, match=f"^outer fold 1 \\(run {run.info.run_id}\\) logged no test_predictions.npz$"
    ):
        nested.read_fold(client, run, 1, [])
    # An object array needs pickle, which runs code from the artifact: refused, not loaded.
    pickled = _npz({"image_ids": np.array([1]), "class_names": np.array([{"a": 1}], dtype=object)})
    _log_bytes(client, run.info.run_id, "test_predictions.npz", pickled, tmp_path)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        nested.read_fold(client, run, 1, [])


# ---- pooling -------------------------------------------------------------------------------------------------


def test_pool_keeps_only_arrays_with_one_row_per_image_in_every_fold() -> None:
    folds = [
        _fold(2, [7, 8], labels=np.array([0, 1]), iou=np.array([0.5, 0.25]), class_names=np.array(["a", "b"])),
        _fold(0, [3], labels=np.array([1]), iou=np.array([1.0, 0.0])),  # iou of the wrong length: not pooled
    ]
    arrays = pool(folds)
    # The folds in the order given; each image tagged with its fold's k (not its position).
    assert arrays["outer_fold"].tolist() == [2, 2, 0] and arrays["image_ids"].tolist() == [7, 8, 3]
    assert arrays["labels"].tolist() == [0, 1, 1] and "iou" not in arrays and "probs" not in arrays
    assert str(arrays["report_kind"]) == "classification" and arrays["class_names"].tolist() == ["a", "b"]
    # A key missing from one fold is not pooled either; iou that fits everywhere is.
    folds = [_fold(0, [1, 2], iou=np.array([0.5, 0.25])), _fold(1, [3], iou=np.array([1.0]), labels=np.array([0]))]
    arrays = pool(folds)
    assert arrays["iou"].tolist() == [0.5, 0.25, 1.0] and "labels" not in arrays and "class_names" not in arrays


def test_pool_concatenates_seeds_on_the_image_axis_only_when_every_fold_has_as_many() -> None:
    s0, s1 = np.arange(12.0).reshape(2, 3, 2), np.arange(8.0).reshape(2, 2, 2)
    folds = [_fold(0, [1, 2, 3], probs_seeds=s0), _fold(1, [4, 5], probs_seeds=s1)]
    assert pool(folds)["probs_seeds"].shape == (2, 5, 2)
    assert np.array_equal(pool(folds)["probs_seeds"], np.concatenate([s0, s1], axis=1))
    # Three seeds against two, or one fold without seeds: not pooled.
    assert "probs_seeds" not in pool([folds[0], _fold(1, [4, 5], probs_seeds=np.zeros((3, 2, 2)))])
    assert "probs_seeds" not in pool([folds[0], _fold(1, [4, 5])])
    assert "probs_seeds" not in pool([_fold(1, [4, 5]), folds[0]])
    # A single fold (nothing to concatenate) is pooled as it is.
    assert pool([folds[1]])["probs_seeds"].shape == (2, 2, 2) and pool([folds[1]])["outer_fold"].tolist() == [1, 1]


# ---- pooled scores -------------------------------------------------------------------------------------------


def test_pooled_classification_scores_are_every_metric_over_images_and_seeds() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0, 1, 2] * 4)
    seeds = rng.dirichlet([1, 1, 1], size=(2, 12))
    # Labels stored as floats (as an npz may hold them) are read as class indices.
    arrays = {"report_kind": np.array("classification"), "labels": labels.astype(float), "probs": seeds[0]}
    scores = pooled_scores({**arrays, "probs_seeds": seeds})
    assert sorted(scores) == sorted(METRICS)
    for name, metric in METRICS.items():
        # The point is the mean over the seeds; the interval is the two-level bootstrap's.
        assert scores[name].value == pytest.approx(np.mean([metric(labels, p) for p in seeds]))
    assert scores["acc"] == seed_bootstrap(labels, [seeds], METRICS["acc"])[0][0]
    # Without seeds: the single model's probabilities.
    single = pooled_scores(arrays)
    assert single["acc"] == seed_bootstrap(labels, [seeds[0][None]], METRICS["acc"])[0][0]
    assert pooled_scores({"report_kind": np.array("classification"), "labels": labels}) == {}
    assert pooled_scores({"report_kind": np.array("multilabel"), "labels": labels, "probs": seeds[0]}) == {}


def test_pooled_iou_interval_is_95_percent_and_draws_every_image() -> None:
    iou = np.linspace(0.0, 1.0, 41)
    score = pooled_scores({"report_kind": np.array("segmentation"), "iou": iou})["image_iou"]
    assert score.value == pytest.approx(0.5) and score.undefined == 0
    # Seeded: the same images give the same logged interval every time.
    assert pooled_scores({"report_kind": np.array("segmentation"), "iou": iou})["image_iou"] == score
    # A 95% interval of a mean: about +-1.96 standard errors (sd/sqrt(n) = 0.0464), symmetric here.
    se = iou.std() / math.sqrt(len(iou))
    assert score.high - score.low == pytest.approx(2 * 1.96 * se, rel=0.12)
    assert score.low < 0.5 - 1.6 * se and score.high > 0.5 + 1.6 * se
    # Image 0 (the only 0) and the last image are drawn too: a lone outlier at either end moves the interval.
    low_end = pooled_scores({"report_kind": np.array("segmentation"), "iou": np.array([0.0] + [1.0] * 9)})
    assert low_end["image_iou"].low < 0.95
    high_end = pooled_scores({"report_kind": np.array("segmentation"), "iou": np.array([0.0] * 9 + [1.0])})
    assert high_end["image_iou"].high > 0.05
    assert pooled_scores({"report_kind": np.array("segmentation"), "image_ids": np.arange(3)}) == {}


# ---- agreement and the words ---------------------------------------------------------------------------------


def test_agreement_lines_for_every_kind_of_key() -> None:
    folds = [
        _fold(0, [1], config={"batch": "16", "lr": "0", "aug": "flip", "opt": "adam", "only": "x"}),
        _fold(1, [2], config={"batch": "32", "lr": "0.5", "aug": "none", "opt": "adam"}),
        _fold(2, [3], config={"batch": "32", "aug": "none", "opt": "adam"}),
    ]
    kinds = {
        "absent": "choice",
        "batch": "choice",
        "lr": "uniform",
        "aug": "uniform",
        "opt": "choice",
        "only": "choice",
    }
    lines = agreement(folds, kinds)
    assert lines == [
        # The verdict counts every outer fold; a key no fold has is left out, the next ones still listed.
        "The 3 outer folds' winners differ in batch, aug: the estimate describes the search procedure, "
        "not one configuration.",
        # A numeric choice is tallied (most common first), not given as a range.
        "`batch`: 32 (2), 16 (1) of 3 folds",
        # A range starting at 0 has no factor; it counts the folds that have the key.
        "`lr`: 0 to 0.5 over 2 folds",
        # Words that are not numbers are tallied whatever the key's kind.
        "`aug`: none (2), flip (1) of 3 folds",
        "`opt`: adam in all 3 outer folds",
        "`only`: x in all 1 outer folds",  # the folds that have the key
    ]
    one = agreement(
        [_fold(0, [1], config={"lr": "0.002"}), _fold(1, [2], config={"lr": "0.001"})], {"lr": "loguniform"}
    )
    assert one == [
        "The 2 outer folds' winners agree on every choice; numeric keys vary as listed.",
        "`lr`: 0.001 to 0.002 over 2 folds, a factor 2 apart",
    ]


def test_report_lines_with_seeds_and_without_a_pooled_metric() -> None:
    folds = [
        _fold(0, [1, 2, 3], test={"test/auroc": 0.91234, "test/acc": 0.5}, config={"m": "a"}),
        _fold(1, [4, 5], test={"test/acc": 1.0, "test/iou/lesion": 0.25}, config={"m": "a"}),
    ]
    arrays = {"image_ids": np.arange(5), "probs_seeds": np.zeros((2, 5, 2))}
    scores = {"b": Interval(0.5, 0.25, 0.75), "a": Interval(0.8125, 0.7, 0.9)}
    lines = nested.report("whole_cls", folds, scores, arrays, {"m": "choice"})
    assert lines == [
        "== nested cross-validation of whole_cls: 2 outer folds over 5 images (per fold: 3/2) ==",
        "every image predicted once, by the winner of a search that never saw it (95% intervals: bootstrap over "
        "5 images x 2 seeds):",
        "  a 0.812 [0.700, 0.900]",
        "  b 0.500 [0.250, 0.750]",
        "per outer fold (its winner on its own held-out images):",
        "  fold 0 (3 images, run run0): acc 0.500, auroc 0.912",
        "  fold 1 (2 images, run run1): acc 1.000, iou/lesion 0.250",  # only the "test/" prefix dropped
        "winners:",
        "  The 2 outer folds' winners agree on every choice; numeric keys vary as listed.",
        "  `m`: a in all 2 outer folds",
    ]
    # One seed (or none): no "x 1 seeds"; no pooled metric: said so.
    lines = nested.report("seg", folds, {}, {"image_ids": np.arange(5), "probs_seeds": np.zeros((1, 5, 2))}, {})
    assert lines[1].endswith("(95% intervals: bootstrap over 5 images):")
    assert lines[2] == "  (no pooled metric for this task; see each outer fold's test metrics below)"
    assert nested.report("seg", folds, {}, {"image_ids": np.arange(5)}, {})[1].endswith("over 5 images):")


def test_estimate_line_names_the_objective_or_the_first_pooled_metric() -> None:
    scores = {"acc": Interval(0.6, 0.5, 0.7), "balanced_acc": Interval(0.8123, 0.7, 0.9)}
    assert (
        estimate_line(scores, "val/balanced_acc", 48, 3)
        == "balanced_acc 0.812 [0.700, 0.900] over 48 images in 3 outer folds"
    )
    assert estimate_line(scores, "balanced_acc", 48, 3).startswith("balanced_acc 0.812")
    # Only the stage prefix is dropped: "val/iou/lesion" is the pooled "iou/lesion".
    assert estimate_line({**scores, "iou/lesion": Interval(0.25, 0.0, 0.5)}, "val/iou/lesion", 9, 3).startswith(
        "iou/lesion 0.250 [0.000, 0.500]"
    )
    # An objective with no pooled counterpart: the first pooled metric, named as itself.
    assert estimate_line(scores, "val/loss", 10, 2) == "acc 0.600 [0.500, 0.700] over 10 images in 2 outer folds"
    assert estimate_line({}, "val/loss", 10, 2) == (
        "nested cross-validation over 10 images in 2 outer folds (per-fold metrics on the launch's run)"
    )


# ---- logging on the launch's run, and reading it back (medtune.report.nested) --------------------------------


def test_log_nested_writes_every_metric_and_file_and_the_report_reads_them(store, tmp_path: Path) -> None:
    client, exp = store
    launch = client.create_run(exp, tags={LAUNCH_TAG: "true", nested.NESTED_TAG: "2"}).info.run_id
    many = {f"test/m{i:03d}": i / 1000 for i in range(520)}  # more metrics than one batch of 500
    folds = [
        _fold(0, [1, 2], test={"test/acc": 0.5, **many}, config={"lr": "0.1"}),
        _fold(1, [3], test={"test/acc": 1.0}, config={"lr": "0.2"}),
    ]
    arrays = {
        "report_kind": np.array("classification"),
        "image_ids": np.array([1, 2, 3]),
        "labels": np.array([0, 1, 0]),
    }
    scores = {"acc": Interval(0.75, 0.5, 1.0), "auroc": Interval(0.6, float("nan"), float("inf"))}
    nested.log_nested(client, launch, folds, arrays, scores, ["line one", "line two"])
    run = client.get_run(launch)
    expected = {"nested/acc": 0.75, "nested/acc_low": 0.5, "nested/acc_high": 1.0, "nested/auroc": 0.6}
    expected |= {"outer/fold0/test/acc": 0.5, "outer/fold1/test/acc": 1.0}
    expected |= {f"outer/fold0/{key}": value for key, value in many.items()}
    # Every metric once (not finite bounds left out), at step 0, time 0.
    assert run.data.metrics == expected
    history = client.get_metric_history(launch, "nested/acc")
    assert [(m.step, m.timestamp, m.value) for m in history] == [(0, 0, 0.75)]
    history = client.get_metric_history(launch, "outer/fold1/test/acc")
    assert [(m.step, m.timestamp, m.value) for m in history] == [(0, 0, 1.0)]
    read = report_nested.predictions(client, run)
    assert sorted(read) == sorted(arrays) and all(np.array_equal(read[k], arrays[k]) for k in arrays)
    text = read_artifact(client, launch, nested.WINNERS).decode()
    assert text.startswith('[\n  {\n    "fold": 0,\n    "run_id": "run0",')  # indented for a reader
    winners = json.loads(text)
    assert winners[1] == {"fold": 1, "run_id": "run1", "config": {"lr": "0.2"}, "test": {"test/acc": 1.0}}
    assert [w["fold"] for w in winners] == [0, 1] and winners[0]["test"]["test/m519"] == 0.519
    assert read_artifact(client, launch, nested.TEXT) == b"line one\nline two\n"
    assert report_nested.summary(client, run) == ["line one", "line two"]
    # The lines as written: blank lines at the end dropped, any other kept as it is.
    client.log_text(launch, "\nfold X\n\n", nested.TEXT)
    assert report_nested.summary(client, client.get_run(launch)) == ["", "fold X"]
    client.log_text(launch, "a\nb  \n", nested.TEXT)
    assert report_nested.summary(client, client.get_run(launch)) == ["a", "b  "]
    # Pickled arrays (code run on load) are refused.
    _log_bytes(client, launch, nested.PREDICTIONS, _npz({"a": np.array([{}], dtype=object)}), tmp_path)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        report_nested.predictions(client, run)


def test_report_side_of_an_unfinished_launch(store) -> None:
    client, exp = store
    run = client.get_run(client.create_run(exp, tags={nested.NESTED_TAG: "3"}).info.run_id)
    assert report_nested.is_nested(run)
    assert not report_nested.is_nested(client.get_run(client.create_run(exp, tags={nested.NESTED_TAG: ""}).info.run_id))
    assert report_nested.predictions(client, run) is None
    assert report_nested.summary(client, run) == [
        f"nested launch {run.info.run_id}: its outer folds have not all finished (run launch.py --resume)"
    ]
    assert report_nested.refit_run(client, run) is None


def _finished(client: MlflowClient, exp: str, digest: str, tmp_path: Path) -> object:
    """A nested launch's run whose outer folds all finished (its pooled predictions logged)."""
    run_id = client.create_run(exp, tags={nested.NESTED_TAG: "2", nested.DIGEST_TAG: digest}).info.run_id
    _log_bytes(client, run_id, nested.PREDICTIONS, _npz({"image_ids": np.arange(3)}), tmp_path)
    return client.get_run(run_id)


def test_check_alike_passes_finished_launches_on_the_same_folds_and_names_every_side(store, tmp_path: Path) -> None:
    client, exp = store
    a, b = _finished(client, exp, "d1", tmp_path), _finished(client, exp, "d1", tmp_path)
    report_nested.check_alike(client, [("a", a), ("b", b)])  # nothing to refuse
    plain = client.get_run(client.create_run(exp).info.run_id)
    with pytest.raises(TrackingError, match="^cannot compare: a, b are nested .* and p not .*: compare nested"):
        report_nested.check_alike(client, [("a", a), ("b", b), ("p", plain)])
    with pytest.raises(TrackingError, match="^cannot compare: a is nested .* and p, q not "):
        report_nested.check_alike(client, [("a", a), ("p", plain), ("q", plain)])
    other = _finished(client, exp, "d2", tmp_path)
    with pytest.raises(TrackingError, match=r"different outer folds \(a: d1, c: d2\); launch them with the same"):
        report_nested.check_alike(client, [("a", a), ("c", other)])
    # The launch that has not finished is the one named, wherever it stands.
    unfinished = client.get_run(
        client.create_run(exp, tags={nested.NESTED_TAG: "2", nested.DIGEST_TAG: "d1"}).info.run_id
    )
    with pytest.raises(
        TrackingError, match="^cannot compare: the nested launch of 'u' has not finished its outer folds$"
    ):
        report_nested.check_alike(client, [("a", a), ("u", unfinished)])


def test_outer_scores_keep_complete_finite_fold_metrics(store, tmp_path: Path) -> None:
    client, exp = store
    run_id = client.create_run(exp, tags={nested.NESTED_TAG: "3", nested.DIGEST_TAG: "d1"}).info.run_id
    held = {"pool_size": 10, "val_image_ids": [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10]], "digest": "d1"}
    _log_bytes(client, run_id, report_nested.OUTER_FILE, json.dumps(held).encode(), tmp_path)
    values = {
        "outer/fold0/test/balanced_acc": 0.5,
        "outer/fold1/test/balanced_acc": 0.625,
        "outer/fold2/test/balanced_acc": 0.75,
        "outer/fold0/test/acc": 0.5,  # fold 2 missing: left out
        "outer/fold1/test/acc": 0.5,
        "outer/fold0/test/auroc": 0.5,  # not finite on fold 1: left out
        "outer/fold1/test/auroc": float("nan"),
        "outer/fold2/test/auroc": 0.5,
        "nested/balanced_acc": 0.6,
        "outer/fold0/val/balanced_acc": 0.9,  # not a test score
        "xouter/fold0/test/f1_macro": 0.1,
    }
    client.log_batch(run_id, metrics=[Metric(key, value, 0, 0) for key, value in values.items()])
    client.log_param(run_id, "metric", "val/balanced_acc")
    client.log_param(run_id, "mode", "min")
    scores = report_nested.outer_scores(client, "exp", client.get_run(run_id))
    assert (scores.experiment, scores.run_id, scores.digest, scores.nested) == ("exp", run_id, "d1", True)
    assert (scores.sizes.pool, scores.sizes.held_out) == (10, [4, 3, 3])
    assert list(scores.scores) == ["test/balanced_acc"] and scores.scores["test/balanced_acc"].tolist() == [
        0.5,
        0.625,
        0.75,
    ]
    assert (scores.metric, scores.mode) == ("test/balanced_acc", "min")
    # Without the params and the digest tag: maximised, no digest.
    bare = client.create_run(exp, tags={nested.NESTED_TAG: "2"}).info.run_id
    _log_bytes(
        client, bare, report_nested.OUTER_FILE, json.dumps({**held, "val_image_ids": [[1], [2, 3]]}).encode(), tmp_path
    )
    scores = report_nested.outer_scores(client, "exp", client.get_run(bare))
    assert (scores.mode, scores.digest, scores.scores, scores.folds, scores.metric) == ("max", "", {}, 2, "test/")
    # Only the stage prefix of the objective is replaced: val/iou/lesion -> test/iou/lesion.
    client.log_param(bare, "metric", "val/iou/lesion")
    assert report_nested.outer_scores(client, "exp", client.get_run(bare)).metric == "test/iou/lesion"
    # No outer_folds.json: one line naming the launch.
    missing = client.get_run(client.create_run(exp, tags={nested.NESTED_TAG: "2"}).info.run_id)
    said = report_nested.outer_scores(client, "exp", missing)
    assert said == (
        f"nested launch {missing.info.run_id[:8]} of 'exp' has no outer_folds.json (the launch stopped before "
        "logging its outer folds)"
    )
    # An unreadable one: parse_sizes's line, naming the launch.
    broken = client.create_run(exp, tags={nested.NESTED_TAG: "2"}).info.run_id
    _log_bytes(client, broken, report_nested.OUTER_FILE, b"{", tmp_path)
    said = report_nested.outer_scores(client, "exp", client.get_run(broken))
    assert said.startswith(f"nested launch {broken[:8]} of 'exp': ") and "unreadable (JSONDecodeError" in said


def test_refit_run_is_the_latest_child_tagged_refit(store) -> None:
    client, exp = store
    launch = client.create_run(exp, tags={nested.NESTED_TAG: "2"}).info.run_id
    child = {PARENT_TAG: launch}
    early = client.create_run(exp, start_time=1000, tags={**child, nested.STAGE_TAG: "refit"}).info.run_id
    late = client.create_run(exp, start_time=3000, tags={**child, nested.STAGE_TAG: "refit"}).info.run_id
    client.create_run(exp, start_time=5000, tags={**child, nested.STAGE_TAG: "outer"})
    client.create_run(exp, start_time=6000, tags={nested.STAGE_TAG: "refit"})  # another launch's
    assert report_nested.refit_run(client, client.get_run(launch)).info.run_id == late != early


# ---- medtune.data.outer ---------------------------------------------------------------------------------------


def test_two_outer_folds_with_the_launchs_seed_and_duplicate_setting(synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    loose = duplicates.Setting(threshold=40, min_similarity=0.5, accept_large=True)  # groups some synthetic lesions
    plan = plan_outer(dataset, 2, seed=5, cache_root=tmp_path, near=loose)
    sizes = [len(plan.val_image_ids(k)) for k in range(2)]
    assert (plan.folds, plan.seed, sum(sizes)) == (2, 5, 48) and plan.duplicate_groups > 0
    assert describe(plan) == (
        f"nested cross-validation: 2 outer folds over all 48 images (held out per outer fold: {sizes[0]}/{sizes[1]}; "
        f"{plan.duplicate_groups} near-duplicate groups kept within a fold; digest {plan.digest})"
    )
    with pytest.raises(Exception, match="^--outer-folds: expected an integer >= 2, got 0$"):
        plan_outer(dataset, 0, seed=0, cache_root=tmp_path, near=duplicates.Setting())


def _grouped_copy(synth_dir: Path, data: Path) -> dict:
    """The synthetic set with a ``patient`` per pair of images (``group_by``) and the test split's images in a
    folder of their own (``info.images_dir``); returns its test split."""
    shutil.copytree(synth_dir, data)
    for split in SPLITS:
        coco = json.loads((data / f"{split}.json").read_text())
        coco["images"] = [{**img, "patient": img["id"] // 2} for img in coco["images"]]
        if split == "train":
            coco["info"] = {**coco.get("info", {}), "split": {"name": "train", "group_by": "patient"}}
        if split == "test":
            (data / "held").mkdir()
            for img in coco["images"]:
                (data / "images" / img["file_name"]).rename(data / "held" / img["file_name"])
            coco["info"] = {**coco.get("info", {}), "images_dir": "held"}
        (data / f"{split}.json").write_text(json.dumps(coco))
    return coco


def test_outer_dataset_over_split_image_folders_is_written_once_and_whole(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    test = _grouped_copy(synth_dir, data)
    dataset = resolve_dataset(data, cache_root=tmp_path)
    plan = plan_outer(dataset, 2, seed=0, cache_root=tmp_path, near=duplicates.Setting())
    folder = outer_dataset(dataset, plan, 1, cache_root=tmp_path, seed=3)
    assert folder == tmp_path / "outer" / plan.digest / "data-outer1of2"
    assert sorted(p.name for p in folder.iterdir()) == ["test.json", "train.json", "val.json"]  # rest.json gone
    names, split_of = {}, {}
    for split in SPLITS:
        coco = json.loads((folder / f"{split}.json").read_text())
        names |= {img["id"]: img["file_name"] for img in coco["images"]}
        split_of |= {img["id"]: split for img in coco["images"]}
        assert all((data / img["file_name"]).is_file() for img in coco["images"])
    # File names relative to the common folder; each patient in one split.
    assert names[test["images"][0]["id"]] == f"held/{test['images'][0]['file_name']}"
    assert sum(name.startswith("images/") for name in names.values()) == 48 - len(test["images"])
    assert all(split_of[i] == split_of[i - i % 2] for i in split_of if i - i % 2 in split_of)
    held = json.loads((folder / "test.json").read_text())
    assert held["info"] == {
        "images_dir": str(data),
        "split": {"name": "test", "group_by": "patient", "outer_fold": 1},
        "outer_fold": {"k": 1, "of": 2},
    }
    assert sorted(img["id"] for img in held["images"]) == sorted(plan.val_image_ids(1))
    assert {ann["image_id"] for ann in held["annotations"]} == set(plan.val_image_ids(1))
    assert held["categories"] == test["categories"]
    # The inner split: the launch's seed, INNER_VAL of the rest for val, no test, groups whole, default duplicates.
    inner = json.loads((folder / "train.json").read_text())["info"]
    assert inner["images_dir"] == str(data) and inner["outer_fold"] == {"k": 1, "of": 2}
    assert inner["split"] == {
        "name": "train",
        "source": str((folder / "rest.json").resolve()),
        "seed": 3,
        "val": INNER_VAL,
        "test": 0.0,
        "group_by": "patient",
        "near_threshold": duplicates.Setting().threshold,
        "near_similarity": duplicates.Setting().min_similarity,
        "near_accept_groups": False,
    }
    fold = resolve_dataset(folder, cache_root=tmp_path)
    assert fold.images_dirs == {split: data for split in SPLITS}
    # Written once: a whole folder is reused as it is; one missing a split is written again.
    (folder / "val.json").unlink()
    assert outer_dataset(dataset, plan, 1, cache_root=tmp_path, seed=3) == folder and (folder / "val.json").is_file()
    (folder / "test.json").write_text(json.dumps({**held, "images": held["images"][:1]}))
    outer_dataset(dataset, plan, 1, cache_root=tmp_path, seed=3)
    assert len(json.loads((folder / "test.json").read_text())["images"]) == 1
