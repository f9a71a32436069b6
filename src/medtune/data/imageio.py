"""Read an image file as the models and the dataset tools see it: one decoder, 8-bit RGB out.

:func:`read_image` is the one place the data layer decodes an image for its content (training caches,
duplicate fingerprints, ``check``); :func:`image_size` reads the size the same way without decoding.

- **Orientation**: the EXIF Orientation tag is applied (``PIL.ImageOps.exif_transpose``), so pixels
  come upright, as viewers show them, and width/height are the upright ones (the COCO polygons are
  drawn on the upright image).
- **8-bit images** (``L``, ``P``, ``RGB``, ``RGBA``, ...) go through Pillow's ``convert("RGB")``
  (alpha is dropped).
- **Deeper grey images** (16-bit PNG/TIFF, 32-bit integer or float TIFF) are scaled by the *min-max
  rule*: ``v -> round(255 * (v - min) / (max - min))``, with ``min`` and ``max`` the smallest and
  largest finite values present in that image. Nothing is clipped and order is kept (a 12-bit ramp
  keeps 256 levels); the stretch is per image, so equal raw values in two images may map to
  different levels. A constant image maps to 0 (no division by zero); NaN and infinities map to 0.
- **DICOM** (suffix ``.dcm``, or the ``DICM`` preamble at byte 128) is read with pydicom: the
  modality LUT (``RescaleSlope``/``RescaleIntercept``), then the file's VOI window
  (``WindowCenter``/``WindowWidth``, the first value when there are several; pydicom's
  ``apply_windowing``, LINEAR by default) onto 0..255, or the min-max rule when the file has no
  window; ``MONOCHROME1`` (white = low values) is inverted. Colour DICOM (RGB, YBR converted to RGB
  by pydicom) passes through when 8-bit, else it gets the min-max rule. Multi-frame files are refused.
- **Grey to RGB**: a grey image becomes three equal channels (the channel replicated), so
  3-channel backbones take it unchanged and a grey copy and its RGB copy decode alike.
- **Pixel budget**: the pixel count a header declares (width x height; DICOM: Rows x Columns x
  frames x samples) is checked before decoding against Pillow's ``Image.MAX_IMAGE_PIXELS``
  (89,478,485 by default; raise it there for larger images), and a deflated DICOM file must inflate
  to at most 4 bytes per budget pixel: a small file cannot make the decoder allocate what its header
  claims. The min-max rule works on one float32 copy (4 bytes per pixel value).

Anything it cannot read raises ``DataError("<path>: unreadable image (<why>)")``; a missing file
raises ``DataError("<path>: image file not found")``. No torch here: the dataset tools start fast.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medtune.data.cocoio import DataError

DEEP_GREY_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # grey modes with more than 8 bits
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
EXIF_ORIENTATION = 0x0112
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the dataset after the file meta is zlib
BYTES_PER_PIXEL = 4  # inflated DICOM bytes allowed per budget pixel (32-bit samples)
HEADER_SLACK = 1 << 20  # inflated bytes allowed besides the pixels (the dataset's other elements)


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM file: suffix ``.dcm`` or ``DICM`` at byte 128 (the Part 10 preamble)."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False  # the decoder that follows reports the file
    return head[128:132] == b"DICM"


def read_image(path: Path) -> Image.Image:
    """The image at ``path`` as an upright 8-bit RGB PIL image (rules in the module docstring)."""
    path = Path(path)
    try:
        if is_dicom(path):
            return Image.fromarray(_read_dicom(path)).convert("RGB")
        with warnings.catch_warnings():  # Pillow warns above the budget: refused below, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            _within_budget(path, img.width * img.height, f"{img.width} x {img.height}")
            img = ImageOps.exif_transpose(img)
            if img.mode in DEEP_GREY_MODES:
                return Image.fromarray(to_uint8(np.asarray(img))).convert("RGB")
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow and pydicom raise many types for broken files
        raise DataError(f"{path}: unreadable image ({_why(err)})") from None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of the upright image at ``path``, read from its header (no pixel decoding)."""
    path = Path(path)
    try:
        if is_dicom(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Columns), int(ds.Rows)
        with Image.open(path) as img:
            width, height = img.size
            turned = img.getexif().get(EXIF_ORIENTATION) in ROTATING_ORIENTATIONS
            return (height, width) if turned else (width, height)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as err:  # noqa: BLE001 - as in read_image
        raise DataError(f"{path}: unreadable image ({_why(err)})") from None


def pixel_budget() -> int:
    """Most pixel values an image may declare: Pillow's ``Image.MAX_IMAGE_PIXELS`` (None: no limit)."""
    return Image.MAX_IMAGE_PIXELS or np.iinfo(np.int64).max


