"""Bottleneck adapters (Houlsby et al., ICML 2019), in the two placements the literature benchmarks.
`variant` picks one; the default is the module behind NOAH's and V-PETL's Adapter rows.

`noah` (default; ZhangYuanhan-AI/NOAH `model/module/adapter_super.py` and the block forward of
`model/supernet_vision_transformer_timm.py`): one adapter per block on the MLP branch *after* its
DropPath,  x <- x + A(DropPath(MLP(LN2(x)))),  A(y) = y + W_up Dropout(QuickGELU(W_down y + b_d)) + b_u,
QuickGELU(z) = z sigmoid(1.702 z), dropout 0.1 (`--drop_rate_adapter` default), both weights
Xavier-uniform and both biases N(0, 1e-6). That init is not an exact identity but a small one: the
narrow bottleneck makes the branch ~0.1x its input at init, and every tensor trains from the first
step (V-PETL's copy zero-initialises both weights, which leaves them without gradient for ever; not
offered). Injected by wrapping each block's `drop_path2` (timm ViT and Swin), so the adapter reads
the dropped-path MLP output exactly as there. Count per block 2 d r + r + d: 156,768 on ViT-B/16 at
r = 8 = NOAH's / V-PETL's 0.16 M (VTAB, `experiments/Adapter/ViT-B_prompt_adapter_8.yaml`).

`houlsby` (the paper's Fig. 2; google-research/adapter-bert `modeling.py`, `feedforward_adapter`): two
adapters per block, on the attention output and on the MLP output, each inside its residual branch
before the skip is added:  a = Attn(LN1(x)),  x <- x + A1(a);  z = MLP(LN2(x)),  x <- x + A2(z), with
A(y) = y + W_up GELU(W_down y + b_d) + b_u, weights truncated-normal (std 1e-3, cut at 2 std) and
biases zero (near-identity init), no dropout. Injected by wrapping `attn` and `mlp` (a block's DropPath,
if any, then acts on the adapted branch). Houlsby et al. also train the (post-)LayerNorms of BERT; the
pre-LN ViT's norms stay frozen here. Count 2 (2 d r + r + d) per block: 313,536 on ViT-B/16 at
r = 8; no ViT-B/16 count is published for this placement to compare with.

`target_modules` overrides the variant's placement (e.g. the dense track's Swin adapter on
`attn.proj` and `mlp`); `activation` / `dropout` override the variant's values. Not mergeable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import (
    MethodConfig,
    MethodError,
    MethodLayer,
    PeftMethod,
    match_modules,
    official_code,
    replace_module,
)
from .registry import register_method


class QuickGELU(nn.Module):
    """z * sigmoid(1.702 z): the GELU approximation of CLIP / NOAH."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU, "relu": nn.ReLU, "silu": nn.SiLU}
#: per variant: placement regex, activation, dropout, init
VARIANTS = {
    "noah": {"target_modules": r"(^|\.)blocks\.\d+\.drop_path2$", "activation": "quick_gelu", "dropout": 0.1,
             "init": "xavier"},
    "houlsby": {"target_modules": r"(^|\.)blocks\.\d+\.(attn|mlp)$", "activation": "gelu", "dropout": 0.0,
                "init": "near_identity"},
}


