"""DTL / DTL+: where the compact side network reads and writes, its counts, pooling and hooks."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from vpeft.methods import MethodError, apply_method, build_method

DEPTH = 4


def vit(depth: int = DEPTH) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=48, depth=depth, num_heads=3, num_classes=5).eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def randomise_side(model: torch.nn.Module) -> None:
    """Move the zero-initialised B maps away from zero so the side network adds something."""
    with torch.no_grad():
        for b in model.dtl_side.lora_B:
            b.normal_(0, 0.5)


def record_blocks(model):
    """(input, output) of every block, as the stream sees them (hooks registered after DTL's)."""
    seen = []
    handles = [blk.register_forward_hook(lambda m, a, out: seen.append((a[0].detach(), out.detach())))
               for blk in model.blocks]
    return seen, handles


@pytest.mark.parametrize("start", [0, 1, 2, 3])
def test_side_output_is_added_only_from_start_block_on_and_equals_swish_of_running_sum(start):
    model = vit()
    apply_method(model, build_method("dtl", {"start_block": start}))
    randomise_side(model)
    seen, handles = record_blocks(model)
    with torch.no_grad():
        model(images())
    for h in handles:
        h.remove()
    side = model.dtl_side
    running = 0
    for i, (x_in, x_out) in enumerate(seen):
        running = running + x_in @ side.lora_A[i].detach().t() @ side.lora_B[i].detach().t()
        added = x_out - model.blocks[i].forward(x_in)  # .forward bypasses the hooks: the plain block
        if i < start:
            assert added.abs().max() == 0, f"block {i} < start_block {start} received a side output"
        else:
            expected = running * torch.sigmoid(100.0 * running)
            torch.testing.assert_close(added, expected, rtol=1e-5, atol=1e-5)
            assert added.abs().max() > 0


def test_frozen_prefix_is_start_block_and_negative_start_counts_from_the_end():
    cases = [({}, 6), ({"start_block": 0}, 0), ({"start_block": -6}, 6), ({"start_block": -1}, 11)]
    for hparams, start in cases:
        model = vit(depth=12)
        method = build_method("dtl", hparams)
        apply_method(model, method)
        assert method.frozen_prefix_blocks(model) == start
        assert sum(len(b._forward_hooks) for b in model.blocks) == 12 - start


@pytest.mark.parametrize("start_block", [4, 6, -5])
def test_start_block_out_of_range_is_refused_with_the_valid_range(start_block):
    with pytest.raises(MethodError, match=r"dtl.start_block=.* out of range for a model with 4 blocks: "
                                          r"use 0..3, or a negative index"):
        apply_method(vit(), build_method("dtl", {"start_block": start_block}))


def test_blocks_before_start_carry_no_graph_in_training_mode():
    model = vit().train()
    apply_method(model, build_method("dtl", {"start_block": 2}))
    flags = []
    handles = [b.register_forward_hook(lambda m, a, out: flags.append(out.requires_grad))
               for b in model.blocks]
    model(images()).sum().backward()
    for h in handles:
        h.remove()
    assert flags == [False, False, True, True]


@pytest.mark.parametrize("name", ["dtl", "dtl-plus"])
def test_head_reads_the_norm_of_the_patch_token_mean_as_official(name):
    """Official DTL: head(norm(x[:, prefix:].mean(1))) with the backbone's final LayerNorm; the
    plausible mistake, mean(norm(tokens)), differs once the norm has a non-trivial affine part."""
    model = vit()
    with torch.no_grad():  # a pretrained-like final norm: affine far from (1, 0)
        model.norm.weight.uniform_(0.5, 2.0)
        model.norm.bias.normal_(0, 1.0)
    weight, bias, eps = model.norm.weight.clone(), model.norm.bias.clone(), model.norm.eps
    head_shape = model.head.weight.shape
    apply_method(model, build_method(name, {"start_block": 2}))
    randomise_side(model)
    assert model.global_pool == "avg" and model.head.weight.shape == head_shape
    last = []
    handle = model.blocks[-1].register_forward_hook(lambda m, a, out: last.append(out.detach()))
    x = images()
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    patches = last[0][:, model.num_prefix_tokens:]
    official = model.head(torch.nn.functional.layer_norm(patches.mean(1), (patches.shape[-1],), weight, bias, eps))
    torch.testing.assert_close(logits, official)
    mistaken = model.head(torch.nn.functional.layer_norm(patches, (patches.shape[-1],), weight, bias, eps).mean(1))
    assert (logits - mistaken).abs().max() > 1e-3
    assert not any(p.requires_grad for p in model.fc_norm.parameters())  # the moved norm stays frozen


def test_pool_model_keeps_the_models_own_pooling_and_norm():
    kept = vit()
    norm = kept.norm
    apply_method(kept, build_method("dtl", {"start_block": 2, "pool": "model"}))
    assert kept.global_pool == "token" and kept.norm is norm


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("k", [3, 4, 5])  # the kernel sizes of the official VTAB scripts
def test_dtl_plus_convolves_patch_tokens_only_and_counts_d_k_squared(k):
    model = vit()
    applied = apply_method(model, build_method("dtl-plus", {"start_block": 2, "fusion_size": k}))
    assert applied.parameter_counts()["trainable"] == DEPTH * 2 * 48 * 2 + 48 * k * k
    side = model.dtl_side
    state = torch.randn(2, 1 + 16, 48)
    with torch.no_grad():
        out = side.side_output(state)
        act = state * torch.sigmoid(100.0 * state)
        torch.testing.assert_close(out[:, :1], act[:, :1])  # CLS: swish only
        grid = act[:, 1:].transpose(1, 2).reshape(2, 48, 4, 4)
        expected = torch.nn.functional.conv2d(grid, side.fusion.weight, padding="same", groups=48)
        torch.testing.assert_close(out[:, 1:], expected.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_identity_at_init_and_hooks_can_be_removed():
    model = vit()
    reference = copy.deepcopy(model)
    reference.norm = torch.nn.Identity()  # DTL moves the final norm after pooling: compare token streams
    apply_method(model, build_method("dtl-plus", {"start_block": 1}))
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), reference.forward_features(x), rtol=0, atol=0)
    randomise_side(model)
    with torch.no_grad():
        assert not torch.equal(model.forward_features(x), reference.forward_features(x))
    model.dtl_side.remove_hooks()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), reference.forward_features(x), rtol=0, atol=0)


