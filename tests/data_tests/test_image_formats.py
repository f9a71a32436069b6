"""Medical image input: 16-bit scaling, DICOM, EXIF orientation, and keys that follow image bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtune.data.__main__ import main
from medtune.data.cache import build_cache, load_cache
from medtune.data.coco import resolve_dataset
from medtune.data.cocoio import DataError
from medtune.data.imageio import image_size, read_image
from medtune.data.tools.synth import generate


def write_dicom(path: Path, pixels: np.ndarray, **elements: object) -> Path:
    """A minimal single-frame uncompressed DICOM file (Part 10, explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_16bit_png_ramp_keeps_order_and_spread(tmp_path: Path) -> None:
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit value once, row-major
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    grey = np.asarray(read_image(tmp_path / "ramp.png"))
    # Replicated to 3 equal channels; min-max maps 0 -> 0 and 4095 -> 255.
    assert grey.shape == (64, 64, 3) and (grey[..., 0] == grey[..., 2]).all()
    flat = grey[..., 0].ravel().astype(int)
    assert flat[0] == 0 and flat[-1] == 255 and (np.diff(flat) >= 0).all()
    # Clipping (the old convert("RGB")) kept 256 levels below 255 and sent 94% of pixels to 255.
    assert len(np.unique(flat)) == 256 and (flat == 255).mean() < 0.01


def test_constant_16bit_and_float_images_do_not_divide_by_zero(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)).save(tmp_path / "flat.png")
    values = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "float.tif")
    assert (np.asarray(read_image(tmp_path / "flat.png")) == 0).all()
    floats = np.asarray(read_image(tmp_path / "float.tif"))[..., 0]
    assert floats.min() == 0 and floats.max() == 255 and (np.diff(floats.ravel().astype(int)) >= 0).all()


def test_dicom_rescale_window_and_monochrome1(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 200, 300], [400, 500, 600, 700]], dtype=np.uint16)
    # Slope 2, intercept -200: values -200..1200. Window centre 500.5, width 401 (LINEAR, DICOM
    # PS3.3 C.11.2.1.2): <= 300 -> 0, > 700 -> 255, between ((v - 500) / 400 + 0.5) * 255.
    path = write_dicom(
        tmp_path / "scan.dcm",
        stored,
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-200,
        WindowCenter=[500.5, 40],
        WindowWidth=[401, 80],
    )
    values = stored * 2.0 - 200
    windowed = np.rint(np.clip(((values - 500) / 400 + 0.5) * 255, 0, 255))
    expected = (255 - windowed).astype(np.uint8)  # MONOCHROME1: low values are white
    got = np.asarray(read_image(path))
    assert (got[..., 0] == expected).all() and (got[..., 1] == got[..., 2]).all()
    assert expected.tolist()[0] == [255, 255, 255, 191]  # hand check: stored 300 is 400 -> 255 - 64
    assert image_size(path) == (4, 2)


def test_dicom_without_window_uses_min_max_and_preamble_without_suffix(tmp_path: Path) -> None:
    stored = np.array([[10, 20], [30, 40]], dtype=np.uint16)
    path = write_dicom(tmp_path / "plain", stored)  # no suffix: found by the DICM preamble
    assert np.asarray(read_image(path))[..., 0].tolist() == [[0, 85], [170, 255]]


def test_exif_rotated_jpeg_loads_upright(tmp_path: Path) -> None:
    upright = np.zeros((24, 40, 3), dtype=np.uint8)
    upright[:, :20] = (250, 20, 20)  # left half red, right half blue: a turn shows
    upright[:, 20:] = (20, 20, 250)
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    # Pixels stored a quarter turn counter-clockwise, tagged Orientation 6 ("turn 90 degrees
    # clockwise to display"), as a camera held sideways writes them.
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "tagged.jpg", quality=95, exif=exif)
    reference = np.asarray(read_image(tmp_path / "upright.jpg")).astype(int)
    loaded = np.asarray(read_image(tmp_path / "tagged.jpg")).astype(int)
    assert loaded.shape == reference.shape and image_size(tmp_path / "tagged.jpg") == (40, 24)
    assert np.abs(loaded - reference).mean() < 4  # JPEG noise only


def test_unreadable_image_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom file")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for name in ("bad.dcm", "bad.png"):
        with pytest.raises(DataError, match=f"{name}: unreadable image") as err:
            read_image(tmp_path / name)
        assert "\n" not in str(err.value)


