"""Radiographs from files and arrays (PNG, JPEG, DICOM, numpy, PIL) -> the model's grayscale input.

Three small steps, each usable alone:

  `read_pixels(source)`        any supported source -> grayscale uint8 [H, W] at full resolution
  `square_resize(pixels, size)` center crop to a square, then resize to ``size`` -> uint8 [size, size]
  `load_radiograph(source, size)` both, plus the trailing channel: uint8 [size, size, 1]

The geometry is the one the training data went through (`tfds_builders/radiographs.py`): a center
crop to the largest square (no borders, pixel aspect kept), then a Lanczos resize. The result is
what `models.vqgan.to_model_range` takes.

Intensity rules (every source ends as uint8, 0 black, 255 white):
  - uint8 grayscale is kept as it is;
  - colour (RGB, RGBA, palette, CMYK, ...) is converted with PIL's ITU-R 601-2 luma
    L = (299 R + 587 G + 114 B) / 1000; an alpha channel is dropped (not composited);
  - any other dtype (16-bit PNGs, int or float arrays) is min-max scaled to [0, 255] and rounded,
    as the builders do for 16-bit images; a constant image becomes all zeros;
  - DICOM: the Modality LUT (rescale slope / intercept) first, then the file's VOI transform when
    it has one (Window Center / Width with its VOI LUT Function, or a VOI LUT Sequence; the first
    view), whose whole output range maps to [0, 255]; without one, or with an unusable one (a width
    below the standard's minimum, < 1 for LINEAR and <= 0 otherwise; a centre or width that is not
    a finite number), min-max as above; finally
    MONOCHROME1 (0 is white) is inverted so that the result reads like MONOCHROME2.

Every input that cannot be a radiograph raises `ImageError` with a one-line message: a missing or
unreadable file, a file that is not an image, an array of the wrong rank or channel count, a
side shorter than `MIN_SIDE`, non-finite values (a DICOM rescale included), a multi-frame DICOM.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

# The shortest side accepted: below it the center crop holds too little to resize meaningfully
# (a 1-pixel-wide strip is a line, not a radiograph).
MIN_SIDE = 8
# Suffixes read as DICOM even without the "DICM" preamble marker.
DICOM_SUFFIXES = (".dcm", ".dicom")

Source = str | os.PathLike | bytes | np.ndarray | Image.Image


class ImageError(ValueError):
    """An input that cannot be used as a radiograph; the message is one line for the user."""


# ---- the three public steps --------------------------------------------------------------------

def read_pixels(source: Source) -> np.ndarray:
    """A path, file bytes, numpy array or PIL image -> grayscale uint8 [H, W] (intensity rules above).

    Arrays may be [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA).
    Raises `ImageError` for anything unusable.
    """
    if isinstance(source, Image.Image):
        pixels = _from_pil(source)
    elif isinstance(source, np.ndarray):
        pixels = to_grayscale(source)
    elif isinstance(source, (bytes, bytearray)):
        pixels = _read_bytes(bytes(source), "the given bytes")
    elif isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if not path.is_file():
            raise ImageError(f"{str(path)!r} does not exist or is not a file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"cannot read {str(path)!r}: {e.strerror or e}") from e
        pixels = _read_bytes(data, repr(str(path)), dicom=path.suffix.lower() in DICOM_SUFFIXES)
    else:
        raise ImageError(f"expected a path, bytes, a numpy array or a PIL image, got {type(source).__name__}")
    return check_size(pixels)


def square_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [size, size]: center crop to the largest square, then Lanczos resize.

    Odd margins leave the extra row / column at the bottom / right (integer division), as the
    dataset builders do. A square image of side ``size`` comes back unchanged.
    """
    pixels = check_size(np.asarray(pixels))
    if pixels.dtype != np.uint8:
        raise ImageError(f"square_resize takes uint8 pixels, got {pixels.dtype}")
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, np.uint8)


def load_radiograph(source: Source, size: int) -> np.ndarray:
    """`read_pixels` then `square_resize` -> uint8 [size, size, 1], the model's input."""
    return square_resize(read_pixels(source), size)[:, :, None]


# ---- arrays --------------------------------------------------------------------------------------

