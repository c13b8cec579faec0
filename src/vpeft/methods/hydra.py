"""Hydra (Kim et al., Neural Networks 2024, "Hydra: Multi-head Low-rank Adaptation for Parameter
Efficient Fine-tuning", arXiv 2309.06922): a parallel and a sequential low-rank branch on a Linear.

For a frozen Linear y = W x + b, with branches f(u) = s * (U (Dropout(D u + b_D)) + b_U):

    out = W x + b + f_par(x) + f_seq(W x + b)

The parallel branch (LoRA-like, in -> out) reads the Linear's input; the sequential branch (out -> out)
reads its output. Placement as in the official VTAB code (extremebird/Hydra, `hydra_both`): the
attention output projection `attn.proj` and the second MLP Linear `mlp.fc2` of every block. Rank
(`dim`) 2 for every VTAB task; scale s and dropout per task (config/methods/hydra.yaml).

Init (official): D Xavier-uniform, U and both biases zero -> identity at init; D gets gradient from the
second step on.

Merge (eval; dropout is identity): both branches are linear, so
    W' = W + s (U_p D_p + U_s D_s W),   b' = b + s (U_p b_Dp + b_Up + U_s D_s b + U_s b_Ds + b_Us).
`unmerge` inverts (I + s U_s D_s) exactly with the Woodbury identity (an r x r solve). Branch biases
exist only when the wrapped Linear has a bias (timm's `proj` and `fc2` do), so merging is always possible.

Count per block (d = width, h = MLP width, r = rank): proj: 2 * (2dr + r + d); fc2: (h + d) r + r + d
(parallel) + 2dr + r + d (sequential). ViT-B/16 (h = 4d), r = 2: 12 * (11dr + 4r + 4d) = 239,712.
Published VTAB "0.28 M" (Hydra README / V-PETL) = 239,712 + the mean VTAB head 38,045 = 277,757: the
official script counts every tensor whose name contains "hydra" *or "head"*. So the formula reproduces
the published number once the head is added; our table (head excluded) says 0.24 M.
Mergeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, wrap_modules
from .base import official_code
from .registry import register_method


@dataclass
class HydraConfig(MethodConfig):
    """Args:
    rank: rank r of both branches (official VTAB: 2).
    scale: s multiplying both branch outputs (official: per task, 0.1 to 4.5).
    dropout: dropout on the branch bottlenecks (official: per task, 0 to 0.2).
    target_modules: regex over module names selecting the Linears to wrap.
    """

    rank: int = field(default=2, metadata={"help": "rank r of the parallel and sequential branches"})
    scale: float = field(default=1.0, metadata={"help": "branch scale s"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the branch bottlenecks"})
    target_modules: str = field(default=r"(^|\.)blocks\.\d+\.(attn\.proj|mlp\.fc2)$",
                                metadata={"help": "module-name regex"})

    def validate(self):
        if self.rank < 1:
            raise MethodError(f"hydra.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise MethodError(f"hydra.dropout must be in [0, 1), got {self.dropout}")
        if not torch.isfinite(torch.tensor(self.scale)):
            raise MethodError(f"hydra.scale must be finite, got {self.scale}")


class LowRankBranch(nn.Module):
    """u -> s * (up(dropout(down(u)))), both projections with bias when `bias`."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, dropout: float,
                 bias: bool):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(in_features, rank, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(rank, out_features, bias=bias)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.up.weight)
        for layer in (self.down, self.up):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.down(u))) * self.scale

    def weight(self) -> torch.Tensor:
        """s * U @ D, in float64."""
        return self.scale * self.up.weight.double() @ self.down.weight.double()

    def bias(self) -> torch.Tensor | None:
        """s * (U @ b_D + b_U), in float64 (None without biases)."""
        if self.up.bias is None:
            return None
        return self.scale * (self.up.weight.double() @ self.down.bias.double() + self.up.bias.double())


class HydraLinear(MethodLayer):
    """Wraps a Linear with Hydra's parallel (input -> output) and sequential (output -> output) branches."""

    def __init__(self, base_layer: nn.Linear, rank: int, scale: float, dropout: float):
        super().__init__()
        self.base_layer = base_layer
        bias = base_layer.bias is not None
        d_in, d_out = base_layer.in_features, base_layer.out_features
        self.parallel = LowRankBranch(d_in, d_out, rank, scale, dropout, bias)
        self.sequential = LowRankBranch(d_out, d_out, rank, scale, dropout, bias)
        self.merged = False
        self.train(base_layer.training)  # injected into an eval-mode model: no dropout until .train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.parallel(x) + self.sequential(y)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        base = self.base_layer
        w, s_seq = base.weight.double(), self.sequential.weight()
        new_w = w + self.parallel.weight() + s_seq @ w
        if not torch.isfinite(new_w).all():
            raise MethodError("Hydra update is not finite; refusing to merge")
        if base.bias is not None:
            b = base.bias.double()
            new_b = b + self.parallel.bias() + s_seq @ b + self.sequential.bias()
            base.bias.copy_(new_b.to(base.bias.dtype))
        base.weight.copy_(new_w.to(base.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        base = self.base_layer
        # merged = (I + S) W + P with S = s U_s D_s; (I + S)^-1 = I - U' (I_r + D_s U')^-1 D_s, U' = s U_s
        u = self.sequential.scale * self.sequential.up.weight.double()
        d = self.sequential.down.weight.double()
        core = torch.eye(d.shape[0], dtype=torch.float64, device=d.device) + d @ u

        def solve(t: torch.Tensor) -> torch.Tensor:
            return t - u @ torch.linalg.solve(core, d @ t)

        w = solve(base.weight.double() - self.parallel.weight())
        if base.bias is not None:
            b = base.bias.double() - self.parallel.bias() - self.sequential.bias()
            base.bias.copy_(solve(b.unsqueeze(-1)).squeeze(-1).to(base.bias.dtype))
        base.weight.copy_(w.to(base.weight.dtype))
        self.merged = False


@register_method
class Hydra(PeftMethod):
    name = "hydra"
    category = "reparameterization"
    config_cls = HydraConfig
    mergeable = True
    paper = "Kim et al., Hydra: Multi-head Low-rank Adaptation, Neural Networks 2024 (arXiv 2309.06922)"
    provenance = official_code(
        "extremebird/Hydra", "4138457859666d49b9ca9e45473d8570586670bb",
        "vtab1k/hydra.py")

    def inject(self, model):
        c = self.config
        return wrap_modules(model, c.target_modules,
                            lambda base: HydraLinear(base, c.rank, c.scale, c.dropout),
                            kind=nn.Linear, method=self.name)
