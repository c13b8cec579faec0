"""Small numpy drawing helpers shared by the synthetic data generators.

Everything here works in continuous pixel coordinates: pixel ``(row j, col i)``
covers ``[i, i+1) x [j, j+1)`` and its centre is ``(i + 0.5, j + 0.5)``; ``y``
grows downwards as in image arrays. Shapes are anti-aliased by supersampling:
each pixel is evaluated at ``ss x ss`` sub-pixel centres and the inside-test
results are averaged, giving a coverage value in ``[0, 1]``.

All helpers are pure functions of their inputs (randomness is always passed in
as a ``numpy.random.Generator``), so callers stay deterministic.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

__all__ = [
    "SHAPES",
    "shape_coverage",
    "paint",
    "luminance",
    "random_colour",
    "colour_pair",
    "spectral_noise",
    "rotated_coords",
    "supersample_grid",
    "box_downsample",
    "to_uint8",
    "png_bytes",
]

# Shapes understood by :func:`shape_coverage`. Each is defined in a local unit
# frame (u to the right, v upwards once rotated) and fits in the unit disc, so
# ``radius`` is the shape's bounding-circle radius in pixels.
SHAPES = ("circle", "ellipse", "square", "triangle", "heart", "arrow")

_SQRT3 = math.sqrt(3.0)


def _inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside-test for a unit shape; ``v`` points up."""
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "ellipse":
        # dSprites-style elongated ellipse (aspect 2:1), long axis along u.
        return u * u + (v / 0.5) ** 2 <= 1.0
    if kind == "square":
        half = 0.70  # corners at radius ~0.99
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == "triangle":
        # Equilateral triangle inscribed in the unit circle, apex up.
        # Edges: bottom v >= -0.5; two slanted edges through the apex (0, 1).
        return (v >= -0.5) & (v <= 1.0 - _SQRT3 * u) & (v <= 1.0 + _SQRT3 * u)
    if kind == "heart":
        # Classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, whose extent is
        # x in [-1.14, 1.14], y in [-1.0, 1.24]; rescaled and recentred to fit the
        # unit disc (max radius ~0.99) with its tip pointing down (lobes up) at angle 0.
        x = 1.34 * u
        y = 1.34 * v + 0.12
        q = x * x + y * y - 1.0
        return q * q * q - x * x * y * y * y <= 0.0
    if kind == "arrow":
        # Arrow pointing along +u: a shaft plus a triangular head.
        shaft = (u >= -0.95) & (u <= 0.15) & (np.abs(v) <= 0.2)
        head = (u >= 0.15) & (u <= 0.95) & (np.abs(v) <= 0.62 * (0.95 - u) / 0.8)
        return shaft | head
    raise ValueError(f"unknown shape {kind!r}; valid: {', '.join(SHAPES)}")


