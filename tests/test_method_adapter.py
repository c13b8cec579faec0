"""Adapter variants, written from the official forwards: NOAH's module (after the MLP's DropPath,
QuickGELU, dropout 0.1, Xavier + N(0, 1e-6) init) and Houlsby's placement (two per block, GELU,
near-identity init); counts at ViT-B/16."""

from __future__ import annotations

import pytest
import timm
import torch

from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.adapter import BottleneckAdapter

D, L = 768, 12


def small_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                             depth=2, num_heads=3, num_classes=5, **kwargs)


def quick_gelu(z):
    return z * torch.sigmoid(1.702 * z)


def branch(adapter, y, act):
    return adapter.up(act(adapter.down(y)))


def test_noah_adapter_reads_the_dropped_path_mlp_output():
    """NOAH's block: x = x + drop_path(attn(norm1(x))); x = x + adapter(drop_path(mlp(norm2(x)))),
    adapter(y) = y + ln2(dropout(QuickGELU(ln1(y)))). Replayed with the same drop-path masks: the
    adapter sees the rescaled MLP output, and an adapter inside DropPath would give another result."""
    model = small_vit(drop_path_rate=1.0)
    for block in model.blocks:  # rate 0.5 everywhere: some samples keep the MLP, some do not
        block.drop_path1.drop_prob = block.drop_path2.drop_prob = 0.5
    apply_method(model, build_method("adapter", {"bottleneck": 4, "dropout": 0.0}))
    model.train()
    block = model.blocks[1]
    adapter = block.drop_path2
    assert isinstance(adapter, BottleneckAdapter)
    x = torch.randn(8, 17, 48)
    torch.manual_seed(5)
    with torch.no_grad():
        out = block(x)
        torch.manual_seed(5)
        keep1 = x.new_empty(8, 1, 1).bernoulli_(0.5) / 0.5
        keep2 = x.new_empty(8, 1, 1).bernoulli_(0.5) / 0.5
        x1 = x + block.attn(block.norm1(x)) * keep1
        y = block.mlp(block.norm2(x1)) * keep2
        official = x1 + y + branch(adapter, y, quick_gelu)
        z = block.mlp(block.norm2(x1))
        inside = x1 + (z + branch(adapter, z, quick_gelu)) * keep2
    assert 0 < keep2.count_nonzero() < 8
    torch.testing.assert_close(out, official, rtol=1e-5, atol=1e-5)
    assert (out - inside).abs().max() > 1e-4


def test_noah_module_activation_dropout_and_init():
    model = small_vit()
    apply_method(model, build_method("adapter", {"bottleneck": 4}))
    layers = method_layers(model)
    assert len(layers) == 2 and all(isinstance(a, BottleneckAdapter) for a in layers)
    a = layers[0]
    z = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(a.act(z), quick_gelu(z))
    assert isinstance(a.dropout, torch.nn.Dropout) and a.dropout.p == 0.1
    for lin in (a.down, a.up):  # Xavier-uniform weights, N(0, 1e-6) biases: a working, small init
        bound = (6 / (lin.in_features + lin.out_features)) ** 0.5
        assert lin.weight.abs().max() <= bound and lin.weight.std() > bound / 4
        assert 0 < lin.bias.abs().max() < 1e-5
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model.blocks[0].mlp(model.blocks[0].norm2(torch.randn(2, 17, 48)))
        rel = (a(y) - y).norm() / y.norm()
    assert 0 < rel < 0.5  # identity-ish at init, and every tensor has gradient from step one
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in a.method_parameters())


def test_houlsby_places_two_adapters_per_block_inside_the_residual():
    model = small_vit().eval()
    apply_method(model, build_method("adapter", {"variant": "houlsby", "bottleneck": 4}))
    block = model.blocks[0]
    assert isinstance(block.attn, BottleneckAdapter) and isinstance(block.mlp, BottleneckAdapter)
    assert len(method_layers(model)) == 4
    with torch.no_grad():
        for layer in method_layers(model):
            for _, p in layer.method_parameters():
                p.normal_(0, 0.2)
        x = torch.randn(2, 17, 48)
        a = block.attn.base_layer(block.norm1(x))
        x1 = x + a + branch(block.attn, a, torch.nn.functional.gelu)
        z = block.mlp.base_layer(block.norm2(x1))
        expected = x1 + z + branch(block.mlp, z, torch.nn.functional.gelu)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_houlsby_init_is_near_identity():
    model = small_vit()
    apply_method(model, build_method("adapter", {"variant": "houlsby", "bottleneck": 4}))
    for a in method_layers(model):
        assert isinstance(a.act, torch.nn.GELU) and isinstance(a.dropout, torch.nn.Identity)
        for lin in (a.down, a.up):  # truncated normal, std 1e-3, cut at 2 std; zero biases
            assert 0 < lin.weight.abs().max() <= 2e-3 and lin.bias.abs().max() == 0


@pytest.mark.parametrize("variant, expected", [
    ("noah", L * (2 * D * 8 + 8 + D)),            # 156,768 = NOAH's / V-PETL's published 0.16 M
    ("houlsby", 2 * L * (2 * D * 8 + 8 + D)),     # 313,536; no ViT-B/16 count published for it
])
def test_counts_at_vit_b16(variant, expected):
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    counts = apply_method(model, build_method("adapter", {"variant": variant})).parameter_counts()
    assert counts["trainable"] == expected
    if variant == "noah":
        assert round(counts["trainable"] / 1e6, 2) == 0.16


def test_noah_variant_applies_to_swin_blocks():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                              depths=(2, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    applied = apply_method(model, build_method("adapter", {"bottleneck": 4}))
    assert len(applied.matched) == 3 and all(n.endswith("drop_path2") for n in applied.matched)
    model(torch.randn(2, 3, 56, 56)).sum().backward()


def test_bad_values_are_named():
    with pytest.raises(MethodError, match="adapter.variant must be one of"):
        build_method("adapter", {"variant": "pfeiffer"})
    with pytest.raises(MethodError, match="adapter.activation"):
        build_method("adapter", {"activation": "tanh"})
