"""LoRand (Yin et al., "1% VS 100%: Parameter-Efficient Low Rank Adapter for Dense Predictions", CVPR
2023): a bottleneck adapter whose two projections are synthesised from small low-rank factors.

Each projection is a sum over alpha branches of P_i K_i Q_i: W_down = sum_i P_i K_i Q_i (d x m, P_i d x
beta, K_i beta x beta, Q_i beta x m) and W_up = sum_i P'_i K_i Q'_i (m x d); the kernel K_i of a
branch is shared by the down and the up projection. The module is a Houlsby adapter on a sub-layer
output z:  z <- z + GELU(z W_down + b_down) W_up + b_up.

Placement: after the attention and after the MLP of every block, inside the residual (two per
block), as the paper's figure places them; on timm models this wraps `blocks.N.attn` and
`blocks.N.mlp` (for Swin, `attn` works on window tokens; a per-token map commutes with the window
partition, so this equals the adapter on the merged attention output).

Init: P, K, Q Kaiming-uniform (a = sqrt 5), as public LoRand code does; unlike that code we zero the
up-projection's Q' factor and both biases, so the model equals the frozen one at init and every
factor still trains (Q' gets gradient at once, the others from the second step).

Parameters per module: alpha (2 beta (d + m) + beta^2) + m + d; at alpha = 2, beta = 8, m = 64 two per
block give 901,632 on Swin-B, 1,298,688 on Swin-L, 662,016 on ViT-B/16. The published 1.20 M (Swin-B,
COCO) / 1.31 M (Swin-L, VOC) are not reproduced: no per-block placement fits both, since their
ratio (1.09) is far from the ratio of sum(d) over the blocks (1.5) that drives every per-block count;
the paper's exact alpha, beta and m per backbone could not be re-read here. Not mergeable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import output_dim
from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, wrap_modules
from .base import from_paper
from .registry import register_method


@dataclass
class LorandConfig(MethodConfig):
    """Args:
    bottleneck: width m between the two projections.
    branches: number alpha of low-rank branches summed into each projection.
    kernel_rank: size beta of each branch's shared kernel K_i.
    target_modules: regex over module names selecting the sub-layers whose outputs are adapted.
    """

    bottleneck: int = field(default=64, metadata={"help": "adapter width m"})
    branches: int = field(default=2, metadata={"help": "low-rank branches alpha"})
    kernel_rank: int = field(default=8, metadata={"help": "kernel size beta (rank of each branch)"})
    target_modules: str = field(default=r"(^|\.)blocks\.\d+\.(attn|mlp)$", metadata={"help": "module-name regex"})

    def validate(self):
        for key in ("bottleneck", "branches", "kernel_rank"):
            if getattr(self, key) < 1:
                raise MethodError(f"lorand.{key} must be >= 1, got {getattr(self, key)}")


class LowRankSynthesisAdapter(nn.Module):
    """The LoRand adapter core: z -> GELU(z W_down + b_down) W_up + b_up with synthesised W_down, W_up.
    Shared with E3VA, whose adapters use the same dual low-rank structure."""

    def __init__(self, dim: int, bottleneck: int, branches: int, kernel_rank: int):
        super().__init__()
        a, b, m = branches, kernel_rank, bottleneck
        self.down_p = nn.Parameter(torch.empty(a, dim, b))
        self.down_q = nn.Parameter(torch.empty(a, b, m))
        self.kernel = nn.Parameter(torch.empty(a, b, b))
        self.up_p = nn.Parameter(torch.empty(a, m, b))
        self.up_q = nn.Parameter(torch.zeros(a, b, dim))  # zero: identity at init
        self.down_bias = nn.Parameter(torch.zeros(m))
        self.up_bias = nn.Parameter(torch.zeros(dim))
        for tensor in (self.down_p, self.down_q, self.kernel, self.up_p):
            for branch in tensor:
                nn.init.kaiming_uniform_(branch, a=math.sqrt(5))

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w_down = torch.einsum("adb,abc,acm->dm", self.down_p, self.kernel, self.down_q)
        w_up = torch.einsum("amb,abc,acd->md", self.up_p, self.kernel, self.up_q)
        return w_down, w_up

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w_down, w_up = self.weights()
        return F.gelu(z @ w_down + self.down_bias) @ w_up + self.up_bias


class LorandAdapter(MethodLayer):
    """Wraps a sub-layer and adds the LoRand adapter on its output."""

    def __init__(self, base_layer: nn.Module, dim: int, config: LorandConfig):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = LowRankSynthesisAdapter(dim, config.bottleneck, config.branches, config.kernel_rank)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        z = self.base_layer(*args, **kwargs)
        return z + self.adapter(z)


@register_method
class Lorand(PeftMethod):
    name = "lorand"
    category = "addition"
    config_cls = LorandConfig
    mergeable = False
    paper = "Yin et al., 1% VS 100%: Parameter-Efficient Low Rank Adapter for Dense Predictions (LoRand), CVPR 2023"
    provenance = from_paper(
        "LoRand: P_i K_i Q_i synthesis of both projections, kernel K_i shared (method)",
        "placement after attention and MLP as the paper's overview figure",
        notes="published 1.20 M / 1.31 M not reproduced; alpha, beta, m not re-read")

    def inject(self, model):
        c = self.config
        return wrap_modules(model, c.target_modules, lambda base: LorandAdapter(base, output_dim(base), c),
                            method=self.name)
