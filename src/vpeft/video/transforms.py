"""Spatial transforms of clips: uint8 frames (T, H, W, 3) -> float tensor (C, T, H, W).

* train: resize the short side to `short_side`, then a random crop of `input_size` (or, with
  `train_scale`, a random resized crop covering that fraction range of the area), optional horizontal
  flip — off by default because flipping swaps left and right, which SSv2 labels (and our generated
  left/right classes) depend on.
* test: resize the short side to `short_side`, then `crops` crops of `input_size` spread along the long
  side (1: centre; 3: both ends and centre, as VideoMAE's three-crop test).

All randomness comes from torch's global generator (see `sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def to_float_clip(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def resize_short_side(clip: torch.Tensor, short_side: int) -> torch.Tensor:
    """(T, C, H, W) with its short side resized to `short_side` (bilinear, antialiased)."""
    h, w = clip.shape[-2:]
    if min(h, w) == short_side:
        return clip
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)


def _crop(clip: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    return clip[..., top:top + height, left:left + width]


def _rand(high: int) -> int:
    return int(torch.randint(0, high + 1, (1,)).item()) if high > 0 else 0


@dataclass(frozen=True)
class ClipTransform:
    input_size: int
    mean: tuple
    std: tuple
    short_side: int | None = None
    train: bool = False
    train_scale: tuple | None = None
    flip: bool = False
    crops: int = 1

    def __post_init__(self):
        if self.crops not in (1, 3):
            raise ValueError(f"data.test_crops must be 1 or 3, got {self.crops}")
        if self.short_side is not None and self.short_side < self.input_size:
            raise ValueError(f"data.short_side {self.short_side} is smaller than the crop {self.input_size}")

    def _normalise(self, clip: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=clip.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=clip.dtype).view(1, 3, 1, 1)
        return ((clip - mean) / std).permute(1, 0, 2, 3).contiguous()  # (C, T, H, W)

    def _resized(self, frames: np.ndarray) -> torch.Tensor:
        return resize_short_side(to_float_clip(frames), self.short_side or self.input_size)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """Train: one augmented (C, T, S, S) clip. Test: (crops, C, T, S, S)."""
        if self.train:
            return self._normalise(self._train_crop(self._resized(frames)))
        return torch.stack([self._normalise(c) for c in self.test_crops(self._resized(frames))])

    def _train_crop(self, clip: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        h, w = clip.shape[-2:]
        if self.train_scale:
            low, high = self.train_scale
            area = h * w * (low + (high - low) * float(torch.rand(1)))
            side = int(min(h, w, max(8, round(area ** 0.5))))
            clip = _crop(clip, _rand(h - side), _rand(w - side), side, side)
            clip = F.interpolate(clip, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        else:
            clip = _crop(clip, _rand(h - s), _rand(w - s), s, s)
        if self.flip and float(torch.rand(1)) < 0.5:
            clip = clip.flip(-1)
        return clip

    def test_crops(self, clip: torch.Tensor) -> list[torch.Tensor]:
        s = self.input_size
        h, w = clip.shape[-2:]
        if self.crops == 1:
            return [_crop(clip, (h - s) // 2, (w - s) // 2, s, s)]
        if w >= h:  # spread along the long side
            return [_crop(clip, (h - s) // 2, left, s, s) for left in (0, (w - s) // 2, w - s)]
        return [_crop(clip, top, (w - s) // 2, s, s) for top in (0, (h - s) // 2, h - s)]
