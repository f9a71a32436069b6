"""Search a space from ``search_spaces/`` with Optuna (TPE) + ASHA on Ray Tune, logging to MLflow.

    python launch.py --space segmentation      # search segmenters, promote the champion
    python launch.py --space masked_cls        # classify lesions masked by the champion
    python launch.py --space whole_cls --smoke # a tiny run of any space

Everything the trials need (dataset checks, decoded image caches, the champion's masks, the MLflow
experiment and parent run) is prepared here once, before Ray starts; trials receive constants.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from medtune.config import project
from medtune.config.options import LaunchOptions
from medtune.tracking.redact import redact_output, redact_text

os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Ray warns when experiment snapshots come often (TUNE_GLOBAL_CHECKPOINT_S=0, as tests set it).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

# Defaults inside the project folder (the working directory or --project-dir; medtune.config.project).
DEFAULT_DATA = Path("data") / "synthetic"
DEFAULT_CACHE = Path(".cache")
DEFAULT_STORAGE = "runs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--space", help="search space name in search_spaces/ or a YAML path")
    what.add_argument("--config", type=Path, help="train one configuration (analyze.py --export-best) and test it")
    p.add_argument("--data", type=Path, help=f"dataset folder (train/val/test.json) or one COCO file [{DEFAULT_DATA}]")
    p.add_argument(
        "--project-dir",
        type=Path,
        help=f"folder of the store, study, caches, runs and search_spaces/ [${project.ENV} or the working directory]",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        help="trials to sample (overrides the space's budget); a grid space runs each combination once and "
        "refuses any other count",
    )
    p.add_argument("--max-epochs", type=int, help="epoch budget per trial (overrides the space's budget)")
    p.add_argument(
        "--repeats",
        type=int,
        help="train the winning configuration with this many seeds (--seed, --seed+1, ...) and report its test "
        "score over seeds and images (overrides the space's budget; single-label classification)",
    )
    p.add_argument(
        "--folds",
        type=int,
        help="cross-validate every trial on K folds of train+val (K >= 2; 0 turns a space's cv block off); "
        "costs K times the compute per trial; overrides the space's cv.folds",
    )
    p.add_argument(
        "--outer-folds",
        type=int,
        help="nested cross-validation: cut all images into K outer folds (K >= 2; 0 turns a space's off) and run "
        "the whole search once per fold on the others; every image is predicted by a model chosen without it "
        "(costs K searches, plus the refit); overrides the space's cv.outer_folds",
    )
    p.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="with --outer-folds: estimate only; skip the final search on the dataset's own splits (nothing registered)",
    )
    p.add_argument(
        "--accept-unbalanced-folds",
        action="store_true",
        help="run a cross-validation whose folds groups keep unbalanced (a fold over 1.5x its share of images, "
        "or a class below 2/3 of its share in a fold); refused by default; recorded as cv_folds_unbalanced=true",
    )
    p.add_argument(
        "--accept-groups",
        action="store_true",
        help="with --folds: keep near-duplicate groups larger than the trusted bound (10 images or 2%% of the pool) "
        "inside one fold too; by default they are reported as suspicious and not used",
    )
    p.add_argument("--smoke", action="store_true", help="apply the space's smoke block: a tiny, fast search")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a fixed value, a searched key (it becomes fixed) or budget.<key>, after --smoke; "
        "repeatable; the value is a YAML scalar (e.g. --set data.image_size=48 --set budget.max_epochs=1); "
        "--num-samples / --max-epochs / --repeats win over budget.*",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler, the splits and every trial")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument(
        "--gpus-per-trial", type=float, default=None, help="fractions allowed [1 if a GPU is visible, else 0]"
    )
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once [as many as resources allow]")
    p.add_argument("--max-failures", type=int, default=0, help="retries per failing trial")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001)")
    p.add_argument(
        "--storage-path",
        help="Ray results: a folder, file:///folder, or a bucket every node reaches (s3://bucket/prefix, gs://...) "
        f"[{DEFAULT_STORAGE} in the project folder]",
    )
    p.add_argument("--experiment", help="MLflow experiment [the space name]")
    p.add_argument("--tracking-uri", help="MLflow tracking URI [sqlite mlflow.db in the project folder]")
    p.add_argument("--segmenter", help="segmenter for masked tasks: models:/<name>/<version> [the dataset's champion]")
    p.add_argument(
        "--allow-foreign-segmenter",
        action="store_true",
        help="accept a --segmenter trained on another dataset's split (its training images may be your test "
        "images); recorded on the runs as segmenter_foreign=true",
    )
    p.add_argument(
        "--trust-model-code",
        action="store_true",
        help="load a segmenter whose stored code is not this medtune's (read its source first: loading runs it)",
    )
    p.add_argument(
        "--cache-dir", type=Path, help=f"decoded images and segmenter masks [{DEFAULT_CACHE} in the project folder]"
    )
    p.add_argument("--precision", default="16-mixed", help="Lightning precision on GPU (CPU always uses 32-true)")
    p.add_argument("--resume", action="store_true", help="continue the experiment's interrupted latest launch")
    p.add_argument("--verbose", action="store_true", help="Ray's own progress tables and every library's log lines")
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the trials' Ray checkpoints after a finished launch (deleted by default: the winner is in MLflow)",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=minutes,
        default=5.0,
        help="a running trial writes a checkpoint on each new best, on its last epoch and at least this often: "
        "the most a kill makes --resume re-train per trial (0: every epoch)",
    )
    return p.parse_args(argv)


def minutes(text: str) -> float:
    """``--checkpoint-minutes``: a finite number >= 0 (argparse turns the error into one line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of minutes >= 0, got '{text}'")
    return value


def options_from(args: argparse.Namespace) -> LaunchOptions:
    """The typed options the library reads, from this command line's flags (one field per flag).

    Folders left out default to the project folder's (``--project-dir``, made this process's).
    """
    root = project.use(args.project_dir)
    flags = {key: value for key, value in vars(args).items() if key != "project_dir"}
    flags["cache_dir"] = args.cache_dir or root / DEFAULT_CACHE
    flags["storage_path"] = args.storage_path or str(root / DEFAULT_STORAGE)
    return LaunchOptions(**{**flags, "overrides": tuple(args.overrides)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:  # this process is the launch: its local Ray cluster on loopback, with a token (before Ray loads)
        from trainables.ray_env import local_cluster_env

        local_cluster_env(args.address)
    from medtune.prepare.inputs import USER_ERRORS
    from trainables import nested
    from trainables.driver import INTERRUPTED, run
    from trainables.ray_session import RayStartError

    command = redact_text(shlex.join(sys.argv[1:] if argv is None else argv))  # no URI's password on the terminal
    resume = f"continue with: python launch.py {command} --resume"
    try:
        options = options_from(args)
        launch = nested.run_nested if nested.wanted(options) else run
        code = launch(options, default_data=project.project_dir() / DEFAULT_DATA)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RayStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside the search (which Ray turns into an early end)
        print(f"interrupted; {resume}", file=sys.stderr)
        return INTERRUPTED
    if code == INTERRUPTED:
        print(f"the search ended before its trials did; {resume}", file=sys.stderr)
    return code


def cli() -> None:
    """``python launch.py`` / ``medtune launch``: the launch, its timing line and its exit code."""
    redact_output()  # no URI's password on this terminal, whoever prints it
    started = time.time()
    code = main()
    print(f"[launch] finished in {time.time() - started:.0f} s (exit {code})", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    cli()
