"""The dense track's demo backbone: a small timm SwinTransformer registered under timm's naming scheme.

`swin_demo_patch4_window4` is timm's own `SwinTransformer` class (no fork) at CPU size: patch 4,
window 4, widths 32/64/128/256, depths 2/2/2/2, heads 1/2/4/8 (2.3 M parameters). Its `.fractal`
weights come from the project's formula-driven pretraining on rendered fractals at 32x32 (the same
recipe as the ViT demo backbone, `vpeft.engine.pretrain`); the dense suites use it on 64x64 images
(Swin's relative position bias is per window, so the weights do not depend on the image size).
"""

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

DEMO_ARCH = "swin_demo_patch4_window4"

default_cfgs = generate_default_cfgs({
    f"{DEMO_ARCH}.fractal": {
        "num_classes": 0,
        "input_size": (3, 32, 32),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        "license": "apache-2.0",
        "notes": ("weights from V-PEFT Bench's FractalDB-style pretraining",),
    },
})


@register_model
def swin_demo_patch4_window4(pretrained: bool = False, **kwargs) -> SwinTransformer:
    model_args = dict(img_size=32, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2, 2, 2),
                      num_heads=(1, 2, 4, 8), mlp_ratio=4.0)
    return build_model_with_cfg(
        SwinTransformer, DEMO_ARCH, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)), **dict(model_args, **kwargs))
