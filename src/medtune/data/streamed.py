"""Write a ``torch.save`` file whose big tensors arrive in batches, so memory never holds them whole.

``torch.serialization.skip_data`` makes ``torch.save`` lay the file out as usual (the pickle, one zip
record per storage at its 64-byte alignment) but leave every storage's bytes as a hole. A load of that
file to ``map_location="meta"`` tells where each storage's bytes start (``_checkpoint_offset``);
:func:`save_streamed` writes them there with plain file writes, batch by batch (the page cache holds
what is written, not this process's memory), then puts each record's CRC-32 where ``torch.save`` puts
it: the record's data descriptor and its central directory entry (the local header's stays 0, as
``torch.save`` leaves it). Every record of the result then holds what ``torch.save`` of the whole
tensors would write; two saves of the same tensors differ anyway in the archive name and the random
serialization id, which loading ignores.

Each storage's offset is checked against the zip's own directory (a record of that size must start
there and a data descriptor must follow it): a torch whose layout differs fails here, not on load.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

CENTRAL, DESCRIPTOR = b"PK\x01\x02", b"PK\x07\x08"  # zip signatures: central directory entry, data descriptor


@dataclass(frozen=True)
class Stream:
    """Which entries of a saved dict are written from batches, and the batches.

    Args:
        keys: top-level entries whose tensor is a placeholder (``torch.empty`` of the final shape and
            dtype, contiguous: its memory is never touched) filled from ``batches``.
        batches: successive slices along the first dimension, as numpy arrays of the tensor's dtype,
            one per key in each batch; concatenated they are the tensor.
    """

    keys: Collection[str]
    batches: Iterable[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class _Record:
    size: int
    crc_at: tuple[int, int]  # file offsets of its CRC-32: in the data descriptor, in the central directory


def save_streamed(tensors: dict, path: Path, stream: Stream) -> None:
    """``torch.save(tensors, path)``, the entries named in ``stream`` written from its batches.

    Entries not in ``stream.keys`` (tensors, or lists of tensors) are written from their own memory.

    Raises:
        ValueError: the batches gave more or fewer bytes than a streamed tensor holds, or a key not in
            ``stream.keys``.
    """
    with torch.serialization.skip_data():
        torch.save(tensors, path)
    placed = torch.load(path, map_location="meta", weights_only=True)
    records = _records(Path(path))
    crcs: dict[int, int] = {}  # data offset -> CRC-32 of its bytes
    with open(path, "r+b") as out:
        for key, value in tensors.items():
            if key in stream.keys:
                continue
            for real, meta in zip(_flat(value), _flat(placed[key]), strict=True):
                data = torch.empty(0, dtype=torch.uint8).set_(real.untyped_storage()).numpy().tobytes()
                if data:
                    offset = _data_offset(meta, records)
                    out.seek(offset)
                    out.write(data)
                    crcs[offset] = zlib.crc32(data)
        crcs.update(_write_batches(out, {k: _data_offset(placed[k], records) for k in stream.keys}, tensors, stream))
        for offset, crc in crcs.items():
            for at in records[offset].crc_at:
                out.seek(at)
                out.write(struct.pack("<I", crc))


def _write_batches(out: BinaryIO, offsets: dict[str, int], tensors: dict, stream: Stream) -> dict[int, int]:
    """Write each batch at its tensor's running position; return data offset -> CRC-32 per streamed key."""
    written, crcs = dict.fromkeys(offsets, 0), dict.fromkeys(offsets, 0)
    sizes = {k: _placeholder_bytes(tensors[k], k) for k in offsets}
    for batch in stream.batches:
        for key, array in batch.items():
            if key not in offsets:
                raise ValueError(f"batch entry '{key}' is not a streamed key ({', '.join(offsets)})")
            data = memoryview(np.ascontiguousarray(array, dtype=_numpy_dtype(tensors[key]))).cast("B")
            if written[key] + len(data) > sizes[key]:
                raise ValueError(f"batches for '{key}' exceed its {sizes[key]} bytes")
            out.seek(offsets[key] + written[key])
            out.write(data)
            crcs[key] = zlib.crc32(data, crcs[key])
            written[key] += len(data)
    short = {k: f"{written[k]} of {sizes[k]} bytes" for k in offsets if written[k] != sizes[k]}
    if short:
        raise ValueError(f"batches ended early: {short}")
    return {offsets[k]: crcs[k] for k in offsets if sizes[k]}


def _placeholder_bytes(tensor: torch.Tensor, key: str) -> int:
    """Bytes of a placeholder, which must be the whole of its storage (what ``torch.save`` writes)."""
    nbytes = tensor.numel() * tensor.element_size()
    if not tensor.is_contiguous() or tensor.storage_offset() or tensor.untyped_storage().nbytes() != nbytes:
        raise ValueError(f"'{key}': a streamed tensor must be a whole contiguous storage (torch.empty)")
    return nbytes


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype


def _flat(value: object) -> Iterator[torch.Tensor]:
    """The tensors of a saved entry: the tensor itself, or each tensor of a list."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _flat(item)
    else:
        raise TypeError(f"expected a tensor or a list of tensors, got {type(value).__name__}")


def _data_offset(meta: torch.Tensor, records: dict[int, _Record]) -> int:
    """Where ``meta``'s storage bytes start in the file, checked against the zip directory."""
    storage = meta.untyped_storage()
    offset, nbytes = storage._checkpoint_offset, storage.nbytes()
    record = records.get(offset)
    if nbytes and (record is None or record.size != nbytes):
        raise RuntimeError(f"torch placed a storage of {nbytes} bytes at {offset}, where the zip has no such record")
    return offset


def _records(path: Path) -> dict[int, _Record]:
    """Data offset -> size and CRC positions of every record with data that has a data descriptor."""
    with zipfile.ZipFile(path) as archive:
        infos, central = archive.infolist(), archive.start_dir
    out: dict[int, _Record] = {}
    with open(path, "rb") as f:
        for info in infos:
            f.seek(central)
            entry = f.read(46)
            if entry[:4] != CENTRAL:
                raise RuntimeError(f"{path}: no central directory entry at {central}")
            name_len, extra_len, comment_len = struct.unpack("<HHH", entry[28:34])
            crc_central, central = central + 16, central + 46 + name_len + extra_len + comment_len
            f.seek(info.header_offset + 26)
            local_name, local_extra = struct.unpack("<HH", f.read(4))
            start = info.header_offset + 30 + local_name + local_extra
            f.seek(start + info.file_size)
            if info.file_size and f.read(4) == DESCRIPTOR:
                out[start] = _Record(info.file_size, (start + info.file_size + 4, crc_central))
    return out
