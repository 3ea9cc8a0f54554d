"""Opening an image file and turning it into the RGB picture a processor expects, without surprises.

What ``to_rgb`` does with images that are not plain 8-bit RGB (the run warns with a count of each):
* transparency (RGBA, LA, a palette or RGB/L with a transparent colour) is composited onto white;
  a plain ``convert("RGB")`` would keep whatever colour the transparent pixels store, often black;
* 16-bit grey (PNG ``I;16``) is scaled to 8 bits (x 255 / 65535); ``convert`` would clip every
  value above 255 to white. A 32-bit integer image (``I``) whose values fit 16 bits is scaled alike;
  one whose values do not has its own range (lowest to highest value) stretched over 0-255;
* an EXIF orientation is applied (the picture is turned upright, as a viewer shows it);
* an animated image (GIF, APNG, WebP) gives its first frame;
* a 32-bit float image is refused (its range is unknown), as is one with more pixels than the
  cap (``data.max_image_pixels``: a decompression bomb decodes to gigabytes).
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import cast

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from mllmft.errors import DataError

MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own warning threshold, 89.5 MP
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
NOTES = {
    "alpha": "had transparency, composited onto white",
    "16-bit": "were 16-bit, scaled to 8 bits",
    "32-bit": "were 32-bit integers, their range of values scaled to 8 bits",
    "animated": "were animated: their first frame is used",
    "rotated": "had an EXIF orientation, turned upright",
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_SIXTEEN_BIT_MAX = 65535
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def open_image(path: Path, where: str, max_pixels: int) -> Image.Image:
    """Open (header only, lazily decoded) and check the pixel count before anything is decoded."""
    if not path.is_file():
        raise DataError(
            f"{where}: {'a directory, not an image file' if path.is_dir() else 'image file not found'}: {path}"
        )
    try:
        with warnings.catch_warnings():  # the cap below is the check; Pillow's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise DataError(f"{where}: image {path} is too large to open ({err})") from err
    except UNREADABLE as err:
        raise DataError(f"{where}: cannot read image {path}: {err}") from err
    check_pixels(image, where, max_pixels, path)
    return image


def check_pixels(image: Image.Image, where: str, max_pixels: int, path: Path | None = None) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise DataError(
            f"{where}: image {path or ''} is {width}x{height} = {width * height:,} pixels, more than "
            f"data.max_image_pixels={max_pixels:,}; downscale it or raise the cap"
        )
    if width == 0 or height == 0:
        raise DataError(f"{where}: image {path or ''} is empty ({width}x{height})")


def verify_header(path: Path, where: str, max_pixels: int) -> tuple[int, int]:
    """The ``header`` check: the file opens, is not over the cap, and its structure verifies."""
    image = open_image(path, where, max_pixels)
    try:
        with image:
            size = oriented_size(image)
            image.verify()
    except UNREADABLE as err:
        raise DataError(f"{where}: cannot read image {path}: {err}") from err
    return size


def decode_file(path: Path, where: str, max_pixels: int) -> tuple[Image.Image, str | None]:
    """Fully decode an image file: (RGB picture, a NOTES key or None)."""
    image = open_image(path, where, max_pixels)
    try:
        with image:
            return to_rgb(image, where)
    except DataError:
        raise
    except UNREADABLE as err:  # a truncated JPEG fails here, not at the header
        raise DataError(f"{where}: cannot decode image {path}: {err}") from err


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: as stored), from what the header holds, so that the header-only check
    and decoding agree on the size: the base class's ``getexif``, as PNG's own decodes every pixel to
    look for an EXIF chunk after them. Unreadable EXIF is ignored, as viewers ignore it: the picture
    is then used as stored."""
    try:
        value = Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)
    except (*UNREADABLE, struct.error):
        return 1
    return value if isinstance(value, int) else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied, read from the header alone."""
    width, height = image.size
    return (height, width) if orientation(image) in _TRANSPOSED else (width, height)


def to_rgb(image: Image.Image, where: str = "image") -> tuple[Image.Image, str | None]:
    """An 8-bit RGB copy of ``image`` (fully decoded) and what had to be done to get it (see above)."""
    notes = []
    if getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        notes.append("animated")
    if orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
        notes.append("rotated")
    rgb, note = _eight_bit_rgb(image, where)
    notes += [note] if note else []
    return rgb, notes[0] if notes else None  # one note per image is counted: the first


def _eight_bit_rgb(image: Image.Image, where: str) -> tuple[Image.Image, str | None]:
    mode = image.mode
    if mode == "F":
        raise DataError(
            f"{where}: a 32-bit floating-point image, whose value range is unknown; save it as "
            "8-bit (or 16-bit) PNG/JPEG"
        )
    if mode in _SIXTEEN_BIT or mode == "I":
        return _grey_to_8_bits(np.asarray(image, dtype=np.float64))
    if mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        lowest_alpha, _ = cast(tuple[int, int], rgba.getchannel("A").getextrema())
        if lowest_alpha < 255:  # some pixel is (partly) transparent
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB"), "alpha"
        return rgba.convert("RGB"), None
    return image.convert("RGB"), None


def _grey_to_8_bits(values: np.ndarray) -> tuple[Image.Image, str]:
    """16-bit values scaled by 255 / 65535. 32-bit integers that do not fit 16 bits have no usable
    nominal range (2^32 levels would leave the picture black), so their own range is stretched over
    0-255 (a constant picture is black)."""
    low, high = float(values.min()), float(values.max())
    if 0 <= low and high <= _SIXTEEN_BIT_MAX:
        scaled, note = values * (255.0 / _SIXTEEN_BIT_MAX), "16-bit"
    else:
        scaled, note = (values - low) * (255.0 / (high - low) if high > low else 0.0), "32-bit"
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB"), note
