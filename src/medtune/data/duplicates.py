"""Near-duplicate images: a perceptual hash proposes pairs, a thumbnail correlation confirms them.

Each image gets a fingerprint: a 128-bit hash (its 64-bit pHash, the signs of the low DCT
frequencies of a 32 x 32 grey thumbnail, and its 64-bit dHash, the signs of horizontal gradients of
a 9 x 8 thumbnail) and a 32 x 32 grey thumbnail. Of the images whose hashes differ from an image's
in at most ``threshold`` bits, the ``NEIGHBOURS`` (32) that its pooled thumbnail correlates with
best (``similarity.coarse_rows``, at least ``RANK_FLOOR``) are its *candidates*: at most 32 per
image, so the costly stage grows with the number of images, not with its square. A candidate is
confirmed when the normalised cross-correlation of the two thumbnails, under the best crop, shift
and small rotation of either one (``medtune.data.similarity``), reaches ``min_similarity``.

Frames: every correlation weighs each pixel by how much it varies across the dataset
(``similarity.content_weights``): a dermoscope's dark circle, an ultrasound fan's outline or
burnt-in text sit at the same place in most images and weigh 0, so two images are alike only
if their *content* is. The weights move with the warp, so a crop's displaced frame weighs 0 too.

No chaining: groups grow from the best confirmed pairs, and two groups merge only if at least
``COHERENCE`` (80%) of the pairs across them are confirmed too (every pair is scored, proposed by
the hash or not), so every group has >= 80% of its pairs confirmed and a chain A~B~C with A and C
unlike stays apart; and only if the pairs across score, on average, within ``TIGHTNESS`` (0.025) of
the pairs inside each group: two look-alike pictures with a copy each (copies at 0.99, the pictures
at 0.95) stay two groups, while an original's second copy joins it. A group of more than :func:`group_bound` images (10, or 2% of the dataset if
that is larger) is *suspicious*: a dataset rarely holds that many copies of one picture, a shared
acquisition artefact more likely joined them. :func:`near_grouping` returns it apart
(``Grouping.suspicious``): the tools report it in one line and do not let it constrain splits or
folds unless the setting accepts it (``Setting.accept_large``, flag ``--accept-groups``).

Why two stages: a 128-bit hash cannot tell a transformed copy from a look-alike image of the same
layout (every dermoscopy image is a centred lesion on skin); the correlation sees the details
(hairs, speckle, markers) the hash drops. ``benchmarks/near_duplicates.py`` measures the detector
on BUSI, the synthetic set and a framed synthetic set, and the defaults come from it (BENCHMARKS.md).

The dataset tools' side (their ``--near-*`` flags, the detector run over COCO files, the report
lines) is ``medtune.data.dataset_duplicates``.

No torch here: the dataset tools must start fast.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medtune.data.imageio import read_image
from medtune.data.similarity import ThumbSet, coarse_rows, content_weights, one_blas_thread, thumbnail

HASH_BITS = 128  # 64 pHash bits + 64 dHash bits
# Tuned on benchmarks/near_duplicates.py over BUSI and the synthetic set (BENCHMARKS.md): at 36 bits
# the hash proposes >= 99% of planted copies; 0.94 keeps >= 97% of them on both sets while
# union-find groups <= 0.23% of distinct pairs (a hash alone at 32 bits grouped 59-85% of the
# synthetic set's). 0.92 let look-alike pairs chain (6.7% on 780 synthetic images); 0.96 loses BUSI copies.
DEFAULT_THRESHOLD = 36
DEFAULT_SIMILARITY = 0.94
# Candidates per image, ranked by the pooled correlation: on the framed benchmark set (1,560 images)
# 99% of planted copies rank among their original's 8 best (or the reverse), all but one among 32.
NEIGHBOURS = 32
# Planted copies' pooled correlation (similarity.coarse_rows) is >= 0.53 on the three benchmark sets.
RANK_FLOOR = 0.5
ROW_BLOCK = 256  # images ranked at once: 256 x n scores (20 MB at 20,000 images)
# The local warp search raised planted copies from grid scores >= 0.89 to >= 0.94 (three benchmark
# sets; look-alikes from 0.87): pairs further below the threshold than this are not refined (half
# of the look-alike pairs that 0.08 refined, the bulk of the time).
REFINE_GAIN = 0.06
COHERENCE = 0.8  # share of the pairs across two groups that must be confirmed for them to merge
# How far the pairs across two groups may score below the pairs inside them, on average. Planted
# copies score 0.97-1.0 with their original (synthetic set, 99%), look-alikes 0.94-0.97: two copy
# pairs of look-alikes cross at 0.03-0.05 below their own level, an original's second copy at <= 0.02.
# Benchmark (BENCHMARKS.md): 0.03 left one false group of 4 per synthetic set, 0.025 none; 0.02
# lost BUSI copies (recall 0.929), 0.025 keeps 0.953: a thin margin.
TIGHTNESS = 0.025
MAX_GROUP = 10  # a group of more images than this (or than MAX_SHARE of the dataset) is suspicious
MAX_SHARE = 0.02


class Fingerprint(NamedTuple):
    """What the detector keeps of one image: its 128-bit hash (16 bytes) and grey thumbnail."""

    bits: np.ndarray
    thumb: np.ndarray


@dataclass(frozen=True)
class Setting:
    """How near two images must be: hash ``threshold`` in bits, then ``min_similarity`` of thumbnails.

    ``threshold`` 0 with ``min_similarity`` 1 keeps only images with equal hashes and thumbnails
    (exact copies); ``min_similarity`` 0 confirms every candidate that is not anti-correlated (close to
    a hash alone).
    """

    threshold: int = DEFAULT_THRESHOLD
    min_similarity: float = DEFAULT_SIMILARITY
    accept_large: bool = False  # True: suspicious (large) groups constrain splits and folds too

    @property
    def label(self) -> str:
        """The setting in the tools' reports: ``<= 36 bits, similarity >= 0.94``."""
        accepted = ", large groups accepted" if self.accept_large else ""
        return f"<= {self.threshold} bits, similarity >= {self.min_similarity:g}{accepted}"

    @property
    def key(self) -> str:
        """The setting in cache folder names: ``b36-s0.94-c0.8`` (``c``: the coherence rule; ``-a``: accepted)."""
        return f"b{self.threshold}-s{self.min_similarity:g}-c{COHERENCE:g}" + ("-a" if self.accept_large else "")


