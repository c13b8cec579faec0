"""Visual Prompt Tuning (Jia et al., ECCV 2022), shallow and deep.

Prompts are learnable tokens placed right after the prefix (CLS) tokens, after the position
embedding is added (prompts carry no position). VPT-Shallow inserts p tokens at the input of the
first block (p*d parameters: 76,800 for p=100 on ViT-B/16); VPT-Deep gives every block its own p
tokens, replacing the previous block's prompt outputs (L*p*d). Prompt outputs are dropped after the
last block, so the head sees the original token layout. Init is VPT's uniform(+-sqrt(6/(3*k*k + d))).
Prompt dropout (`dropout`, VPT's PROMPT.DROPOUT) is drawn per sample, after expanding over the batch,
as VPT's `incorporate_prompt` / `forward_deep_prompt`.

Implemented with forward hooks on the timm blocks, so the timm model's code is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod
from .base import official_code
from .registry import register_method


@dataclass
class VptConfig(MethodConfig):
    """Args:
    num_tokens: prompt length p (per layer for VPT-Deep).
    dropout: dropout applied to the prompt tokens (VPT uses 0.0 or 0.1).
    """

    num_tokens: int = field(default=100, metadata={"help": "prompt length p"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on prompt tokens"})

    def validate(self):
        if self.num_tokens < 1:
            raise MethodError(f"vpt.num_tokens must be >= 1, got {self.num_tokens}")
        if not 0.0 <= self.dropout < 1.0:
            raise MethodError(f"vpt.dropout must be in [0, 1), got {self.dropout}")


class PromptTokens(MethodLayer):
    """Holds the prompts and the hooks that splice them into a ViT's token sequence."""

    def __init__(self, model: nn.Module, num_tokens: int, deep: bool, dropout: float):
        super().__init__()
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Sequential) or not hasattr(model, "num_prefix_tokens"):
            raise MethodError(
                f"VPT needs a ViT-style model with a `blocks` sequence over tokens; "
                f"{type(model).__name__} has none")
        dim = model.embed_dim
        patch = model.patch_embed.patch_size
        patch_dim = model.patch_embed.proj.in_channels * patch[0] * patch[1]
        bound = math.sqrt(6.0 / float(patch_dim + dim))
        self.num_tokens = num_tokens
        self.num_prefix = model.num_prefix_tokens
        self.prompts = nn.Parameter(torch.empty(len(blocks) if deep else 1, num_tokens, dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.add_forward_pre_hook(blocks[0], self._insert)
        if deep:
            for i in range(1, len(blocks)):
                self.add_forward_pre_hook(blocks[i], self._replace, i)
        self.add_forward_hook(blocks[-1], self._remove)

    def _tokens(self, layer: int, batch: int) -> torch.Tensor:
        # VPT expands over the batch first, then drops out: every sample gets its own mask
        return self.dropout(self.prompts[layer].unsqueeze(0).expand(batch, -1, -1))

    def _insert(self, module, args):
        x = args[0]
        p = self._tokens(0, x.shape[0]).to(x.dtype)
        return (torch.cat([x[:, :self.num_prefix], p, x[:, self.num_prefix:]], dim=1), *args[1:])

    def _replace(self, layer: int, module, args):
        x = args[0]
        p = self._tokens(layer, x.shape[0]).to(x.dtype)
        start, end = self.num_prefix, self.num_prefix + self.num_tokens
        return (torch.cat([x[:, :start], p, x[:, end:]], dim=1), *args[1:])

    def _remove(self, module, args, output):
        start, end = self.num_prefix, self.num_prefix + self.num_tokens
        return torch.cat([output[:, :start], output[:, end:]], dim=1)


class _Vpt(PeftMethod):
    category = "addition"
    config_cls = VptConfig
    mergeable = False
    paper = "Jia et al., Visual Prompt Tuning, ECCV 2022"
    provenance = official_code(
        "KMnP/vpt", "4410440ec1b489f24f66b9fad3d9b10ff3443567", "src/models/vit_prompt/vit.py",
        "src/configs/config.py",
        notes="prompt dropout per sample as incorporate_prompt / forward_deep_prompt; prompt_proj off "
              "(PROJECT -1, VPT's default); timm blocks stand for VPT's own ViT encoder")
    deep: bool

    def inject(self, model):
        if hasattr(model, "vpt_prompts"):
            raise MethodError("model already has VPT prompts")
        model.add_module("vpt_prompts", PromptTokens(model, self.config.num_tokens, self.deep, self.config.dropout))
        return ["blocks.0"] if not self.deep else [f"blocks.{i}" for i in range(len(model.blocks))]


@register_method
class VptShallow(_Vpt):
    name = "vpt-shallow"
    deep = False


@register_method
class VptDeep(_Vpt):
    name = "vpt-deep"
    deep = True
