"""Input pipeline: what DataLoader workers deliver per second, against what a ViT-B/16 training step
consumes on the same machine, so that a cluster job's `cpus_per_task` can be sized.

Images: generated JPEGs (500 x 375, FGVC-like size) decoded by `vpeft.data.images.load_image` and put
through the image track's FGVC training transform under the vpetl protocol (resize to 256, random crop
224, flip, normalise; `vpeft.data.fgvc`). Clips: generated H.264 mp4s (320 x 240, 48 frames at 12 fps, SSv2-like)
read by the video track's `VideoClipDataset` (decord, segment sampling of 8 frames, random resized crop
to 224 and flip, as the ssv2 suite). Each is timed with 1 and 2 workers for a fixed number of seconds
after the workers' prefetched batches are drained (steady state, files in the page cache: decoding and
augmentation, not disk reads).

Ratios: workers needed = the step's rate / one worker's rate. For clips the step's rate is the image
step's divided by the FLOPs of a VideoMAE ViT-B clip over a ViT-B/16 image (counted on the meta device),
i.e. the same utilisation assumed for both.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

IMAGE_SIZE = (500, 375)
VIDEO_SIZE, VIDEO_FRAMES, VIDEO_FPS = (320, 240), 48, 12
CLIP_FRAMES = 8  # the ssv2 suite's num_frames


class JpegImages(Dataset):
    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from vpeft.data.images import load_image

        return self.transform(load_image(self.paths[index])), 0


def _smooth_frames(rng, count: int, width: int, height: int) -> np.ndarray:
    """Natural-image-like content (smooth colour fields, mild noise): JPEG and H.264 decode at the
    speed of real photos, not of white noise."""
    from PIL import Image

    frames = []
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    for t in range(count):
        field = np.roll(base, t, axis=1)  # slow motion for the video
        image = np.asarray(Image.fromarray(field).resize((width, height), Image.BICUBIC), dtype=np.int16)
        image = image + rng.integers(-8, 9, image.shape)
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(_smooth_frames(rng, 1, *IMAGE_SIZE)[0]).save(path, quality=90)
        paths.append(path)
    return paths


def write_videos(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` mp4s and their annotation csv (`path,label`, as the video track reads it)."""
    from vpeft.video.writer import write_video

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        path = write_video(folder / f"{i:04d}.mp4", _smooth_frames(rng, VIDEO_FRAMES, *VIDEO_SIZE), fps=VIDEO_FPS,
                           lossless=False)
        lines.append(f"{path.name},{i % 2}")
    csv = folder / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def loader_rate(dataset: Dataset, workers: int, batch: int, seconds: float) -> dict:
    """Samples per second that `workers` DataLoader workers deliver in steady state."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, prefetch_factor=2)
    batches = iter(loader)
    for _ in range(2 * workers + 1):  # worker start-up and the batches prefetched meanwhile
        next(batches)
    start = time.perf_counter()
    samples = 0
    while time.perf_counter() - start < seconds:
        samples += len(next(batches)[1])
    elapsed = time.perf_counter() - start
    del batches  # stops the workers
    rate = samples / elapsed
    return {"workers": workers, "samples": samples, "seconds": elapsed, "per_second": rate,
            "per_second_per_worker": rate / workers}


def clip_over_image_flops() -> float:
    from vpeft.plan import forward_flops

    clip = forward_flops("videomae_vit_base_patch16_224", (1, 3, CLIP_FRAMES, 224, 224),
                         (("num_frames", CLIP_FRAMES),))
    return clip / forward_flops("vit_base_patch16_224", (1, 3, 224, 224))


def run(step_images_per_second: float, *, seconds: float = 5.0, images: int = 48, videos: int = 8,
        batch: int = 8, workers: tuple[int, ...] = (1, 2)) -> dict:
    from vpeft.data import fgvc
    from vpeft.video.dataset import VideoClipDataset
    from vpeft.video.sampling import ClipSampler
    from vpeft.video.transforms import ClipTransform

    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    with tempfile.TemporaryDirectory(prefix="vpeft-input-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        spec = SimpleNamespace(input_size=224, mean=mean, std=std, interpolation="bicubic")
        image_set = JpegImages(write_images(tmp / "images", images),
                               fgvc._transform(spec, train=True, vpetl=True, train_aug=False))
        clip_set = VideoClipDataset(write_videos(tmp / "videos", videos), ClipSampler("segment", CLIP_FRAMES),
                                    ClipTransform(224, mean, std, short_side=224, train=True, train_scale=(0.25, 1.0),
                                                  flip=True))
        rates = {"images": {str(w): loader_rate(image_set, w, batch, seconds) for w in workers},
                 "clips": {str(w): loader_rate(clip_set, w, max(1, batch // 4), seconds) for w in workers}}
    out = ratios(rates, step_images_per_second, clip_over_image_flops())
    out.update(batch=batch, seconds_per_measure=seconds, cpu_count=torch.multiprocessing.cpu_count())
    return out


def ratios(rates: dict, step_images_per_second: float, clip_over_image: float) -> dict:
    """Per kind (images, clips): one worker's rate (at the most workers measured), how it scales from the
    fewest to the most workers, and the workers that keep the step fed."""
    step = {"images": step_images_per_second, "clips": step_images_per_second / clip_over_image}
    out = {"step_images_per_second": step_images_per_second, "clip_over_image_flops": clip_over_image}
    for kind, by_workers in rates.items():
        counts = sorted(int(w) for w in by_workers)
        one, top = by_workers[str(counts[0])], by_workers[str(counts[-1])]
        per_worker = top["per_second_per_worker"]
        out[kind] = {"by_workers": by_workers, "step_per_second": step[kind], "per_second_per_worker": per_worker,
                     "scaling": top["per_second"] / (one["per_second"] * counts[-1] / counts[0]),
                     "step_over_one_worker": step[kind] / per_worker,
                     "workers_to_feed_step": math.ceil(step[kind] / per_worker)}
    return out
