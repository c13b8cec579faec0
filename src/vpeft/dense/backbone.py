"""The dense track's backbone: an unmodified timm Swin, our PEFT method applied to it, multi-scale outputs.

`DenseSwin` holds timm's own Swin modules under timm's names (`patch_embed`, `layers.S.blocks.N`) and,
like mmdet's and mmseg's Swin, one LayerNorm per output stage (`norm0` ... `norm3`) instead of timm's
single final norm: the dense papers' parameter counts (BitFit, LN-Tune) include these output norms.
`forward` returns NCHW feature maps of the requested stages (strides 4, 8, 16, 32) for FPN / UperNet.

The method is applied by name through `vpeft.methods.apply_method` (one implementation per method,
shared with the image track). The backbone's trainable parameters are then exactly the method's; the
neck and heads of the detector or segmentor are trained as usual and counted separately.

Checkpoints load through the image track's code, `vpeft.backbones.create_backbone`: sha256 check,
then the file's format (`swin-official`: Microsoft's `swin_base_patch4_window7_224_22k.pth` layout,
converted with timm's filter and loaded strictly; `timm`: a timm state dict such as the demo
backbone's safetensors). The output norms start fresh, as in mmdet and mmseg.

The class is registered as `VPeftSwin` in mmdet's and mmseg's model registries when this module is
imported (generated configs list it in `custom_imports`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..backbones import BackboneError, BackboneSpec, create_backbone
from ..methods import apply_method, build_method

log = logging.getLogger(__name__)


class DenseSwin(nn.Module):
    """timm Swin + per-stage output norms, with a PEFT method applied. Outputs NCHW maps per stage.

    Args:
        backbone: the backbone's config entry (`backbones.<name>` with `name` added): `arch` (timm name:
            `swin_base_patch4_window7_224`, `swin_large_patch4_window7_224`, `swin_demo_patch4_window4`),
            `checkpoint`, `sha256`, `checkpoint_format` (`swin-official` for Microsoft's .pth files).
        method: registered PEFT method name; `method_hparams` its hyper-parameters.
        out_indices: stages whose outputs are returned (and get an output norm).
        drop_path_rate: stochastic depth of the backbone.
        pretrained: load the checkpoint (False: random init, for tests and controls).
        base_dir: folder relative checkpoint paths are resolved against.
    """

    def __init__(self, backbone: dict, method: str = "linear", method_hparams: dict | None = None,
                 out_indices=(0, 1, 2, 3), drop_path_rate: float = 0.2, pretrained: bool = True,
                 base_dir: str = "."):
        super().__init__()
        from . import demo_swin  # noqa: F401  (registers the demo architecture with timm)

        entry = {k: v for k, v in dict(backbone).items() if k != "name"}
        if "arch" not in entry:
            raise BackboneError(f"dense backbone {backbone.get('name', '?')!r}: its config entry has no 'arch'")
        # always_partition keeps window 7 and the shifts at every stage (as the official Swin does on
        # large images; timm would otherwise shrink windows to the 224-px feature sizes);
        # dynamic_img_size builds the shift masks for each input size.
        entry["model_kwargs"] = {**(entry.get("model_kwargs") or {}), "always_partition": True,
                                 "dynamic_img_size": True}
        spec = BackboneSpec.from_config(backbone.get("name") or entry["arch"], entry)
        swin, self.checkpoint_sha256 = create_backbone(
            spec, 0, pretrained=pretrained and bool(spec.checkpoint), drop_path_rate=drop_path_rate,
            base_dir=base_dir)
        self.arch = spec.arch
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or any(not 0 <= i < len(swin.layers) for i in self.out_indices):
            raise BackboneError(f"out_indices {tuple(out_indices)} outside the {len(swin.layers)} stages of "
                                f"{spec.arch}")
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers  # timm's final `norm` and head are dropped: the output norms replace them
        self.num_features = [int(stage.blocks[-1].norm1.normalized_shape[0]) for stage in swin.layers]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.method = build_method(method, method_hparams)
        if self.method.needs_selection or getattr(self.method, "needs_search", False):
            raise BackboneError(f"method '{method}' needs a data-dependent stage, which the dense track does "
                                f"not run; choose a method without one")
        self.applied = apply_method(self, self.method)
        log.info("dense backbone %s + %s: %d modules matched, %d trainable parameters", spec.arch, method,
                 len(self.applied.matched), self.applied.parameter_counts()["trainable"])

    @property
    def channels(self) -> list[int]:
        """Channels of the returned maps, in order (the neck's `in_channels`)."""
        return [self.num_features[i] for i in self.out_indices]

    def init_weights(self) -> None:
        """Weights come from the checkpoint at construction; mmengine's init pass must not reset them."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # pad to whole patches at the bottom / right, as mmdet's and mmseg's Swin do
        patch = self.patch_embed.patch_size
        pad_h, pad_w = (-images.shape[-2]) % patch[0], (-images.shape[-1]) % patch[1]
        if pad_h or pad_w:
            images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h))
        x = self.patch_embed(images)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
            if i == self.out_indices[-1]:
                break
        return tuple(outs)


def _register_with_openmmlab() -> None:
    """Make `type='VPeftSwin'` buildable from mmdet and mmseg configs (each has its own registry)."""
    for module in ("mmdet.registry", "mmseg.registry"):
        try:
            registry = __import__(module, fromlist=["MODELS"]).MODELS
        except ImportError:  # one of the two toolboxes may be absent; the other still works
            continue
        registry.register_module(name="VPeftSwin", module=DenseSwin, force=True)


_register_with_openmmlab()
from . import checkpoints  # noqa: E402,F401  (registers AtomicCheckpointHook; configs import this module)
