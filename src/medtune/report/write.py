"""Write the report of one launch: its PNGs and a self-contained ``report.html`` in one folder.

A cross-validated launch also gets its fold scores (mean +- sd over the K folds) and its K fold
models on the test split, alone and as an ensemble with a bootstrap interval (:func:`cv_lines`).

Every plot that cannot be drawn (too few trials, no logged predictions) is replaced by a note
saying why, in the page and in the returned :class:`Report`; nothing here raises for missing data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from optuna.distributions import FloatDistribution

from medtune.data.cocoio import DataError, load_coco
from medtune.report import html, plots, predictions
from medtune.report.cv import FoldScores
from medtune.report.importance import Importance, distributions, param_importance
from medtune.report.load import PREDICTIONS, Launch
from medtune.scoring.bootstrap import CONCLUSIVE_HALF_WIDTH, METRICS, RESAMPLES, SEED, Interval, seed_bootstrap
from medtune.tracking.leaderboard import counts, varying_params

FILES = {  # plot key -> file name in the report folder
    "history": "optimisation_history.png",
    "curves": "learning_curves.png",
    "importance": "param_importance.png",
    "parallel": "parallel_coordinates.png",
    "test": "test_predictions.png",
    "saliency": "saliency_overlays.png",
}


@dataclass
class Report:
    """What was written: the page, the PNGs (plot key -> path) and notes on what was skipped."""

    html: Path
    pngs: dict[str, Path]
    importance: Importance
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [self.html, *self.pngs.values()]


def write_report(launch: Launch, out: Path) -> Report:
    """Draw every plot of ``launch`` into ``out`` and write ``out/report.html``."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = {
        "history": plots.history(launch, out / FILES["history"]),
        "curves": plots.curves(launch, out / FILES["curves"]),
    }
    notes: list[str] = []
    result = param_importance(launch)
    if result.values:
        title = f"{launch.experiment}: parameter importance for {launch.metric}"
        pngs["importance"] = plots.importance(result, out / FILES["importance"], title=title)
    finished = [r for r in launch.rows if not math.isnan(r.objective)]
    names = varying_params(finished)
    if names and finished:
        log_names = {n for n, d in distributions(launch.space).items() if isinstance(d, FloatDistribution) and d.log}
        pngs["parallel"] = plots.parallel(launch, names, log_names, out / FILES["parallel"])
    else:
        notes.append("parallel coordinates skipped: no parameter varies between finished trials")
    test_pngs, test_notes = _prediction_plots(launch, out)
    pngs.update(test_pngs)
    notes += test_notes
    report = Report(out / "report.html", pngs, result, notes)
    report.html.write_text(_page(launch, report))
    return report


def dataset_categories(root: str | None) -> list[str] | None:
    """Class names from the dataset's ``test.json`` when that folder still exists, else None."""
    path = Path(root or "") / "test.json"
    if not root or not path.is_file():
        return None
    try:
        return [c.get("name", "?") for c in sorted(load_coco(path)["categories"], key=lambda c: c.get("id", 0))]
    except DataError:
        return None


def _prediction_plots(launch: Launch, out: Path) -> tuple[dict[str, Path], list[str]]:
    """The test-split figures, chosen by the ``report_kind`` the task saved with its predictions."""
    preds = launch.predictions
    if preds is None:
        return {}, [f"test-split plots skipped: the launch's parent run has no {PREDICTIONS} artifact"]
    kind, title = str(preds.get("report_kind", "")), f"{launch.experiment}: best trial on the test split"
    if kind == "segmentation":
        pngs = {"test": predictions.segmentation_overlays(preds, out / FILES["test"], title=title)}
    elif kind == "classification":
        names = predictions.class_names(preds, dataset_categories(launch.tags.get("dataset")))
        pngs = {"test": predictions.confusion_and_roc(preds, names, out / FILES["test"], title=title)}
    elif kind == "multilabel":
        return {}, [
            "test-split plots skipped: multi-label predictions have no confusion matrix (see the per-label AUROC metrics)"
        ]
    else:
        return {}, [
            f"test-split plots skipped: {PREDICTIONS} has report_kind '{kind}', expected segmentation, "
            "classification or multilabel (a file from an older medtune has none)"
        ]
    if "cams" in preds:
        pngs["saliency"] = predictions.saliency_overlays(preds, out / FILES["saliency"], title=title)
    return pngs, []


