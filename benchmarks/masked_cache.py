"""Masked classification: segmenter masks cached once vs the segmenter run on every item.

    python benchmarks/masked_cache.py --quick   # one measured epoch each (< 2 min on 2 cores)
    python benchmarks/masked_cache.py           # three measured epochs each, and deeplabv3 too

The platform computes the segmenter's probabilities once per segmenter version
(``medtune.segmenter_masks.build_mask_cache``) and trials read them from a memory-mapped file. The
naive variant (as the original study did) runs the segmenter in ``__getitem__`` for every item of
every epoch. Both feed the same ``soft`` masking and the same classifier (resnet18, 64 px, one
thread, a plain training step); the first epoch of each is a warm-up, epochs from the second on
are timed, A and B interleaved. Both the loader alone and the whole training epoch are reported.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from common import WORK, load, median, synth_caches

if TYPE_CHECKING:
    from medtune.data.datasets import CachedDataModule

CONFIG = {
    "model.name": "resnet18",
    "model.weights": "none",
    "loss.name": "ce",
    "data.image_size": 64,
    "data.batch_size": 16,
    "data.augment": 0.3,
    "data.mask_mode": "soft",
    "train.saliency_metric": False,
}
SEGMENTERS = {
    "unet": {"model.name": "unet", "model.width": 16, "model.depth": 3},
    "deeplabv3_mobilenet_v3_large": {"model.name": "deeplabv3_mobilenet_v3_large"},
}


def naive_module(segmenter: torch.nn.Module, caches: dict[str, str]) -> CachedDataModule:
    """A ``CachedDataModule`` whose datasets run ``segmenter`` on each item (no mask cache)."""
    from medtune.data.datasets import CachedDataModule, CachedDataset, build_transform
    from medtune.segmenter_masks import predict_probs

    class SegmentEveryItem(CachedDataset):
        def _masked(self, index: int) -> torch.Tensor:
            prob = predict_probs(segmenter, self.images[index : index + 1], out_size=self.images.shape[-1])[0]
            return (self.images[index].float() * (prob.float() / 255.0)).round().to(torch.uint8)

        def _view(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:  # the newer name of the hook
            return self._masked(index), self.masks[index]

    class NaiveModule(CachedDataModule):
        def dataset(self, split: str) -> CachedDataset:
            return SegmentEveryItem(self.caches[split], build_transform(self.augment, train=split == "train"))

    return NaiveModule(caches=caches, batch_size=CONFIG["data.batch_size"], augment=CONFIG["data.augment"])


def epoch(data: CachedDataModule, step: Callable[[dict], None]) -> float:
    """Seconds of one pass over the train loader, calling ``step(batch)`` on each batch."""
    start = time.perf_counter()
    for batch in data.train_dataloader():
        step(batch)
    return time.perf_counter() - start


def train_step(num_classes: int) -> Callable[[dict], None]:
    """A plain training step of the classifier (what a trial does per batch)."""
    from medtune.build import build_system

    system = build_system("classification", CONFIG, num_classes=num_classes, epochs=1)
    opt = torch.optim.AdamW(system.model.parameters(), lr=1e-3)

    def step(batch: dict) -> None:
        opt.zero_grad()
        system.loss(system.model(batch["image"]), batch["label"]).backward()
        opt.step()

    return step


def measure(seg_name: str, epochs: int, caches: dict[str, str], k: int) -> float:
    from medtune.build import build_datamodule, build_part
    from medtune.segmenter_masks import build_mask_cache

    torch.manual_seed(0)
    segmenter = build_part("segmentation", "model", SEGMENTERS[seg_name]).eval()
    target = WORK / "masks" / f"bench-{seg_name}-{time.time():.0f}.pt"
    build_s = time.perf_counter()
    masks = {
        s: str(build_mask_cache(segmenter, caches[s], target.with_suffix(f".{s}.pt"), out_size=64)) for s in caches
    }
    build_s = time.perf_counter() - build_s
    print(
        f"[{seg_name}] one-off mask cache, 3 splits ({sum(torch.load(p)['probs'].shape[0] for p in masks.values())} "
        f"images): {build_s:.2f} s ({load()})"
    )
    cached, naive = build_datamodule(CONFIG, caches=caches, pred_masks=masks), naive_module(segmenter, caches)
    step, noop = train_step(k), (lambda batch: None)
    for data in (cached, naive):  # epoch 1: warm-up (page cache, allocator, first-call costs)
        epoch(data, step)
    times: dict[str, list[float]] = {"cached loader": [], "naive loader": [], "cached epoch": [], "naive epoch": []}
    for e in range(epochs):
        for name in ["cached", "naive"] if e % 2 == 0 else ["naive", "cached"]:
            data = cached if name == "cached" else naive
            times[f"{name} loader"].append(epoch(data, noop))
            times[f"{name} epoch"].append(epoch(data, step))
        print(
            f"[{seg_name}] epoch {e + 2}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in times.items()) + f" ({load()})"
        )
    m = {n: median(v) for n, v in times.items()}
    print(
        f"[{seg_name}] loader alone: naive / cached = {m['naive loader'] / m['cached loader']:.1f}x; "
        f"training epoch: naive / cached = {m['naive epoch'] / m['cached epoch']:.2f}x; "
        f"one-off cache build {build_s:.2f} s (all splits, batched) vs {m['naive loader'] - m['cached loader']:.2f} s "
        f"of per-item segmenting in every naive training epoch"
    )
    return m["naive epoch"] / m["cached epoch"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    _, caches, k = synth_caches()
    names = ["unet"] if args.quick else ["unet", "deeplabv3_mobilenet_v3_large"]
    ratios = {name: measure(name, 1 if args.quick else 3, caches, k) for name in names}
    print(
        "RATIO naive / cached training epoch (from epoch 2) = "
        + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items())
        + " (target >= 10x)"
    )


if __name__ == "__main__":
    main()
