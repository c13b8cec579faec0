"""BAPAT specifics: PATT changes only its target thirds of the fused qkv output, the parts can be
switched off, and BitFit's part trains the backbone's biases but never the method's own."""

from __future__ import annotations

import pytest
import torch
from helpers.models import small_vit as _small_vit

from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.bapat import PattQKV


def small_vit():
    return _small_vit(depth=2, num_classes=4)


def test_patt_adds_to_k_and_v_only():
    base = torch.nn.Linear(48, 144)
    layer = PattQKV(base, 8, 0.2, ("k", "v"), True)
    x = torch.randn(2, 5, 48)
    delta = layer(x) - base(x)
    assert delta[..., :48].abs().max() == 0
    assert delta[..., 48:96].abs().max() > 0 and delta[..., 96:].abs().max() > 0
    torch.testing.assert_close(delta[..., 48:], 0.2 * layer.up(torch.tanh(layer.down(x))))


@pytest.mark.parametrize("hparams, expected", [
    ({"bitfit": False, "adapter_bottleneck": 0, "patt_dim": 4}, 2 * (48 * 4 + 4 + 4 * 96 + 96)),
    ({"bitfit": False, "adapter_bottleneck": 4, "patt_dim": 0}, 2 * (2 * 48 * 4 + 4 + 48)),
    ({"bitfit": False, "adapter_bottleneck": 0, "patt_dim": 4, "patt_bias": False}, 2 * (48 * 4 + 4 * 96)),
])
def test_parts_can_be_switched_off(hparams, expected):
    assert apply_method(small_vit(), build_method("bapat", hparams)).parameter_counts()["trainable"] == expected


def test_bitfit_part_trains_backbone_biases_not_method_ones():
    model = small_vit()
    applied = apply_method(model, build_method("bapat", {"adapter_bottleneck": 4, "patt_dim": 4}))
    selected = set(applied.method.select_backbone_parameters(model))
    assert "blocks.0.attn.qkv.base_layer.bias" in selected and "blocks.0.mlp.base_layer.fc1.bias" in selected
    owned = {f"{n}.{p}" for n, m in model.named_modules() if m in method_layers(model) for p, _ in m.method_parameters()}
    assert not selected & owned and "head.bias" not in selected


def test_everything_off_is_refused():
    with pytest.raises(MethodError, match="every part is switched off"):
        build_method("bapat", {"bitfit": False, "adapter_bottleneck": 0, "patt_dim": 0})
    with pytest.raises(MethodError, match="patt_targets"):
        build_method("bapat", {"patt_targets": ["k", "x"]})
