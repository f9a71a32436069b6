"""Model cards and portable registry records.

The renderer is checked on hand-built facts (a cross-validated masked classifier, a full-size run);
the registry on the session's shared launches (conftest ``seg_launch``: segmentation, 2 folds;
``cls_launch``: whole_cls, one split, one seed; ``masked_launch``: masked_cls on out-of-fold masks),
read back with ``MlflowClient`` alone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune.publish.model_card import (
    CARD_FILE,
    DESCRIPTION_LIMIT,
    CardInput,
    DataFacts,
    LineageFacts,
    SearchFacts,
    description,
    limitations,
    render,
)
from tests.helpers import Workspace, runs_of

SECTIONS = ("## Data", "## Preprocessing", "## Search", "## Performance on the test split", "## Lineage")
PREPROCESSING = {  # what ``ModelFacts.to_json`` writes for a soft-masked classifier
    "decoder": "medtune.data.imageio.read_image",
    "channels": "RGB",
    "letterbox": {"size": 32, "resize": "longest side, PIL bilinear", "pad": 0, "anchor": "centre"},
    "normalize": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "activation": "softmax",
    "mask_mode": "soft",
    "mask_threshold": 0.5,
    "crop_margin": 0.1,
    "classes": ["a", "b", "c"],
}


def _masked_card(**changes: object) -> CardInput:
    """A 2-fold masked classifier's facts, as a smoke launch on 48 images produces them."""
    data = DataFacts(
        name="synth",
        fingerprint="0123456789ab",
        classes=("a", "b", "c"),
        images={"train": 30, "val": 9, "test": 9},
        class_counts={
            s: {"a": n // 3, "b": n // 3, "c": n - 2 * (n // 3)} for s, n in (("train", 30), ("val", 9), ("test", 9))
        },
        lesion_free={"train": 0, "val": 0, "test": 0},
        problems={"train": {}, "val": {"size_mismatch": 1}, "test": {}},
        near_groups=2,
        straddling=1,
        folds="2-fold cross-validation over 39 train+val images (held out per fold: 20/19; ...)",
    )
    search = SearchFacts(
        space="masked_cls",
        task="masked_classification",
        metric="val/balanced_acc",
        mode="max",
        search="tpe",
        params=("`train.lr`: loguniform 0.0003 to 0.003",),
        fixed={"data.image_size": 32},
        budget={"num_samples": 2, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
        seed=0,
        smoke=True,
        overrides=(),
        trials={"completed": 1, "stopped": 1},
        winner_run="r1",
        winner_name="resnet18_lr1e-03_ab12",
        winner_config={"train.lr": 0.001},
        winner_val=0.5,
        winner_epochs=2,
        winner_epoch=1,
    )
    lineage = LineageFacts(
        run_id="parent",
        experiment="masked_cls",
        code_version="abc",
        fold_models=2,
        segmenter="seg-synth-01234567/1",
        segmenter_masks="out-of-fold",
        segmenter_scores="its launch logged test iou 0.412",
    )
    metrics = {
        "test/balanced_acc": 0.4444,
        "test/acc": 0.5556,
        "test_seeds/balanced_acc_low": 0.2222,
        "test_seeds/balanced_acc_high": 0.7778,
        "test_seeds/balanced_acc_mean": 0.4444,
        "test_seeds/balanced_acc_sd": 0.0,
        "cv/mean/val/balanced_acc": 0.5,
        "cv/sd/val/balanced_acc": 0.0707,
        "cv/fold0/val/balanced_acc": 0.55,
        "cv/fold1/val/balanced_acc": 0.45,
        "test_fold0/balanced_acc": 0.3333,
        "test_fold1/balanced_acc": 0.4444,
    }
    card = dict(
        name="masked_cls-synth-01234567",
        version="1",
        data=data,
        preprocessing=PREPROCESSING,
        search=search,
        lineage=lineage,
        metrics=metrics,
        repeats=1,
        config={"train.lr": 0.001, "model.weights": "none"},
    )
    return CardInput(**{**card, **changes})


def test_card_of_a_cross_validated_masked_classifier_says_what_each_number_rests_on() -> None:
    text = render(_masked_card())
    assert all(section in text for section in SECTIONS) and "## Limitations" in text
    # The headline row: the objective's test value, its logged interval and the images it rests on.
    assert "| balanced_acc | 0.444 | [0.222, 0.778] | 1 model x 9 test images (bootstrap over images) |" in text
    # A metric without a logged interval says so instead of inventing one.
    assert "| acc | 0.556 | none logged | 9 test images, one model |" in text
    # Fold mean +/- sd of the selection metric, and each fold model alone on the test split.
    assert "val/balanced_acc 0.500 +/- 0.071 (mean +/- sd over 2 folds: 0.550, 0.450)" in text
    assert (
        "Each fold model alone on the same test images, balanced_acc: fold0 0.333, fold1 0.444 (the ensemble: 0.444)"
        in text
    )
    # Data: split sizes and class counts, what check found, and the folds.
    assert "| test | 9 | 3 | 3 | 3 | 0 |" in text and "val: 1 size_mismatch" in text and "2-fold" in text
    # Lineage: the segmenter version and how its masks were drawn.
    assert "segmenter `seg-synth-01234567/1` (out-of-fold)" in text
    assert "masked by the segmenter: mode `soft`" in text
    # The winner's value is dated by the epoch it came from, not by the epochs the trial ran.
    assert "val/balanced_acc 0.5000 at epoch 1 of the 2 it ran;" in text


def test_card_says_where_the_winning_value_came_from_only_when_logged() -> None:
    card = _masked_card()
    unlogged = render(_masked_card(search=SearchFacts(**{**card.search.__dict__, "winner_epoch": 0})))
    # No best/epoch on the winner's run: the card says so instead of naming an epoch.
    assert "0.5000 (the epoch it came from was not logged; the trial ran 2 epoch(s));" in unlogged
    assert "at epoch" not in unlogged and "after 2 epoch" not in unlogged


@pytest.mark.parametrize(
    ("config", "random", "line"),
    [
        ({}, True, None),
        ({"model.weights": "none", "model.weights_backbone": "None"}, True, None),
        ({"model.weights": "DEFAULT"}, False, "`model.weights=DEFAULT`"),
        # A segmenter with an ImageNet backbone and a random head is not randomly initialised.
        (
            {"model.weights": "none", "model.weights_backbone": "IMAGENET1K_V1"},
            False,
            "`model.weights_backbone=IMAGENET1K_V1`",
        ),
    ],
)
def test_random_initialisation_only_when_no_weights_are_loaded(config: dict, random: bool, line: str | None) -> None:
    card = _masked_card(config=config)
    said = any(text.startswith("Random initialisation") for text in limitations(card))
    assert said == random
    lineage = render(card).split("## Lineage")[1].split("## Limitations")[0]
    # The weights that were loaded are named in the lineage, with the key that loaded them.
    assert ("initialised from pretrained weights: " + line in lineage) if line else "pretrained" not in lineage


def test_limitations_come_from_the_facts() -> None:
    small = limitations(_masked_card())
    # A smoke run on 9 test images, random weights, ASHA stops, a straddling group, out-of-fold masks.
    for words in ("Smoke budget", "Small test split: 9 images", "+/- 0.278: too wide", "Random initialisation"):
        assert any(words in line for line in small), words
    assert any("1 trial(s) stopped early by ASHA" in line for line in small)
    assert any("straddle splits" in line for line in small)
    assert any("out-of-fold" in line for line in small)
    # A full run: 3 seeds, 400 test images, narrow intervals, pretrained, no folds, no segmenter.
    card = _masked_card()
    big = _masked_card(
        data=DataFacts(**{**card.data.__dict__, "images": {"train": 2000, "val": 400, "test": 400}, "straddling": 0}),
        search=SearchFacts(**{**card.search.__dict__, "smoke": False, "trials": {"completed": 8}}),
        lineage=LineageFacts(run_id="p", experiment="whole_cls", code_version="abc"),
        metrics={"test/balanced_acc": 0.8, "test_seeds/balanced_acc_low": 0.78, "test_seeds/balanced_acc_high": 0.82},
        repeats=3,
        config={"model.weights": "DEFAULT"},
    )
    full = limitations(big)
    assert not [line for line in full if re.match(r"Smoke|Small test|One training|Random|Train/val masks", line)]
    # Every card still says it was tested on one dataset only.
    assert full == ["Trained and tested on splits of one dataset (`synth`): other sites or devices are untested."]


def test_description_leaves_out_whole_sections_to_fit_the_registry() -> None:
    card = _masked_card()
    text = render(card)
    # A card under the limit is the description as it is.
    assert len(text) < DESCRIPTION_LIMIT and description(text, "parent") == text
    # A space with many keys: the search section goes first, performance and limitations stay whole.
    params = tuple(f"`model.key{i}`: uniform 0.0 to 1.0" for i in range(200))
    wide = render(_masked_card(search=SearchFacts(**{**card.search.__dict__, "params": params})))
    cut = description(wide, "parent")
    assert len(wide) > DESCRIPTION_LIMIT >= len(cut) and "model.key0" not in cut
    assert f"see the artifact `{CARD_FILE}` of run `parent`" in cut
    assert cut.split("## Performance")[1] == wide.split("## Performance")[1]
    # Too long even without search, preprocessing and data: cut at the limit, still naming the artifact.
    huge = description(wide + "x" * DESCRIPTION_LIMIT, "parent")
    assert len(huge) <= DESCRIPTION_LIMIT and huge.endswith("of run `parent`)")


def _registered(ws: Workspace, experiment: str) -> tuple[MlflowClient, object, str, str]:
    """The experiment's launch (parent run) and the name and version it registered."""
    client = MlflowClient(ws.tracking_uri, registry_uri=ws.tracking_uri)
    (parent,), _ = runs_of(client, experiment)
    name, version = parent.data.tags["registered_model"].rsplit("/", 1)
    return client, parent, name, version


def _check_registry(ws: Workspace, experiment: str, tmp_path: Path) -> str:
    """What every registered winner must carry; returns its card."""
    client, parent, name, version = _registered(ws, experiment)
    card = Path(client.download_artifacts(parent.info.run_id, CARD_FILE, str(tmp_path))).read_text()
    # The version's description is the card logged on the run that logged the model.
    model_version = client.get_model_version(name, version)
    assert model_version.run_id == parent.info.run_id and model_version.description == card
    assert all(section in card for section in SECTIONS) and "## Limitations" in card
    registered = client.get_registered_model(name)
    assert registered.description.startswith(("Lesion segmenters", "`")) and registered.tags["task"]
    # Portable tags: the dataset by name and fingerprint, no path of this machine.
    tags = {**model_version.tags, **registered.tags}
    assert tags["dataset"] == "data" and len(tags["dataset_fingerprint"]) == 12
    assert not [v for v in tags.values() if Path(v).is_absolute() or str(ws.root) in v], tags
    # The parent run holds the winning configuration as best.<key>, exactly the trial run's params.
    trial = client.get_run(parent.data.tags["best_run_id"])
    best = {k.removeprefix("best."): v for k, v in parent.data.params.items() if k.startswith("best.")}
    assert best == trial.data.params
    return card


@pytest.mark.slow
def test_cross_validated_segmenter_card_and_registry(
    shared_workspace: Workspace, seg_launch: subprocess.CompletedProcess, tmp_path: Path
) -> None:
    card = _check_registry(shared_workspace, "segmentation", tmp_path)
    _, parent, _, _ = _registered(shared_workspace, "segmentation")
    m = parent.data.metrics
    # Real numbers: the test IoU on the 9 test images, and the folds' mean +/- sd of val/iou.
    assert f"| iou | {m['test/iou']:.3f} | none logged | 9 test images, one model |" in card
    assert f"val/iou {m['cv/mean/val/iou']:.3f} +/- {m['cv/sd/val/iou']:.3f} (mean +/- sd over 2 folds" in card
    assert "| train | 30 |" in card and "Smoke budget" in card


@pytest.mark.slow
def test_single_split_classifier_card_and_registry(
    shared_workspace: Workspace, cls_launch: subprocess.CompletedProcess, tmp_path: Path
) -> None:
    card = _check_registry(shared_workspace, "whole_cls", tmp_path)
    _, parent, _, _ = _registered(shared_workspace, "whole_cls")
    m = parent.data.metrics
    # The objective's test value with the interval the launch logged over the 9 test images (one seed).
    low, high = m["test_seeds/balanced_acc_low"], m["test_seeds/balanced_acc_high"]
    row = f"| balanced_acc | {m['test/balanced_acc']:.3f} | [{low:.3f}, {high:.3f}] | 1 model x 9 test images"
    assert row in card
    assert "One training run" in card and "`data.batch_size=8`" in card
    # The winner's value is dated by the epoch its run logged as best/epoch.
    trial = MlflowClient(shared_workspace.tracking_uri).get_run(parent.data.tags["best_run_id"]).data.metrics
    assert f"at epoch {int(trial['best/epoch'])} of the " in card


@pytest.mark.slow
def test_masked_classifier_card_names_its_segmenter(
    shared_workspace: Workspace, masked_launch: subprocess.CompletedProcess, tmp_path: Path
) -> None:
    card = _check_registry(shared_workspace, "masked_cls", tmp_path)
    _, parent, _, _ = _registered(shared_workspace, "masked_cls")
    # The segmenter version the masks came from, how they were drawn, and what its own launch scored.
    assert f"masks from segmenter `{parent.data.tags['segmenter_version']}` (out-of-fold)" in card
    assert re.search(r"its launch \(run `\w+`\) logged test iou \d\.\d{3}, val/iou \d\.\d{3} \+/- \d\.\d{3}", card)
    assert "Train/val masks are out-of-fold predictions" in card
