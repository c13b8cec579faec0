"""Models the method tests build: a small ViT and Swin for behaviour (fast, real weights), and ViT-B/16
on the meta device for parameter counts (real shapes, no memory, milliseconds)."""

from __future__ import annotations

import timm
import torch

D, L, H = 768, 12, 3072  # ViT-B/16 width, depth, MLP width


def small_vit(depth: int = 2, num_classes: int = 5, seed: int = 0, **kwargs) -> torch.nn.Module:
    """ViT with ViT-B's block structure at width 48, 3 heads, 32x32 input, patch 8 (16 tokens + cls)."""
    torch.manual_seed(seed)
    options = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": depth, "num_heads": 3,
               "num_classes": num_classes}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**options, **kwargs})


def small_swin(num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """Swin with two stages of one block each, width 24, 56x56 input."""
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                             depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=num_classes)


def meta_model(name: str = "vit_base_patch16_224", **kwargs) -> torch.nn.Module:
    """A timm model built on the meta device: every shape as at real size, no storage. Build it, and
    apply a method to it, inside `with torch.device("meta")` so the method's new tensors are meta too."""
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def trainable_without_head(model: torch.nn.Module, head: str = "head.") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith(head))


def meta_counts(method: str, hparams: dict | None = None, arch: str = "vit_base_patch16_224",
                num_classes: int = 10, **model_kwargs) -> dict[str, int]:
    """`parameter_counts()` of `method` applied to `arch` built on the meta device. The method's config is
    built (and validated) on the CPU first: validation may compute with real tensors."""
    from vpeft.methods import apply_method, build_method

    built = build_method(method, hparams or {})
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **model_kwargs)
        return apply_method(model, built).parameter_counts()
