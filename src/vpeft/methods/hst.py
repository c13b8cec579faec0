"""HST: Hierarchical Side-Tuning (Lin et al., arXiv:2310.05393, 2023).

A small *hierarchical* side network (the paper's HSN) runs beside the frozen plain ViT and makes
the prediction from multi-scale features of its own; the ViT only supplies intermediate features.

Placement (as in the official code, AFeng-x/HST `models/vit_hsn.py`, read for this module):
* Side stem: the *image* goes through conv3x3/s2 (no bias) -> BatchNorm -> ReLU -> conv2x2/s2 -> LN,
  i.e. stride 4 (56x56 tokens at 224 px). Each later stage starts with conv3x3/s2 + LN (stride 8,
  16, 32). Stage widths d_s = `stage_dims` (paper: 32, 48, 64, 72), heads `num_heads` (2, 4, 8, 12).
* The L backbone blocks are split into S contiguous groups (S = number of stages; ViT-B: 3 blocks
  per stage, the paper's block indices 2, 5, 8, 11). Every backbone block j feeds one side block of
  its stage, so the side network has L blocks.
* Meta tokens ("Meta-Token" / later "Meta-Register"): `meta_tokens` learnable vectors per backbone
  block j (paper: 1), *prepended to block j's input* (after the position embedding, no position of
  their own): the patch tokens attend to them inside the block, and block j's output at those
  positions is the meta-token output; they are dropped again before block j+1, which gets its own
  (`forward_features` of the official `ViT_HSN`). The backbone's block LayerNorms (norm1, norm2 of
  every block) are trained too (`freeze_vit`: every tensor named `block`+`norm`). Adaptive Feature
  Bridge ("Transformation Bridge"): one Linear(D, d_s) per stage, shared by the meta-token outputs
  (followed by a LayerNorm per block) and by block j's patch tokens (bilinearly resized to the side
  grid; no norm).
* Side block: x <- x + CrossAttn(LN(x); kv = [bridged meta tokens, mean of bridged patch tokens]);
  x <- x + bridged patch tokens of block j; x <- x + MLP(LN(x)) (ratio 4, GELU). LN after each stage.
* Classification: mean of the last stage's tokens -> BatchNorm1d(affine=False) -> the head.

Delivery to timm's head: a forward hook on the final `norm` replaces its output by the side feature,
zero-padded from d_S to D and repeated at every token position, so timm's `forward_head` (CLS or
average pooling) hands exactly that vector to the head. The head stays timm's Linear(D, C); only its
first d_S input columns see non-zero inputs, so it computes the paper's Linear(d_S, C). (A model with
average pooling and a frozen `fc_norm` LayerNorm applies that norm to the padded feature; timm's
ViT-B/16 and the demo ViT pool the CLS token, where `fc_norm` is the identity.) The hook handles
are kept on the side network (`remove_hooks()`).

`meta_mode: readout` is the project's side-tuning variant (`needs_backbone_grad` off for it): the
backbone stream stays the pretrained one: meta token j is read out by block j as a *query* of the
frozen block -- LN1, the block's own qkv projection, attention over [itself, the block's (detached)
keys and values], proj, LN2 and MLP, exactly the computation block j would do for a prepended token --
but the patch tokens do not attend to it, and the block LayerNorms stay frozen. No block output then
carries an autograd graph (memory of a side network), at the price of not being HST as published.

Init (official): side Linears trunc-normal(0.02) with zero bias, LayerNorms 1/0, convs
N(0, 2/fan_out) with zero bias, BatchNorm 1/0, meta tokens Xavier-uniform.

Parameters (head excluded), D backbone width, L depth, M meta tokens, n_s blocks of stage s:
  stem 27 d_1 + 2 d_1 + 4 d_1^2 + d_1 + 2 d_1
  + sum_{s>1} (9 d_{s-1} d_s + 3 d_s)                  (stage convs + LN)
  + sum_s [n_s (12 d_s^2 + 13 d_s) + 2 d_s + D d_s + d_s + 2 n_s d_s]   (blocks, stage LN, bridge, meta LNs)
  + L M D                                              (meta tokens)
  + 4 L D                                              (block LayerNorms, `meta_mode: prepend`)
ViT-B/16 at the paper's settings: 764,840 (the official code's count; 727,976 in `readout` mode).
With a VTAB head (73 C for d_S = 72) that gives the published 0.78 M only roughly (0.77 M for
CIFAR-100's 100 classes; the 19-task mean head, 73 x 49.5, gives 0.77 M too), so `published` is not
asserted. Not mergeable (the side network is extra computation at inference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, ModuleRef, PeftMethod
from .base import official_code
from .registry import register_method


@dataclass
class HstConfig(MethodConfig):
    """Args:
    stage_dims: widths d_s of the side network's stages (paper, ViT-B: 32, 48, 64, 72).
    num_heads: attention heads of each stage's side blocks (paper: 2, 4, 8, 12).
    meta_tokens: meta tokens per backbone block (paper: 1).
    mlp_ratio: hidden width of the side blocks' MLP relative to d_s (paper: 4).
    drop_path: stochastic-depth rate of the side blocks, linearly increasing (paper: per task).
    meta_mode: `prepend` (official: meta tokens enter every block's input, block LayerNorms train) or
        `readout` (side-tuning variant: meta tokens only read the frozen blocks, nothing in the
        backbone trains or carries a graph).
    """

    stage_dims: tuple[int, ...] = field(default=(32, 48, 64, 72), metadata={"help": "side stage widths"})
    num_heads: tuple[int, ...] = field(default=(2, 4, 8, 12), metadata={"help": "side heads per stage"})
    meta_tokens: int = field(default=1, metadata={"help": "meta tokens per backbone block"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "side MLP ratio"})
    drop_path: float = field(default=0.0, metadata={"help": "side stochastic depth (max rate)"})
    meta_mode: str = field(default="prepend", metadata={"help": "prepend (official) | readout (side-tuning)"})

    def validate(self):
        try:
            self.stage_dims = tuple(int(v) for v in self.stage_dims)
            self.num_heads = tuple(int(v) for v in self.num_heads)
        except (TypeError, ValueError):
            raise MethodError(f"hst.stage_dims / hst.num_heads must be integers, got "
                              f"{self.stage_dims!r} / {self.num_heads!r}") from None
        if not self.stage_dims:
            raise MethodError("hst.stage_dims must name at least one stage")
        if len(self.num_heads) != len(self.stage_dims):
            raise MethodError(f"hst.num_heads {self.num_heads} must have one entry per stage of "
                              f"stage_dims {self.stage_dims}")
        for d, h in zip(self.stage_dims, self.num_heads):
            if d < 1 or h < 1 or d % h:
                raise MethodError(f"hst: stage width {d} must be >= 1 and divisible by its heads {h}")
        if self.meta_tokens < 1:
            raise MethodError(f"hst.meta_tokens must be >= 1, got {self.meta_tokens}")
        if self.mlp_ratio <= 0:
            raise MethodError(f"hst.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise MethodError(f"hst.drop_path must be in [0, 1), got {self.drop_path}")
        if self.meta_mode not in ("prepend", "readout"):
            raise MethodError(f"hst.meta_mode must be 'prepend' or 'readout', got {self.meta_mode!r}")


def _init_side(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Per-sample stochastic depth on a residual branch."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class SideBlock(nn.Module):
    """Cross-attention from the side tokens to [meta tokens, global token], the bridged backbone
    features added as a residual, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bridged: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(self.norm1(x))), self._split(self.k(kv)), self._split(self.v(kv))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)
        x = x + self.drop_path(self.proj(attn))
        x = x + bridged
        return x + self.drop_path(self.fc2(self.act(self.fc1(self.norm2(x)))))