def test_replacing_an_image_changes_fingerprint_and_cache(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(data, n=12, size=32, seed=0)
    before = resolve_dataset(data, cache_root=tmp_path / "cache")
    old_cache = build_cache(before, "train", 16, tmp_path / "cache")
    first = json.loads((data / "train.json").read_text())["images"][0]["file_name"]
    image = data / "images" / first
    Image.fromarray(255 - np.asarray(Image.open(image).convert("RGB"))).save(image)  # same name, new bytes
    after = resolve_dataset(data, cache_root=tmp_path / "cache")
    new_cache = build_cache(after, "train", 16, tmp_path / "cache")
    # The JSON files did not change; the image bytes did, so fingerprint and cache file follow.
    assert after.fingerprint != before.fingerprint and new_cache != old_cache
    assert not load_cache(new_cache)["images"].equal(load_cache(old_cache)["images"])
    assert resolve_dataset(data, cache_root=tmp_path / "cache").fingerprint == after.fingerprint  # stable


def test_check_and_stats_accept_a_dicom_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "images").mkdir()
    write_dicom(tmp_path / "images" / "a.dcm", np.arange(48, dtype=np.uint16).reshape(6, 8) * 80)
    coco = {
        "images": [{"id": 1, "file_name": "a.dcm", "width": 8, "height": 6}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 6, 1, 6, 4]], "area": 7.5}],
        "categories": [{"id": 1, "name": "lesion"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    # Decoded, sized (8x6 matches the JSON) and fingerprinted: no unreadable_file, no size_mismatch.
    code, out = main(["check", "--coco", str(tmp_path / "c.json")]), capsys.readouterr().out
    assert code == 0 and "no problems found" in out, out
    del coco["images"][0]["width"], coco["images"][0]["height"]  # stats then reads the DICOM header
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert main(["stats", "--coco", str(tmp_path / "c.json"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["sizes"]["most_common"] == [["8x6", 1]] and stats["duplicate_groups"]["unreadable"] == 0


def test_declared_pixel_counts_are_checked_against_the_budget_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # the budget follows Pillow's knob
    Image.fromarray(np.zeros((100, 150), dtype=np.uint16)).save(tmp_path / "wide.png")  # 15,000: Pillow only warns
    write_dicom(tmp_path / "wide.dcm", np.zeros((100, 150), dtype=np.uint16))
    small = pydicom.dcmread(write_dicom(tmp_path / "small.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8)))
    small.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    small.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    small.PixelData = bytes(2 << 20)  # 8x8 declared, 2 MB inside: inflates past 10,000 x 4 bytes + 1 MB
    small.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    expected = {
        "wide.png": "150 x 100 = 15,000 pixel values declared; the budget is 10,000",
        "wide.dcm": "Rows 100 x Columns 150 x 1 frame(s) x 1 sample(s) = 15,000",
        "bomb.dcm": "deflated dataset inflates past 1,088,576 bytes",
    }
    for name, detail in expected.items():
        with pytest.raises(DataError) as err:
            read_image(tmp_path / name)
        # One line naming the file and the budget, raised before the pixels are decoded.
        assert str(err.value).startswith(f"{tmp_path / name}: image too large (") and detail in str(err.value)
        assert "\n" not in str(err.value)
    # A deflated file within the budget decodes as before.
    assert np.asarray(read_image(tmp_path / "deflated.dcm"))[..., 0].ravel().tolist() == [
        round(v * 255 / 63) for v in range(64)
    ]


def test_min_max_scaling_works_in_one_float32_copy() -> None:
    import tracemalloc

    from medtune.data.imageio import to_uint8

    ramp = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256).repeat(4, axis=0)  # 262,144 values
    tracemalloc.start()
    try:
        out = to_uint8(ramp)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # float32 work array (4 bytes a value), the finite mask and the uint8 result: 6 bytes a value.
    # Float64 took 8 bytes a value per copy, several copies (over 30 bytes a value).
    assert peak < 7 * ramp.size, peak / ramp.size
    reference = np.rint(ramp.astype(np.float64) * (255.0 / 65535)).astype(np.uint8)
    assert out.dtype == np.uint8 and (out == reference).all()
    odd = np.array([np.nan, -np.inf, 1.0, 3.0, np.inf], dtype=np.float64)
    assert to_uint8(odd).tolist() == [0, 0, 0, 255, 0]  # non-finite values map to 0
