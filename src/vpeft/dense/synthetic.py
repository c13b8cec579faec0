"""The embedded dense suites: generated, in the real datasets' on-disk formats, byte-identical per seed.

* `shapes` (COCO format, instance segmentation): shapes of three classes (circle, square, triangle)
  with random colour, size, rotation and position on textured backgrounds (noise, gratings, stripes,
  checkerboards); later shapes occlude earlier ones and each instance's mask is its *visible* part.
  Written as COCO 2017 is: `<split>/<NNNNNN>.png` and `annotations/instances_<split>.json` with
  `images`, `categories` and `annotations` (bbox [x, y, w, h] of the visible mask, area, iscrowd 0,
  compressed-RLE segmentation from pycocotools).
* `scenes` (ADE20K format, semantic segmentation): each image is cut into 2-4 regions (random lines),
  every region filled with the texture of its class (stripes, checkerboard, dots, blobs) in random
  colours; written as ADEChallengeData2016 is: `images/<split>/ADE_<split>_<NNNNNNNN>.jpg` and
  `annotations/<split>/...png` holding class index + 1 (0 = unlabelled, never used here), and the
  class names in `classes.txt` (one per line).

Split names are VTAB's, as for the image track's embedded suites (the config's `sizes`: `train800`,
`val200`, `test`), plus their union `train800val200` (copies of both), so the same split protocols apply
(`dense-mini`, the embedded dense suites' own: train800val200 -> test; `val`: train800 -> val200).
"""

from __future__ import annotations

import io
import json
import logging
import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.synthetic import _draw
from ..data.synthetic.vtab_mini import _texture_pattern
from ..io import atomic_write_bytes

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("circle", "square", "triangle")
SCENE_CLASSES = ("stripes", "checkerboard", "dots", "blobs")
_BACKGROUNDS = ("white_noise", "blobs", "fine_grating", "coarse_grating")
_MIN_VISIBLE = 12  # pixels: an instance mostly hidden by later ones is dropped, not annotated


class GenerationError(ValueError):
    """Bad generation settings; the message names the setting."""


def _rng(seed: int, task: str, split: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(task.encode()), zlib.crc32(split.encode())])


def _check(sizes: dict, image_size: int) -> None:
    if image_size < 32 or image_size % 32:
        raise GenerationError(f"image_size must be a multiple of 32 (the backbone's stride), got {image_size}")
    for split, n in sizes.items():
        if not isinstance(n, int) or n < 1:
            raise GenerationError(f"sizes.{split} must be a positive integer, got {n!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    pattern = _texture_pattern(rng, _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], size)
    dark, light = _draw.colour_pair(rng, min_contrast=0.15)
    return dark + (light - dark) * pattern[..., None]


def _shape_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    canvas = _background(rng, size)
    owners = np.full((size, size), -1, dtype=np.int64)
    kinds = []
    for index in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(len(SHAPE_CLASSES)))
        radius = rng.uniform(0.12, 0.28) * size
        cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
        alpha = _draw.shape_coverage(SHAPE_CLASSES[kind], cx, cy, radius, rng.uniform(0, 2 * math.pi), size)
        _draw.paint(canvas, alpha, _draw.random_colour(rng))
        owners[alpha >= 0.5] = index  # the visible part: later shapes cover earlier ones
        kinds.append(kind)
    instances = [(kind, owners == i) for i, kind in enumerate(kinds)]
    return _draw.to_uint8(canvas), [(k, m) for k, m in instances if m.sum() >= _MIN_VISIBLE]


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def generate_shapes(out_dir: str | Path, *, seed: int, sizes: dict[str, int], image_size: int = 64) -> dict:
    """Write the COCO-format instance task to `out_dir`; return a summary (counts per split)."""
    from pycocotools import mask as mask_utils

    _check(sizes, image_size)
    out = Path(out_dir)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    generated: dict[str, list] = {}
    for split, n in sizes.items():
        rng = _rng(seed, "shapes", split)
        generated[split] = [_shape_image(rng, image_size) for _ in range(n)]
    if "train800val200" not in sizes and "train800" in sizes and "val200" in sizes:
        generated["train800val200"] = generated["train800"] + generated["val200"]
    summary = {}
    for split, items in generated.items():
        images, annotations = [], []
        for i, (img, instances) in enumerate(items):
            name = f"{i:06d}.png"
            atomic_write_bytes(out / split / name, _png(img))
            images.append({"id": i + 1, "file_name": name, "height": image_size, "width": image_size})
            for kind, mask in instances:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": kind + 1,
                    "bbox": [x, y, w, h], "area": float(mask.sum()), "iscrowd": 0,
                    "segmentation": {"size": [image_size, image_size], "counts": rle["counts"].decode("ascii")},
                })
        coco = {"info": {"description": f"V-PEFT Bench embedded 'shapes', seed {seed}, split {split}"},
                "images": images, "annotations": annotations, "categories": categories}
        atomic_write_bytes(out / "annotations" / f"instances_{split}.json",
                           json.dumps(coco, sort_keys=True).encode())
        summary[split] = {"images": len(images), "instances": len(annotations)}
        log.info("shapes/%s: %d images, %d instances", split, len(images), len(annotations))
    return summary


