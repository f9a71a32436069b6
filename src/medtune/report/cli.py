"""Report on a search from MLflow alone: leaderboard, plots, a self-contained HTML page, comparisons.

    python analyze.py --experiment whole_cls                    # the latest launch of an experiment
    python analyze.py --experiment segmentation --launch RUN_ID # a given launch (its parent run id)
    python analyze.py --experiment masked_cls --export-best best.yaml   # for launch.py --config
    python analyze.py --compare whole_cls masked_cls            # best trials on the same test split

A cross-validated launch (``cv: {folds: K}``) is reported as its fold mean +- sd and its fold models'
ensemble on the test split; ``--compare`` of launches cross-validated on the same folds adds, per
fold metric, the corrected resampled t-test next to the bootstrap on the test split.

The report goes to ``--out`` (default ``reports/<experiment>/<launch id[:8]>/``) and, as artifacts
under ``report/``, to the launch's parent run. Only the tracking store is read: no Ray results, no
checkpoints, so it works against a remote tracking server too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from medtune.report.load import Launch
    from medtune.tracking.leaderboard import Row

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars between our lines

DEFAULT_REPORTS = Path("reports")  # in the project folder (the working directory or --project-dir)


def _reports() -> Path:
    from medtune.config import project

    return project.project_dir() / DEFAULT_REPORTS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--experiment", help="experiment to report on (a search space name, or launch.py --experiment)")
    what.add_argument(
        "--compare",
        nargs="+",
        metavar="EXPERIMENT",
        help="compare the best trials of these experiments' latest launches",
    )
    p.add_argument(
        "--launch", help="parent run id of the launch to report on [the latest full search: not --smoke, not --config]"
    )
    p.add_argument("--out", type=Path, help=f"report folder [{DEFAULT_REPORTS}/<experiment>/<launch id[:8]>]")
    p.add_argument("--tracking-uri", help="MLflow tracking URI [sqlite mlflow.db in the project folder]")
    p.add_argument(
        "--project-dir",
        type=Path,
        help="folder of the store and reports/ [$MEDTUNE_PROJECT_DIR or the working directory]",
    )
    p.add_argument(
        "--export-best", type=Path, metavar="FILE", help="write the best configuration as YAML for launch.py --config"
    )
    args = p.parse_args(argv)
    if args.compare is not None and len(args.compare) < 2:
        p.error("--compare needs at least two experiments")
    if args.compare is not None and (args.launch or args.export_best):
        p.error("--launch and --export-best go with --experiment, not --compare")
    return args


def _client(uri: str | None) -> MlflowClient:
    """A client of the tracking store; a missing sqlite file is an error, not a new empty store."""
    from medtune.tracking.store import TrackingError, default_tracking_uri, open_client

    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise TrackingError(
            f"no tracking store at {uri[len('sqlite:///') :]} (run launch.py first, or pass --tracking-uri)"
        )
    return open_client(uri)  # an older store is migrated once, under the store's lock


def _counts_line(rows: list[Row]) -> str:
    from medtune.tracking.leaderboard import counts

    found = counts(rows)
    parts = [
        f"{found.pop('completed', 0)} completed",
        f"{found.pop('stopped', 0)} stopped by ASHA",
        f"{found.pop('failed', 0)} failed",
    ]
    return ", ".join(parts + [f"{n} {status}" for status, n in sorted(found.items())])


def print_summary(launch: Launch) -> None:
    """The terminal view: leaderboard, failed trials' errors, best trial and its test metrics."""
    from medtune.report.write import cv_lines
    from medtune.tracking.leaderboard import format_table

    tags = launch.tags
    print(
        f"== {launch.experiment}: launch {launch.run_id} (dataset {tags.get('dataset', '?')}, smoke {tags.get('smoke', '?')}) =="
    )
    if launch.selection:  # newer --smoke or --config launches were skipped, or there was nothing else
        print(f"note: {launch.selection}")
    if launch.nested:  # a nested launch: its result first; what follows is its refit's search
        print("\n".join(launch.nested))
        print(
            f"-- the refit: the same search on the dataset's own splits (run {launch.run_id}) --"
            if launch.rows
            else "-- no refit (--no-refit): nothing registered --"
        )
    print(f"objective {launch.metric} ({launch.mode}); {len(launch.rows)} trials: {_counts_line(launch.rows)}")
    print(format_table(launch.rows, launch.metric))
    failed = [r for r in launch.rows if r.status == "failed"]
    for row in failed:
        print(f"failed: {row.name}: {row.error or 'no error recorded'}")
    best = launch.best
    if best is None:
        print("best trial: none (no trial finished with an objective)")
    else:
        print(
            f"best trial: {best.name} (run {best.run_id}): {launch.metric} = {best.objective:.4f} after {best.epochs} epoch(s)"
        )
        test = ", ".join(f"{k}={v:.4f}" for k, v in launch.test.items())
        print(f"test split: {test or 'no test metrics on the parent run'}")
    for line in cv_lines(launch):  # a cross-validated launch: its folds and its fold models' ensemble
        print(line)


def report_launch(client: MlflowClient, args: argparse.Namespace) -> int:
    """Print, draw and write the report of one launch; log it to the parent run."""
    from mlflow.exceptions import MlflowException

    from medtune.report.export import export_best
    from medtune.report.load import open_launch
    from medtune.report.write import write_report

    launch = open_launch(client, args.experiment, args.launch)
    print_summary(launch)
    report = write_report(launch, args.out or _reports() / args.experiment / launch.run_id[:8])
    imp = report.importance
    ranked = ", ".join(f"{k} {v:.2f}" for k, v in imp.values.items())
    print(f"parameter importance: {ranked} ({imp.note})" if ranked else f"parameter importance {imp.note}")
    for line in report.notes:
        print(f"note: {line}")
    try:
        for path in report.files:
            client.log_artifact(launch.run_id, str(path), artifact_path="report")
        where = f"logged to run {launch.run_id} under report/"
    except (MlflowException, OSError) as err:
        where = f"not logged to MLflow ({str(err).splitlines()[0]})"
    print(f"report: {report.html} with {len(report.pngs)} PNG(s); {where}")
    if args.export_best:
        print(
            f"best configuration: {export_best(launch, args.export_best)} (train it: python launch.py --config {args.export_best})"
        )
    return 0


def compare_experiments(client: MlflowClient, args: argparse.Namespace) -> int:
    """Print and write the comparison of the experiments' best trials on their common test split."""
    from medtune.report.compare import compare, open_entries
    from medtune.report.compare_page import format_text, write_page
    from medtune.report.shortcut import shortcut_lines

    result = compare(open_entries(client, args.compare))
    print(format_text(result))
    for line in shortcut_lines(result.entries):  # only when the dataset records a spurious cue per image
        print(line)
    page = write_page(result, args.out or _reports() / "compare" / "_vs_".join(args.compare))
    print(f"report: {page}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from medtune.config import project

    project.use(args.project_dir)
    from mlflow.exceptions import MlflowException

    from medtune.tracking.store import TrackingError

    try:
        client = _client(args.tracking_uri)
        return compare_experiments(client, args) if args.compare else report_launch(client, args)
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        print(f"error: tracking store: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
