"""A launch's leaderboard read from MLflow: one row per trial, best first, failures last."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from medtune.tracking.store import trial_runs


@dataclass
class Row:
    """One trial of a launch as the leaderboard shows it."""

    run_id: str
    name: str
    status: str  # completed, stopped (by ASHA), failed, running
    epochs: int
    objective: float  # the best value of the launch's metric over the trial's epochs (NaN if none)
    params: dict[str, str] = field(default_factory=dict)
    error: str = ""


def _status(run) -> str:
    tag = run.data.tags.get("status")
    if tag:
        return tag
    return {"FAILED": "failed", "KILLED": "killed", "RUNNING": "running"}.get(run.info.status, run.info.status.lower())


def _best(client: MlflowClient, run_id: str, metric: str, mode: str) -> float:
    history = [m.value for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)]
    if not history:
        return math.nan
    return max(history) if mode == "max" else min(history)


def leaderboard(client: MlflowClient, exp_id: str, parent_run_id: str, metric: str, mode: str) -> list[Row]:
    """Rows of every trial of the launch, ordered by objective (``mode``), trials without one last."""
    rows = []
    for run in trial_runs(client, exp_id, parent_run_id):
        tags = run.data.tags
        rows.append(
            Row(
                run_id=run.info.run_id,
                name=run.info.run_name or run.info.run_id[:8],
                status=_status(run),
                epochs=int(float(tags.get("epochs_run", run.data.metrics.get("epoch", 0)))),
                objective=_best(client, run.info.run_id, metric, mode),
                params=dict(run.data.params),
                error=tags.get("error", "").splitlines()[0] if tags.get("error") else "",
            )
        )
    sign = -1.0 if mode == "max" else 1.0
    return sorted(
        rows, key=lambda r: (math.isnan(r.objective), sign * (0.0 if math.isnan(r.objective) else r.objective))
    )


def varying_params(rows: list[Row]) -> list[str]:
    """Parameters whose value differs between trials (the ones worth a column)."""
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in rows}) > 1]


def format_table(rows: list[Row], metric: str, *, max_rows: int = 30) -> str:
    """Plain-text leaderboard: rank, trial, status, epochs, objective and the varying parameters."""
    keys = varying_params(rows)
    header = ["rank", "trial", "status", "epochs", metric] + keys
    body = []
    for rank, row in enumerate(rows[:max_rows], start=1):
        value = "-" if math.isnan(row.objective) else f"{row.objective:.4f}"
        body.append(
            [str(rank), row.name[:60], row.status, str(row.epochs), value]
            + [_short(row.params.get(k, "")) for k in keys]
        )
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header] + body]
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more")
    return "\n".join(lines)


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value[:24]
    return value if number.is_integer() and "." not in value else f"{number:.3g}"


def counts(rows: list[Row]) -> dict[str, int]:
    """Trials per status."""
    out: dict[str, int] = {}
    for row in rows:
        out[row.status] = out.get(row.status, 0) + 1
    return out
