"""vtab-mini: small, CPU-sized image-classification tasks in the VTAB-1k on-disk layout.

Every task is generated deterministically from ``(task name, seed, sizes, image_size)``
and written exactly like the VTAB-1k folders distributed with NOAH / V-PETL::

    <out_dir>/
      train800.txt  val200.txt  train800val200.txt  test.txt
      images/train800/000000.png ...
      images/val200/000000.png ...
      images/train800val200/000000.png ...   (train800 images, then val200 images, re-indexed)
      images/test/000000.png ...

Each split-file line is ``images/<split>/<6-digit index>.png <label>``. The split-file
names keep VTAB's names even when the image counts are smaller.

Randomness: each task owns a ``numpy.random.Generator`` seeded from
``[seed, zlib.crc32(task name), stream]``. The train800 + val200 images are one draw
(stream 0) from the task's *training pool*; the test images are an independent draw
(stream 1), from a disjoint source pool for the tasks built on real images
(``digits``, ``photo_crops``). Labels are balanced in every split (cycled, then
shuffled).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import _draw

__all__ = ["EmbeddedTask", "EMBEDDED_TASKS", "generate_task", "task_names", "SPLIT_FILES"]

#: Split names, in the order their files are listed / written.
SPLIT_FILES = ("train800", "val200", "train800val200", "test")
_SIZE_KEYS = ("train800", "val200", "test")


@dataclass(frozen=True)
class EmbeddedTask:
    name: str            # folder name, lowercase with underscores
    group: str           # "natural" | "specialized" | "structured" (VTAB's groups)
    num_classes: int
    description: str     # one sentence, shown in the report
    vtab_analogue: str   # the real VTAB task it imitates, e.g. "dsprites_loc"


# A generator maps (rng, labels, pool, image_size) -> uint8 images [n, S, S, 3].
# ``pool`` is "trainval" or "test"; tasks built on real images use it to pick
# disjoint source material.
_Generator = Callable[[np.random.Generator, np.ndarray, str, int], np.ndarray]


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------

def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """``n`` labels with class counts differing by at most one, in random order."""
    return rng.permutation(np.arange(n, dtype=np.int64) % num_classes)


def _add_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    return img + rng.normal(0.0, sigma, size=img.shape)


def _pick_sources(rng: np.random.Generator, labels: np.ndarray,
                  pool_by_class: list[np.ndarray]) -> np.ndarray:
    """For each label, a source index of that class; without replacement until a
    class's pool is exhausted, then cycling through fresh permutations."""
    out = np.empty(len(labels), dtype=np.int64)
    for c, cand in enumerate(pool_by_class):
        pos = np.flatnonzero(labels == c)
        if len(pos) == 0:
            continue
        reps = -(-len(pos) // len(cand))
        seq = np.concatenate([rng.permutation(cand) for _ in range(reps)])
        out[pos] = seq[: len(pos)]
    return out


# ---------------------------------------------------------------------------
# natural: digits
# ---------------------------------------------------------------------------

#: sklearn's digits are split by index: [0, 1200) feed train/val, [1200, 1797) feed test.
_DIGITS_SPLIT_INDEX = 1200
#: Glyph side as a fraction of the canvas; the rest is random translation.
_DIGITS_SCALE = (0.75, 0.9)
#: Probability of a dark digit on a lighter background (else light on dark).
_DIGITS_DARK_ON_LIGHT = 0.25


@lru_cache(maxsize=1)
def _digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images.astype(np.float32) / 16.0), d.target.astype(np.int64)


