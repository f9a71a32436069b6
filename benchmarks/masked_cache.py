"""Masked classification: segmenter masks cached once vs the segmenter run on every item.

    python benchmarks/masked_cache.py --quick   # 64 px unet, and 224 px on 8 images; one measured epoch (< 2 min)
    python benchmarks/masked_cache.py           # 64 px unet and deeplabv3_mobilenet; 224 px on 32 images; 3 epochs

The platform computes the segmenter's probabilities once per segmenter version
(``medtune.engine.segmenter_masks.build_mask_cache``) and trials read them from a memory-mapped file. The
naive variant (as the original study did) runs the segmenter in ``__getitem__`` for every item of
every epoch. Both feed the same ``soft`` masking and the same classifier (one thread, a plain
training step); the first epoch of each is a warm-up, epochs from the second on are timed, A and B
interleaved. Both the loader alone and the whole training epoch are reported.

Two sizes: today's (64 px, resnet18 classifier, 300 images generated at 64 px, the mask cache over
all splits) and the real size (224 px, resnet50 classifier, a ResNet-50 DeepLabV3 or FCN segmenter
from the platform's ``SEG_MODELS``, random weights; images generated at 224 px, the mask cache over
the training split, which is all an epoch reads).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from common import WORK, load, median, synth_caches

if TYPE_CHECKING:
    from medtune.data.datasets import CachedDataModule

CONFIG = {  # today's size
    "model.name": "resnet18",
    "model.weights": "none",
    "loss.name": "ce",
    "data.image_size": 64,
    "data.batch_size": 16,
    "data.augment": 0.3,
    "data.mask_mode": "soft",
    "train.saliency_metric": False,
}
REAL = {**CONFIG, "model.name": "resnet50", "data.image_size": 224}  # the sizes these models were designed for
SEGMENTERS = {
    "unet": {"model.name": "unet", "model.width": 16, "model.depth": 3},
    "deeplabv3_mobilenet_v3_large": {"model.name": "deeplabv3_mobilenet_v3_large"},
    "deeplabv3_resnet50": {"model.name": "deeplabv3_resnet50"},
    "fcn_resnet50": {"model.name": "fcn_resnet50"},
}


@dataclass(frozen=True)
class Setup:
    """One size of the comparison: the classifier's config and the synthetic set it reads."""

    label: str
    config: dict
    n: int  # images of the synthetic set; 60% of each class is train (300: 180, 53: 32, 14: 8)
    source: int  # side of the generated images in px
    splits: tuple[str, ...]  # splits the one-off mask cache covers

    def caches(self) -> tuple[dict[str, str], int]:
        _, caches, k = synth_caches(n=self.n, size=self.config["data.image_size"], source=self.source)
        return caches, k


