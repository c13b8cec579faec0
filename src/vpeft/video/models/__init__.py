"""Video backbones registered with timm (importing this module registers them).

| timm name | what | checkpoint layouts accepted |
|---|---|---|
| `videomae_vit_base_patch16_224.k400_pt` | VideoMAE ViT-B/16, tubelet 2x16x16, 16 frames by default (`num_frames` kwarg), mean pooling + fc_norm | official VideoMAE pre-train (`encoder.*`) / fine-tune, Hugging Face VideoMAE |
| `video_swin_base_patch244_window877.k400_in22k` | Video Swin-B (128/256/512/1024, depths 2/2/18/2, window 8x7x7) | official Video-Swin (`backbone.*`), torchvision `swin3d_b` |
| `video_vit_demo_patch4_32.fractal` | the demo image ViT (`vit_demo_patch4_32`) inflated along time: tubelet 2x4x4, 4 frames by default, [CLS] pooling | the shipped 2-D demo checkpoint (inflated on load) or its own layout |

Only torch and timm are imported here (no decord, no PyAV).
"""

from ... import _lazy_dynamo  # noqa: F401  (first: timm without loading torch._dynamo)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .swin import VideoSwinTransformer
from .vit import VideoVisionTransformer

_KINETICS_MEAN, _KINETICS_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _cfg(size: int, frames: int, mean, std, notes: str) -> dict:
    return {"num_classes": 0, "input_size": (3, size, size), "mean": mean, "std": std,
            "interpolation": "bilinear", "crop_pct": 1.0, "first_conv": "patch_embed.proj", "classifier": "head",
            "notes": (notes, f"{frames} frames per clip by default")}


default_cfgs = generate_default_cfgs({
    "videomae_vit_base_patch16_224.k400_pt": _cfg(
        224, 16, _KINETICS_MEAN, _KINETICS_STD, "VideoMAE self-supervised pre-training on Kinetics-400 (Tong et al. 2022)"),
    "video_swin_base_patch244_window877.k400_in22k": _cfg(
        224, 32, _KINETICS_MEAN, _KINETICS_STD, "Video Swin-B, Kinetics-400 supervised from ImageNet-22K (Liu et al. 2022)"),
    "video_vit_demo_patch4_32.fractal": _cfg(
        32, 4, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "V-PEFT Bench's fractal-pretrained demo ViT, inflated along time"),
})


@register_model
def videomae_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> VideoVisionTransformer:
    args = dict(img_size=224, num_frames=16, patch_size=16, tubelet_size=2, embed_dim=768, depth=12, num_heads=12,
                mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6, pos_embed="sincos", global_pool="avg")
    return build_model_with_cfg(VideoVisionTransformer, "videomae_vit_base_patch16_224", pretrained,
                                **dict(args, **kwargs))


@register_model
def video_swin_base_patch244_window877(pretrained: bool = False, **kwargs) -> VideoSwinTransformer:
    args = dict(patch_size=(2, 4, 4), embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                window_size=(8, 7, 7), mlp_ratio=4.0, qkv_bias=True)
    return build_model_with_cfg(VideoSwinTransformer, "video_swin_base_patch244_window877", pretrained,
                                **dict(args, **kwargs))


@register_model
def video_vit_demo_patch4_32(pretrained: bool = False, **kwargs) -> VideoVisionTransformer:
    # The image demo's architecture (width 128, depth 4, 4 heads, patch 4, [CLS] pooling); the time
    # code is scaled to about the RMS of the image's learned spatial table (0.07) so it does not swamp it.
    args = dict(img_size=32, num_frames=4, patch_size=4, tubelet_size=2, embed_dim=128, depth=4, num_heads=4,
                mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6, pos_embed="spatial+time", class_token=True,
                global_pool="token", temporal_pos_scale=0.1)
    return build_model_with_cfg(VideoVisionTransformer, "video_vit_demo_patch4_32", pretrained,
                                **dict(args, **kwargs))


__all__ = ["VideoSwinTransformer", "VideoVisionTransformer"]
