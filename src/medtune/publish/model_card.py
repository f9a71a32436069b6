"""Model cards: one markdown page per registered version, saying what its numbers rest on.

The card is the version's description in the registry (what ``mlflow ui`` shows beside the model) and
the artifact ``model_card.md`` of the launch's parent run, the run the version was logged from. It is
rendered from facts the launch already holds or logged (:class:`CardInput`): no statistic is computed
here. Every test number comes with what it rests on (images, seeds, folds) and its 95% interval where
the launch logged one (``test_seeds/*``, ``publish.log_seed_scores``); where none was logged the card
says so. Limitations are generated from the same facts, so a smoke run or a 9-image test split is
never described as a result.

:func:`render` is pure (a hand-built ``CardInput`` gives a card); :func:`log_card` writes it;
``medtune.publish.winner`` gathers the facts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from medtune.scoring.bootstrap import CONCLUSIVE_HALF_WIDTH
from medtune.tracking.store import retrying

CARD_FILE = "model_card.md"
# MLflow's SQL registry stores descriptions in a String(5000) column: sqlite ignores the length,
# Postgres and MySQL refuse longer text. A longer card is cut there, the artifact keeps it whole.
DESCRIPTION_LIMIT = 5000
SMALL_TEST = 100  # fewer test images than this: the card says the split is small
SHORTENED = ("## Search", "## Preprocessing", "## Data")  # what a registry description leaves out first
STATUS = {"stopped": "stopped by ASHA", "early_stopped": "stopped by patience"}  # the trials' status tags


@dataclass(frozen=True)
class DataFacts:
    """The dataset as the launch used it, and what ``check`` found in it."""

    name: str
    fingerprint: str
    classes: tuple[str, ...]
    images: dict[str, int]  # split -> images
    class_counts: dict[str, dict[str, int]]  # split -> class name -> images with that class
    lesion_free: dict[str, int]  # split -> images without a lesion mask
    problems: dict[str, dict[str, int]]  # split -> problem kind -> count (the full check)
    near_groups: int = 0  # near-duplicate groups over all splits (exact copies included)
    straddling: int = 0  # of those, groups with images in more than one split
    folds: str = ""  # ``FoldPlan.describe()`` of a cross-validated launch


@dataclass(frozen=True)
class SearchFacts:
    """The search that produced the model: space, budget, trials and the winner."""

    space: str
    task: str
    metric: str
    mode: str
    search: str  # tpe | grid
    params: tuple[str, ...]  # one line per searched key
    fixed: dict[str, object]
    budget: dict[str, int]
    seed: int
    smoke: bool
    overrides: tuple[str, ...]
    trials: dict[str, int]  # status -> trials
    winner_run: str
    winner_name: str
    winner_config: dict[str, object]  # the searched keys' winning values
    winner_val: float
    winner_epochs: int  # epochs the winning trial ran
    winner_epoch: int = 0  # the epoch ``winner_val`` came from (its run's ``best/epoch``); 0: not logged


@dataclass(frozen=True)
class LineageFacts:
    """Where the model came from: its run, code, and (masked tasks) the segmenter whose masks it saw."""

    run_id: str
    experiment: str
    code_version: str
    fold_models: int = 0  # a cross-validated model: the ensemble of this many fold models
    segmenter: str = ""  # ``name/version`` (masked tasks)
    segmenter_masks: str = ""  # out-of-fold | one model
    segmenter_foreign: bool = False
    segmenter_scores: str = ""  # what the segmenter's own launch logged, in words


@dataclass(frozen=True)
class CardInput:
    """Everything a card says, as plain values."""

    name: str
    version: str
    data: DataFacts
    preprocessing: dict  # ``ModelFacts.to_json()`` of the logged model
    search: SearchFacts
    lineage: LineageFacts
    metrics: dict[str, float] = field(default_factory=dict)  # the parent run's logged metrics
    repeats: int = 1  # seeds the test interval rests on
    config: dict[str, object] = field(default_factory=dict)  # the winner's whole configuration
    augment: float = 0.0  # the data module's augmentation strength for that configuration (defaults included)
    nested: str = ""  # the refit of a nested launch: its estimate of the procedure (``medtune.publish.nested``)


def render(card: CardInput) -> str:
    """The card as markdown: data, preprocessing, search, test performance, lineage, limitations."""
    title = [f"# Model card: {card.name} version {card.version}", "", _summary(card)]
    parts = [title, _data(card), _preprocessing(card), _search(card), *_nested(card), _performance(card)]
    parts.append(_lineage(card))
    parts.append(["## Limitations", "", *(f"- {line}" for line in limitations(card))])
    return "\n\n".join("\n".join(part) for part in parts) + "\n"


def _summary(card: CardInput) -> str:
    smoke = " A smoke run: a test of the platform, not a model to use." if card.search.smoke else ""
    return (
        f"A `{card.search.task}` model chosen by a medtune search (space `{card.search.space}`) on dataset "
        f"`{card.data.name}` and tested once on its test split.{smoke}"
    )


def _data(card: CardInput) -> list[str]:
    data = card.data
    lines = [
        "## Data",
        "",
        f"Dataset `{data.name}`, fingerprint `{data.fingerprint}` (its COCO files and image bytes).",
    ]
    lines += ["", "| split | images | " + " | ".join(data.classes) + " | without lesion |"]
    lines.append("|---" * (len(data.classes) + 3) + "|")
    for split, n in data.images.items():
        counts = " | ".join(str(data.class_counts[split].get(c, 0)) for c in data.classes)
        lines.append(f"| {split} | {n} | {counts} | {data.lesion_free.get(split, 0)} |")
    if data.folds:
        lines += ["", f"Selection by {data.folds}."]
    found = "; ".join(
        f"{split}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        for split, kinds in data.problems.items()
        if kinds
    )
    lines += [
        "",
        "Known problems (`python -m medtune.data check`, full: decoding, sizes, exact and near duplicates): "
        + (found or "none")
        + f"; {data.near_groups} near-duplicate group(s), {data.straddling} straddling splits.",
    ]
    return lines


def _preprocessing(card: CardInput) -> list[str]:
    facts, config = card.preprocessing, card.config
    box, norm = facts.get("letterbox", {}), facts.get("normalize", {})
    lines = [
        "## Preprocessing",
        "",
        f"- decoded by {facts.get('decoder', '?')}, {facts.get('channels', 'RGB')}",
        f"- letterboxed to {box.get('size', '?')} x {box.get('size', '?')} px ({box.get('resize', '?')}, "
        f"padded with {box.get('pad', 0)}, {box.get('anchor', 'centre')})",
        f"- scaled by 1/255, normalised with mean {_floats(norm.get('mean'))} and sd {_floats(norm.get('std'))}",
        f"- training only: augmentation strength {card.augment:.3g} (flips, rotation, scale, colour jitter), "
        f"sampler `{config.get('data.sampler', 'none')}`",
    ]
    if facts.get("mask_mode", "none") != "none":
        lines.append(
            f"- masked by the segmenter: mode `{facts['mask_mode']}`, threshold {_short(facts.get('mask_threshold'))}, "
            f"crop margin {_short(facts.get('crop_margin'))}"
        )
    output = f"- output: {facts.get('activation', '?')}"
    if facts.get("threshold") is not None:
        output += f", threshold {facts['threshold']}"
    if facts.get("classes"):
        output += ", classes " + ", ".join(facts["classes"])
    return lines + [output]


def _floats(values: object) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")" if isinstance(values, (list, tuple)) else "?"


def _search(card: CardInput) -> list[str]:
    s, b = card.search, card.search.budget
    searcher = (
        "every combination of a grid, each for the full budget"
        if s.search == "grid"
        else f"Optuna TPE (seed {s.seed}) with ASHA (grace period {b.get('grace_period')} epoch(s), "
        f"reduction factor {b.get('reduction_factor')})"
    )
    trials = ", ".join(f"{n} {STATUS.get(status, status)}" for status, n in sorted(s.trials.items()))
    lines = [
        "## Search",
        "",
        f"Space `{s.space}`, objective `{s.metric}` ({s.mode}); {searcher}.",
        f"Budget: {b.get('num_samples')} trial(s) of at most {b.get('max_epochs')} epoch(s)"
        + (" (the space's smoke budget)" if s.smoke else "")
        + (f"; overrides: {', '.join(s.overrides)}" if s.overrides else "")
        + ".",
        "",
        "Searched:",
        *(f"- {line}" for line in s.params or ["nothing: one configuration (`launch.py --config`)"]),
        "",
        "Fixed: " + (", ".join(f"`{k}={v}`" for k, v in sorted(s.fixed.items())) or "nothing"),
        "",
        f"Trials: {sum(s.trials.values())} ({trials}).",
        f"Winner: trial `{s.winner_name}` (run `{s.winner_run}`), {s.metric} {s.winner_val:.4f} {_epoch(s)}; "
        + (", ".join(f"`{k}={_short(v)}`" for k, v in s.winner_config.items()) or "no searched key")
        + f". Its whole configuration: params `best.*` of run `{card.lineage.run_id}`.",
    ]
    return lines


def _epoch(s: SearchFacts) -> str:
    """Where the winner's value came from: ``at epoch 3 of the 5 it ran`` (its run's ``best/epoch``)."""
    if s.winner_epoch <= 0:
        return f"(the epoch it came from was not logged; the trial ran {s.winner_epochs} epoch(s))"
    return f"at epoch {s.winner_epoch} of the {s.winner_epochs} it ran"


def pretrained(config: dict[str, object]) -> dict[str, str]:
    """The configuration keys that load pretrained weights, with their values (empty: random initialisation).

    ``model.weights`` (the whole network) and ``model.weights_backbone`` (a segmenter's backbone) load
    weights unless ``none`` (any case), their default in every model factory (``medtune.models``).
    """
    keys = ("model.weights", "model.weights_backbone")
    return {key: str(config[key]) for key in keys if str(config.get(key, "none")).lower() != "none"}


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _nested(card: CardInput) -> list[list[str]]:
    """The refit of a nested launch: which model this is, and the number that describes its procedure."""
    if not card.nested:
        return []
    return [
        [
            "## How well the procedure does (nested cross-validation)",
            "",
            f"Every image predicted once by the winner of a search that never saw it: {card.nested} "
            "(95% bootstrap interval over the images). This estimates the search procedure that produced "
            "this model, on images like these; it is the number to quote for it.",
            "",
            "This model is that procedure's refit: the same search run on the dataset's own train/val/test "
            "splits (the launch's `refit` run). Its test-split numbers below rest on the test split alone, "
            "and its test images were held-out images of the outer folds too.",
        ]
    ]


def _performance(card: CardInput) -> list[str]:
    m, n, k = card.metrics, card.data.images.get("test", 0), card.lineage.fold_models
    model = f"the ensemble of the {k} fold models (mean of their probabilities)" if k else "the winning trial's model"
    lines = [
        "## Performance on the test split",
        "",
        f"{n} test images, never used by the search or to pick a checkpoint; the registered model is {model}.",
        "",
        "| metric | test | 95% interval | rests on |",
        "|---|---|---|---|",
    ]
    lines += [_metric_row(card, name) for name in metric_names(card)]
    if k:
        lines += ["", *_folds(card)]
    else:
        lines += [
            "",
            f"Validation: {card.search.metric} {card.search.winner_val:.4f} on {card.data.images.get('val', 0)} "
            f"val images, the best of {sum(card.search.trials.values())} trial(s) (it picked the winner: "
            "optimistic on average).",
        ]
    if not any(key.startswith("test_seeds/") for key in m):
        lines += ["", "No interval was logged for these test numbers: each rests on one model and these images."]
    return lines


def metric_names(card: CardInput) -> list[str]:
    """The ``test/*`` metric names, the objective's first."""
    names = sorted(key.split("/", 1)[1] for key in card.metrics if key.startswith("test/"))
    head = card.search.metric.split("/", 1)[-1]
    return sorted(names, key=lambda name: name != head)


def _metric_row(card: CardInput, name: str) -> str:
    m, n, seeds = card.metrics, card.data.images.get("test", 0), card.repeats
    value = m[f"test/{name}"]
    images = n - card.data.lesion_free.get("test", 0) if name.startswith("saliency_iou") else n
    what = "test images with a lesion" if name.startswith("saliency_iou") else "test images"
    low, high = m.get(f"test_seeds/{name}_low"), m.get(f"test_seeds/{name}_high")
    if low is None or high is None:
        return f"| {name} | {value:.3f} | none logged | {images} {what}, one model |"
    interval = f"[{low:.3f}, {high:.3f}]"
    if seeds > 1:
        interval += f"; mean over seeds {m[f'test_seeds/{name}_mean']:.3f} (sd {m[f'test_seeds/{name}_sd']:.3f})"
        rests = f"{seeds} seeds x {images} {what} (two-level bootstrap)"
    else:
        rests = f"1 model x {images} {what} (bootstrap over images)"
    return f"| {name} | {value:.3f} | {interval} | {rests} |"


def _folds(card: CardInput) -> list[str]:
    m, k, metric = card.metrics, card.lineage.fold_models, card.search.metric
    each = ", ".join(_value(m.get(f"cv/fold{i}/{metric}")) for i in range(k))
    lines = [
        f"Cross-validation (what selected the model): {metric} {_value(m.get(f'cv/mean/{metric}'))} +/- "
        f"{_value(m.get(f'cv/sd/{metric}'))} (mean +/- sd over {k} folds: {each}).",
    ]
    for name in metric_names(card)[:1]:
        each = ", ".join(f"fold{i} {_value(m.get(f'test_fold{i}/{name}'))}" for i in range(k))
        lines += [
            "",
            f"Each fold model alone on the same test images, {name}: {each} (the ensemble: "
            f"{m[f'test/{name}']:.3f}); their other metrics are on the run (`test_fold<k>/*`).",
        ]
    return lines


def _value(value: float | None) -> str:
    return "not logged" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _lineage(card: CardInput) -> list[str]:
    lin = card.lineage
    lines = [
        "## Lineage",
        "",
        f"- logged as `model` on run `{lin.run_id}` of experiment `{lin.experiment}` (code version "
        f"`{lin.code_version}`); this card is that run's artifact `{CARD_FILE}`",
    ]
    if lin.fold_models:
        lines.append(f"- trained as {lin.fold_models} fold models, one per cross-validation fold, averaged")
    if weights := pretrained(card.config):
        lines.append("- initialised from pretrained weights: " + ", ".join(f"`{k}={v}`" for k, v in weights.items()))
    if lin.segmenter:
        foreign = ", trained on another dataset's split (--allow-foreign-segmenter)" if lin.segmenter_foreign else ""
        lines.append(
            f"- masks from segmenter `{lin.segmenter}` ({lin.segmenter_masks}{foreign}); {lin.segmenter_scores}"
        )
    elif card.search.task == "segmentation":
        lines.append(f"- a segmenter: masked tasks on dataset `{card.data.name}` use its champion's masks")
    return lines


def limitations(card: CardInput) -> list[str]:
    """Honest limits, each from a fact of the card."""
    s, data, lin = card.search, card.data, card.lineage
    n, out = data.images.get("test", 0), []
    if s.smoke:
        out.append(f"Smoke budget: {sum(s.trials.values())} trial(s) of at most {s.budget.get('max_epochs')} epoch(s).")
    if n < SMALL_TEST:
        out.append(f"Small test split: {n} images.")
    widest = _widest(card)
    if widest > CONCLUSIVE_HALF_WIDTH:
        out.append(f"The widest 95% test interval is +/- {widest:.3f}: too wide to conclude.")
    if lin.fold_models:
        out.append(f"Not retrained with more seeds: the spread of the {lin.fold_models} fold models stands for it.")
    elif card.repeats <= 1:
        out.append("One training run: the interval covers which test images were drawn, not training variance.")
    if not pretrained(card.config):
        out.append("Random initialisation: no pretrained weights.")
    stopped = s.trials.get("stopped", 0)
    if stopped:
        out.append(f"{stopped} trial(s) stopped early by ASHA were compared on truncated training.")
    if data.straddling:
        out.append(f"{data.straddling} near-duplicate group(s) straddle splits: the test score may be optimistic.")
    if lin.segmenter and lin.segmenter_masks == "out-of-fold":
        out.append(
            "Train/val masks are out-of-fold predictions of a segmenter cross-validated on this same data; "
            "at prediction time masks come from the registered segmenter, which saw every train/val image."
        )
    elif lin.segmenter:
        out.append(
            "Train/val masks come from a segmenter trained on those same images: cleaner than the masks it will "
            "draw on new images."
        )
    if lin.segmenter_foreign:
        out.append("The segmenter was trained on another dataset's split: its training images may be test images here.")
    out.append(f"Trained and tested on splits of one dataset (`{data.name}`): other sites or devices are untested.")
    return out


def _widest(card: CardInput) -> float:
    """The largest half-width of the logged test intervals (0 when none was logged)."""
    m = card.metrics
    halves = [
        (m[f"test_seeds/{name}_high"] - m[f"test_seeds/{name}_low"]) / 2
        for name in metric_names(card)
        if f"test_seeds/{name}_high" in m and f"test_seeds/{name}_low" in m
    ]
    return max([h for h in halves if math.isfinite(h)], default=0.0)


def description(card: str, run_id: str) -> str:
    """The card as a registry description (at most ``DESCRIPTION_LIMIT`` characters).

    A longer card loses whole sections, search first, then preprocessing and data, each replaced by
    a line naming the artifact that holds it: performance, lineage and limitations stay.
    """
    note = f"(left out to fit the registry: see the artifact `{CARD_FILE}` of run `{run_id}`)"
    parts = re.split(r"(?m)^(?=## )", card)
    for heading in SHORTENED:
        if len("".join(parts)) <= DESCRIPTION_LIMIT:
            break
        parts = [f"{heading}\n\n{note}\n\n" if part.startswith(heading + "\n") else part for part in parts]
    text = "".join(parts)
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - len(note) - 2] + "\n\n" + note


def registered_description(task: str, dataset: str, fingerprint: str) -> str:
    """What a registered model's versions are, for its registry page."""
    what = "Lesion segmenters" if task == "segmentation" else f"`{task}` models"
    return (
        f"{what} trained by medtune on dataset `{dataset}` (fingerprint `{fingerprint}`). Each version is one "
        "launch's winner; its description is its model card (data, search, test performance with intervals, "
        "lineage, limitations). Alias `champion`: the best version by validation score among versions scored "
        "alike (metric, mode, image size, fingerprint, selection)."
    )


def log_card(client: MlflowClient, card: CardInput, registered_tags: dict[str, str]) -> str:
    """Render ``card`` and log it: ``model_card.md`` on its run, its version's description, and for the
    registered model ``registered_tags`` and a description of what its versions are (unless it has one:
    a description written in the UI is kept)."""
    text = render(card)
    run_id = card.lineage.run_id
    retrying(lambda: client.log_text(run_id, text, CARD_FILE))
    retrying(lambda: client.update_model_version(card.name, card.version, description=description(text, run_id)))
    if not retrying(lambda: client.get_registered_model(card.name)).description:
        about = registered_description(card.search.task, card.data.name, card.data.fingerprint)
        retrying(lambda: client.update_registered_model(card.name, description=about))
    for key, value in registered_tags.items():
        retrying(lambda key=key, value=value: client.set_registered_model_tag(card.name, key, value))
    return text
