"""LN-Tune: train the affine parameters (gamma, beta) of every LayerNorm of the frozen backbone.

ViT-B/16: 12 blocks x 2 norms x 2 x 768 + the final norm = 38,400. On timm's Swin-B it also covers the
patch-embedding and patch-merging norms (57,600); the dense papers' 59,392 for Swin-B counts the four
per-stage output norms of the mmdet backbone instead of timm's single final norm.
"""

from dataclasses import dataclass

from torch import nn

from .base import MethodConfig, SelectiveMethod
from .base import from_paper
from .registry import register_method


@dataclass
class LnTuneConfig(MethodConfig):
    """LN-Tune has no hyper-parameters."""


@register_method
class LnTune(SelectiveMethod):
    name = "ln-tune"
    config_cls = LnTuneConfig
    paper = "LayerNorm tuning, as benchmarked by V-PETL Bench (Xin et al., 2024)"
    provenance = from_paper(
        "V-PETL Bench (Xin et al., 2024) LN-Tune baseline: train every LayerNorm",
        notes="no paper of its own; V-PETL code not compared")

    def candidate_parameters(self, model):
        return [f"{module_name}.{param_name}"
                for module_name, module in model.named_modules() if isinstance(module, nn.LayerNorm)
                for param_name, _ in module.named_parameters(recurse=False)]
