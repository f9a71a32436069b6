"""Torch datasets over cached tensors, joint image+mask augmentation, and the Lightning DataModule.

Every item is a dict: ``image`` float [3,S,S] (ImageNet-normalised), ``mask`` float [1,S,S]
(ground-truth lesion), ``label`` (class index; -1 when the image has no label or several) and, when
``num_classes`` is known, ``targets`` float [K] (multi-hot label set, for multi-label tasks).

For masked classification the segmenter's cached prediction is applied before augmentation, and
no pixel where the predicted probability is below ``mask_threshold`` reaches the network (it is 0,
black): a shortcut drawn in the background (a ruler, a marker, the site's frame) must stay hidden.
``hard`` (the mode the shipped masked space uses) multiplies the image by
``probability >= threshold``; ``soft`` multiplies it by the probability floored at the threshold
(below it: 0), so the background is black and the lesion keeps the segmenter's soft edge; ``crop``
takes the ``hard`` image, crops it and its ground-truth mask to the bounding box of
``probability >= threshold`` widened by ``crop_margin`` (see ``crop_box``) and resizes them back to
S: the margin shows black, not skin. An empty predicted mask gives an all-black image in every mode
(the classifier sees "no lesion found").
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from medtune.data.cache import CacheSource, load_cache
from medtune.data.samplers import SAMPLERS
from medtune.names import lookup

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_MODES = ("none", "soft", "hard", "crop")


def build_transform(augment: float, *, train: bool) -> v2.Transform:
    """Joint image+mask transform; ``augment`` in [0,1] scales every augmentation (0 turns them off)."""
    steps: list[v2.Transform] = []
    if train and augment > 0:
        steps += [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=30 * augment, scale=(1 - 0.2 * augment, 1 + 0.2 * augment)),
            v2.ColorJitter(brightness=0.3 * augment, contrast=0.3 * augment, saturation=0.3 * augment),
        ]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def crop_box(region: torch.Tensor, margin: float) -> tuple[int, int, int] | None:
    """Square crop ``(top, left, side)`` around the True pixels of ``region`` [..., S, S]; None if empty.

    The side is the bounding box's longer side plus ``margin`` of it on each side (so the lesion
    keeps its aspect ratio when resized), at most S; the square is centred on the box and shifted
    back inside the image where it would stick out.
    """
    ys, xs = torch.nonzero(region.reshape(region.shape[-2:]), as_tuple=True)
    if ys.numel() == 0:
        return None
    size = region.shape[-1]
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = min(size, math.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * margin)))
    top = min(max(round((y0 + y1 - side) / 2), 0), size - side)
    left = min(max(round((x0 + x1 - side) / 2), 0), size - side)
    return top, left, side


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """uint8 [C, h, w] -> uint8 [C, size, size]."""
    out = F.interpolate(
        x[None].float(), size=(size, size), mode=mode, **({"align_corners": False} if mode == "bilinear" else {})
    )
    return out[0].round().clamp(0, 255).to(torch.uint8)


class CachedDataset(Dataset):
    """Items of one split read from a cache file (see ``medtune.data.cache``).

    Args:
        cache_file: the split's cache (``build_cache``), or that cache already open (a trial's, handed over
            by the driver through Ray: ``medtune.data.shared``).
        transform: joint transform applied to ``tv_tensors.Image`` and ``tv_tensors.Mask``.
        num_classes: classes of the dataset; when given, items carry the multi-hot ``targets``.
        pred_masks: optional cached segmenter probabilities, uint8 [N,1,S,S] scaled 0..255 (a file or open).
        mask_mode: ``none``, ``soft``, ``hard`` or ``crop`` (how ``pred_masks`` is applied to the image).
        mask_threshold: probability below which a pixel is background (0, black) in every mode; for
            ``hard`` and ``crop`` the pixels at or above it are kept whole, for ``soft`` weighted by it.
        crop_margin: for ``crop``, margin around the box as a share of its longer side (black where
            outside the predicted lesion).
        rows: only these rows of the cache, in this order (a cross-validation fold of the pooled
            train+val cache, ``medtune.data.folds``); None: every row.
    """

    def __init__(
        self,
        cache_file: CacheSource,
        transform: v2.Transform,
        *,
        num_classes: int | None = None,
        pred_masks: CacheSource | None = None,
        mask_mode: str = "none",
        mask_threshold: float = 0.5,
        crop_margin: float = 0.1,
        rows: list[int] | None = None,
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"unknown mask_mode '{mask_mode}'; valid: {', '.join(MASK_MODES)}")
        if mask_mode != "none" and pred_masks is None:
            raise ValueError(f"mask_mode '{mask_mode}' needs the segmenter's cached masks (pred_masks)")
        if crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {crop_margin}")
        data = load_cache(cache_file)
        self.rows = list(range(data["images"].shape[0])) if rows is None else list(rows)
        index = torch.tensor(self.rows, dtype=torch.long)
        # images stay memory-mapped (read per item through ``rows``); masks and labels are small
        self.images, self.masks = data["images"], data["masks"][index]
        self.labels = [data["labels"][row] for row in self.rows]
        self.pred = load_cache(pred_masks)["probs"] if mask_mode != "none" else None
        self.transform, self.mask_mode, self.mask_threshold = transform, mask_mode, mask_threshold
        self.num_classes, self.crop_margin = num_classes, crop_margin

    def __len__(self) -> int:
        return len(self.rows)

    def _view(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 image and ground-truth mask the network sees, before augmentation (see ``mask_mode``)."""
        image, mask = self.images[self.rows[index]], self.masks[index]
        if self.pred is None:
            return image, mask
        prob = self.pred[self.rows[index]].float() / 255.0
        lesion = prob >= self.mask_threshold
        # soft: the probability where it reaches the threshold, 0 elsewhere; hard and crop: 1 or 0
        weight = prob * lesion if self.mask_mode == "soft" else lesion.float()
        image = (image.float() * weight).round().to(torch.uint8)
        if self.mask_mode != "crop":
            return image, mask
        box = crop_box(lesion, self.crop_margin)
        if box is None:  # nothing predicted: the masked image is all black, left whole
            return image, mask
        top, left, side = box
        size = image.shape[-1]
        crop = (slice(None), slice(top, top + side), slice(left, left + side))
        return _resize(image[crop], size, "bilinear"), _resize(mask[crop], size, "nearest")

    def __getitem__(self, index: int) -> dict:
        image, mask = self._view(index)
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        labels = self.labels[index]
        label = labels[0] if labels.numel() == 1 else torch.tensor(-1)  # -1: not single-label
        item = {
            "image": image.as_subclass(torch.Tensor),
            "mask": mask.as_subclass(torch.Tensor).float(),
            "label": label,
        }
        if self.num_classes is not None:
            item["targets"] = torch.zeros(self.num_classes).index_fill_(0, labels, 1.0)
        return item


