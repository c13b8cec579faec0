"""FacT (Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer", AAAI 2023):
the weight increments of the whole ViT are one tensor, stored in factorised form.

Tensorisation. Every block holds 12 d x d matrices: W_q, W_k, W_v, W_o (attention output `attn.proj`),
and the MLP's fc1 (h x d) and fc2 (d x h) cut into h/d = 4 square slices each (4 + 4 + 4 = 12). Stacking
all of them gives a 12L x d x d tensor (144 x 768 x 768 on ViT-B/16) whose increment is factorised as

    dW_j = s * V K_j^T U        (U: r x d, V: d x r, shared by the whole network; K_j: r x r,
                                 applied input-major, z = (U x)^T K_j, as in the official code)

* FacT-TT (tensor train): every slice j has its own free r x r core K_j ("per-block cores": r x r for
  q, k, v, o; r x 4r for fc1 and 4r x r for fc2, i.e. the four fc1 / fc2 slices' cores side by side).
  Parameters: 2 d r + 12 L r^2 = 1536 r + 144 r^2 on ViT-B/16.
* FacT-TK (Tucker): the cores are tied, K_j = C x_3 p_j = sum_k C[:, :, k] P[k, j], with one shared
  r x r x r core C and a factor P of size r x 12L (r x 144). Parameters: 2 d r + 12 L r + r^3 =
  1680 r + r^3 on ViT-B/16.

Placement: the increments act on `attn.qkv` (timm's fused q/k/v Linear: the q, k, v increments go to
its three output thirds), `attn.proj`, `mlp.fc1` (slice i feeds output rows i*d..(i+1)*d) and `mlp.fc2`
(slice i reads input columns i*d..(i+1)*d) of every block. Inside each branch: x -> U -> core ->
dropout(0.1) -> V -> * s, as in the official code. L, d and h come from the model (checked to be one
width with h a multiple of d, so e.g. a Swin with growing widths is refused).

Init (official code): U as a default nn.Linear(d, r) weight (Kaiming-uniform, a = sqrt(5)), V zero, so
the model is unchanged at init; TT cores as default nn.Linear weights (U(+-1/sqrt(fan_in)), fan_in = r,
and 4r for fc2's core); TK's C and P Xavier-uniform. U and V live once in a `FactFactors` module
registered as `model.fact` (with C and P for TK); the per-Linear wrappers only reference it, so every
shared tensor is one parameter, counted and saved once.

Mergeable: each wrapper folds its dW into the wrapped Linear's weight; `merge_and_unload` also removes
`model.fact`, leaving exactly the plain timm model.

Published counts: the V-PETL / FacT VTAB rows (FacT-TK 0.069 M, FacT-TT 0.040 M) are means over the
per-task ranks of the official configs (config/methods/fact-*.yaml): 68,985 and 39,734, which our
formulas reproduce; no single rank gives them.

FacT-TK's MLP cores follow the official code (JieShibo/PETL-ViT `FacT/fact_tk.py`,
`fact_forward_mlp`), not the paper's per-slice Tucker reading: for the m = h/d slices of fc1 (and
again of fc2) it forms T = C x_3 P[:, m slices] (r x r x m), reshapes it to r x (m r) and reads the
columns as m consecutive r-wide blocks G_i = T.reshape(r, m, r)[:, i, :], whose entry (a, k) is
T[a, (i r + k) // m, (i r + k) % m], so the m slices' entries interleave. fc1 output rows i*d.. get
s V ((U x) G_i); fc2 gets s V z with z[a] = sum_{i,k} (U x_i)[k] G_i[a, k], x_i its i-th input
slice. q, k, v and o use the plain slices C x_3 p_j, as there.
Same count and init distribution as the paper's reading; different tying of the MLP increments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .base import (
    MethodConfig,
    MethodError,
    MethodLayer,
    ModuleRef,
    PeftMethod,
    replace_module,
    transformer_blocks,
)
from .base import official_code
from .registry import register_method

#: Name of the module holding the shared factors on the model.
FACTORS_ATTR = "fact"
#: Per-block Linears FacT acts on, in the order of their slices in the tensor.
_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass
class FactConfig(MethodConfig):
    """Args:
    rank: rank r of the shared factors U (d -> r) and V (r -> d) and of the cores.
    scale: s, multiplies every increment (per task in the official configs: 0.01 ... 100).
    dropout: dropout on the r-dimensional core output, inside each branch.
    """

    rank: int = field(default=16, metadata={"help": "rank r of U, V and the cores"})
    scale: float = field(default=1.0, metadata={"help": "scale s of every increment"})
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the branch (before V)"})

    def validate(self):
        if self.rank < 1:
            raise MethodError(f"fact.rank must be >= 1, got {self.rank}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise MethodError(f"fact.scale must be a positive number, got {self.scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise MethodError(f"fact.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class FactTTConfig(FactConfig):
    """FacT-TT defaults: rank 16 and scale 1, the most frequent values of the official VTAB configs."""


@dataclass
class FactTKConfig(FactConfig):
    """FacT-TK defaults: rank 32 and scale 10, the most frequent values of the official VTAB configs."""

    rank: int = field(default=32, metadata={"help": "rank r of U, V and the r x r x r core C"})
    scale: float = field(default=10.0, metadata={"help": "scale s of every increment"})


def _uniform_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """The default nn.Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(tensor, -bound, bound)