class Grouping(NamedTuple):
    """Near-duplicate groups found in a dataset.

    ``groups`` may constrain splits and folds (within :func:`group_bound`, or accepted by the
    setting); ``suspicious`` are coherent groups over the bound that the setting does not accept:
    reported, never used. ``unreadable``: file names that could not be fingerprinted.
    """

    groups: list[list]
    suspicious: list[list]
    unreadable: list[str]


def image_fingerprint(image: object) -> Fingerprint:
    """The :class:`Fingerprint` of a PIL image; colour is ignored."""
    import imagehash

    grey = image.convert("L")
    bits = np.concatenate([imagehash.phash(grey).hash.ravel(), imagehash.dhash(grey).hash.ravel()])
    return Fingerprint(np.packbits(bits), thumbnail(grey))


def file_fingerprint(path: Path) -> Fingerprint:
    """:func:`image_fingerprint` of the file as ``imageio.read_image`` decodes it; raises ``DataError`` if unreadable."""
    return image_fingerprint(read_image(path))


def group_bound(n_images: int) -> int:
    """The largest group of ``n_images`` that is trusted: 10 images, or 2% of the dataset if more."""
    return max(MAX_GROUP, int(MAX_SHARE * n_images))


def near_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of rows of ``hashes`` (n x 16 bytes) within ``threshold`` bits (every one)."""
    hashes = np.asarray(hashes, dtype=np.uint8)
    pairs = []
    for i in range(len(hashes) - 1):  # one row at a time: memory stays O(n) for large sets
        near = np.bitwise_count(hashes[i + 1 :] ^ hashes[i]).sum(axis=1) <= threshold
        pairs += [(i, i + 1 + int(j)) for j in np.flatnonzero(near)]
    return pairs


def candidate_pairs(
    hashes: np.ndarray, rows: np.ndarray, *, threshold: int, floor: float = RANK_FLOOR, k: int = NEIGHBOURS
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, where one is among the other's ``k`` best candidates.

    An image's candidates are the images within ``threshold`` bits of its hash (``hashes``: n x 16
    bytes) whose ranking row (``rows``: unit rows, :func:`similarity.coarse_rows`) has a dot product
    of at least ``floor`` with its own, best first; two flat images (zero rows) count as equal.
    """
    words = np.ascontiguousarray(hashes, dtype=np.uint8).view(np.uint64)
    rows = np.asarray(rows, dtype=np.float32)
    flat = np.linalg.norm(rows, axis=1) < 0.5
    found = [np.empty((0, 2), dtype=int)]
    for start in range(0, len(rows), ROW_BLOCK):
        block = np.arange(start, min(len(rows), start + ROW_BLOCK))
        bits = sum(np.bitwise_count(words[block, c, None] ^ words[None, :, c]).astype(np.int32) for c in range(2))
        score = np.where(flat[block, None] & flat[None], 1.0, rows[block] @ rows.T)
        score[(bits > threshold) | (score < floor)] = -np.inf
        score[np.arange(len(block)), block] = -np.inf  # not itself
        kept = min(k, len(rows) - 1)
        if kept <= 0:
            break
        best = np.argpartition(-score, kept - 1, axis=1)[:, :kept]
        ok = np.isfinite(np.take_along_axis(score, best, axis=1))
        i = np.broadcast_to(block[:, None], best.shape)[ok]
        found.append(np.stack([np.minimum(i, best[ok]), np.maximum(i, best[ok])], axis=1))
    return [tuple(map(int, pair)) for pair in np.unique(np.concatenate(found), axis=0)]


