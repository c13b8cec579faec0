"""LST: the frozen backbone gets no graph and no update; ladders, gates, pruned init and the head's input."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from vpeft.methods import MethodError, apply_method, build_method
from vpeft.methods.lst import residual_channels

DEPTH, WIDTH, HEADS = 3, 48, 3


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=5).eval()


def batch(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 5


def backbone_state(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()
            if not n.startswith(("lst_side.", "head."))}


def test_backbone_blocks_carry_no_graph_and_a_training_step_changes_no_backbone_tensor():
    model = vit().train()
    apply_method(model, build_method("lst", {"reduction_factor": 4}))
    before = backbone_state(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    flags = []
    handles = [b.register_forward_hook(lambda m, a, out: flags.append(out.requires_grad))
               for b in model.blocks]
    handles.append(model.norm.register_forward_pre_hook(lambda m, a: flags.append(a[0].requires_grad)))
    x, y = batch()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for h in handles:
        h.remove()
    assert flags == [False] * (2 * (DEPTH + 1)), "a backbone activation carries autograd history"
    for n, p in model.named_parameters():
        if not n.startswith(("lst_side.", "head.")):
            assert not p.requires_grad and p.grad is None, n
    after = backbone_state(model)
    assert after.keys() == before.keys()
    for n in before:
        assert torch.equal(after[n], before[n]), f"training changed backbone tensor {n}"
    assert all(p.grad is not None for p in model.lst_side.parameters())


def test_head_reads_the_up_projected_side_state_built_from_gated_ladders():
    model = vit()
    reference = copy.deepcopy(model)
    apply_method(model, build_method("lst", {"reduction_factor": 4}))
    side = model.lst_side
    with torch.no_grad():
        side.gate_alpha.copy_(torch.tensor([-0.2, 0.05, 0.3]))  # distinct gates per ladder
    acts = []
    handles = [reference.blocks[0].register_forward_pre_hook(lambda m, a: acts.append(a[0]))]
    handles += [b.register_forward_hook(lambda m, a, out: acts.append(out)) for b in reference.blocks]
    x, _ = batch()
    with torch.no_grad():
        backbone = reference.forward_features(x)
        s = side.first_down(acts[0])
        for i in range(DEPTH):
            mu = torch.sigmoid(side.gate_alpha[i] / 0.1)
            s = side.side_blocks[i](mu * s + (1 - mu) * side.downs[i](acts[i + 1]))
        expected = side.up(side.side_norm(s))
        got = model.forward_features(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert got.shape == backbone.shape
        # the unchanged timm head pools (CLS token) and classifies the side features
        torch.testing.assert_close(model(x), model.head(expected[:, 0]))


def test_gates_start_at_one_half_and_merge_last_mixes_backbone_features():
    model = vit()
    reference = copy.deepcopy(model)
    applied = apply_method(model, build_method("lst", {"reduction_factor": 4, "merge_last": True}))
    plain = apply_method(vit(), build_method("lst", {"reduction_factor": 4})).parameter_counts()["trainable"]
    assert applied.parameter_counts()["trainable"] == plain + 1
    torch.testing.assert_close(model.lst_side.gates(), torch.full((DEPTH,), 0.5))
    x, _ = batch()
    side_only = copy.deepcopy(model)
    side_only.lst_side.merge_alpha = None
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x),
                                   0.5 * side_only.forward_features(x) + 0.5 * reference.forward_features(x))


def test_side_blocks_are_magnitude_pruned_sub_matrices_of_the_backbone():
    model = vit()
    blocks = copy.deepcopy(model.blocks)
    apply_method(model, build_method("lst", {"reduction_factor": 4}))
    side = model.lst_side
    head_dim, head_dim_s = WIDTH // HEADS, WIDTH // HEADS // 4
    res = side.residual_index
    assert res.numel() == HEADS * head_dim_s == side.side_norm.weight.numel()
    torch.testing.assert_close(res, residual_channels(blocks, res.numel()))
    for blk, sb in zip(blocks, side.side_blocks):
        wq, wk, wv = (w[:, res] for w in blk.attn.qkv.weight.chunk(3))
        wo = blk.attn.proj.weight[res]
        score = (wq.abs().sum(1) * wk.abs().sum(1) * wv.abs().sum(1) * wo.abs().sum(0)).view(HEADS, head_dim)
        kept = []
        for h in range(HEADS):  # per head, the head_dim // r dims with the largest magnitude product
            top = torch.topk(score[h], head_dim_s).indices.sort().values + h * head_dim
            kept.append(top)
        att = torch.cat(kept)
        torch.testing.assert_close(sb.qkv.weight, torch.cat([wq[att], wk[att], wv[att]]))
        torch.testing.assert_close(sb.proj.weight, wo[:, att])
        torch.testing.assert_close(sb.proj.bias, blk.attn.proj.bias[res])
        torch.testing.assert_close(sb.norm1.weight, blk.norm1.weight[res])
        units = sb.fc1.out_features
        assert units == blk.mlp.fc1.out_features // 4
        rows = [(blk.mlp.fc1.weight[j, res] == sb.fc1.weight[i]).all().item() for i, j in enumerate(
            torch.topk(blk.mlp.fc1.weight[:, res].abs().sum(1) * blk.mlp.fc2.weight[res].abs().sum(0),
                       units).indices.sort().values)]
        assert all(rows)


def test_residual_channels_prefer_the_largest_weights():
    model = vit()
    with torch.no_grad():
        for blk in model.blocks:
            blk.mlp.fc1.weight[:, [5, 17, 40]] *= 100.0
    assert set(residual_channels(model.blocks, 3).tolist()) == {5, 17, 40}


def test_random_init_option_skips_the_pruned_copy():
    model = vit()
    apply_method(model, build_method("lst", {"reduction_factor": 4, "pruned_init": False}))
    assert not hasattr(model.lst_side, "residual_index")
    torch.testing.assert_close(model.lst_side.side_blocks[0].norm1.weight, torch.ones(WIDTH // 4))


def test_count_formula_at_small_width():
    r, L, d, h = 4, DEPTH, WIDTH, 4 * WIDTH
    ds, hs = HEADS * (d // HEADS // r), h // r
    formula = (L * (4 * ds * ds + 2 * ds * hs + 9 * ds + hs) + (L + 1) * (d * ds + ds) + L + 2 * ds
               + ds * d + d)
    counts = apply_method(vit(), build_method("lst", {"reduction_factor": r})).parameter_counts()
    assert counts["trainable"] == formula


def test_hooks_are_kept_and_removing_them_restores_the_backbone():
    model = vit()
    reference = copy.deepcopy(model)
    apply_method(model, build_method("lst", {"reduction_factor": 4}))
    assert len(model.lst_side.hook_handles) == DEPTH + 2
    model.lst_side.remove_hooks()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    x, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), reference.forward_features(x), rtol=0, atol=0)


def test_refuses_models_it_cannot_prune_and_bad_settings():
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                             depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    with pytest.raises(MethodError, match="ViT-style"):
        apply_method(swin, build_method("lst"))
    qk = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                           depth=1, num_heads=3, num_classes=3, qk_norm=True)
    with pytest.raises(MethodError, match="not a plain timm ViT block"):
        apply_method(qk, build_method("lst"))
    with pytest.raises(MethodError, match="leaves no side width"):
        apply_method(vit(), build_method("lst", {"reduction_factor": 32}))
    with pytest.raises(MethodError, match="gate_temperature must be a positive number"):
        build_method("lst", {"gate_temperature": 0})
