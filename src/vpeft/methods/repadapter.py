"""RepAdapter (Luo et al., 2023, "Towards Efficient Visual Adaption via Structural Re-parameterization").

Placement (the `repblock` variant of luogen1996/RepAdapter): two linear adapters per block, one on the
LayerNorm output that feeds attention and one on the LayerNorm output that feeds the MLP:
    x' = x + s * B(dropout(A x + a)) + s * b,
with A: d -> r (bias a), B: r -> d as a grouped 1x1 map (groups g, weight d x r/g, bias b), no
non-linearity, dropout 0.1 on the bottleneck, and a per-task scale s. In a timm block the LN output is
consumed only by `attn.qkv` (resp. `mlp.fc1`), so the adapter is implemented as a pre-map of those
Linears, which is what re-parameterisation folds it into.

Init: A Xavier-uniform, a = 0, B = 0, b = 0, so the model equals the frozen one at init; B's zero init
lets A and a receive gradient from the second step on.

Parameters per adapter: d*r + r + d*r/g + d; ViT-B/16 (d = 768, r = 8, g = 2): 9,992, times 24 adapters
= 239,808 (0.24 M). The paper / V-PETL table prints 0.22 M; that figure is reproduced only if the 768
up-projection biases b are left out (24 * 9,224 = 221,376), but the official code creates and trains
them, so we count what the code trains and the test table has no published value for this method.

Mergeable (structural re-parameterisation, the official `set_RepWeight`): with M = I + s * B_dense A and
c = s * (B_dense a + b), the wrapped Linear becomes W' = W M, bias' = W c + bias; `merge_and_unload`
leaves the plain timm model. The official code's optional L2 penalty on B (`sparse_lambda`) is 0 in its
training scripts and is not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, leading_untouched_blocks, wrap_modules
from .base import official_code
from .registry import register_method


@dataclass
class RepAdapterConfig(MethodConfig):
    """Args:
    hidden_dim: bottleneck width r (official `--dim`, 8).
    groups: groups g of the up-projection B (official 2); must divide r and the model width.
    scale: scale s of the adapter output; tuned per task in the official configs.
    dropout: dropout on the bottleneck (official 0.1).
    target_modules: regex over module names selecting the Linears whose input gets the adapter.
    """

    hidden_dim: int = field(default=8, metadata={"help": "bottleneck width r"})
    groups: int = field(default=2, metadata={"help": "groups of the grouped up-projection"})
    scale: float = field(default=1.0, metadata={"help": "scale s of the adapter branch"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the bottleneck"})
    target_modules: str = field(default=r"(^|\.)blocks\.\d+\.(attn\.qkv|mlp\.fc1)$",
                                metadata={"help": "module-name regex (Linears fed by the block's LNs)"})

    def validate(self):
        if self.hidden_dim < 1:
            raise MethodError(f"repadapter.hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.groups < 1 or self.hidden_dim % self.groups:
            raise MethodError(f"repadapter.groups must be >= 1 and divide hidden_dim={self.hidden_dim}, "
                              f"got {self.groups}")
        if not math.isfinite(self.scale):
            raise MethodError(f"repadapter.scale must be finite, got {self.scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise MethodError(f"repadapter.dropout must be in [0, 1), got {self.dropout}")


class RepAdapterLinear(MethodLayer):
    """Wraps a Linear and applies a linear (re-parameterisable) adapter to its input."""

    def __init__(self, base_layer: nn.Linear, hidden_dim: int, groups: int, scale: float, dropout: float):
        super().__init__()
        dim = base_layer.in_features
        if dim % groups:
            raise MethodError(f"repadapter.groups={groups} must divide the input width {dim}")
        if base_layer.bias is None:
            raise MethodError("repadapter: the wrapped Linear needs a bias to absorb the adapter's bias")
        self.base_layer = base_layer
        self.groups = groups
        self.scale = scale
        self.down = nn.Linear(dim, hidden_dim)
        self.up_weight = nn.Parameter(torch.zeros(groups, dim // groups, hidden_dim // groups))
        self.up_bias = nn.Parameter(torch.zeros(dim))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.merged = False
        self.train(base_layer.training)  # injected into an eval-mode model: no dropout until .train()

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        """s * B(dropout(A x + a)) + s * b: the adapter's residual term."""
        h = self.down(x)
        if h.ndim == 3 and not isinstance(self.dropout, nn.Identity):
            # the official conv_A output is (B, r, N): its dropout mask is drawn in that layout, so draw
            # it there too (same random stream as the official code, same result for the same seed)
            h = self.dropout(h.transpose(1, 2).contiguous()).transpose(1, 2)
        else:
            h = self.dropout(h)
        h = h.unflatten(-1, (self.groups, -1))                       # ... g, r/g
        up = torch.einsum("...gi,goi->...go", h, self.up_weight).flatten(-2)  # ... d
        return (up + self.up_bias) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        return self.base_layer(x + self.adapter(x))

    def dense_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) in float64 with adapter(x) + x = M x + c (eval mode: no dropout)."""
        up = torch.block_diag(*self.up_weight.double())             # d x r, block-diagonal
        dim = up.shape[0]
        eye = torch.eye(dim, dtype=torch.float64, device=up.device)
        m = eye + self.scale * up @ self.down.weight.double()
        c = self.scale * (up @ self.down.bias.double() + self.up_bias.double())
        return m, c

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        m, c = self.dense_map()
        if not (torch.isfinite(m).all() and torch.isfinite(c).all()):
            raise MethodError("RepAdapter weights are not finite; refusing to merge")
        weight, bias = self.base_layer.weight, self.base_layer.bias
        self.stash_base_parameters()
        w = weight.double()
        bias.copy_(w @ c + bias.double())
        weight.copy_(w @ m)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.restore_base_parameters()
        self.merged = False


@register_method
class RepAdapter(PeftMethod):
    name = "repadapter"
    category = "reparameterization"
    config_cls = RepAdapterConfig
    mergeable = True
    paper = "Luo et al., Towards Efficient Visual Adaption via Structural Re-parameterization (RepAdapter), 2023"
    provenance = official_code(
        "luogen1996/RepAdapter", "360992fc2a36f069fd168754f14bc1986d869a8f",
        "repadapter.py", notes="counts the up-projection biases the code trains")

    def inject(self, model):
        c = self.config
        return wrap_modules(model, c.target_modules,
                            lambda base: RepAdapterLinear(base, c.hidden_dim, c.groups, c.scale, c.dropout),
                            kind=nn.Linear, method=self.name)

    def frozen_prefix_blocks(self, model):
        return leading_untouched_blocks(model)
