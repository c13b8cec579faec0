"""video-mini: generated action clips whose classes can only be told apart by temporal order.

Six classes in three time-reversed pairs: an object moving **left / right**, **approaching /
receding** (growing / shrinking), and a pointer **rotating clockwise / counter-clockwise**. Each
clip of the second class of a pair is a clip of the first class played backwards, drawn from the same
parameter distribution, so both classes have exactly the same distribution of single frames: a
model that ignores frame order cannot beat chance within a pair (at most 50 % overall here); one
that sees order can reach 100 %.

Clips are written as real H.264 mp4 files with PyAV (lossless RGB, so decord reads back exactly the
frames that were drawn) in the `video-csv` layout, with VTAB's split names:

    <out_dir>/train800.csv  val200.csv  train800val200.csv  test.csv     (`videos/<split>/NNNNNN.mp4,<label>`)
    <out_dir>/videos/<split>/NNNNNN.mp4
    <out_dir>/manifest.json   (every clip's sha256 and frame count; `task.json`: the generation settings)

Deterministic: the same (seed, sizes, frame size, frame count) gives the same bytes.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from ..io import atomic_write_json
from .annotations import write_annotations
from .prepare.manifest import key_of, write_manifest
from .reader import probe
from .writer import write_video

log = logging.getLogger(__name__)

CLASSES = ("move_left", "move_right", "approach", "recede", "rotate_cw", "rotate_ccw")
TASKS = {"motion": CLASSES}
SPLITS = ("train800", "val200", "test")


def _background(rng, size: int) -> np.ndarray:
    base = rng.uniform(0.0, 0.35, size=3)
    gradient = np.linspace(-0.08, 0.08, size)[None, :, None] * rng.choice([-1, 1])
    return np.clip(base[None, None, :] + gradient, 0, 1) * np.ones((size, size, 3))


def _disk(frame, cx, cy, radius, colour):
    size = frame.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    alpha = np.clip(radius + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1)[..., None]
    return frame * (1 - alpha) + alpha * colour


def _pointer(frame, cx, cy, angle, length, colour):
    """A thick bar from the centre with a disk at its tip: rotating it has a visible direction."""
    size = frame.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = math.cos(angle), math.sin(angle)
    t = np.clip((xx - cx) * dx + (yy - cy) * dy, 0, length)
    dist = np.hypot(xx - (cx + t * dx), yy - (cy + t * dy))
    alpha = np.clip(1.5 - dist, 0, 1)[..., None]
    frame = frame * (1 - alpha) + alpha * colour
    return _disk(frame, cx + length * dx, cy + length * dy, 0.13 * length + 1.2, colour)


def _forward_clip(kind: str, rng, size: int, frames: int) -> np.ndarray:
    """The first class of a pair (right, approach, clockwise); the pair's other class is this reversed."""
    background = _background(rng, size)
    colour = rng.uniform(0.55, 1.0, size=3)
    out = np.empty((frames, size, size, 3))
    t = np.linspace(0.0, 1.0, frames)
    if kind == "move":
        y = rng.uniform(0.3, 0.7) * size
        radius = rng.uniform(0.09, 0.16) * size
        x0 = rng.uniform(0.1, 0.35) * size
        x1 = size - rng.uniform(0.1, 0.35) * size
        for i, ti in enumerate(t):
            out[i] = _disk(background, x0 + (x1 - x0) * ti, y + rng.normal(0, 0.3), radius, colour)
    elif kind == "scale":
        cx, cy = rng.uniform(0.35, 0.65, size=2) * size
        r0, r1 = rng.uniform(0.05, 0.1) * size, rng.uniform(0.3, 0.42) * size
        for i, ti in enumerate(t):
            out[i] = _disk(background, cx, cy, r0 * (r1 / r0) ** ti, colour)
    else:  # rotate: image y points down, so increasing angle turns clockwise on screen
        cx, cy = rng.uniform(0.42, 0.58, size=2) * size
        start = rng.uniform(0, 2 * math.pi)
        sweep = rng.uniform(0.9, 1.4) * math.pi
        length = rng.uniform(0.28, 0.38) * size
        for i, ti in enumerate(t):
            out[i] = _pointer(background, cx, cy, start + sweep * ti, length, colour)
    noise = rng.normal(0.0, 0.02, size=out.shape)
    return np.clip(np.round((out + noise) * 255), 0, 255).astype(np.uint8)


_KINDS = {0: ("move", False), 1: ("move", True), 2: ("scale", False), 3: ("scale", True),
          4: ("rotate", False), 5: ("rotate", True)}
# move: the forward clip goes left -> right, so label 1 (move_right) is forward and 0 is reversed.
_FORWARD_IS = {"move": 1, "scale": 2, "rotate": 4}


def make_clip(label: int, rng: np.random.Generator, size: int = 32, frames: int = 16) -> np.ndarray:
    """uint8 frames (T, S, S, 3) of class `label` (index into `CLASSES`)."""
    kind, _ = _KINDS[label]
    clip = _forward_clip(kind, rng, size, frames)
    return clip if label == _FORWARD_IS[kind] else clip[::-1].copy()


def _balanced_labels(rng, n: int, num_classes: int) -> np.ndarray:
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    return labels


def generate_task(task: str, out_dir: str | Path, *, seed: int = 0, sizes: dict, frame_size: int = 32,
                  frames: int = 16, fps: int = 8) -> dict:
    """Write one task (all splits) into `out_dir` atomically (a temporary sibling renamed at the end)."""
    if task not in TASKS:
        raise ValueError(f"unknown video-mini task {task!r}; valid: {', '.join(TASKS)}")
    missing = [s for s in SPLITS if s not in sizes]
    if missing:
        raise ValueError(f"sizes must give {SPLITS}; missing {missing}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    classes = TASKS[task]
    try:
        rows = {}
        for stream, split in enumerate(SPLITS):
            rng = np.random.default_rng([seed, zlib.crc32(task.encode()), stream])
            labels = _balanced_labels(rng, int(sizes[split]), len(classes))
            rows[split] = []
            for index, label in enumerate(labels):
                rel = Path("videos", split, f"{index:06d}.mp4")
                write_video(staging / rel, make_clip(int(label), rng, frame_size, frames), fps=fps, lossless=True)
                rows[split].append((staging / rel, int(label)))
            log.info("%s/%s: %d clips written", task, split, len(labels))
        rows["train800val200"] = rows["train800"] + rows["val200"]
        for split, split_rows in rows.items():
            write_annotations(staging / f"{split}.csv", split_rows, relative_to=staging)
        info = {"task": task, "classes": list(classes), "seed": seed, "frame_size": frame_size, "frames": frames,
                "fps": fps, "counts": {s: len(r) for s, r in rows.items()}}
        atomic_write_json(staging / "task.json", info)
        videos = {key_of(path, staging): probe(path) for split in SPLITS for path, _ in rows[split]}
        write_manifest(staging, videos, splits={s: (f"{s}.csv", len(r)) for s, r in rows.items()}, skipped=[],
                       info={"format": "generated", "generator": "vpeft.video.synthetic", **info})
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info
