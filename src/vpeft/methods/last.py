"""LAST: Low-rank Attention Side-Tuning (Tang, Fu, Zhu & Wu, arXiv:2402.04009, 2024).

The frozen ViT is a feature extractor: neither its parameters nor its outputs are trained through.
A side network of low-rank self-attention (LSA) modules, with no FFN, reads its intermediate tokens.

Placement (from the paper's description; no official code was found): the L blocks are split into
m = L / g groups (gap g; L must be divisible by g). z_0 is the token sequence entering the first
block (patch embedding + position embedding + CLS), z_i the output of group i. The side network
keeps a running stream u: u_0 = z_0 and u_i = F_i(u_{i-1} + z_i), where F_i stacks `modules`
LSA modules f(x) = x + W_up Attn(LN(x) W_q, LN(x) W_k, LN(x) W_v), attention in r = `rank`
dimensions (`num_heads` heads of r / heads each). Bias correction: the representation handed on is
u_m - sum_{i<m} z_i = z_m + (sum of the LSA residuals), i.e. the frozen final features plus what the
side network learned; it is computed in that second form, so at init it is exactly z_m. A forward
pre-hook on the backbone's final `norm` substitutes it for the norm's input, so the frozen final
LayerNorm, timm's pooling (CLS or average) and the head see the usual token layout.

Init (ours; the paper's is not stated in the material read): W_q, W_k, W_v PyTorch-default
(Kaiming-uniform, as LoRA's A), W_up and its bias zero, LN 1/0, so the model is unchanged at init and
after the first step every tensor trains.

Parameters (head excluded): per LSA module 2d (LN) + 3(d r + r) + (r d + d) = 4 d r + 3 r + 3 d;
total (L / g) * modules * (4 d r + 3 r + 3 d). ViT-B/16 at the defaults (r = 16, g = 1, one module
per group): 12 * 51,504 = 618,048. The published 0.66 M (VTAB) is reproduced only if the paper
counts the classifier head too: 618,048 + 769 x 49.5 (VTAB's mean class count) = 656,093 -> 0.66 M.
That reading is unverified (r, g, heads and bias terms are our reconstruction), so `published` is
not asserted. Not mergeable: the side network is extra computation at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod
from .hst import check_vit
from .base import from_paper
from .registry import register_method


@dataclass
class LastConfig(MethodConfig):
    """Args:
    rank: dimension r of the low-rank queries, keys and values.
    gap: g, backbone blocks per side group (L must be divisible by g); one LSA group per g blocks.
    modules: LSA modules stacked in each group (the paper's T).
    num_heads: attention heads inside the r-dimensional space (rank must be divisible by it).
    """

    rank: int = field(default=16, metadata={"help": "low-rank attention dimension r"})
    gap: int = field(default=1, metadata={"help": "backbone blocks per LSA group (g)"})
    modules: int = field(default=1, metadata={"help": "LSA modules per group (T)"})
    num_heads: int = field(default=1, metadata={"help": "heads within the rank-r attention"})

    def validate(self):
        if self.rank < 1:
            raise MethodError(f"last.rank must be >= 1, got {self.rank}")
        if self.gap < 1:
            raise MethodError(f"last.gap must be >= 1, got {self.gap}")
        if self.modules < 1:
            raise MethodError(f"last.modules must be >= 1, got {self.modules}")
        if self.num_heads < 1 or self.rank % self.num_heads:
            raise MethodError(f"last.rank {self.rank} must be divisible by num_heads {self.num_heads}")


class LowRankSelfAttention(nn.Module):
    """LN, projection of every token to rank-r queries/keys/values, self-attention there, and a
    zero-initialised projection back to d. Returns the residual branch only."""

    def __init__(self, dim: int, rank: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, rank)
        self.k = nn.Linear(dim, rank)
        self.v = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, r = t.shape
        return t.reshape(b, n, self.heads, r // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        out = F.scaled_dot_product_attention(self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h)))
        b, _, n, _ = out.shape
        return self.up(out.transpose(1, 2).reshape(b, n, -1))


class LastSideNetwork(MethodLayer):
    """The LSA groups and the hooks that read z_0..z_m and hand z_m + residuals to the final norm."""

    def __init__(self, model: nn.Module, config: LastConfig):
        super().__init__()
        check_vit(model, "last")
        depth, dim = len(model.blocks), model.embed_dim
        if depth % config.gap:
            raise MethodError(f"last.gap={config.gap} must divide the backbone depth {depth}")
        if config.rank > dim:
            raise MethodError(f"last.rank={config.rank} exceeds the backbone width {dim}")
        self.taps = [config.gap * (i + 1) - 1 for i in range(depth // config.gap)]  # z_1..z_m
        self.groups = nn.ModuleList(
            nn.ModuleList(LowRankSelfAttention(dim, config.rank, config.num_heads) for _ in range(config.modules))
            for _ in self.taps)
        self._cache: dict = {}
        self.add_forward_pre_hook(model.blocks[0], self._keep_input)
        for i, index in enumerate(self.taps):
            self.add_forward_hook(model.blocks[index], self._keep, i + 1)
        self.add_forward_pre_hook(model.norm, self._deliver)

    def _keep_input(self, module, args):
        self._cache.clear()
        self._cache[0] = args[0].detach()

    def _keep(self, i: int, module, args, output):
        self._cache[i] = output.detach()

    def _deliver(self, module, args):
        if len(self._cache) != len(self.taps) + 1:
            raise MethodError("last: the final norm ran without a full forward pass through the blocks")
        try:
            return (self.side_forward([self._cache[i] for i in range(len(self.taps) + 1)]), *args[1:])
        finally:
            self._cache.clear()

    def side_forward(self, z: list[torch.Tensor]) -> torch.Tensor:
        """z = [z_0, ..., z_m]; returns u_m - sum_{i<m} z_i, computed as z_m + sum of residuals."""
        stream, learned = z[0], None
        for i, group in enumerate(self.groups, start=1):
            stream = stream + z[i]
            for lsa in group:
                delta = lsa(stream)
                stream = stream + delta
                learned = delta if learned is None else learned + delta
        return z[-1] + learned.to(z[-1].dtype)


@register_method
class Last(PeftMethod):
    name = "last"
    category = "side"
    config_cls = LastConfig
    mergeable = False
    needs_backbone_grad = False
    paper = "Tang et al., Low-rank Attention Side-Tuning for Parameter-Efficient Fine-Tuning, arXiv:2402.04009, 2024"
    provenance = from_paper(
        "LAST method description: LSA side modules (no FFN) over groups of frozen blocks",
        notes="no official code found; V-PETL's LAST file is a VPT copy; 0.66 M not asserted")

    def inject(self, model):
        if hasattr(model, "last_side"):
            raise MethodError("model already has a LAST side network")
        network = LastSideNetwork(model, self.config)
        model.add_module("last_side", network)
        return [f"blocks.{i}" for i in sorted({0, *network.taps})] + ["norm"]
