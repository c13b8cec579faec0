"""U-Tuning (Jiang et al., "Rethinking Efficient Tuning Methods from a Unified Perspective", arXiv
2303.00690, 2023; the NeurIPS 2023 follow-up is Res-Tuning): every adapted operation is a *frozen*
operator OP (MHA, FFN or a whole block) plus a *parallel* lightweight "U-tuner",  x' = OP(x) + U(x).

The paper derives the U-tuner from prefix tuning. Prepending p learned keys/values to an attention
layer gives, per head,  Attn(Q, [P_k; K], [P_v; V]) = (1 - lam) Attn(Q, K, V) + lam Attn(Q, P_k, P_v),
where lam is the softmax mass that falls on the prefix. U-Tuning unbinds the prefix branch from the
frozen attention: the frozen MHA runs untouched and the "parallel prefix" Attn(Q, P_k, P_v) is added
beside it (lam replaced by a constant `scale`).

Instantiation implemented here (our reading; see "Verification" below):
* MHA U-tuner (default): in every `blocks.N.attn`, with h = LN1(x) the attention input,
      U(h) = scale * concat_heads( softmax(q_h P_k,h^T / sqrt(d_h)) P_v,h ) W_o,
  where q = h W_q + b_q uses the frozen query third of timm's fused `qkv` (and its frozen `q_norm`),
  W_o is the frozen output projection *without* its bias (the bias is already in OP(h)), and the
  gate of gated timm attention, if any, is applied as in the frozen branch. Trainable: P_k, P_v,
  each p x d per block.
* FFN U-tuner (optional, `ffn_tokens` > 0; off by default): the same key-value form beside every
  `blocks.N.mlp`, queried by its own input h = LN2(x):  U(h) = scale * softmax(h P_k^T / sqrt(d)) P_v.
  This is one of the "new" instantiations the framework allows (a U-tuner beside the FFN).

Init: P_k ~ truncated N(0, 0.02^2) (timm's learned-token init), P_v = 0, so U(h) = 0 and the model is
unchanged at init; P_v gets gradient at the first step and P_k from the second.

Parameters: 2 * d * L * (p_mha + p_ffn); 184,320 on ViT-B/16 at the default p_mha = 10, p_ffn = 0.
Published (V-PETL FGVC table, U-Tuning row): 0.36 M. That row counts the classifier head (as the
FGVC rows of VPT-Shallow, SSF and Prefix Tuning do): 184,320 + 180,407 (mean FGVC head) = 364,727, the
same budget as V-PETL's Prefix Tuning row (p = 10, also 0.36 M), which is what a prefix-derived
U-tuner at equal budget gives. Our head-excluded count is therefore not compared with 0.36 M directly.
Not mergeable (softmax over learned keys).

What each decision rests on (material read: the abstract of arXiv 2303.00690 v1
(ar5iv), a method summary (arxivlens); the method section's equations could not be read):
* frozen operator + parallel tuner -- abstract: U-Tuning "is composed of an operation with frozen
  parameters and a unified tuner that adapts the operation"; the operator may be MHA, FFN or a block
  (abstract: existing methods "take effect on only some parts ... only the feed-forward layers or the
  self-attention layers"). Here: MHA by default, FFN optional.
* the tuner is the prefix branch, unbound from the attention -- abstract: the framework "can
  simultaneously encompass existing methods" (prompt, prefix, adapter); the decomposition of prefix
  tuning above is the standard one (He et al., ICLR 2022, section 3.1) that the unbinding rests on. The
  constant `scale` in place of lam is our reading.
* queried by the frozen W_q, output through the frozen W_o without its bias -- our reading: it is what
  the prefix term of the decomposition computes inside the frozen attention.
* p = 10 at ViT-B/16 -- the only reading found that reproduces V-PETL's 0.36 M (Parameters, above); also the
  length of V-PETL's Prefix Tuning row at the same printed count.
Alternatives checked against 0.36 M: a parallel bottleneck-10 adapter beside MHA and FFN (the
Res-Tuning follow-up's `res_adapter`, modelscope/ms-swift `swift/tuners/restuning_components.py`)
gives 387,312 without a head (0.39 M) and 374,063 for one per block with the FGVC head (0.37 M): no.
No official U-Tuning code was found (the authors' later Res-Tuning code is a different paper and was
not compared). Splitting the same budget between MHA and FFN (`num_tokens` = `ffn_tokens` = 5) keeps
the count at 184,320.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, wrap_modules
from .base import from_paper
from .registry import register_method


@dataclass
class UTuningConfig(MethodConfig):
    """Args:
    num_tokens: length p of the parallel prefix beside every MHA (0 = no MHA U-tuner).
    ffn_tokens: length of the parallel key-value U-tuner beside every FFN (0 = none).
    scale: constant weight of the U-tuner branch (replaces prefix tuning's data-dependent lam).
    init_std: std of the truncated-normal init of the learned keys (values start at zero).
    """

    num_tokens: int = field(default=10, metadata={"help": "parallel-prefix length p beside each MHA (0 = off)"})
    ffn_tokens: int = field(default=0, metadata={"help": "key-value U-tuner length beside each FFN (0 = off)"})
    scale: float = field(default=1.0, metadata={"help": "weight of the U-tuner branch"})
    init_std: float = field(default=0.02, metadata={"help": "std of the learned-key init"})

    def validate(self):
        if self.num_tokens < 0 or self.ffn_tokens < 0:
            raise MethodError(f"u-tuning: num_tokens and ffn_tokens must be >= 0, "
                              f"got {self.num_tokens} and {self.ffn_tokens}")
        if self.num_tokens == 0 and self.ffn_tokens == 0:
            raise MethodError("u-tuning: num_tokens and ffn_tokens are both 0; no U-tuner would be added")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise MethodError(f"u-tuning.scale must be finite and non-zero, got {self.scale}")
        if not self.init_std > 0:
            raise MethodError(f"u-tuning.init_std must be > 0, got {self.init_std}")


def _key_value(num_tokens: int, dim: int, init_std: float) -> tuple[nn.Parameter, nn.Parameter]:
    key = nn.Parameter(torch.empty(num_tokens, dim))
    nn.init.trunc_normal_(key, std=init_std, a=-2 * init_std, b=2 * init_std)
    return key, nn.Parameter(torch.zeros(num_tokens, dim))


class ParallelPrefixMHA(MethodLayer):
    """Frozen timm ViT `Attention` plus a parallel prefix branch queried by its frozen W_q."""

    def __init__(self, base_layer: nn.Module, num_tokens: int, scale: float, init_std: float):
        super().__init__()
        qkv, proj = getattr(base_layer, "qkv", None), getattr(base_layer, "proj", None)
        if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear) or not hasattr(base_layer, "num_heads"):
            raise MethodError(f"u-tuning wraps timm ViT attention (fused `qkv`, `proj`, `num_heads`); "
                              f"got {type(base_layer).__name__}")
        if hasattr(base_layer, "relative_position_bias_table"):
            raise MethodError("u-tuning: Swin window attention is not supported (ViT `blocks.N.attn` only)")
        if qkv.out_features % (3 * base_layer.num_heads):
            raise MethodError(f"u-tuning: qkv width {qkv.out_features} is not 3 x heads x head_dim")
        if not isinstance(getattr(base_layer, "norm", nn.Identity()), nn.Identity):
            raise MethodError("u-tuning: attention with a normalisation before `proj` (scale_norm) is not supported")
        self.base_layer = base_layer
        self.num_heads = base_layer.num_heads
        self.head_dim = qkv.out_features // (3 * self.num_heads)
        self.num_tokens = num_tokens
        self.scale = scale
        self.prefix_key, self.prefix_value = _key_value(num_tokens, self.num_heads * self.head_dim, init_std)

    def tuner(self, h: torch.Tensor) -> torch.Tensor:
        """U(h): the parallel-prefix branch alone, in the residual-stream space."""
        base = self.base_layer
        batch, n, _ = h.shape
        attn_dim = self.num_heads * self.head_dim
        bias = base.qkv.bias[:attn_dim] if base.qkv.bias is not None else None
        q = nn.functional.linear(h, base.qkv.weight[:attn_dim], bias)
        q = base.q_norm(q.reshape(batch, n, self.num_heads, self.head_dim).transpose(1, 2))
        out = prefix_attention(q, self.prefix_key, self.prefix_value, self.num_heads)
        out = out.transpose(1, 2).reshape(batch, n, attn_dim)
        gate = getattr(base, "gate", None)
        if gate is not None:
            out = out * gate(h).sigmoid()
        return self.scale * nn.functional.linear(out, base.proj.weight)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base_layer(x, *args, **kwargs) + self.tuner(x)


def prefix_attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int) -> torch.Tensor:
    """softmax(q P_k^T / sqrt(d_h)) P_v per head. q: (B, heads, N, d_h); key, value: (p, heads * d_h)."""
    p, width = key.shape
    head_dim = width // num_heads
    k = key.to(q.dtype).reshape(p, num_heads, head_dim).transpose(0, 1)
    v = value.to(q.dtype).reshape(p, num_heads, head_dim).transpose(0, 1)
    weights = (q @ k.transpose(-2, -1) * head_dim ** -0.5).softmax(dim=-1)
    return weights @ v


class ParallelKeyValueFFN(MethodLayer):
    """Frozen FFN plus a parallel learned key-value memory queried by the FFN input."""

    def __init__(self, base_layer: nn.Module, num_tokens: int, scale: float, init_std: float):
        super().__init__()
        linears = [m for m in base_layer.modules() if isinstance(m, nn.Linear)]
        if not linears or linears[0].in_features != linears[-1].out_features:
            raise MethodError(f"u-tuning: expected an FFN mapping d -> d, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.scale = scale
        self.prefix_key, self.prefix_value = _key_value(num_tokens, linears[0].in_features, init_std)

    def tuner(self, h: torch.Tensor) -> torch.Tensor:
        q = h.unsqueeze(1)  # one "head" over the full width
        return self.scale * prefix_attention(q, self.prefix_key, self.prefix_value, 1).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.tuner(x)


_ATTN = r"(^|\.)blocks\.\d+\.attn$"
_MLP = r"(^|\.)blocks\.\d+\.mlp$"


@register_method
class UTuning(PeftMethod):
    name = "u-tuning"
    category = "unified"
    config_cls = UTuningConfig
    mergeable = False
    paper = ("Jiang et al., Rethinking Efficient Tuning Methods from a Unified Perspective (U-Tuning), "
             "arXiv 2303.00690, 2023")
    provenance = from_paper(
        "abstract: an operation with frozen parameters + a unified tuner encompassing prompt/prefix/adapter",
        "V-PETL FGVC table 0.36 M = p = 10 parallel prefix + FGVC head",
        notes="method equations and any code not read; instantiation is our reading")

    def inject(self, model):
        c = self.config
        if not hasattr(model, "blocks") or not hasattr(model, "num_prefix_tokens"):
            raise MethodError(f"u-tuning targets timm ViT models (`blocks.N.attn` / `blocks.N.mlp`); "
                              f"{type(model).__name__} is not one")
        matched = []
        if c.num_tokens:
            matched += wrap_modules(model, _ATTN, lambda base: ParallelPrefixMHA(base, c.num_tokens, c.scale,
                                                                                  c.init_std), method=self.name)
        if c.ffn_tokens:
            matched += wrap_modules(model, _MLP, lambda base: ParallelKeyValueFFN(base, c.ffn_tokens, c.scale,
                                                                                   c.init_std), method=self.name)
        return matched
