"""FacT-TT / FacT-TK specifics: the tensor layout of the increments, shared factors, counts, refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from vpeft.config import load_method_configs
from vpeft.methods import MethodError, apply_method, build_method, method_layers
from vpeft.methods.fact import FactFactors, FactLinear

ROOT = Path(__file__).resolve().parents[1]
VTAB_TASKS = 19


def small_vit(depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                             depth=depth, num_heads=3, num_classes=5)


def randomise(model: torch.nn.Module) -> None:
    """Move every FacT tensor away from init (V = 0 makes every increment zero)."""
    with torch.no_grad():
        for layer in method_layers(model):
            for _, p in layer.method_parameters():
                p.normal_(0, 0.2)


@pytest.fixture(scope="module")
def vit_b16():
    """ViT-B/16 on the meta device: shapes only, so counting at real size costs no memory or init time."""
    with torch.device("meta"):
        return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)


def tk_count(r: int) -> int:
    return 1680 * r + r**3


def tt_count(r: int) -> int:
    return 1536 * r + 144 * r**2


@pytest.mark.parametrize("name, ranks, formula", [
    ("fact-tk", (8, 16, 32), tk_count),
    ("fact-tt", (4, 8, 16), tt_count),
])
def test_counts_at_vit_b16(name, ranks, formula, vit_b16):
    for r in ranks:
        model = copy.deepcopy(vit_b16)
        with torch.device("meta"):
            counts = apply_method(model, build_method(name, {"rank": r})).parameter_counts()
        assert counts["trainable"] == formula(r)
    assert tk_count(8) == 13_952


def test_per_task_ranks_give_the_published_means():
    """V-PETL's 0.07M FacT row (FacT-TK) and FacT-TT's 0.040M are means over the official per-task ranks."""
    methods = load_method_configs(ROOT / "config/methods", ROOT / "workflow/schemas/method.schema.yaml")
    means = {}
    for name, formula in (("fact-tk", tk_count), ("fact-tt", tt_count)):
        tasks = methods[name]["suites"]["vtab"]["tasks"]
        assert len(tasks) == VTAB_TASKS
        means[name] = round(sum(formula(t["hparams"]["rank"]) for t in tasks.values()) / VTAB_TASKS)
    assert means == {"fact-tk": 68_985, "fact-tt": 39_734}


@pytest.mark.parametrize("name", ["fact-tt", "fact-tk"])
def test_shared_factors_are_registered_once(name):
    model = small_vit()
    apply_method(model, build_method(name, {"rank": 4}))
    factors = model.fact
    assert isinstance(factors, FactFactors)
    wrappers = [m for m in model.modules() if isinstance(m, FactLinear)]
    assert len(wrappers) == 2 * 4 and all(w.factors is factors for w in wrappers)
    keys = list(model.state_dict())
    assert [k for k in keys if k.startswith("fact.")] == (
        ["fact.U", "fact.V", "fact.C", "fact.P"] if name == "fact-tk" else ["fact.U", "fact.V"])
    assert not any(".fact." in k or "_factors" in k for k in keys)
    own = {n for w in wrappers for n, _ in w.method_parameters()}
    assert own == (set() if name == "fact-tk" else {"cores"})
    assert factors.U.shape == (4, 48) and factors.V.shape == (48, 4) and not factors.V.any()
    if name == "fact-tk":
        assert factors.C.shape == (4, 4, 4) and factors.P.shape == (4, 2 * 12)  # 12 d x d slices per block


@pytest.mark.parametrize("name", ["fact-tt", "fact-tk"])
def test_increments_follow_the_tensor_layout(name):
    """Block b owns slices 12b .. 12b+11 of the 12L x d x d tensor: q, k, v, o, fc1 rows 0..3,
    fc2 columns 0..3, each s * V K^T U with K its own core (TT) or C x_3 P[:, j] (TK)."""
    model = small_vit().eval()
    scale = 2.5
    apply_method(model, build_method(name, {"rank": 4, "scale": scale}))
    randomise(model)
    f = model.fact
    d = 48
    j = 0
    for b, block in enumerate(model.blocks):
        parts = [(block.attn.qkv, "rows", 3), (block.attn.proj, "rows", 1),
                 (block.mlp.fc1, "rows", 4), (block.mlp.fc2, "cols", 4)]
        for layer, layout, n in parts:
            delta = layer.delta_weight()
            for i in range(n):
                if name == "fact-tk" and layer.mlp:  # official reshape: see the test below
                    j += 1
                    continue
                if name == "fact-tk":
                    core = torch.einsum("abk,k->ab", f.C, f.P[:, j])
                else:
                    core = layer.cores[i]
                expected = scale * f.V @ core.t() @ f.U
                got = delta[i * d:(i + 1) * d] if layout == "rows" else delta[:, i * d:(i + 1) * d]
                torch.testing.assert_close(got, expected)
                j += 1
            x = torch.randn(3, 5, layer.base_layer.in_features)
            with torch.no_grad():
                torch.testing.assert_close(layer(x), F.linear(x, layer.base_layer.weight + delta,
                                                              layer.base_layer.bias), rtol=1e-5, atol=1e-5)
        assert j == 12 * (b + 1)


def test_tucker_mlp_increments_are_the_official_reshape():
    """FacT-TK's fc1 / fc2 branches as the official `fact_forward_mlp` computes them: the r x r x 8
    tensor C @ P[:, idx:idx + 8] split into two halves, each reshaped to r x 4r, the fc1 branch read
    back as 4 r-wide groups and the fc2 input as 4 d-wide slices."""
    model = small_vit().eval()
    apply_method(model, build_method("fact-tk", {"rank": 4, "scale": 1.7, "dropout": 0.0}))
    randomise(model)
    f, r, d, s = model.fact, 4, 48, 1.7
    for b, block in enumerate(model.blocks):
        idx = 12 * b + 4  # after this block's q, k, v, o
        core = f.C @ f.P[:, idx:idx + 8]  # (r, r, 8)
        fc1_core, fc2_core = core[:, :, :4].reshape(r, 4 * r), core[:, :, 4:].reshape(r, 4 * r)
        x = torch.randn(2, 5, d)
        h = torch.randn(2, 5, 4 * d)
        with torch.no_grad():
            fc1_branch = ((x @ f.U.t() @ fc1_core).reshape(2, 5, 4, r) @ f.V.t()).reshape(2, 5, 4 * d) * s
            fc2_branch = ((h.reshape(2, 5, 4, d) @ f.U.t()).reshape(2, 5, 4 * r) @ fc2_core.t()) @ f.V.t() * s
            torch.testing.assert_close(block.mlp.fc1(x) - block.mlp.fc1.base_layer(x), fc1_branch,
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(block.mlp.fc2(h) - block.mlp.fc2.base_layer(h), fc2_branch,
                                       rtol=1e-4, atol=1e-5)
            # the paper's per-slice reading (slice i = C x_3 P[:, idx + i]) is a different increment
            paper = torch.einsum("abk,k->ab", f.C, f.P[:, idx])
            got = block.mlp.fc1.delta_weight()[:d]
            assert (got - s * f.V @ paper.t() @ f.U).abs().max() > 1e-3


def test_every_tucker_slice_and_core_entry_trains():
    model = small_vit()
    apply_method(model, build_method("fact-tk", {"rank": 4, "dropout": 0.0}))
    with torch.no_grad():
        model.fact.V.normal_(0, 0.1)
    x = torch.randn(4, 3, 32, 32)
    model(x).square().sum().backward()
    f = model.fact
    assert (f.P.grad.abs().sum(0) > 0).all(), "a slice of the tensor gets no gradient"
    assert (f.C.grad != 0).all() and (f.U.grad != 0).any() and (f.V.grad != 0).any()


@pytest.mark.parametrize("name", ["fact-tt", "fact-tk"])
def test_unmerge_restores_weights_and_merged_forward_skips_branch(name):
    model = small_vit().eval()
    method = build_method(name, {"rank": 4})
    apply_method(model, method)
    randomise(model)
    originals = {id(w): w.base_layer.weight.detach().clone() for w in method_layers(model) if isinstance(w, FactLinear)}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        method.merge(model)
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-4)
        method.merge(model)  # idempotent
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-4)
        method.unmerge(model)
    for w in method_layers(model):
        if isinstance(w, FactLinear):
            torch.testing.assert_close(w.base_layer.weight, originals[id(w)], rtol=0, atol=1e-5)


def test_dropout_follows_the_model_mode():
    model = small_vit().eval()
    apply_method(model, build_method("fact-tt", {"rank": 4, "dropout": 0.5}))
    assert not any(m.training for m in model.modules()), "injecting must not switch an eval model to train"
    randomise(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        model.train()
        torch.manual_seed(0)
        a = model.forward_features(x)
        torch.manual_seed(1)
        assert not torch.allclose(a, model.forward_features(x))


def test_depth_and_width_come_from_the_model():
    model = small_vit(depth=3)
    apply_method(model, build_method("fact-tk", {"rank": 2}))
    assert model.fact.P.shape == (2, 3 * 12)
    assert model.fact.U.shape == (2, 48)


def test_refusals_are_clear():
    with pytest.raises(MethodError, match="rank must be >= 1"):
        build_method("fact-tt", {"rank": 0})
    with pytest.raises(MethodError, match="scale must be a positive number"):
        build_method("fact-tk", {"scale": 0})
    with pytest.raises(MethodError, match=r"dropout must be in \[0, 1\)"):
        build_method("fact-tk", {"dropout": 1.0})
    with pytest.raises(MethodError, match="exceeds the model width 48"):
        apply_method(small_vit(), build_method("fact-tk", {"rank": 64}))
    model = small_vit()
    apply_method(model, build_method("fact-tt", {"rank": 2}))
    with pytest.raises(MethodError, match="applied twice"):
        apply_method(model, build_method("fact-tk", {"rank": 2}))
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                             depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3)
    with pytest.raises(MethodError, match="needs one width"):
        apply_method(swin, build_method("fact-tt", {"rank": 2}))


def test_defaults_are_the_most_frequent_official_settings():
    tt, tk = build_method("fact-tt").config, build_method("fact-tk").config
    assert (tt.rank, tt.scale, tt.dropout) == (16, 1.0, 0.1)
    assert (tk.rank, tk.scale, tk.dropout) == (32, 10.0, 0.1)
