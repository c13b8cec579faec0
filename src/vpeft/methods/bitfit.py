"""BitFit (Zaken et al., 2022): train only the bias terms of the frozen backbone.

As in V-PETL, every parameter whose name contains "bias" is trained: linear biases, LayerNorm betas,
the patch-embedding bias, and on Swin the relative-position-bias tables (the published Swin counts
include them). On ViT-B/16 that is 12 x 8,448 + 768 + 768 = 102,912 parameters.
"""

from dataclasses import dataclass

from .base import MethodConfig, SelectiveMethod
from .base import from_paper
from .registry import register_method


@dataclass
class BitFitConfig(MethodConfig):
    """BitFit has no hyper-parameters: the selection rule is fixed."""


@register_method
class BitFit(SelectiveMethod):
    name = "bitfit"
    config_cls = BitFitConfig
    paper = "Zaken et al., BitFit, ACL 2022"
    provenance = from_paper(
        "Zaken et al.: the method, train only the bias terms",
        "V-PETL Bench VTAB/FGVC tables (0.10 M): every tensor named 'bias'",
        notes="official BitFit code (NLP) not compared")

    def candidate_parameters(self, model):
        return [n for n, _ in model.named_parameters() if "bias" in n.rpartition(".")[2]]
