"""BAPAT (Yu et al., "Towards a Unified View on Visual Parameter-Efficient Transfer Learning", arXiv
2210.00788, 2022): the scheme derived from their V-PETL framework, read here as **B**itFit +
**A**daptFormer-style adapter + **PAT**T (parallel attention).

    qkv(x) -> qkv(x) + s_p * [0 | W_up tanh(W_down x + b_d) + b_u]        (PATT on k and v)
    x      -> x + MLP(LN2(x)) + s_a * W_u ReLU(W_d x + b) + s_a * b'       (parallel adapter)
    every backbone tensor whose name contains "bias" trains                  (BitFit)

PATT is the paper's prefix-tuning variant: instead of prepending learned key/value tokens, a
d -> m -> 2d tanh bottleneck of the attention *input* x is added, scaled by s_p = 0.2, to two of q, k, v
(default k and v, the slots prefix-tuning acts on). Placement and init follow the only released code,
V-PETL's Video-Swin model (`att_prefix_mode = patt_kv`, `att_mid_dim = 64`, `att_prefix_scale = 0.2`;
both Linears with PyTorch's default init and biases as the backbone's `qkv_bias`), so the model is NOT
unchanged at init. Here PATT wraps the fused `attn.qkv` Linear (`PattQKV`): adding the bottleneck's
2d outputs to the k and v thirds of the qkv output is the same per-head addition as V-PETL's.
The adapter is AdaptFormer (bottleneck 64, scale 0.1, LoRA-style init, parallel to the MLP, fed the
post-attention residual stream), reused from `adaptformer.py`; dropout 0 as in V-PETL's video trainer.

Composition: **unverified**. The paper text could not be re-read here; the name and the catalog suggest
BitFit + Adapter + PATT, and each part can be switched off (`bitfit`, `adapter_bottleneck: 0`,
`patt_dim: 0`). Parameter formula per block of width d (biases on): PATT 3*d*m + m + 2*d
(k, v targets), adapter 2*d*r + r + d, plus BitFit's bias count of the backbone.
Counts at the defaults (m = r = 64):
  timm ViT-B/16: 102,912 + 1,189,632 + 1,788,672 = 3,081,216;
  Video Swin-B (sum d over blocks 12,032, 24 blocks): 1,090,376 (BitFit incl. relative-position
  tables) + 1,553,664 + 2,335,744 = 4,979,784.
Published (V-PETL README, from Yu et al.): 2.06 M (ViT-B) and 6.18 M (Swin-B): NOT reproduced. Several
compositions reach 6.18 M on Swin-B (e.g. adapter r = 64 + PATT m = 128 with no up-projection bias:
6,177,024; adapter r = 256 alone: 6,178,560) and none of the natural ones reaches 2.06 M on ViT-B, so
the published counts do not identify the scheme. Not mergeable (tanh and ReLU branches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .adaptformer import AdaptFormer, AdaptFormerConfig
from .base import (
    MethodConfig,
    MethodError,
    MethodLayer,
    PeftMethod,
    classifier_parameter_names,
    method_layers,
    wrap_modules,
)
from .base import from_paper
from .registry import register_method

_QKV = ("q", "k", "v")


@dataclass
class BapatConfig(MethodConfig):
    """Args:
    bitfit: also train every backbone bias (names containing "bias", Swin's relative-position tables too).
    adapter_bottleneck: AdaptFormer bottleneck r (0 = no adapter).
    adapter_scale: AdaptFormer branch scale s_a.
    adapter_dropout: dropout on the adapter bottleneck (V-PETL video: 0).
    patt_dim: PATT bottleneck m (0 = no PATT).
    patt_scale: PATT scale s_p.
    patt_targets: which two (or three) of q, k, v PATT adds to.
    patt_bias: biases in PATT's Linears (V-PETL: the backbone's qkv_bias, True for ViT-B and Swin-B).
    mlp_modules: regex over module names selecting the MLPs the adapter sits beside.
    qkv_modules: regex over module names selecting the fused qkv Linears PATT wraps.
    """

    bitfit: bool = field(default=True, metadata={"help": "train the backbone's biases too"})
    adapter_bottleneck: int = field(default=64, metadata={"help": "AdaptFormer bottleneck r (0: off)"})
    adapter_scale: float = field(default=0.1, metadata={"help": "AdaptFormer scale s_a"})
    adapter_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter bottleneck"})
    patt_dim: int = field(default=64, metadata={"help": "PATT bottleneck m (0: off)"})
    patt_scale: float = field(default=0.2, metadata={"help": "PATT scale s_p"})
    patt_targets: tuple = field(default=("k", "v"), metadata={"help": "subset of q, k, v PATT adds to"})
    patt_bias: bool = field(default=True, metadata={"help": "biases in PATT's Linears"})
    mlp_modules: str = field(default=r"(^|\.)blocks\.\d+\.mlp$", metadata={"help": "module-name regex (adapter)"})
    qkv_modules: str = field(default=r"(^|\.)blocks\.\d+\.attn\.qkv$", metadata={"help": "module-name regex (PATT)"})

    def validate(self):
        if self.adapter_bottleneck < 0 or self.patt_dim < 0:
            raise MethodError("bapat.adapter_bottleneck and bapat.patt_dim must be >= 0")
        if not (self.bitfit or self.adapter_bottleneck or self.patt_dim):
            raise MethodError("bapat: every part is switched off (bitfit false, adapter_bottleneck 0, patt_dim 0)")
        bad = [t for t in self.patt_targets if t not in _QKV]
        if bad or not self.patt_targets or len(set(self.patt_targets)) != len(self.patt_targets):
            raise MethodError(f"bapat.patt_targets must be distinct members of {_QKV}, got {self.patt_targets}")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise MethodError(f"bapat.adapter_dropout must be in [0, 1), got {self.adapter_dropout}")


class PattQKV(MethodLayer):
    """Wraps a fused qkv Linear (out = 3d): adds s * up(tanh(down(x))) to the chosen thirds."""

    def __init__(self, base_layer: nn.Linear, dim: int, scale: float, targets: tuple, bias: bool):
        super().__init__()
        if base_layer.out_features % 3:
            raise MethodError(f"bapat: PATT needs a fused qkv Linear (out = 3 * d), got out={base_layer.out_features}")
        self.base_layer = base_layer
        self.targets = tuple(t for t in _QKV if t in targets)
        self.scale = scale
        width = base_layer.out_features // 3
        # PyTorch's default Linear init, as V-PETL's qkv_adapter
        self.down = nn.Linear(base_layer.in_features, dim, bias=bias)
        self.act = nn.Tanh()
        self.up = nn.Linear(dim, width * len(self.targets), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        parts = list(out.chunk(3, dim=-1))
        extra = (self.up(self.act(self.down(x))) * self.scale).chunk(len(self.targets), dim=-1)
        for target, delta in zip(self.targets, extra):
            i = _QKV.index(target)
            parts[i] = parts[i] + delta
        return torch.cat(parts, dim=-1)


@register_method
class Bapat(PeftMethod):
    name = "bapat"
    category = "addition"
    config_cls = BapatConfig
    mergeable = False
    paper = ("Yu et al., Towards a Unified View on Visual Parameter-Efficient Transfer Learning (Swin-BAPAT), "
             "arXiv 2210.00788, 2022")
    provenance = from_paper(
        "name and V-PETL framework of Yu et al. (arXiv 2210.00788); composition unverified",
        "V-PETL Video-Swin PATT settings (patt_kv, mid dim 64, scale 0.2)",
        notes="published 2.06 M / 6.18 M not reproduced (see module docstring)")

    def inject(self, model):
        c = self.config
        matched = []
        if c.adapter_bottleneck:
            adapter = AdaptFormer(AdaptFormerConfig(bottleneck=c.adapter_bottleneck, scale=c.adapter_scale,
                                                    dropout=c.adapter_dropout, target_modules=c.mlp_modules))
            matched += adapter.inject(model)
        if c.patt_dim:
            matched += wrap_modules(model, c.qkv_modules,
                                    lambda base: PattQKV(base, c.patt_dim, c.patt_scale, c.patt_targets, c.patt_bias),
                                    kind=nn.Linear, method=self.name)
        if c.bitfit and not matched:
            matched = sorted({n.rpartition(".")[0] for n in self.select_backbone_parameters(model)})
        return matched

    def select_backbone_parameters(self, model):
        """BitFit's part: the backbone's own biases (wrapped ones included), not the method's or the head's."""
        if not self.config.bitfit:
            return []
        owned = {id(p) for layer in method_layers(model) for _, p in layer.method_parameters()}
        head = classifier_parameter_names(model)
        return [n for n, p in model.named_parameters()
                if "bias" in n.rpartition(".")[2] and id(p) not in owned and n not in head]
