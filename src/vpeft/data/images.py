"""Decoding images with errors that name the file (no torch here: the data checks stay light)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .splits import DataError


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from None
