"""Decoding image files to RGB, with clear errors for files that cannot be decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tagood.data.source import ImageDecodeError

_WHITE = (255, 255, 255)
_ALPHA_MODES = ("LA", "RGBA", "PA", "La", "RGBa")
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer / float greyscale to 8-bit ``L`` on a fixed (not per-image) scale.

    ``I;16*``: 0..65535. ``I`` (PIL opens many 16-bit PNGs as ``I``): 0..255 when every value fits
    in 8 bits, else 0..65535 when it fits in 16 bits, else 0..max. ``F``: 0..1 when the values lie
    in [0, 1], else 0..255 when they fit, else 0..max. A fixed scale keeps absolute intensities
    (a dark image stays dark) instead of stretching each image's contrast.
    """
    a = np.asarray(img, dtype=np.float64)
    top = float(a.max()) if a.size else 0.0
    if img.mode.startswith("I;16"):
        hi = 65535.0
    elif img.mode == "F" and top <= 1.0:
        hi = 1.0
    elif top <= 255.0:
        hi = 255.0
    elif top <= 65535.0:
        hi = 65535.0
    else:
        hi = top
    return Image.fromarray(np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Grayscale (``1``, ``L``, ``I;16``, ``I``, ``F``) is replicated to three channels; palette
    (``P``) images are expanded (a ``transparency`` entry becomes alpha); CMYK/YCbCr/LAB/HSV go
    through PIL's converters; alpha modes (``LA``, ``RGBA``, ``PA``, ``La``, ``RGBa``) are
    composited on white, the usual background of product and web images.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        if img.mode == "RGB":
            return img
        mode = img.mode
    if mode in _WIDE_GREY_MODES:
        return _wide_grey_to_l(img).convert("RGB")
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, _WHITE)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV


def open_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Open and fully decode an image file (the file is closed on return).

    ``min_size``: for JPEGs, let the decoder scale down by a power of two (DCT scaling, PIL
    ``draft``) while keeping the shorter side >= ``min_size``; much faster for large photos.
    Raises :class:`ImageDecodeError` naming the file when it is missing, unreadable, truncated or
    not an image.
    """
    try:
        with Image.open(path) as img:
            if min_size is not None and img.format == "JPEG":
                img.draft("RGB", (min_size, min_size))
            img.load()
            return img
    except FileNotFoundError as e:
        raise ImageDecodeError(str(path), "file not found; check the path (list files are relative to their root)") from e
    except IsADirectoryError as e:
        raise ImageDecodeError(str(path), "is a directory, not an image file") from e
    except PermissionError as e:
        raise ImageDecodeError(str(path), "permission denied; make the file readable") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(str(path), "not an image file PIL can read (wrong extension or corrupt header)") from e
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(str(path), f"image too large ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(str(path), f"corrupt or truncated ({e})") from e
