"""A cache (``medtune.data.cache``) as plain numpy arrays and back: how the driver hands caches to trials.

A cluster need not share a disk, so trials cannot open the driver's cache files. The driver puts each
cache once into a store that every node can read (Ray's object store, ``trainables.trial``) in the form
``to_arrays`` gives, and each trial turns what it gets back into the dict ``load_cache`` returns with
``from_arrays``; ``CachedDataset`` and the ``balanced`` loss weights take that dict as they take a path.

Why numpy: Ray maps numpy arrays from its shared memory without copying (once per node, shared by
every trial there), while torch tensors it would unpickle into a private copy per trial. The arrays it
returns are read-only; ``from_arrays`` wraps them as tensors without copying, and nothing writes to them
(datasets index, augment and normalise into new tensors). Ray-free: the put and the get are in trainables/.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Ragged:
    """A list of 1-D tensors (each image's label set) as one flat array and row offsets (len(list) + 1)."""

    values: np.ndarray
    offsets: np.ndarray


Arrays = dict[str, "np.ndarray | Ragged"]


def to_arrays(cache: Mapping[str, object]) -> Arrays:
    """``cache`` (``load_cache``'s dict: tensors, and lists of 1-D tensors) as numpy arrays, without copying tensors."""
    out: Arrays = {}
    for key, value in cache.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.numpy()
        elif isinstance(value, list) and all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in value):
            lengths = [len(v) for v in value]
            values = torch.cat(value).numpy() if value else np.zeros(0, dtype=np.int64)
            out[key] = Ragged(values, np.cumsum([0, *lengths], dtype=np.int64))
        else:
            raise TypeError(
                f"cache entry '{key}': expected a tensor or a list of 1-D tensors, got {type(value).__name__}"
            )
    return out


def from_arrays(arrays: Arrays) -> dict:
    """The dict ``load_cache`` returns, as tensors viewing ``arrays`` (read-only memory is fine: nothing writes)."""
    with warnings.catch_warnings():  # torch warns once that a read-only array makes a non-writable tensor
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        out: dict = {}
        for key, value in arrays.items():
            if isinstance(value, Ragged):
                flat, ends = torch.from_numpy(value.values), value.offsets.tolist()
                out[key] = [flat[start:end] for start, end in zip(ends[:-1], ends[1:])]
            else:
                out[key] = torch.from_numpy(value)
    return out


def nbytes(arrays: Arrays) -> int:
    """Bytes of ``arrays`` (what one handed-over cache takes in the store)."""
    parts = [p for v in arrays.values() for p in ((v.values, v.offsets) if isinstance(v, Ragged) else (v,))]
    return sum(p.nbytes for p in parts)
