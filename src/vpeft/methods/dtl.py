"""DTL and DTL+ (Fu et al., "DTL: Disentangled Transfer Learning for Visual Recognition", AAAI 2024).

A Compact Side Network (CSN) beside the frozen ViT. Placement, from the paper and its official code
(heekhero/DTL, `models/vision_transformer.py`):

* before every block i (0..L-1) a rank-r map B_i A_i (no bias) of the block's *input* token stream
  x_i is added to a running side state:  R <- R + x_i A_i^T B_i^T;
* after every block j >= `start_block` (6..11 on ViT-B) the backbone stream receives the gated side
  state:  x <- x + swish_beta(R),  swish_beta(z) = z * sigmoid(beta * z), beta = 100.
  DTL+ first runs a k x k depthwise convolution (no bias, stride 1, 'same' padding, k = `fusion_size`,
  3 by default, 3/4/5 per task in the official VTAB scripts) over the patch-token grid of
  swish_beta(R); prefix tokens (CLS) get swish_beta(R) unchanged.

As in the official code the inputs of the blocks after `start_block` already contain earlier side
outputs, so the side state there is not detached: the backward pass runs through blocks
start_block+1..L-1, never through blocks 0..start_block-1, whose activations therefore carry no
autograd graph (`frozen_prefix_blocks` = start_block: the memory saving the paper reports).

Init: A Kaiming-uniform(a=sqrt(5)), B zero (the official init), so R = 0 and the model is exactly the
frozen one at init; the DTL+ convolution has PyTorch's default Conv2d init.

Classification: DTL classifies the *global average of the patch tokens* (not the CLS token), and
normalises the pooled vector: head(norm(mean(patch tokens))) (official `VisionTransformer.forward`:
`x[:, num_tokens:].mean(dim=1)`, then `self.norm`, then `self.head`). With `pool: avg` (default) we
set the timm model's `global_pool = 'avg'` and move its final LayerNorm from `norm` (applied to every
token) to `fc_norm` (applied after pooling), the same frozen tensors, so the head reads the norm of
the mean, not the mean of the normalised tokens (a LayerNorm does not commute with the mean).
`pool: model` keeps the model's own pooling (CLS token for ViT-B/16).

Parameters: L * 2 * d * r = 36,864 on ViT-B/16 at r = 2 (published 0.04 M: reproduced); DTL+ adds
d * k^2: 6,912 for k = 3 (43,776 in all), 12,288 for k = 4, 19,200 for k = 5.
Not mergeable (the swish gate is non-linear).
`start_block` also accepts a negative index counted from the end (-6 = the last six blocks), so one
setting fits shallower models such as the depth-4 demo ViT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod
from .base import official_code
from .registry import register_method

_POOLS = ("avg", "model")


@dataclass
class DtlConfig(MethodConfig):
    """Args:
    rank: rank r of each block's map B_i A_i (DTL: 2).
    beta: slope of the swish gate applied to the side state (DTL: 100).
    start_block: first block after which the side state is added back (ViT-B: 6); negative values
        count from the end (-6: the last six blocks).
    pool: 'avg' classifies the mean of the patch tokens as DTL does (sets the timm model's
        global_pool); 'model' keeps the model's own pooling.
    """

    rank: int = field(default=2, metadata={"help": "rank r of the per-block map B_i A_i"})
    beta: float = field(default=100.0, metadata={"help": "swish slope: z * sigmoid(beta * z)"})
    start_block: int = field(default=6, metadata={
        "help": "first block whose output receives the side state; negative counts from the end"})
    pool: str = field(default="avg", metadata={"help": f"one of {_POOLS}"})

    def validate(self):
        if self.rank < 1:
            raise MethodError(f"{self._method}.rank must be >= 1, got {self.rank}")
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise MethodError(f"{self._method}.beta must be a positive number, got {self.beta}")
        if self.pool not in _POOLS:
            raise MethodError(f"{self._method}.pool must be one of {_POOLS}, got {self.pool!r}")

    _method = "dtl"


@dataclass
class DtlPlusConfig(DtlConfig):
    """Args (in addition to DTL's):
    fusion_size: kernel k of the depthwise k x k convolution over the patch-token grid (DTL+: 3 by
        default; the official VTAB scripts pick 3, 4 or 5 per task; even k pads one more on the
        bottom/right, as PyTorch's padding='same' does).
    """

    fusion_size: int = field(default=3, metadata={"help": "depthwise k x k conv kernel over the patch grid"})

    def validate(self):
        super().validate()
        if self.fusion_size < 1:
            raise MethodError(f"dtl-plus.fusion_size must be >= 1, got {self.fusion_size}")

    _method = "dtl-plus"


def resolve_start_block(start_block: int, depth: int, method: str) -> int:
    """`start_block` as a non-negative index into `depth` blocks, or a `MethodError` naming the range."""
    start = start_block if start_block >= 0 else depth + start_block
    if not 0 <= start < depth:
        half = max(1, depth // 2)
        raise MethodError(
            f"{method}.start_block={start_block} is out of range for a model with {depth} blocks: "
            f"use 0..{depth - 1}, or a negative index counting from the end "
            f"(e.g. -{half} for the last {half})")
    return start


def _vit_blocks(model: nn.Module, method: str) -> nn.Sequential:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "num_prefix_tokens"):
        raise MethodError(f"{method} needs a ViT-style model with a `blocks` sequence over tokens; "
                          f"{type(model).__name__} has none")
    return blocks


class CompactSideNetwork(MethodLayer):
    """DTL's side network: per-block low-rank maps, the running side state and the hooks that read
    block inputs and add the gated state to block outputs."""

    def __init__(self, model: nn.Module, rank: int, beta: float, start: int, fusion_size: int = 0):
        super().__init__()
        blocks = _vit_blocks(model, "dtl")
        dim = model.embed_dim
        self.beta = float(beta)
        self.start = start
        self.num_prefix = int(model.num_prefix_tokens)
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        self.grid = tuple(int(g) for g in grid) if grid is not None else None
        self.lora_A = nn.ParameterList([nn.Parameter(torch.empty(rank, dim)) for _ in blocks])
        self.lora_B = nn.ParameterList([nn.Parameter(torch.zeros(dim, rank)) for _ in blocks])
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        # 'same' padding done by hand (PyTorch's warns for even k): (k-1)//2 before, k//2 after
        self.fusion = nn.Conv2d(dim, dim, fusion_size, groups=dim, bias=False) if fusion_size > 0 else None
        self.pad = ((fusion_size - 1) // 2, fusion_size // 2) * 2 if fusion_size > 0 else None
        self._state: torch.Tensor | None = None
        for i, block in enumerate(blocks):
            self.add_forward_pre_hook(block, self._read, i)
            if i >= start:
                self.add_forward_hook(block, self._write, i == len(blocks) - 1)

    def _read(self, index: int, module, args):
        x = args[0]
        update = (x @ self.lora_A[index].t()) @ self.lora_B[index].t()
        self._state = update if index == 0 or self._state is None else self._state + update

    def _write(self, last: bool, module, args, output):
        state = self._state
        if last:
            self._state = None  # release the graph once the forward pass is through
        if state is None:
            raise MethodError("dtl: the side state is missing; was blocks.0 skipped?")
        return output + self.side_output(state)

    def side_output(self, state: torch.Tensor) -> torch.Tensor:
        act = state * torch.sigmoid(self.beta * state)
        if self.fusion is None:
            return act
        prefix, patches = act[:, :self.num_prefix], act[:, self.num_prefix:]
        b, n, c = patches.shape
        h, w = self._grid(n)
        grid = F.pad(patches.transpose(1, 2).reshape(b, c, h, w), self.pad)
        fused = self.fusion(grid).flatten(2).transpose(1, 2)
        return torch.cat([prefix, fused], dim=1)

    def _grid(self, n: int) -> tuple[int, int]:
        if self.grid is not None and self.grid[0] * self.grid[1] == n:
            return self.grid
        side = math.isqrt(n)
        if side * side == n:
            return side, side
        raise MethodError(f"dtl-plus: cannot lay {n} patch tokens out on a grid")


class _Dtl(PeftMethod):
    category = "side"
    mergeable = False
    paper = "Fu et al., DTL: Disentangled Transfer Learning for Visual Recognition, AAAI 2024"
    provenance = official_code(
        "heekhero/DTL", "bf6c51e679d7d2244f4c8337cb68a85b54e7c37a",
        "models/vision_transformer.py")

    def _start(self, model: nn.Module) -> int:
        return resolve_start_block(self.config.start_block, len(_vit_blocks(model, self.name)), self.name)

    def inject(self, model):
        if hasattr(model, "dtl_side"):
            raise MethodError("model already has a DTL side network")
        blocks = _vit_blocks(model, self.name)
        start = self._start(model)
        c = self.config
        if c.pool == "avg":
            if getattr(model, "attn_pool", None) is not None or not hasattr(model, "global_pool"):
                raise MethodError(f"{self.name}: pool='avg' needs a timm ViT without attention pooling")
            model.global_pool = "avg"  # DTL classifies the mean of the patch tokens; head shape unchanged
            if isinstance(model.fc_norm, nn.Identity):  # official order: norm(mean(tokens))
                model.fc_norm, model.norm = model.norm, nn.Identity()
        model.add_module("dtl_side", CompactSideNetwork(model, c.rank, c.beta, start,
                                                        getattr(c, "fusion_size", 0)))
        return [f"blocks.{i}" for i in range(len(blocks))]

    def frozen_prefix_blocks(self, model):
        return self._start(model)


@register_method
class Dtl(_Dtl):
    name = "dtl"
    config_cls = DtlConfig


@register_method
class DtlPlus(_Dtl):
    name = "dtl-plus"
    config_cls = DtlPlusConfig
