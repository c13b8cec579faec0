"""AdaptFormer: where the parallel branch reads from, its count on ViT-B/16 and Swin-B, Swin support."""

from __future__ import annotations

import timm
import torch

from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.adaptformer import AdaptFormerMlp

D, L = 768, 12


def small_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                             depth=2, num_heads=3, num_classes=5)


def small_swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                             depths=(2, 1), num_heads=(1, 2), window_size=7, num_classes=3)


def _perturb(model):
    model.eval()  # layers added after an earlier .eval() start in training mode (dropout)
    with torch.no_grad():
        for layer in method_layers(model):
            for _, p in layer.method_parameters():
                p.normal_(0, 0.1)


def _expected_block(block, x, branch_of):
    """x + attn + MLP(LN2(x1)) + branch, written out from the frozen block's own modules."""
    adapt = block.mlp
    x1 = x + block.attn(block.norm1(x))
    z = block.norm2.base_layer(x1) if hasattr(block.norm2, "base_layer") else block.norm2(x1)
    return x1 + adapt.base_layer(z) + adapt.branch(branch_of(x1, z))


def test_branch_reads_the_residual_stream_before_norm2():
    model = small_vit().eval()
    apply_method(model, build_method("adaptformer", {"bottleneck": 4, "scale": 0.7}))
    _perturb(model)
    x = torch.randn(2, 17, 48)
    block = model.blocks[0]
    with torch.no_grad():
        torch.testing.assert_close(block(x), _expected_block(block, x, lambda x1, z: x1), rtol=0, atol=1e-6)
        wrong = _expected_block(block, x, lambda x1, z: z)
    assert not torch.allclose(block(x), wrong, atol=1e-4)


def test_normed_variant_reads_the_mlp_input():
    model = small_vit().eval()
    apply_method(model, build_method("adaptformer", {"bottleneck": 4, "branch_input": "normed"}))
    _perturb(model)
    assert not any(type(m).__name__ == "_Norm2Tap" for m in model.modules())
    x = torch.randn(2, 17, 48)
    block = model.blocks[1]
    with torch.no_grad():
        torch.testing.assert_close(block(x), _expected_block(block, x, lambda x1, z: z), rtol=0, atol=1e-6)


def test_branch_is_relu_bottleneck_with_scale_and_dropout():
    layer = AdaptFormerMlp(torch.nn.Identity(), 16, 4, scale=0.1, dropout=0.1, layernorm=False, from_residual=False)
    assert isinstance(layer.act, torch.nn.ReLU) and layer.dropout.p == 0.1 and layer.scale == 0.1
    assert layer.up.weight.abs().sum() == 0 and layer.down.bias.abs().sum() == 0
    assert layer.down.weight.abs().sum() > 0  # Kaiming-uniform: the branch trains from step 2


def test_counts_at_vit_b16():
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    counts = apply_method(model, build_method("adaptformer", {"layernorm": True})).parameter_counts()
    assert counts["trainable"] == L * (2 * D * 8 + 8 + D + 2 * D) == 175_200  # V-PETL's image variant


def test_swin_forward_backward():
    model = small_swin()
    applied = apply_method(model, build_method("adaptformer", {"bottleneck": 4}))
    assert applied.matched == ["layers.0.blocks.0.mlp", "layers.0.blocks.1.mlp", "layers.1.blocks.0.mlp"]
    _perturb(model)
    out = model(torch.randn(2, 3, 56, 56))
    out.sum().backward()
    assert out.shape == (2, 3)
    for layer in method_layers(model):
        for n, p in layer.method_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_swin_identity_at_init():
    model = small_swin().eval()
    reference = small_swin().eval()
    apply_method(model, build_method("adaptformer", {"bottleneck": 4}))
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_count_at_swin_b_bottleneck_64():
    model = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=10)
    dims = [128] * 2 + [256] * 2 + [512] * 18 + [1024] * 2
    expected = sum(2 * d * 64 + 64 + d for d in dims)
    assert expected == 1_553_664
    counts = apply_method(model, build_method("adaptformer", {"bottleneck": 64})).parameter_counts()
    assert counts["trainable"] == expected


def test_bad_hyperparameters_are_named():
    import pytest
    with pytest.raises(MethodError, match="branch_input"):
        build_method("adaptformer", {"branch_input": "pre"})
    with pytest.raises(MethodError, match="bottleneck must be >= 1"):
        build_method("adaptformer", {"bottleneck": 0})


def test_branch_survives_drop_path_as_in_the_official_block():
    """Official block: x = residual + drop_path(mlp(norm2(x))) + adapt_x. With drop_path_rate ~ 1 in
    train mode the MLP term is dropped for (almost) every sample, the branch never is; a branch placed
    inside DropPath would vanish (or be rescaled by 1/keep) with it."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                              depth=2, num_heads=3, num_classes=5, drop_path_rate=1.0)
    apply_method(model, build_method("adaptformer", {"bottleneck": 4, "dropout": 0.0}))
    _perturb(model)
    model.train()
    block = model.blocks[1]  # timm's linear decay: block 0 gets rate 0, the last block 1.0
    x = torch.randn(4, 17, 48)
    with torch.no_grad():
        out = block(x)  # drop_path=1.0: attention and MLP terms are both dropped (keep prob 0)
        branch = block.mlp.branch(x)  # the residual stream entering norm2 is x itself here
    assert branch.abs().max() > 0
    torch.testing.assert_close(out, x + branch, rtol=0, atol=1e-6)
