"""LST: Ladder Side-Tuning (Sung et al., "LST: Ladder Side-Tuning for Parameter and Memory Efficient
Transfer Learning", NeurIPS 2022), applied to a timm ViT.

A thin side transformer runs beside the frozen backbone and makes the prediction; the backbone only
provides features, so it never needs a backward pass (`needs_backbone_grad = False`: its block
outputs carry no autograd graph). Structure, following the paper and its official code
(ylsung/Ladder-Side-Tuning, `modeling_side_t5.py`), with d the backbone width and r the reduction
factor:

* side width d_s = heads * (head_dim // r) (ViT-B/16, r = 8: 12 heads of 8 dims, d_s = 96), MLP width
  h_s = h // r (384); one side block per backbone block, pre-norm like the backbone's;
* the side input is a learned down-projection of the token stream entering block 0:
  s_0 = D_0 x_0 (Linear d -> d_s with bias);
* ladders: after backbone block i, with its *detached* output h_i,
  s <- mu_i * s + (1 - mu_i) * D_{i+1} h_i,   mu_i = sigmoid(alpha_i / T),  alpha_i init 0, T = 0.1,
  then s <- SideBlock_i(s);
* the final side state goes through the side LayerNorm and an up-projection U (Linear d_s -> d with
  bias) and *replaces* the backbone's final features: a forward hook on the model's final `norm`
  returns U LN_s(s), so the (unchanged) head pools and classifies side features. This is the paper's
  default (the side network "makes predictions"; `merge_last` off in the official code);
  `merge_last: true` instead returns mu U LN_s(s) + (1 - mu) * backbone features with one more gate.

Init: side blocks (and the side LayerNorm) are a structurally pruned copy of the backbone's, pruned
data-free by weight magnitude: one set of d_s residual channels for the whole side network (largest
summed L1 norm of the columns read by qkv / fc1 and the rows written by proj / fc2 over all blocks);
per block and head the head_dim // r query/key/value dims with the largest product of row L1 norms of
W_q, W_k, W_v and column L1 norm of W_proj; the h_s MLP units with the largest product of fc1-row and
fc2-column L1 norms. Projections D_i and U have PyTorch's default Linear init, gates alpha_i = 0
(mu = 1/2). Differences from the official T5 scripts: they rank weights by Fisher information
(squared gradients over 1,024 training samples, `load_side_pretrained_weights fisher-v2`; the repo's
weight-magnitude option is the data-free ranking used here), re-pick the residual channels at every
layer, and keep attention dims without regard to heads (we keep head_dim // r dims in every head). `pruned_init: false` gives a randomly initialised side network instead. Not the identity at
init (the head reads side features). Not mergeable. Layer dropping (the paper's optional removal of
some side blocks) is not implemented: one side block per backbone block.

Parameters (timm ViT blocks with biases, no layer scale):
  L * (4 d_s^2 + 2 d_s h_s + 9 d_s + h_s)  side blocks
  + (L + 1) * (d d_s + d_s)                 down-projections D_0..D_L
  + L                                       gates
  + 2 d_s                                   side LayerNorm
  + d_s d + d                               up-projection
  (+ 1 with merge_last; + 2 d_s per block for backbones with layer scale).
On ViT-B/16 at r = 8: 1,342,080 + 959,712 + 12 + 192 + 74,496 = 2,376,492, which is the 2.38 M that
V-PETL prints for LST (the printed count is rounded, so the exact published value is unknown).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import MethodConfig, MethodError, MethodLayer, PeftMethod
from .base import variant
from .registry import register_method


@dataclass
class LstConfig(MethodConfig):
    """Args:
    reduction_factor: r; the side network has head_dim // r dims per head and h // r MLP units.
    gate_alpha: initial gate logit alpha_i (LST: 0, i.e. mu = 1/2).
    gate_temperature: T in mu_i = sigmoid(alpha_i / T) (LST: 0.1).
    merge_last: also gate the up-projected side output with the backbone's final features.
    pruned_init: initialise the side blocks from the magnitude-pruned backbone (else random init).
    """

    reduction_factor: int = field(default=8, metadata={"help": "side width = backbone width / r"})
    gate_alpha: float = field(default=0.0, metadata={"help": "initial gate logit alpha_i"})
    gate_temperature: float = field(default=0.1, metadata={"help": "T in sigmoid(alpha / T)"})
    merge_last: bool = field(default=False, metadata={"help": "gate side output with backbone features"})
    pruned_init: bool = field(default=True, metadata={"help": "init side blocks from the pruned backbone"})

    def validate(self):
        if self.reduction_factor < 1:
            raise MethodError(f"lst.reduction_factor must be >= 1, got {self.reduction_factor}")
        if not math.isfinite(self.gate_temperature) or self.gate_temperature <= 0:
            raise MethodError(f"lst.gate_temperature must be a positive number, got {self.gate_temperature}")
        if not math.isfinite(self.gate_alpha):
            raise MethodError(f"lst.gate_alpha must be finite, got {self.gate_alpha}")


class SideBlock(nn.Module):
    """A pre-norm transformer block of the side network (timm ViT block layout at reduced width)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, act: nn.Module, eps: float,
                 qkv_bias: bool = True, proj_bias: bool = True, fc1_bias: bool = True, fc2_bias: bool = True,
                 layer_scale: bool = False):
        super().__init__()
        if dim % num_heads:
            raise MethodError(f"lst: side width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden, bias=fc1_bias)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim, bias=fc2_bias)
        self.gamma1 = nn.Parameter(torch.ones(dim)) if layer_scale else None
        self.gamma2 = nn.Parameter(torch.ones(dim)) if layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        a = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        x = x + (a * self.gamma1 if self.gamma1 is not None else a)
        m = self.fc2(self.act(self.fc1(self.norm2(x))))
        return x + (m * self.gamma2 if self.gamma2 is not None else m)


def _check_block(block: nn.Module, index: int) -> None:
    """LST's pruned copy needs the timm ViT block layout; anything else is refused by name."""
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    parts = [(block, "norm1", nn.LayerNorm), (block, "norm2", nn.LayerNorm), (attn, "qkv", nn.Linear),
             (attn, "proj", nn.Linear), (mlp, "fc1", nn.Linear), (mlp, "fc2", nn.Linear),
             (attn, "num_heads", int)]
    ok = all(isinstance(getattr(owner, name, None), kind) for owner, name, kind in parts)
    if ok:  # no qk-norm, attention-output norm or MLP norm (timm options LST's pruned copy does not have)
        extras = [(attn, "q_norm"), (attn, "k_norm"), (attn, "norm"), (mlp, "norm")]
        ok = all(isinstance(getattr(owner, name, nn.Identity()), nn.Identity) for owner, name in extras)
    if not ok:
        raise MethodError(f"lst: blocks.{index} ({type(block).__name__}) is not a plain timm ViT block "
                          f"(norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, no qk-norm)")


def _layer_scale(module: nn.Module | None) -> torch.Tensor | None:
    gamma = getattr(module, "gamma", None)
    return gamma if isinstance(gamma, torch.Tensor) else None


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (ties: lower index first)."""
    return torch.sort(torch.topk(scores, k, sorted=True).indices).values


@torch.no_grad()
def residual_channels(blocks, keep: int) -> torch.Tensor:
    """The `keep` residual-stream channels with the largest summed L1 weight magnitude: columns read by
    qkv and fc1, rows written by proj and fc2, over all blocks."""
    score = 0
    for block in blocks:
        score = score + (block.attn.qkv.weight.abs().sum(0) + block.mlp.fc1.weight.abs().sum(0)
                         + block.attn.proj.weight.abs().sum(1) + block.mlp.fc2.weight.abs().sum(1))
    return _top(score.float(), keep)


@torch.no_grad()
def prune_block_into(side: SideBlock, block: nn.Module, res: torch.Tensor, head_dim_s: int) -> dict:
    """Copy the magnitude-pruned weights of a timm ViT `block` into `side`; returns the kept indices."""
    attn, mlp = block.attn, block.mlp
    heads = attn.num_heads
    wq, wk, wv = (w[:, res] for w in attn.qkv.weight.chunk(3, dim=0))
    wo = attn.proj.weight[res]
    inner = wq.abs().sum(1) * wk.abs().sum(1) * wv.abs().sum(1) * wo.abs().sum(0)
    head_dim = inner.numel() // heads
    per_head = torch.topk(inner.float().view(heads, head_dim), head_dim_s, dim=1).indices
    per_head = torch.sort(per_head, dim=1).values
    att = (per_head + torch.arange(heads, device=per_head.device).unsqueeze(1) * head_dim).flatten()
    side.qkv.weight.copy_(torch.cat([wq[att], wk[att], wv[att]], dim=0))
    if side.qkv.bias is not None:
        side.qkv.bias.copy_(torch.cat([b[att] for b in attn.qkv.bias.chunk(3, dim=0)]))
    side.proj.weight.copy_(wo[:, att])
    if side.proj.bias is not None:
        side.proj.bias.copy_(attn.proj.bias[res])
    w1, w2 = mlp.fc1.weight[:, res], mlp.fc2.weight[res]
    units = _top((w1.abs().sum(1) * w2.abs().sum(0)).float(), side.fc1.out_features)
    side.fc1.weight.copy_(w1[units])
    if side.fc1.bias is not None:
        side.fc1.bias.copy_(mlp.fc1.bias[units])
    side.fc2.weight.copy_(w2[:, units])
    if side.fc2.bias is not None:
        side.fc2.bias.copy_(mlp.fc2.bias[res])
    for side_norm, norm in ((side.norm1, block.norm1), (side.norm2, block.norm2)):
        side_norm.weight.copy_(norm.weight[res])
        side_norm.bias.copy_(norm.bias[res])
    for gamma, ls in ((side.gamma1, getattr(block, "ls1", None)), (side.gamma2, getattr(block, "ls2", None))):
        if gamma is not None:
            gamma.copy_(_layer_scale(ls)[res])
    return {"attn": att, "mlp": units}


class LadderSideNetwork(MethodLayer):
    """LST's side network and the hooks that feed it detached backbone activations and hand its
    output to the head in place of the backbone's final features."""

    def __init__(self, model: nn.Module, config: LstConfig):
        super().__init__()
        blocks = getattr(model, "blocks", None)
        norm = getattr(model, "norm", None)
        if not isinstance(blocks, nn.Sequential) or not isinstance(norm, nn.Module) or not len(blocks):
            raise MethodError(f"lst needs a ViT-style model with a `blocks` sequence and a final `norm`; "
                              f"{type(model).__name__} has none")
        for i, block in enumerate(blocks):
            _check_block(block, i)
        r = config.reduction_factor
        dim = model.embed_dim
        heads = blocks[0].attn.num_heads
        head_dim = dim // heads
        hidden = blocks[0].mlp.fc1.out_features
        self.head_dim_s, hidden_s = head_dim // r, hidden // r
        if self.head_dim_s < 1 or hidden_s < 1:
            raise MethodError(
                f"lst.reduction_factor={r} leaves no side width: head_dim {head_dim}, MLP {hidden}")
        side_dim = heads * self.head_dim_s
        self.temperature = config.gate_temperature
        self.first_down = nn.Linear(dim, side_dim)
        self.downs = nn.ModuleList(nn.Linear(dim, side_dim) for _ in blocks)
        self.gate_alpha = nn.Parameter(torch.full((len(blocks),), float(config.gate_alpha)))
        self.side_blocks = nn.ModuleList(
            SideBlock(side_dim, heads, hidden_s, copy.deepcopy(b.mlp.act), b.norm1.eps,
                      qkv_bias=b.attn.qkv.bias is not None, proj_bias=b.attn.proj.bias is not None,
                      fc1_bias=b.mlp.fc1.bias is not None, fc2_bias=b.mlp.fc2.bias is not None,
                      layer_scale=_layer_scale(getattr(b, "ls1", None)) is not None)
            for b in blocks)
        self.side_norm = nn.LayerNorm(side_dim, eps=getattr(norm, "eps", 1e-6))
        self.up = nn.Linear(side_dim, dim)
        self.merge_alpha = (nn.Parameter(torch.full((1,), float(config.gate_alpha)))
                            if config.merge_last else None)
        if config.pruned_init:
            res = residual_channels(blocks, side_dim)
            for side, block in zip(self.side_blocks, blocks):
                prune_block_into(side, block, res, self.head_dim_s)
            if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine:
                with torch.no_grad():
                    self.side_norm.weight.copy_(norm.weight[res])
                    self.side_norm.bias.copy_(norm.bias[res])
            self.register_buffer("residual_index", res, persistent=False)
        self._state: torch.Tensor | None = None
        self.add_forward_pre_hook(blocks[0], self._start)
        for i, blk in enumerate(blocks):
            self.add_forward_hook(blk, self._ladder, i)
        self.add_forward_hook(norm, self._finish)

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.gate_alpha / self.temperature)

    def _start(self, module, args):
        self._state = self.first_down(args[0].detach())

    def _ladder(self, index: int, module, args, output):
        if self._state is None:
            raise MethodError("lst: the side state is missing; was blocks.0 skipped?")
        mu = torch.sigmoid(self.gate_alpha[index] / self.temperature)
        state = mu * self._state + (1 - mu) * self.downs[index](output.detach())
        self._state = self.side_blocks[index](state)

    def _finish(self, module, args, output):
        state, self._state = self._state, None
        if state is None:
            raise MethodError("lst: the side state is missing at the final norm; were the blocks skipped?")
        side = self.up(self.side_norm(state))
        if self.merge_alpha is None:
            return side
        mu = torch.sigmoid(self.merge_alpha / self.temperature)
        return mu * side + (1 - mu) * output.detach()


@register_method
class Lst(PeftMethod):
    name = "lst"
    category = "side"
    config_cls = LstConfig
    mergeable = False
    needs_backbone_grad = False
    paper = ("Sung et al., LST: Ladder Side-Tuning for Parameter and Memory Efficient Transfer Learning, "
             "NeurIPS 2022")
    provenance = variant(
        "ViT port of LST: the official code (ylsung/Ladder-Side-Tuning@1798e82) is T5 / CLIP-ViL; "
        "side width d/8, one side block per backbone block, magnitude- not Fisher-pruned init",
        notes="reproduces V-PETL's 2.38 M")

    def inject(self, model):
        if hasattr(model, "lst_side"):
            raise MethodError("model already has an LST side network")
        model.add_module("lst_side", LadderSideNetwork(model, self.config))
        return [f"blocks.{i}" for i in range(len(model.blocks))] + ["norm"]
