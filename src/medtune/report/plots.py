"""Plots of a search: optimisation history, learning curves, parameter importance, parallel coordinates.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so reports can
be drawn in any process without a display. One style per trial status everywhere: completed trials
solid and coloured, trials stopped early by ASHA dashed and grey, failed trials red crosses.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; set before anything imports pyplot

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medtune.report.importance import Importance
from medtune.report.load import Launch
from medtune.tracking.leaderboard import Row

STOPPED = {"color": "0.6", "linestyle": "--"}
ABSENT = -0.12  # where a trial without a parameter (its ``when:`` did not hold) crosses that axis
DPI = 110


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _running_best(values: list[float], mode: str) -> list[float]:
    out, best = [], math.nan
    for value in values:
        if not math.isnan(value) and (math.isnan(best) or (value > best if mode == "max" else value < best)):
            best = value
        out.append(best)
    return out


def history(launch: Launch, path: Path) -> Path:
    """Objective of each trial in the order it started, with the running best."""
    rows = launch.in_start_order()
    xs = list(range(1, len(rows) + 1))
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for status, style in (("completed", {"color": "C0"}), ("stopped", {"facecolors": "none", "edgecolors": "0.4"})):
        points = [(x, r.objective) for x, r in zip(xs, rows) if r.status == status]
        if points:
            ax.scatter(
                *zip(*points),
                label=f"{status}" + (" (ASHA, truncated)" if status == "stopped" else ""),
                zorder=3,
                **style,
            )
    failed = [x for x, r in zip(xs, rows) if math.isnan(r.objective)]
    if failed:
        ax.scatter(
            failed,
            [0.02] * len(failed),
            marker="x",
            color="red",
            transform=ax.get_xaxis_transform(),
            label="failed (no objective)",
        )
    ax.step(xs, _running_best([r.objective for r in rows], launch.mode), where="post", color="C1", label="running best")
    ax.set(
        xlabel="trial (start order)",
        ylabel=launch.metric,
        title=f"{launch.experiment}: optimisation history ({launch.mode})",
    )
    ax.set_xticks(xs)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(fig, path)


def curves(launch: Launch, path: Path) -> Path:
    """The objective per epoch of every trial; ASHA-stopped trials dashed grey, the best one bold."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    best = launch.best
    colour = None  # of the first trial drawn in colour, for the legend's "completed" entry
    for i, row in enumerate(launch.rows):
        points = launch.curves.get(row.run_id) or []
        if not points:
            continue
        style = STOPPED if row.status == "stopped" else {"color": f"C{i % 10}", "alpha": 0.8}
        if best is not None and row.run_id == best.run_id:
            style = {"color": "black", "linewidth": 2.5}
        elif row.status != "stopped":
            colour = colour or style["color"]
        ax.plot(*zip(*points), marker="o", markersize=3, **style)
    handles = [Line2D([], [], label="stopped by ASHA", **STOPPED)]
    if colour is not None:
        handles.insert(0, Line2D([], [], color=colour, label="other trials (a colour each)"))
    if best is not None:
        handles.append(Line2D([], [], color="black", linewidth=2.5, label=f"best: {best.name[:30]}"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set(
        xlabel="epoch", ylabel=launch.metric, title=f"{launch.experiment}: learning curves of {len(launch.rows)} trials"
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, path)


def importance(result: Importance, path: Path, *, title: str) -> Path:
    """Horizontal bars of fANOVA importances, with the note under the axes."""
    names = list(result.values)[::-1]  # most important on top
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(names)))
    ax = fig.add_subplot()
    ax.barh(names, [result.values[n] for n in names], color="C2")
    ax.set(xlim=(0, 1), title=title)
    ax.set_xlabel("importance (fANOVA, sums to 1)\n" + textwrap.fill(result.note, 90), fontsize=9)
    return save(fig, path)


def _spots(present: list[str], log: bool) -> tuple[dict[str, float], list[str]]:
    """Position in [0, 1] of each distinct value, and the values worth a label (ends, or all categories)."""
    try:
        numbers = {t: float(t) for t in present}
    except ValueError:  # categorical: evenly spaced in sorted order
        step = 1 / max(1, len(present) - 1)
        return {t: (i * step if len(present) > 1 else 0.5) for i, t in enumerate(present)}, present
    scale = math.log10 if log and min(numbers.values()) > 0 else float
    lo, hi = min(scale(v) for v in numbers.values()), max(scale(v) for v in numbers.values())
    spots = {t: (scale(v) - lo) / (hi - lo) if hi > lo else 0.5 for t, v in numbers.items()}
    ends = [min(numbers, key=numbers.get), max(numbers, key=numbers.get)]
    return spots, list(dict.fromkeys(ends))


def _axis_values(rows: list[Row], name: str, log: bool) -> tuple[list[float], list[tuple[str, float]]]:
    """Each row's position on the axis of ``name`` and the axis labels; absent values sit below 0."""
    texts = [r.params.get(name) for r in rows]
    spots, labelled = _spots(sorted({t for t in texts if t is not None}), log)
    ticks = [(_label(t), spots[t]) for t in labelled]
    if None in texts:
        ticks.append(("absent", ABSENT))
    return [spots[t] if t is not None else ABSENT for t in texts], ticks


def _label(text: str) -> str:
    try:
        return f"{float(text):.3g}"
    except ValueError:
        return text[:14]


def parallel(launch: Launch, names: list[str], log_names: set[str], path: Path) -> Path:
    """Parallel coordinates: one line per finished trial across the parameters, coloured by objective."""
    rows = [r for r in launch.rows if not math.isnan(r.objective)]
    axes = names + [launch.metric]
    fig = Figure(figsize=(max(6, 1.6 * len(axes)), 4.5))
    ax = fig.add_subplot()
    columns = [_axis_values(rows, n, n in log_names) for n in names]
    objective = [r.objective for r in rows]
    lo, hi = (min(objective), max(objective)) if objective else (0.0, 1.0)
    norm, cmap = Normalize(lo, hi if hi > lo else lo + 1e-9), colormaps["viridis"]
    for j, row in enumerate(rows):
        ys = [positions[j] for positions, _ in columns] + [norm(row.objective)]
        style = {"linestyle": "--"} if row.status == "stopped" else {}
        ax.plot(range(len(axes)), ys, color=cmap(norm(row.objective)), alpha=0.85, **style)
    for i, (_, ticks) in enumerate(columns):
        ax.axvline(i, color="0.3", linewidth=0.8)
        for label, y in ticks:
            ax.text(i + 0.03, y, label, fontsize=7, va="center")
    ax.axvline(len(names), color="0.3", linewidth=0.8)
    for y, value in ((0.0, lo), (1.0, hi)):
        ax.text(len(names) + 0.03, y, f"{value:.3g}", fontsize=7, va="center")
    ax.set_xticks(range(len(axes)), axes, rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set(
        ylim=(ABSENT - 0.05, 1.05),
        title=f"{launch.experiment}: parameters vs {launch.metric} (dashed: stopped by ASHA)",
    )
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=launch.metric)
    return save(fig, path)
