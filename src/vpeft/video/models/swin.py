"""Video Swin Transformer (Liu et al., CVPR 2022) in timm's shape.

Same computation as the official Video-Swin-Transformer backbone and torchvision's `swin3d_b`
(tested equal to torchvision at Swin-B size): 3-D patch embedding (Conv3d 2x4x4 + LayerNorm), four
stages of window-attention blocks with 3-D windows (8, 7, 7) shifted by half a window in every
other block, patch merging (2x2 spatial) after each of the first three stages, final LayerNorm,
global average pooling over time and space, linear head.

Module names follow the official checkpoint (and timm's 2-D Swin): `patch_embed.proj/norm`,
`layers.S.blocks.N.{norm1, attn.qkv, attn.proj, attn.relative_position_bias_table, norm2, mlp.fc1,
mlp.fc2}`, `layers.S.downsample.{norm, reduction}`, `norm`, `head`, so the library's PEFT methods
inject unchanged. The attention module has the interface of timm's `WindowAttention` (`qkv`, `proj`,
`num_heads`, `scale`, `fused_attn`, `_get_rel_pos_bias()`, `forward(x, mask)`); inputs smaller than a
window shrink it (as in the official code and torchvision), so the block tells its attention which
window volume is in use before calling it (`window_volume`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from ... import _lazy_dynamo  # noqa: F401  (first: timm without loading torch._dynamo)
from timm.layers import DropPath, Mlp, trunc_normal_, use_fused_attn
from torch import nn

from . import convert


def effective_window(size, window, shift):
    """Window and shift actually used for a (D, H, W) input: a dimension no larger than the window
    gets one window covering it, and no shift."""
    window, shift = list(window), list(shift)
    for i in range(3):
        if size[i] <= window[i]:
            window[i], shift[i] = size[i], 0
    return tuple(window), tuple(shift)


def window_partition(x: torch.Tensor, window) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * windows, Wd * Wh * Ww, C)."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window[0] * window[1] * window[2], c)


def window_reverse(windows: torch.Tensor, window, b: int, d: int, h: int, w: int) -> torch.Tensor:
    x = windows.view(b, d // window[0], h // window[1], w // window[2], window[0], window[1], window[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


@lru_cache(maxsize=32)
def _shift_mask(d: int, h: int, w: int, window: tuple, shift: tuple) -> torch.Tensor:
    """(windows, N, N) additive mask (0 / -100) keeping shifted windows from mixing regions."""
    region = torch.zeros(1, d, h, w, 1)
    count = 0
    for ds in (slice(-window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for hs in (slice(-window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            for ws in (slice(-window[2]), slice(-window[2], -shift[2]), slice(-shift[2], None)):
                region[:, ds, hs, ws, :] = count
                count += 1
    ids = window_partition(region, window).squeeze(-1)
    mask = ids.unsqueeze(1) - ids.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def relative_position_index(window) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in window], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += window[0] - 1
    rel[:, :, 1] += window[1] - 1
    rel[:, :, 2] += window[2] - 1
    rel[:, :, 0] *= (2 * window[1] - 1) * (2 * window[2] - 1)
    rel[:, :, 1] *= 2 * window[2] - 1
    return rel.sum(-1)


class WindowAttention3d(nn.Module):
    def __init__(self, dim: int, num_heads: int, window, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.dim, self.num_heads, self.window_size = dim, num_heads, tuple(window)
        self.scale = (dim // num_heads) ** -0.5
        self.fused_attn = use_fused_attn()
        volume = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(volume, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.window_volume = window[0] * window[1] * window[2]
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _get_rel_pos_bias(self) -> torch.Tensor:
        """(1, heads, N, N) for the window volume N in use (index cropped like the official code)."""
        n = self.window_volume
        bias = self.relative_position_bias_table[self.relative_position_index[:n, :n].reshape(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._get_rel_pos_bias()
        if mask is not None:
            windows = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.view(1, windows, 1, n, n)).expand(b // windows, -1, -1, -1, -1)
            bias = bias.reshape(b, self.num_heads, n, n)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                               dropout_p=self.attn_drop.p if self.training else 0.0,
                                               scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class SwinBlock3d(nn.Module):
    def __init__(self, dim: int, num_heads: int, window, shift, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.window_size, self.shift_size = tuple(window), tuple(shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3d(dim, num_heads, window, qkv_bias, attn_drop, drop)
        # one DropPath per residual branch, named as timm's blocks name them (methods attach by name)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, _ = x.shape
        window, shift = effective_window((d, h, w), self.window_size, self.shift_size)
        x = self.norm1(x)
        pad = [(window[i] - s % window[i]) % window[i] for i, s in enumerate((d, h, w))]
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        _, dp, hp, wp, _ = x.shape
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
            mask = _shift_mask(dp, hp, wp, window, shift).to(x.device, x.dtype)
        self.attn.window_volume = window[0] * window[1] * window[2]
        windows = self.attn(window_partition(x, window), mask=mask)
        x = window_reverse(windows, window, b, dp, hp, wp)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w, :].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._attention(x))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging3d(nn.Module):
    """2x2 spatial neighbours concatenated (order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]),
    LayerNorm, then Linear 4C -> 2C without bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:4]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage3d(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window, drop_paths, downsample: bool, **block_args):
        super().__init__()
        shift = tuple(s // 2 for s in window)
        self.blocks = nn.ModuleList([
            SwinBlock3d(dim, num_heads, window, (0, 0, 0) if i % 2 == 0 else shift, drop_path=drop_paths[i],
                        **block_args) for i in range(depth)])
        self.downsample = PatchMerging3d(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed3d(nn.Module):
    def __init__(self, patch_size, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T', H', W', D); sizes not divisible by the patch are zero-padded."""
        pad = [(p - s % p) % p for p, s in zip(self.patch_size, x.shape[2:])]
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class VideoSwinTransformer(nn.Module):
    def __init__(self, patch_size=(2, 4, 4), in_chans: int = 3, num_classes: int = 0, embed_dim: int = 128,
                 depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=(8, 7, 7), mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, **_unused):
        super().__init__()
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed3d(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also under a meta device
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            self.layers.append(SwinStage3d(
                embed_dim * 2**i, depth, num_heads[i], tuple(window_size), dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < len(depths) - 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                attn_drop=attn_drop_rate))
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> normalised features (B, T', H', W', C)."""
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(1, 2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return super().load_state_dict(convert.to_video_swin(state_dict, self), strict=strict, assign=assign)
