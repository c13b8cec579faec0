"""AdaptFormer (Chen et al., NeurIPS 2022): a scaled bottleneck in parallel with each block's MLP.

    x <- x + MLP(LN2(x)) + s * W_up Dropout(ReLU(W_down x + b_d)) + s * b_u

Placement. The official code (ShoufaChen/AdaptFormer, `ffn_option="parallel"`,
`ffn_adapter_layernorm_option="none"`) feeds the branch the post-attention residual stream x, i.e.
the input of LN2, not the MLP's normalised input; that is our default (`branch_input: residual`).
`branch_input: normed` feeds it LN2(x), the MLP's own input, instead (the paper's equation writes an
LN in front of W_down; recalled, not re-read here). `layernorm: true` adds the branch's own LayerNorm
in front of W_down, as V-PETL's image code does (`adapter_layernorm_option="in"`, +2d per block:
175,200 on ViT-B/16).

Injection. The timm block is not edited: its `mlp` is wrapped by `AdaptFormerMlp` (which owns the
branch), its `drop_path2` by `_AddBranch`, and, for `residual` input, its `norm2` by `_Norm2Tap`, a
parameter-free pass-through that hands the tensor entering LN2 to the MLP wrapper of the same block
(the block always calls `norm2`, then `mlp`, then `drop_path2`). The MLP wrapper returns the MLP output
alone and leaves the branch output for `_AddBranch`, which adds it *after* DropPath (and LayerScale):
    x <- x1 + DropPath(MLP(LN2(x1))) + s * branch(x1)
exactly as the official block (`x = residual + drop_path(mlp(norm2(x))) + adapt_x`,
`models/custom_modules.py`), so with stochastic depth the branch survives for the samples whose MLP is
dropped. Works for timm ViT blocks (`blocks.N`) and Swin blocks (`layers.S.blocks.N`); the hand-over
is a plain attribute, so use DDP rather than `nn.DataParallel` replicas.

Init (official `init_option="lora"`): W_down Kaiming-uniform(a=sqrt 5), W_up and both biases zero, so
the model is unchanged at init; W_down gets gradient from the second step on. Dropout 0.1 on the
bottleneck. Scale: we default to the official s = 0.1 (the paper's choice; V-PETL's image code uses
1.0 with the extra LN).

Count: per block 2*d*r + r + d (+2d with `layernorm`). ViT-B/16, r = 8: 156,768 = the published 0.16 M
(VTAB, the NOAH-paper row, no extra LN). Swin-B, r = 64 (video / dense setting): 129*sum(d) + 64*24 =
1,553,664. V-PETL's FGVC 0.46 M is not reproducible (catalog: would need r ~ 14.5 with head).
Not mergeable (ReLU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapter import output_dim
from .base import MethodConfig, MethodError, MethodLayer, ModuleRef, PeftMethod, match_modules, replace_module
from .base import official_code
from .registry import register_method

_INPUTS = ("residual", "normed")


@dataclass
class AdaptFormerConfig(MethodConfig):
    """Args:
    bottleneck: hidden width r of the parallel branch (NOAH / V-PETL image: 8; official video: 64).
    scale: s multiplying the branch output (official 0.1; V-PETL image code 1.0).
    dropout: dropout on the bottleneck activations (official 0.1).
    branch_input: `residual` (input of LN2, official code) or `normed` (LN2 output = the MLP input).
    layernorm: add a LayerNorm in front of W_down (V-PETL's image variant, +2d per block).
    target_modules: regex over module names selecting the block MLPs to wrap.
    """

    bottleneck: int = field(default=8, metadata={"help": "bottleneck width r"})
    scale: float = field(default=0.1, metadata={"help": "branch scale s"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the bottleneck"})
    branch_input: str = field(default="residual", metadata={"help": f"one of {_INPUTS}"})
    layernorm: bool = field(default=False, metadata={"help": "LayerNorm on the branch input (V-PETL image)"})
    target_modules: str = field(default=r"(^|\.)blocks\.\d+\.mlp$", metadata={"help": "module-name regex"})

    def validate(self):
        if self.bottleneck < 1:
            raise MethodError(f"adaptformer.bottleneck must be >= 1, got {self.bottleneck}")
        if not math.isfinite(self.scale):
            raise MethodError(f"adaptformer.scale must be finite, got {self.scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise MethodError(f"adaptformer.dropout must be in [0, 1), got {self.dropout}")
        if self.branch_input not in _INPUTS:
            raise MethodError(f"adaptformer.branch_input must be one of {_INPUTS}, got {self.branch_input!r}")


class AdaptFormerMlp(MethodLayer):
    """Wraps a block's MLP: returns MLP(z) and computes the branch s * up(dropout(relu(down(u)))),
    where u is the tensor the paired `_Norm2Tap` saw (residual input) or z itself (normed input); the
    paired `_AddBranch` adds the branch after the block's DropPath."""

    def __init__(self, base_layer: nn.Module, dim: int, bottleneck: int, scale: float, dropout: float,
                 layernorm: bool, from_residual: bool):
        super().__init__()
        self.base_layer = base_layer
        self.scale = scale
        self.from_residual = from_residual
        self.norm = nn.LayerNorm(dim) if layernorm else nn.Identity()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._residual: torch.Tensor | None = None
        self._branch: torch.Tensor | None = None
        self.train(base_layer.training)  # injected into an eval-mode model: no dropout until .train()

    def branch(self, u: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(self.norm(u))))) * self.scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.from_residual:
            u, self._residual = self._residual, None
            if u is None:
                raise MethodError("AdaptFormer: the block's norm2 did not run before its mlp; "
                                  "the residual branch input is unavailable")
            if u.shape != z.shape:
                raise MethodError(f"AdaptFormer: norm2 input {tuple(u.shape)} does not match mlp input "
                                  f"{tuple(z.shape)}")
        else:
            u = z
        self._branch = self.branch(u)
        return self.base_layer(z)

    def take_branch(self) -> torch.Tensor:
        branch, self._branch = self._branch, None
        if branch is None:
            raise MethodError("AdaptFormer: the block's drop_path2 ran without its mlp; no branch to add")
        return branch


