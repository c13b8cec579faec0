"""Backbones by timm `arch.tag`, with checkpoints loaded from local files through timm.

Real and demo backbones take the same path: `create_backbone` builds the timm architecture with
random init and no head, checks the checkpoint's sha256, loads it in its format, then attaches a
fresh head for the task. Formats (`checkpoint_format` in the config, else from the file name):

* `timm`: a timm state dict (`.safetensors`, or `.pth` read with `weights_only=True`) through timm's
  `checkpoint_path`;
* `google-npz`: Google's original ViT `.npz` (vpeft.backbones.google_npz; timm's npz reader after a
  layout check);
* `swin-official`: Microsoft's official Swin `.pth` (vpeft.backbones.swin_official; keys converted
  with timm's filter, the 22k head dropped, loaded strictly);
* `dinov2`, `open-clip`, `mae`: Meta's DINOv2 `.pth`, open_clip's CLIP state dict, MAE's `.pth`
  (vpeft.backbones.release; layout checked, keys converted by timm, loaded strictly).

The model is built for the entry's `input_size`: when it differs from the architecture's default
(DINOv2's 518 px, a ViT-B/16 at 384 px), `img_size` is passed to timm and the checkpoint's position
embedding is resampled to the new patch grid on load.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import demo  # noqa: F401  (registers vit_demo_patch4_32 with timm)
from .release import RELEASE_FORMATS, load_release

log = logging.getLogger(__name__)


class BackboneError(RuntimeError):
    """A backbone cannot be built: unknown name, missing or corrupt checkpoint."""


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone entry of the config (`backbones.<name>`)."""

    name: str
    arch: str
    checkpoint: str | None = None
    sha256: str | None = None
    url: str | None = None
    input_size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    notes: str = ""
    checkpoint_format: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, entry: dict) -> "BackboneSpec":
        known = {f for f in cls.__dataclass_fields__ if f not in ("name", "extra")}
        values = {k: v for k, v in entry.items() if k in known}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(name=name, extra={k: v for k, v in entry.items() if k not in known}, **values)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(spec: BackboneSpec, base_dir: str | Path = ".") -> tuple[Path | None, str | None]:
    """Path and sha256 of the spec's checkpoint, verified. (None, None) for a random-init backbone."""
    if not spec.checkpoint:
        return None, None
    path = Path(base_dir, spec.checkpoint)
    if not path.is_file():
        where = f" Download it from {spec.url} and" if spec.url else ""
        raise BackboneError(
            f"checkpoint of backbone '{spec.name}' ({spec.arch}) not found at {path}.{where} place it at that "
            f"path (or set backbones.{spec.name}.checkpoint in the config).")
    digest = sha256_of(path)
    if spec.sha256 and digest != spec.sha256.lower():
        raise BackboneError(
            f"checkpoint {path} has sha256 {digest}, but backbones.{spec.name}.sha256 says {spec.sha256}; "
            f"refusing a file that is not the one the config names")
    if not spec.sha256:
        log.warning("backbone %s: no sha256 in config; file %s has sha256 %s", spec.name, path, digest)
    return path, digest


CHECKPOINT_FORMATS = ("timm", "google-npz", "swin-official", "dinov2", "open-clip", "mae")


def checkpoint_format(spec: BackboneSpec) -> str:
    fmt = spec.checkpoint_format or ("google-npz" if str(spec.checkpoint or "").endswith(".npz") else "timm")
    if fmt not in CHECKPOINT_FORMATS:
        raise BackboneError(f"backbones.{spec.name}.checkpoint_format: unknown format {fmt!r}; valid: "
                            f"{', '.join(CHECKPOINT_FORMATS)}")
    return fmt


def model_kwargs(spec: BackboneSpec) -> dict:
    """timm keyword arguments of the entry: its `model_kwargs`, plus `img_size` when its `input_size`
    differs from the architecture's default input size."""
    import timm

    kwargs = dict(spec.model_kwargs)
    if "img_size" in kwargs:
        return kwargs
    try:
        cfg = timm.models.get_pretrained_cfg(spec.arch)
    except Exception:  # noqa: BLE001 - an architecture without a pretrained config keeps its defaults
        cfg = None
    default = getattr(cfg, "input_size", None) if cfg is not None else None
    if default and int(default[-1]) != int(spec.input_size):
        kwargs["img_size"] = int(spec.input_size)
    return kwargs


def _filter_fn(model):
    """timm's checkpoint filter of the model's family (resamples position embeddings), if it has one."""
    import sys

    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def register_architecture(arch: str) -> None:
    """Make sure timm knows `arch`: the video architectures register when a run first asks for one
    (an image run never imports the video models)."""
    import timm

    if not timm.is_model(arch):
        from ..video import models  # noqa: F401  (registers the video architectures with timm)


def create_backbone(spec: BackboneSpec, num_classes: int, *, pretrained: bool = True,
                    drop_path_rate: float = 0.0, base_dir: str | Path = "."):
    """Build `spec.arch` with its checkpoint loaded (if `pretrained`) and a new head for the task.

    Returns (model, checkpoint_sha256 or None).
    """
    import timm
    import torch

    register_architecture(spec.arch)
    path, digest = resolve_checkpoint(spec, base_dir) if pretrained else (None, None)
    fmt = checkpoint_format(spec) if path else None
    kwargs = model_kwargs(spec)
    # a timm file for another input size goes through timm's filter, which resamples the position embedding
    resample = fmt == "timm" and "img_size" in kwargs and "img_size" not in spec.model_kwargs
    try:
        # timm loads .pth with torch.load(weights_only=True) and .npz without pickle: a checkpoint
        # can carry tensors only, never code.
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate,
                                  checkpoint_path=str(path) if fmt == "timm" and not resample else "", **kwargs)
        if resample:
            from timm.models import load_checkpoint

            load_checkpoint(model, str(path), filter_fn=_filter_fn(model))
        elif fmt in RELEASE_FORMATS:
            load_release(model, path, fmt)
        elif fmt == "google-npz":
            from .google_npz import load_google_npz

            load_google_npz(model, path)
        elif fmt == "swin-official":
            from .swin_official import load_official_swin

            load_official_swin(model, path)
    except Exception as err:  # key mismatch, pickled objects, truncated file: name file and architecture
        if path is None:
            raise
        raise BackboneError(f"cannot load {path} ({fmt} format) into {spec.arch}: {type(err).__name__}: {err}") \
            from err
    model.reset_classifier(num_classes)
    # the normalisation the run's data transform applies, for code that needs pixel values (GPS's views)
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}),
                            "mean": tuple(spec.mean), "std": tuple(spec.std)}
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        # timm's ViT head init (trunc-normal 0.02, zero bias): small logits, but non-zero so that
        # gradients reach the method's branches from the first step.
        torch.nn.init.trunc_normal_(head.weight, std=0.02)
        torch.nn.init.zeros_(head.bias)
    return model, digest
