"""The dense track's demo backbone: a small timm SwinTransformer registered under timm's naming scheme.

`swin_demo_patch4_window4` is timm's own `SwinTransformer` class (no fork) at CPU size: patch 4,
window 4 at every stage (`always_partition`), widths 32/64/128/256, depths 2/2/2/2, heads 1/2/4/8
(2.3 M parameters). Its `.fractal`
weights come from the project's formula-driven pretraining on rendered fractals at 32x32 (the same
recipe as the ViT demo backbone, `vpeft.engine.pretrain`); the dense suites use it on 64x64 images
(Swin's relative position bias is per window, so the weights do not depend on the image size).
"""

from .. import _lazy_dynamo  # noqa: F401  (first: timm without loading torch._dynamo)
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
    # always_partition: window 4 at every stage whatever the image size (timm would shrink the windows of
    # the last stages to their 2x2 / 1x1 grids at 32 px), so the same weights fit 32-px pretraining and
    # 64-px dense inputs.
    model_args = dict(img_size=32, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2, 2, 2),
                      num_heads=(1, 2, 4, 8), mlp_ratio=4.0, always_partition=True)
    return build_model_with_cfg(
        SwinTransformer, DEMO_ARCH, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)), **dict(model_args, **kwargs))


#: The recipe that made the shipped `.fractal` weights (the ViT demo backbone's, `vpeft.engine.pretrain`,
#: with this architecture): rule `pretrain_dense_demo_backbone` remakes them.
PRETRAIN_RECIPE = {"arch": DEMO_ARCH, "seed": 0, "num_classes": 100, "images_per_class": 80, "image_size": 32,
                   "epochs": 30}