def to_grayscale(array: np.ndarray) -> np.ndarray:
    """A numpy image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] of any real dtype -> uint8 [H, W]."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"an image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got shape {array.shape}")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageError(f"image values must be integers or floats, got {array.dtype}")
    if array.size == 0:
        raise ImageError(f"the image is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ImageError("the image holds NaN or infinite values")
    if array.ndim == 3:
        array = array[..., :3]  # alpha dropped
        if array.dtype == np.uint8:
            return np.asarray(Image.fromarray(np.ascontiguousarray(array), "RGB").convert("L"))
        array = array.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if array.dtype == np.uint8:
        return array
    return _min_max_uint8(array)


def check_size(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` [H, W] unchanged, or `ImageError` when a side is shorter than `MIN_SIDE`."""
    if pixels.ndim != 2:
        raise ImageError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    if min(pixels.shape) < MIN_SIDE:
        raise ImageError(f"a {pixels.shape[1]}x{pixels.shape[0]} image cannot be a radiograph "
                         f"(each side needs at least {MIN_SIDE} pixels)")
    return pixels


def _min_max_uint8(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - lo) / (hi - lo) * 255.0).astype(np.uint8)


# ---- files ---------------------------------------------------------------------------------------

def is_dicom(data: bytes) -> bool:
    """True when ``data`` carries the DICOM Part 10 marker ("DICM" after the 128-byte preamble)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _read_bytes(data: bytes, name: str, dicom: bool = False) -> np.ndarray:
    if not data:
        raise ImageError(f"{name} is empty")
    if dicom or is_dicom(data):
        return read_dicom(data, name)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes now, so a truncated file fails here
            return _from_pil(image)
    except Image.DecompressionBombError as e:  # not an OSError: a header declaring billions of pixels
        raise ImageError(f"{name} declares too many pixels to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} is not a readable PNG, JPEG or DICOM image ({type(e).__name__})") from e


def _from_pil(image: Image.Image) -> np.ndarray:
    """A PIL image -> uint8 [H, W] (first frame of an animation)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_grayscale(np.asarray(image))
    return np.asarray(image.convert("L"), np.uint8)


def read_dicom(data: bytes, name: str = "the DICOM file") -> np.ndarray:
    """DICOM file bytes -> uint8 [H, W]: Modality LUT, the file's VOI window / LUT, MONOCHROME1 inverted."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError as e:
        raise ImageError("reading DICOM needs pydicom (pip install pydicom)") from e
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for broken files; all mean "unreadable"
        raise ImageError(f"{name} is not a readable DICOM image: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"{name} is a multi-frame DICOM ({frames} frames); give one radiograph per file")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) > 1:  # colour: pydicom returns RGB (YBR is converted)
        return to_grayscale(pixels)
    try:
        values = np.asarray(apply_modality_lut(pixels, ds), np.float64)
    except (TypeError, ValueError) as e:  # a Rescale Slope / Intercept that is not a number
        raise ImageError(f"{name} has an unusable Modality LUT (rescale slope / intercept): "
                         f"{' '.join(str(e).split()) or type(e).__name__}") from e
    if not np.all(np.isfinite(values)):
        raise ImageError(f"{name}: its rescale slope / intercept give infinite or NaN values")
    out = _voi_uint8(values, ds) if _has_voi(ds) else None
    if out is None:
        out = to_grayscale(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def _voi_uint8(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The file's VOI transform with its whole output range mapped to [0, 255]; None when the file's
    window is unusable (a width below the minimum of its VOI LUT Function, PS3.3 C.11.2.1.2, a centre
    or width that is not a finite number), which is then ignored as if absent."""
    from pydicom.pixels import apply_voi_lut

    if not ds.get("VOILUTSequence"):  # the window is used (pydicom prefers the LUT when both are there)
        try:
            window = np.asarray([ds.WindowCenter, ds.WindowWidth], np.float64)
        except (TypeError, ValueError):  # text, or centres and widths of different counts
            return None
        if not np.all(np.isfinite(window)):
            return None
    try:
        windowed = np.asarray(apply_voi_lut(values, ds, index=0), np.float64)
        # The VOI output range: its values for inputs far below and above every window or LUT.
        lo, hi = np.asarray(apply_voi_lut(np.array([-1e15, 1e15]), ds, index=0), np.float64)
    except (TypeError, ValueError):  # pydicom refuses such a window, or it holds text
        return None
    lo, hi = min(lo, hi), max(lo, hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and np.all(np.isfinite(windowed))):
        return None
    return np.round(np.clip((windowed - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * 255.0).astype(np.uint8)


def _has_voi(ds: Any) -> bool:
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    return has_window or bool(ds.get("VOILUTSequence"))
