"""Mona's placement inside unmodified timm blocks, checked against the paper's block written by hand:
x <- Mona_1(x + Attn(LN1 x)),  x <- Mona_2(x + MLP(LN2 x)); on a ViT and on a Swin block."""

from __future__ import annotations

import timm
import torch

import vpeft.dense.demo_swin  # noqa: F401  (registers the small Swin with timm)
from vpeft.methods import apply_method, build_method


def _randomise(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mona" in name:
                p.normal_(0, 0.2)


def _by_hand(block, x):
    base = block.base_layer
    first, second = base.drop_path1.mona, block.mona
    if x.ndim == 4:  # Swin: NHWC
        b, h, w, c = x.shape
        x = x + base._attn(base.norm1(x))
        x = x + first.delta(x)
        flat = x.reshape(b, -1, c)
        x = (flat + base.mlp(base.norm2(flat))).reshape(b, h, w, c)
    else:
        x = x + base.attn(base.norm1(x))
        x = x + first.delta(x)
        x = x + base.mlp(base.norm2(x))
    return x + second.delta(x)


def test_mona_block_is_the_papers_block_on_vit_and_swin():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                            depth=2, num_heads=3, num_classes=0).eval()
    swin = timm.create_model("swin_demo_patch4_window4", pretrained=False, num_classes=0).eval()
    for model, tokens in ((vit, torch.randn(2, 17, 48)), (swin, torch.randn(2, 8, 8, 32))):
        apply_method(model, build_method("mona", {"bottleneck": 8}))
        _randomise(model)
        block = model.blocks[0] if hasattr(model, "blocks") else model.layers[0].blocks[1]
        with torch.no_grad():
            torch.testing.assert_close(block(tokens), _by_hand(block, tokens), rtol=1e-5, atol=1e-5)


def test_vit_prefix_token_is_filtered_as_a_1x1_map():
    """The CLS token never mixes with the patch grid in Mona's convolutions (our ViT variant)."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                            depth=1, num_heads=3, num_classes=0).eval()
    apply_method(vit, build_method("mona", {"bottleneck": 8}))
    _randomise(vit)
    mona = vit.blocks[0].mona
    x = torch.randn(1, 17, 48)
    changed = x.clone()
    changed[:, 1:] += torch.randn(1, 16, 48)  # patches change, CLS stays
    with torch.no_grad():
        assert torch.equal(mona.delta(x)[:, 0], mona.delta(changed)[:, 0])
        assert not torch.equal(mona.delta(x)[:, 1:], mona.delta(changed)[:, 1:])
