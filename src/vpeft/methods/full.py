"""Full fine-tuning: every backbone parameter is trained (the reference upper bound on cost)."""

from dataclasses import dataclass

from .base import MethodConfig, PeftMethod
from .base import official_code
from .registry import register_method


@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning has no hyper-parameters of its own."""


@register_method
class Full(PeftMethod):
    name = "full"
    category = "baseline"
    config_cls = FullConfig
    mergeable = False  # nothing to merge: the weights themselves change
    paper = "Full fine-tuning, the standard transfer reference (e.g. Kornblith et al., CVPR 2019)"
    provenance = official_code(
        "KMnP/vpt", "4410440ec1b489f24f66b9fad3d9b10ff3443567", "src/models/vit_models.py",
        notes="transfer_type end2end: every tensor trains")

    def inject(self, model):
        return ["*"]

    def select_backbone_parameters(self, model):
        return [name for name, _ in model.named_parameters()]
