"""Video vision transformers in timm's shape: VideoMAE ViT-B and the tiny demo video ViT.

`VideoVisionTransformer` tokenises a clip (B, C, T, H, W) with a 3-D patch embedding (tubelets of
`tubelet_size` frames x `patch_size`^2 pixels, `patch_embed.proj` = Conv3d) and runs timm's own ViT
`Block`s (`blocks.N.norm1`, `.attn.qkv`, `.attn.proj`, `.norm2`, `.mlp.fc1`, `.mlp.fc2`), so every
PEFT method of the library injects by the same module names as on an image ViT. It has timm's model
interface (`forward_features` -> tokens, `forward_head`, `get_classifier`, `reset_classifier`).

Two position-embedding schemes:

* `sincos` (VideoMAE): a fixed sinusoidal table over all T' x H' x W' tokens (a buffer, never
  trained), mean pooling of the tokens, then `fc_norm` and the head (VideoMAE's fine-tuning model with
  `use_mean_pooling`; `norm` is the identity).
* `spatial+time` (demo): a learned spatial table over [CLS] + H' x W' tokens (taken from an image ViT)
  shared by every time step, plus a fixed sinusoidal code of the time step (scaled by
  `temporal_pos_scale`) on the patch tokens; [CLS] pooling after `norm`, like the image model.

Checkpoints in foreign key layouts (official VideoMAE pre-train / fine-tune, Hugging Face VideoMAE,
a 2-D image ViT to inflate) are converted in `load_state_dict`, which is what timm's
`checkpoint_path` loading calls; see `convert.py`.
"""

from __future__ import annotations

from functools import partial

import torch
from ... import _lazy_dynamo  # noqa: F401  (first: timm without loading torch._dynamo)
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from . import convert


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """(positions, dim) sinusoidal codes: sin on even, cos on odd channels, wavelength 10000^(2i/dim)
    (the table of Vaswani et al., as VideoMAE uses it)."""
    pos = torch.arange(positions, dtype=torch.float64).unsqueeze(1)
    exponent = (2 * (torch.arange(dim) // 2)).to(torch.float64) / dim
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()


class PatchEmbed3d(nn.Module):
    """Non-overlapping tubelets -> tokens: (B, C, T, H, W) -> (B, T' * H' * W', D), time-major."""

    def __init__(self, img_size: int, num_frames: int, patch_size: int, tubelet_size: int, in_chans: int,
                 embed_dim: int):
        super().__init__()
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(f"img_size {img_size} / num_frames {num_frames} must be multiples of patch "
                             f"{patch_size} / tubelet {tubelet_size}")
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != tuple(g * k for g, k in zip(self.grid, self.proj.kernel_size)):
            raise ValueError(f"expected clips (B, C, {self.grid[0] * self.proj.kernel_size[0]}, "
                             f"{self.grid[1] * self.proj.kernel_size[1]}, {self.grid[2] * self.proj.kernel_size[2]}), "
                             f"got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


class VideoVisionTransformer(nn.Module):
    def __init__(self, img_size: int = 224, num_frames: int = 16, patch_size: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, num_classes: int = 0, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 pos_embed: str = "sincos", class_token: bool = False, global_pool: str = "avg",
                 temporal_pos_scale: float = 1.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        if pos_embed not in ("sincos", "spatial+time"):
            raise ValueError(f"pos_embed must be 'sincos' or 'spatial+time', got {pos_embed!r}")
        if global_pool not in ("avg", "token") or (global_pool == "token" and not class_token):
            raise ValueError("global_pool must be 'avg', or 'token' with class_token=True")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_frames, self.tubelet_size, self.pos_embed_kind = num_frames, tubelet_size, pos_embed
        self.patch_embed = PatchEmbed3d(img_size, num_frames, patch_size, tubelet_size, in_chans, embed_dim)
        t, h, w = self.patch_embed.grid
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        if pos_embed == "sincos":
            self.register_buffer("pos_embed", sinusoid_table(t * h * w, embed_dim).unsqueeze(0), persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + h * w, embed_dim))
            self.register_buffer("time_embed", temporal_pos_scale * sinusoid_table(t, embed_dim).unsqueeze(0),
                                 persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # also under a meta device
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)])
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    # -- timm model interface ------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _add_positions(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed_kind == "sincos":
            x = x + self.pos_embed.to(x.dtype)
        else:
            t, hw = self.patch_embed.grid[0], self.patch_embed.grid[1] * self.patch_embed.grid[2]
            spatial = self.pos_embed[:, self.num_prefix_tokens:]
            codes = spatial.unsqueeze(1) + self.time_embed.unsqueeze(2).to(x.dtype)  # (1, T', H'W', D)
            x = x + codes.reshape(1, t * hw, -1)
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            if self.pos_embed_kind != "sincos":
                cls = cls + self.pos_embed[:, :1]
            x = torch.cat([cls, x], dim=1)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self._add_positions(self.patch_embed(x)))
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- checkpoints in foreign layouts ------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return super().load_state_dict(convert.to_video_vit(state_dict, self), strict=strict, assign=assign)