def supersample_grid(x0: int, y0: int, w: int, h: int, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centre coordinates for the pixel block ``[x0, x0+w) x [y0, y0+h)``.

    Returns ``(x, y)`` arrays of shape ``(h * ss, w * ss)``.
    """
    offs = (np.arange(ss, dtype=np.float64) + 0.5) / ss
    xs = (x0 + np.arange(w, dtype=np.float64)[:, None] + offs[None, :]).reshape(-1)
    ys = (y0 + np.arange(h, dtype=np.float64)[:, None] + offs[None, :]).reshape(-1)
    return np.meshgrid(xs, ys, indexing="xy")


def box_downsample(a: np.ndarray, ss: int) -> np.ndarray:
    """Average ``ss x ss`` blocks of the first two axes."""
    if ss == 1:
        return a
    h, w = a.shape[0] // ss, a.shape[1] // ss
    rest = a.shape[2:]
    return a.reshape(h, ss, w, ss, *rest).mean(axis=(1, 3))


def rotated_coords(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float,
                   scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel coordinates into a shape's local frame.

    ``angle`` is in radians, counter-clockwise as seen on screen (y down), and
    the local ``v`` axis points up on screen at ``angle = 0``.
    """
    dx = x - cx
    dy = cy - y  # flip so that v points up on screen
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / scale
    v = (-dx * s + dy * c) / scale
    return u, v


def shape_coverage(kind: str, cx: float, cy: float, radius: float, angle: float,
                   size: int | tuple[int, int], *, ss: int = 4
                   ) -> np.ndarray:
    """Anti-aliased coverage mask (float64 in [0, 1]) of one shape on an ``H x W`` canvas.

    ``(cx, cy)`` is the centre in continuous pixel coordinates, ``radius`` the
    bounding-circle radius in pixels, ``angle`` the rotation in radians.
    Only the shape's bounding box is evaluated, so small shapes are cheap.
    """
    if isinstance(size, int):
        hgt, wid = size, size
    else:
        hgt, wid = size
    out = np.zeros((hgt, wid), dtype=np.float64)
    reach = radius * 1.05 + 1.0
    x0 = max(0, int(math.floor(cx - reach)))
    x1 = min(wid, int(math.ceil(cx + reach)))
    y0 = max(0, int(math.floor(cy - reach)))
    y1 = min(hgt, int(math.ceil(cy + reach)))
    if x1 <= x0 or y1 <= y0 or radius <= 0:
        return out
    x, y = supersample_grid(x0, y0, x1 - x0, y1 - y0, ss)
    u, v = rotated_coords(x, y, cx, cy, angle, radius)
    inside = _inside(kind, u, v).astype(np.float64)
    out[y0:y1, x0:x1] = box_downsample(inside, ss)
    return out


def paint(canvas: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Alpha-composite ``colour`` (scalar, RGB triple, or per-pixel ``H x W x 3``) in place."""
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * np.asarray(colour, dtype=np.float64)


def luminance(rgb) -> np.ndarray:
    """Rec. 601 luma of float RGB in [0, 1] (last axis = channels)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def random_colour(rng: np.random.Generator, lum_range: tuple[float, float] = (0.0, 1.0),
                  max_tries: int = 64) -> np.ndarray:
    """A random RGB colour (float in [0, 1]) whose luma falls in ``lum_range``."""
    lo, hi = lum_range
    col = rng.random(3)
    for _ in range(max_tries):
        if lo <= luminance(col) <= hi:
            return col
        col = rng.random(3)
    # Fall back: shift the last draw into range (keeps hue, stays in [0, 1]).
    target = (lo + hi) / 2.0
    return np.clip(col + (target - luminance(col)), 0.0, 1.0)


def colour_pair(rng: np.random.Generator, min_contrast: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours ``(dark, light)`` whose luma differs by at least ``min_contrast``."""
    for _ in range(256):
        a, b = rng.random(3), rng.random(3)
        la, lb = luminance(a), luminance(b)
        if abs(la - lb) >= min_contrast:
            return (a, b) if la < lb else (b, a)
    return np.full(3, 0.5 - min_contrast / 2), np.full(3, 0.5 + min_contrast / 2)


def spectral_noise(rng: np.random.Generator, size: int, slope: float) -> np.ndarray:
    """Zero-mean, unit-std periodic Gaussian noise with power spectrum ~ 1/f^(2*slope).

    ``slope = 0`` is white noise, ``1`` pink (1/f amplitude), ``2`` brown-ish blobs.
    """
    white = rng.standard_normal((size, size))
    if slope == 0:
        field = white
    else:
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        f = np.sqrt(fx * fx + fy * fy)
        f[0, 0] = 1.0
        amp = f ** (-slope)
        amp[0, 0] = 0.0
        field = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(size, size))
    field = field - field.mean()
    std = field.std()
    return field / std if std > 0 else field


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 with rounding and clipping."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    """Encode an ``H x W x 3`` uint8 array as PNG bytes (no metadata, deterministic)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8, got {img.dtype} {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
