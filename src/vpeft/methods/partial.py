"""Partial-k (Jia et al., VPT 2022; Yosinski et al. 2014): fine-tune the last k transformer blocks.

Blocks are taken in forward order, across stages for hierarchical models (timm Swin's
`layers.S.blocks.N`), so Partial-1 is the last block: 7,087,872 parameters on ViT-B/16 and
12d^2 + 13d + 169 heads = 12,601,632 on Swin-B (the dense-prediction baseline).
"""

from dataclasses import dataclass, field

from .base import MethodConfig, MethodError, SelectiveMethod, transformer_blocks
from .registry import register_method


@dataclass
class PartialConfig(MethodConfig):
    """Args:
    k: number of final blocks to fine-tune.
    """

    k: int = field(default=1, metadata={"help": "number of final blocks trained"})

    def validate(self):
        if self.k < 1:
            raise MethodError(f"partial.k must be >= 1, got {self.k}")


@register_method
class Partial(SelectiveMethod):
    name = "partial"
    config_cls = PartialConfig
    paper = "Partial-k fine-tuning (VPT, ECCV 2022)"

    def _last_blocks(self, model):
        blocks = transformer_blocks(model)
        if len(blocks) < self.config.k:
            raise MethodError(f"partial: k={self.config.k} but {type(model).__name__} has {len(blocks)} blocks")
        return blocks[-self.config.k:]

    def inject(self, model):
        return self._last_blocks(model)

    def candidate_parameters(self, model):
        return [f"{block}.{name}" for block in self._last_blocks(model)
                for name, _ in model.get_submodule(block).named_parameters()]

    def frozen_prefix_blocks(self, model):
        return len(transformer_blocks(model)) - self.config.k
