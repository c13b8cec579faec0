"""The method-layer API: `ModuleRef` for modules a layer only reads, layer-owned hooks, and a deep copy
of every applied model that computes and trains with its own tensors only."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import small_swin
from test_methods import CASES, SWIN_METHODS, apply_case, batch, small_vit

from vpeft.methods import MethodError, MethodLayer, ModuleRef, apply_method, method_layers
from vpeft.methods.base import PeftMethod, check_references

# the dense track's Swin methods beyond the generic ones (config/config.yaml dense suites)
SWIN_CASES = sorted(set(SWIN_METHODS) | {"lorand", "e3va", "mona"})
BACKBONES = [("vit", n) for n in sorted(CASES)] + [("swin", n) for n in SWIN_CASES]


def applied_model(backbone: str, name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    if backbone == "vit":
        model, (x, y) = small_vit(), batch()
        apply_case(name, model, CASES[name].small)
    else:
        model = small_swin(num_classes=3)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(2, 3, 56, 56, generator=g), torch.tensor([0, 1])
        apply_case(name, model, CASES[name].small, num_classes=3, images=(x, y))
    return model.eval(), x, y  # eval: no dropout or subnet sampling, so two runs compare exactly


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@torch.no_grad()
def perturb_method_tensors(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every trainable tensor except the head (the head alone for methods without any)."""
    g = torch.Generator().manual_seed(seed)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    own = [p for n, p in trainable if not n.startswith("head.")] or [p for _, p in trainable]
    for p in own:
        p.add_(torch.randn(p.shape, generator=g).to(p.dtype))


@pytest.mark.parametrize("backbone, name", BACKBONES)
def test_a_deep_copy_computes_and_trains_with_its_own_tensors(backbone, name):
    model, x, y = applied_model(backbone, name)
    hooks = hook_count(model)
    twin = copy.deepcopy(model)
    assert hook_count(twin) == hooks
    with torch.no_grad():
        before = model(x)
        assert torch.equal(twin(x), before), f"{name}: the copy computes something else"

    torch.nn.functional.cross_entropy(twin(x), y).backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == [], \
        f"{name}: a backward on the copy reached the original's tensors"
    for n, p in twin.named_parameters():
        assert (p.grad is not None) == p.requires_grad, f"{name}: copy's {n} (trainable={p.requires_grad})"

    perturb_method_tensors(twin, seed=1)
    with torch.no_grad():
        changed = twin(x)
        assert not torch.equal(changed, before), f"{name}: the copy's tensors do not drive the copy"
        assert torch.equal(model(x), before), f"{name}: editing the copy changed the original's output"
        perturb_method_tensors(model, seed=2)
        assert torch.equal(twin(x), changed), f"{name}: the copy's output depends on the original's tensors"

    for layer in method_layers(twin):
        layer.remove_hooks()
    assert hook_count(twin) == 0, f"{name}: the copy keeps hooks its layers cannot remove"
    assert hook_count(model) == hooks, f"{name}: removing the copy's hooks removed the original's"


class _Reader(MethodLayer):
    """A toy layer that reads a frozen Linear and hooks it."""

    def __init__(self, frozen: torch.nn.Module):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self._frozen = ModuleRef(frozen)
        self.add_forward_hook(frozen, self._rescale)

    def _rescale(self, module, args, output):
        return output * self.scale


class _ReaderMethod(PeftMethod):
    name = "reader"
    category = "addition"

    def __init__(self, outside: bool = False):
        self.outside = outside

    def inject(self, model):
        target = torch.nn.Linear(2, 2) if self.outside else model[0]
        model.add_module("reader", _Reader(target))
        return ["0"]


def test_a_module_ref_is_neither_a_child_nor_a_parameter_of_the_layer():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    apply_method(model, _ReaderMethod())
    layer = model.reader
    assert [n for n, _ in layer.named_parameters()] == ["scale"]
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "reader.scale"]
    assert not model[0].weight.requires_grad
    assert layer._frozen.module is model[0]
    twin = copy.deepcopy(model)
    assert twin.reader._frozen.module is twin[0]


def test_a_module_ref_outside_the_model_is_refused():
    with pytest.raises(MethodError, match="reader._frozen refers to a Linear that is not part of the model"):
        apply_method(torch.nn.Sequential(torch.nn.Linear(2, 2)), _ReaderMethod(outside=True))
    check_references(torch.nn.Sequential(torch.nn.Linear(2, 2)))  # no method layers: nothing to check


@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_a_layer_refuses_plain_containers_of_modules(kind):
    value = {"a": torch.nn.Linear(2, 2)} if kind is dict else kind([torch.nn.Linear(2, 2)])
    layer = MethodLayer()
    with pytest.raises(MethodError, match="as ModuleRef"):
        layer.blocks = value
    layer.handles = [1, 2]  # containers without modules stay plain attributes


def test_a_hook_must_be_a_method_of_the_layer():
    frozen = torch.nn.Linear(2, 2)
    layer = _Reader(frozen)
    other = _Reader(torch.nn.Linear(2, 2))
    for hook in (lambda module, args, output: output, other._rescale):
        with pytest.raises(MethodError, match="bound method of the layer itself"):
            layer.add_forward_hook(frozen, hook)
    layer.remove_hooks()
    assert hook_count(frozen) == 0