class CachedDataModule(pl.LightningDataModule):
    """Train/val/test loaders over cache files prepared once by the driver.

    Args:
        caches: split name -> cache file (absolute paths), or the cache already open (``medtune.data.shared``).
        batch_size: images per batch.
        augment: augmentation strength in [0, 1] (training split only).
        pred_masks: split name -> cached segmenter probabilities, for masked classification.
        mask_mode: ``none`` (whole images), ``hard``, ``soft`` or ``crop`` (see the module docstring).
        mask_threshold: probability below which a pixel is background (0, black) in every mask mode.
        crop_margin: for ``crop``, margin around the predicted lesion's box, as a share of its side.
        sampler: how the training split is drawn, a name in ``medtune.data.samplers.SAMPLERS``; ``none``
            shuffles. Validation and test are never resampled.
        sampler_floor: smallest weight of an image under ``lesion_size`` (lesion area share), so
            images with an empty mask are still drawn.
        num_workers: DataLoader workers (0 loads in the training process; items are cheap tensor
            slices). A trial that the space leaves unset uses its CPUs beyond the first
            (``trainables.trial``), so ``--cpus-per-trial 1`` keeps 0.
        pin_memory: page-locked batches for faster host-to-GPU copies; None: when CUDA is available
            (a trial given no GPU sees none).
        num_classes: classes of the dataset (set by the platform); None infers 1 + the largest class
            index in any split, which misses classes listed last in the COCO file with no image.
        subsets: split name -> the rows of that split's cache to use (set by the platform for a
            cross-validation fold: ``train`` and ``val`` both read the pooled cache); None: all rows.
    """

    def __init__(
        self,
        *,
        caches: dict[str, CacheSource],
        batch_size: int = 16,
        augment: float = 0.5,
        pred_masks: dict[str, CacheSource] | None = None,
        mask_mode: str = "none",
        mask_threshold: float = 0.5,
        crop_margin: float = 0.1,
        sampler: str = "none",
        sampler_floor: float = 0.05,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        num_classes: int | None = None,
        subsets: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.caches, self.pred_masks = caches, pred_masks or {}
        self.batch_size, self.augment, self.num_workers = batch_size, augment, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.mask_mode, self.mask_threshold, self.crop_margin = mask_mode, mask_threshold, crop_margin
        self.sampler, self.sampler_floor = lookup(SAMPLERS, "sampler", sampler), sampler_floor
        self.num_classes, self.subsets = num_classes, subsets or {}

    def _classes(self) -> int:
        if self.num_classes is None:
            labels = [t for cache in self.caches.values() for t in load_cache(cache)["labels"] if t.numel()]
            self.num_classes = 1 + max((int(t.max()) for t in labels), default=0)
        return self.num_classes

    def dataset(self, split: str) -> CachedDataset:
        """The dataset of ``split`` with its transform (augmented for ``train`` only)."""
        return CachedDataset(
            self.caches[split],
            build_transform(self.augment, train=split == "train"),
            num_classes=self._classes(),
            pred_masks=self.pred_masks.get(split),
            mask_mode=self.mask_mode,
            mask_threshold=self.mask_threshold,
            crop_margin=self.crop_margin,
            rows=self.subsets.get(split),
        )

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        sampler, generator = None, None
        if split == "train":
            sampler = self.sampler(dataset.labels, dataset.masks, floor=self.sampler_floor) or RandomSampler(dataset)
            # Training draws (order, augmentation) come from the global generator, from the first batch on;
            # creating the iterator must not draw from it, or an epoch's draws would depend on whether
            # Lightning made its iterator before the epoch was seeded (a fit's first epoch, a resumed
            # one) or after (``medtune.engine.trainer.EpochSeed``). Loader workers get their seeds from here.
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