@dataclass
class AdapterConfig(MethodConfig):
    """Args:
    variant: `noah` (one adapter after the MLP's DropPath, as NOAH / V-PETL) or `houlsby` (two per
        block, on the attention and MLP outputs, as Houlsby et al.).
    bottleneck: hidden width r of each adapter (NOAH / V-PETL: 8).
    activation: non-linearity between the projections; `auto` = the variant's (quick_gelu / gelu).
    dropout: dropout after the activation; negative = the variant's (0.1 / 0).
    target_modules: regex over module names to wrap; empty = the variant's placement.
    """

    variant: str = field(default="noah", metadata={"help": f"one of {sorted(VARIANTS)}"})
    bottleneck: int = field(default=8, metadata={"help": "bottleneck width r"})
    activation: str = field(default="auto", metadata={"help": f"auto or one of {sorted(_ACTIVATIONS)}"})
    dropout: float = field(default=-1.0, metadata={"help": "dropout after the activation; < 0: the variant's"})
    target_modules: str = field(default="", metadata={"help": "module-name regex; empty: the variant's"})

    def validate(self):
        if self.variant not in VARIANTS:
            raise MethodError(f"adapter.variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        if self.bottleneck < 1:
            raise MethodError(f"adapter.bottleneck must be >= 1, got {self.bottleneck}")
        if self.activation != "auto" and self.activation not in _ACTIVATIONS:
            raise MethodError(f"adapter.activation must be 'auto' or one of {sorted(_ACTIVATIONS)}, "
                              f"got {self.activation!r}")
        if not math.isfinite(self.dropout) or self.dropout >= 1.0:
            raise MethodError(f"adapter.dropout must be < 1 (negative: the variant's), got {self.dropout}")

    def resolved(self) -> dict:
        """The variant's values with the explicit overrides applied."""
        v = dict(VARIANTS[self.variant])
        if self.activation != "auto":
            v["activation"] = self.activation
        if self.dropout >= 0:
            v["dropout"] = self.dropout
        if self.target_modules:
            v["target_modules"] = self.target_modules
        return v


class BottleneckAdapter(MethodLayer):
    """Wraps a module and adds a residual bottleneck on its output: y + up(drop(act(down(y))))."""

    def __init__(self, base_layer: nn.Module, dim: int, bottleneck: int, activation: str,
                 dropout: float = 0.0, init: str = "xavier"):
        super().__init__()
        self.base_layer = base_layer
        self.down = nn.Linear(dim, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(bottleneck, dim)
        for linear in (self.down, self.up):
            if init == "xavier":  # NOAH's AdapterSuper.init_weights
                nn.init.xavier_uniform_(linear.weight)
                nn.init.normal_(linear.bias, std=1e-6)
            elif init == "near_identity":  # adapter-bert: truncated normal, std 1e-3; zero biases
                nn.init.trunc_normal_(linear.weight, std=1e-3, a=-2e-3, b=2e-3)
                nn.init.zeros_(linear.bias)
            else:
                raise MethodError(f"unknown adapter init {init!r}")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)  # timm's attn also takes attn_mask / is_causal
        return y + self.up(self.dropout(self.act(self.down(y))))


def output_dim(module: nn.Module) -> int:
    """Width of a timm MLP's output (its last Linear)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise MethodError(f"cannot find the output width of {type(module).__name__}")
    return linears[-1].out_features


def _branch_dim(model: nn.Module, base: nn.Module, name: str) -> int:
    """Width of the branch a wrapped module outputs: its own last Linear, or (for a parameter-free
    DropPath) the block's MLP output."""
    if any(isinstance(m, nn.Linear) for m in base.modules()):
        return output_dim(base)
    block = name.rpartition(".")[0]
    try:
        return output_dim(model.get_submodule(f"{block}.mlp" if block else "mlp"))
    except AttributeError:
        raise MethodError(f"adapter: cannot tell the width at {name} (no Linear inside, no sibling mlp)") from None


@register_method
class Adapter(PeftMethod):
    name = "adapter"
    category = "addition"
    config_cls = AdapterConfig
    mergeable = False
    paper = "Houlsby et al., ICML 2019 (variant noah: NOAH / V-PETL's module; houlsby: two per block)"
    provenance = official_code(
        "ZhangYuanhan-AI/NOAH", "e9c55f360be4f7f1133a08bf84f86f0309e98f8c",
        "model/module/adapter_super.py", "model/supernet_vision_transformer_timm.py",
        notes="default variant noah; variant houlsby checked against google-research/adapter-bert@1a31fc6 "
              "modeling.py (feedforward_adapter)")

    def inject(self, model):
        c, v = self.config, self.config.resolved()
        names = match_modules(model, v["target_modules"])
        if not names:
            raise MethodError(f"{self.name}: no module of {type(model).__name__} matches "
                              f"target_modules={v['target_modules']!r}")
        for name in names:
            base = model.get_submodule(name)
            replace_module(model, name, BottleneckAdapter(base, _branch_dim(model, base, name), c.bottleneck,
                                                          v["activation"], v["dropout"], v["init"]))
        return names
