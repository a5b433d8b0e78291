"""Decoding image files to RGB, with clear errors for files that cannot be decoded."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from tagood.data.source import ImageDecodeError

_WHITE = (255, 255, 255)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: grayscale (1, L, I;16, I, F), palette (P, with transparency),
    CMYK, YCbCr, and alpha modes (LA, RGBA, PA, La, RGBa) composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        if mode == "F" and a.max() <= 1.0:
            hi = 1.0
        g = np.clip(a / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, _WHITE)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV


def open_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Open and fully decode an image file.

    ``min_size``: for JPEGs, let the decoder scale down by a power of two (DCT scaling, PIL
    ``draft``) while keeping the shorter side >= ``min_size``; much faster for large photos.
    Raises :class:`ImageDecodeError` naming the file when it is missing, truncated or not an image.
    """
    try:
        img = Image.open(path)
        if min_size is not None and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        img.load()
        return img
    except FileNotFoundError as e:
        raise ImageDecodeError(str(path), "file not found") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(str(path), "not an image file PIL can read") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(str(path), f"corrupt or truncated ({e})") from e
