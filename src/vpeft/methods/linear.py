"""Linear probing: the backbone is frozen, only the classification head trains."""

from dataclasses import dataclass

from .base import MethodConfig, PeftMethod
from .registry import register_method


@dataclass
class LinearConfig(MethodConfig):
    """Linear probing has no hyper-parameters of its own."""


@register_method
class Linear(PeftMethod):
    name = "linear"
    category = "baseline"
    config_cls = LinearConfig
    mergeable = True  # trivially: the backbone is untouched
    needs_backbone_grad = False
    paper = "linear probing"

    def inject(self, model):
        return ["head"]

    def merge(self, model):
        """Nothing to fold in."""

    def unmerge(self, model):
        """Nothing to unfold."""

    def merge_and_unload(self, model):
        return model
