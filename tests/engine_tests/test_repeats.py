"""Training variance: the two-level bootstrap, the comparison's words, the winner's retrains, ``--repeats``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader

from medtune.engine.recipe import Recipe
from medtune.engine.repeats import BestWeights, full_budget, headline, seed_predictions
from medtune.engine.trainer import make_trainer
from medtune.report.compare import Entry, compare
from medtune.report.compare_page import format_text, write_page
from medtune.report.load import load_predictions
from medtune.report.verdicts import verdict
from medtune.scoring.bootstrap import METRICS, Interval, seed_bootstrap, seed_scores
from medtune.tracking.store import experiment_id, latest_launch
from tests.helpers import TASK_CONFIGS, SharedLaunch, Workspace, tail
from trainables import launch

LABELS = np.arange(60) % 3


def _model(correct: np.ndarray) -> np.ndarray:
    """Probabilities [60, 3]: the true class where ``correct``, the next class elsewhere."""
    probs = np.full((len(LABELS), 3), 0.1)
    probs[np.arange(len(LABELS)), np.where(correct, LABELS, (LABELS + 1) % 3)] = 0.8
    return probs


def _seeds_that_disagree() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return _model(rng.random(60) < 0.9), _model(rng.random(60) < 0.5)  # accuracy 0.917 and 0.417


def test_two_seeds_that_disagree_widen_the_interval() -> None:
    good, poor = _seeds_that_disagree()
    acc = METRICS["acc"]
    (one,), _ = seed_bootstrap(LABELS, [good[None]], acc)
    (two,), _ = seed_bootstrap(LABELS, [np.stack([good, poor])], acc)
    # The point is the mean over seeds; the interval reaches each seed's own score (an image-only
    # bootstrap of the two seeds' mean would stay within about +-0.1 of 0.667).
    assert two.value == pytest.approx((acc(LABELS, good) + acc(LABELS, poor)) / 2)
    assert two.low < acc(LABELS, poor) and two.high > acc(LABELS, good)
    assert two.high - two.low > 2 * (one.high - one.low)


@pytest.mark.e2e
def test_identical_seeds_give_the_one_seed_interval() -> None:
    good, _ = _seeds_that_disagree()
    for metric in METRICS.values():
        (one,), _ = seed_bootstrap(LABELS, [good[None]], metric)
        (three,), _ = seed_bootstrap(LABELS, [np.stack([good, good, good])], metric)
        assert (three.value, three.low, three.high) == pytest.approx((one.value, one.low, one.high))
    scores = seed_scores(LABELS, np.stack([good, good]))
    # No spread between identical seeds.
    assert scores["acc"].sd == 0.0 and scores["acc"].seeds == 2 and scores["acc"].images == 60


@pytest.mark.parametrize(
    ("diff", "said"),
    [
        (Interval(0.167, 0.061, 0.273), "masked_cls is better"),
        (Interval(-0.1, -0.15, -0.05), "whole_cls is better"),
        (Interval(0.01, -0.02, 0.04), "no difference shown (the interval includes 0)"),
        (Interval(0.045, -0.02, 0.11), "no difference shown (the interval includes 0); too wide to conclude"),
        (Interval(0.0, math.nan, math.nan), "no interval"),
    ],
)
def test_verdict_words(diff: Interval, said: str) -> None:
    assert verdict("masked_cls", "whole_cls", diff).startswith(said)


def _entry(name: str, probs_seeds: np.ndarray) -> Entry:
    ids = np.arange(len(LABELS))
    return Entry(name, f"{name}-run", "synth", "fp", LABELS, probs_seeds[0], probs_seeds, ids, math.nan)


def test_compare_pairs_images_and_draws_seeds_per_experiment(tmp_path: Path) -> None:
    good, poor = _seeds_that_disagree()
    same = compare([_entry("a", poor[None]), _entry("b", np.stack([poor, poor]))], resamples=200)
    # Two seeds identical to the one-seed experiment: every paired resample differs by exactly 0.
    assert all((d[1].low, d[1].high) == (0.0, 0.0) for d in same.diffs.values())
    result = compare([_entry("whole", poor[None]), _entry("masked", np.stack([good, good]))], resamples=200)
    acc = METRICS["acc"]
    assert result.diffs["acc"][1].value == pytest.approx(acc(LABELS, good) - acc(LABELS, poor))
    text = format_text(result)
    # The text says what the numbers rest on and, per metric, what the difference shows.
    assert "whole over 1 seed and 60 test images; masked over 2 seeds and 60 test images" in text
    assert "masked vs whole, balanced_acc: +0.500 [" in text and "]: masked is better" in text
    page = write_page(result, tmp_path / "out").read_text()
    assert "masked is better" in page and (tmp_path / "out" / "compare.png").is_file()


class _Scripted(pl.LightningModule):
    """One weight that SGD moves every step, and a validation score scripted per epoch."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.scores = scores

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return ((self.w - 10.0) ** 2).sum()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/score", self.scores[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(2, 1), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(1, 1), batch_size=1)


