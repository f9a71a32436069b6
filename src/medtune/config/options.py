"""The options of one launch, typed: what ``launch.py``'s flags say, without argparse.

The library reads these fields, never the command line's namespace, so a notebook, a benchmark or
another front end can launch a search by building one ``LaunchOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LaunchOptions:
    """Everything a launch is told; ``None`` means "the space's or the project's default".

    Exactly one of ``space`` and ``config`` is set: a search space (name or YAML path), or one
    configuration exported by ``analyze.py --export-best`` to train once and test.
    """

    space: str | None = None
    config: Path | None = None
    data: Path | None = None  # dataset folder or COCO file [the embedded synthetic dataset]
    num_samples: int | None = None  # overrides the space's budget
    max_epochs: int | None = None  # overrides the space's budget
    repeats: int | None = None  # seeds the winner is trained with; overrides the space's budget
    folds: int | None = None  # cross-validation folds (>= 2; 0 turns a space's cv off); overrides ``cv.folds``
    outer_folds: int | None = (
        None  # nested cross-validation's outer folds (>= 2; 0: none); overrides ``cv.outer_folds``
    )
    register: bool = True  # register (and maybe promote) the winner; a nested launch's outer classifiers are not
    refit: bool = True  # after a nested launch's outer folds, search the dataset's own splits and register that winner
    accept_unbalanced_folds: bool = False  # run folds that kept-whole groups unbalance (refused by default)
    accept_groups: bool = False  # near-duplicate groups over the bound constrain the folds too (Setting.accept_large)
    smoke: bool = False  # merge the space's smoke block
    overrides: tuple[str, ...] = ()  # "key=value" (launch.py --set), applied after smoke (medtune.config.overrides)
    seed: int = 0  # sampler, splits and every trial
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # [1 if a GPU is visible, else 0]
    max_concurrent: int = 0  # 0: as many as the resources allow
    max_failures: int = 0  # retries per failing trial
    address: str | None = None  # an existing Ray cluster
    storage_path: str = "runs"  # Ray results: a folder, file:///folder or a bucket URI (trainables.storage)
    experiment: str | None = None  # MLflow experiment [the space's name]
    tracking_uri: str | None = None  # MLflow store [tracking.default_tracking_uri()]
    segmenter: str | None = None  # models:/<name>/<version> for masked tasks [the champion]
    allow_foreign_segmenter: bool = False  # accept a segmenter trained on another dataset's split
    trust_model_code: bool = False  # load a segmenter whose stored code is not this medtune's (model_trust)
    cache_dir: Path = Path(".cache")  # decoded images and segmenter masks
    precision: str = "16-mixed"  # Lightning precision on a GPU (the CPU runs 32-true)
    resume: bool = False  # continue the experiment's interrupted latest launch
    verbose: bool = False  # Ray's own progress tables instead of one line per trial start and end
    keep_checkpoints: bool = False  # keep the trials' Ray checkpoints after a finished launch
    # A running trial's longest stretch without a checkpoint (besides its new bests and last epoch):
    # the most a kill makes --resume re-train; 0 writes every epoch (trainables.checkpoint_policy).
    checkpoint_minutes: float = 5.0

    def __post_init__(self) -> None:
        if (self.space is None) == (self.config is None):
            raise ValueError("LaunchOptions: give exactly one of space and config")
        if not 0 <= self.checkpoint_minutes < float("inf"):
            raise ValueError(f"LaunchOptions: checkpoint_minutes must be >= 0, got {self.checkpoint_minutes}")
