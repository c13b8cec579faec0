"""The demo backbone: a small timm VisionTransformer registered under timm's own naming scheme.

`vit_demo_patch4_32` is timm's `VisionTransformer` class (no fork) at a CPU-friendly size: 32x32
inputs, 4x4 patches (64 tokens + CLS), width 128, depth 4, 4 heads. Its `.fractal` weights come from
the project's own formula-driven pretraining (`vpeft pretrain`, rule `pretrain_demo_backbone`).
"""

from .. import _lazy_dynamo  # noqa: F401  (first: timm without loading torch._dynamo)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

# Our pretraining normalises with mean = std = 0.5 per channel (inputs in [-1, 1]).
default_cfgs = generate_default_cfgs({
    "vit_demo_patch4_32.fractal": {
        "num_classes": 0,
        "input_size": (3, 32, 32),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "notes": ("weights from V-PEFT Bench's FractalDB-style pretraining",),
    },
})


@register_model
def vit_demo_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    model_args = dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4.0)
    return build_model_with_cfg(
        VisionTransformer, "vit_demo_patch4_32", pretrained,
        pretrained_filter_fn=checkpoint_filter_fn, **dict(model_args, **kwargs))
