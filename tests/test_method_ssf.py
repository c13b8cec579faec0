"""SSF: placement, init, merge (ViT and Swin), unmerge, refusal of bias-free targets."""

from __future__ import annotations

import pytest
import torch
from helpers.models import meta_counts, small_swin, small_vit

from vpeft.methods import MethodError, apply_method, build_method, method_layers


def test_placement_on_vit_follows_the_paper():
    model = small_vit()
    applied = apply_method(model, build_method("ssf"))
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    expected = ["patch_embed.proj"] + [f"blocks.{i}.{m}" for i in range(2) for m in per_block] + ["norm"]
    assert applied.matched == expected


def test_init_is_near_identity_not_identity():
    vit = small_vit()
    apply_method(vit, build_method("ssf", {"init_std": 0.02}))
    scales = torch.cat([layer.scale for layer in method_layers(vit)])
    shifts = torch.cat([layer.shift for layer in method_layers(vit)])
    assert 0.005 < scales.std().item() < 0.05 and abs(scales.mean().item() - 1) < 0.01
    assert 0.005 < shifts.std().item() < 0.05 and abs(shifts.mean().item()) < 0.01
    vit2 = small_vit()
    apply_method(vit2, build_method("ssf", {"init_std": 0.0}))
    reference = small_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit2.eval()(x), reference(x), rtol=0, atol=1e-6)


def _perturb(model):
    with torch.no_grad():
        for layer in method_layers(model):
            layer.scale.normal_(1.0, 0.3)
            layer.shift.normal_(0.0, 0.3)


def test_swin_placement_merge_and_plain_architecture():
    model = small_swin().eval()
    reference = small_swin()
    applied = apply_method(model, build_method("ssf"))
    names = set(applied.matched)
    assert {"patch_embed.proj", "patch_embed.norm", "layers.1.downsample.norm", "norm",
            "layers.0.blocks.0.attn.qkv", "layers.1.blocks.0.mlp.fc2"} <= names
    assert "layers.1.downsample.reduction" not in names  # bias-free: nothing to fold the shift into
    counts = applied.parameter_counts()
    assert counts["trainable"] == sum(2 * p.shape[0] for n, p in reference.named_parameters()
                                      if n.rpartition(".")[0] in names and n.endswith(".bias"))
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


def test_swin_trains():
    model = small_swin()
    apply_method(model, build_method("ssf"))
    out = model(torch.randn(2, 3, 56, 56))
    out.sum().backward()
    for layer in method_layers(model):
        assert layer.scale.grad is not None and layer.shift.grad is not None


def test_unmerge_restores_the_frozen_weights():
    model = small_vit().eval()
    method = build_method("ssf")
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
    assert all("_orig" not in n for n, _ in model.named_buffers())


def test_bias_free_target_is_refused():
    model = small_swin()
    with pytest.raises(MethodError, match="without weight and bias"):
        apply_method(model, build_method("ssf", {"target_modules": r"downsample\.reduction$"}))


def test_frozen_prefix_counts_untouched_leading_blocks():
    model = small_vit()
    applied = apply_method(model, build_method("ssf", {"target_modules": r"^blocks\.1\.mlp\.fc1$"}))
    assert applied.method.frozen_prefix_blocks(model) == 1
    full = small_vit()
    applied = apply_method(full, build_method("ssf"))
    assert applied.method.frozen_prefix_blocks(full) == 0


def test_count_at_vit_b16_is_the_published_205824():
    assert meta_counts("ssf")["trainable"] == 205_824  # SSF paper, Table 1 (ViT-B/16, head excluded)


def test_bad_init_std_is_refused():
    with pytest.raises(MethodError, match="init_std"):
        build_method("ssf", {"init_std": -1})
