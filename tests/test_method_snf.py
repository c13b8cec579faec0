"""SNF: invertible flows replace the identity shortcuts of every block; the residual branches stay frozen."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers.models import meta_counts
from helpers.models import small_vit as _small_vit
from helpers.published import mean_head, published_params

from vpeft.methods import MethodError, apply_method, build_method
from vpeft.methods.snf import ShortcutFlow, ShortcutFlowBlock


def small_vit():
    return _small_vit(depth=2, num_classes=5).eval()


def test_flow_is_affine_then_planar():
    torch.manual_seed(0)
    flow = ShortcutFlow(6, 2, 0.5)
    with torch.no_grad():
        flow.mu.normal_()
        flow.log_sigma.normal_(0, 0.3)
    x = torch.randn(3, 4, 6)
    z = flow.mu + flow.log_sigma.exp() * x
    for k in range(2):
        z = z + flow.planar_s[k] * torch.tanh(z @ flow.planar_w[k] + flow.planar_b[k]).unsqueeze(-1)
    torch.testing.assert_close(flow(x), z)


def test_log_det_matches_autograd_jacobian():
    torch.manual_seed(1)
    flow = ShortcutFlow(5, 3, 0.4).double()
    x = torch.randn(5, dtype=torch.double)
    jac = torch.autograd.functional.jacobian(flow, x)
    torch.testing.assert_close(flow.log_abs_det_jacobian(x), torch.linalg.slogdet(jac).logabsdet)


def test_block_uses_flows_on_shortcuts_only():
    model = small_vit()
    block = copy.deepcopy(model.blocks[0])
    apply_method(model, build_method("snf", {"flow_length": 1}))
    wrapped = model.blocks[0]
    assert isinstance(wrapped, ShortcutFlowBlock)
    with torch.no_grad():
        for flow in wrapped.flows.values():
            flow.mu.normal_()
            flow.log_sigma.normal_(0, 0.2)
        x = torch.randn(2, 17, 48)
        f1, f2 = wrapped.flows["attn"], wrapped.flows["mlp"]
        y = f1(x) + block.attn(block.norm1(x))          # branch reads the un-flowed x
        z = f2(y) + block.mlp(block.norm2(y))
        torch.testing.assert_close(wrapped(x), z)


def test_identity_flows_give_the_frozen_model():
    model = small_vit()
    reference = copy.deepcopy(model)
    apply_method(model, build_method("snf", {"flow_length": 2}))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ShortcutFlow):
                module.planar_s.zero_()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_default_is_the_abstracts_0036m():
    """The abstract: "with only 0.036M parameters" at ViT-B/16. Two affine flows (mu, log_sigma: 2 x 768)
    per block, on the attention and the MLP shortcut, in 12 blocks; no planar flow."""
    from_paper = 2 * 12 * (2 * 768)  # shortcuts x blocks x (mu + log_sigma)
    assert meta_counts("snf")["trainable"] == from_paper
    assert from_paper // 1000 == 36  # printed "0.036M": 36,864 cut (not rounded) to three decimals


@pytest.mark.parametrize("flow_length", [1, 16])
def test_every_planar_flow_adds_w_s_and_b_per_shortcut(flow_length):
    # the released PlanarFlow holds weight (1, d), scale (1, d) and bias (1); 16 is set_snf's default
    affine, planar = 2 * 12 * 2 * 768, 2 * 12 * (768 + 768 + 1)
    assert meta_counts("snf", {"flow_length": flow_length})["trainable"] == affine + flow_length * planar


def test_v_petl_count_is_one_planar_flow_plus_the_fgvc_head():
    # V-PETL's 0.25 M is not the paper's headline count: it counts the head, and only K = 1 rounds to it
    counts = {k: meta_counts("snf", {"flow_length": k})["trainable"] + mean_head("fgvc") for k in (0, 1, 2)}
    assert [k for k, n in counts.items() if round(n / 1e6, 2) == published_params("fgvc", "snf") / 1e6] == [1]


def test_default_affine_shortcut_is_invertible_and_the_model_starts_frozen():
    """The paper's "information-preserving" flow: the shortcut can be inverted exactly (a plain learnable
    scale could reach 0 and lose information; exp(log_sigma) cannot), and at the official init the model
    is exactly the frozen one."""
    model = small_vit()
    reference = copy.deepcopy(model)
    apply_method(model, build_method("snf"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        flow = model.blocks[0].flows["attn"]
        assert flow.flow_length == 0
        flow.mu.normal_()
        flow.log_sigma.normal_(0, 3.0)  # any real log_sigma gives a positive scale
        h = torch.randn(4, 48, dtype=torch.double)
        out = flow.double()(h)
        torch.testing.assert_close((out - flow.mu) / flow.log_sigma.exp(), h)


def test_bad_settings_and_models_are_refused():
    with pytest.raises(MethodError, match="shortcuts"):
        build_method("snf", {"shortcuts": ["ffn"]})
    with pytest.raises(MethodError, match="flow_length"):
        build_method("snf", {"flow_length": -1})
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                             depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    with pytest.raises(MethodError, match="timm ViT"):
        apply_method(swin, build_method("snf"))
