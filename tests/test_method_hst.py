"""HST as published (AFeng-x/HST `models/vit_hsn.py`): meta tokens prepended to every block's input,
block LayerNorms trained; the `readout` side-tuning variant (frozen backbone, no graph through its
blocks, meta-token readout equal to the frozen block on a prepended token); head delivery, stage split."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import yaml

import vpeft.backbones  # noqa: F401  (registers the demo ViT with timm)
from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.hst import stage_groups

SMALL = {"stage_dims": (8, 16), "num_heads": (2, 2)}
READOUT = dict(SMALL, meta_mode="readout")
CONFIG = Path(__file__).resolve().parents[1] / "config" / "methods" / "hst.yaml"


def small_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                             depth=2, num_heads=3, num_classes=5, **kwargs)


def batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 5


def side(model):
    (layer,) = method_layers(model)
    return layer


def test_readout_variant_changes_no_backbone_tensor_and_blocks_carry_no_graph():
    model = small_vit()
    apply_method(model, build_method("hst", READOUT))
    backbone = {n: p.detach().clone() for n, p in model.named_parameters()
                if not n.startswith(("hst_side.", "head."))}
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
    assert side(model).meta.grad.abs().sum() > 0


def test_meta_readout_equals_the_frozen_block_on_a_prepended_token():
    model = small_vit().eval()
    apply_method(model, build_method("hst", dict(READOUT, meta_tokens=2)))
    layer = side(model)
    with torch.no_grad():
        layer.meta.normal_()
    inputs, readouts = {}, {}
    pre = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0])) for i, b in
           enumerate(model.blocks)]
    original = layer.side_forward

    def spy():
        for j in range(len(model.blocks)):
            readouts[j] = layer.meta_readout(j, inputs[j].shape[0])
        return original()

    layer.side_forward = spy
    x, _ = batch()
    with torch.no_grad():
        model(x)
        for h in pre:
            h.remove()
        for j, block in enumerate(model.blocks):
            meta = layer.meta[j].expand(x.shape[0], -1, -1)
            expected = block(torch.cat([meta, inputs[j]], dim=1))[:, :2]
            torch.testing.assert_close(readouts[j], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_head_sees_the_side_feature_in_any_token_layout(pool):
    model = small_vit(global_pool=pool).eval()
    reference = copy.deepcopy(model)
    apply_method(model, build_method("hst", SMALL))
    x, _ = batch()
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == reference.forward_features(x).shape
        assert torch.equal(tokens, tokens[:, :1].expand_as(tokens))  # every position holds the feature
        assert tokens[..., 16:].abs().sum() == 0 and tokens[..., :16].abs().sum() > 0  # zero-padded d_S
        feature = tokens[:, 0]
        expected = model.head(model.fc_norm(feature))
        torch.testing.assert_close(model(x), expected)


def test_backbone_features_steer_the_side_network():
    model = small_vit().eval()
    apply_method(model, build_method("hst", SMALL))
    x, _ = batch()
    with torch.no_grad():
        before = model(x)
        model.blocks[1].mlp.fc2.bias.add_(1.0)  # change only what the last block hands to the bridge
        assert not torch.allclose(model(x), before)


def test_batch_of_one_trains():
    model = small_vit().train()
    apply_method(model, build_method("hst", SMALL))
    model(batch(1)[0]).sum().backward()


def test_stage_split_matches_the_paper_and_refuses_too_many_stages():
    assert stage_groups(12, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]  # block indices 2, 5, 8, 11
    assert stage_groups(5, 2) == [[0, 1], [2, 3, 4]]
    assert stage_groups(4, 4) == [[0], [1], [2], [3]]
    with pytest.raises(MethodError, match="4 side stages need at least 4 backbone blocks"):
        apply_method(small_vit(), build_method("hst"))


@pytest.mark.parametrize("hparams, message", [
    ({"stage_dims": (8, 16), "num_heads": (2,)}, "one entry per stage"),
    ({"stage_dims": (8, 15), "num_heads": (2, 2)}, "divisible by its heads"),
    ({"stage_dims": "8,16", "num_heads": "2,2", "meta_tokens": 0}, "meta_tokens must be >= 1"),
])
def test_bad_configs_are_refused(hparams, message):
    with pytest.raises(MethodError, match=message):
        build_method("hst", hparams)


def test_last_stage_wider_than_the_backbone_is_refused():
    with pytest.raises(MethodError, match="exceeds the backbone width 48"):
        apply_method(small_vit(), build_method("hst", {"stage_dims": (8, 64), "num_heads": (2, 2)}))


def test_string_hparams_from_the_cli_are_integers():
    method = build_method("hst", {"stage_dims": "8,16", "num_heads": "2,2"})
    assert method.config.stage_dims == (8, 16) and method.config.num_heads == (2, 2)


def test_vtab_mini_settings_train_on_the_demo_backbone():
    hparams = yaml.safe_load(CONFIG.read_text())["suites"]["vtab-mini"]["hparams"]
    torch.manual_seed(0)
    model = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=8)
    applied = apply_method(model, build_method("hst", hparams))
    assert side(model).groups == [[0], [1], [2], [3]]
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    out.sum().backward()
    assert out.shape == (4, 8)
    assert applied.parameter_counts()["trainable"] == 47_480 + 4 * 4 * 128  # + block norms (depth 4, D 128)


def _stream_outputs(model):
    """Each block's output as the next block sees it (hooks registered after HST's)."""
    seen = []
    handles = [b.register_forward_hook(lambda m, a, out: seen.append(out)) for b in model.blocks]
    return seen, handles


def test_patch_tokens_attend_to_the_prepended_meta_token():
    """Official forward: x = blk(cat([meta_j, x]))[:, M:] -- changing meta token 0 changes block 0's
    patch-token outputs (the readout variant would leave them untouched)."""
    model = small_vit().eval()
    apply_method(model, build_method("hst", SMALL))
    layer = side(model)
    x, _ = batch()
    with torch.no_grad():
        seen, handles = _stream_outputs(model)
        model(x)
        before = [t.clone() for t in seen]
        layer.meta[0].normal_()  # (a constant shift would vanish in LN1)
        seen.clear()
        model(x)
        for h in handles:
            h.remove()
    assert before[0].shape == (6, 17, 48)  # the meta token is dropped again before the next block
    assert (seen[0][:, 1:] - before[0][:, 1:]).abs().max() > 1e-4


def test_each_block_computes_the_official_prepended_sequence():
    model = small_vit().eval()
    apply_method(model, build_method("hst", dict(SMALL, meta_tokens=2)))
    layer = side(model)
    inputs = {}
    pre = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0])) for i, b in
           enumerate(model.blocks)]  # registered after HST's: sees the prepended sequence
    seen, handles = _stream_outputs(model)
    x, _ = batch()
    with torch.no_grad():
        model(x)
        stream = model.patch_embed(x)
        stream = model._pos_embed(stream)
        for j, block in enumerate(model.blocks):
            meta = layer.meta[j].expand(6, -1, -1)
            torch.testing.assert_close(inputs[j], torch.cat([meta, stream], dim=1))
            out = block.forward(torch.cat([meta, stream], dim=1))  # .forward: the plain block, no hooks
            stream = out[:, 2:]
            torch.testing.assert_close(seen[j], stream, rtol=1e-5, atol=1e-5)
    for h in pre + handles:
        h.remove()


def test_block_norms_train_and_the_count_is_the_official_one():
    model = small_vit()
    applied = apply_method(model, build_method("hst", SMALL))
    norms = {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.requires_grad}
    assert norms == {f"blocks.{i}.{m}.{t}" for i in range(2) for m in ("norm1", "norm2") for t in ("weight", "bias")}
    assert not any(p.requires_grad for n, p in model.named_parameters()
                   if n.startswith(("blocks.", "patch_embed", "pos_embed", "cls_token", "norm.")) and n not in norms)
    x, y = batch()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in norms)
    assert side(model).meta.grad[0].abs().sum() > 0
    assert applied.method.frozen_prefix_blocks(model) == 0 and applied.method.needs_backbone_grad
    readout = small_vit()
    counts = apply_method(readout, build_method("hst", READOUT)).parameter_counts()["trainable"]
    assert applied.parameter_counts()["trainable"] == counts + 2 * 4 * 48


def test_count_at_vit_b16_is_the_official_codes():
    """727,976 side network + meta tokens, + 36,864 block LayerNorms = 764,840 (official model, head excluded)."""
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
    counts = apply_method(model, build_method("hst")).parameter_counts()
    assert counts["trainable"] == 727_976 + 12 * 4 * 768 == 764_840
