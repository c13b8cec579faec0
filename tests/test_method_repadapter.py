"""RepAdapter: placement, grouped up-projection, re-parameterisation into qkv / fc1, counts."""

from __future__ import annotations

import pytest
import torch
from helpers.models import meta_counts, small_swin, small_vit
from helpers.published import published_params

from vpeft.methods import MethodError, apply_method, build_method, method_layers


def _perturb(model):
    with torch.no_grad():
        for layer in method_layers(model):
            for _, p in layer.method_parameters():
                p.normal_(0, 0.2)


def test_placement_is_before_attention_and_mlp():
    model = small_vit()
    applied = apply_method(model, build_method("repadapter"))
    assert applied.matched == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1"]


def test_adapter_is_the_official_linear_map_on_the_ln_output():
    """x' = x + s * (B(A x + a) + b) with B grouped: output group i reads hidden group i only."""
    model = small_vit().eval()
    apply_method(model, build_method("repadapter", {"scale": 2.5, "groups": 2, "hidden_dim": 8}))
    _perturb(model)
    layer = model.blocks[0].attn.qkv
    x = torch.randn(3, 5, 48)
    h = x @ layer.down.weight.t() + layer.down.bias
    # grouped 1x1 conv as in the official code (Conv1d with groups)
    conv = torch.nn.Conv1d(8, 48, 1, groups=2)
    with torch.no_grad():
        conv.weight.copy_(layer.up_weight.reshape(48, 4, 1))
        conv.bias.copy_(layer.up_bias)
        expected = x + 2.5 * conv(h.transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(x + layer.adapter(x), expected, rtol=0, atol=1e-6)
        m, c = layer.dense_map()
        torch.testing.assert_close((x.double() @ m.t() + c).float(), expected, rtol=0, atol=1e-5)


def test_unmerge_restores_the_frozen_weights():
    model = small_vit().eval()
    method = build_method("repadapter")
    apply_method(model, method)
    _perturb(model)
    originals = {n: p.detach().clone() for n, p in model.named_parameters() if ".base_layer." in n}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        method.merge(model)
        merged = model(x)
        method.unmerge(model)
        after = model(x)
    torch.testing.assert_close(merged, before, rtol=0, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    for n, p in model.named_parameters():
        if n in originals:
            assert torch.equal(p, originals[n]), n


def test_swin_merge_leaves_plain_architecture():
    model = small_swin().eval()
    reference = small_swin()
    applied = apply_method(model, build_method("repadapter", {"scale": 0.5}))
    assert len(applied.matched) == 4
    _perturb(model)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        before = model(x)
        plain = applied.merge_and_unload()
        after = plain(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert not method_layers(plain) and type(plain) is type(reference)
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}


def test_count_at_vit_b16_from_the_papers_adapter_shapes():
    # The paper's adapter, twice per block (before attention and before the MLP): a dense down map
    # d -> r with bias, then a grouped 1x1 up map r -> d in g groups (weight d x r/g) with bias.
    d, r, g, adapters = 768, 8, 2, 2 * 12
    counts = meta_counts("repadapter")
    assert counts["trainable"] == adapters * ((d * r + r) + (d * (r // g) + d))
    # Published 0.22 M differs: it equals the count without the 768 up-projection biases, which the
    # official code creates and trains.
    assert round(adapters * ((d * r + r) + d * (r // g)) / 1e6, 2) == published_params("vtab1k", "repadapter") / 1e6


def test_frozen_prefix_counts_untouched_leading_blocks():
    model = small_vit()
    applied = apply_method(model, build_method("repadapter", {"target_modules": r"^blocks\.1\.mlp\.fc1$"}))
    assert applied.method.frozen_prefix_blocks(model) == 1


@pytest.mark.parametrize("hparams, match", [
    ({"groups": 3}, "divide hidden_dim"),
    ({"hidden_dim": 0}, "hidden_dim must be >= 1"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_hyperparameters_are_refused(hparams, match):
    with pytest.raises(MethodError, match=match):
        build_method("repadapter", hparams)


def test_groups_must_divide_width():
    with pytest.raises(MethodError, match="must divide the input width"):
        apply_method(small_vit(), build_method("repadapter", {"groups": 32, "hidden_dim": 32}))
