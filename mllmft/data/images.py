"""Opening an image file and turning it into the RGB picture a processor expects, without surprises.

What ``to_rgb`` does with images that are not plain 8-bit RGB (the run warns with a count of each):
* transparency (RGBA, LA, a palette or RGB/L with a transparent colour) is composited onto white;
  a plain ``convert("RGB")`` would keep whatever colour the transparent pixels store, often black;
* 16-bit grey (PNG ``I;16``, ``I``) is scaled to 8 bits (x 255 / 65535); ``convert`` would clip
  every value above 255 to white;
* an animated image (GIF, APNG, WebP) gives its first frame;
* a 32-bit float image is refused (its range is unknown), as is one with more pixels than the
  cap (``data.max_image_pixels``: a decompression bomb decodes to gigabytes).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from mllmft.errors import DataError

MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own warning threshold, 89.5 MP
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
NOTES = {
    "alpha": "had transparency, composited onto white",
    "16-bit": "were 16-bit, scaled to 8 bits",
    "animated": "were animated: their first frame is used",
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
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
            size = image.size
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


def to_rgb(image: Image.Image, where: str = "image") -> tuple[Image.Image, str | None]:
    """An 8-bit RGB copy of ``image`` (fully decoded) and what had to be done to get it (see above)."""
    note = None
    if getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        note = "animated"
    mode = image.mode
    if mode == "F":
        raise DataError(
            f"{where}: a 32-bit floating-point image, whose value range is unknown; save it as "
            "8-bit (or 16-bit) PNG/JPEG"
        )
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB"), note or "16-bit"
    if mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        lowest_alpha, _ = cast(tuple[int, int], rgba.getchannel("A").getextrema())
        if lowest_alpha < 255:  # some pixel is (partly) transparent
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB"), note or "alpha"
        return rgba.convert("RGB"), note
    return image.convert("RGB"), note