def test_a_deep_copy_runs_its_own_side_network():
    model = vit()
    apply_method(model, build_method("dtl", {"start_block": 1}))
    twin = copy.deepcopy(model)
    randomise_side(twin)
    x = images()
    with torch.no_grad():
        before = model.forward_features(x)
        twin.forward_features(x)
        torch.testing.assert_close(model.forward_features(x), before, rtol=0, atol=0)
        assert not torch.equal(twin.forward_features(x), before)


def test_non_vit_models_are_refused():
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                             depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    with pytest.raises(MethodError, match="ViT-style"):
        apply_method(swin, build_method("dtl"))


@pytest.mark.parametrize("name, hparams, message", [
    ("dtl", {"rank": 0}, "dtl.rank must be >= 1"),
    ("dtl", {"beta": 0}, "dtl.beta must be a positive number"),
    ("dtl", {"pool": "max"}, "dtl.pool must be one of"),
    ("dtl-plus", {"fusion_size": 0}, "dtl-plus.fusion_size must be >= 1"),
    ("dtl", {"fusion_size": 3}, r"unknown hyper-parameter\(s\) \['fusion_size'\]"),
])
def test_bad_hyperparameters_are_named(name, hparams, message):
    with pytest.raises(MethodError, match=message):
        build_method(name, hparams)
