"""VTAB-1k task folders in the NOAH layout (catalog §6.1); the embedded suites use the same layout.

Training reads the checked manifest when the run names its task index (`run.data["index"]`, the
output of the rule check_task_data): the folder that was checked (cifar or cifar100), the rows of the
protocol's splits, and each image's sha256, verified when the image is read. Without an index (a run
built by hand) the split files of `run.task_dir` are read directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .images import load_image
from .manifest import Row, load_checked_image, read_rows
from .protocols import for_layout, random_training_input
from .splits import SPLITS, DataError, read_split_file

# Deterministic training splits up to this many images are decoded once into memory (VTAB's 1000 at
# 224 px are 0.6 GB); larger ones (FGVC) are decoded per epoch.
MATERIALIZE_LIMIT = 4096


@dataclass
class Uint8Split:
    """A decoded, resized training split: images (N, C, H, W) uint8, labels (N,), normalisation."""
    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple
    std: tuple
    augment: bool

    def normalized(self) -> torch.utils.data.TensorDataset:
        """The split as ToTensor + Normalize make it (the layout's in-memory training set, bit for bit)."""
        return torch.utils.data.TensorDataset(normalize_uint8(self.images, self.mean, self.std), self.labels)


def normalize_uint8(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, C, H, W) images to floats, as ToTensor + Normalize compute them, on their device."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float().div(255).sub(mean).div(std)


class VtabSplit(Dataset):
    """One split of one task: (image tensor, label) pairs read through `transform`."""

    def __init__(self, task_dir: str | Path, split: str, transform, num_classes: int | None = None):
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
        self.task_dir = Path(task_dir)
        self.split = split
        self.items = read_split_file(self.task_dir / f"{split}.txt", num_classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        rel, label = self.items[index]
        return self.transform(load_image(self.task_dir / rel)), label


class ManifestSplit(Dataset):
    """Rows of a checked manifest: each image is verified against its sha256 before decoding."""

    def __init__(self, task_dir: str | Path, rows: list[Row], transform):
        self.task_dir = Path(task_dir)
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        return self.transform(load_checked_image(self.task_dir / row.path, row.sha256)), row.label


def materialize(dataset: Dataset) -> torch.utils.data.TensorDataset:
    """Decode a deterministic split once into memory (no augmentation: every epoch sees the same tensors)."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.utils.data.TensorDataset(torch.stack(images), torch.tensor(labels, dtype=torch.long))


def materialize_small(dataset: Dataset) -> Dataset:
    return materialize(dataset) if len(dataset) <= MATERIALIZE_LIMIT else dataset


def _transform(spec, train_aug: bool, interpolation: str | None = None):
    from .transforms import build_transform

    return build_transform(spec.input_size, spec.mean, spec.std, interpolation or spec.interpolation,
                           train_aug=train_aug)


def _split(run, split: str, transform) -> Dataset:
    index = (run.data or {}).get("index")
    if index:
        task_dir, rows = read_rows(index, [split])
        return ManifestSplit(task_dir, rows, transform)
    return VtabSplit(run.task_dir, split, transform, run.num_classes)


def train_dataset(run, spec, tc):
    """The protocol's training split: augmented when the protocol allows it and `train_aug` is on,
    else decoded once into memory."""
    protocol = for_layout(run.protocol, "vtab")
    augment = random_training_input(protocol, tc.train_aug)
    # V-PETL resizes with bicubic interpolation before RandAugment (catalog §4.2)
    interpolation = "bicubic" if augment and protocol.augmentation == "vpetl" else None
    train = _split(run, protocol.train_split, _transform(spec, augment, interpolation))
    return train if augment else materialize_small(train)


def train_uint8(run, spec, tc):
    """The training split decoded and resized once, as uint8 (for the engine's `data_on_device` path),
    with whether to augment it; None when the split is too large to hold."""
    from .transforms import build_uint8_transform

    protocol = for_layout(run.protocol, "vtab")
    augment = random_training_input(protocol, tc.train_aug)
    interpolation = "bicubic" if augment and protocol.augmentation == "vpetl" else spec.interpolation
    split = _split(run, protocol.train_split, build_uint8_transform(spec.input_size, interpolation))
    if len(split) > MATERIALIZE_LIMIT:
        return None
    images, labels = materialize(split).tensors
    return Uint8Split(images, labels, tuple(spec.mean), tuple(spec.std), augment)


def eval_dataset(run, spec, tc):
    protocol = for_layout(run.protocol, "vtab")
    return _split(run, protocol.eval_split, _transform(spec, False))
