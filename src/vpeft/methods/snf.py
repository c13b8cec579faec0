"""SNF, "Shortcut adaptation via Normalizing Flow" (Wang, Shi, Zhang, Li, Liu, Dai, Li, Xiong, Tian:
"Adapting Shortcut with Normalizing Flow: An Efficient Tuning Framework for Visual Recognition",
CVPR 2023; code github.com/Wang-Yaoming/SNF).

Identity. V-PETL's "SNF" row (FGVC 90.2/87.4/99.7/89.5/86.9, mean 90.74, 0.25 M) is exactly the "SNF"
row that later papers cite with this CVPR 2023 reference (e.g. the FGVC table of DA-VPT, Ren et al.),
and its 0.036M abstract count matches the flow formula below. It is *not* the "Synapse and Neuron"
method of Dai et al. (arXiv 2409.06706, first posted Aug 2024), whose acronym is SAN; the issue's
attribution is mistaken.

Method. In a pre-norm ViT block the residual shortcut is the identity: x + Attn(LN1(x)). SNF keeps the
over-parameterised residual branches frozen and makes the cheap shortcuts learnable, replacing each
identity shortcut by an invertible normalizing flow F (invertible, so no information is lost on the
shortcut):
    y = F1(x) + DropPath(LS1(Attn(LN1(x)))),      z = F2(y) + DropPath(LS2(MLP(LN2(y)))).
Note the branches still read the un-flowed x (resp. y); only the shortcut path is transformed.
Each flow, on the channel dimension d, is an element-wise affine map followed by K planar flows:
    a = mu + exp(log_sigma) * x,     then K times:  a <- a + s * tanh(w . a + b)
(mu, log_sigma, w, s in R^d; b scalar; planar flows as in Rezende & Mohamed 2015). As in the released
code, the log-determinant of the flow is computed there but not used in the loss, so none is added.

Init (official): mu = 0, log_sigma = 0 (identity affine); w, s, b ~ U(-0.01, 0.01). At the default
K = 0 the model is therefore exactly the frozen one at init; with planar flows (K >= 1) it is only
approximately so (their terms are small, not zero).

Compared with the released code, Wang-Yaoming/SNF@a6f85b1 (uploaded Sep 2024, after the paper):
`snf.py` (`forward_flow_block`: flow(x) + attention(ln_1(x)), then flow2(x) + mlp(ln_2(x)); `set_snf`
puts `flow` and `flow2` on every block) and `flow.py` (`NormalizingFlow` = `AffineTransform` then
`flow_length` x `PlanarFlow`; `PlanarFlow` weight (1, d), bias (1), scale (1, d)): same placement, same
flow, same per-flow shapes and init. Only the default flow length differs (see Parameters).

Injection. Each timm ViT `blocks.N` (a `vision_transformer.Block`) is wrapped by `ShortcutFlowBlock`,
which runs the wrapped block's own frozen sub-modules (norm1, attn, ls1, drop_path1, norm2, mlp, ls2,
drop_path2) with the two shortcuts replaced by flows. The timm code is not copied or edited. Other
block types (Swin, parallel or post-norm blocks) are refused with a clear error.

Parameters: per flow 2d + K(2d + 1); two flows per block:  2L(2d + K(2d + 1)).
Default K = 0 (affine flows only), the paper's setting as far as it can be identified:
  * the abstract: "with only 0.036M parameters, SNF surpasses previous approaches on both the FGVC
    and VTAB-1k benchmarks using ViT/B-16" -- 0.036M is exactly 2 flows x 12 blocks x (mu, log_sigma)
    x 768 = 36,864 (0.0369M, printed cut to three decimals), i.e. K = 0; every planar flow adds
    2 L (2d + 1) = 36,888 (K = 1: 73,752 -> 0.074M), so the headline results cannot have used K >= 1;
  * the released code (`set_snf(..., flow_length=16)`, snf.py) defaults to K = 16 (627,072 ->
    0.63M), which contradicts the abstract's count; it is kept available as `flow_length: 16`;
  * V-PETL's 0.25 M (FGVC and VTAB rows) counts the classifier head like its other FGVC rows:
    K = 0 plus the mean FGVC head (180,407) gives 0.22M, K = 1 plus it gives 254,159 -> 0.25M. So
    V-PETL's number corresponds to K = 1 (`flow_length: 1`), not to the paper's headline count; the
    VTAB "0.25 M" matches no K with the mean VTAB head (38,045) and looks like the FGVC value repeated.
The paper's full text (its per-benchmark flow length, if it varies) could not be read here; the
abstract's count is the only statement of the setting that was found.
Not mergeable (tanh planar flows on the residual stream; even the affine part would rescale the
stream that every later block reads, which no weight of the plain architecture can absorb).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from .. import _lazy_dynamo  # noqa: F401  (first: timm without loading torch._dynamo)
from timm.models.vision_transformer import Block as VitBlock
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, wrap_modules
from .base import official_code
from .registry import register_method

_SHORTCUTS = ("attn", "mlp")
_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


@dataclass
class SnfConfig(MethodConfig):
    """Args:
    flow_length: number K of planar flows after the affine step in each shortcut flow.
    shortcuts: which residual shortcuts of every block get a flow: "attn" (around MHA), "mlp" (around FFN).
    init_range: planar-flow parameters start U(-init_range, init_range) (official: 0.01).
    """

    flow_length: int = field(default=0, metadata={"help": "planar flows K per shortcut flow (0: affine only)"})
    shortcuts: tuple = field(default=_SHORTCUTS, metadata={"help": "subset of attn, mlp"})
    init_range: float = field(default=0.01, metadata={"help": "planar-flow init U(-r, r)"})

    def validate(self):
        if self.flow_length < 0:
            raise MethodError(f"snf.flow_length must be >= 0, got {self.flow_length}")
        bad = [s for s in self.shortcuts if s not in _SHORTCUTS]
        if bad or not self.shortcuts:
            raise MethodError(f"snf.shortcuts must be a non-empty subset of {_SHORTCUTS}, got {self.shortcuts}")
        if not self.init_range > 0:
            raise MethodError(f"snf.init_range must be > 0, got {self.init_range}")


class ShortcutFlow(nn.Module):
    """Element-wise affine map followed by K planar flows, over the last (channel) dimension."""

    def __init__(self, dim: int, flow_length: int, init_range: float):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim))
        self.log_sigma = nn.Parameter(torch.zeros(dim))
        self.flow_length = flow_length
        if flow_length:  # no empty tensors at K = 0: every registered tensor must train
            self.planar_w = nn.Parameter(torch.empty(flow_length, dim).uniform_(-init_range, init_range))
            self.planar_s = nn.Parameter(torch.empty(flow_length, dim).uniform_(-init_range, init_range))
            self.planar_b = nn.Parameter(torch.empty(flow_length).uniform_(-init_range, init_range))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mu + self.log_sigma.exp() * x
        for k in range(self.flow_length):
            z = z + self.planar_s[k] * torch.tanh(z @ self.planar_w[k] + self.planar_b[k]).unsqueeze(-1)
        return z

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """log |det dF/dx| per token (diagnostic only; SNF's released code does not train on it)."""
        total = self.log_sigma.sum().expand(x.shape[:-1])
        z = self.mu + self.log_sigma.exp() * x
        for k in range(self.flow_length):
            pre = z @ self.planar_w[k] + self.planar_b[k]
            psi = (1 - torch.tanh(pre) ** 2).unsqueeze(-1) * self.planar_w[k]
            total = total + torch.log((1 + psi @ self.planar_s[k]).abs() + 1e-12)
            z = z + self.planar_s[k] * torch.tanh(pre).unsqueeze(-1)
        return total


class ShortcutFlowBlock(MethodLayer):
    """Wraps a timm ViT `Block` and replaces its identity shortcuts by normalizing flows."""

    def __init__(self, base_layer: nn.Module, shortcuts: tuple, flow_length: int, init_range: float):
        super().__init__()
        missing = [p for p in _BLOCK_PARTS if not hasattr(base_layer, p)]
        if missing or not isinstance(base_layer, VitBlock):  # ResPostBlock / parallel blocks differ
            raise MethodError(f"snf wraps pre-norm timm ViT blocks (`vision_transformer.Block`); "
                              f"got {type(base_layer).__name__}")
        dim = base_layer.attn.qkv.in_features
        self.base_layer = base_layer
        self.flows = nn.ModuleDict({s: ShortcutFlow(dim, flow_length, init_range) for s in shortcuts})

    def _shortcut(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.flows[name](x) if name in self.flows else x

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b = self.base_layer
        if attn_mask is None and not is_causal:
            branch = b.attn(b.norm1(x))
        else:
            branch = b.attn(b.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        x = self._shortcut("attn", x) + b.drop_path1(b.ls1(branch))
        return self._shortcut("mlp", x) + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


def _check_vit(model: nn.Module) -> None:
    if not hasattr(model, "blocks") or not hasattr(model, "num_prefix_tokens"):
        raise MethodError(f"snf targets timm ViT models (pre-norm `blocks.N`); {type(model).__name__} is not one")


@register_method
class Snf(PeftMethod):
    name = "snf"
    category = "addition"
    config_cls = SnfConfig
    mergeable = False
    paper = "Wang et al., Adapting Shortcut with Normalizing Flow (SNF), CVPR 2023"
    provenance = official_code(
        "Wang-Yaoming/SNF", "a6f85b11957412e997933c244df713540c6297eb", "snf.py", "flow.py",
        notes="K = 0 (affine flows) by default = the abstract's 0.036M; official default 16; "
              "V-PETL's 0.25 M = K = 1 + FGVC head")

    def inject(self, model):
        _check_vit(model)
        c = self.config
        return wrap_modules(model, r"^blocks\.\d+$",
                            lambda base: ShortcutFlowBlock(base, tuple(c.shortcuts), c.flow_length, c.init_range),
                            method=self.name)