class FactFactors(MethodLayer):
    """The network-wide factors: U (r x d), V (d x r) and, for Tucker, the core C and the factor P.

    Registered once on the model (`model.fact`); it wraps nothing, so merging it is a no-op (the
    wrappers fold the increments it helps build)."""

    def __init__(self, dim: int, rank: int, num_slices: int, tucker: bool):
        super().__init__()
        self.dim, self.rank, self.num_slices, self.tucker = dim, rank, num_slices, tucker
        self.U = nn.Parameter(_uniform_(torch.empty(rank, dim), dim))
        self.V = nn.Parameter(torch.zeros(dim, rank))
        if tucker:
            self.C = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, rank, rank)))
            self.P = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, num_slices)))

    def tucker_cores(self, start: int, count: int) -> torch.Tensor:
        """Cores K_j = C x_3 P[:, j] for slices start .. start+count-1, shape (count, r_in, r_out)."""
        return torch.einsum("abk,kn->nab", self.C, self.P[:, start:start + count])

    def merge(self) -> None:
        """Nothing to fold: the wrappers fold the increments."""

    def unmerge(self) -> None:
        """Nothing to unfold."""

    def extra_repr(self) -> str:
        kind = "tucker" if self.tucker else "tensor-train"
        return f"dim={self.dim}, rank={self.rank}, slices={self.num_slices}, {kind}"


class FactLinear(MethodLayer):
    """Wraps one frozen Linear and adds s * V K_j U for each of its `num_slices` d x d slices.

    layout "out": the slices stack along the output (fused qkv: q, k, v; proj: one; fc1: h / d);
    layout "in": they stack along the input (fc2: h / d). Cores are (num_slices, r_in, r_out): free
    parameters for FacT-TT, slices `offset ...` of the shared Tucker tensor for FacT-TK."""

    def __init__(self, base_layer: nn.Linear, factors: FactFactors, layout: str, num_slices: int,
                 offset: int, scale: float, dropout: float, mlp: bool = False):
        super().__init__()
        self.mlp = mlp  # fc1 / fc2: FacT-TK builds their cores with the official reshape
        if layout not in ("out", "in"):
            raise MethodError(f"unknown FacT slice layout {layout!r}")
        self.base_layer = base_layer
        # A reference, not a submodule: the factors are registered once, on the model.
        self._factors = ModuleRef(factors)
        self.layout, self.num_slices, self.offset = layout, num_slices, offset
        self.scale = scale
        self.merged = False
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if not factors.tucker:
            r = factors.rank
            fan_in = r * num_slices if layout == "in" else r
            self.cores = nn.Parameter(_uniform_(torch.empty(num_slices, r, r), fan_in))

    @property
    def factors(self) -> FactFactors:
        return self._factors.module

    def slice_cores(self) -> torch.Tensor:
        """(num_slices, r_in, r_out) cores: z = sum over r_in of (U x)[r_in] core[:, r_out]."""
        f = self.factors
        if not f.tucker:
            return self.cores
        cores = f.tucker_cores(self.offset, self.num_slices)
        if not self.mlp:
            return cores
        # official fc1 / fc2 layout: T (r x r x m) reshaped to r x (m r), read as m r-wide slices
        r, m = f.rank, self.num_slices
        grid = cores.permute(1, 2, 0).reshape(r, m, r)      # grid[a, i, k] = T.reshape(r, m r)[a, i r + k]
        return grid.permute(1, 0, 2) if self.layout == "out" else grid.permute(1, 2, 0)

    def delta_weight(self) -> torch.Tensor:
        """The increment of the wrapped weight (out x in): the slices s * V K_j^T U, side by side."""
        f, cores = self.factors, self.slice_cores()
        # dW_j[o, i] = s * sum_{a,b} V[o, b] K_j[a, b] U[a, i]
        if self.layout == "out":
            delta = torch.einsum("ob,nab,ai->noi", f.V, cores, f.U).reshape(-1, f.dim)
        else:
            delta = torch.einsum("ob,nab,ai->oni", f.V, cores, f.U).reshape(f.dim, -1)
        return delta * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        f, cores = self.factors, self.slice_cores()
        if self.layout == "out":
            u = x @ f.U.t()                                            # (..., r)
            z = self.dropout(torch.einsum("...a,nab->...nb", u, cores))  # (..., n, r)
            delta = (z @ f.V.t()).flatten(-2)                          # (..., n * d)
        else:
            u = x.unflatten(-1, (self.num_slices, f.dim)) @ f.U.t()    # (..., n, r)
            z = self.dropout(torch.einsum("...na,nab->...b", u, cores))  # (..., r)
            delta = z @ f.V.t()                                        # (..., d)
        return out + delta * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise MethodError("FacT increment is not finite; refusing to merge")
        self.base_layer.weight += delta.to(self.base_layer.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"layout={self.layout}, slices={self.num_slices}, offset={self.offset}, scale={self.scale}"
                f"{', mlp' if self.mlp else ''}")


