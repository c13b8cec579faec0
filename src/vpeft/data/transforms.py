"""Image transforms of the image protocols (catalog §4.2): direct resize, no crop, normalise."""

from __future__ import annotations

from .. import _lazy_dynamo  # noqa: F401  (first: timm without loading torch._dynamo)
from torchvision import transforms as T

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def _resize(input_size: int, interpolation: str):
    return T.Resize((input_size, input_size), interpolation=_INTERPOLATION[interpolation], antialias=True)


def build_uint8_transform(input_size: int, interpolation: str = "bilinear"):
    """The deterministic part of `build_transform` (resize) as a uint8 CHW tensor: ToTensor + Normalize
    of it later give exactly what `build_transform` gives."""
    return T.Compose([_resize(input_size, interpolation), T.PILToTensor()])


def build_transform(input_size: int, mean, std, interpolation: str = "bilinear", train_aug: bool = False):
    """`train_aug` adds V-PETL's augmentation: horizontal flip + RandAugment rand-m9-mstd0.5-inc1."""
    steps = [_resize(input_size, interpolation)]
    if train_aug:
        from timm.data.auto_augment import rand_augment_transform

        rand_augment = rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": tuple(round(255 * m) for m in mean)})
        steps += [T.RandomHorizontalFlip(0.5), _with_zero_bit_posterize(rand_augment)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def _posterize_keeping_zero_bits(img, bits_to_keep, **_):
    """timm's posterize, also for 0 bits: "inc1" magnitudes reach 0 bits kept, which Pillow < 13 turned
    into a black image and Pillow 13 refuses (ValueError), so V-PETL's recipe would crash mid-epoch."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked off, as Pillow < 13 computed it
    return ImageOps.posterize(img, bits_to_keep)


def _with_zero_bit_posterize(rand_augment):
    from timm.data import auto_augment

    for op in rand_augment.ops:
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = _posterize_keeping_zero_bits
    return rand_augment
