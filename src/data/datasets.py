"""Torch datasets over cached tensors, joint image+mask augmentation, and the Lightning DataModule.

Every item is a dict: ``image`` float [3,S,S] (ImageNet-normalised), ``mask`` float [1,S,S]
(ground-truth lesion), ``label`` (class index) for classification. For masked classification the
image is multiplied by the segmenter's cached prediction before augmentation: ``soft`` multiplies
by the probability, ``hard`` by ``probability >= threshold``. An empty predicted mask gives an
all-black image (the classifier sees "no lesion found"); nothing is divided, so it never fails.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from src.data.cache import load_cache

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_MODES = ("none", "soft", "hard")


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


class CachedDataset(Dataset):
    """Items of one split read from a cache file (see ``src.data.cache``).

    Args:
        cache_file: the split's cache (``build_cache``).
        transform: joint transform applied to ``tv_tensors.Image`` and ``tv_tensors.Mask``.
        pred_masks: optional cached segmenter probabilities, uint8 [N,1,S,S] scaled 0..255.
        mask_mode: ``none``, ``soft`` or ``hard`` (how ``pred_masks`` is applied to the image).
        mask_threshold: threshold on the probability for ``hard``.
    """

    def __init__(
        self,
        cache_file: str,
        transform: v2.Transform,
        *,
        pred_masks: str | None = None,
        mask_mode: str = "none",
        mask_threshold: float = 0.5,
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"unknown mask_mode '{mask_mode}'; valid: {', '.join(MASK_MODES)}")
        if mask_mode != "none" and pred_masks is None:
            raise ValueError(f"mask_mode '{mask_mode}' needs the segmenter's cached masks (pred_masks)")
        data = load_cache(cache_file)
        self.images, self.masks, self.labels = data["images"], data["masks"], data["labels"]
        self.pred = load_cache(pred_masks)["probs"] if mask_mode != "none" else None
        self.transform, self.mask_mode, self.mask_threshold = transform, mask_mode, mask_threshold

    def __len__(self) -> int:
        return self.images.shape[0]

    def _masked(self, index: int) -> torch.Tensor:
        image = self.images[index]
        if self.pred is None:
            return image
        prob = self.pred[index].float() / 255.0
        if self.mask_mode == "hard":
            prob = (prob >= self.mask_threshold).float()
        return (image.float() * prob).round().to(torch.uint8)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.transform(tv_tensors.Image(self._masked(index)), tv_tensors.Mask(self.masks[index]))
        labels = self.labels[index]
        label = labels[0] if labels.numel() == 1 else torch.tensor(-1)  # -1: not single-label
        return {"image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor).float(), "label": label}


class CachedDataModule(pl.LightningDataModule):
    """Train/val/test loaders over cache files prepared once by the driver.

    Args:
        caches: split name -> cache file (absolute paths).
        batch_size: images per batch.
        augment: augmentation strength in [0, 1] (training split only).
        pred_masks: split name -> cached segmenter probabilities, for masked classification.
        mask_mode: ``none``, ``soft`` or ``hard``.
        mask_threshold: probability threshold for ``hard``.
        num_workers: DataLoader workers (0 keeps trials light; items are cheap tensor slices).
    """

    def __init__(
        self,
        *,
        caches: dict[str, str],
        batch_size: int = 16,
        augment: float = 0.5,
        pred_masks: dict[str, str] | None = None,
        mask_mode: str = "none",
        mask_threshold: float = 0.5,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.caches, self.pred_masks = caches, pred_masks or {}
        self.batch_size, self.augment, self.num_workers = batch_size, augment, num_workers
        self.mask_mode, self.mask_threshold = mask_mode, mask_threshold

    def dataset(self, split: str) -> CachedDataset:
        """The dataset of ``split`` with its transform (augmented for ``train`` only)."""
        return CachedDataset(
            self.caches[split],
            build_transform(self.augment, train=split == "train"),
            pred_masks=self.pred_masks.get(split),
            mask_mode=self.mask_mode,
            mask_threshold=self.mask_threshold,
        )

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=split == "train",
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
