"""image_io: PNG / JPEG / DICOM / arrays -> grayscale uint8, checked against hand-computed values.

DICOM files are written here with pydicom (uncompressed, explicit VR little endian), so every
expected pixel follows from the DICOM rules by hand: MONOCHROME1 inversion, the LINEAR window of
PS3.3 C.11.2.1.2.1, ITU-R 601-2 luma for RGB.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mavilt_jax import image_io
from mavilt_jax.image_io import ImageError

pydicom = pytest.importorskip("pydicom", reason="pydicom is not installed (pip install pydicom)")


def write_dicom(path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None):
    """An uncompressed single-frame DICOM file of ``pixels`` ([H, W] gray or [H, W, 3] RGB)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits_stored or bits, (bits_stored or bits) - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_is_inverted(tmp_path):
    pixels = np.array([[0, 100, 200, 255]] * 8, np.uint8).repeat(2, axis=1)  # [8, 8]
    path = write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    # no window: min-max over [0, 255] is the identity, then 255 - x
    expected = np.array([[255, 155, 55, 0]] * 8, np.uint8).repeat(2, axis=1)
    np.testing.assert_array_equal(image_io.read_pixels(path), expected)
    np.testing.assert_array_equal(image_io.read_pixels(path.read_bytes()), expected)  # bytes: found by "DICM"


def test_16_bit_with_window(tmp_path):
    # 12 bits stored in 16; window centre 2048, width 1024 (LINEAR): c' = 2047.5, w' = 1023,
    # x <= 1536 -> 0, x > 2559 -> 255, between: ((x - 2047.5) / 1023 + 0.5) * 255.
    values = np.array([0, 1000, 1536, 1800, 2048, 2300, 2559, 3000, 4095, 4095], np.uint16)
    pixels = np.tile(values, (8, 1))  # [8, 10]
    path = write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, window=(2048, 1024))
    by_hand = [0, 0, 0, ((1800 - 2047.5) / 1023 + 0.5) * 255, ((2048 - 2047.5) / 1023 + 0.5) * 255,
               ((2300 - 2047.5) / 1023 + 0.5) * 255, ((2559 - 2047.5) / 1023 + 0.5) * 255, 255, 255, 255]
    assert np.round(by_hand).tolist() == [0, 0, 0, 66, 128, 190, 255, 255, 255, 255]
    np.testing.assert_array_equal(image_io.read_pixels(path)[0], np.round(by_hand).astype(np.uint8))


def test_16_bit_without_window_is_min_max(tmp_path):
    pixels = np.tile(np.array([100, 1100, 2100, 4100], np.uint16), (8, 2))  # [8, 8]
    path = write_dicom(tmp_path / "nw.dcm", pixels, bits_stored=16)
    # (x - 100) / 4000 * 255 -> 0, 63.75, 127.5, 255 -> rounded half to even: 0, 64, 128, 255
    np.testing.assert_array_equal(image_io.read_pixels(path)[0, :4], [0, 64, 128, 255])


def test_rescale_then_window_then_monochrome1(tmp_path):
    # stored 0..3 with slope 100, intercept -50 -> -50, 50, 150, 250; window centre 100.5 width 101
    # (LINEAR: c' = 100, w' = 100 -> 50 -> 0, 150 -> 255 ... below/above clip), then inverted.
    pixels = np.tile(np.array([0, 1, 2, 3], np.uint16), (8, 2))
    path = write_dicom(tmp_path / "r.dcm", pixels, bits_stored=12, window=(100.5, 101), rescale=(100.0, -50.0),
                       photometric="MONOCHROME1")
    # -50 <= 50 -> y_min; 50 <= 50 -> y_min; 150 > 150? no: between -> ((150 - 100) / 100 + 0.5) = 1.0 -> y_max;
    # 250 > 150 -> y_max. Gray 0, 0, 255, 255, inverted: 255, 255, 0, 0.
    np.testing.assert_array_equal(image_io.read_pixels(path)[0, :4], [255, 255, 0, 0])


