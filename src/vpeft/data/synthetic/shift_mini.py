"""Embedded distribution-shift targets: an embedded task folder re-rendered in another style.

`render_task(source_dir, out_dir, style, seed, classes)` reads a VTAB-layout task folder (a generated
vtab-mini task) and writes another one in the same layout whose every image is re-rendered:

* `noise`: additive Gaussian noise (sigma 48 of 255), a corruption in the ImageNet-C sense;
* `sketch`: the image's edge map (gradient magnitude of the grey image), dark strokes on white, a
  rendition in the ImageNet-Sketch / -R sense;
* `blur`: a Gaussian blur (radius 1.2 px at 32 px).

`classes` keeps all classes, or only the odd / even ones, relabelled 0..T-1 in order: a target that
covers a subset of the source classes, like ImageNet-A and -R. The map target label -> source label is
written beside the split files as `class_map.csv` (the format `vpeft.engine.shift.read_class_map` reads).
Each image's randomness is seeded from (seed, sha256 of its source bytes), so the copies of an image in
train800val200 render identically and the folder passes the VTAB check; same inputs, same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..splits import SPLITS, read_split_file

STYLES = ("noise", "sketch", "blur")
CLASS_SUBSETS = ("all", "odd", "even")


def kept_classes(num_classes: int, subset: str) -> list[int]:
    """Source labels a target keeps, in target label order."""
    if subset not in CLASS_SUBSETS:
        raise ValueError(f"unknown class subset {subset!r}; valid: {', '.join(CLASS_SUBSETS)}")
    start = {"all": 0, "odd": 1, "even": 0}[subset]
    step = 1 if subset == "all" else 2
    return list(range(start, num_classes, step))


def render_image(image: Image.Image, style: str, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    if style == "noise":
        out = pixels + rng.normal(0.0, 48.0, size=pixels.shape)
    elif style == "sketch":
        grey = pixels.mean(axis=2)
        gy, gx = np.gradient(grey)
        edges = np.hypot(gx, gy)
        edges = edges / max(edges.max(), 1e-6)
        out = np.repeat((255.0 * (1.0 - edges))[..., None], 3, axis=2)
    elif style == "blur":
        return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=1.2 * image.width / 32))
    else:
        raise ValueError(f"unknown render style {style!r}; valid: {', '.join(STYLES)}")
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def render_task(source_dir: str | Path, out_dir: str | Path, *, style: str, seed: int, num_classes: int,
                classes: str = "all") -> dict:
    """Write the re-rendered task folder (replacing `out_dir` atomically); returns a summary."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    keep = kept_classes(num_classes, classes)
    relabel = {source: target for target, source in enumerate(keep)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    counts = {}
    try:
        for split in SPLITS:
            lines = []
            (tmp / "images" / split).mkdir(parents=True)
            for rel, label in read_split_file(source_dir / f"{split}.txt", num_classes):
                if label not in relabel:
                    continue
                data = (source_dir / rel).read_bytes()
                digest = hashlib.sha256(data).digest()
                rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
                with Image.open(io.BytesIO(data)) as image:
                    rendered = render_image(image, style, rng)
                name = f"images/{split}/{len(lines):06d}.png"
                rendered.save(tmp / name, format="PNG", optimize=False)
                lines.append(f"{name} {relabel[label]}")
            (tmp / f"{split}.txt").write_text("\n".join(lines) + "\n")
            counts[split] = len(lines)
        (tmp / "class_map.csv").write_text(
            f"# {out_dir.name}: {classes} classes of {source_dir} ({style}); target label -> source label\n"
            "target,source\n" + "".join(f"{t},{s}\n" for t, s in enumerate(keep)))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"task": out_dir.name, "style": style, "classes": classes, "num_classes": len(keep), "sizes": counts}
