"""E3VA (Yin et al., "Parameter-efficient is not sufficient: Exploring Parameter, Memory, and Time
Efficient Adapter Tuning for Dense Predictions", ACM MM 2024, arXiv 2306.09729): adapters on a
gradient-backpropagation highway beside the frozen backbone.

No official code was found (papers-with-code lists none; the author's later repository
DongshuoYin/CoLin has LoRand but no E3VA). Material read: the abstract and the caption of the
paper's Figure 2 (arXiv 2306.09729 v2, and a review quoting it). What each decision rests on:

* Highway beside the blocks, no backprop through the backbone -- abstract: "We provide a gradient
  backpropagation highway for low-rank adapters which eliminates the need for expensive
  backpropagation through the frozen pre-trained model"; Fig. 2: "a highway parallel to SwinBlock for
  the trainable E3VA adapters". Here: the adapters' outputs are summed into a stream h that never
  enters a block; no hook changes a block's output, so the blocks build no autograd graph.
* Fed by the attention and the MLP, adapters in parallel -- Fig. 2: "Intermediate activations from
  W/SA-MSA and MLP are sent to E3VA"; the parallel (not stacked) adapter design of the method
  section (as reviewed). Here: every block sends the output of its attention branch and of its MLP
  branch (the input of `drop_path1` / `drop_path2`, detached) to two adapters whose outputs are added
  to h.
* Downsampling inherited from the backbone -- Fig. 2: "Downsampling layers are added in the E3VA
  highway and are inherited from the backbone model". Here: the stage's own frozen patch merging on
  the adapted stream, h <- Merge(x + h) - Merge(x).
* Joined at the outputs with trainable norms -- Fig. 2: "The highway is integrated to the FPN with
  trainable norm". Here: h is added to the backbone features in front of the per-stage output norms
  of the dense backbone (`vpeft.dense`), which train (`train_output_norms`); the final `norm` of a
  timm classifier (a ViT is one stage).
* Adapter = LoRand's dual low-rank structure -- abstract: "low-rank adapters"; the method's "dual
  low-rank structure" (as reviewed) read as LoRand's (`lorand.LowRankSynthesisAdapter`, same first
  author), with LoRand's m = d / 2, alpha = 2, beta = 8: the one LoRand-form setting with m tied to d
  that reproduces both published counts (below).

Init: as LoRand (up factor zero), so h = 0 and the model equals the frozen one at init.
Parameters: 2 * [alpha (2 beta (d + m) + beta^2) + m + d] per block, m = d / 2, plus the output norms.
Swin-B (sum of d over the 24 blocks 12,032): 1,197,312 -> 1.20 M (published, COCO: reproduced);
Swin-L (sum 18,048): 1,792,896 -> 1.79 M (published, VOC: reproduced). The published counts leave
out the trained output norms (with them: 1.20 M / 1.80 M), read as counted with the FPN they feed.
ViT-B/16: 915,456 + the final norm 1,536 = 916,992. Not mergeable.

Hooks: block pre-hooks (stage bookkeeping), forward hooks on `drop_path1` / `drop_path2` (their input
is the branch output), on the stage's `downsample`, and pre-hooks on the output norms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod, match_modules
from .lorand import LowRankSynthesisAdapter, adapter_width, validate_width
from .mona import block_width
from .base import from_paper
from .registry import register_method


@dataclass
class E3vaConfig(MethodConfig):
    """Args:
    bottleneck: width m of each adapter; 0 = d // bottleneck_factor (per block width d).
    bottleneck_factor: m = d // bottleneck_factor when `bottleneck` is 0.
    branches: low-rank branches alpha of each projection (LoRand structure).
    kernel_rank: kernel size beta of each branch.
    train_output_norms: train the norms that take the highway (the paper's "trainable norm").
    target_blocks: regex over module names selecting the transformer blocks.
    output_modules: regex over module names of the norms in front of which the highway is added.
    """

    bottleneck: int = field(default=0, metadata={"help": "adapter width m (0: d // bottleneck_factor)"})
    bottleneck_factor: int = field(default=2, metadata={"help": "m = d // factor when bottleneck is 0"})
    branches: int = field(default=2, metadata={"help": "low-rank branches alpha"})
    kernel_rank: int = field(default=8, metadata={"help": "kernel size beta"})
    train_output_norms: bool = field(default=True, metadata={"help": "train the output norms"})
    target_blocks: str = field(default=r"(^|\.)blocks\.\d+$", metadata={"help": "module-name regex of blocks"})
    output_modules: str = field(default=r"^norm\d*$", metadata={"help": "module-name regex of output norms"})

    def validate(self):
        validate_width(self, "e3va")

    def width(self, dim: int) -> int:
        return adapter_width(self, dim)


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
                self.adapters.append(LowRankSynthesisAdapter(dim, c.width(dim), c.branches, c.kernel_rank))
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
        "abstract: gradient backpropagation highway for low-rank adapters",
        "Fig. 2: activations of W/SA-MSA and MLP sent to parallel adapters, inherited downsampling, "
        "highway joined at the FPN with trainable norms",
        notes="code not public; 1.20 M / 1.79 M reproduced with LoRand adapters, m = d/2 (norms not counted)")

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
