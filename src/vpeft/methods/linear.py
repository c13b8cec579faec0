"""Linear probing: the backbone is frozen, only the classification head trains."""

from dataclasses import dataclass

from .base import MethodConfig, SelectiveMethod
from .registry import register_method


@dataclass
class LinearConfig(MethodConfig):
    """Linear probing has no hyper-parameters of its own."""


@register_method
class Linear(SelectiveMethod):
    name = "linear"
    category = "baseline"
    config_cls = LinearConfig
    needs_backbone_grad = False
    paper = "Linear probing, the standard transfer baseline (e.g. Kornblith et al., CVPR 2019)"

    def inject(self, model):
        return ["head"]
