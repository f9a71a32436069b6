"""Cross-validated launches in reports: the corrected resampled t-test, fold-wise ``--compare``, the single report.

No search is launched: parent runs are written by hand into a temporary sqlite store, with the
records a cross-validated launch leaves there (``cv_folds``, ``cv_folds_digest``, ``cv/fold{k}/*``,
``folds.json``, ``test_fold{k}/*`` and ``test_predictions.npz`` with ``probs_folds``).
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medtune.report import cli as analyze
from medtune.report.compare import Entry, compare, open_entries
from medtune.report.compare_page import format_text
from medtune.report.cv import OPTIMISM, FoldComparison, FoldScores, FoldSizes, corrected_t, pair
from medtune.report.load import PREDICTIONS, SPACE_FILE, Launch, latest, open_launch
from medtune.report.verdicts import fold_verdicts, verdicts
from medtune.report.write import _cv_section, cv_lines
from medtune.tracking.store import LAUNCH_TAG, artifact_location

SIZES = FoldSizes(pool=100, held_out=[20] * 5)  # each fold trains on 80 images: n_test/n_train = 0.25
DIFFS = [0.02, 0.05, -0.01, 0.04, 0.03]
BASE = np.array([0.80, 0.82, 0.78, 0.81, 0.79])  # experiment a's val/balanced_acc per fold
DIGEST = "0123456789abcdef"


def test_corrected_t_matches_the_hand_worked_example() -> None:
    # d = [0.02, 0.05, -0.01, 0.04, 0.03], J = 5, n_test/n_train = 20/80 = 0.25
    # mean d = 0.13 / 5 = 0.026
    # deviations -0.006, 0.024, -0.036, 0.014, 0.004; squares sum to 0.00212; s^2 = 0.00212 / 4 = 0.00053
    # corrected variance = (1/5 + 0.25) * 0.00053 = 0.45 * 0.00053 = 0.0002385; its root 0.0154434
    # t = 0.026 / 0.0154434 = 1.6836 with df = 4; t_{0.975, 4} = 2.7764 (table)
    # half-width 2.7764 * 0.0154434 = 0.042877: interval [-0.0169, 0.0689]; two-sided p = 0.1676
    result = corrected_t(DIFFS, SIZES)
    assert result.mean == pytest.approx(0.026)
    assert result.t == pytest.approx(1.6836, abs=1e-4)
    assert result.df == 4 and result.folds == 5
    assert (result.low, result.high) == (pytest.approx(-0.0169, abs=1e-4), pytest.approx(0.0689, abs=1e-4))
    assert result.p == pytest.approx(0.1676, abs=1e-4)
    assert (result.n_train, result.n_test) == (80, 20)
    # The uncorrected paired t-test would give t = 0.026 / sqrt(0.00053 / 5) = 2.525: the correction matters.
    assert result.t < 0.026 / math.sqrt(0.00053 / 5)


def test_zero_variance_is_said_not_divided_by() -> None:
    same = corrected_t([0.02] * 5, SIZES)
    # All differences equal: the interval is the point, t and p are undefined (not inf, not an error).
    assert (same.low, same.high, same.sd) == (pytest.approx(0.02), pytest.approx(0.02), 0.0)
    assert math.isnan(same.t) and math.isnan(same.p) and same.constant
    assert "on every fold (sd 0: no t-test)" in str(same)
    scores = [
        FoldScores(e, e, DIGEST, SIZES, {"val/acc": BASE + d}, "val/acc", "max") for e, d in [("a", 0), ("b", 0.02)]
    ]
    result = pair(["a", "b"], scores)
    assert isinstance(result, FoldComparison)
    assert fold_verdicts(result)[0].endswith("b is better on every fold by the same margin (no t-test)")
    zero = pair(["a", "b"], [scores[0], scores[0]])
    assert "no difference on any fold (every difference is 0; no t-test)" in fold_verdicts(zero)[0]


def test_lower_is_better_objective_turns_the_verdict() -> None:
    # The objective is minimised: b's fold scores are higher by 0.10 +- small noise, so a is better.
    scores = [
        FoldScores("a", "a", DIGEST, SIZES, {"val/hd95": BASE}, "val/hd95", "min"),
        FoldScores("b", "b", DIGEST, SIZES, {"val/hd95": BASE + 0.1 + np.array(DIFFS) / 10}, "val/hd95", "min"),
    ]
    result = pair(["a", "b"], scores)
    assert fold_verdicts(result)[0].endswith(": a is better")


def test_different_digests_are_refused_with_both_names() -> None:
    a = FoldScores("a", "ra", DIGEST, SIZES, {"val/acc": BASE}, "val/acc", "max")
    b = FoldScores("b", "rb", "fedcba9876543210", SIZES, {"val/acc": BASE}, "val/acc", "max")
    said = pair(["a", "b"], [a, b])
    assert said == (
        "fold-wise test not shown: a and b were cross-validated on different folds "
        f"(cv_folds_digest {DIGEST} vs fedcba9876543210); only the test-split bootstrap applies"
    )
    assert pair(["a", "p"], [a, None]) == "fold-wise test not shown: p not cross-validated (a is)"
    # No launch cross-validated: nothing to say.
    assert pair(["p", "q"], [None, None]) == ""


def _parent(client: MlflowClient, root: Path, name: str, fold_scores: np.ndarray | None, digest: str) -> str:
    """A launch's parent run as the platform leaves it; ``fold_scores`` None: a launch without CV."""
    exp = client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
    tags = {LAUNCH_TAG: "true", "dataset": "synth", "dataset_fingerprint": "fp", "task": "classification"}
    run = client.create_run(exp, tags={**tags, **({"cv_folds_digest": digest} if fold_scores is not None else {})})
    rid, folder = run.info.run_id, root / name
    folder.mkdir()
    for key, value in {"metric": "val/balanced_acc", "mode": "max"}.items():
        client.log_param(rid, key, value)
    rng = np.random.default_rng(sum(map(ord, name)))
    labels = np.array([0, 1] * 20)
    probs = np.eye(2)[labels] * 0.3 + rng.uniform(0, 1, (40, 2))  # some images wrong
    probs /= probs.sum(1, keepdims=True)
    arrays = {"labels": labels, "probs": probs, "image_ids": np.arange(40), "report_kind": np.array("classification")}
    if fold_scores is not None:
        client.log_param(rid, "cv_folds", "5")
        for k, value in enumerate(fold_scores):
            client.log_metric(rid, f"cv/fold{k}/val/balanced_acc", float(value))
            client.log_metric(rid, f"cv/fold{k}/val/loss", 0.5)
            client.log_metric(rid, f"test_fold{k}/balanced_acc", 0.70 + k / 100)
        ids = [list(range(20 * k, 20 * k + 20)) for k in range(5)]
        folds = {"folds": 5, "seed": 0, "digest": digest, "val_image_ids": ids, "pool_size": 100}
        (folder / "folds.json").write_text(json.dumps(folds))
        client.log_artifact(rid, str(folder / "folds.json"))
        arrays["probs_folds"] = np.stack([probs] * 5)
    np.savez_compressed(folder / PREDICTIONS, **arrays)
    client.log_artifact(rid, str(folder / PREDICTIONS))
    client.set_terminated(rid, "FINISHED")
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("cv")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    _parent(client, root, "a", BASE, DIGEST)
    _parent(client, root, "b", BASE + np.array(DIFFS), DIGEST)
    _parent(client, root, "c", BASE + np.array([0.10, 0.12, 0.09, 0.11, 0.10]), DIGEST)
    _parent(client, root, "other_folds", BASE, "fedcba9876543210")
    _parent(client, root, "plain", None, "")
    return client.tracking_uri, root


