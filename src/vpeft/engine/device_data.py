"""The training split held on the device as uint8 images, batched there (`training.data_on_device`).

A GPU trains VTAB-1k's 1,000 images (150 MB as uint8 at 224 px) faster than a CPU can decode, resize
and augment them, so a layout that can (`train_uint8`) decodes and resizes its training split once;
every batch is then gathered, augmented (when the protocol asks for it) and normalised on the
device. Without augmentation the batches equal the DataLoader's exactly: the same shuffled order
(an index DataLoader with the run's shuffle generator) and the same arithmetic as ToTensor +
Normalize. With augmentation, horizontal flip and torchvision's RandAugment (2 ops, magnitude 9)
run per image on the device: the same recipe as V-PETL's, not the same random draws as timm's
PIL RandAugment.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..data.vtab import Uint8Split, normalize_uint8
from .feature_cache import IndexDataset


class DeviceBatches:
    """Iterable of (normalised float images, labels) batches, both on `device`, in the order a
    shuffling DataLoader with `generator` draws them."""

    def __init__(self, split: Uint8Split, device: torch.device, batch_size: int, generator: torch.Generator):
        self.device = device
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.mean, self.std = split.mean, split.std
        self.order = DataLoader(IndexDataset(split.labels), batch_size=batch_size, shuffle=True, generator=generator)
        self.augment = _DeviceAugment(split.mean) if split.augment else None

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for index, _ in self.order:
            index = index.to(self.device)
            images = self.images[index]
            if self.augment is not None:
                images = self.augment(images)
            yield normalize_uint8(images, self.mean, self.std), self.labels[index]


class _DeviceAugment:
    """Horizontal flip (p = 0.5) and RandAugment, per image, on uint8 batches on their device. The
    random draws come from torch's global CPU generator (saved in every checkpoint). RandAugment runs
    image by image (one op draw each, as V-PETL's): a Python loop of small kernels, whose cost on a
    GPU is not yet measured (the vtab1k protocol, which the GPU benchmark runs, does not augment)."""

    def __init__(self, mean):
        from torchvision.transforms import v2

        self.rand_augment = v2.RandAugment(num_ops=2, magnitude=9, fill=[round(255 * m) for m in mean])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        flip = (torch.rand(images.shape[0]) < 0.5).to(images.device).view(-1, 1, 1, 1)
        images = torch.where(flip, images.flip(-1), images)
        return torch.stack([self.rand_augment(image) for image in images])