def union_groups(keys: list[Hashable], pairs: Iterable[tuple[int, int]]) -> list[list[Hashable]]:
    """Connected components (of two or more) of ``pairs`` of indices into ``keys``, in ``keys`` order."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[Hashable]] = {}
    for i, key in enumerate(keys):
        members.setdefault(root(i), []).append(key)
    return [group for group in members.values() if len(group) > 1]


class _Scores:
    """Similarity of any pair of a dataset's thumbnails under its content weights, each pair scored once."""

    def __init__(self, thumbs: np.ndarray, setting: Setting) -> None:
        self.thumbs = thumbs
        self.weights = content_weights(thumbs)
        self.prepared = ThumbSet(thumbs, self.weights)  # per-image work, done once for every call
        self.refine_from = setting.min_similarity - REFINE_GAIN
        self.known: dict[tuple[int, int], float] = {}

    def __call__(self, pairs: list[tuple[int, int]]) -> np.ndarray:
        """Scores of ``pairs`` (index pairs, either order)."""
        pairs = [(min(p), max(p)) for p in pairs]
        new = sorted({p for p in pairs if p not in self.known})
        if new:
            found = self.prepared.similarity(new, self.refine_from)
            self.known.update(zip(new, map(float, found)))
        return np.array([self.known[p] for p in pairs])


def _candidates(prints: list[Fingerprint], setting: Setting, scores: _Scores) -> list[tuple[int, int]]:
    """Each image's best hash candidates by the pooled correlation (see the module docstring)."""
    rows = coarse_rows(scores.thumbs, scores.weights)
    floor = min(RANK_FLOOR, setting.min_similarity)
    return candidate_pairs(np.stack([p.bits for p in prints]), rows, threshold=setting.threshold, floor=floor)


def confirmed_pairs(prints: list[Fingerprint], setting: Setting) -> list[tuple[int, int]]:
    """Index pairs of ``prints`` that the hash proposes and the thumbnail correlation confirms."""
    if not prints:
        return []
    with one_blas_thread():
        scores = _Scores(np.stack([p.thumb for p in prints]), setting)
        candidates = _candidates(prints, setting, scores)
        return [pair for pair, s in zip(candidates, scores(candidates)) if s >= setting.min_similarity]


def coherent_groups(
    edges: list[tuple[int, int]], scores: object, min_similarity: float, tightness: float = TIGHTNESS
) -> list[list[int]]:
    """Groups (of two or more indices) grown from ``edges`` (best first), merging only coherent groups.

    Two groups merge through an edge between them only if at least ``COHERENCE`` of all pairs
    across them score ``min_similarity`` (``scores``: index pairs -> similarities), and the mean of
    those pairs is within ``tightness`` of the mean score inside each group of two or more: copies
    of one picture score alike among themselves, two pairs of look-alikes less across than within.
    """
    owner: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    inside: dict[int, tuple[float, int]] = {}  # group -> (sum, count) of its pairs' scores
    failed: set[tuple] = set()  # (group, size, group, size) already refused: the same merge fails again
    for i, j in edges:
        a, b = (owner.setdefault(k, k) for k in (i, j))
        if a == b:
            continue
        left, right = members.setdefault(a, [a]), members.setdefault(b, [b])
        tried = (a, len(left), b, len(right))
        if tried in failed:
            continue
        cross = scores([(x, y) for x in left for y in right])
        sums = [inside.get(g, (0.0, 0)) for g in (a, b)]
        level = max((total / count for total, count in sums if count), default=-np.inf)
        if np.mean(cross >= min_similarity) < COHERENCE or cross.mean() < level - tightness:
            failed.add(tried)
            continue
        keep, drop = (a, b) if len(left) >= len(right) else (b, a)
        for k in members[drop]:
            owner[k] = keep
        members[keep] += members.pop(drop)
        inside[keep] = (sums[0][0] + sums[1][0] + float(cross.sum()), sums[0][1] + sums[1][1] + len(cross))
    return [sorted(group) for group in members.values() if len(group) > 1]


def near_grouping(prints: dict[Hashable, Fingerprint], setting: Setting) -> Grouping:
    """Coherent near-duplicate groups of keys of ``prints``: trusted and suspicious (see :class:`Grouping`)."""
    keys = list(prints)
    if not keys:
        return Grouping([], [], [])
    with one_blas_thread():
        scores = _Scores(np.stack([prints[k].thumb for k in keys]), setting)
        candidates = _candidates([prints[k] for k in keys], setting, scores)
        found = scores(candidates)
        edges = [candidates[r] for r in np.argsort(-found, kind="stable") if found[r] >= setting.min_similarity]
        grown = coherent_groups(edges, scores, setting.min_similarity)
    groups = [[keys[i] for i in g] for g in sorted(grown)]
    bound = group_bound(len(keys))
    trusted = [g for g in groups if len(g) <= bound or setting.accept_large]
    return Grouping(trusted, [g for g in groups if len(g) > bound and not setting.accept_large], [])


def near_groups(prints: dict[Hashable, Fingerprint], setting: Setting) -> list[list[Hashable]]:
    """The trusted groups of :func:`near_grouping` (those that may constrain splits and folds)."""
    return near_grouping(prints, setting).groups