def _analyze(*argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = analyze.main(list(argv))
    assert code == 0, err.getvalue()
    return out.getvalue()


@pytest.mark.e2e
def test_compare_prints_the_fold_table_next_to_the_bootstrap(store: tuple[str, Path]) -> None:
    uri, root = store
    text = _analyze("--compare", "a", "b", "c", "--tracking-uri", uri, "--out", str(root / "cmp"))
    # The test-split bootstrap is still there, resting on the ensemble of the 5 fold models.
    assert "a over 1 seed (the ensemble of 5 fold models) and 40 test images" in text
    assert "b vs a, balanced_acc: " in text
    # The fold table (one for every fold metric, the metric first): each experiment's mean +- sd over 5
    # folds of 100 pooled images, then the t-test.
    rows = {
        line.split()[1]: line.split()[1:]
        for line in text.splitlines()
        if " +- " in line and line.startswith("val/balanced_acc ")
    }
    assert rows["a"][2:7] == ["5", "100", "0.800", "+-", "0.016"]
    assert rows["b"][4:] == ["0.826", "+-", "0.038", "+0.026", "[-0.017,", "+0.069]", "1.68", "4", "0.168"]
    assert (
        "b vs a, fold-wise val/balanced_acc: +0.026 [-0.017, +0.069] t=1.68 df=4 p=0.168: no difference shown" in text
    )
    assert "c vs a, fold-wise val/balanced_acc: +0.104 [+0.083, +0.125] t=13.60 df=4 p=0.000: c is better" in text
    # Not nested: the fold scores chose each winner, and the output says they are optimistic.
    assert OPTIMISM in text and "these fold scores chose the winner" in text
    # The verdict is the objective's test counterpart; the other metrics follow as secondary.
    verdict_lines = [line for line in text.splitlines() if line.startswith(("primary", "secondary"))]
    assert (
        verdict_lines[0]
        == "primary metric: balanced_acc, the test counterpart of the search's objective val/balanced_acc"
    )
    assert verdict_lines[1].startswith("primary: b vs a, balanced_acc: ")
    assert verdict_lines[3].startswith("secondary metrics (3): ") and "multiplicity" in verdict_lines[3]
    # Losses are each configuration's own: never compared.
    assert "fold-wise val/loss" not in text and "n_test/n_train 0.250" in text
    page = (root / "cmp" / "compare.html").read_text()
    assert "Fold-wise: the same cross-validation folds" in page and "c is better" in page


def test_compare_says_why_the_fold_table_is_missing(store: tuple[str, Path]) -> None:
    client = MlflowClient(store[0])
    text = format_text(compare(open_entries(client, ["a", "other_folds"]), resamples=50))
    assert "fold-wise test not shown: a and other_folds were cross-validated on different folds" in text
    assert "other_folds vs a, balanced_acc: " in text  # the bootstrap on the test split is still shown
    text = format_text(compare(open_entries(client, ["plain", "a"]), resamples=50))
    assert "fold-wise test not shown: plain not cross-validated (a is)" in text
    # A 5-model fold ensemble against one model: the table is shown, no verdict is drawn, and why.
    assert "primary: a vs plain, balanced_acc: " in text
    assert "no verdict: a is the ensemble of 5 fold models and plain one model per seed" in text
    assert " is better" not in text
    # Two launches without cross-validation: today's output, no word on folds.
    assert "fold" not in format_text(compare(open_entries(client, ["plain", "plain"]), resamples=50))


def test_single_report_shows_folds_and_the_ensemble(store: tuple[str, Path]) -> None:
    uri, _ = store
    launch = open_launch(MlflowClient(uri), "b")
    lines = cv_lines(launch)
    assert lines[0] == (
        "cross-validation: val/balanced_acc = 0.826 +- 0.038 (5 folds, 100 pooled images), "
        "mean +- sd over folds (0.820, 0.870, 0.770, 0.850, 0.820)"
    )
    assert lines[1].startswith("test split, ensemble of the 5 fold models: balanced_acc ")
    assert "over 40 test images" in lines[1]
    assert "fold0 0.700, fold1 0.710, fold2 0.720, fold3 0.730, fold4 0.740" in lines[2]
    # 40 test images: a balanced-accuracy interval is far wider than +-0.05.
    assert lines[3].startswith("too wide to conclude: the ensemble's interval has half-width")
    # A launch without cross-validation says nothing about folds.
    assert cv_lines(open_launch(MlflowClient(uri), "plain")) == []


def test_segmentation_ensemble_gets_a_bootstrap_over_images() -> None:
    ious = np.array([0.8, 0.82, 0.78, 0.8] * 10)  # 40 test images, mean 0.8
    folds = FoldScores("seg", "r", DIGEST, SIZES, {"val/iou": BASE}, "val/iou", "max")
    launch = Launch(
        "seg",
        "r",
        {},
        {"metric": "val/iou", "mode": "max"},
        {f"test_fold{k}/image_iou": 0.7 for k in range(5)},
        [],
        {},
        {},
        {},
        {"report_kind": np.array("segmentation"), "iou": ious},
        folds,
    )
    lines = cv_lines(launch)
    assert lines[0].startswith("cross-validation: val/iou = 0.800 +- 0.016 (5 folds, 100 pooled images)")
    assert lines[1].startswith("test split, ensemble of the 5 fold models: image_iou 0.800, 95% interval [0.79")
    assert lines[2].endswith("fold4 0.700 (ensemble 0.800)")
    # Per-image IoUs within +-0.02: the interval is narrow, no "too wide" sentence.
    assert len(lines) == 3
    page = _cv_section(launch)
    assert "Cross-validation" in page and "test image_iou" in page and "0.8000 [0.79" in page


def _launch(client: MlflowClient, exp: str, start: int, kind: str) -> str:
    """A parent run started at ``start`` ms: a search (``kind`` ""), a ``smoke`` or a ``config`` launch.

    A ``--config`` launch is recognised, as in older stores, by the file it logged as its space.
    """
    tags = {LAUNCH_TAG: "true", "smoke": str(kind == "smoke").lower()}
    rid = client.create_run(exp, start_time=start, tags=tags).info.run_id
    space = "space: whole_cls\nconfig: {train.lr: 0.001}\n" if kind == "config" else "task: classification\n"
    client.log_text(rid, space, SPACE_FILE)
    client.set_terminated(rid, "FINISHED")
    return rid


@pytest.mark.e2e
def test_latest_skips_smoke_and_config_launches(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=artifact_location(client.tracking_uri, "e"))
    search = _launch(client, exp, 1_000, "")
    config = _launch(client, exp, 2_000, "config")
    smoke = _launch(client, exp, 3_000, "smoke")
    run, said = latest(client, exp, "e")
    # The newest full search, and a line naming the newer launches it skipped.
    assert run.info.run_id == search
    assert f"newer launches skipped: {smoke[:8]} (--smoke), {config[:8]} (--config)" in said
    assert (open_launch(client, "e").run_id, open_launch(client, "e").selection) == (search, said)
    # Asked for by --launch, a smoke launch is read, with nothing to explain.
    asked = open_launch(client, "e", smoke)
    assert (asked.run_id, asked.selection) == (smoke, "")
    only = client.create_experiment("s", artifact_location=artifact_location(client.tracking_uri, "s"))
    newest = _launch(client, only, 5_000, "smoke")
    _launch(client, only, 4_000, "smoke")
    run, said = latest(client, only, "s")
    assert run.info.run_id == newest and said.startswith("'s' has no full search, only --smoke/--config launches")


def _entries(objective: str, ensemble: tuple[int, int] = (0, 0)) -> list[Entry]:
    labels = np.array([0, 1] * 20)
    rng = np.random.default_rng(1)
    good, poor = np.eye(2)[labels] * 0.9 + 0.05, rng.dirichlet([1, 1], size=40)
    return [
        Entry(name, name, "synth", "fp", labels, p, p[None], np.arange(40), math.nan, None, None, objective, k)
        for name, p, k in zip(["a", "b"], [poor, good], ensemble)
    ]


def test_the_verdict_goes_to_the_objective_and_the_rest_is_secondary() -> None:
    lines = verdicts(compare(_entries("val/auroc"), resamples=100))
    # The objective is AUROC: its line comes first and is the primary one; the 3 others follow.
    assert lines[0] == "primary metric: auroc, the test counterpart of the search's objective val/auroc"
    assert lines[1].startswith("primary: b vs a, auroc: ") and lines[1].endswith("b is better")
    assert lines[2].startswith("secondary metrics (3): ")
    assert [line.split(",")[1].split(":")[0].strip() for line in lines[3:]] == ["acc", "balanced_acc", "f1_macro"]
    # An objective without a test counterpart (a loss): no primary metric, and it is said.
    lines = verdicts(compare(_entries("val/loss"), resamples=100))
    assert lines[0] == "no primary metric: the objective val/loss has no test counterpart here"
    assert lines[1].startswith("secondary metrics (4): ")


def test_ensembles_of_different_sizes_get_no_verdict() -> None:
    result = compare(_entries("val/acc", ensemble=(5, 2)), resamples=100)
    lines = verdicts(result)
    assert lines[1].endswith(
        "no verdict: b is the ensemble of 2 fold models and a the ensemble of 5 fold models; "
        "the difference mixes the searches with the ensembling (compare launches cross-validated "
        "with the same folds, or neither)"
    )
    assert all(line.endswith("see the primary metric's line)") for line in lines[3:])
    # Same kind on both sides (two 5-model ensembles): the verdict is drawn.
    assert verdicts(compare(_entries("val/acc", ensemble=(5, 5)), resamples=100))[1].endswith("b is better")
