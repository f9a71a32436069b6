"""Self-contained HTML pages: inline CSS, images embedded as base64 data URIs, no external resource.

A report must open from an e-mail attachment or an MLflow artifact view, offline: nothing here
links to a stylesheet, script, font or image by URL.
"""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path

from medtune.tracking.leaderboard import Row, varying_params

CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #eee; }
tr.stopped td { color: #777; font-style: italic; }
tr.failed td { color: #b00; }
tr.best td { font-weight: bold; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def image(path: Path, alt: str) -> str:
    """An ``<img>`` holding the PNG at ``path`` as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: list[str] | None, rows: list[list[str]], classes: list[str] | None = None) -> str:
    """A plain HTML table (no header row when ``header`` is None); ``classes``: a CSS class per body row."""
    head = f"<tr>{''.join(f'<th>{escape(h)}</th>' for h in header)}</tr>" if header else ""
    body = []
    for i, row in enumerate(rows):
        css = f' class="{escape(classes[i])}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def page(title: str, parts: list[str]) -> str:
    """A complete HTML document with the inline stylesheet."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{heading(title, 1)}{''.join(parts)}</body></html>\n"
    )


def leaderboard_table(rows: list[Row], metric: str, best_run_id: str | None) -> str:
    """The leaderboard: rank, trial, status, epochs, objective, varying parameters, error of failed trials."""
    keys, errors = varying_params(rows), any(row.error for row in rows)
    header = ["rank", "trial", "status", "epochs", metric] + keys + (["error"] if errors else [])
    body, classes = [], []
    for rank, row in enumerate(rows, start=1):
        value = "-" if math.isnan(row.objective) else f"{row.objective:.4f}"
        status = row.status + (" (ASHA)" if row.status == "stopped" else "")
        params = [_number(row.params.get(k, "")) for k in keys]
        body.append([str(rank), row.name, status, str(row.epochs), value] + params + ([row.error] if errors else []))
        classes.append("best" if row.run_id == best_run_id else row.status)
    return table(header, body, classes)


def _number(text: str) -> str:
    """Logged floats at 4 significant digits (``0.3875364678399937`` -> ``0.3875``); other values as they are."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if text.lstrip("-").isdigit() else f"{value:.4g}"


def metrics_table(metrics: dict[str, float]) -> str:
    return table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in metrics.items()])
