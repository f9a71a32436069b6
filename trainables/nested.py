"""A nested launch (``launch.py --outer-folds K``): the whole search once per outer fold, then a refit.

The launch's run (``launch-<name>``, tagged ``nested_outer_folds``) has one child run per outer fold
(``outer-<k>``), whose trials are its children: ``mlflow ui`` shows launch -> outer fold -> trial. Outer
fold ``k``'s search is an ordinary search (``trainables.driver.run``, the same ASHA + TPE, inner
``--folds`` or an inner val split) on the dataset ``medtune.data.outer`` makes of the other folds, its
winner tested on fold ``k``. The pooled predictions and their metrics go on the launch's run
(``medtune.publish.nested``). Then the refit (``refit``, unless ``--no-refit``): the same search on the
dataset's own train/val/test splits, registered and promoted as an ordinary launch's winner; that is
the model to use, and its card quotes the nested estimate as the number describing the procedure.

``--resume`` goes on at the first outer fold (or the refit) that did not finish, restoring its search
where it stopped. All stages share one Ray session.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtune.config.options import LaunchOptions
from medtune.config.spaces import SearchSpace
from medtune.config.validate import SpaceError
from medtune.data import duplicates
from medtune.data.coco import resolve_dataset
from medtune.data.folds import FoldPlan
from medtune.data.outer import describe, outer_dataset, plan_outer
from medtune.engine import build
from medtune.prepare.inputs import check_balance, checked_dataset, load_and_override
from medtune.publish import nested
from medtune.tracking.provenance import code_version, standard_tags
from medtune.tracking.redact import redact_uri
from medtune.tracking.registry import segmenter_name
from medtune.tracking.store import (
    LAUNCH_TAG,
    TrackingError,
    default_tracking_uri,
    experiment_id,
    latest_launch,
    open_client,
    retrying,
)
from trainables.driver import INTERRUPTED
from trainables.driver import run as run_search
from trainables.parent import Stage
from trainables.phases import Phases
from trainables.ray_session import ray_session
from trainables.search import SearchPolicy, can_restore


def wanted(options: LaunchOptions) -> bool:
    """Whether the launch is nested: ``--outer-folds`` or the space's ``cv.outer_folds`` (a ``SpaceError`` on
    a bad space is raised here, as the ordinary launch would)."""
    return options.config is None and load_and_override(options).outer_folds > 0


def run_nested(
    options: LaunchOptions, *, default_data: Path, policy: SearchPolicy = SearchPolicy(), phases: Phases | None = None
) -> int:
    """The nested launch; returns the process exit code (``INTERRUPTED`` when a stage ended early)."""
    space = load_and_override(options)
    if options.config is not None:
        raise SpaceError("--outer-folds: nested cross-validation estimates a search; --config trains one configuration")
    dataset = checked_dataset(options, default_data)
    near = duplicates.Setting(accept_large=options.accept_groups)
    plan = plan_outer(dataset, space.outer_folds, seed=options.seed, cache_root=options.cache_dir, near=near)
    print(f"[launch] {describe(plan)}")
    check_balance(plan, accept=options.accept_unbalanced_folds)
    folders = [
        outer_dataset(dataset, plan, k, cache_root=options.cache_dir, seed=options.seed) for k in range(plan.folds)
    ]
    tracking_uri = options.tracking_uri or default_tracking_uri()
    client = open_client(tracking_uri)
    if build.task_spec(space.task).needs_segmenter:
        _check_segmenters(client, options, plan, folders)
    experiment = options.experiment or space.name
    launch_id = _launch_run(client, options, space, plan, dataset, experiment, tracking_uri)
    base = dataclasses.replace(options, outer_folds=0, experiment=experiment, tracking_uri=tracking_uri)
    # Outer folds' winners are logged on their runs; only segmenters are registered (the champion of each outer
    # fold's dataset is what a nested masked launch uses), and the refit, the model to use.
    outer = dataclasses.replace(base, register=build.task_spec(space.task).model_kind == "segmentation")
    with ray_session(options.address, phases=phases, verbose=options.verbose), stop_between_stages() as stopped:
        for k, folder in enumerate(folders):
            stage = Stage(launch_id, f"outer-{k}", {nested.STAGE_TAG: "outer", nested.OUTER_TAG: str(k)}, stopped)
            code = _stage(client, stage, dataclasses.replace(outer, data=folder), default_data, policy, phases)
            if code != 0 or stopped.is_set():
                return _stopped(client, launch_id, code or INTERRUPTED)
        estimate = _publish(client, launch_id, space, plan, experiment)
        if options.refit:
            tags = {nested.STAGE_TAG: "refit", "nested_estimate": estimate}
            code = _stage(client, Stage(launch_id, "refit", tags, stopped), base, default_data, policy, phases)
            if code != 0 or stopped.is_set():
                return _stopped(client, launch_id, code or INTERRUPTED)
    retrying(lambda: client.set_terminated(launch_id, "FINISHED"))
    return 0


@contextmanager
def stop_between_stages() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) during a nested launch stops it at the end of the current step, never in the middle of
    one, and the launch then ends as interrupted (``--resume`` goes on from there).

    Ray Tune stops a search gracefully on SIGINT, but only while it runs, and a search whose trials had all
    ended anyway returns as complete: the launch would go on with the next outer fold. Here SIGINT sets
    the returned event and sends SIGUSR1, Tune's other stop signal (``TUNE_DISABLE_SIGINT_HANDLER`` keeps
    Tune's hands off SIGINT); outside a search SIGUSR1 does nothing and the current step (preparing,
    publishing) ends first. A second Ctrl-C interrupts at once (``KeyboardInterrupt``).
    """
    stopped = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        stopped.set()
        print("[launch] Ctrl-C: stopping after the current step (again: at once)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGUSR1)

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stopped
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env


def _launch_run(client, options, space: SearchSpace, plan: FoldPlan, dataset, experiment: str, uri: str) -> str:
    """The nested launch's run: a new one, or the interrupted one ``--resume`` continues (same outer folds)."""
    exp_id = experiment_id(client, experiment, create=not options.resume)
    if options.resume:
        run = latest_launch(client, exp_id)
        if run.data.tags.get(nested.DIGEST_TAG) != plan.digest:
            raise TrackingError(
                f"--resume: the latest launch of '{experiment}' is not a nested launch on these outer folds "
                f"(digest {plan.digest}); start a new one without --resume"
            )
        if run.info.status == "FINISHED":
            raise TrackingError(f"--resume: the latest launch of '{experiment}' finished; start a new one")
        retrying(lambda: client.update_run(run.info.run_id, "RUNNING"))
        return run.info.run_id
    tags = {
        **standard_tags(),
        LAUNCH_TAG: "true",
        nested.NESTED_TAG: str(plan.folds),
        nested.DIGEST_TAG: plan.digest,
        "space": space.name,
        "task": space.task,
        "dataset": str(dataset.root),
        "dataset_fingerprint": dataset.fingerprint,
        "code_version": code_version(),
        "smoke": str(options.smoke).lower(),
        "config": "false",
        "refit": str(options.refit).lower(),
    }
    name = f"launch-{experiment}-{time.strftime('%Y%m%d-%H%M%S')}-nested"
    run = retrying(lambda: client.create_run(exp_id, run_name=name, tags=tags))
    params = {"outer_folds": plan.folds, "outer_fold_sizes": "/".join(map(str, plan.sizes())), "seed": options.seed}
    params |= {"metric": space.metric, "mode": space.mode, "inner_folds": space.folds}
    for key, value in params.items():
        retrying(lambda key=key, value=value: client.log_param(run.info.run_id, key, value))
    retrying(lambda: client.log_dict(run.info.run_id, plan.as_json(), "outer_folds.json"))
    print(f"[launch] nested launch run {run.info.run_id} in {redact_uri(uri)} (experiment '{experiment}')")
    return run.info.run_id


def _stage(client, stage: Stage, options: LaunchOptions, default_data: Path, policy, phases) -> int:
    """Run (or resume, or skip when finished) one stage's search; its exit code."""
    exp_id = experiment_id(client, options.experiment, create=False)
    found = stage.find(client, exp_id)
    if found is not None and found.info.status == "FINISHED":
        print(f"[launch] {stage.name}: finished before; skipped", file=sys.stderr)
        return 0
    resume = found is not None and can_restore(found.data.tags.get("ray_path", ""))
    if found is not None and not resume:  # it stopped before its search started: begin it again
        retrying(lambda: client.set_terminated(found.info.run_id, "FAILED"))
    print(f"[launch] {stage.name}: {'resuming its search' if resume else 'searching'}", file=sys.stderr)
    return run_search(
        dataclasses.replace(options, resume=resume),
        default_data=default_data,
        policy=policy,
        phases=phases,
        stage=stage,
    )


def _stopped(client: MlflowClient, launch_id: str, code: int) -> int:
    retrying(lambda: client.set_terminated(launch_id, "KILLED" if code == INTERRUPTED else "FAILED"))
    return code


def _publish(client: MlflowClient, launch_id: str, space: SearchSpace, plan: FoldPlan, experiment: str) -> str:
    """Pool the outer folds' predictions, log and print the nested result; the refit card's estimate line."""
    exp_id = experiment_id(client, experiment, create=False)
    searched = {p.name: p.kind for p in space.params}
    folds = []
    for k in range(plan.folds):
        stage = Stage(launch_id, f"outer-{k}", {nested.STAGE_TAG: "outer", nested.OUTER_TAG: str(k)})
        folds.append(nested.read_fold(client, stage.find(client, exp_id), k, list(searched)))
    arrays = nested.pool(folds)
    scores = nested.pooled_scores(arrays)
    lines = nested.report(space.name, folds, scores, arrays, searched)
    nested.log_nested(client, launch_id, folds, arrays, scores, lines)
    print("\n" + "\n".join(lines))
    return nested.estimate_line(scores, space.metric, len(arrays["image_ids"]), plan.folds)


def _check_segmenters(client, options: LaunchOptions, plan: FoldPlan, folders: list[Path]) -> None:
    """A masked nested launch needs, per outer fold, a segmenter trained without that fold's images: the
    champion a nested segmentation launch on the same outer folds registered for it. Refused otherwise."""
    if options.segmenter:
        raise SpaceError(
            "--outer-folds with --segmenter: one segmenter for every outer fold has seen most folds' images "
            "(in-sample masks); leave --segmenter out to use each outer fold's own champion"
        )
    for k, folder in enumerate(folders):
        fold = resolve_dataset(folder, cache_root=options.cache_dir)
        name = segmenter_name(fold.name, fold.fingerprint)
        if not retrying(lambda name=name: client.search_registered_models(f"name = '{name}'")):
            raise TrackingError(
                f"outer fold {k} ({folder.name}) has no segmenter trained without its images; first run: "
                f"python launch.py --space segmentation --outer-folds {plan.folds} --seed {options.seed}"
                + (f" --data {options.data}" if options.data else "")
            )
