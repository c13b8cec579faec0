"""Prefix Tuning (Li & Liang, ACL 2021), applied to vision transformers.

Every attention layer gets p learnable key vectors and p learnable value vectors that are prepended to
its keys and values; queries come only from the real tokens, so the output sequence length is
unchanged. The prefixes live in the projected (post-qkv) space of each layer, shared by all images
(and, on Swin, by all windows of a layer); they receive no position bias and no attention mask.

Injection. Each timm attention module (`blocks.N.attn` of a ViT, `layers.S.blocks.N.attn` of a Swin)
is wrapped by `PrefixAttention`, which recomputes attention with the wrapped module's own `qkv`,
`q_norm`/`k_norm`, `scale`, `norm`, `gate`, `proj` and dropouts, its Swin relative-position bias and
shift mask, and honours the module's `fused_attn` flag (scaled_dot_product_attention or the explicit
softmax path; both give the same result). The timm code is not copied or edited.

Init: prefixes ~ N(0, 0.02^2) (truncated at 2 std), as timm initialises its learned tokens. The model
is not unchanged at init (the prefixes take softmax mass), so identity-at-init does not apply.

Re-parameterisation (optional, `reparam_dim > 0`): Li & Liang train the prefixes through an MLP for
stability. Here, per layer, an embedding E (p x d) is mapped by Linear(d, m) -> tanh ->
Linear(m, 2 * d_attn) to the keys and values (the scheme of V-PETL's video code, where p = 20, m = 64).
Count per layer p*d + d*m + m + 2*d_attn*m + 2*d_attn (214*d + 64 at p = 20, m = 64, d_attn = d).

Count (direct prefixes): 2 * p * d_attn per layer, 2*p*d*L on a ViT: 184,320 on ViT-B/16 at p = 10.
Published (V-PETL FGVC table, Prefix Tuning row): 0.36 M, which matches p = 10 only if the mean FGVC
head (180,407) is included (184,320 + 180,407 = 364,727); with the head excluded it would need p ~ 20
(368,640 -> 0.37 M). The source of that row is not verified, so we do not claim a reproduction.
Not mergeable (the prefixes change the softmax normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, wrap_modules
from .base import from_paper
from .registry import register_method


@dataclass
class PrefixTuningConfig(MethodConfig):
    """Args:
    num_tokens: prefix length p (keys and values per layer).
    reparam_dim: hidden width m of the optional prefix MLP (0 = train the prefixes directly).
    init_std: std of the truncated-normal init of the prefixes (or of the embedding when re-parameterised).
    target_modules: regex over module names selecting the attention modules to wrap.
    """

    num_tokens: int = field(default=10, metadata={"help": "prefix length p"})
    reparam_dim: int = field(default=0, metadata={"help": "prefix MLP hidden width m (0 = direct prefixes)"})
    init_std: float = field(default=0.02, metadata={"help": "std of the prefix init"})
    target_modules: str = field(default=r"(^|\.)blocks\.\d+\.attn$", metadata={"help": "module-name regex"})

    def validate(self):
        if self.num_tokens < 1:
            raise MethodError(f"prefix-tuning.num_tokens must be >= 1, got {self.num_tokens}")
        if self.reparam_dim < 0:
            raise MethodError(f"prefix-tuning.reparam_dim must be >= 0, got {self.reparam_dim}")
        if not self.init_std > 0:
            raise MethodError(f"prefix-tuning.init_std must be > 0, got {self.init_std}")


def _is_swin_window_attention(module: nn.Module) -> bool:
    return hasattr(module, "relative_position_bias_table") and hasattr(module, "_get_rel_pos_bias")


class PrefixAttention(MethodLayer):
    """Wraps a timm ViT `Attention` or Swin `WindowAttention` and prepends learned keys and values."""

    def __init__(self, base_layer: nn.Module, num_tokens: int, reparam_dim: int, init_std: float):
        super().__init__()
        qkv = getattr(base_layer, "qkv", None)
        if not isinstance(qkv, nn.Linear) or not hasattr(base_layer, "num_heads") \
                or not isinstance(getattr(base_layer, "proj", None), nn.Linear):
            raise MethodError(f"prefix-tuning wraps timm attention modules with a fused `qkv` Linear, "
                              f"`num_heads` and `proj`; got {type(base_layer).__name__}")
        if qkv.out_features % (3 * base_layer.num_heads):
            raise MethodError(f"prefix-tuning: qkv width {qkv.out_features} is not 3 x heads x head_dim")
        self.base_layer = base_layer
        self.swin = _is_swin_window_attention(base_layer)
        self.num_tokens = num_tokens
        self.num_heads = base_layer.num_heads
        self.head_dim = qkv.out_features // (3 * self.num_heads)
        attn_dim = self.num_heads * self.head_dim
        if reparam_dim:
            self.embedding = nn.Parameter(torch.empty(num_tokens, qkv.in_features))
            nn.init.trunc_normal_(self.embedding, std=init_std, a=-2 * init_std, b=2 * init_std)
            self.encoder = nn.Sequential(nn.Linear(qkv.in_features, reparam_dim), nn.Tanh(),
                                         nn.Linear(reparam_dim, 2 * attn_dim))
        else:
            self.prefix_key = nn.Parameter(torch.empty(num_tokens, attn_dim))
            self.prefix_value = nn.Parameter(torch.empty(num_tokens, attn_dim))
            for p in (self.prefix_key, self.prefix_value):
                nn.init.trunc_normal_(p, std=init_std, a=-2 * init_std, b=2 * init_std)
        self.train(base_layer.training)

    def prefixes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the prefix, each (heads, p, head_dim)."""
        if hasattr(self, "encoder"):
            key, value = self.encoder(self.embedding).chunk(2, dim=-1)
        else:
            key, value = self.prefix_key, self.prefix_value
        shape = (self.num_tokens, self.num_heads, self.head_dim)
        return key.reshape(shape).transpose(0, 1), value.reshape(shape).transpose(0, 1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.base_layer
        batch, n, _ = x.shape
        qkv = base.qkv(x).reshape(batch, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.swin:
            bias = self._swin_bias(batch, n, *args, **kwargs)
        else:
            q, k = base.q_norm(q), base.k_norm(k)
            bias = self._vit_bias(n, q.dtype, q.device, *args, **kwargs)
        pk, pv = self.prefixes()
        k = torch.cat([pk.to(k.dtype).unsqueeze(0).expand(batch, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.to(v.dtype).unsqueeze(0).expand(batch, -1, -1, -1), v], dim=2)
        if bias is not None:  # prefix columns: no position bias, never masked
            bias = torch.cat([bias.new_zeros(*bias.shape[:-1], self.num_tokens), bias], dim=-1)
        dropout = base.attn_drop.p if self.training else 0.0
        if getattr(base, "fused_attn", False):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=base.scale)
        else:
            attn = (q * base.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            out = base.attn_drop(attn.softmax(dim=-1)) @ v
        out = out.transpose(1, 2).reshape(batch, n, self.num_heads * self.head_dim)
        if not self.swin:
            out = base.norm(out) if hasattr(base, "norm") else out
            gate = getattr(base, "gate", None)
            if gate is not None:
                out = out * gate(x).sigmoid()
        return base.proj_drop(base.proj(out))

    def _vit_bias(self, n: int, dtype, device, attn_mask: torch.Tensor | None = None,
                  is_causal: bool = False) -> torch.Tensor | None:
        """timm ViT attention's optional mask as an additive float bias over the real keys."""
        bias = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                bias = torch.zeros(attn_mask.shape, dtype=dtype, device=device)
                bias = bias.masked_fill(~attn_mask, float("-inf"))
            else:
                bias = attn_mask.to(dtype)
        if is_causal:
            causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            causal_bias = torch.zeros(n, n, dtype=dtype, device=device).masked_fill(~causal, float("-inf"))
            bias = causal_bias if bias is None else bias + causal_bias
        return bias

    def _swin_bias(self, batch: int, n: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Swin's relative-position bias plus its shifted-window mask, (batch, heads, n, n)."""
        bias = self.base_layer._get_rel_pos_bias()  # (1, heads, n, n)
        if mask is not None:
            num_win = mask.shape[0]
            bias = bias.unsqueeze(1) + mask.view(1, num_win, 1, n, n)  # (1, nW, heads, n, n)
            bias = bias.expand(batch // num_win, -1, -1, -1, -1).reshape(batch, self.num_heads, n, n)
        return bias


@register_method
class PrefixTuning(PeftMethod):
    name = "prefix-tuning"
    category = "addition"
    config_cls = PrefixTuningConfig
    mergeable = False
    paper = "Li & Liang, Prefix-Tuning, ACL 2021 (key/value prefixes in every ViT attention layer)"
    provenance = from_paper(
        "Li & Liang: the method, key/value prefixes at every attention layer, reparameterised by an MLP",
        "V-PETL video code's ViT scheme (p prefixes, MLP width m)",
        notes="no official ViT code")

    def inject(self, model):
        c = self.config
        return wrap_modules(model, c.target_modules,
                            lambda base: PrefixAttention(base, c.num_tokens, c.reparam_dim, c.init_std),
                            method=self.name)
