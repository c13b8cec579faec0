"""LoRA (Hu et al., ICLR 2022): a low-rank update dW = (alpha / rank) * B @ A on W_q and W_v.

timm fuses q, k and v into one `attn.qkv` Linear (out = 3d); `LoraQKV` adds the update to the chosen
thirds of that output, so "q and v" means exactly the paper's placement. A is Kaiming-uniform, B is
zero, so the wrapped model equals the frozen one at init. Per block and target: 2 * d * rank
parameters, i.e. 4 * d * rank for q+v (294,912 on ViT-B/16 at rank 8). Mergeable.

Dense track (rank 64 on every Swin block): 256 * sum(d) = 3,080,192 on Swin-B and 4,620,288 on Swin-L,
against the 3.03 M / 4.57 M the dense tables print. The printed values are about 1.6 % / 1.1 % lower;
no placement on q and v of whole stages gives them, and the papers do not state theirs, so the gap is
left documented rather than fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, wrap_modules
from .base import official_code
from .registry import register_method

_QKV = ("q", "k", "v")


@dataclass
class LoraConfig(MethodConfig):
    """Args:
    rank: rank r of the update.
    alpha: the update is scaled by alpha / rank (alpha = rank gives scale 1).
    targets: which of q, k, v in the fused qkv projection receive an update.
    dropout: dropout on the branch input.
    target_modules: regex over module names selecting the fused qkv Linears.
    """

    rank: int = field(default=8, metadata={"help": "rank r of B @ A"})
    alpha: float = field(default=8.0, metadata={"help": "scale numerator: dW = alpha / r * B @ A"})
    targets: tuple = field(default=("q", "v"), metadata={"help": "subset of q, k, v"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input"})
    target_modules: str = field(default=r"(^|\.)blocks\.\d+\.attn\.qkv$", metadata={"help": "module-name regex"})

    def validate(self):
        if self.rank < 1:
            raise MethodError(f"lora.rank must be >= 1, got {self.rank}")
        bad = [t for t in self.targets if t not in _QKV]
        if bad or not self.targets:
            raise MethodError(f"lora.targets must be a non-empty subset of {_QKV}, got {self.targets}")
        if not 0.0 <= self.dropout < 1.0:
            raise MethodError(f"lora.dropout must be in [0, 1), got {self.dropout}")


class LoraQKV(MethodLayer):
    """Wraps a fused qkv Linear and adds a low-rank update to selected thirds of its output."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, targets: tuple, dropout: float):
        super().__init__()
        if base_layer.out_features % 3:
            raise MethodError(f"expected a fused qkv Linear (out = 3 * d), got out={base_layer.out_features}")
        self.base_layer = base_layer
        self.targets = tuple(t for t in _QKV if t in targets)
        self.scaling = alpha / rank
        self.merged = False
        dim_out = base_layer.out_features // 3
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterDict(
            {t: nn.Parameter(torch.empty(rank, base_layer.in_features)) for t in self.targets})
        self.lora_B = nn.ParameterDict({t: nn.Parameter(torch.zeros(dim_out, rank)) for t in self.targets})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        delta = torch.zeros_like(weight)
        dim_out = weight.shape[0] // 3
        for i, t in enumerate(_QKV):
            if t in self.targets:
                delta[i * dim_out:(i + 1) * dim_out] = self.lora_B[t] @ self.lora_A[t] * self.scaling
        return delta

    def _stacked_A(self) -> torch.Tensor:  # (targets * r, d_in): one GEMM for every target's A
        return torch.cat([self.lora_A[t] for t in self.targets], dim=0)

    def _block_B(self) -> torch.Tensor:  # (3 * d_out, targets * r): B_t in its third's rows, zeros elsewhere
        rank = self.lora_A[self.targets[0]].shape[0]
        dim_out = self.base_layer.out_features // 3
        first = self.lora_B[self.targets[0]]
        block = first.new_zeros(3 * dim_out, len(self.targets) * rank)
        for j, t in enumerate(self.targets):
            i = _QKV.index(t)
            block[i * dim_out:(i + 1) * dim_out, j * rank:(j + 1) * rank] = self.lora_B[t]
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        # Why not chunk / add / cat per third: that copies the whole (N, 3d) output once more, forward and
        # backward. Here the scale goes on the narrow (N, targets * r) tensor and the add is fused into
        # the second GEMM (addmm, beta = 1); the zero rows of the block B cost 2 * d * r FLOPs per token.
        low = nn.functional.linear(self.dropout(x), self._stacked_A()) * self.scaling
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), low.reshape(-1, low.shape[-1]), self._block_B().t())
        return flat.view(out.shape)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise MethodError("LoRA update is not finite; refusing to merge")
        self.base_layer.weight += delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight -= self.delta_weight()
        self.merged = False


@register_method
class Lora(PeftMethod):
    name = "lora"
    category = "reparameterization"
    config_cls = LoraConfig
    mergeable = True
    paper = "Hu et al., LoRA, ICLR 2022"
    provenance = official_code(
        "microsoft/LoRA", "c4593f060e6a368d7bb5af5273b8e42810cdef90", "loralib/layers.py",
        notes="MergedLinear on qkv with enable_lora q, v; also equals huggingface peft")

    def inject(self, model):
        c = self.config
        return wrap_modules(model, c.target_modules,
                            lambda base: LoraQKV(base, c.rank, c.alpha, c.targets, c.dropout),
                            kind=nn.Linear, method=self.name)
