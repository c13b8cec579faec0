"""Prefix Tuning: attention over [prefix; real] keys and values, fused and explicit paths, ViT and Swin."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers.models import meta_counts, small_vit
from helpers.published import mean_head, published_params

from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.prefix_tuning import PrefixAttention

D, L = 768, 12


def small_swin():
    torch.manual_seed(0)  # depth 2 at 14x14 with window 7: block 1 is shifted, so the shift mask is exercised
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                             depths=(2, 1), num_heads=(1, 2), window_size=7, num_classes=3)


def _set_fused(model, fused: bool):
    for layer in method_layers(model):
        layer.base_layer.fused_attn = fused


def _reference(layer: PrefixAttention, x: torch.Tensor, bias=None) -> torch.Tensor:
    """Softmax attention of the real queries over [prefix; real] keys, written out from scratch."""
    base, h = layer.base_layer, layer.num_heads
    b, n, _ = x.shape
    qkv = base.qkv(x).reshape(b, n, 3, h, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    pk, pv = layer.prefixes()
    logits_real = q @ k.transpose(-2, -1) * base.scale
    if bias is not None:
        logits_real = logits_real + bias
    logits_prefix = q @ pk.transpose(-2, -1).unsqueeze(0) * base.scale
    attn = torch.cat([logits_prefix, logits_real], dim=-1).softmax(-1)
    out = attn[..., :layer.num_tokens] @ pv.unsqueeze(0) + attn[..., layer.num_tokens:] @ v
    return base.proj(out.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("fused", [True, False])
def test_vit_attention_matches_reference(fused):
    model = small_vit().eval()
    apply_method(model, build_method("prefix-tuning", {"num_tokens": 4, "init_std": 1.0}))
    model.eval()
    _set_fused(model, fused)
    layer = model.blocks[0].attn
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        out = layer(x)
        assert out.shape == x.shape  # sequence length unchanged
        torch.testing.assert_close(out, _reference(layer, x), rtol=1e-5, atol=1e-5)


def test_fused_and_explicit_paths_agree_end_to_end():
    model = small_vit().eval()
    apply_method(model, build_method("prefix-tuning", {"num_tokens": 3, "init_std": 0.5}))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _set_fused(model, True)
        fused = model.forward_features(x)
        _set_fused(model, False)
        explicit = model.forward_features(x)
    assert fused.shape == (2, 1 + 16, 48)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def test_attention_mask_keeps_prefixes_visible():
    model = small_vit().eval()
    apply_method(model, build_method("prefix-tuning", {"num_tokens": 2, "init_std": 1.0}))
    model.eval()
    layer = model.blocks[0].attn
    x = torch.randn(1, 5, 48)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    bias = torch.zeros(5, 5).masked_fill(~mask, float("-inf"))
    with torch.no_grad():
        for fused in (True, False):
            layer.base_layer.fused_attn = fused
            torch.testing.assert_close(layer(x, attn_mask=mask), _reference(layer, x, bias), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(layer(x, is_causal=True), _reference(layer, x, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_swin_window_attention_matches_reference(fused):
    model = small_swin().eval()
    apply_method(model, build_method("prefix-tuning", {"num_tokens": 3, "init_std": 1.0}))
    model.eval()
    _set_fused(model, fused)
    block = model.layers[0].blocks[1]
    assert block.attn_mask is not None, "the test needs a shifted block"
    layer = block.attn
    nw, n = block.attn_mask.shape[0], block.attn_mask.shape[1]
    x = torch.randn(2 * nw, n, 24)
    rel = layer.base_layer._get_rel_pos_bias()
    bias = (rel.unsqueeze(1) + block.attn_mask.view(1, nw, 1, n, n)).expand(2, -1, -1, -1, -1).reshape(2 * nw, -1, n, n)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, mask=block.attn_mask), _reference(layer, x, bias), rtol=1e-5, atol=1e-5)


def test_swin_forward_backward_and_count():
    model = small_swin()
    applied = apply_method(model, build_method("prefix-tuning", {"num_tokens": 3}))
    out = model(torch.randn(2, 3, 56, 56))
    out.sum().backward()
    assert out.shape == (2, 3)
    assert applied.parameter_counts()["trainable"] == 2 * (2 * 3 * 24) + 2 * 3 * 48  # 2 p d per block
    for layer in method_layers(model):
        assert layer.prefix_key.grad.abs().sum() > 0 and layer.prefix_value.grad.abs().sum() > 0


def test_reparameterised_count_and_gradients():
    counts = meta_counts("prefix-tuning", {"num_tokens": 20, "reparam_dim": 64})
    assert counts["trainable"] == L * (214 * D + 64)  # V-PETL video code's per-layer formula
    small = small_vit()
    apply_method(small, build_method("prefix-tuning", {"num_tokens": 3, "reparam_dim": 8}))
    small(torch.randn(2, 3, 32, 32)).sum().backward()
    for layer in method_layers(small):
        for name, p in layer.method_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_published_fgvc_count_needs_the_head():
    counts = meta_counts("prefix-tuning", {"num_tokens": 10})
    assert counts["trainable"] == L * 2 * 10 * D  # a key and a value prefix of 10 tokens of width D per block
    # the published FGVC "0.36 M" counts the classification head: with the mean head of our FGVC tasks
    # it rounds to the printed value
    assert round((counts["trainable"] + mean_head("fgvc")) / 1e6, 2) == published_params("fgvc", "prefix-tuning") / 1e6


def test_non_attention_targets_are_refused():
    with pytest.raises(MethodError, match="fused `qkv` Linear"):
        apply_method(small_vit(), build_method("prefix-tuning", {"target_modules": r"blocks\.\d+\.mlp$"}))
