"""Where a launch keeps its search: Ray's experiment folder, and the driver's own folder beside it.

``--storage-path`` is a local (or mounted) folder, a ``file://`` URI, or a bucket URI that pyarrow
opens (``s3://bucket/prefix``, ``gs://bucket/prefix``; a query such as
``?endpoint_override=http://host:9000`` reaches pyarrow as is, credentials come from the environment
or the client's config files as for any AWS or GCP client, never from the URI, which is stored with the
launch). Ray writes its experiment state and the trials' checkpoints there from
every node. What only the driver reads (its unsent trial writes and, without a sqlite MLflow store,
its Optuna study) stays on the driver's disk: in the experiment folder when that is local, under
``--cache-dir``/launches/<experiment> when it is a bucket.
"""

from __future__ import annotations

import re
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs

from medtune.tracking.redact import redact_uri
from medtune.tracking.store import TrackingError

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
BUCKETS = ("s3", "gs", "gcs")  # what pyarrow's FileSystem.from_uri opens besides local paths (and hdfs)
DRIVER_FOLDER = "launches"  # under --cache-dir: the driver's folder of a launch whose results are in a bucket
PROBE = ".medtune-write-probe"  # the object (or file) the storage check writes and deletes


def storage_root(text: str | Path) -> str:
    """``--storage-path`` as Ray's storage path: an absolute local folder, or the bucket URI as typed.

    Raises:
        TrackingError: an unknown scheme, or a bucket URI without a bucket (one line, naming the flag).
    """
    text = str(text)
    scheme = SCHEME.match(text)
    if scheme is None:
        return str(Path(text).resolve())
    name = scheme[1].lower()
    if name == "file":
        return str(Path("/" + text[scheme.end() :].lstrip("/")).resolve())
    if name not in BUCKETS:
        raise TrackingError(
            f"--storage-path {text}: expected a folder, file:///folder or a bucket URI ({', '.join(BUCKETS)}://...)"
        )
    parts = urllib.parse.urlsplit(text)
    if not parts.netloc:
        raise TrackingError(f"--storage-path {text}: expected {name}://<bucket>/<prefix>")
    bare = redact_uri(text)  # the one user-info rule (an AWS secret's unescaped '/' included)
    if bare != text:  # user-info: pyarrow would take it as the key and secret, and the launch records the path
        raise TrackingError(
            f"--storage-path {bare}: credentials in the URI are refused (the path is recorded with the launch); "
            "give them in the environment (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the client's config files"
        )
    return text


def is_remote(root: str) -> bool:
    return SCHEME.match(root) is not None


def why(err: Exception) -> str:
    """A filesystem error as one line (pyarrow's S3 and GCS messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def split(ray: str) -> tuple[str, str]:
    """``ray`` as (its parent, its name): the inverse of ``join``."""
    if not is_remote(ray):
        return str(Path(ray).parent), Path(ray).name
    parts = urllib.parse.urlsplit(ray)
    parent, name = parts.path.rstrip("/").rsplit("/", 1)
    return urllib.parse.urlunsplit(parts._replace(path=parent)), name


def join(root: str, name: str) -> str:
    """``root``/``name``, a URI's query kept at its end (``s3://b/p?q`` -> ``s3://b/p/name?q``)."""
    if not is_remote(root):
        return str(Path(root) / name)
    parts = urllib.parse.urlsplit(root)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


@dataclass(frozen=True)
class Location:
    """One launch's search.

    Attributes:
        ray: Ray's experiment folder: an absolute local folder, or a bucket URI (with its query).
        driver: the driver's folder for what only it reads; ``ray`` itself when that is local.
    """

    ray: str
    driver: Path

    @property
    def name(self) -> str:
        return self.driver.name

    @property
    def root(self) -> str:
        """Ray's storage path: the folder (or URI) of the experiment folders."""
        return split(self.ray)[0]

    def filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """The filesystem holding ``ray`` and the experiment folder's path in it."""
        if not is_remote(self.ray):
            return pyarrow.fs.LocalFileSystem(), self.ray
        return pyarrow.fs.FileSystem.from_uri(self.ray)


def location(ray: str, cache_dir: Path) -> Location:
    """The launch whose Ray experiment folder is ``ray`` (a new one, or the one a parent run records)."""
    if not is_remote(ray):
        return Location(ray, Path(ray))
    return Location(ray, cache_dir.resolve() / DRIVER_FOLDER / split(ray)[1])


def check_reachable(root: str) -> None:
    """Fail now, in one line, on a storage path the search could not write: a local path under a file or
    in a folder that refuses writes (permissions, a read-only mount); a bucket that does not exist, cannot
    be reached (endpoint, credentials) or cannot be written (read-only credentials, a bucket policy).

    A probe (``PROBE`` and a random suffix) is written and deleted: in the deepest existing folder of a
    local path (the folders still to be made are left to Ray), under the prefix of a bucket. Nothing
    else is created.

    Raises:
        TrackingError: naming ``--storage-path`` and what is wrong.
    """
    if not is_remote(root):
        _probe_folder(root)
        return
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(root)
        bucket = fs.get_file_info(path.split("/", 1)[0])
    except (OSError, ValueError) as err:  # pyarrow's errors are OSError (and ArrowInvalid, a ValueError)
        raise TrackingError(f"--storage-path {root}: cannot reach it ({why(err)})") from None
    if bucket.type != pyarrow.fs.FileType.Directory:
        raise TrackingError(f"--storage-path {root}: no bucket '{bucket.path}' there (create it first)")
    probe = f"{path.rstrip('/')}/{PROBE}-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"medtune")
    except OSError as err:
        raise TrackingError(f"--storage-path {root}: cannot write there ({why(err)})") from None
    try:
        fs.delete_file(probe)
    except OSError as err:  # Ray replaces its state files and the launch deletes checkpoints: both need deletes
        raise TrackingError(f"--storage-path {root}: can write but not delete there ({why(err)})") from None


def _probe_folder(root: str) -> None:
    """Write and delete a probe file in the deepest existing folder of local path ``root``."""
    existing = Path(root)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TrackingError(f"--storage-path {root}: cannot write there ({existing} is a file, not a folder)")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=PROBE):  # deleted on close
            pass
    except OSError as err:
        raise TrackingError(f"--storage-path {root}: cannot write there ({err.strerror} in {existing})") from None
