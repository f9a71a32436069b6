"""COCO files for the dataset tools and the runtime: reading them with one-line errors, writing atomically.

``load_coco`` and ``require_keys`` read a COCO JSON file and raise :class:`DataError` naming the file
and key; ``fail`` turns that error into the tools' one line and exit status 2. ``atomic_file`` is the
project's one atomic write (JSON here, tensor caches in ``medtune.data.cache``, the trial logger's
spool). ``escapes`` refuses image names that leave their folder. What a segmentation may be, and its
mask, are in ``medtune.data.masks``. No torch here: the tools must start fast.

Image folder convention, in order: ``--images DIR``; else ``info.images_dir`` in the COCO file
(written by ``split`` and the other tools when their output lies away from the images); else the
folder ``images/`` next to the JSON if it exists; else the JSON's own folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath


class DataError(ValueError):
    """A user-facing dataset problem; its message is one line naming the file and key."""


def fail(err: Exception) -> int:
    """Print ``err`` as one line on stderr and return the exit status for user errors (2)."""
    print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def load_coco(path: Path) -> dict:
    """Read a COCO JSON file; raises :class:`DataError` naming the file and the bad key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a COCO JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: key '{key}' missing or not a list")
    if not isinstance(data.get("info", {}), dict):
        raise DataError(f"{path}: key 'info' must be an object")
    return data


REQUIRED_KEYS = {
    "images": {"id": int, "file_name": str},
    "annotations": {"id": int, "image_id": int, "category_id": int},
    "categories": {"id": int, "name": str},
}


def require_keys(path: Path, coco: dict) -> dict:
    """Raise :class:`DataError` at the first entry lacking a key the tools rely on; returns ``coco``."""
    for key, fields in REQUIRED_KEYS.items():
        for i, entry in enumerate(coco[key]):
            for name, kind in fields.items():
                value = entry.get(name) if isinstance(entry, dict) else None
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise DataError(
                        f"{path}: {key}[{i}] needs {kind.__name__} '{name}' (run `python -m medtune.data check`)"
                    )
    return coco


def images_dir_for(coco_path: Path, coco: dict, images: Path | None = None) -> Path:
    """The absolute image folder of ``coco_path`` (see the module docstring for the order)."""
    coco_path = Path(coco_path)
    if images is not None:
        found = Path(images).expanduser()
        if not _is_dir(found):
            raise DataError(f"--images {images}: no such folder")
        return found.resolve()
    explicit = (coco.get("info") or {}).get("images_dir")
    if explicit is not None and (not isinstance(explicit, str) or "\0" in explicit):
        raise DataError(f"{coco_path}: key 'info.images_dir': expected a folder path, got {explicit!r:.80}")
    if explicit:
        try:
            found = (coco_path.parent / Path(explicit).expanduser()).resolve()
        except RuntimeError:  # "~someone" with no such user
            raise DataError(f"{coco_path}: key 'info.images_dir': cannot expand {explicit!r:.80}") from None
        if not _is_dir(found):
            raise DataError(
                f"{coco_path}: key 'info.images_dir': no such folder {str(found)!r:.200} (or pass --images)"
            )
        return found
    return default_images_dir(coco_path)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # name too long, embedded NUL byte
        return False


def default_images_dir(coco_path: Path) -> Path:
    """``images/`` next to the JSON if that folder exists, else the JSON's folder (absolute)."""
    beside = Path(coco_path).parent / "images"
    return beside.resolve() if beside.is_dir() else Path(coco_path).parent.resolve()


def record_images_dir(coco: dict, out_path: Path, images_dir: Path) -> dict:
    """Write ``info.images_dir`` into ``coco`` unless ``out_path`` would find ``images_dir`` anyway."""
    info = dict(coco.get("info") or {})
    info.pop("images_dir", None)
    if default_images_dir(out_path) != Path(images_dir).resolve():
        info["images_dir"] = str(Path(images_dir).resolve())
    coco["info"] = info
    return coco


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces ``path`` (``os.replace``) when the body succeeds.

    The one atomic write of the project (JSON here, tensor caches in ``medtune.data.cache``):
    readers, including concurrent builders of the same file, never see half a file; on failure the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` through ``atomic_file`` (never half-written)."""
    try:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot write ({err.strerror})") from None


def escapes(file_name: str) -> str | None:
    """How ``file_name`` would leave the image folder ('absolute' or 'escaping' by '..'), or None."""
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute():
        return "absolute"
    if file_name.startswith(("/", "\\")) or PureWindowsPath(file_name).drive:
        return "absolute"
    if ".." in PureWindowsPath(file_name).parts:  # Windows parts split on both / and \
        return "escaping"
    return None
