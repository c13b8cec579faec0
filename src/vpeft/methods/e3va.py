"""E3VA (Yin et al., "Parameter-efficient is not sufficient: Exploring Parameter, Memory, and Time
Efficient Adapter Tuning for Dense Predictions", ACM MM 2024, arXiv 2306.09729): adapters on a
gradient-backpropagation highway beside the frozen backbone.

Our reading of the paper (its code is not public): every block sends the output of its attention
branch and of its MLP branch to two *parallel* adapters with LoRand's dual low-rank structure
(`lorand.LowRankSynthesisAdapter`); their outputs are summed into a highway stream h that runs beside
the frozen blocks and never enters them, so the backward pass never runs through the backbone. At a
stage boundary the highway is downsampled by the backbone's own (frozen) patch-merging layer,
applied to the adapted stream: h <- Merge(x + h) - Merge(x). At every output the highway is added to
the backbone features in front of a trainable norm ("integrated into the FPN with trainable norms"):
the per-stage output norms of the dense backbone (`vpeft.dense`), the final `norm` of a timm
classifier. ViT variant: one stage, the highway is added in front of the final norm.

Hooks: block pre-hooks (stage bookkeeping), forward hooks on `drop_path1` / `drop_path2` (their input
is the branch output), on the stage's `downsample`, and pre-hooks on the output norms. The adapters
read the branch outputs detached; no hook changes a block's output, so the blocks build no autograd
graph (side-tuning).

Init: as LoRand (up factor zero), so h = 0 and the model equals the frozen one at init.
Parameters: 2 * [alpha (2 beta (d + m) + beta^2) + m + d] per block + the output norms; at alpha = 2,
beta = 8, m = 64: 905,472 on the dense Swin-B (4 output norms), 1,304,448 on Swin-L, 663,552 on
ViT-B/16. The published 1.20 M (Swin-B) / 1.79 M (Swin-L) have the Swin-L/Swin-B ratio of sum(d)
(1.49), so they are per-block adapters too, about 98 parameters per channel and block (ours: 66 + 2
for the norms): the paper's adapter sizes could not be re-read to close the gap. Not mergeable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, match_modules
from .lorand import LowRankSynthesisAdapter
from .mona import block_width
from .base import from_paper
from .registry import register_method


@dataclass
class E3vaConfig(MethodConfig):
    """Args:
    bottleneck: width m of each adapter.
    branches: low-rank branches alpha of each projection (LoRand structure).
    kernel_rank: kernel size beta of each branch.
    train_output_norms: train the norms that take the highway (the paper's "trainable norm").
    target_blocks: regex over module names selecting the transformer blocks.
    output_modules: regex over module names of the norms in front of which the highway is added.
    """

    bottleneck: int = field(default=64, metadata={"help": "adapter width m"})
    branches: int = field(default=2, metadata={"help": "low-rank branches alpha"})
    kernel_rank: int = field(default=8, metadata={"help": "kernel size beta"})
    train_output_norms: bool = field(default=True, metadata={"help": "train the output norms"})
    target_blocks: str = field(default=r"(^|\.)blocks\.\d+$", metadata={"help": "module-name regex of blocks"})
    output_modules: str = field(default=r"^norm\d*$", metadata={"help": "module-name regex of output norms"})

    def validate(self):
        for key in ("bottleneck", "branches", "kernel_rank"):
            if getattr(self, key) < 1:
                raise MethodError(f"e3va.{key} must be >= 1, got {getattr(self, key)}")


def _stage_of(block_name: str) -> str:
    """`layers.2.blocks.5` -> `layers.2` (Swin stage); `blocks.5` -> '' (a ViT is one stage)."""
    return re.sub(r"(^|\.)blocks\.\d+$", "", block_name)


class Highway(MethodLayer):
    """The adapters and the highway state; the hooks that feed and read it."""

    def __init__(self, model: nn.Module, blocks: list[str], outputs: list[str], config: E3vaConfig):
        super().__init__()
        c = config
        self.adapters = nn.ModuleList()
        stages: list[str] = []
        for i, name in enumerate(blocks):
            block = model.get_submodule(name)
            dim = block_width(block, name, "e3va")
            for _ in range(2):  # one adapter for the attention branch, one for the MLP branch
                self.adapters.append(LowRankSynthesisAdapter(dim, c.bottleneck, c.branches, c.kernel_rank))
            stage = _stage_of(name)
            first = stage not in stages
            if first:
                stages.append(stage)
            last = i + 1 == len(blocks) or _stage_of(blocks[i + 1]) != stage
            index = len(stages) - 1
            self.add_forward_pre_hook(block, self._enter_block, index, first)
            self.add_forward_hook(block.drop_path1, self._add_branch, 2 * i)
            self.add_forward_hook(block.drop_path2, self._add_branch, 2 * i + 1)
            if last:
                self.add_forward_hook(block, self._leave_stage, index)
        for index, stage in enumerate(stages[1:], start=1):
            name = f"{stage}.downsample" if stage else ""
            downsample = model.get_submodule(name) if name and _has(model, name) else None
            if downsample is not None and not isinstance(downsample, nn.Identity):
                self.add_forward_hook(downsample, self._downsample, index)
        if len(outputs) > len(stages):
            raise MethodError(f"e3va: {len(outputs)} output norms ({outputs}) for {len(stages)} stages")
        for k, name in enumerate(outputs):
            stage_index = len(stages) - len(outputs) + k
            self.add_forward_pre_hook(model.get_submodule(name), self._output, stage_index)
        self.num_stages = len(stages)
        self._h: torch.Tensor | None = None
        self._carried: dict[int, torch.Tensor] = {}
        self._stage_out: dict[int, torch.Tensor] = {}
        self._shape: torch.Size | None = None

    # -- hooks --------------------------------------------------------------------------------------
    def _enter_block(self, stage: int, first: bool, module, args):
        x = args[0]
        self._shape = x.shape
        if first:
            if stage == 0:
                self._stage_out.clear()
                self._carried.clear()
            self._h = self._carried.pop(stage, None)

    def _add_branch(self, index: int, module, args, output):
        update = self.adapters[index](args[0].detach()).reshape(self._shape)
        self._h = update if self._h is None else self._h + update

    def _leave_stage(self, stage: int, module, args, output):
        if self._h is not None:
            self._stage_out[stage] = self._h
        self._h = None

    def _downsample(self, stage: int, module, args, output):
        h = self._stage_out.get(stage - 1)
        if h is not None:  # `forward` directly: calling the module would re-enter this hook
            self._carried[stage] = module.forward(args[0] + h) - output

    def _output(self, stage: int, module, args):
        h = self._stage_out.get(stage)
        if h is None:
            return None
        return (args[0] + h.reshape(args[0].shape), *args[1:])


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


@register_method
class E3va(PeftMethod):
    name = "e3va"
    category = "side"
    config_cls = E3vaConfig
    mergeable = False
    needs_backbone_grad = False
    paper = ("Yin et al., Parameter-efficient is not sufficient: Parameter, Memory, and Time Efficient Adapter "
             "Tuning for Dense Predictions (E3VA), ACM MM 2024")
    provenance = from_paper(
        "E3VA method: parallel adapters on a gradient highway beside the frozen backbone",
        "LoRand-style adapters; highway joined at the FPN with trainable norms",
        notes="code not public; published 1.20 M / 1.79 M not reproduced")

    def _outputs(self, model: nn.Module) -> list[str]:
        outputs = [n for n in match_modules(model, self.config.output_modules)
                   if isinstance(model.get_submodule(n), nn.LayerNorm)]
        if not outputs:
            raise MethodError(f"e3va: no LayerNorm of {type(model).__name__} matches output_modules="
                              f"{self.config.output_modules!r}; the highway needs an output norm to join")
        return outputs

    def inject(self, model):
        if hasattr(model, "e3va_highway"):
            raise MethodError("model already has an E3VA highway")
        blocks = match_modules(model, self.config.target_blocks)
        if not blocks:
            raise MethodError(f"e3va: no module of {type(model).__name__} matches "
                              f"target_blocks={self.config.target_blocks!r}")
        model.add_module("e3va_highway", Highway(model, blocks, self._outputs(model), self.config))
        return blocks

    def select_backbone_parameters(self, model):
        if not self.config.train_output_norms:
            return []
        return [f"{name}.{p}" for name in self._outputs(model)
                for p, _ in model.get_submodule(name).named_parameters()]
