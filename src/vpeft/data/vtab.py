"""VTAB-1k task folders in the NOAH layout (catalog §6.1); the embedded suites use the same layout."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .images import load_image
from .splits import SPLITS, DataError, read_split_file


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


def materialize(dataset: Dataset) -> torch.utils.data.TensorDataset:
    """Decode a deterministic split once into memory (no augmentation: every epoch sees the same tensors)."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.utils.data.TensorDataset(torch.stack(images), torch.tensor(labels, dtype=torch.long))



def _transform(spec, train_aug: bool):
    from .transforms import build_transform

    return build_transform(spec.input_size, spec.mean, spec.std, spec.interpolation, train_aug=train_aug)


def train_dataset(run, spec, tc):
    """The `vtab` layout's training split (augmented when `train_aug`, else decoded once into memory)."""
    train = VtabSplit(run.task_dir, run.protocol["train_split"], _transform(spec, tc.train_aug), run.num_classes)
    return train if tc.train_aug else materialize(train)  # deterministic input: decode once, not per epoch


def eval_dataset(run, spec, tc):
    return VtabSplit(run.task_dir, run.protocol["eval_split"], _transform(spec, False), run.num_classes)