class _Weights(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append(float(pl_module.w.detach()))


@pytest.mark.parametrize(("mode", "epoch"), [("max", 1), ("min", 0)])
def test_retrain_keeps_its_best_epoch_weights(mode: str, epoch: int) -> None:
    system, best, seen = _Scripted([0.2, 0.9, math.nan, 0.5]), BestWeights("val/score", mode), _Weights()
    make_trainer(max_epochs=4, callbacks=[best, seen]).fit(system)
    best.restore(system)
    # The weights of the best epoch by the mode (the NaN epoch never counts), not the last epoch's.
    assert best.epoch == epoch and float(system.w.detach()) == seen.seen[epoch] != seen.seen[-1]


@pytest.mark.e2e
def test_seed_predictions_retrain_with_the_next_seeds(task_caches: dict) -> None:
    config = {"data.image_size": 32, "data.batch_size": 8, "train.lr": 1e-3, **TASK_CONFIGS["classification"]}
    recipe = Recipe(
        "classification",
        config,
        task_caches["caches"],
        None,
        task_caches["num_classes"],
        max_epochs=1,
        metric="val/balanced_acc",
        mode="max",
        seed=5,
    )
    first = np.full((9, task_caches["num_classes"]), 1 / task_caches["num_classes"], dtype=np.float32)
    arrays = seed_predictions(recipe, first, repeats=3)
    probs = arrays["probs_seeds"]
    # Index 0 is the winner's; the retrains use seeds 6 and 7, so their predictions differ.
    assert probs.shape == (3, 9, task_caches["num_classes"]) and list(arrays["seeds"]) == [5, 6, 7]
    assert np.array_equal(probs[0], first) and not np.allclose(probs[1], probs[2])
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-4)
    # A winner that ASHA stopped early is left out: seed 5 is retrained from scratch like seed 6, and
    # training with seed 6 gives the same model as before (the seeds, not the order, decide it).
    again = seed_predictions(recipe, None, repeats=2)
    assert list(again["seeds"]) == [5, 6] and not np.allclose(again["probs_seeds"][0], first)
    assert np.allclose(again["probs_seeds"][1], probs[1], atol=1e-5)


@pytest.mark.parametrize(
    ("tags", "full"),
    [
        ({"stopped_early": "false", "status": "completed"}, True),
        ({"stopped_early": "false", "status": "early_stopped"}, True),  # the task's patience: a retrain stops too
        ({"stopped_early": "true", "status": "stopped"}, False),  # ASHA: a truncated budget
        ({}, False),  # unknown: retrained rather than mixed
    ],
)
def test_full_budget_reads_the_trial_runs_tags(tags: dict[str, str], full: bool) -> None:
    assert full_budget(tags) is full


