"""LAST: a true side network (frozen backbone untouched, no graph through its blocks), the paper's
bias-corrected representation u_m - sum_{i<m} z_i, group gap, demo settings."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers.models import meta_counts
from helpers.models import small_vit as _small_vit
from helpers.published import mean_head, published_params

import vpeft.backbones  # noqa: F401  (registers the demo ViT with timm)
from vpeft.methods import MethodError, apply_method, build_method, method_layers


def small_vit(depth=2):
    return _small_vit(depth=depth, num_classes=5)


def batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 5


def side(model):
    (layer,) = method_layers(model)
    return layer


def test_training_step_changes_no_backbone_tensor_and_blocks_carry_no_graph():
    model = small_vit()
    apply_method(model, build_method("last", {"rank": 4}))
    backbone = {n: p.detach().clone() for n, p in model.named_parameters()
                if not n.startswith(("last_side.", "head."))}
    assert all(not model.get_parameter(n).requires_grad for n in backbone)
    graph = []
    hooks = [b.register_forward_hook(lambda m, a, out: graph.append(out.requires_grad)) for b in model.blocks]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = batch()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for h in hooks:
        h.remove()
    assert graph == [False] * 4
    for n, before in backbone.items():
        assert torch.equal(model.get_parameter(n), before), f"{n} changed"
        assert model.get_parameter(n).grad is None


def test_identity_at_init_down_to_the_logits():
    model = small_vit().eval()
    reference = copy.deepcopy(model)
    apply_method(model, build_method("last", {"rank": 4}))
    x, _ = batch()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("gap, modules", [(1, 1), (2, 2)])
def test_norm_input_is_the_bias_corrected_side_stream(gap, modules):
    """u_0 = z_0, u_i = F_i(u_{i-1} + z_i); the final norm reads u_m - sum_{i<m} z_i."""
    model = small_vit(depth=4).eval()
    apply_method(model, build_method("last", {"rank": 4, "num_heads": 2, "gap": gap, "modules": modules}))
    layer = side(model)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.2)
    seen = {}
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("z0", a[0])),
             model.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("norm_in", a[0]))]
    outs = []
    hooks += [b.register_forward_hook(lambda m, a, o: outs.append(o)) for b in model.blocks]
    x, _ = batch()
    with torch.no_grad():
        model(x)
        z = [seen["z0"]] + [outs[i] for i in range(gap - 1, 4, gap)]
        u = z[0]
        for i, group in enumerate(layer.groups, start=1):
            u = u + z[i]
            for lsa in group:
                u = u + lsa(u)
        expected = u - sum(z[:-1])
    for h in hooks:
        h.remove()
    assert len(layer.groups) == 4 // gap
    torch.testing.assert_close(seen["norm_in"], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen["norm_in"], z[-1])


def test_gap_must_divide_the_depth():
    with pytest.raises(MethodError, match="gap=3 must divide the backbone depth 4"):
        apply_method(small_vit(depth=4), build_method("last", {"rank": 4, "gap": 3}))


@pytest.mark.parametrize("hparams, message", [
    ({"rank": 0}, "rank must be >= 1"),
    ({"rank": 6, "num_heads": 4}, "divisible by num_heads"),
    ({"gap": 0}, "gap must be >= 1"),
])
def test_bad_configs_are_refused(hparams, message):
    with pytest.raises(MethodError, match=message):
        build_method("last", hparams)


def test_rank_above_the_width_is_refused():
    with pytest.raises(MethodError, match="exceeds the backbone width 48"):
        apply_method(small_vit(), build_method("last", {"rank": 64}))


def test_defaults_train_on_the_demo_backbone():
    torch.manual_seed(0)
    model = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=8)
    applied = apply_method(model, build_method("last"))
    assert applied.matched == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "norm"]
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (4, 8)
    assert applied.parameter_counts()["trainable"] == 4 * (4 * 128 * 16 + 3 * 16 + 3 * 128)


def test_count_at_vit_b16_from_the_papers_shapes():
    """One LSA module per block (g = 1, T = 1) at r = 16 on ViT-B/16 (d = 768, 12 blocks): LayerNorm
    (2 x 768), W_q, W_k, W_v (768 x 16 + 16 each), W_up (16 x 768 + 768)."""
    per_module = 2 * 768 + 3 * (768 * 16 + 16) + (16 * 768 + 768)
    assert meta_counts("last")["trainable"] == 12 * per_module
    # the gap g groups blocks: g = 2 halves the modules, T = 2 doubles them
    assert meta_counts("last", {"gap": 2, "modules": 2})["trainable"] == 12 * per_module


def test_published_count_is_the_default_plus_the_vtab_head():
    # V-PETL's 0.66 M (from the LAST paper) reproduces only head-inclusive on VTAB; its FGVC 0.66 M is
    # the same number repeated (with the FGVC head it would be 0.80 M) -- see last.py
    count = meta_counts("last")["trainable"]
    assert round((count + mean_head("vtab")) / 1e6, 2) == published_params("vtab1k", "last") / 1e6
    assert round((count + mean_head("fgvc")) / 1e6, 2) != published_params("fgvc", "last") / 1e6
