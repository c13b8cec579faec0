"""BAPAT (Yu et al., "Towards a Unified View on Visual Parameter-Efficient Transfer Learning", arXiv
2210.00788, 2022): the Swin-BAPAT scheme derived from their V-PETL framework -- an AdaptFormer
adapter beside every MLP plus PATT (parallel attention) on every attention.

    qkv(x) -> qkv(x) + s_p * [0 | W_up tanh(W_down x + b_d) + b_u]        (PATT on k and v)
    x      -> x + MLP(LN2(x)) + s_a * (W_u ReLU(W_d LN2(x) + b) + b')       (parallel adapter)

Compared with the authors' released code, bruceyo/V-PETL@661198dd3810d23b36808368930aba69e635c34c
(Video Swin only): `models/video_swin_transformer_patt.py` (`WindowAttention3D.qkv_adapter`, `Mlp`,
`Adapter`), `main.py` (tuning config; trainable = parameters missing from the checkpoint, i.e. the
new modules, plus the head with `--tbl_fc True`) and the README's training command, the only scheme
it gives: `--ffn_adapt --att_prefix --att_mid_dim 128 --att_prefix_mode patt_kv --att_prefix_scale 0.8`.
What each decision rests on:
* Composition = AdaptFormer + PATT, no BitFit -- the README command (`--ffn_adapt` + `--att_prefix`)
  and `main.py` (only missing keys train: no backbone bias). Abstract: "Swin-BAPAT derived from the
  proposed V-PETL framework" with PATT "a new variation of the prefix-tuning module". `bitfit: true`
  (the project's earlier guess from the name) stays available, off by default.
* PATT -- `qkv_adapter` = Linear(d, m, bias=qkv_bias), Tanh, Linear(m, 2d, bias=qkv_bias) on the
  attention input x, its two halves added, times `att_prefix_scale`, to k and v (`patt_kv`); here
  `PattQKV` wraps the fused `attn.qkv` and adds them to its k and v thirds, the same per-head sum.
  m = 128 and s_p = 0.8 from the README command; biases as the backbone's qkv_bias (True); PyTorch's
  default Linear init (the model is NOT unchanged at init, as in the released code).
* Adapter -- `Mlp` with `ffn_option="parallel"`: `Adapter` (r = `ffn_num` = 64, ReLU, scale 0.1, LoRA
  init, dropout = `--drop` = 0) reads the MLP's input LN2(x) and is added to the MLP output: here
  AdaptFormer with `branch_input: normed`, reused from `adaptformer.py`. Known difference: the
  released block adds the branch inside DropPath (it is part of `Mlp`'s output), ours after it
  (AdaptFormer's official ViT placement); they differ only under stochastic depth.

Parameters per block of width d: PATT (d m + m) + (2 d m + 2 d) = 3 d m + m + 2 d; adapter
2 d r + r + d. Swin-B (sum of d over 24 blocks 12,032) at m = 128, r = 64: 4,647,424 + 1,553,664 =
6,201,088 -> 6.20 M. Published (V-PETL README, from Yu et al.): 6.18 M (Video Swin-B) -- 24,064 =
2 x sum(d) less, exactly PATT's up-projection biases, which the released code has (qkv_bias=True):
not reproduced by the released code; 6,177,024 (6.18 M) only if the up-projection alone had no bias,
a layout neither the released code nor `patt_bias` (both biases or none: 6,173,952) builds. ViT-B: 4,748,544 at the same setting vs the published 2.06 M (VideoMAE
ViT-B): the repository has no ViT model and the ViT-B setting is not reported in the material read.
Not mergeable (tanh and ReLU branches).
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
from .base import official_code
from .registry import register_method

_QKV = ("q", "k", "v")


@dataclass
class BapatConfig(MethodConfig):
    """Args:
    bitfit: also train every backbone bias (names containing "bias", Swin's relative-position tables too);
        not part of the released scheme (off).
    adapter_bottleneck: AdaptFormer bottleneck r (0 = no adapter).
    adapter_scale: AdaptFormer branch scale s_a.
    adapter_dropout: dropout on the adapter bottleneck (V-PETL video: 0).
    adapter_input: `normed` (LN2 output, the MLP input: the released code) or `residual`.
    patt_dim: PATT bottleneck m (0 = no PATT).
    patt_scale: PATT scale s_p.
    patt_targets: which two (or three) of q, k, v PATT adds to.
    patt_bias: biases in PATT's Linears (V-PETL: the backbone's qkv_bias, True for ViT-B and Swin-B).
    mlp_modules: regex over module names selecting the MLPs the adapter sits beside.
    qkv_modules: regex over module names selecting the fused qkv Linears PATT wraps.
    """

    bitfit: bool = field(default=False, metadata={"help": "train the backbone's biases too"})
    adapter_bottleneck: int = field(default=64, metadata={"help": "AdaptFormer bottleneck r (0: off)"})
    adapter_scale: float = field(default=0.1, metadata={"help": "AdaptFormer scale s_a"})
    adapter_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter bottleneck"})
    adapter_input: str = field(default="normed", metadata={"help": "adapter branch input: normed or residual"})
    patt_dim: int = field(default=128, metadata={"help": "PATT bottleneck m (0: off)"})
    patt_scale: float = field(default=0.8, metadata={"help": "PATT scale s_p"})
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
        if self.adapter_input not in ("normed", "residual"):
            raise MethodError(f"bapat.adapter_input must be normed or residual, got {self.adapter_input!r}")
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
    provenance = official_code(
        "bruceyo/V-PETL", "661198dd3810d23b36808368930aba69e635c34c",
        "models/video_swin_transformer_patt.py", "main.py", "README.md",
        notes="AdaptFormer r 64 + PATT(k, v) m 128, s 0.8 as the README command; adapter added after "
              "DropPath (released: inside); 6.18 M = 6.20 M less PATT up-biases; ViT-B 2.06 M not reproduced")

    def inject(self, model):
        c = self.config
        matched = []
        if c.adapter_bottleneck:
            adapter = AdaptFormer(AdaptFormerConfig(bottleneck=c.adapter_bottleneck, scale=c.adapter_scale,
                                                    dropout=c.adapter_dropout, branch_input=c.adapter_input,
                                                    target_modules=c.mlp_modules))
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
