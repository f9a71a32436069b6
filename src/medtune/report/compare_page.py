"""How a comparison is shown: the terminal's text, the forest plot and ``compare.html``.

``medtune.report.compare`` computes the comparison (``Comparison``); this module only renders it:
each experiment's values with its differences and their intervals, what the numbers rest on (seeds,
images, fold models), the verdicts (the primary metric's first), and the fold-wise table when the
launches share their folds.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from medtune.report import cv, html, nested
from medtune.report.compare import Comparison, Entry
from medtune.report.load import PREDICTIONS
from medtune.report.plots import save
from medtune.report.verdicts import fold_verdicts, verdicts
from medtune.scoring.bootstrap import METRICS, RESAMPLES, SEED


def _columns(result: Comparison) -> list[str]:
    saliency = "saliency_iou" in result.values or any(math.isfinite(e.saliency_iou) for e in result.entries)
    return list(METRICS) + (["saliency_iou"] if saliency else [])


def table_rows(result: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each experiment's metrics, then its difference vs the first [95% CI]."""
    columns = _columns(result)
    header = ["experiment", "launch", "seeds", "test images"] + columns
    rows = []
    for i, entry in enumerate(result.entries):
        cells = [entry.experiment, entry.run_id[:8], str(len(entry.probs_seeds)), str(len(entry.labels))]
        for name in columns:
            if name == "saliency_iou" and name not in result.values:  # older launches: the logged value only
                cells.append("-" if math.isnan(entry.saliency_iou) else f"{entry.saliency_iou:.3f}")
                continue
            value = f"{result.values[name][i].value:.3f}"
            cells.append(value if i == 0 else f"{value} (diff {result.diffs[name][i]})")
        rows.append(cells)
    return header, rows


def format_text(result: Comparison) -> str:
    """The comparison as an aligned plain-text table, how the intervals were made, and what they say."""
    notes = [e.selection for e in result.entries if e.selection]
    lines = [*notes, _aligned_text(*table_rows(result)), _method(result), *verdicts(result)]
    if isinstance(result.folds, str):
        return "\n".join(lines + ([result.folds] if result.folds else []))
    table = _aligned_text(*fold_table(result.folds))
    return "\n\n".join(["\n".join(lines), table, "\n".join([cv.method(result.folds), *fold_verdicts(result.folds)])])


def _aligned_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [header] + rows)


def _rests_on(entry: Entry) -> str:
    """What an experiment's numbers rest on, e.g. ``over 3 seeds and 60 test images``."""
    seeds = len(entry.probs_seeds)
    if entry.nested:
        return (
            f"over {seeds} seed{'s' if seeds > 1 else ''} and all {len(entry.labels)} images, each predicted by the "
            "winner of an outer fold's search that never saw it"
        )
    ensemble = f" (the ensemble of {entry.fold_models} fold models)" if entry.fold_models else ""
    return f"over {seeds} seed{'s' if seeds > 1 else ''}{ensemble} and {len(entry.labels)} test images"


def _method(result: Comparison) -> str:
    first = result.entries[0]
    each = "; ".join(f"{e.experiment} {_rests_on(e)}" for e in result.entries)
    return (
        f"values: mean over each experiment's seeds ({each}). diff: against {first.experiment}, 95% two-level "
        f"bootstrap interval (test images paired, seeds drawn per experiment; {RESAMPLES} resamples, seed {SEED}); "
        f"metrics re-computed from {nested.PREDICTIONS if first.nested else PREDICTIONS}"
        + (
            "; saliency_iou: the search winner's (one seed), over the test images with a lesion"
            if "saliency_iou" in result.values
            else ""
        )
    )


def forest_plot(result: Comparison, path: Path) -> Path:
    """The paired differences against the first experiment: one row per metric and experiment, the
    difference with its 95% interval, and the zero line (what a reader needs first: which side of 0)."""
    first, rows = result.entries[0], []
    for name in reversed(list(result.diffs)):
        for i, entry in enumerate(result.entries[1:], start=1):
            rows.append((f"{name}: {entry.experiment}", result.diffs[name][i]))
    fig = Figure(figsize=(7.5, 1.2 + 0.38 * len(rows)))
    ax = fig.add_subplot()
    for y, (_, diff) in enumerate(rows):
        low, high = diff.low, diff.high
        if math.isfinite(low) and math.isfinite(high):
            ax.plot([low, high], [y, y], color="tab:blue", linewidth=2)
        ax.plot([diff.value], [y], "o", color="tab:blue")
    ax.axvline(0.0, color="0.3", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    rests = _rests_on(first)
    ax.set(
        xlabel=f"difference vs {first.experiment} (95% paired bootstrap interval)", title=f"paired differences {rests}"
    )
    ax.title.set_fontsize(8)
    fig.tight_layout()
    return save(fig, path)


def fold_table(folds: cv.FoldComparison) -> tuple[list[str], list[list[str]]]:
    """Every fold metric's rows (``cv.fold_rows``) in one table, the metric in the first column."""
    header, rows = [], []
    for name in folds.tests:
        head, part = cv.fold_rows(folds, name)
        header = ["metric", *[h.replace(f"{name} ", "") for h in head]]
        rows += [[name, *row] for row in part]
    return header, rows


def write_page(result: Comparison, out: Path) -> Path:
    """``out/compare.html`` with the table and the embedded bar chart (``out/compare.png``)."""
    out.mkdir(parents=True, exist_ok=True)
    chart = forest_plot(result, out / "compare.png")
    header, rows = table_rows(result)
    entry = result.entries[0]
    said, lead = verdicts(result), len(result.entries)  # the primary metric's line, then one verdict per experiment
    parts = [
        *[html.note(line) for line in said[:lead]],  # first: the primary metric's verdicts
        html.image(chart, "paired differences"),
        html.note(f"dataset {entry.dataset} (fingerprint {entry.fingerprint})"),
        html.table(header, rows),
        html.note(_method(result)),
        *[html.note(line) for line in said[lead:]],
        *_fold_parts(result.folds),
    ]
    page = out / "compare.html"
    page.write_text(html.page("medtune comparison: " + " vs ".join(e.experiment for e in result.entries), parts))
    return page


def _fold_parts(folds: cv.FoldComparison | str) -> list[str]:
    """The page's fold-wise section: a table per fold metric, the method and verdicts (or why it is absent)."""
    if isinstance(folds, str):
        return [html.note(folds)] if folds else []
    notes = [html.note(line) for line in [cv.method(folds), *fold_verdicts(folds)]]
    title = (
        "Fold-wise: the same outer folds" if folds.entries[0].nested else "Fold-wise: the same cross-validation folds"
    )
    return [html.heading(title), html.table(*fold_table(folds)), *notes]
