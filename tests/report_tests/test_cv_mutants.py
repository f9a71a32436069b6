"""The fold-wise statistics (``medtune.report.cv``) pinned where mutation testing found them loose (issue 24 item 5).

``tests/report_tests/test_statistics.py`` pins the 2-fold t-test, the fold directions and the fold
table with equal differences; these tests add what its mutants slipped past: the interval's level,
a negative difference, unequal folds, every refusal of ``folds.json`` and of the fold metrics, every
line of :func:`pair`, and the fold table cell by cell.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medtune.report.cv import (
    FoldComparison,
    FoldScores,
    FoldsError,
    FoldSizes,
    corrected_t,
    fold_rows,
    fold_scores,
    method,
    pair,
    parse_sizes,
    read_fold_scores,
)
from medtune.tracking.store import artifact_location

DIGEST = "0123456789abcdef"
TWO = FoldSizes(pool=40, held_out=[20, 20])  # the hand-worked 2-fold case: n_test/n_train = 1, df = 1


def test_fold_sizes_of_unequal_folds() -> None:
    sizes = FoldSizes(pool=30, held_out=[10, 8, 12])
    # Means over folds: 10 held out, 20 trained on; the ratio is the mean of 10/20, 8/22 and 12/18.
    assert (sizes.n_test, sizes.n_train) == (10.0, 20.0)
    assert sizes.ratio == pytest.approx((0.5 + 8 / 22 + 12 / 18) / 3)


def test_corrected_t_level_and_sign_on_two_folds() -> None:
    # d = [0.02, 0.06]: se = sqrt((1/2 + 1) * 0.0008) = 0.034641 (test_statistics.py). With df = 1 the
    # t quantile at 0.75 is tan(pi / 4) = 1, so the 50% interval is the mean +- se exactly.
    half = corrected_t([0.02, 0.06], TWO, level=0.5)
    assert (half.low, half.high) == (pytest.approx(0.04 - math.sqrt(0.0012)), pytest.approx(0.04 + math.sqrt(0.0012)))
    # The mirrored differences: the same p (two-sided), t and the interval mirrored.
    neg = corrected_t([-0.02, -0.06], TWO)
    assert neg.t == pytest.approx(-1.1547, abs=1e-4) and neg.p == pytest.approx(0.45437, abs=1e-5)
    assert (neg.low, neg.high) == (pytest.approx(-0.04 - 0.44016, abs=1e-5), pytest.approx(-0.04 + 0.44016, abs=1e-5))
    assert not neg.constant


def test_equal_differences_give_the_point_as_interval() -> None:
    same = corrected_t([0.125, 0.125, 0.125], FoldSizes(pool=30, held_out=[10, 10, 10]))
    # sd 0: the interval is the point, no t, no p; the counts still describe the folds.
    assert (same.mean, same.low, same.high, same.sd) == (0.125, 0.125, 0.125, 0.0)
    assert math.isnan(same.t) and math.isnan(same.p) and same.constant
    assert (same.df, same.folds, same.n_test, same.n_train) == (2, 3, 10.0, 20.0)
    assert str(same) == "+0.125 on every fold (sd 0: no t-test)"


def _plan(held: list[int], pool: int, **extra: object) -> bytes:
    ids, start = [], 0
    for h in held:
        ids.append(list(range(start, start + h)))
        start += h
    return json.dumps({"val_image_ids": ids, "pool_size": pool, **extra}).encode()


def test_parse_sizes_refuses_each_unusable_plan_in_one_line() -> None:
    with pytest.raises(FoldsError, match=r"^launch x is cross-validated but has no folds\.json$"):
        parse_sizes(None, "launch x")
    unreadable = {
        b"{not json": "JSONDecodeError",
        json.dumps({"val_image_ids": [[1], [2]]}).encode(): "KeyError: 'pool_size'",
        json.dumps({"val_image_ids": 5, "pool_size": 10}).encode(): "TypeError",
    }
    for data, why in unreadable.items():
        with pytest.raises(FoldsError, match=rf"^launch x: folds\.json is unreadable \({why}"):
            parse_sizes(data, "launch x")
    # A fold holding nothing, or the whole pool (nothing left to train on), is refused.
    with pytest.raises(FoldsError, match=r"^launch x: folds\.json holds 2 folds of \[0, 10\] images out of 12$"):
        parse_sizes(_plan([0, 10], 12), "launch x")
    with pytest.raises(FoldsError, match=r"holds 2 folds of \[10, 10\] images out of 10$"):
        parse_sizes(_plan([10, 10], 10), "launch x")
    # One image held out is a fold; a plan without a digest has the digest "".
    assert parse_sizes(_plan([1, 9], 10), "launch x") == FoldSizes(10, [1, 9], "")


def _fold_scores(params: dict[str, str], tags: dict[str, str], metrics: dict[str, float], plan: bytes | None):
    return fold_scores("e", "0123456789abcdef", params, tags, metrics, plan)


def test_fold_scores_reads_what_the_launch_logged() -> None:
    # Not cross-validated: no cv_folds param, nothing to read (folds.json is not even looked at).
    assert _fold_scores({"metric": "val/acc"}, {}, {"cv/fold0/val/acc": 0.5}, None) is None
    metrics = {
        "cv/fold0/val/acc": 0.5,
        "cv/fold1/val/acc": 0.75,
        "cv/fold2/val/acc": 0.1,  # a fold the plan does not have: ignored
        "cv/fold0/val/auroc": float("nan"),  # undefined on fold 0: the metric is left out
        "cv/fold1/val/auroc": 0.9,
        "val/acc": 0.6,  # not a fold metric
    }
    tags = {"cv_folds_digest": DIGEST}
    scores = _fold_scores({"cv_folds": "2"}, tags, metrics, _plan([5, 5], 10))
    # No digest in the plan: the tag's is taken; no metric/mode params: "" and "max".
    assert scores is not None and (scores.digest, scores.metric, scores.mode) == (DIGEST, "", "max")
    assert list(scores.scores) == ["val/acc"] and scores.scores["val/acc"].tolist() == [0.5, 0.75]
    assert (scores.experiment, scores.run_id, scores.sizes) == ("e", "0123456789abcdef", FoldSizes(10, [5, 5], ""))
    untagged = _fold_scores({"cv_folds": "2", "metric": "val/acc", "mode": "min"}, {}, metrics, _plan([5, 5], 10))
    assert untagged is not None and (untagged.digest, untagged.metric, untagged.mode) == ("", "val/acc", "min")


def test_fold_scores_refuses_a_plan_that_disagrees() -> None:
    where = "launch 01234567 of 'e'"
    with pytest.raises(FoldsError, match=rf"^{where}: param cv_folds is 'two', expected a number of folds$"):
        _fold_scores({"cv_folds": "two"}, {}, {}, _plan([5, 5], 10))
    # Three folds logged, two in folds.json, the same digest: refused all the same.
    with pytest.raises(FoldsError) as err:
        _fold_scores({"cv_folds": "3"}, {"cv_folds_digest": DIGEST}, {}, _plan([5, 5], 10, digest=DIGEST))
    assert str(err.value) == (
        f"{where}: folds.json (2 folds, digest {DIGEST}) disagrees with cv_folds=3 and tag cv_folds_digest={DIGEST}"
    )
    with pytest.raises(
        FoldsError, match=r"\(2 folds, digest ffff\) disagrees with cv_folds=2 and tag cv_folds_digest=\?$"
    ):
        _fold_scores({"cv_folds": "2"}, {}, {}, _plan([5, 5], 10, digest="ffff"))
    with pytest.raises(
        FoldsError, match=r"\(2 folds, digest \?\) disagrees with cv_folds=3 and tag cv_folds_digest=\?$"
    ):
        _fold_scores({"cv_folds": "3"}, {}, {}, _plan([5, 5], 10))
    with pytest.raises(FoldsError, match=rf"^{where} is cross-validated but has no folds\.json$"):
        _fold_scores({"cv_folds": "2"}, {}, {}, None)


def test_read_fold_scores_returns_the_line_of_an_unreadable_launch(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=artifact_location(client.tracking_uri, "e"))
    broken, plain = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    client.log_param(broken, "cv_folds", "2")  # cross-validated, but folds.json was never logged
    # The launch's error is one line for the report, not an exception; a launch without CV is None.
    said = read_fold_scores(client, "e", client.get_run(broken))
    assert said == f"launch {broken[:8]} of 'e' is cross-validated but has no folds.json"
    assert read_fold_scores(client, "e", client.get_run(plain)) is None


def _entry(name: str, values: list[float], *, digest: str = DIGEST, sizes: FoldSizes = TWO, **more: list[float]):
    scores = {"val/acc": np.array(values), **{k.replace("__", "/"): np.array(v) for k, v in more.items()}}
    return FoldScores(name, f"{name}0123456789", digest, sizes, scores, "val/acc", "max")


A = [0.5, 0.75]  # exact binary fractions: a constant difference stays constant


def test_pair_says_why_there_is_no_fold_wise_test() -> None:
    a, b = _entry("a", A), _entry("b", A)
    assert pair(["a", "b", "c"], [a, "launch 1 of 'b': broken", "second"]) == (
        "fold-wise test not shown: launch 1 of 'b': broken"
    )
    assert pair(["p", "q"], [None, None]) == ""
    assert pair(["p", "a", "q"], [None, a, None]) == "fold-wise test not shown: p, q not cross-validated (a is)"
    assert pair(["a", "b", "q"], [a, b, None]) == "fold-wise test not shown: q not cross-validated (a, b are)"
    # The third launch on other folds is refused too, by name; launches without a digest never pair.
    c = _entry("c", A, digest="fedcba9876543210")
    assert pair(["a", "b", "c"], [a, b, c]) == (
        "fold-wise test not shown: a and c were cross-validated on different folds "
        f"(cv_folds_digest {DIGEST} vs fedcba9876543210); only the test-split bootstrap applies"
    )
    blank = [_entry("a", A, digest=""), _entry("b", A, digest="")]
    assert pair(["a", "b"], blank) == (
        "fold-wise test not shown: a and b were cross-validated on different folds "
        "(cv_folds_digest ? vs ?); only the test-split bootstrap applies"
    )
    lonely = FoldScores("d", "d", DIGEST, TWO, {"val/auroc": np.array(A)}, "val/auroc", "max")
    assert pair(["a", "d"], [a, lonely]) == "fold-wise test not shown: the launches share no fold metric"


def test_pair_tests_the_shared_metrics_objective_first_without_losses() -> None:
    more = {"val__loss": A, "loss": A, "lossy__acc": A, "val__auroc": A, "val__zeta": A}
    a, b, c = _entry("a", A, **more), _entry("b", [0.52, 0.81], **more), _entry("c", [0.625, 0.875], **more)
    result = pair(["a", "b", "c"], [a, b, c])
    assert isinstance(result, FoldComparison) and result.entries == [a, b, c]
    # The objective first, then the others sorted; a loss (the last part of the name) left out.
    assert list(result.tests) == ["val/acc", "lossy/acc", "val/auroc", "val/zeta"]
    first, *others = result.tests["val/acc"]
    assert first is None and [t.mean for t in others] == [pytest.approx(0.04), 0.125]
    assert others[0].t == pytest.approx(1.1547, abs=1e-4) and others[1].constant


def test_fold_table_cell_by_cell() -> None:
    a, b, c = _entry("a", A), _entry("b", [0.52, 0.81]), _entry("c", [0.625, 0.875])
    result = pair(["a", "b", "c"], [a, b, c])
    header, rows = fold_rows(result, "val/acc")
    named = ["experiment", "launch", "folds", "pooled images", "val/acc mean +- sd", "diff [95% CI]", "t", "df", "p"]
    assert header == named
    # Fold means and sample sds: a 0.625 +- 0.25/sqrt(2); b 0.665 +- 0.29/sqrt(2); c 0.75 +- 0.177.
    assert rows == [
        ["a", "a0123456", "2", "40", "0.625 +- 0.177", "-", "-", "-", "-"],
        ["b", "b0123456", "2", "40", "0.665 +- 0.205", "+0.040 [-0.400, +0.480]", "1.15", "1", "0.454"],
        ["c", "c0123456", "2", "40", "0.750 +- 0.177", "+0.125 on every fold", "-", "1", "-"],
    ]
    assert a.describe("val/acc") == "0.625 +- 0.177 (2 folds, 40 pooled images)"


def test_direction_and_method_follow_the_first_launch() -> None:
    sizes = FoldSizes(pool=30, held_out=[10, 8, 12])
    # The first launch minimised val/acc (its objective): lower is better there, whatever the others did.
    first = FoldScores("first", "r1", DIGEST, sizes, {"val/acc": np.array([0.1, 0.2, 0.3])}, "val/acc", "min")
    other = FoldScores("other", "r2", DIGEST, sizes, {"val/acc": np.array([0.2, 0.2, 0.5])}, "val/other", "max")
    result = pair(["first", "other"], [first, other])
    assert isinstance(result, FoldComparison)
    assert result.lower_is_better("val/acc") and result.lower_is_better("val/fail_rate")
    assert not result.lower_is_better("val/other")
    said = method(result)
    assert said.startswith(
        f"fold-wise: each experiment's winner scored on the same 3 folds of 30 pooled train+val images "
        f"(cv_folds_digest {DIGEST}; scored images per fold 10, 8, 12 (of 30)); diff: against first, fold by fold"
    )
    assert f"n_test/n_train {sizes.ratio:.3f}), 95% interval. optimistic:" in said


def test_method_of_nested_launches_says_their_scores_chose_nothing() -> None:
    sizes = FoldSizes(pool=30, held_out=[10, 10, 10])
    first = FoldScores("first", "r1", DIGEST, sizes, {"val/acc": np.array([0.1, 0.2, 0.3])}, "val/acc", "max", True)
    other = FoldScores("other", "r2", DIGEST, sizes, {"val/acc": np.array([0.2, 0.2, 0.5])}, "val/acc", "max", True)
    said = method(pair(["first", "other"], [first, other]))
    # Outer folds of a nested launch were not used to choose anything: no optimism sentence.
    assert said == (
        "fold-wise: each experiment's outer-fold winners scored on the same 3 outer folds of all 30 images "
        f"(outer_folds_digest {DIGEST}; 10 scored vs 20 training images per fold); each fold's search ran on the "
        "other folds' images, so these scores chose nothing; diff: against first, fold by fold, corrected resampled "
        "t-test (Nadeau and Bengio 2003; n_test/n_train 0.500), 95% interval"
    )
