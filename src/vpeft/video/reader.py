"""Reading videos with decord, the only video reader of the benchmark.

decord is imported lazily so that importing the video track for model code alone stays light. Every
failure is re-raised as `VideoReadError` naming the file: a corrupt video can never turn into a
silently wrong sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import VideoReadError


def _decord():
    import decord

    decord.bridge.set_bridge("native")
    return decord


def open_video(path: str | Path, *, width: int = -1, height: int = -1):
    """A `decord.VideoReader` over `path` (one decoding thread: the benchmark runs many jobs at once).
    `width`/`height` > 0 make decord resize while decoding."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"video not found: {path}")
    decord = _decord()
    try:
        reader = decord.VideoReader(str(path), num_threads=1, width=width, height=height)
    except Exception as err:  # noqa: BLE001 - decord raises its own DECORDError / RuntimeError kinds
        raise VideoReadError(f"cannot open video {path}: {type(err).__name__}: {_first_line(err)}") from None
    if len(reader) <= 0:
        raise VideoReadError(f"video {path} has no frames")
    return reader


def frame_count(path: str | Path) -> int:
    return len(open_video(path))


def read_frames(path: str | Path, indices, *, reader=None) -> np.ndarray:
    """Frames `indices` of `path` as uint8 RGB, shape (T, H, W, 3)."""
    reader = reader if reader is not None else open_video(path)
    indices = [int(i) for i in indices]
    n = len(reader)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise VideoReadError(f"{path}: frame index {bad[0]} outside [0, {n})")
    try:
        frames = reader.get_batch(indices).asnumpy()
    except Exception as err:  # noqa: BLE001 - any decoding failure is this file's fault: name it
        raise VideoReadError(f"cannot decode frames {indices[:4]}... of {path}: {type(err).__name__}: "
                             f"{_first_line(err)}") from None
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise VideoReadError(f"{path}: decoded frames have shape {frames.shape}, expected ({len(indices)}, H, W, 3)")
    return frames


def probe(path: str | Path) -> dict:
    """Frame count, size and frame rate of a readable video; raises `VideoReadError` otherwise.
    Decodes the first and last frame too: a truncated file often opens but fails there."""
    reader = open_video(path)
    n = len(reader)
    first = read_frames(path, [0, n - 1] if n > 1 else [0], reader=reader)
    return {"frames": n, "height": int(first.shape[1]), "width": int(first.shape[2]),
            "fps": float(reader.get_avg_fps())}


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""
