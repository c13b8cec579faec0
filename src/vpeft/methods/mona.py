"""Mona (Yin et al., "5%>100%: Breaking Performance Shackles of Full Fine-Tuning on Visual Recognition
Tasks", CVPR 2025; official code Leiyi-Hu/mona): a multi-cognitive visual adapter.

Placement (official Swin code): two Mona modules per block, in the residual stream, one after the
attention residual and one after the MLP residual:

    x <- x + DropPath(Attn(LN1(x)));  x <- Mona_1(x)
    x <- x + DropPath(MLP(LN2(x)));   x <- Mona_2(x)

One module: Mona(x) = x + W_up Dropout(GELU(Op(W_down (gamma * LN(x) + gamma_x * x)))), where Op is the
multi-cognitive filter on the m-channel map laid out on the token grid,
z <- z + mean_k DWConv_kxk(z) (k = 3, 5, 7), then z <- z + Conv_1x1(z). gamma starts at 1e-6, gamma_x
at 1, the projections as the official code initialises them through Swin's `init_weights`
(trunc-normal 0.02, zero bias), the convolutions with PyTorch's default: so the model is *not*
exactly the frozen one at init (as in the official code).

Injection into an unmodified timm model: each block `blocks.N` is wrapped (`MonaBlock`, adds Mona_2
on the block output) and its `drop_path1` is wrapped (`MonaAfterAttention`): with the block input x
kept by the block wrapper, it returns a + f_1(x + a) for the attention branch a, so the block's own
`x + drop_path1(...)` becomes Mona_1(x + a). Swin blocks carry NHWC maps, so the grid is given; on a
ViT the patch tokens are laid out on the patch grid and prefix tokens (CLS) are filtered as 1x1 maps
(a k x k depthwise kernel then acts through its centre tap): our ViT variant, which is why the
provenance is `variant` (the official code is Swin-only; the VTAB runs use this ViT handling).

Parameters per module: LN 2d + gamma, gamma_x 2d + W_down dm + m + W_up md + d + depthwise
sum(k^2 m + m) + 1x1 m^2 + m; at m = 64 and k = 3, 5, 7: 133 d + 9,728. Two per block: 3,667,456 on
Swin-B and 5,267,712 on Swin-L (catalog section 3.4). The published 4.16 M / 5.08 M (V-PETL README,
Mona paper) are not reproduced by this or any per-block formula of the official code we read: their
Swin-L/Swin-B ratio (1.22) is not the ratio of sum(d) (1.5) that every per-block module has.
2,684,928 on ViT-B/16 (24 modules). Not mergeable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, match_modules, replace_module
from .base import variant
from .registry import register_method


@dataclass
class MonaConfig(MethodConfig):
    """Args:
    bottleneck: width m of the adapter (official: 64).
    kernel_sizes: depthwise kernels averaged by the multi-cognitive filter (official: 3, 5, 7).
    dropout: dropout after the activation (official: 0.1).
    gamma_init: initial scale of the normalised input (official: 1e-6).
    target_blocks: regex over module names selecting the transformer blocks.
    """

    bottleneck: int = field(default=64, metadata={"help": "adapter width m"})
    kernel_sizes: tuple = field(default=(3, 5, 7), metadata={"help": "odd depthwise kernel sizes"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after GELU"})
    gamma_init: float = field(default=1e-6, metadata={"help": "initial scale of LN(x) in the input"})
    target_blocks: str = field(default=r"(^|\.)blocks\.\d+$", metadata={"help": "module-name regex of blocks"})

    def validate(self):
        if self.bottleneck < 1:
            raise MethodError(f"mona.bottleneck must be >= 1, got {self.bottleneck}")
        sizes = tuple(int(k) for k in self.kernel_sizes)
        if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
            raise MethodError(f"mona.kernel_sizes must be odd positive integers, got {self.kernel_sizes}")
        self.kernel_sizes = sizes
        if not 0.0 <= self.dropout < 1.0:
            raise MethodError(f"mona.dropout must be in [0, 1), got {self.dropout}")


class TokenGrid:
    """How a block's tokens lie on the image grid: NHWC maps (Swin) or prefix + patch tokens (ViT)."""

    def __init__(self, model: nn.Module):
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        self.grid = tuple(int(g) for g in grid) if grid is not None else None

    def hw(self, n: int) -> tuple[int, int]:
        if self.grid is not None and self.grid[0] * self.grid[1] == n:
            return self.grid
        side = math.isqrt(n)
        if side * side == n:
            return side, side
        raise MethodError(f"cannot lay {n} patch tokens out on a grid")


