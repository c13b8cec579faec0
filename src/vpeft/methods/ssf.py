"""SSF, Scaling & Shifting your Features (Lian et al., NeurIPS 2022).

Placement: a per-channel affine map y = gamma * x + beta on the *output* of the patch-embedding
projection, of `attn.qkv`, `attn.proj`, `mlp.fc1` (before the activation), `mlp.fc2`, of `norm1` and
`norm2` in every block, and of the final `norm` (as in the official dongzelian/SSF models). On a timm
Swin the same regex also covers the patch-embedding LayerNorm and each `downsample.norm` (the official
Swin model scales those too); the bias-free `downsample.reduction` is left alone, as officially.
On an average-pooled timm ViT (`global_pool='avg'`: `norm` is the identity, the final LayerNorm is
`fc_norm` after the pool) the official model scales the *tokens* before pooling (its `ssf_scale_1`
after the identity `norm`) and leaves `fc_norm` alone; so does this port there (`PooledTokenScaleShift`
on `norm`, `fc_norm` not wrapped). That one scale-shift sits before the mean and a LayerNorm, which
no frozen tensor can absorb: it stays a layer after `merge_and_unload` (the only SSF case that does).

Init: gamma ~ N(1, 0.02), beta ~ N(0, 0.02), as in the paper and code, so the model is NOT the frozen
one at init (only close to it).

Parameters: 2 * (output width) per wrapped module. ViT-B/16: per block 2 * (3d + d + 4d + d + d + d)
= 2 * 8,448 = 16,896; plus 2 * d for the patch embedding and 2 * d for the final norm:
12 * 16,896 + 3,072 = 205,824, the published 0.21 M (VTAB; the FGVC 0.39 M adds the mean FGVC head).

Mergeable: every wrapped module is affine per output channel (Linear, Conv2d, affine LayerNorm), so
gamma and beta fold into its weight and bias (W <- gamma * W, b <- gamma * b + beta) and
`merge_and_unload` returns the plain timm model. A targeted module without a bias (or a LayerNorm
without affine parameters) is refused at injection: folding beta would have to add a tensor.

The official recipe trains with timm's optimizer factory, which exempts all 1-D tensors (so every
gamma and beta) from weight decay; our engine decays every trainable tensor (see config/methods/ssf.yaml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import (
    MethodConfig,
    MethodError,
    MethodLayer,
    PeftMethod,
    leading_untouched_blocks,
    match_modules,
    replace_module,
)
from .base import official_code
from .registry import register_method

_DEFAULT_TARGETS = (r"^patch_embed\.(proj|norm)$"
                    r"|(^|\.)(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|norm1|norm2|downsample\.norm)$"
                    r"|^(norm|fc_norm)$")
_KINDS = (nn.Linear, nn.Conv2d, nn.LayerNorm)



@dataclass
class SsfConfig(MethodConfig):
    """Args:
    init_std: std of the init gamma ~ N(1, init_std), beta ~ N(0, init_std) (paper: 0.02).
    target_modules: regex over module names; matching Linear / Conv2d / LayerNorm modules get a
        scale-shift on their output. Non-affine matches (e.g. timm's Identity placeholders) are skipped.
    """

    init_std: float = field(default=0.02, metadata={"help": "init: gamma ~ N(1, std), beta ~ N(0, std)"})
    target_modules: str = field(default=_DEFAULT_TARGETS, metadata={"help": "module-name regex"})

    def validate(self):
        if not self.init_std >= 0.0:
            raise MethodError(f"ssf.init_std must be >= 0, got {self.init_std}")


class PooledTokenScaleShift(MethodLayer):
    """SSF's scale-shift of the final tokens of an average-pooled ViT, on the (identity) `norm` before
    the pool, as the official model. Not foldable: it stays after merging (`stays_after_merge`)."""

    stays_after_merge = True

    def __init__(self, base_layer: nn.Module, dim: int, init_std: float):
        super().__init__()
        self.base_layer = base_layer
        self.scale = nn.Parameter(torch.empty(dim).normal_(1.0, init_std))
        self.shift = nn.Parameter(torch.empty(dim).normal_(0.0, init_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.scale + self.shift

    def merge(self) -> None:
        """Nothing to fold (see the class docstring): the layer keeps computing."""

    def unmerge(self) -> None:
        """Nothing was folded."""


def _avg_pooled_vit(model: nn.Module) -> bool:
    return (getattr(model, "global_pool", None) == "avg" and hasattr(model, "blocks")
            and isinstance(getattr(model, "norm", None), nn.Identity)
            and isinstance(getattr(model, "fc_norm", None), nn.LayerNorm))


class ScaleShift(MethodLayer):
    """Wraps a Linear, Conv2d or LayerNorm and scales and shifts its output channels."""

    def __init__(self, base_layer: nn.Module, init_std: float):
        super().__init__()
        if isinstance(base_layer, nn.Linear):
            dim, self.channel_dim = base_layer.out_features, -1
        elif isinstance(base_layer, nn.Conv2d):
            dim, self.channel_dim = base_layer.out_channels, 1
        elif isinstance(base_layer, nn.LayerNorm):
            if len(base_layer.normalized_shape) != 1:
                raise MethodError(f"ssf: LayerNorm over {tuple(base_layer.normalized_shape)} is not per-channel")
            dim, self.channel_dim = base_layer.normalized_shape[0], -1
        else:
            raise MethodError(f"ssf: cannot scale-shift a {type(base_layer).__name__}")
        if getattr(base_layer, "weight", None) is None or getattr(base_layer, "bias", None) is None:
            raise MethodError(f"ssf: {type(base_layer).__name__} without weight and bias cannot absorb the "
                              f"shift when merged; exclude it from target_modules")
        self.base_layer = base_layer
        self.scale = nn.Parameter(torch.empty(dim))
        self.shift = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.scale, mean=1.0, std=init_std)
        nn.init.normal_(self.shift, mean=0.0, std=init_std)
        self.merged = False

    def _per_channel(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        if self.channel_dim == -1:
            return t
        return t.view(1, -1, *([1] * (ndim - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out * self._per_channel(self.scale, out.ndim) + self._per_channel(self.shift, out.ndim)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        if not (torch.isfinite(self.scale).all() and torch.isfinite(self.shift).all()):
            raise MethodError("SSF scale/shift is not finite; refusing to merge")
        weight, bias = self.base_layer.weight, self.base_layer.bias
        self.stash_base_parameters()
        scale, shift = self.scale.double(), self.shift.double()
        w_scale = scale.view(-1, *([1] * (weight.ndim - 1)))  # output channels are dim 0 for all three kinds
        weight.copy_(weight.double() * w_scale)
        bias.copy_(bias.double() * scale + shift)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.restore_base_parameters()
        self.merged = False


@register_method
class Ssf(PeftMethod):
    name = "ssf"
    category = "reparameterization"
    config_cls = SsfConfig
    mergeable = True
    paper = "Lian et al., Scaling & Shifting Your Features (SSF), NeurIPS 2022"
    provenance = official_code(
        "dongzelian/SSF", "e94e0e704a4ece1986a537c97a95158b46838f71",
        "models/vision_transformer.py", "models/swin_transformer.py")

    def inject(self, model):
        c = self.config
        pooled = _avg_pooled_vit(model) and re.search(c.target_modules, "fc_norm") is not None
        names = [n for n in match_modules(model, c.target_modules, _KINDS) if not (pooled and n == "fc_norm")]
        if not names:
            raise MethodError(f"{self.name}: no module of {type(model).__name__} matches "
                              f"target_modules={c.target_modules!r}")
        for name in names:
            replace_module(model, name, ScaleShift(model.get_submodule(name), c.init_std))
        if pooled:  # official SSF scales the tokens before the pool, not the pooled feature (see above)
            model.norm = PooledTokenScaleShift(model.norm, model.fc_norm.normalized_shape[0], c.init_std)
            names = sorted({*names, "norm"})
        return names

    def frozen_prefix_blocks(self, model):
        return leading_untouched_blocks(model)
