"""Write the report of one launch: its PNGs and a self-contained ``report.html`` in one folder.

Every plot that cannot be drawn (too few trials, no logged predictions) is replaced by a note
saying why, in the page and in the returned :class:`Report`; nothing here raises for missing data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from optuna.distributions import FloatDistribution

from medtune.data.cocoio import DataError, load_coco
from medtune.leaderboard import counts, varying_params
from medtune.report import html, plots, predictions
from medtune.report.importance import Importance, distributions, param_importance
from medtune.report.load import PREDICTIONS, Launch

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


def _figure(report: Report, key: str, title: str, caption: str) -> str:
    if key not in report.pngs:
        return ""
    return html.heading(title) + html.image(report.pngs[key], title) + (html.note(caption) if caption else "")


def _page(launch: Launch, report: Report) -> str:
    best = launch.best
    parts = [
        _summary(launch),
        html.heading("Leaderboard"),
        html.leaderboard_table(launch.rows, launch.metric, best.run_id if best else None),
        html.note("stopped (ASHA): ended early by the scheduler; its objective is the best over the epochs it ran."),
        _best(launch),
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