def _gen_digits(rng: np.random.Generator, labels: np.ndarray, pool: str, size: int) -> np.ndarray:
    images, targets = _digits_data()
    idx = np.arange(len(targets))
    keep = idx < _DIGITS_SPLIT_INDEX if pool == "trainval" else idx >= _DIGITS_SPLIT_INDEX
    pool_by_class = [idx[keep & (targets == c)] for c in range(10)]
    src = _pick_sources(rng, labels, pool_by_class)
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    lo, hi = (int(round(f * size)) for f in _DIGITS_SCALE)
    for i, k in enumerate(src):
        s = int(rng.integers(lo, hi + 1))
        glyph = Image.fromarray(images[k])  # float32 -> mode "F"
        glyph = np.asarray(glyph.resize((s, s), Image.BICUBIC), dtype=np.float64)
        glyph = np.clip(glyph, 0.0, 1.0)
        x0 = int(rng.integers(0, size - s + 1))
        y0 = int(rng.integers(0, size - s + 1))
        alpha = np.zeros((size, size))
        alpha[y0:y0 + s, x0:x0 + s] = glyph
        bg, fg = _draw.colour_pair(rng, min_contrast=0.3)  # (dark, light)
        if rng.random() < _DIGITS_DARK_ON_LIGHT:
            bg, fg = fg, bg
        canvas = np.empty((size, size, 3))
        canvas[:] = bg
        _draw.paint(canvas, alpha, fg)
        canvas = _add_noise(rng, canvas, rng.uniform(0.02, 0.06))
        out[i] = _draw.to_uint8(canvas)
    return out


# ---------------------------------------------------------------------------
# natural: photo_crops
# ---------------------------------------------------------------------------

def _load_photo(name: str) -> np.ndarray:
    import skimage.data as skd

    if name == "motorcycle":
        img = skd.stereo_motorcycle()[0]
    else:
        img = getattr(skd, name)()
    img = np.asarray(img)
    if name == "retina":
        # Keep the square inscribed in the circular fundus (drop the black border).
        h, w = img.shape[:2]
        m = int(round(0.16 * min(h, w)))
        img = img[m:h - m, m:w - m]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8)


#: Photos bundled inside the scikit-image wheel (no network / pooch download needed).
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
           "immunohistochemistry", "retina", "motorcycle")
_PHOTO_SHORT_SIDE = 192
_PHOTO_TRAIN_FRACTION = 0.6


@lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    img = Image.fromarray(_load_photo(name))
    w, h = img.size
    scale = _PHOTO_SHORT_SIDE / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def _photo_region(w: int, h: int, pool: str) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the part of a photo a pool may crop from: the first 60% along
    the longer axis (ties: x) for train/val, the remaining 40% for test."""
    f = _PHOTO_TRAIN_FRACTION
    if w >= h:
        return (0.0, 0.0, f * w, float(h)) if pool == "trainval" else (f * w, 0.0, float(w), float(h))
    return (0.0, 0.0, float(w), f * h) if pool == "trainval" else (0.0, f * h, float(w), float(h))


def _gen_photo_crops(rng: np.random.Generator, labels: np.ndarray, pool: str, size: int) -> np.ndarray:
    photos = [_photo(n) for n in _PHOTOS]
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        ph = photos[int(c)]
        rx0, ry0, rx1, ry1 = _photo_region(*ph.size, pool)
        rw, rh = rx1 - rx0, ry1 - ry0
        side = rng.uniform(0.18, 0.40) * _PHOTO_SHORT_SIDE
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = min(side * math.sqrt(aspect), rw)
        chh = min(side / math.sqrt(aspect), rh)
        x0 = rx0 + rng.uniform(0.0, rw - cw)
        y0 = ry0 + rng.uniform(0.0, rh - chh)
        crop = ph.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + chh))
        a = np.asarray(crop, dtype=np.float64) / 255.0
        if rng.random() < 0.5:
            a = a[:, ::-1]
        # Mild photometric jitter: brightness, contrast, saturation.
        gray = _draw.luminance(a)[..., None]
        a = gray + (a - gray) * rng.uniform(0.7, 1.3)
        a = (a - a.mean()) * rng.uniform(0.8, 1.2) + a.mean()
        a = a * rng.uniform(0.85, 1.15)
        a = _add_noise(rng, a, 0.01)
        out[i] = _draw.to_uint8(a)
    return out


# ---------------------------------------------------------------------------
# specialized: textures
# ---------------------------------------------------------------------------

_TEXTURES = ("fine_grating", "coarse_grating", "stripes", "checkerboard",
             "dots", "bricks", "white_noise", "blobs")
_TEX_SS = 2
# Fraction of a period by which the pattern's phase may move away from the image
# centre. Fully random phase (1.0) makes textures linearly inseparable on raw
# pixels; a partly anchored phase leaves a weak linear cue, as in real texture crops.
_TEX_PHASE_JITTER = 0.35


def _texture_pattern(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A scalar pattern in [0, 1] of shape ``(size, size)``."""
    k = size / 32.0  # periods are specified for 32 px images
    if kind in ("white_noise", "blobs"):
        slope = 0.0 if kind == "white_noise" else 2.0
        field = _draw.spectral_noise(rng, size, slope)
        if kind == "blobs":
            return 1.0 / (1.0 + np.exp(-2.5 * field))
        return np.clip(0.5 + 0.22 * field, 0.0, 1.0)

    x, y = _draw.supersample_grid(0, 0, size, size, _TEX_SS)
    theta = rng.uniform(0.0, math.pi)
    if kind == "fine_grating":
        period = rng.uniform(2.8, 4.0) * k
    elif kind == "coarse_grating":
        period = rng.uniform(8.0, 13.0) * k
    elif kind == "stripes":
        period = rng.uniform(6.0, 10.0) * k
    elif kind == "checkerboard":
        period = rng.uniform(7.0, 12.0) * k
    elif kind == "dots":
        period = rng.uniform(6.0, 9.0) * k
    elif kind == "bricks":
        period = rng.uniform(10.0, 14.0) * k  # brick length; height is half
    else:  # pragma: no cover - guarded by _TEXTURES
        raise ValueError(kind)
    jitter = _TEX_PHASE_JITTER * period
    cx = size / 2 + rng.uniform(-jitter, jitter)
    cy = size / 2 + rng.uniform(-jitter, jitter)
    u, v = _draw.rotated_coords(x, y, cx, cy, theta)

    if kind in ("fine_grating", "coarse_grating"):
        p = 0.5 + 0.5 * np.cos(2 * math.pi * u / period)
    elif kind == "stripes":
        duty = rng.uniform(0.3, 0.5)
        p = (np.mod(u / period + duty / 2, 1.0) < duty).astype(np.float64)
    elif kind == "checkerboard":
        half = period / 2
        p = ((np.floor(u / half + 0.5) + np.floor(v / half + 0.5)) % 2 == 0).astype(np.float64)
    elif kind == "dots":
        r = rng.uniform(0.2, 0.3) * period
        du = np.mod(u / period + 0.5, 1.0) - 0.5
        dv = np.mod(v / period + 0.5, 1.0) - 0.5
        p = ((du * du + dv * dv) * period * period <= r * r).astype(np.float64)
    else:  # bricks: light bricks separated by dark mortar lines
        length, height = period, period / 2
        mortar = max(0.9 * k, 0.1 * height)
        row = np.floor(v / height + 0.5)
        fv = np.mod(v / height + 0.5, 1.0) * height
        fu = np.mod(u / length + 0.5 * (row % 2) + 0.5, 1.0) * length
        p = ((fv > mortar) & (fu > mortar)).astype(np.float64)
    return _draw.box_downsample(p, _TEX_SS)


def _gen_textures(rng: np.random.Generator, labels: np.ndarray, pool: str, size: int) -> np.ndarray:
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        p = _texture_pattern(rng, _TEXTURES[int(c)], size)
        dark, light = _draw.colour_pair(rng, min_contrast=rng.uniform(0.25, 0.6))
        img = dark + (light - dark) * p[..., None]
        img = _add_noise(rng, img, 0.02)
        out[i] = _draw.to_uint8(img)
    return out


# ---------------------------------------------------------------------------
# structured: dSprites-style location / orientation
# ---------------------------------------------------------------------------

_LOC_SHAPES = ("square", "ellipse", "heart")
_ORI_SHAPES = ("heart", "arrow")  # no rotational symmetry: orientation is defined mod 360 deg
_NUM_BINS = 8
#: Sprite bounding radius for the orientation task (fraction of the canvas); large
#: enough that the orientation is visible at 32 px.
_ORI_RADIUS = (0.28, 0.36)


