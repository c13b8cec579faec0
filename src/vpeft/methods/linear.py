"""Linear probing: the backbone is frozen, only the classification head trains."""

from dataclasses import dataclass

from .base import MethodConfig, SelectiveMethod
from .base import official_code
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
    provenance = official_code(
        "KMnP/vpt", "4410440ec1b489f24f66b9fad3d9b10ff3443567", "src/models/vit_models.py",
        notes="transfer_type linear: only the head trains")

    def inject(self, model):
        return ["head"]