class _Tap(MethodLayer):
    """Parameter-free pass-through wrapper that shares a block-local tensor with the block's
    `AdaptFormerMlp` (a `ModuleRef`, not a submodule: the sink is registered once, as `mlp`)."""

    def __init__(self, base_layer: nn.Module, sink: AdaptFormerMlp):
        super().__init__()
        self.base_layer = base_layer
        self._sink = ModuleRef(sink)


class _Norm2Tap(_Tap):
    """Wraps `norm2`: hands its input (the post-attention residual stream) to the MLP wrapper."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._sink.module._residual = x
        return self.base_layer(x)


class _AddBranch(_Tap):
    """Wraps `drop_path2`: DropPath(y) + branch, so stochastic depth never drops the branch."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        branch = self._sink.module.take_branch()
        return self.base_layer(y) + branch


def _sibling(model: nn.Module, name: str, child: str, method: str, why: str) -> tuple[str, nn.Module]:
    block_name = name.rpartition(".")[0]
    full = f"{block_name}.{child}" if block_name else child
    try:
        return full, model.get_submodule(full)
    except AttributeError:
        raise MethodError(f"{method}: {why} needs a `{child}` next to {name}; {full} does not exist") from None


@register_method
class AdaptFormer(PeftMethod):
    name = "adaptformer"
    category = "addition"
    config_cls = AdaptFormerConfig
    mergeable = False
    paper = "Chen et al., AdaptFormer, NeurIPS 2022 (r = 8 as in NOAH's VTAB row)"
    provenance = official_code(
        "ShoufaChen/AdaptFormer", "6967d676c1a5e5a11be2e2768a6e5c604bb043ed",
        "models/custom_modules.py", "models/adapter.py",
        notes="r = 8 as NOAH's VTAB row (official image/video r = 64)")

    def inject(self, model):
        c = self.config
        names = match_modules(model, c.target_modules)
        if not names:
            raise MethodError(f"{self.name}: no module of {type(model).__name__} matches "
                              f"target_modules={c.target_modules!r}")
        from_residual = c.branch_input == "residual"
        for name in names:
            mlp = model.get_submodule(name)
            layer = AdaptFormerMlp(mlp, output_dim(mlp), c.bottleneck, c.scale, c.dropout, c.layernorm,
                                   from_residual)
            drop_name, drop = _sibling(model, name, "drop_path2", self.name, "adding the branch after DropPath")
            if from_residual:
                norm_name, norm = _sibling(model, name, "norm2", self.name,
                                           "branch_input=residual (else use branch_input=normed)")
                replace_module(model, norm_name, _Norm2Tap(norm, layer))
            replace_module(model, drop_name, _AddBranch(drop, layer))
            replace_module(model, name, layer)
        return names
