"""Video datasets: one augmented clip per training sample, clips x crops views per test sample."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .annotations import read_annotations
from .reader import open_video, read_frames
from .sampling import ClipSampler
from .transforms import ClipTransform


class VideoClipDataset(Dataset):
    """Training split: `(clip (C, T, H, W), label)`, a new random clip and crop at every access."""

    def __init__(self, annotation_file: str | Path, sampler: ClipSampler, transform: ClipTransform,
                 num_classes: int | None = None):
        self.annotation_file = Path(annotation_file)
        self.items = read_annotations(self.annotation_file, num_classes)
        self.sampler, self.transform = sampler, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        reader = open_video(path)
        frames = read_frames(path, self.sampler(len(reader), train=True), reader=reader)
        return self.transform(frames), label


class MultiViewVideoDataset(Dataset):
    """Evaluation split: `(views (V, C, T, H, W), label)` with V = clips x crops (clip-major); the
    engine averages the model's predictions over V. `views` says how many there are; with a single
    view the sample is the plain clip (C, T, H, W), as the engine expects when `views` is 1."""

    def __init__(self, annotation_file: str | Path, sampler: ClipSampler, transform: ClipTransform,
                 clips: int = 1, num_classes: int | None = None):
        self.annotation_file = Path(annotation_file)
        self.items = read_annotations(self.annotation_file, num_classes)
        self.sampler, self.transform, self.clips = sampler, transform, clips
        self.views = clips * transform.crops

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        reader = open_video(path)
        n = len(reader)
        views = []
        for clip in range(self.clips):
            frames = read_frames(path, self.sampler(n, train=False, clip=clip, num_clips=self.clips), reader=reader)
            views.append(self.transform(frames))  # (crops, C, T, H, W)
        views = torch.cat(views)
        return (views if self.views > 1 else views[0]), label