def _scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Regions cut by random lines; each region gets a class and that class's texture."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    region = np.zeros((size, size), dtype=np.int64)
    for bit in range(int(rng.integers(1, 3))):  # 1-2 lines: 2-4 regions
        angle = rng.uniform(0, math.pi)
        px, py = rng.uniform(0.25, 0.75, size=2) * size
        side = (x - px) * math.sin(angle) - (y - py) * math.cos(angle) > 0
        region += side.astype(np.int64) << bit
    labels = np.zeros((size, size), dtype=np.uint8)
    canvas = np.zeros((size, size, 3))
    for r in np.unique(region):
        cls = int(rng.integers(len(SCENE_CLASSES)))
        pattern = _texture_pattern(rng, SCENE_CLASSES[cls], size)
        dark, light = _draw.colour_pair(rng, min_contrast=0.3)
        inside = region == r
        canvas[inside] = (dark + (light - dark) * pattern[..., None])[inside]
        labels[inside] = cls + 1  # ADE convention: 0 is "unlabelled", classes start at 1
    return _draw.to_uint8(canvas), labels


def generate_scenes(out_dir: str | Path, *, seed: int, sizes: dict[str, int], image_size: int = 64) -> dict:
    """Write the ADE20K-format semantic task to `out_dir`; return a summary (counts per split)."""
    _check(sizes, image_size)
    out = Path(out_dir)
    # ADE20K's class names come with the toolbox; a generated set names its own
    atomic_write_bytes(out / "classes.txt", "".join(f"{name}\n" for name in SCENE_CLASSES).encode())
    generated: dict[str, list] = {}
    for split, n in sizes.items():
        rng = _rng(seed, "scenes", split)
        generated[split] = [_scene(rng, image_size) for _ in range(n)]
    if "train800val200" not in sizes and "train800" in sizes and "val200" in sizes:
        generated["train800val200"] = generated["train800"] + generated["val200"]
    summary = {}
    for split, items in generated.items():
        pixels = np.zeros(len(SCENE_CLASSES) + 1, dtype=np.int64)
        for i, (img, labels) in enumerate(items):
            stem = f"ADE_{split}_{i + 1:08d}"
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            atomic_write_bytes(out / "images" / split / f"{stem}.jpg", buf.getvalue())
            buf = io.BytesIO()
            Image.fromarray(labels, mode="L").save(buf, format="PNG")
            atomic_write_bytes(out / "annotations" / split / f"{stem}.png", buf.getvalue())
            pixels += np.bincount(labels.ravel(), minlength=len(pixels))
        summary[split] = {"images": len(items), "pixels_per_class": {SCENE_CLASSES[c]: int(pixels[c + 1])
                                                                     for c in range(len(SCENE_CLASSES))}}
        log.info("scenes/%s: %d images", split, len(items))
    return summary


GENERATORS = {"coco": (generate_shapes, SHAPE_CLASSES), "ade20k": (generate_scenes, SCENE_CLASSES)}


def generate_dense_task(layout: str, out_dir: str | Path, *, seed: int, sizes: dict[str, int],
                        image_size: int = 64) -> dict:
    """Generate the embedded task of a dense `layout` (coco: shapes, ade20k: scenes)."""
    if layout not in GENERATORS:
        raise GenerationError(f"no embedded generator for dense layout {layout!r}; valid: {', '.join(GENERATORS)}")
    generator, classes = GENERATORS[layout]
    summary = generator(out_dir, seed=seed, sizes=sizes, image_size=image_size)
    return {"layout": layout, "seed": seed, "image_size": image_size, "classes": list(classes), "splits": summary}