def test_headline_is_the_mean_over_seeds() -> None:
    good, poor = _seeds_that_disagree()
    scores = seed_scores(LABELS, np.stack([good, poor]))
    test = {"test/acc": 0.917, "test/balanced_acc": 0.917, "test/loss": 0.3, "test/saliency_iou": 0.2}
    shown = headline(test, scores)
    # acc and balanced accuracy: the mean over the 2 seeds, the point the interval is about (inside it);
    # the loss and saliency have no per-seed score and stay the winner's.
    assert shown["test/acc"] == pytest.approx((METRICS["acc"](LABELS, good) + METRICS["acc"](LABELS, poor)) / 2)
    assert shown["test/acc"] == scores["acc"].mean and scores["acc"].low <= shown["test/acc"] <= scores["acc"].high
    assert shown["test/balanced_acc"] == scores["balanced_acc"].mean
    assert (shown["test/loss"], shown["test/saliency_iou"]) == (0.3, 0.2) and set(shown) == set(test)
    # One seed: the winner's own numbers are the headline.
    assert headline(test, seed_scores(LABELS, good[None])) == test and headline(test, None) == test


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("whole_cls", "error: --repeats: expected a positive integer, got 0"),
        ("segmentation", "error: --repeats: retraining with more seeds covers single-label classification"),
    ],
)
def test_bad_repeats_refused_in_one_line(
    space: str, expected: str, tmp_path: Path, synth_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    repeats = "0" if space == "whole_cls" else "2"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = launch.main(
        ["--space", space, "--smoke", "--repeats", repeats, "--data", str(synth_dir), "--tracking-uri", uri]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(expected) and err.count("\n") == 1, err


@pytest.mark.slow
def test_launch_with_repeats_reports_over_seeds(shared_workspace: Workspace, repro_launch: SharedLaunch) -> None:
    # conftest ``repro_launch``: CLS_ARGS (seed 7) with --repeats 2, experiment "repro".
    client = MlflowClient(shared_workspace.tracking_uri)
    run = latest_launch(client, experiment_id(client, "repro", create=False))
    preds = load_predictions(client, run.info.run_id)
    # The winner (seed 7) and one retrain (seed 8), each on the 9 test images; the winner is seed 0
    # only when it ran the full budget, else seed 7 was retrained at the full budget too.
    assert preds["probs_seeds"].shape[:2] == (2, 9) and list(preds["seeds"]) == [7, 8]
    winner = client.get_run(run.data.tags["best_run_id"]).data.tags
    kept = full_budget(winner)
    assert run.data.tags["seed0"] == ("search winner" if kept else "retrained: ASHA stopped the winner early")
    if kept:  # seed 0's predictions are the winner's own
        assert np.allclose(preds["probs_seeds"][0], preds["probs"])
    assert run.data.params["repeats"] == "2"
    score = seed_scores(preds["labels"].astype(int), preds["probs_seeds"])["balanced_acc"]
    assert run.data.metrics["test_seeds/balanced_acc_mean"] == pytest.approx(score.mean)
    # The headline test number is the mean over the seeds, the point the interval is about.
    assert run.data.metrics["test/balanced_acc"] == pytest.approx(score.mean)
    assert {f"test_seeds/auroc_{k}" for k in ("mean", "sd", "low", "high")} <= set(run.data.metrics)
    assert f"test balanced_acc over 2 seeds x 9 images: mean {score.mean:.3f}" in repro_launch.stdout
    compared = shared_workspace.analyze("--compare", "repro", "repro", "--out", str(shared_workspace.root / "cmp"))
    # Read back from the store: the comparison rests on both seeds. Against itself the difference is 0,
    # its interval not a point: each side draws its seeds on its own, so the seeds' spread shows in it.
    assert compared.returncode == 0, tail(compared)
    assert "repro over 2 seeds and 9 test images" in compared.stdout
    assert re.search(r"repro vs repro, acc: \+0\.000 \[[-+]\d\.\d+, \+\d\.\d+\]: no difference shown", compared.stdout)


def test_compare_bootstraps_per_image_saliency_when_saved() -> None:
    from medtune.report.compare import Entry, compare
    from medtune.report.verdicts import verdicts

    labels = np.array([0, 1] * 10)
    probs = np.eye(2)[labels][None]
    looks = np.full(20, 0.8)
    looks[::5] = np.nan  # images without a lesion are left out of the mean
    entries = [
        Entry("whole", "a", "d", "f", labels, probs[0], probs, np.arange(20), 0.1, np.full(20, 0.1)),
        Entry("saliency", "b", "d", "f", labels, probs[0], probs, np.arange(20), 0.8, looks),
    ]
    result = compare(entries, resamples=200)
    # Same accuracy, far better saliency: the saliency difference has an interval and a verdict.
    assert result.diffs["saliency_iou"][1].value == pytest.approx(0.7)
    assert result.diffs["saliency_iou"][1].low > 0
    assert "secondary: saliency vs whole, saliency_iou: +0.700 [+0.700, +0.700]: saliency is better" in verdicts(result)