def saliency_caption(launch: Launch) -> str:
    """The CAM's resolution, the IoU a map of that resolution can reach on these lesions, and the model's.

    Without the ceiling a saliency IoU of 0.2 reads as "looks elsewhere" when a 2x2 map could do no
    better than 0.25 (``medtune.saliency.cam_ceiling``).
    """
    test, grid = launch.test or {}, launch.tags.get("cam_grid")
    ceiling, reached = test.get("test/saliency_iou_ceiling"), test.get("test/saliency_iou")
    if grid is None or ceiling is None:
        return ""
    model = f"; this model's test saliency IoU: {reached:.3f}" if reached is not None else ""
    return (
        f"CAM resolution {grid}: a map that coarse reaches at most {ceiling:.3f} IoU with the test lesions "
        f"(the lesion's own {grid} average, drawn like a CAM){model}."
    )


def _summary(launch: Launch) -> str:
    tags, status = launch.tags, counts(launch.rows)
    facts = [
        ["experiment", launch.experiment],
        ["launch (parent run)", launch.run_id],
        ["task", launch.task],
        ["objective", f"{launch.metric} ({launch.mode})"],
        ["dataset", tags.get("dataset", "?")],
        ["dataset fingerprint", tags.get("dataset_fingerprint", "?")],
        ["code version", tags.get("code_version", "?")],
        ["smoke", tags.get("smoke", "?")],
        ["budget", ", ".join(f"{k[7:]}={v}" for k, v in sorted(launch.params.items()) if k.startswith("budget."))],
        ["trials", ", ".join(f"{n} {s}" for s, n in sorted(status.items())) or "none"],
    ]
    extra = {
        "segmenter_version": "segmenter",
        "registered_model": "registered model",
        "promoted_to_champion": "promoted to champion",
    }
    facts += [[label, tags[key]] for key, label in extra.items() if key in tags]
    return html.heading("Launch") + html.table(None, facts)


def _best(launch: Launch) -> str:
    best = launch.best
    if best is None:
        return html.heading("Best trial") + html.note("no trial finished with an objective value")
    line = f"{best.name} (run {best.run_id}): {launch.metric} = {best.objective:.4f} after {best.epochs} epoch(s)"
    test = html.metrics_table(launch.test) if launch.test else html.note("no test metrics on the parent run")
    return (
        html.heading("Best trial") + html.note(line) + html.heading("Test split (never seen by the search)", 3) + test
    )


@dataclass
class EnsembleTest:
    """A cross-validated launch on the test split: the K fold models' ensemble with its interval, and each model."""

    name: str  # the test metric, e.g. ``balanced_acc`` or ``image_iou``
    ensemble: Interval
    images: int
    folds: list[float]  # ``test_fold{k}/<name>`` per fold model; NaN where not logged


def _mean_over_images(_: np.ndarray, values: np.ndarray) -> float:
    return float(np.nanmean(values[:, 0]))


def ensemble_test(launch: Launch, folds: FoldScores) -> EnsembleTest | None:
    """The ensemble's test score with a 95% bootstrap interval over the test images (None: no usable predictions).

    Single-label classifiers: the objective's metric (balanced accuracy when it has no bootstrap
    form) re-computed from the ensemble's probabilities; segmenters: the mean per-image IoU.
    """
    preds = launch.predictions or {}
    kind = str(preds.get("report_kind", ""))
    if kind == "classification":
        name = launch.metric.split("/")[-1] if launch.metric.split("/")[-1] in METRICS else "balanced_acc"
        labels, probs, metric = preds["labels"].astype(int), preds["probs"].astype(float)[None], METRICS[name]
    elif kind == "segmentation" and "iou" in preds:
        name, metric = "image_iou", _mean_over_images
        labels, probs = np.zeros(len(preds["iou"])), preds["iou"].astype(float)[None, :, None]
    else:
        return None
    (interval,), _ = seed_bootstrap(labels, [probs], metric)
    scores = [launch.metrics.get(f"test_fold{k}/{name}", math.nan) for k in range(folds.folds)]
    return EnsembleTest(name, interval, len(labels), scores)