def _fact_targets(model: nn.Module, method: str) -> tuple[int, list[tuple[str, str, int]]]:
    """Check the model can be tensorised; return its width d and (module name, layout, slices) in
    tensor order: per block q, k, v | o | fc1 slices | fc2 slices."""
    blocks = transformer_blocks(model)
    if not blocks:
        raise MethodError(f"{method}: {type(model).__name__} has no transformer blocks (blocks.N)")
    widths, targets = set(), []
    for block in blocks:
        mods = {}
        for rel in _TARGETS:
            name = f"{block}.{rel}"
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                mod = None
            if not isinstance(mod, nn.Linear):
                raise MethodError(f"{method}: expected a ViT block with Linear {', '.join(_TARGETS)}; "
                                  f"{name} is {type(mod).__name__}")
            mods[rel] = mod
        d = mods["attn.qkv"].in_features
        widths.add(d)
        qkv, proj, fc1, fc2 = (mods[t] for t in _TARGETS)
        h = fc1.out_features
        if (qkv.out_features != 3 * d or (proj.in_features, proj.out_features) != (d, d)
                or fc1.in_features != d or (fc2.in_features, fc2.out_features) != (h, d)):
            raise MethodError(f"{method}: block {block} does not have the ViT shapes qkv d->3d, proj d->d, "
                              f"fc1 d->h, fc2 h->d (d={d}, h={h})")
        if h % d:
            raise MethodError(f"{method}: MLP width {h} of {block} is not a multiple of the width {d}; "
                              "FacT cuts fc1 / fc2 into d x d slices")
        m = h // d
        targets += [(f"{block}.attn.qkv", "out", 3), (f"{block}.attn.proj", "out", 1),
                    (f"{block}.mlp.fc1", "out", m), (f"{block}.mlp.fc2", "in", m)]
    if len(widths) != 1:
        raise MethodError(f"{method}: FacT shares U and V across all blocks and needs one width; "
                          f"{type(model).__name__} has widths {sorted(widths)}")
    return widths.pop(), targets


class _Fact(PeftMethod):
    """Shared machinery of FacT-TT and FacT-TK (`tucker` picks the core format)."""

    category = "reparameterization"
    mergeable = True
    paper = "Jie & Deng, FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer, AAAI 2023"
    tucker: ClassVar[bool]

    def inject(self, model):
        c = self.config
        if hasattr(model, FACTORS_ATTR):
            raise MethodError(f"{self.name}: the model already has an attribute '{FACTORS_ATTR}' "
                              "(FacT applied twice?)")
        dim, targets = _fact_targets(model, self.name)
        if c.rank > dim:
            raise MethodError(f"{self.name}.rank = {c.rank} exceeds the model width {dim}")
        factors = FactFactors(dim, c.rank, sum(n for _, _, n in targets), self.tucker)
        setattr(model, FACTORS_ATTR, factors.train(model.training))
        offset = 0
        for name, layout, n in targets:
            base = model.get_submodule(name)
            layer = FactLinear(base, factors, layout, n, offset, c.scale, c.dropout, mlp=".mlp." in f".{name}")
            # New modules follow the model's mode: injecting into an eval() model must not switch the
            # branch dropout on.
            replace_module(model, name, layer.train(model.training))
            offset += n
        return [name for name, _, _ in targets]

    def merge_and_unload(self, model):
        """Merge, put every wrapped Linear back and drop the shared factors: the plain timm model."""
        self.merge(model)
        slots = [(parent, child_name, child) for parent in model.modules()
                 for child_name, child in parent.named_children() if isinstance(child, FactLinear)]
        for parent, child_name, layer in slots:
            setattr(parent, child_name, layer.base_layer)
        if isinstance(getattr(model, FACTORS_ATTR, None), FactFactors):
            delattr(model, FACTORS_ATTR)
        return model


@register_method
class FactTT(_Fact):
    """FacT-TT: free per-slice r x r cores (tensor-train format). 1536 r + 144 r^2 on ViT-B/16."""

    name = "fact-tt"
    config_cls = FactTTConfig
    provenance = official_code(
        "JieShibo/PETL-ViT", "026e4f12cfbe1e46bfb4d3ed5ba09f2d9f83e91e",
        "FacT/fact_tt.py")
    tucker = False


@register_method
class FactTK(_Fact):
    """FacT-TK: cores tied through a shared r x r x r core and an r x 12L factor (Tucker format).
    1680 r + r^3 on ViT-B/16."""

    name = "fact-tk"
    config_cls = FactTKConfig
    provenance = official_code(
        "JieShibo/PETL-ViT", "026e4f12cfbe1e46bfb4d3ed5ba09f2d9f83e91e",
        "FacT/fact_tk.py")
    tucker = True
