"""Image transforms of the image protocols (catalog §4.2): direct resize, no crop, normalise."""

from __future__ import annotations

from torchvision import transforms as T

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def build_transform(input_size: int, mean, std, interpolation: str = "bilinear", train_aug: bool = False):
    """`train_aug` adds V-PETL's augmentation: horizontal flip + RandAugment rand-m9-mstd0.5-inc1."""
    resize = T.Resize((input_size, input_size), interpolation=_INTERPOLATION[interpolation], antialias=True)
    steps = [resize]
    if train_aug:
        from timm.data.auto_augment import rand_augment_transform

        steps += [
            T.RandomHorizontalFlip(0.5),
            rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": tuple(round(255 * m) for m in mean)}),
        ]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
