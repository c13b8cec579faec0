"""Adapter (Houlsby et al., 2019), placed as in NOAH / V-PETL: a bottleneck on the MLP output,
inside the MLP residual:  x <- x + DropPath(z + W_up act(W_down z + b_d) + b_u),  z = MLP(LN2(x)).

Init: W_down Xavier-uniform, W_up and both biases zero, so the model is unchanged at init and every
tensor trains (V-PETL zero-initialises W_down too, which leaves W_down and b_d without gradient
forever). Per block 2*d*r + r + d parameters: 156,768 on ViT-B/16 at bottleneck 8. Not mergeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, wrap_modules
from .base import variant
from .registry import register_method

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


@dataclass
class AdapterConfig(MethodConfig):
    """Args:
    bottleneck: hidden width r of the adapter (V-PETL: 768 // 96 = 8).
    activation: non-linearity between the projections.
    target_modules: regex over module names selecting the MLP sub-modules to wrap.
    """

    bottleneck: int = field(default=8, metadata={"help": "bottleneck width r"})
    activation: str = field(default="gelu", metadata={"help": f"one of {sorted(_ACTIVATIONS)}"})
    target_modules: str = field(default=r"(^|\.)blocks\.\d+\.mlp$", metadata={"help": "module-name regex"})

    def validate(self):
        if self.bottleneck < 1:
            raise MethodError(f"adapter.bottleneck must be >= 1, got {self.bottleneck}")
        if self.activation not in _ACTIVATIONS:
            raise MethodError(f"adapter.activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")


class BottleneckAdapter(MethodLayer):
    """Wraps a module and adds a residual bottleneck on its output."""

    def __init__(self, base_layer: nn.Module, dim: int, bottleneck: int, activation: str):
        super().__init__()
        self.base_layer = base_layer
        self.down = nn.Linear(dim, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base_layer(x)
        return z + self.up(self.act(self.down(z)))


def output_dim(module: nn.Module) -> int:
    """Width of a timm MLP's output (its last Linear)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise MethodError(f"cannot find the output width of {type(module).__name__}")
    return linears[-1].out_features


@register_method
class Adapter(PeftMethod):
    name = "adapter"
    category = "addition"
    config_cls = AdapterConfig
    mergeable = False
    paper = "Houlsby et al., ICML 2019 (placement as in NOAH / V-PETL)"
    provenance = variant(
        "one adapter on the MLP output as NOAH / V-PETL, GELU, no dropout, W_down Xavier")

    def inject(self, model):
        c = self.config
        return wrap_modules(
            model, c.target_modules,
            lambda base: BottleneckAdapter(base, output_dim(base), c.bottleneck, c.activation), method=self.name)