def naive_module(segmenter: torch.nn.Module, caches: dict[str, str], config: dict) -> CachedDataModule:
    """A ``CachedDataModule`` whose datasets run ``segmenter`` on each item (no mask cache)."""
    from medtune.data.datasets import CachedDataModule, CachedDataset, build_transform
    from medtune.engine.segmenter_masks import predict_probs

    class SegmentEveryItem(CachedDataset):
        def _masked(self, index: int) -> torch.Tensor:
            prob = predict_probs(segmenter, self.images[index : index + 1], out_size=self.images.shape[-1])[0]
            return (self.images[index].float() * (prob.float() / 255.0)).round().to(torch.uint8)

        def _view(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:  # the newer name of the hook
            return self._masked(index), self.masks[index]

    class NaiveModule(CachedDataModule):
        def dataset(self, split: str) -> CachedDataset:
            return SegmentEveryItem(self.caches[split], build_transform(self.augment, train=split == "train"))

    return NaiveModule(caches=caches, batch_size=config["data.batch_size"], augment=config["data.augment"])


def epoch(data: CachedDataModule, step: Callable[[dict], None]) -> float:
    """Seconds of one pass over the train loader, calling ``step(batch)`` on each batch."""
    start = time.perf_counter()
    for batch in data.train_dataloader():
        step(batch)
    return time.perf_counter() - start


def train_step(num_classes: int, config: dict) -> Callable[[dict], None]:
    """A plain training step of the classifier (what a trial does per batch)."""
    from medtune.engine.build import build_system

    system = build_system("classification", config, num_classes=num_classes, max_epochs=1)
    opt = torch.optim.AdamW(system.model.parameters(), lr=1e-3)

    def step(batch: dict) -> None:
        opt.zero_grad()
        system.loss(system.model(batch["image"]), batch["label"]).backward()
        opt.step()

    return step


def mask_caches(segmenter: torch.nn.Module, setup: Setup, caches: dict[str, str], tag: str) -> dict[str, str]:
    """The one-off mask cache of ``setup.splits`` (batched, as the platform builds it), timed and printed."""
    from medtune.engine.segmenter_masks import build_mask_cache

    target = WORK / "masks" / f"bench-{tag}-{time.time():.0f}.pt"
    size = setup.config["data.image_size"]
    build_s = time.perf_counter()
    masks = {
        s: str(build_mask_cache(segmenter, caches[s], target.with_suffix(f".{s}.pt"), out_size=size))
        for s in setup.splits
    }
    build_s = time.perf_counter() - build_s
    images = sum(torch.load(p)["probs"].shape[0] for p in masks.values())
    print(
        f"[{tag}] one-off mask cache, {'/'.join(setup.splits)} ({images} images at {size} px): {build_s:.2f} s, "
        f"{build_s / images:.3f} s per image ({load()})"
    )
    return masks


def measure(seg_name: str, setup: Setup, epochs: int) -> tuple[float, float]:
    """(training epoch, loader alone) naive / cached, medians over ``epochs`` measured epochs."""
    from medtune.engine.build import build_datamodule, build_part

    tag = f"{setup.label} {seg_name}"
    caches, k = setup.caches()
    torch.manual_seed(0)
    segmenter = build_part("segmentation", "model", SEGMENTERS[seg_name]).eval()
    masks = mask_caches(segmenter, setup, caches, tag)
    cached = build_datamodule(setup.config, caches=caches, pred_masks=masks)
    naive = naive_module(segmenter, caches, setup.config)
    step, noop = train_step(k, setup.config), (lambda batch: None)
    # epoch 1, warm-up (page cache, allocator, first calls): the cached side trains (the step is shared), the
    # naive side loads only (the segmenter's first per-item calls)
    epoch(cached, step), epoch(naive, noop)
    times: dict[str, list[float]] = {"cached loader": [], "naive loader": [], "cached epoch": [], "naive epoch": []}
    for e in range(epochs):
        for name in ["cached", "naive"] if e % 2 == 0 else ["naive", "cached"]:
            data = cached if name == "cached" else naive
            times[f"{name} loader"].append(epoch(data, noop))
            times[f"{name} epoch"].append(epoch(data, step))
        print(f"[{tag}] epoch {e + 2}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in times.items()) + f" ({load()})")
    m = {n: median(v) for n, v in times.items()}
    images = len(cached.dataset("train"))
    print(
        f"[{tag}] {images} training images; loader alone: naive / cached = {m['naive loader'] / m['cached loader']:.1f}x; "
        f"training epoch: naive / cached = {m['naive epoch'] / m['cached epoch']:.2f}x "
        f"(classifier step {(m['cached epoch'] - m['cached loader']) / images:.3f} s per image, per-item segmenting "
        f"{(m['naive loader'] - m['cached loader']) / images:.3f} s per image)"
    )
    return m["naive epoch"] / m["cached epoch"], m["naive loader"] / m["cached loader"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one measured epoch; 64 px unet and 224 px on 8 images")
    p.add_argument(
        "--real-segmenter",
        default="deeplabv3_resnet50",
        choices=["deeplabv3_resnet50", "fcn_resnet50"],
        help="the 224 px segmenter [deeplabv3_resnet50]",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    small = Setup("64 px", CONFIG, n=300, source=64, splits=("train", "val", "test"))
    # --quick: 8 training images (one batch of 8): the code path, and a rough ratio
    real = Setup("224 px", {**REAL, "data.batch_size": 8}, n=14, source=224, splits=("train",))
    runs = [("unet", small), (args.real_segmenter, real)]
    if not args.quick:
        real = Setup("224 px", REAL, n=53, source=224, splits=("train",))  # 32 training images, 2 batches of 16
        runs = [("unet", small), ("deeplabv3_mobilenet_v3_large", small), (args.real_segmenter, real)]
    ratios = {f"{setup.label} {name}": measure(name, setup, 1 if args.quick else 3) for name, setup in runs}
    print(
        "RATIO naive / cached training epoch (from epoch 2) = "
        + ", ".join(f"{n} {r:.2f}x (loader alone {lr:.1f}x)" for n, (r, lr) in ratios.items())
        + " (target >= 10x)"
    )


if __name__ == "__main__":
    main()