class MultiCognitiveFilter(nn.Module):
    """z <- z + mean_k DWConv_k(z), then z <- z + Conv1x1(z), on NCHW maps."""

    def __init__(self, channels: int, kernel_sizes: tuple):
        super().__init__()
        self.depthwise = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in kernel_sizes)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + sum(conv(z) for conv in self.depthwise) / len(self.depthwise)
        return z + self.pointwise(z)


class MonaModule(nn.Module):
    """One Mona module; `delta(x)` is Mona(x) - x for tokens laid out as `grid` describes."""

    def __init__(self, dim: int, config: MonaConfig, grid: TokenGrid):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(config.gamma_init)))
        self.gamma_x = nn.Parameter(torch.ones(dim))
        self.down = nn.Linear(dim, config.bottleneck)
        self.filter = MultiCognitiveFilter(config.bottleneck, config.kernel_sizes)
        self.dropout = nn.Dropout(config.dropout)
        self.up = nn.Linear(config.bottleneck, dim)
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def _filter_tokens(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim == 4:  # NHWC map (timm Swin)
            return self.filter(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        b, n, c = z.shape
        p = self.grid.num_prefix
        prefix, patches = z[:, :p], z[:, p:]
        h, w = self.grid.hw(n - p)
        patches = self.filter(patches.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        if p:  # prefix tokens as 1x1 maps: each depthwise kernel acts through its centre tap
            prefix = self.filter(prefix.reshape(b * p, c, 1, 1)).reshape(b, p, c)
        return torch.cat([prefix, patches], dim=1)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        z = self.down(self.norm(x) * self.gamma + x * self.gamma_x)
        return self.up(self.dropout(F.gelu(self._filter_tokens(z))))


class _Slot:
    """The block input, shared by a block wrapper and its attention-residual wrapper (not a Module,
    so it is neither a parameter holder nor part of the state dict)."""

    value: torch.Tensor | None = None


class MonaAfterAttention(MethodLayer):
    """Wraps a block's `drop_path1`: returns a + f(x + a), so that x + result = Mona_1(x + a)."""

    def __init__(self, base_layer: nn.Module, mona: MonaModule, slot: _Slot):
        super().__init__()
        self.base_layer = base_layer
        self.mona = mona
        self.slot = slot

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        a = self.base_layer(branch)
        x = self.slot.value
        if x is None or x.shape != a.shape:
            raise MethodError("mona: the block input is missing or has another shape than the attention "
                              "branch; the block must compute x + drop_path1(...) on its input")
        return a + self.mona.delta(x + a)


class MonaBlock(MethodLayer):
    """Wraps a block: keeps its input for the attention-residual Mona and adds Mona_2 on its output."""

    def __init__(self, base_layer: nn.Module, mona: MonaModule, slot: _Slot):
        super().__init__()
        self.base_layer = base_layer
        self.mona = mona
        self.slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.slot.value = x
        try:
            y = self.base_layer(x)
        finally:
            self.slot.value = None
        return y + self.mona.delta(y)


def block_width(block: nn.Module, name: str, method: str) -> int:
    """Token width of a timm block (ViT `Block`, Swin `SwinTransformerBlock`): its first norm's size."""
    norm = getattr(block, "norm1", None)
    shape = getattr(norm, "normalized_shape", None)
    if not shape or not hasattr(block, "drop_path1"):
        raise MethodError(f"{method}: {name} ({type(block).__name__}) is not a pre-norm transformer block with "
                          f"norm1 and drop_path1")
    return int(shape[-1])


@register_method
class Mona(PeftMethod):
    name = "mona"
    category = "addition"
    config_cls = MonaConfig
    mergeable = False
    paper = "Yin et al., 5%>100%: Breaking Performance Shackles of Full Fine-Tuning (Mona), CVPR 2025"
    provenance = variant(
        "ViT port of Mona: the official code (Leiyi-Hu/mona@5deeac9, Swin-Transformer-Classification/"
        "mmcls/models/backbones/swin_transformer_mona.py) is Swin-only; on a ViT the patch tokens go on the "
        "patch grid and the CLS token is filtered as a 1x1 map (the project's own handling)",
        notes="on Swin the module and placement follow that file; published 4.16 M / 5.08 M not "
              "reproduced by the code's per-block formula")

    def inject(self, model):
        c = self.config
        names = match_modules(model, c.target_blocks)
        if not names:
            raise MethodError(f"mona: no module of {type(model).__name__} matches target_blocks={c.target_blocks!r}")
        grid = TokenGrid(model)
        for name in names:
            block = model.get_submodule(name)
            dim = block_width(block, name, self.name)
            slot = _Slot()
            block.drop_path1 = MonaAfterAttention(block.drop_path1, MonaModule(dim, c, grid), slot)
            replace_module(model, name, MonaBlock(block, MonaModule(dim, c, grid), slot))
        return names
