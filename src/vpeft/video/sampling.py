"""Which frames of a video make a clip.

Two schemes, as in the VideoMAE / V-PETL loaders (catalog §3.3, §5.3):

* **segment** (SSv2, TSN-style): cut the video into `num_frames` equal segments and take one frame
  from each, at a random position when training and at a fixed position per test clip. Covers the
  whole video whatever its length, which SSv2's short, order-defined actions need.
* **dense** (K400 / HMDB51): `num_frames` frames `stride` apart from one start; a random start when
  training, `num_clips` starts spread evenly over the video at test time. Short videos repeat their
  last frame.

Training randomness comes from torch's global generator, so a resumed run (which restores it) draws
the same clips as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCHEMES = ("segment", "dense")


def _uniform_int(low: int, high: int) -> int:
    """Random integer in [low, high] from torch's global generator."""
    return low + int(torch.randint(0, high - low + 1, (1,)).item()) if high > low else low


def segment_indices(num_video_frames: int, num_frames: int, *, train: bool, clip: int = 0,
                    num_clips: int = 1) -> np.ndarray:
    """One frame per segment. Test clip `clip` of `num_clips` takes the frame at fraction
    (clip + 0.5) / num_clips of every segment (one clip: the segment middle)."""
    n = num_video_frames
    edges = np.linspace(0.0, float(n), num_frames + 1)
    out = np.empty(num_frames, dtype=np.int64)
    for i in range(num_frames):
        start = int(np.floor(edges[i]))
        end = max(start, int(np.ceil(edges[i + 1])) - 1)  # inclusive last frame of the segment
        if train:
            out[i] = _uniform_int(start, end)
        else:
            out[i] = start + int((end - start + 1) * (clip + 0.5) // num_clips)
    return np.clip(out, 0, n - 1)


def dense_indices(num_video_frames: int, num_frames: int, stride: int, *, train: bool, clip: int = 0,
                  num_clips: int = 1) -> np.ndarray:
    """`num_frames` frames `stride` apart; random start (train) or the `clip`-th of `num_clips` evenly
    spaced starts (test). Indices past the end repeat the last frame."""
    n = num_video_frames
    span = (num_frames - 1) * stride + 1
    room = max(n - span, 0)
    if train:
        start = _uniform_int(0, room)
    else:
        start = int(round(room * clip / (num_clips - 1))) if num_clips > 1 else room // 2
    return np.minimum(start + np.arange(num_frames) * stride, n - 1)


@dataclass(frozen=True)
class ClipSampler:
    """A sampling scheme with its settings (`data:` keys `sampling`, `num_frames`, `stride`)."""

    scheme: str = "segment"
    num_frames: int = 8
    stride: int = 4

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"data.sampling must be one of {SCHEMES}, got {self.scheme!r}")
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"data.num_frames and data.stride must be >= 1, got {self.num_frames}, {self.stride}")

    def __call__(self, num_video_frames: int, *, train: bool, clip: int = 0, num_clips: int = 1) -> np.ndarray:
        if num_video_frames < 1:
            raise ValueError("a video with no frames has no clip")
        if self.scheme == "segment":
            return segment_indices(num_video_frames, self.num_frames, train=train, clip=clip, num_clips=num_clips)
        return dense_indices(num_video_frames, self.num_frames, self.stride, train=train, clip=clip,
                             num_clips=num_clips)
