"""U-Tuning: the MHA U-tuner is exactly the prefix branch of prefix tuning's decomposition."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers.models import meta_counts
from helpers.models import small_vit as _small_vit
from helpers.published import mean_head, published_params

from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.u_tuning import ParallelKeyValueFFN, ParallelPrefixMHA, prefix_attention


def small_vit():
    return _small_vit(depth=2, num_classes=5).eval()


def _qkv(attn, h):
    b, n, _ = h.shape
    q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def test_prefix_tuning_splits_into_frozen_attention_plus_parallel_prefix():
    """Attn(Q, [Pk;K], [Pv;V]) = (1 - lam) Attn(Q, K, V) + lam Attn(Q, Pk, Pv): the paper's derivation;
    the second term is what `prefix_attention` computes."""
    attn = small_vit().blocks[0].attn
    h = torch.randn(2, 17, 48)
    q, k, v = _qkv(attn, h)
    pk, pv = torch.randn(4, 48), torch.randn(4, 48)
    heads, hd = attn.num_heads, 48 // attn.num_heads
    pk_h = pk.reshape(4, heads, hd).transpose(0, 1).unsqueeze(0).expand(2, -1, -1, -1)
    pv_h = pv.reshape(4, heads, hd).transpose(0, 1).unsqueeze(0).expand(2, -1, -1, -1)
    scale = hd ** -0.5
    joint = ((q @ torch.cat([pk_h, k], 2).transpose(-2, -1)) * scale).softmax(-1) @ torch.cat([pv_h, v], 2)
    logits_p, logits_x = (q @ pk_h.transpose(-2, -1)) * scale, (q @ k.transpose(-2, -1)) * scale
    lam = logits_p.exp().sum(-1, keepdim=True) / (logits_p.exp().sum(-1, keepdim=True)
                                                   + logits_x.exp().sum(-1, keepdim=True))
    frozen = (logits_x.softmax(-1)) @ v
    torch.testing.assert_close(joint, (1 - lam) * frozen + lam * prefix_attention(q, pk, pv, heads))


def test_mha_u_tuner_adds_the_parallel_branch_to_the_untouched_frozen_attention():
    model = small_vit()
    reference = copy.deepcopy(model.blocks[0].attn)
    apply_method(model, build_method("u-tuning", {"num_tokens": 4, "scale": 0.5}))
    layer = model.blocks[0].attn
    assert isinstance(layer, ParallelPrefixMHA)
    with torch.no_grad():
        layer.prefix_value.normal_()
    h = torch.randn(2, 17, 48)
    q, _, _ = _qkv(reference, h)
    branch = prefix_attention(q, layer.prefix_key, layer.prefix_value, 3).transpose(1, 2).reshape(2, 17, 48)
    expected = reference(h) + 0.5 * branch @ reference.proj.weight.t()  # W_o without its bias
    with torch.no_grad():
        torch.testing.assert_close(layer(h), expected)


def test_ffn_u_tuner_and_budget_split():
    model = small_vit()
    applied = apply_method(model, build_method("u-tuning", {"num_tokens": 2, "ffn_tokens": 3}))
    kinds = sorted(type(m).__name__ for m in method_layers(model))
    assert kinds == ["ParallelKeyValueFFN"] * 2 + ["ParallelPrefixMHA"] * 2
    assert sorted(applied.matched) == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    layer = model.blocks[1].mlp
    assert isinstance(layer, ParallelKeyValueFFN)
    with torch.no_grad():
        layer.prefix_value.normal_()
        h = torch.randn(2, 5, 48)
        weights = (h @ layer.prefix_key.t() / 48 ** 0.5).softmax(-1)
        torch.testing.assert_close(layer(h), layer.base_layer(h) + weights @ layer.prefix_value)


# ViT-B/16: p learned keys and p learned values of width 768 beside each of the 12 operators
PREFIX_10 = 12 * (10 * 768 + 10 * 768)


@pytest.mark.parametrize("hparams", [
    {},                                   # p = 10 beside every MHA; + mean FGVC head 180,407 -> 0.36 M
    {"num_tokens": 5, "ffn_tokens": 5},   # the same budget split between MHA and FFN
    {"num_tokens": 0, "ffn_tokens": 10},
])
def test_count_at_vit_b16(hparams):
    assert meta_counts("u-tuning", hparams)["trainable"] == PREFIX_10


def test_published_fgvc_count_is_the_default_plus_the_head():
    # V-PETL's FGVC row counts the classifier head: the default plus the mean head of our FGVC tasks
    count = meta_counts("u-tuning")["trainable"]
    assert round((count + mean_head("fgvc")) / 1e6, 2) == published_params("fgvc", "u-tuning") / 1e6


def test_bad_settings_and_models_are_refused():
    with pytest.raises(MethodError, match="both 0"):
        build_method("u-tuning", {"num_tokens": 0, "ffn_tokens": 0})
    with pytest.raises(MethodError, match="scale"):
        build_method("u-tuning", {"scale": 0})
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                             depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    with pytest.raises(MethodError, match="timm ViT"):
        apply_method(swin, build_method("u-tuning"))
