"""Training-step throughput: Lightning vs a bare PyTorch loop, and the data pipeline alone.

    python benchmarks/step_throughput.py --quick    # ~1 min on 2 cores
    python benchmarks/step_throughput.py            # more batches and repeats
    python benchmarks/step_throughput.py --quick --image-size 224   # a real size: is the loader enough?

Both loops train the same freshly built system (``medtune.engine.build``, same seed) on the same pre-collected
batches, one thread (what a trial gets with ``--cpus-per-trial 1``); repeats interleave A and B so
a change in machine load hits both. The data pipeline is ``CachedDataModule.train_dataloader()``
iterated alone (decode-free: the images come from the memory-mapped cache). Prints the ratio last.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from common import load, median, rss_mb, synth_caches

if TYPE_CHECKING:
    from medtune.data.datasets import CachedDataModule
    from medtune.tasks.base import BaseTask

CONFIG = {  # whole_cls at its fixed settings; validation off in both loops
    "model.name": "resnet18",
    "model.weights": "none",
    "loss.name": "ce",
    "data.image_size": 64,
    "data.batch_size": 16,
    "data.augment": 0.5,
    "train.optimizer": "adamw",
    "train.lr": 1e-3,
    "train.saliency_metric": False,
}


def _system(num_classes: int, task: str = "classification", config: dict = CONFIG) -> BaseTask:
    import pytorch_lightning as pl

    from medtune.engine.build import build_system

    pl.seed_everything(0, verbose=False)
    return build_system(task, config, num_classes=num_classes, max_epochs=1)


def bare_loop(batches: list[dict], num_classes: int) -> float:
    """Images/s of forward, loss, backward, AdamW step in plain PyTorch."""
    system = _system(num_classes)
    model, loss_fn = system.model.train(), system.loss
    opt = torch.optim.AdamW(model.parameters(), lr=CONFIG["train.lr"], weight_decay=1e-4)
    start = time.perf_counter()
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch["image"]), batch["label"])
        loss.backward()
        opt.step()
    return sum(len(b["image"]) for b in batches) / (time.perf_counter() - start)


def lightning_loop(batches: list[dict], num_classes: int, task: str = "classification", config: dict = CONFIG) -> float:
    """Images/s of ``Trainer.fit`` over the same batches (epoch start to end, Trainer as in trials)."""
    import pytorch_lightning as pl

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, *_: object) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, *_: object) -> None:
            self.seconds = time.perf_counter() - self.start

    clock = EpochClock()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        precision="32-true",
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(_system(num_classes, task, config), train_dataloaders=loader)
    return sum(len(b["image"]) for b in batches) / clock.seconds


def collect_batches(data: CachedDataModule, n: int) -> list[dict]:
    """``n`` full training batches (images, masks, labels), collected once and reused by every loop."""
    batches: list[dict] = []
    while len(batches) < n:
        batches += [b for b in data.train_dataloader() if len(b["image"]) == CONFIG["data.batch_size"]]
    return batches[:n]


def pipeline(data: CachedDataModule, images: int) -> float:
    """Images/s of iterating the train loader alone (augmentation included)."""
    seen, start = 0, time.perf_counter()
    while seen < images:
        for batch in data.train_dataloader():
            seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def memory(caches: dict[str, str]) -> str:
    sizes = ", ".join(f"{split} {Path(p).stat().st_size / 2**20:.1f} MiB" for split, p in caches.items())
    return f"cache files: {sizes}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--image-size", type=int, default=64, help="64 (the shipped spaces) or e.g. 224 (generated at that size)"
    )
    args = p.parse_args()
    n_batches, repeats = (15, 3) if args.quick else (60, 5)
    if args.image_size > 64:  # a step costs about (size / 64)^2 more: fewer batches, same interleaving
        n_batches = max(4, n_batches * 64**2 // args.image_size**2 * 3)
    CONFIG["data.image_size"] = args.image_size
    torch.set_num_threads(1)
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    from medtune.engine.build import build_datamodule

    size = args.image_size
    _, caches, k = synth_caches(size=size, source=max(64, size), n=300 if size == 64 else 53)
    print(memory(caches))
    rss0 = rss_mb()[0]
    data = build_datamodule(CONFIG, caches=caches)
    batches = collect_batches(data, n_batches)
    rss1 = rss_mb()[0]
    print(
        f"RSS: {rss0:.0f} MiB before the loader, {rss1:.0f} MiB after {n_batches} batches "
        f"(+{rss1 - rss0:.0f} MiB: mmap'd cache pages + {n_batches} collected batches "
        f"{n_batches * 16 * 3 * size * size * 4 / 2**20:.0f} MiB)"
    )
    bare, light, pipe = [], [], []
    for r in range(repeats):  # ABBA order: drifting load hits both sides alike
        order = [(bare, bare_loop), (light, lightning_loop)][:: 1 if r % 2 == 0 else -1]
        for out, fn in order:
            out.append(fn(batches, k))
        pipe.append(pipeline(data, n_batches * 16))
        print(
            f"repeat {r}: bare {bare[-1]:.1f} img/s, lightning {light[-1]:.1f} img/s, "
            f"loader alone {pipe[-1]:.0f} img/s ({load()})"
        )
    b, lt, d = median(bare), median(light), median(pipe)
    print(f"median: bare {b:.1f} img/s, lightning {lt:.1f} img/s, loader {d:.0f} img/s; peak RSS {rss_mb()[1]:.0f} MiB")
    print(
        f"loader alone / training step at {size} px = {d / lt:.1f}x "
        f"(the loader is {'not ' if d > 2 * lt else ''}the bottleneck; >= 3x wanted)"
    )
    print(f"RATIO lightning / bare = {lt / b:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
