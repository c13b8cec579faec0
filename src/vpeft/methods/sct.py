"""SCT, Salient Channel Tuning (Zhao et al., "SCT: A Simple Baseline for Parameter-Efficient
Fine-Tuning via Salient Channels", 2023, IJCV; code showlab/SCT, reused by V-PETL).

Selection (`compute_selection`, training split only, no augmentation): one forward pass of the frozen
model records, in every block, the input of `norm2` (the residual stream right after the attention
residual). For each class present, the L2 norm of each channel over that class's samples and patch
tokens (prefix/CLS tokens excluded) is computed; the mean over classes ranks the channels and the top
N are that block's salient channels (stored in ascending channel order, as V-PETL's code does).

Placement / init: in every block, after the attention residual and before the MLP, a N x N Linear
acts on the salient channels and is added back: x[:, :, S] += W x[:, :, S] + b; the MLP and the
rest of the block see the modified stream (V-PETL `tuning_mode=sct_attn`). W is trunc-normal (std
0.02), b is zero, so the model is NOT the frozen one at init. Implemented by `SctBlock`, a wrapper
around each timm ViT `Block` that runs the block's own submodules with the SCT step in between.
Not mergeable: the update modifies the residual stream itself, which has no weight to fold into.

Parameters: L * (N^2 + N); ViT-B/16 with N = 96 (= 768 / 8): 12 * (9,216 + 96) = 111,744 = V-PETL's
0.11 M. N is `top_n`, or `top_ratio` x the block width when `top_ratio` > 0 (so 1/8 works at any
width); N must not exceed the width. V-PETL's YAML `scale` values are unused in its forward (the
scaling lines are commented out), so there is no scale here either.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import (
    MethodConfig,
    MethodError,
    MethodLayer,
    PeftMethod,
    check_selection_fits,
    replace_module,
    transformer_blocks,
)
from .base import from_paper
from .registry import register_method

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


@dataclass
class SctConfig(MethodConfig):
    """Args:
    top_n: N, salient channels per block (V-PETL / SCT: 96 on ViT-B, d / 8).
    top_ratio: if > 0, N = round(top_ratio * block width) instead of top_n.
    """

    top_n: int = field(default=96, metadata={"help": "salient channels per block"})
    top_ratio: float = field(default=0.0, metadata={"help": "if > 0: N = round(top_ratio * width)"})

    def validate(self):
        if self.top_n < 1:
            raise MethodError(f"sct.top_n must be >= 1, got {self.top_n}")
        if not 0.0 <= self.top_ratio <= 1.0:
            raise MethodError(f"sct.top_ratio must be in [0, 1], got {self.top_ratio}")

    def channels(self, width: int) -> int:
        n = max(1, round(self.top_ratio * width)) if self.top_ratio > 0 else self.top_n
        if n > width:
            raise MethodError(f"sct: {n} salient channels requested but the blocks are only {width} wide; "
                              f"lower top_n or use top_ratio (e.g. 0.125 = d / 8)")
        return n


class SctBlock(MethodLayer):
    """A timm ViT block with a Linear on its salient channels between the attention and MLP residuals."""

    def __init__(self, base_layer: nn.Module, channels: torch.Tensor):
        super().__init__()
        self.base_layer = base_layer
        device = base_layer.norm2.weight.device if getattr(base_layer.norm2, "weight", None) is not None else None
        self.register_buffer("channels", channels.to(device=device, dtype=torch.int64), persistent=False)
        n = self.channels.numel()
        self.linear = nn.Linear(n, n, device=device)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        b = self.base_layer
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x), **attn_kwargs)))
        dim = x.dim() - 1
        salient = x.index_select(dim, self.channels)
        x = x.index_add(dim, self.channels, self.linear(salient).to(x.dtype))
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


@register_method
class Sct(PeftMethod):
    name = "sct"
    category = "addition"
    config_cls = SctConfig
    mergeable = False
    paper = "Zhao et al., SCT: A Simple Baseline for PEFT via Salient Channels, 2023 (IJCV)"
    provenance = from_paper(
        "Zhao et al. (IJCV): task-specific salient channels by activation norm on the training set",
        "V-PETL count 0.11 M = L (N^2 + N), N = 96",
        notes="official showlab/SCT not compared; V-PETL's reuse of it was read")
    needs_selection = True

    def _blocks(self, model: nn.Module) -> list[str]:
        names = transformer_blocks(model)
        if not names:
            raise MethodError(f"sct: {type(model).__name__} has no transformer blocks")
        for name in names:
            block = model.get_submodule(name)
            if isinstance(block, SctBlock) or not all(hasattr(block, p) for p in _BLOCK_PARTS):
                raise MethodError(f"sct needs timm ViT-style blocks ({', '.join(_BLOCK_PARTS)}); "
                                  f"{name} is a {type(block).__name__}")
        return names

    @staticmethod
    def _width(block: nn.Module) -> int:
        shape = getattr(block.norm2, "normalized_shape", None)
        if not shape:
            raise MethodError(f"sct: cannot read the width of {type(block.norm2).__name__}")
        return int(shape[-1])

    def compute_selection(self, model, batches, num_classes):
        """Per block, the N channels with the largest class-mean L2 norm at the input of norm2,
        computed on a private copy of `model` in eval mode."""
        work = copy.deepcopy(model).eval()
        names = self._blocks(work)
        prefix = int(getattr(work, "num_prefix_tokens", 1))
        sums = {n: torch.zeros(num_classes, self._width(work.get_submodule(n)), dtype=torch.float64) for n in names}
        counts = torch.zeros(num_classes, dtype=torch.int64)
        current: dict[str, torch.Tensor] = {}

        def recorder(name):
            def hook(module, args):
                tokens = args[0][:, prefix:].float()
                squares = tokens.pow(2).sum(dim=1).double().cpu()   # (batch, width) over patch tokens
                sums[name].index_add_(0, current["labels"], squares)
            return hook

        # closures on a private copy that is dropped after measuring (no method layer, never deep-copied)
        for name in names:
            work.get_submodule(name).norm2.register_forward_pre_hook(recorder(name))
        device = next(work.parameters()).device
        seen = 0
        with torch.no_grad():
            for images, labels in batches:
                labels = labels.to(torch.int64).cpu()
                if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
                    raise MethodError(f"sct: labels outside [0, {num_classes})")
                current["labels"] = labels
                counts += torch.bincount(labels, minlength=num_classes)
                work.forward_features(images.to(device=device, dtype=torch.float32))
                seen += 1
        if not seen or not counts.any():
            raise MethodError("sct: the selection stage got no training samples")
        present = counts > 0
        selection = {}
        for name in names:
            score = sums[name][present].sqrt().mean(dim=0)
            n = self.config.channels(score.numel())
            selection[name] = torch.topk(score, n).indices.sort().values.to(torch.int64)
        return selection

    def inject(self, model):
        selection = self.selection or {}
        names = self._blocks(model)
        check_selection_fits("sct", selection, names)
        for name in names:
            block = model.get_submodule(name)
            width = self._width(block)
            channels = selection[name].to(torch.int64).reshape(-1)
            n = self.config.channels(width)
            if (channels.numel() != n or channels.unique().numel() != n
                    or channels.min() < 0 or channels.max() >= width):
                raise MethodError(f"sct: selection for {name} is not {n} distinct channels of {width}; "
                                  f"was it computed with another top_n / top_ratio?")
            replace_module(model, name, SctBlock(block, channels))
        return names