def _within_budget(path: Path, count: int, what: str) -> None:
    """Raise :class:`DataError` when a header declares more than :func:`pixel_budget` pixel values."""
    if count > pixel_budget():
        raise DataError(
            f"{path}: image too large ({what} = {count:,} pixel values declared; the budget is {pixel_budget():,}, "
            "PIL.Image.MAX_IMAGE_PIXELS)"
        )


def to_uint8(values: np.ndarray) -> np.ndarray:
    """``values`` scaled to uint8 by the min-max rule over its finite values (constant -> 0).

    One float32 working copy, scaled in place (float64 took several 8-byte copies per pixel); float32
    holds 16-bit values exactly, and its 24-bit precision is finer than the 8-bit result.
    """
    work = np.array(values, dtype=np.float32)
    finite = np.isfinite(work)
    every = bool(finite.all())
    if not every and not finite.any():
        return np.zeros(work.shape, dtype=np.uint8)
    low = float(work.min() if every else work.min(where=finite, initial=np.inf))
    high = float(work.max() if every else work.max(where=finite, initial=-np.inf))
    if high == low:
        return np.zeros(work.shape, dtype=np.uint8)
    if not every:
        work[np.logical_not(finite, out=finite)] = low  # NaN and infinities map to 0
    work -= np.float32(low)
    work *= np.float32(255.0 / (high - low))
    np.clip(np.rint(work, out=work), 0, 255, out=work)  # float32 rounding may step past 255
    return work.astype(np.uint8)


def _read_dicom(path: Path) -> np.ndarray:
    """Pixels of a single-frame DICOM file as uint8 (H, W) grey or (H, W, 3) RGB."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    _check_inflated_size(path)
    ds = pydicom.dcmread(path, force=path.suffix.lower() == ".dcm")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, columns, samples = (int(ds.get(key, 1) or 1) for key in ("Rows", "Columns", "SamplesPerPixel"))
    _within_budget(
        path,
        rows * columns * frames * samples,
        f"Rows {rows} x Columns {columns} x {frames} frame(s) x {samples} sample(s)",
    )
    if frames > 1:
        raise DataError(f"{path}: unreadable image (multi-frame DICOM with {frames} frames; export one frame)")
    pixels = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.startswith("MONOCHROME"):
        return pixels if pixels.dtype == np.uint8 else to_uint8(pixels)
    values = apply_modality_lut(pixels, ds)
    grey = _window(values, ds) if "WindowCenter" in ds and "WindowWidth" in ds else to_uint8(values)
    return 255 - grey if photometric == "MONOCHROME1" else grey


def _check_inflated_size(path: Path) -> None:
    """A deflated DICOM file must inflate within the budget; pydicom inflates it whole, so count first.

    Streams the inflation (1 MB at a time, output discarded) and stops at the limit. Files that are
    not deflated Part 10 files are left to pydicom.
    """
    with open(path, "rb") as handle:
        head = handle.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
            return  # no Part 10 file meta: cannot be deflated
        meta = handle.read(int.from_bytes(head[140:144], "little"))
        if _transfer_syntax(meta) != DEFLATED.encode():
            return
        limit = pixel_budget() * BYTES_PER_PIXEL + HEADER_SLACK
        inflate, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := handle.read(1 << 20):
            while chunk and total <= limit:
                total += len(inflate.decompress(chunk, 1 << 20))
                chunk = inflate.unconsumed_tail
            if total > limit:
                raise DataError(
                    f"{path}: image too large (its deflated dataset inflates past {limit:,} bytes: the budget "
                    f"of {pixel_budget():,} pixel values, PIL.Image.MAX_IMAGE_PIXELS, x {BYTES_PER_PIXEL} bytes)"
                )


def _transfer_syntax(meta: bytes) -> bytes:
    """The Transfer Syntax UID (0002,0010) in a file meta group's bytes (explicit VR), or b""."""
    at = meta.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return b""
    length = int.from_bytes(meta[at + 6 : at + 8], "little")
    return meta[at + 8 : at + 8 + length].rstrip(b"\0 ")


def _window(values: np.ndarray, ds: object) -> np.ndarray:
    """The file's first VOI window applied onto 0..255 (pydicom's ``apply_windowing``)."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    # apply_windowing maps onto the range of the stored bits; an 8-bit unsigned view makes it 0..255.
    view = Dataset()
    view.PhotometricInterpretation = "MONOCHROME2"
    view.BitsStored, view.PixelRepresentation = 8, 0
    view.WindowCenter, view.WindowWidth = ds.WindowCenter, ds.WindowWidth
    if "VOILUTFunction" in ds:
        view.VOILUTFunction = ds.VOILUTFunction
    return np.rint(np.clip(apply_windowing(values, view, index=0), 0, 255)).astype(np.uint8)


def _why(err: Exception) -> str:
    """The error as one line: its message, or its type when it has none."""
    return " ".join(str(err).split()) or type(err).__name__
