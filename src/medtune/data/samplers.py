"""Training-set samplers: which images an epoch draws, for class imbalance and small lesions.

``SAMPLERS`` maps ``data.sampler`` to a factory ``(labels, masks, *, floor) -> Sampler | None``:
``labels`` is the split's list of label sets (LongTensors of sorted class indices, as in the cache),
``masks`` its uint8 [N, 1, S, S] lesion masks. ``None`` means "shuffle" (the DataLoader default).
Every sampler draws ``len(labels)`` images per epoch, with replacement, from torch's global generator,
so ``pl.seed_everything`` makes the draws reproducible. Only the training split is ever resampled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler, WeightedRandomSampler

NO_LABEL = -1  # the label set of an image without annotation, as a group of its own


def _none(labels: list[Tensor], masks: Tensor, *, floor: float) -> None:
    return None


def _class_balanced(labels: list[Tensor], masks: Tensor, *, floor: float) -> Sampler:
    """Each image weighs 1 / (images with its label set): every class is drawn about equally often.

    Meant for single-label data, where the label set is the class; an image with several labels (or
    none) counts in the group of its exact label set.
    """
    keys = [tuple(t.tolist()) for t in labels]
    count = Counter(keys)
    weights = torch.tensor([1.0 / count[k] for k in keys], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(keys), replacement=True)


class LeastSampledFirst(Sampler[int]):
    """Multi-label sampling that favours rare labels: each draw takes the label drawn least so far
    this epoch (ties broken at random), then a random image carrying it; every label of that image
    counts as drawn. Images without labels form a group ``NO_LABEL`` of their own, so they still appear.

    Args:
        labels: label set of every image (LongTensors of class indices).
    """

    def __init__(self, labels: list[Tensor]) -> None:
        self.sets = [t.tolist() or [NO_LABEL] for t in labels]
        self.images: dict[int, list[int]] = {}
        for i, labels_i in enumerate(self.sets):
            for label in labels_i:
                self.images.setdefault(label, []).append(i)

    def __len__(self) -> int:
        return len(self.sets)

    def __iter__(self) -> Iterator[int]:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # from the global generator
        gen = torch.Generator().manual_seed(seed)
        drawn = dict.fromkeys(self.images, 0)
        for _ in range(len(self.sets)):
            least = min(drawn.values())
            tied = [label for label, n in drawn.items() if n == least]
            label = tied[int(torch.randint(len(tied), (), generator=gen))]
            pool = self.images[label]
            image = pool[int(torch.randint(len(pool), (), generator=gen))]
            for other in self.sets[image]:
                drawn[other] += 1
            yield image


def _least_sampled_first(labels: list[Tensor], masks: Tensor, *, floor: float) -> Sampler:
    return LeastSampledFirst(labels)


def lesion_weights(masks: Tensor, *, floor: float) -> Tensor:
    """Per image: the lesion's share of the image area, at least ``floor`` (so empty masks appear)."""
    area = masks.flatten(1).sum(1).double()  # uint8 sums accumulate in int64: no float copy of the masks
    return (area / masks[0].numel()).clamp(min=floor)


def _lesion_size(labels: list[Tensor], masks: Tensor, *, floor: float) -> Sampler:
    """Draw images with probability proportional to their lesion area share (``lesion_weights``)."""
    if floor <= 0:
        raise ValueError(f"data.sampler_floor must be > 0 for lesion_size (else empty masks never appear), got {floor}")
    return WeightedRandomSampler(lesion_weights(masks, floor=floor), num_samples=len(masks), replacement=True)


SAMPLERS: dict[str, Callable[..., Sampler | None]] = {
    "none": _none,
    "class_balanced": _class_balanced,
    "least_sampled_first": _least_sampled_first,
    "lesion_size": _lesion_size,
}
