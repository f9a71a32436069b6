"""Is masking free once cached? A masked training epoch vs a whole-image epoch on the same images, at 224 px.

    python benchmarks/masked_epoch.py --quick   # 16 training images, one measured round (about a minute)
    python benchmarks/masked_epoch.py           # 65 training images, 3 measured rounds (a few minutes)

Masked classification (``masked_classification``) trains the same system as whole-image
classification; only the data module differs: each item's image is multiplied by the segmenter's
cached probabilities (``hard``, ``soft``) or also cropped to the predicted lesion and resized back
(``crop``), in ``medtune.data.datasets.CachedDataset``. This script builds the four data modules
(``data.mask_mode`` none / hard / soft / crop) with the platform's ``build_datamodule`` over the same
image cache and feeds them to one classifier (resnet18, random init, batch 16, augment 0.3, a plain
AdamW step, one thread as a ``--cpus-per-trial 1`` trial has). The first round is a warm-up; in
every round the four modes run one training epoch each, batch by batch in turn (a batch of one
mode, loaded and trained on, then the same batch position of the next), so that the load of a
shared machine falls on all four alike; a round also makes a pass that only loads. The order of
the modes rotates between rounds. Each mode's epoch is timed by the wall clock and by this
thread's CPU time (one torch thread and no loader workers: all the work runs in it, so its CPU
time does not grow with the wait for a core). Ratios are masked / whole per round, and their
median.

The mask cache holds an oracle segmenter's probabilities, the ground-truth lesion blurred by a
9 px box (a soft edge), written in the format ``build_mask_cache`` writes: what masking costs does
not depend on which segmenter drew the mask, but on its shape (``crop``'s box), and a random-weight
segmenter draws no lesion shape. Target (issue 26, item 6): a masked epoch <= 1.10x a whole one.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import WORK, load, median, synth_caches

MODES = ("none", "hard", "soft", "crop")
TARGET = 1.10
PARTS = ("loader", "epoch")  # a pass that only loads, and a training epoch
CLOCKS = ("wall", "cpu")
CONFIG = {
    "model.name": "resnet18",
    "model.weights": "none",
    "loss.name": "ce",
    "data.image_size": 224,
    "data.batch_size": 16,
    "data.augment": 0.3,
    "data.mask_threshold": 0.5,
    "data.crop_margin": 0.1,
    "train.saliency_metric": False,
}


def oracle_masks(image_cache: str, out: Path) -> str:
    """Probabilities uint8 [N,1,S,S] of an oracle segmenter (the lesion, blurred by a 9 px box), saved once."""
    from medtune.data.cache import cache_ok, load_cache, save_tensors

    if not cache_ok(out):
        masks = load_cache(image_cache)["masks"].float()
        probs = (torch.nn.functional.avg_pool2d(masks, 9, stride=1, padding=4) * 255).round().to(torch.uint8)
        save_tensors({"probs": probs, "sources": torch.full((probs.shape[0],), -1)}, out)
    return str(out)


def train_step(num_classes: int) -> Callable[[dict], None]:
    """A plain training step of the classifier (what a trial does per batch), shared by every mode."""
    from medtune.engine.build import build_system

    system = build_system("classification", CONFIG, num_classes=num_classes, max_epochs=1)
    opt = torch.optim.AdamW(system.model.parameters(), lr=1e-3)

    def step(batch: dict) -> None:
        opt.zero_grad()
        system.loss(system.model(batch["image"]), batch["label"]).backward()
        opt.step()

    return step


def interleaved_epoch(modules: dict, step: Callable[[dict], None], order: tuple[str, ...]) -> dict:
    """One epoch of every mode, batch by batch in ``order``: mode -> (wall s, CPU s of this thread).

    Each mode's loading of a batch and ``step`` on it are timed together; the modes take turns per
    batch, so a change of machine load (2 cores shared) falls on all of them alike. With one torch
    thread and no loader workers, everything runs in this thread: its CPU time is the work done,
    whatever the wait for a core.
    """
    loaders = {mode: iter(modules[mode].train_dataloader()) for mode in order}
    spent = {mode: [0.0, 0.0] for mode in order}
    for _ in range(len(modules[order[0]].train_dataloader())):
        for mode in order:
            wall, cpu = time.perf_counter(), time.thread_time()
            step(next(loaders[mode]))
            spent[mode][0] += time.perf_counter() - wall
            spent[mode][1] += time.thread_time() - cpu
    return {mode: tuple(v) for mode, v in spent.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 training images, one measured round")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (each: every mode once) [3]")
    args = p.parse_args()
    torch.set_num_threads(1)
    from medtune.data.cache import load_cache
    from medtune.engine.build import build_datamodule

    n, rounds = (27, 1) if args.quick else (107, args.rounds)  # 60% of each class trains: 16 or 65 images
    _, caches, k = synth_caches(n=n, size=224, source=224)
    probs = oracle_masks(caches["train"], WORK / "masks" / f"oracle-{Path(caches['train']).stem}.pt")
    images = load_cache(caches["train"])["images"].shape[0]
    modules = {
        mode: build_datamodule({**CONFIG, "data.mask_mode": mode}, caches=caches, pred_masks={"train": probs})
        for mode in MODES
    }
    step, noop = train_step(k), (lambda batch: None)
    torch.manual_seed(0)
    interleaved_epoch(modules, step, MODES)  # warm-up: page cache, allocator, first calls of each path
    times = {(mode, part, clock): [] for mode in MODES for part in PARTS for clock in CLOCKS}
    for r in range(rounds):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        for part, fn in (("loader", noop), ("epoch", step)):
            for mode, spent in interleaved_epoch(modules, fn, order).items():
                for clock, seconds in zip(CLOCKS, spent):
                    times[mode, part, clock].append(seconds)
        print(
            f"round {r + 1} ({' '.join(order)}): "
            + ", ".join(
                f"{m} {times[m, 'epoch', 'wall'][-1]:.2f} s (cpu {times[m, 'epoch', 'cpu'][-1]:.2f} s)" for m in MODES
            )
            + f" ({load()})",
            flush=True,
        )
    report(times, images)


def report(times: dict, images: int) -> None:
    """Print per mode and clock the median epoch and loader pass, and the masked / whole ratios with the verdict."""
    ratios = {}
    for clock in CLOCKS:
        whole = times["none", "epoch", clock]
        for mode in MODES:
            per_round = [m / w for m, w in zip(times[mode, "epoch", clock], whole)]
            ratios[mode, clock] = median(per_round)
            loader = median(times[mode, "loader", clock])
            print(
                f"{clock} {mode}: training epoch {median(times[mode, 'epoch', clock]):.2f} s, loader alone "
                f"{loader:.2f} s ({1000 * loader / images:.2f} ms per image); epoch / whole per round "
                + ", ".join(f"{x:.3f}" for x in per_round)
            )
    worst = max(ratios[mode, clock] for mode in MODES[1:] for clock in CLOCKS)
    print(
        f"RATIO masked / whole training epoch at 224 px ({images} images, medians of per-round ratios): "
        + "; ".join(f"{c} " + ", ".join(f"{m} {ratios[m, c]:.3f}x" for m in MODES[1:]) for c in CLOCKS)
        + f" (target <= {TARGET:.2f}x: {'met' if worst <= TARGET else 'missed'})"
    )


if __name__ == "__main__":
    main()
