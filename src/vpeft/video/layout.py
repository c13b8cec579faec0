"""The `video-csv` data layout: a task folder with one annotation csv per split (`path,label`).

    <task_dir>/<split>.csv      (or the file `data.splits` names for the protocol's split)
    <task_dir>/videos/...       (any folder; csv paths are relative to the task folder or absolute)

`train_dataset` gives one augmented clip per sample; `eval_dataset` gives every test view of a
video, (V, C, T, H, W) with V = test_clips x test_crops, which the engine averages over.
"""

from __future__ import annotations

from pathlib import Path

from ..data.splits import DataError
from .dataset import MultiViewVideoDataset, VideoClipDataset
from .sampling import ClipSampler
from .settings import VideoDataSettings
from .transforms import ClipTransform

LAYOUT = "video-csv"


def settings(run) -> VideoDataSettings:
    data = VideoDataSettings.from_dict(run.data, where=f"suites.{run.suite}.data")
    frames = (run.backbone.get("model_kwargs") or {}).get("num_frames")
    if frames is not None and frames != data.num_frames:
        raise DataError(f"suites.{run.suite}.data.num_frames is {data.num_frames}, but backbone "
                        f"'{run.backbone.get('name')}' is built for num_frames={frames}; make them equal")
    return data


def _sampler(data: VideoDataSettings) -> ClipSampler:
    return ClipSampler(data.sampling, data.num_frames, data.stride)


def _transform(spec, data: VideoDataSettings, train: bool) -> ClipTransform:
    return ClipTransform(spec.input_size, tuple(spec.mean), tuple(spec.std), short_side=data.short_side,
                         train=train, train_scale=data.train_scale if train else None,
                         flip=data.flip and train, crops=1 if train else data.test_crops)


def _split_path(run, data: VideoDataSettings, split: str) -> Path:
    return Path(run.task_dir) / data.split_file(split)


def _protocol(run) -> dict:
    """The run's protocol with this layout's overrides (`protocols.<p>.layouts.video-csv`) applied."""
    return {**run.protocol, **(run.protocol.get("layouts") or {}).get(LAYOUT, {})}


def train_dataset(run, spec, tc):
    """Random clips and crops every epoch (temporal jitter is part of video training, so the split
    is never frozen into memory the way the image layout does without `train_aug`)."""
    data = settings(run)
    return VideoClipDataset(_split_path(run, data, _protocol(run)["train_split"]), _sampler(data),
                            _transform(spec, data, train=True), run.num_classes)


def eval_dataset(run, spec, tc):
    data = settings(run)
    return MultiViewVideoDataset(_split_path(run, data, _protocol(run)["eval_split"]), _sampler(data),
                                 _transform(spec, data, train=False), clips=data.test_clips,
                                 num_classes=run.num_classes)
