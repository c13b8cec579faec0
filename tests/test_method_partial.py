"""Partial-k as VPT's official code: the last k blocks *and the final encoder norm* train."""

from __future__ import annotations

import timm
import torch

from vpeft.methods import apply_method, build_method


def small_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                             depth=3, num_heads=3, num_classes=5, **kwargs)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_partial_1_trains_the_last_block_the_final_norm_and_the_head_only():
    model = small_vit()
    counts = apply_method(model, build_method("partial", {"k": 1})).parameter_counts()
    block = {f"blocks.2.{n}" for n, _ in model.blocks[2].named_parameters()}
    assert trainable(model) == block | {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    assert counts["trainable"] == sum(p.numel() for p in model.blocks[2].parameters()) + 2 * 48


def test_the_final_norm_receives_gradient_and_moves():
    model = small_vit()
    apply_method(model, build_method("partial", {"k": 2}))
    before = model.norm.weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert model.norm.weight.grad is not None and model.norm.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(model.norm.weight, before)
    assert model.blocks[0].attn.qkv.weight.grad is None  # blocks before the last k stay frozen


def test_with_average_pooling_the_fc_norm_is_the_final_norm():
    model = small_vit(global_pool="avg", fc_norm=True)  # timm moves the final norm to fc_norm
    apply_method(model, build_method("partial", {"k": 1}))
    assert {"fc_norm.weight", "fc_norm.bias"} <= trainable(model)


def test_count_at_vit_b16_is_last_block_plus_final_norm():
    d, h = 768, 3072
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * h + h) + (h * d + d)
    counts = apply_method(model, build_method("partial", {"k": 1})).parameter_counts()
    assert counts["trainable"] == block + 2 * d == 7_089_408