def cv_lines(launch: Launch) -> list[str]:
    """What a cross-validated launch's folds and test ensemble say, in words ([] without cross-validation)."""
    folds = launch.folds
    if not isinstance(folds, FoldScores):
        return [f"cross-validation: {folds}"] if folds else []
    objective, lines = launch.metric, []
    if objective in folds.scores:
        each = ", ".join(f"{v:.3f}" for v in folds.scores[objective])
        lines.append(f"cross-validation: {objective} = {folds.describe(objective)}, mean +- sd over folds ({each})")
    else:
        lines.append(f"cross-validation: {folds.folds} folds, but no cv/fold<k>/{objective} on the parent run")
    test = ensemble_test(launch, folds)
    if test is None:
        return lines + ["test split: no interval (the ensemble's predictions are not single-label or segmentation)"]
    iv = test.ensemble
    lines.append(
        f"test split, ensemble of the {folds.folds} fold models: {test.name} {iv.value:.3f}, 95% interval "
        f"[{iv.low:.3f}, {iv.high:.3f}] over {test.images} test images (bootstrap over images, {RESAMPLES} "
        f"resamples, seed {SEED})"
    )
    each = ", ".join(
        f"fold{k} {v:.3f}" if math.isfinite(v) else f"fold{k} not logged" for k, v in enumerate(test.folds)
    )
    lines.append(f"each fold model on the test split, {test.name}: {each} (ensemble {iv.value:.3f})")
    half = (iv.high - iv.low) / 2
    if half > CONCLUSIVE_HALF_WIDTH:
        lines.append(
            f"too wide to conclude: the ensemble's interval has half-width {half:.3f} > {CONCLUSIVE_HALF_WIDTH} "
            "(more test images would narrow it)"
        )
    return lines


def _cv_section(launch: Launch) -> str:
    folds = launch.folds
    if folds is None:
        return ""
    notes = "".join(html.note(line) for line in cv_lines(launch))
    if not isinstance(folds, FoldScores):
        return html.heading("Cross-validation") + notes
    test = ensemble_test(launch, folds)
    header = ["fold", "held-out images", f"{launch.metric} (held-out)"] + ([f"test {test.name}"] if test else [])
    val = folds.scores.get(launch.metric, np.full(folds.folds, math.nan))
    rows = [
        [f"fold{k}", str(n), f"{val[k]:.4f}"] + ([f"{test.folds[k]:.4f}"] if test else [])
        for k, n in enumerate(folds.sizes.held_out)
    ]
    if test:
        rows.append(
            ["ensemble", "-", "-", f"{test.ensemble.value:.4f} [{test.ensemble.low:.4f}, {test.ensemble.high:.4f}]"]
        )
    return html.heading("Cross-validation") + html.table(header, rows) + notes


def _figure(report: Report, key: str, title: str, caption: str) -> str:
    if key not in report.pngs:
        return ""
    return html.heading(title) + html.image(report.pngs[key], title) + (html.note(caption) if caption else "")


def _page(launch: Launch, report: Report) -> str:
    best = launch.best
    nested = [html.heading("Nested cross-validation"), *[html.note(line) for line in launch.nested]]
    parts = [
        _summary(launch),
        *(nested if launch.nested else []),
        html.heading("Leaderboard" + (" of the refit's search" if launch.nested else "")),
        html.leaderboard_table(launch.rows, launch.metric, best.run_id if best else None),
        html.note("stopped (ASHA): ended early by the scheduler; its objective is the best over the epochs it ran."),
        _best(launch),
        _cv_section(launch),
        _figure(
            report,
            "history",
            "Optimisation history",
            "Objective of each trial in start order; the line is the best so far.",
        ),
        _figure(report, "curves", "Learning curves", "Dashed grey: stopped by ASHA; bold black: the best trial."),
        _figure(report, "importance", "Parameter importance", report.importance.note)
        or html.heading("Parameter importance") + html.note(report.importance.note),
        _figure(
            report,
            "parallel",
            "Parallel coordinates",
            "Finished trials; colour is the objective; dashed: stopped by ASHA.",
        ),
        _figure(report, "test", "Best trial on the test split", ""),
        _figure(report, "saliency", "Saliency", saliency_caption(launch)),
    ]
    if report.notes:
        parts.append(html.heading("Notes") + "".join(html.note(n) for n in report.notes))
    return html.page(f"medtune report: {launch.experiment}", parts)