class StageEmbed(nn.Module):
    """conv3x3 / stride 2 then LayerNorm over channels: the start of side stages 2..S."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_out, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, grid: torch.Tensor):
        y = self.proj(grid)
        h, w = y.shape[-2:]
        return self.norm(y.flatten(2).transpose(1, 2)), h, w


class StemEmbed(nn.Module):
    """The side network's own stem on the image: stride 4 (conv3x3/s2, BN, ReLU, conv2x2/s2, LN)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=2, stride=2),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor):
        y = self.conv(image)
        h, w = y.shape[-2:]
        return self.norm(y.flatten(2).transpose(1, 2)), h, w


def stage_groups(depth: int, stages: int) -> list[list[int]]:
    """Split blocks 0..depth-1 into `stages` contiguous groups, earlier groups no larger than later."""
    if stages > depth:
        raise MethodError(f"hst: {stages} side stages need at least {stages} backbone blocks, the model has "
                          f"{depth}; give fewer stage_dims / num_heads")
    sizes = [depth // stages + (1 if s >= stages - depth % stages else 0) for s in range(stages)]
    groups, start = [], 0
    for size in sizes:
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def check_vit(model: nn.Module, method: str) -> None:
    """The side-tuning methods read a timm VisionTransformer by its stable module names."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "num_prefix_tokens") \
            or not isinstance(getattr(model, "norm", None), nn.Module):
        raise MethodError(f"{method} needs a ViT-style model with `blocks`, `norm` and prefix tokens; "
                          f"{type(model).__name__} has none")
    if getattr(model, "attn_pool", None) is not None:
        raise MethodError(f"{method}: attention-pool heads (global_pool='map') are not supported")


class HstSideNetwork(MethodLayer):
    """The hierarchical side network and the hooks that feed it from, and deliver it to, the ViT."""

    def __init__(self, model: nn.Module, config: HstConfig):
        super().__init__()
        check_vit(model, "hst")
        dims, heads = config.stage_dims, config.num_heads
        dim = model.embed_dim
        depth = len(model.blocks)
        self.groups = stage_groups(depth, len(dims))
        if dims[-1] > dim:
            raise MethodError(f"hst: the last stage width {dims[-1]} exceeds the backbone width {dim} "
                              f"that the head reads")
        for i, block in enumerate(model.blocks):
            attn = getattr(block, "attn", None)
            if not all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "proj")) \
                    or getattr(attn, "gate", None) is not None:
                raise MethodError(f"hst: blocks.{i}.attn is not a plain timm Attention with a fused qkv")
        self.num_prefix = model.num_prefix_tokens
        self.patch_size = tuple(model.patch_embed.patch_size)
        self.dim = dim
        self.out_dim = dims[-1]
        self.stage_of_block = [s for s, group in enumerate(self.groups) for _ in group]
        # References: the frozen blocks must not become parameters of this layer.
        self._blocks = [ModuleRef(block) for block in model.blocks]

        in_chans = model.patch_embed.proj.in_channels
        self.stem = StemEmbed(in_chans, dims[0])
        self.stage_embeds = nn.ModuleList(StageEmbed(dims[s - 1], dims[s]) for s in range(1, len(dims)))
        self.bridges = nn.ModuleList(nn.Linear(dim, d) for d in dims)
        self.meta_norms = nn.ModuleList(nn.LayerNorm(dims[s]) for s in self.stage_of_block)
        rates = torch.linspace(0, config.drop_path, depth).tolist()
        self.stages = nn.ModuleList(
            nn.ModuleList(SideBlock(dims[s], heads[s], config.mlp_ratio, rates[j]) for j in group)
            for s, group in enumerate(self.groups))
        self.stage_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.apply(_init_side)
        bound = math.sqrt(6.0 / float(config.meta_tokens * dim + dim))  # Xavier-uniform of (1, M, D)
        self.meta = nn.Parameter(torch.empty(depth, config.meta_tokens, dim).uniform_(-bound, bound))
        self.pool_norm = nn.BatchNorm1d(dims[-1], affine=False, eps=1e-6)

        self.prepend = config.meta_mode == "prepend"
        self._cache: dict = {}
        self.add_forward_pre_hook(model.patch_embed, self._keep_image)
        for j, block in enumerate(model.blocks):
            if self.prepend:
                self.add_forward_pre_hook(block, self._prepend_meta, j)
                self.add_forward_hook(block, self._split_meta, j)
            else:
                self.add_forward_hook(block.attn.qkv, self._keep, "qkv", j)
                self.add_forward_hook(block, self._keep, "out", j)
        self.add_forward_hook(model.norm, self._deliver)

    # -- hooks ------------------------------------------------------------------------------
    def _keep_image(self, module, args):
        self._cache.clear()
        self._cache["image"] = args[0].detach()

    def _keep(self, kind: str, index: int, module, args, output):
        self._cache[(kind, index)] = output.detach()

    def _prepend_meta(self, index: int, module, args):
        x = args[0]
        meta = self.meta[index].unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        return (torch.cat([meta, x], dim=1), *args[1:])

    def _split_meta(self, index: int, module, args, output):
        """Keep block `index`'s meta-token outputs and its token stream (with their graphs: the meta
        tokens and block norms train through them); the next block sees the stream alone."""
        m = self.meta.shape[1]
        stream = output[:, m:]
        self._cache[("meta", index)] = output[:, :m]
        self._cache[("out", index)] = stream
        return stream

    def _deliver(self, module, args, output):
        if "image" not in self._cache:
            raise MethodError("hst: the final norm ran without a forward pass through patch_embed and blocks")
        try:
            feature = self.side_forward()
        finally:
            self._cache.clear()
        feature = F.pad(feature, (0, self.dim - self.out_dim)).to(output.dtype)
        return feature[:, None, :].expand(output.shape[0], output.shape[1], self.dim)

    # -- computation ------------------------------------------------------------------------
    def meta_readout(self, index: int, batch: int) -> torch.Tensor:
        """Block `index` applied to its meta tokens as extra queries of the frozen stream: they attend
        to themselves and to the block's (detached) keys/values; the stream does not see them."""
        block = self._blocks[index].module
        attn = block.attn
        meta = self.meta[index].unsqueeze(0).expand(batch, -1, -1)
        stream_qkv = self._cache[("qkv", index)]
        m = meta.shape[1]
        qkv = torch.cat([F.linear(block.norm1(meta), attn.qkv.weight, attn.qkv.bias).to(stream_qkv.dtype),
                         stream_qkv], dim=1)
        qkv = qkv.reshape(batch, qkv.shape[1], 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q[:, :, :m]), attn.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, m, -1)
        meta = meta + block.ls1(attn.proj(attn.norm(out)))
        return meta + block.ls2(block.mlp(block.norm2(meta)))

    def _bridged_patches(self, index: int, stage: int, grid_hw, side_hw) -> torch.Tensor:
        tokens = self._cache[("out", index)][:, self.num_prefix:]
        b, n, _ = tokens.shape
        if n != grid_hw[0] * grid_hw[1]:
            raise MethodError(f"hst: blocks.{index} has {n} patch tokens, expected a "
                              f"{grid_hw[0]}x{grid_hw[1]} grid")
        # Linear then resize == resize then Linear (both linear, bilinear weights sum to 1); cheaper.
        x = self.bridges[stage](tokens).transpose(1, 2).reshape(b, -1, *grid_hw)
        if tuple(grid_hw) != tuple(side_hw):
            x = F.interpolate(x, size=side_hw, mode="bilinear", align_corners=False)
        return x.flatten(2).transpose(1, 2)

    def side_forward(self) -> torch.Tensor:
        image = self._cache["image"]
        batch = image.shape[0]
        grid_hw = (image.shape[-2] // self.patch_size[0], image.shape[-1] // self.patch_size[1])
        x, h, w = self.stem(image)
        for s, (group, blocks) in enumerate(zip(self.groups, self.stages)):
            if s > 0:
                x, h, w = self.stage_embeds[s - 1](x.transpose(1, 2).reshape(batch, -1, h, w))
            for j, block in zip(group, blocks):
                bridged = self._bridged_patches(j, s, grid_hw, (h, w))
                meta_out = self._cache[("meta", j)] if self.prepend else self.meta_readout(j, batch)
                meta = self.meta_norms[j](self.bridges[s](meta_out))
                kv = torch.cat([meta, bridged.mean(dim=1, keepdim=True)], dim=1)
                x = block(x, kv, bridged)
            x = self.stage_norms[s](x)
        pooled = x.mean(dim=1)
        bn = self.pool_norm  # BatchNorm1d(affine=False); a batch of one falls back to running stats
        use_batch = bn.training and batch > 1
        if use_batch:
            bn.num_batches_tracked.add_(1)
        return F.batch_norm(pooled, bn.running_mean, bn.running_var, None, None,
                            training=use_batch, momentum=bn.momentum, eps=bn.eps)


@register_method
class Hst(PeftMethod):
    name = "hst"
    category = "side"
    config_cls = HstConfig
    mergeable = False
    paper = "Lin et al., Hierarchical Side-Tuning for Vision Transformers, arXiv:2310.05393, 2023"
    provenance = official_code(
        "AFeng-x/HST", "ee89571c646e6d60cdddea9ff7b4ab521558a49d", "models/vit_hsn.py",
        notes="meta_mode: readout is the project's side-tuning variant (frozen blocks, no graph)")

    def __init__(self, config=None):
        super().__init__(config)
        # the official HST trains through the backbone (prepended meta tokens, block norms)
        self.needs_backbone_grad = self.config.meta_mode == "prepend"

    def inject(self, model):
        if hasattr(model, "hst_side"):
            raise MethodError("model already has an HST side network")
        model.add_module("hst_side", HstSideNetwork(model, self.config))
        return ["patch_embed"] + [f"blocks.{i}" for i in range(len(model.blocks))] + ["norm"]

    def select_backbone_parameters(self, model):
        """`prepend`: the block LayerNorms (official `freeze_vit` trains every `block` + `norm` tensor)."""
        if self.config.meta_mode != "prepend":
            return []
        return [f"blocks.{i}.{name}" for i, block in enumerate(model.blocks)
                for name, _ in block.named_parameters() if "norm" in name.rpartition(".")[0].rpartition(".")[2]]

    def frozen_prefix_blocks(self, model):
        return 0 if self.config.meta_mode == "prepend" else len(model.blocks)