def test_rgb_dicom_and_png_use_itu_luma(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :2] = (255, 0, 0)
    rgb[:, 2:4] = (0, 255, 0)
    rgb[:, 4:6] = (0, 0, 255)
    rgb[:, 6:] = (10, 20, 30)
    # L = 0.299 R + 0.587 G + 0.114 B: 76.245, 149.685, 29.07, 18.15 (PIL rounds with 16-bit fixed point)
    expected = np.array([76, 76, 150, 150, 29, 29, 18, 18], np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    np.testing.assert_array_equal(image_io.read_pixels(path)[0], expected)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(image_io.read_pixels(tmp_path / "rgb.png")[0], expected)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 7, np.uint8)], -1)  # alpha is dropped
    np.testing.assert_array_equal(image_io.read_pixels(rgba)[0], expected)


def test_16_bit_png_and_arrays_are_min_max():
    pixels = np.tile(np.array([1000, 2000, 3000, 5000], np.uint16), (8, 2))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    # (x - 1000) / 4000 * 255: 0, 63.75, 127.5, 255
    np.testing.assert_array_equal(image_io.read_pixels(buffer.getvalue())[0, :4], [0, 64, 128, 255])
    np.testing.assert_array_equal(image_io.read_pixels(pixels.astype(np.float32) / 5000)[0, :4], [0, 64, 128, 255])
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(image_io.read_pixels(gray[..., None]), gray)  # uint8 kept as is
    np.testing.assert_array_equal(image_io.read_pixels(Image.fromarray(gray)), gray)


def test_square_resize_center_crops_like_the_builders():
    # 8 x 12 -> the middle 8 columns (2 cut each side); at size 8 no resampling happens.
    pixels = np.arange(96, dtype=np.uint8).reshape(8, 12)
    np.testing.assert_array_equal(image_io.square_resize(pixels, 8), pixels[:, 2:10])
    # 11 x 8: margin 3 -> top 1, bottom 2 (integer division)
    tall = np.arange(88, dtype=np.uint8).reshape(11, 8)
    np.testing.assert_array_equal(image_io.square_resize(tall, 8), tall[1:9])
    # a resize is PIL's Lanczos of the crop
    big = np.random.default_rng(0).integers(0, 256, (40, 30), np.uint8)
    want = np.asarray(Image.fromarray(big[5:35]).resize((16, 16), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(image_io.load_radiograph(big, 16)[..., 0], want)
    assert image_io.load_radiograph(big, 16).shape == (16, 16, 1)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((16,), np.uint8), "shape"),
    (np.zeros((2, 16, 16, 1), np.uint8), "shape"),
    (np.zeros((16, 16, 2), np.uint8), "shape"),
    (np.zeros((16, 1), np.uint8), "1x16"),
    (np.zeros((1, 300), np.uint8), "300x1"),
    (np.full((16, 16), np.nan), "NaN"),
    (np.zeros((16, 16), bool), "integers or floats"),
    (b"", "empty"),
    (b"certainly not an image", "not a readable"),
    (42, "expected a path"),
])
def test_unusable_inputs_raise_image_error(bad, message):
    with pytest.raises(ImageError, match=message):
        image_io.read_pixels(bad)


def test_unusable_files_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        image_io.read_pixels(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("a text file with an image suffix")
    with pytest.raises(ImageError, match="not a readable"):
        image_io.read_pixels(tmp_path / "notes.png")
    Image.fromarray(np.zeros((1, 64), np.uint8)).save(tmp_path / "line.png")
    with pytest.raises(ImageError, match="cannot be a radiograph"):
        image_io.read_pixels(tmp_path / "line.png")
    good = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(good, format="PNG")
    (tmp_path / "cut.png").write_bytes(good.getvalue()[:40])
    with pytest.raises(ImageError):
        image_io.read_pixels(tmp_path / "cut.png")
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 50)
    with pytest.raises(ImageError, match="DICOM"):
        image_io.read_pixels(tmp_path / "broken.dcm")
