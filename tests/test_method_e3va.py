"""E3VA: the adapters read the attention and MLP branch outputs but never write into the blocks (a
highway beside them, joined only at the output norm); counts with LoRand adapters at m = d / 2
reproduce the published Swin-B and Swin-L numbers."""

from __future__ import annotations

import copy

import torch
from helpers.models import meta_counts
from helpers.models import small_vit as _small_vit
from helpers.published import published_params

from vpeft.methods import apply_method, build_method, method_layers

SWIN_B = [128] * 2 + [256] * 2 + [512] * 18 + [1024] * 2  # width of each of the 24 blocks
SWIN_L = [192] * 2 + [384] * 2 + [768] * 18 + [1536] * 2


def adapters_count(widths, alpha=2, beta=8):
    """Two adapters per block (one fed by the attention, one by the MLP), each LoRand's: per
    projection alpha branches P (d x beta), Q (beta x m), a shared beta x beta kernel, a bias; m = d / 2."""
    return sum(2 * (alpha * (2 * beta * (d + d // 2) + beta * beta) + d // 2 + d) for d in widths)


def test_blocks_are_untouched_and_the_norm_reads_the_last_block_plus_every_adapter():
    model = _small_vit(depth=2, num_classes=3).eval()
    reference = copy.deepcopy(model)
    apply_method(model, build_method("e3va", {"kernel_rank": 3}))
    (highway,) = method_layers(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in highway.parameters():
            p.normal_(0, 0.3)
    seen = {}
    model.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("norm_in", a[0]))
    blocks = []
    for b in model.blocks:
        b.register_forward_hook(lambda m, a, out: blocks.append(out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        # the frozen model's block outputs and branch outputs, computed without the method
        h = reference.patch_embed(x)
        h = reference.norm_pre(reference.patch_drop(reference._pos_embed(h)))
        expected_blocks, highway_sum = [], 0
        for i, block in enumerate(reference.blocks):
            attn_branch = block.ls1(block.attn(block.norm1(h)))
            h = h + attn_branch
            mlp_branch = block.ls2(block.mlp(block.norm2(h)))
            h = h + mlp_branch
            expected_blocks.append(h)
            highway_sum = (highway_sum + highway.adapters[2 * i](attn_branch)
                           + highway.adapters[2 * i + 1](mlp_branch))
    for got, want in zip(blocks, expected_blocks):
        torch.testing.assert_close(got, want)  # an adapter inside the residual would change these
    torch.testing.assert_close(seen["norm_in"], expected_blocks[-1] + highway_sum)
    assert not torch.allclose(seen["norm_in"], expected_blocks[-1])


def test_published_counts_are_the_adapters_at_half_width():
    for arch, widths, table in (("swin_base_patch4_window7_224", SWIN_B, "coco"),
                                ("swin_large_patch4_window7_224", SWIN_L, "voc")):
        count = meta_counts("e3va", {"train_output_norms": False}, arch=arch)["trainable"]
        assert count == adapters_count(widths)
        assert round(count / 1e6, 2) == published_params(table, "e3va") / 1e6, arch
    # the trained output norms are left out of the published number: with even one of them Swin-L
    # rounds to 1.80 M
    with_norm = meta_counts("e3va", arch="swin_large_patch4_window7_224")["trainable"]
    assert with_norm == adapters_count(SWIN_L) + 2 * 1536
    assert round(with_norm / 1e6, 2) != published_params("voc", "e3va") / 1e6


def test_vit_b16_count():
    d = 768
    assert meta_counts("e3va")["trainable"] == adapters_count([d] * 12) + 2 * d  # + the final norm
