"""Writing videos with PyAV: generated clips (lossless) and transcoding during data preparation.

Lossless clips use `libx264rgb` at crf 0: H.264 in the RGB colour space, so the bytes decord decodes
are exactly the RGB frames that were written (tested). Transcoded real videos use `libx264` yuv420p,
the format the V-PETL / VideoMAE pipelines read. Files are written under a temporary name and renamed,
so an interrupted write never leaves a video that looks complete.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import VideoReadError

log = logging.getLogger(__name__)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, *, lossless: bool = True,
                crf: int = 18) -> Path:
    """Write uint8 RGB frames (T, H, W, 3) to an mp4. `lossless`: libx264rgb crf 0 (bit-exact RGB)."""
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"{path}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if not lossless and (height % 2 or width % 2):
        raise ValueError(f"{path}: yuv420p needs even width and height, got {width}x{height}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=Fraction(fps))
            stream.width, stream.height = width, height
            stream.pix_fmt = "rgb24" if lossless else "yuv420p"
            # fixed options: same frames -> same bytes (no threads racing over slices)
            stream.options = {"crf": "0" if lossless else str(crf), "preset": "veryfast", "threads": "1"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def even(value: float) -> int:
    """Nearest even integer >= 2 (yuv420p needs even sizes)."""
    return max(2, round(value / 2.0) * 2)


def scaled_size(width: int, height: int, *, short_side: int | None = None, height_to: int | None = None):
    """Output (width, height): short side -> `short_side` (K400), or height -> `height_to` (SSv2 keeps
    its 240 px height), aspect ratio kept; unchanged when neither is given. Always even."""
    if short_side:
        scale = short_side / min(width, height)
    elif height_to:
        scale = height_to / height
    else:
        scale = 1.0
    return even(width * scale), even(height * scale)


def transcode(src: str | Path, dst: str | Path, *, short_side: int | None = None, height: int | None = None,
              crf: int = 18) -> dict:
    """Decode `src` (any container PyAV reads: webm, avi, mp4) and write H.264 yuv420p mp4 `dst`,
    optionally resized (see `scaled_size`). Keeps the source frame rate. Returns frame count and size."""
    import av

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(dst)
    count = 0
    try:
        with av.open(str(src)) as source:
            in_stream = source.streams.video[0]
            rate = in_stream.average_rate or in_stream.guessed_rate or Fraction(30)
            out_w, out_h = scaled_size(in_stream.codec_context.width, in_stream.codec_context.height,
                                       short_side=short_side, height_to=height)
            with av.open(str(tmp), mode="w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = out_w, out_h, "yuv420p"
                stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
                for frame in source.decode(in_stream):
                    frame = frame.reformat(width=out_w, height=out_h, format="yuv420p")
                    frame.pts = None  # let the encoder number frames at the output rate
                    for packet in stream.encode(frame):
                        container.mux(packet)
                    count += 1
                for packet in stream.encode():
                    container.mux(packet)
        if count == 0:
            raise VideoReadError(f"{src}: no video frames could be decoded")
        os.replace(tmp, dst)
    except VideoReadError:
        raise
    except Exception as err:  # noqa: BLE001 - PyAV's InvalidDataError and friends: name the file
        raise VideoReadError(f"cannot transcode {src}: {type(err).__name__}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"frames": count, "width": out_w, "height": out_h}