def _sprite_image(kind: str, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    cov = _draw.shape_coverage(kind, cx, cy, radius, angle, size, ss=4)
    return _draw.to_uint8(np.repeat(cov[..., None], 3, axis=-1))


def _gen_dsprites_loc(rng: np.random.Generator, labels: np.ndarray, pool: str, size: int) -> np.ndarray:
    r_lo, r_hi = 0.12 * size, 0.20 * size
    margin = r_hi  # the sprite always lies fully inside the canvas
    width = (size - 2 * margin) / _NUM_BINS
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        kind = _LOC_SHAPES[int(rng.integers(len(_LOC_SHAPES)))]
        radius = rng.uniform(r_lo, r_hi)
        angle = rng.uniform(0.0, 2 * math.pi)
        cx = margin + (int(c) + rng.random()) * width
        cy = rng.uniform(margin, size - margin)
        out[i] = _sprite_image(kind, cx, cy, radius, angle, size)
    return out


def _gen_dsprites_ori(rng: np.random.Generator, labels: np.ndarray, pool: str, size: int) -> np.ndarray:
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    bin_width = 2 * math.pi / _NUM_BINS
    for i, c in enumerate(labels):
        kind = _ORI_SHAPES[int(rng.integers(len(_ORI_SHAPES)))]
        radius = rng.uniform(*_ORI_RADIUS) * size
        # Bins are centred on multiples of 45 deg (class 0 = pointing right / upright heart).
        angle = (int(c) + rng.uniform(-0.5, 0.5)) * bin_width
        cx = rng.uniform(radius, size - radius)
        cy = rng.uniform(radius, size - radius)
        out[i] = _sprite_image(kind, cx, cy, radius, angle, size)
    return out


# ---------------------------------------------------------------------------
# structured: clevr_count
# ---------------------------------------------------------------------------

_CLEVR_MIN_COUNT = 1
_CLEVR_MAX_COUNT = 6
_CLEVR_SHAPES = ("circle", "square", "triangle")
#: Object bounding radius as a fraction of the canvas.
_CLEVR_RADIUS = (0.075, 0.13)
#: Background grey level range and object colour luma range (objects are mostly darker
#: than the floor, as with CLEVR's shadows, which leaves a weak linear "mass" cue).
_CLEVR_BACKGROUND = (0.5, 0.62)
_CLEVR_OBJECT_LUMA = (0.1, 0.55)


def _place_objects(rng: np.random.Generator, n: int, size: int) -> list[tuple[float, float, float]]:
    """``n`` (cx, cy, r) triples inside the canvas with at most slight overlap."""
    r_lo, r_hi = (f * size for f in _CLEVR_RADIUS)
    placed: list[tuple[float, float, float]] = []
    shrink = 1.0
    while len(placed) < n:
        for _ in range(200):
            r = rng.uniform(r_lo, r_hi) * shrink
            cx = rng.uniform(r + 0.5, size - r - 0.5)
            cy = rng.uniform(r + 0.5, size - r - 0.5)
            if all((cx - px) ** 2 + (cy - py) ** 2 >= (0.9 * (r + pr)) ** 2 for px, py, pr in placed):
                placed.append((cx, cy, r))
                break
        else:
            shrink *= 0.85  # crowded: try smaller objects
    return placed


def _gen_clevr_count(rng: np.random.Generator, labels: np.ndarray, pool: str, size: int) -> np.ndarray:
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    ys = (np.arange(size) + 0.5)[:, None] / size
    xs = (np.arange(size) + 0.5)[None, :] / size
    for i, c in enumerate(labels):
        n = int(c) + _CLEVR_MIN_COUNT
        grey = rng.uniform(*_CLEVR_BACKGROUND)
        canvas = np.empty((size, size, 3))
        canvas[:] = (grey + rng.uniform(-0.08, 0.08) * (ys - 0.5))[..., None]
        for cx, cy, r in _place_objects(rng, n, size):
            kind = _CLEVR_SHAPES[int(rng.integers(len(_CLEVR_SHAPES)))]
            angle = rng.uniform(0, 2 * math.pi) if kind != "circle" else 0.0
            scale = 0.88 if kind == "circle" else 1.0
            # soft shadow, offset down-right
            shadow = _draw.shape_coverage(kind, cx + 0.12 * r, cy + 0.18 * r, r * scale, angle, size)
            _draw.paint(canvas, 0.35 * shadow, 0.0)
            cov = _draw.shape_coverage(kind, cx, cy, r * scale, angle, size)
            colour = _draw.random_colour(rng, _CLEVR_OBJECT_LUMA)
            # Lambert-ish shading lit from the top-left.
            dx = (xs * size - cx) / r
            dy = (ys * size - cy) / r
            shade = np.clip(1.0 - 0.22 * (dx + dy), 0.55, 1.25)
            if kind == "circle":
                shade = shade * (0.75 + 0.25 * np.sqrt(np.clip(1 - dx * dx - dy * dy, 0, 1)))
            _draw.paint(canvas, cov, np.clip(colour[None, None, :] * shade[..., None], 0, 1))
        canvas = _add_noise(rng, canvas, 0.015)
        out[i] = _draw.to_uint8(canvas)
    return out


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------

EMBEDDED_TASKS: dict[str, EmbeddedTask] = {
    "digits": EmbeddedTask(
        name="digits", group="natural", num_classes=10, vtab_analogue="svhn",
        description=("scikit-learn's 8x8 handwritten digits, upscaled and placed at a random "
                     "position on a random-colour background with noise; test digits come from "
                     "held-out source images (index >= 1200)."),
    ),
    "photo_crops": EmbeddedTask(
        name="photo_crops", group="natural", num_classes=len(_PHOTOS), vtab_analogue="caltech101",
        description=("Which of 8 bundled scikit-image photographs a random, flipped, colour-jittered "
                     "crop comes from; train/val crops come from the first 60% of each photo along its "
                     "long axis and test crops from the unseen remaining 40%."),
    ),
    "textures": EmbeddedTask(
        name="textures", group="specialized", num_classes=len(_TEXTURES), vtab_analogue="dtd",
        description=("Eight procedural texture families (fine/coarse gratings, stripes, checkerboard, "
                     "dots, bricks, white noise, smooth blobs) with random orientation, period, phase, "
                     "colours and contrast."),
    ),
    "dsprites_loc": EmbeddedTask(
        name="dsprites_loc", group="structured", num_classes=_NUM_BINS, vtab_analogue="dsprites_loc",
        description=("A white square, ellipse or heart of random scale and rotation on black; the label "
                     "is the sprite centre's horizontal position in 8 bins."),
    ),
    "dsprites_ori": EmbeddedTask(
        name="dsprites_ori", group="structured", num_classes=_NUM_BINS, vtab_analogue="dsprites_ori",
        description=("A white heart or arrow (shapes without rotational symmetry) of random scale and "
                     "position on black; the label is its orientation in 8 bins of 45 degrees."),
    ),
    "clevr_count": EmbeddedTask(
        name="clevr_count", group="structured",
        num_classes=_CLEVR_MAX_COUNT - _CLEVR_MIN_COUNT + 1, vtab_analogue="clevr_count",
        description=("Between 1 and 6 shaded circles, squares and triangles of random colour and size "
                     "on a grey background, at most slightly overlapping; the label is the object "
                     "count minus one."),
    ),
}

_GENERATORS: dict[str, _Generator] = {
    "digits": _gen_digits,
    "photo_crops": _gen_photo_crops,
    "textures": _gen_textures,
    "dsprites_loc": _gen_dsprites_loc,
    "dsprites_ori": _gen_dsprites_ori,
    "clevr_count": _gen_clevr_count,
}


def task_names() -> list[str]:
    """Names of all embedded tasks, in registry order."""
    return list(EMBEDDED_TASKS)


def _task_rng(name: str, seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8")), stream])


def _validate(name: str, seed: int, sizes: dict[str, int], image_size: int) -> None:
    if name not in EMBEDDED_TASKS:
        raise ValueError(f"unknown embedded task {name!r}; valid names: {', '.join(EMBEDDED_TASKS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if set(sizes) != set(_SIZE_KEYS):
        raise ValueError(f"sizes must have exactly the keys {list(_SIZE_KEYS)}, got {sorted(sizes)}")
    for k in _SIZE_KEYS:
        v = sizes[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"sizes[{k!r}] must be a non-negative integer, got {v!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")


def _render_splits(name: str, seed: int, sizes: dict[str, int], image_size: int
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """In-memory images/labels for train800, val200 and test."""
    task = EMBEDDED_TASKS[name]
    gen = _GENERATORS[name]
    n_tr, n_va, n_te = (int(sizes[k]) for k in _SIZE_KEYS)

    rng = _task_rng(name, seed, 0)
    y_tr = _balanced_labels(rng, n_tr, task.num_classes)
    y_va = _balanced_labels(rng, n_va, task.num_classes)
    x_trva = gen(rng, np.concatenate([y_tr, y_va]), "trainval", int(image_size))

    rng = _task_rng(name, seed, 1)
    y_te = _balanced_labels(rng, n_te, task.num_classes)
    x_te = gen(rng, y_te, "test", int(image_size))
    return {
        "train800": (x_trva[:n_tr], y_tr),
        "val200": (x_trva[n_tr:], y_va),
        "test": (x_te, y_te),
    }


def generate_arrays(name: str, *, seed: int, sizes: dict[str, int], image_size: int = 32
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The images (uint8 ``[n, S, S, 3]``) and labels (int64 ``[n]``) that
    :func:`generate_task` would write, per split ``train800``, ``val200``, ``test``."""
    _validate(name, seed, sizes, image_size)
    return _render_splits(name, int(seed), sizes, int(image_size))


def _write_layout(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    encoded: dict[str, list[tuple[bytes, int]]] = {}
    for split in _SIZE_KEYS:
        images, labels = splits[split]
        encoded[split] = [(_draw.png_bytes(img), int(lab)) for img, lab in zip(images, labels)]
    encoded["train800val200"] = encoded["train800"] + encoded["val200"]

    counts: dict[str, int] = {}
    for split in SPLIT_FILES:
        img_dir = root / "images" / split
        img_dir.mkdir(parents=True)
        lines = []
        for i, (data, label) in enumerate(encoded[split]):
            rel = f"images/{split}/{i:06d}.png"
            (root / rel).write_bytes(data)
            lines.append(f"{rel} {label}\n")
        (root / f"{split}.txt").write_text("".join(lines), encoding="utf-8", newline="\n")
        counts[split] = len(lines)
    return counts


def generate_task(name: str, out_dir: str | Path, *, seed: int, sizes: dict[str, int],
                  image_size: int = 32) -> dict:
    """Generate one embedded task in the VTAB-1k layout under ``out_dir``.

    ``sizes`` has exactly the keys ``'train800'``, ``'val200'``, ``'test'`` (image counts).
    The folder is built in a sibling temporary folder and renamed into place; an
    existing ``out_dir`` is replaced. Returns ``{'task', 'num_classes', 'group',
    'counts', 'seed', 'image_size'}`` where ``counts`` covers all four split files.
    Unknown ``name`` raises ``ValueError`` listing the valid names.
    """
    _validate(name, seed, sizes, image_size)
    task = EMBEDDED_TASKS[name]
    out_dir = Path(out_dir)
    splits = _render_splits(name, int(seed), sizes, int(image_size))

    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, 0o755)
        counts = _write_layout(tmp, splits)
        old = None
        if out_dir.exists() or out_dir.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rmdir(old)
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            if old is not None:
                os.replace(old, out_dir)  # put the previous task back
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)

    return {
        "task": name,
        "num_classes": task.num_classes,
        "group": task.group,
        "counts": counts,
        "seed": int(seed),
        "image_size": int(image_size),
    }
