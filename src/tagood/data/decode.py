"""Decoding image files to RGB, with clear errors for files that cannot be decoded.

EXIF orientation is honoured (a JPEG from a phone held upright is read upright); files that are not
regular files (FIFOs, devices, sockets) are refused before they are opened, so one cannot hang a
run; PIL's decompression-bomb guard is kept (over twice ``Image.MAX_IMAGE_PIXELS``: refused) and
an image over the limit is reported as one log line naming the file.
"""

from __future__ import annotations

import logging
import os
import stat as _stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tagood.errors import InputError

log = logging.getLogger(__name__)

# Pillow's TIFF reader reports a damaged tag block (``Corrupt EXIF data. Expecting to read ...``) as a UserWarning
# printed to stderr by every decode thread; the damage either does not matter (the pixels decode) or the file fails
# with an ImageDecodeError naming it, so these lines are not printed (one filter, for that module only).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

_WHITE = (255, 255, 255)
_ALPHA_MODES = ("LA", "RGBA", "PA", "La", "RGBa")
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageDecodeError(InputError):
    """A sample could not be decoded. ``ident`` names the file (or dataset index)."""

    def __init__(self, ident: str, reason: str) -> None:
        super().__init__(f"cannot decode {ident}: {reason}")
        self.ident = ident
        self.reason = reason


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
    Raises :class:`ImageDecodeError` naming the file when it is missing, unreadable, truncated, not a
    regular file or not an image. The EXIF orientation tag is applied (the image comes back upright).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as e:
        raise ImageDecodeError(str(path), "file not found; check the path (list files are relative to their root)") from e
    except OSError as e:
        raise ImageDecodeError(str(path), f"cannot stat the file ({e.strerror})") from e
    if _stat.S_ISDIR(mode):
        raise ImageDecodeError(str(path), "is a directory, not an image file")
    if not _stat.S_ISREG(mode):
        kind = ("a FIFO" if _stat.S_ISFIFO(mode) else "a device" if (_stat.S_ISCHR(mode) or _stat.S_ISBLK(mode))
                else "a socket" if _stat.S_ISSOCK(mode) else "not a regular file")
        raise ImageDecodeError(str(path), f"is {kind}, not an image file; skipped without reading it")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if Image.MAX_IMAGE_PIXELS is not None and w * h > Image.MAX_IMAGE_PIXELS:
                log.warning("%s: large image (%dx%d = %d pixels, over PIL's decompression-bomb limit of %d); decoding it "
                            "anyway (over twice the limit is refused)", path, w, h, w * h, Image.MAX_IMAGE_PIXELS)
            if min_size is not None and img.format == "JPEG":
                img.draft("RGB", (min_size, min_size))
            img.load()
            return _upright(_finite(img, str(path)) if img.mode == "F" else img)
    except ImageDecodeError:
        raise
    except FileNotFoundError as e:
        raise ImageDecodeError(str(path), "file not found; check the path (list files are relative to their root)") from e
    except IsADirectoryError as e:
        raise ImageDecodeError(str(path), "is a directory, not an image file") from e
    except PermissionError as e:
        raise ImageDecodeError(str(path), "permission denied; make the file readable") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(str(path), "not an image file PIL can read (wrong extension or corrupt header)") from e
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(str(path), f"image too large, refused by PIL's decompression-bomb guard ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(str(path), f"corrupt or truncated ({e})") from e


def _finite(img: Image.Image, path: str) -> Image.Image:
    """A float image with NaN / infinite pixels: refused when no pixel is finite, else those pixels set to 0 with one
    warning naming the file (they made the whole image black before, with only numpy's RuntimeWarning)."""
    a = np.asarray(img, dtype=np.float32)
    bad = ~np.isfinite(a)
    n = int(bad.sum())
    if not n:
        return img
    if n == a.size:
        raise ImageDecodeError(path, "a floating-point image whose every pixel is NaN or infinite; nothing to read")
    log.warning("%s: %d of %d pixels are NaN or infinite (a floating-point image); they are read as 0", path, n, a.size)
    return Image.fromarray(np.where(bad, np.float32(0), a), "F")


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (1..8); images without one come back unchanged."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: keep the pixels as stored
        return img
    if orientation in (None, 1):
        return img
    out = ImageOps.exif_transpose(img)
    return out if out is not None else img
