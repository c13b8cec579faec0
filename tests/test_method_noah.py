"""NOAH: subnet formula, prompt layout, supernet slicing (weight entanglement), search stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from helpers.models import small_vit as _small_vit

from vpeft.config import load_yaml
from vpeft.engine.noah_search import search_subnet, train_supernet
from vpeft.engine.train import with_searched_hparams
from vpeft.methods import MethodError, apply_method, build_method
from vpeft.methods.noah import (
    NoahConfig,
    resolve_depth_choices,
    subnet_parameter_count,
    subnet_state_dict,
)

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("prompt_dims", "lora_ranks", "adapter_dims")


def small_vit(depth: int = 2, num_classes: int = 5):
    return _small_vit(depth=depth, num_classes=num_classes)


def images(n: int = 4):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def formula(subnet: dict, d: int) -> int:
    return sum(p * d + 4 * d * r + (2 * d * a + a + d if a else 0)
               for p, r, a in zip(subnet["prompt_dims"], subnet["lora_ranks"], subnet["adapter_dims"]))


def test_config_broadcasts_coerces_and_validates():
    assert NoahConfig().subnet(3) == {k: (5, 5, 5) for k in KEYS}
    assert NoahConfig.from_dict({"lora_ranks": "1,0"}).lora_ranks == (1, 0)
    assert resolve_depth_choices((0.25, 0.5, 0.75, 1.0), 12) == (3, 6, 9, 12)
    assert resolve_depth_choices((0.25, 0.5, 0.75, 1.0), 4) == (1, 2, 3, 4)
    with pytest.raises(MethodError, match="every dim of the subnet is 0"):
        NoahConfig(prompt_dims=(0,), lora_ranks=(0,), adapter_dims=(0,))
    with pytest.raises(MethodError, match="depth_choices"):
        NoahConfig(depth_choices=(3, 6))
    with pytest.raises(MethodError, match="mode"):
        build_method("noah", {"mode": "super"})
    with pytest.raises(MethodError, match="has 3 values but the model has 2 blocks"):
        apply_method(small_vit(), build_method("noah", {"lora_ranks": (1, 2, 3)}))


def test_subnet_count_follows_formula_with_absent_modules():
    subnet = {"prompt_dims": (0, 4, 1), "lora_ranks": (3, 0, 2), "adapter_dims": (0, 0, 6)}
    model = small_vit(depth=3)
    applied = apply_method(model, build_method("noah", subnet))
    expected = 5 * 48 + 4 * 48 * 5 + (2 * 48 * 6 + 6 + 48)
    assert applied.parameter_counts()["trainable"] == expected == formula(subnet, 48)
    assert subnet_parameter_count(subnet, 48) == expected == model.noah.active_parameter_count()
    assert applied.method.frozen_prefix_blocks(model) == 0
    # Nothing in block 0: it carries no graph, and the method says so.
    later = {"prompt_dims": (0, 2, 0), "lora_ranks": (0, 1, 0), "adapter_dims": (0, 0, 0)}
    assert build_method("noah", later).frozen_prefix_blocks(small_vit(depth=3)) == 1


def test_prompts_are_appended_replaced_carried_and_removed():
    """NOAH's block: prompts replace the previous block's p_{i-1} tokens, or are appended when
    p_{i-1} = 0, so a zero between non-zero depths keeps the earlier prompts in the sequence."""
    model = small_vit(depth=4).eval()
    apply_method(model, build_method("noah", {"prompt_dims": (2, 0, 3, 1), "lora_ranks": (1,), "adapter_dims": (1,)}))
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[1], out.shape[1])))
    with torch.no_grad():
        out = model.forward_features(images())
    # 1 CLS + 16 patches; block 0 appends 2, block 1 carries them, block 2 appends its 3 (p_1 = 0: the
    # 2 stay), block 3 replaces block 2's 3 by its 1.
    assert [s[0] for s in seen] == [19, 19, 22, 20]
    assert out.shape[1] == 17
    with torch.no_grad():  # the prompts sit at the end of the sequence: CLS stays at index 0
        prompt = model.noah.prompts["0"]
        assert prompt.shape == (2, 48)


def test_supernet_sampling_changes_active_dims_and_count():
    model = small_vit(depth=4)
    applied = apply_method(model, build_method("noah", {"mode": "supernet"}))
    controller = model.noah
    # Largest tensors everywhere: 10 of each in every block, all of them trainable.
    largest = {k: (10,) * 4 for k in KEYS}
    assert applied.parameter_counts()["trainable"] == formula(largest, 48) == controller.active_parameter_count()
    g = torch.Generator().manual_seed(0)
    subnets = [controller.sample_active(g) for _ in range(8)]
    assert len({tuple(tuple(s[k]) for k in KEYS) for s in subnets}) > 1
    counts = set()
    for subnet in subnets:
        controller.set_active(subnet)
        assert controller.active_parameter_count() == formula(subnet, 48)
        counts.add(formula(subnet, 48))
        for key in KEYS:
            dims = list(subnet[key])
            k = next((i for i, v in enumerate(dims) if v == 0), 4)
            assert k >= 1 and all(v in (1, 5, 10) for v in dims[:k]) and all(v == 0 for v in dims[k:])
    assert len(counts) > 1
    # In train mode every forward draws a new subnet from the controller's generator; eval keeps it.
    controller.reseed(7)
    model.train()
    drawn = []
    for _ in range(4):
        model(images())
        drawn.append(controller.active)
    assert len({tuple(tuple(s[k]) for k in KEYS) for s in drawn}) > 1
    controller.reseed(7)
    again = []
    for _ in range(4):
        model(images())
        again.append(controller.active)
    assert again == drawn
    model.eval()
    model(images())
    assert controller.active == drawn[-1]
    with pytest.raises(MethodError, match="exceeds"):
        controller.set_active({"prompt_dims": (11,), "lora_ranks": (1,), "adapter_dims": (1,)})


def test_inactive_slices_get_no_gradient():
    model = small_vit()
    apply_method(model, build_method("noah", {"mode": "supernet"}))
    model.noah.set_active({"prompt_dims": (3, 0), "lora_ranks": (2, 0), "adapter_dims": (4, 1)})
    model.eval()
    with torch.no_grad():
        for layer in (model.blocks[0].attn.qkv,):
            layer.lora_B.normal_()
    model(images()).sum().backward()
    lora = model.blocks[0].attn.qkv
    assert lora.lora_A.grad[:2].abs().sum() > 0 and lora.lora_A.grad[2:].abs().sum() == 0
    assert model.noah.prompts["0"].grad[3:].abs().sum() == 0 and model.noah.prompts["0"].grad[:3].abs().sum() > 0
    assert model.noah.prompts["1"].grad is None and model.blocks[1].attn.qkv.lora_A.grad is None
    adapter = model.blocks[0].drop_path2
    assert adapter.down_weight.grad[4:].abs().sum() == 0 and adapter.up_weight.grad[:, 4:].abs().sum() == 0


def test_extracted_subnet_inherits_supernet_weights_and_outputs():
    supernet = small_vit()
    apply_method(supernet, build_method("noah", {"mode": "supernet"}))
    with torch.no_grad():
        for name, p in supernet.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    subnet = {"prompt_dims": (5, 0), "lora_ranks": (1, 10), "adapter_dims": (0, 5)}
    supernet.noah.set_active(subnet)
    supernet.eval()
    x = images()
    with torch.no_grad():
        expected = supernet(x)

    model = small_vit()
    applied = apply_method(model, build_method("noah", subnet))
    state = subnet_state_dict(supernet, subnet)
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
    assert applied.parameter_counts()["trainable"] == supernet.noah.active_parameter_count() == formula(subnet, 48)
    assert state["blocks.1.drop_path2.down_weight"].shape == (5, 48)
    assert torch.equal(state["blocks.1.attn.qkv.lora_B"], supernet.blocks[1].attn.qkv.lora_B[:, :10])


def test_released_vtab_subnets_in_config():
    data = load_yaml(ROOT / "config/methods/noah.yaml")
    tasks = data["suites"]["vtab"]["tasks"]
    assert len(tasks) == 19
    counts = {}
    for task, entry in tasks.items():
        config = NoahConfig.from_dict({**data["hparams"], **entry["hparams"]})
        counts[task] = subnet_parameter_count(config.subnet(12), 768)
    assert counts["cifar"] == 320_330 and counts["svhn"] == 431_686
    assert sum(counts.values()) == 6_842_551  # mean 360,134: 0.36 M, not the published 0.43 M


BACKBONE = {"name": "vit-demo-random", "arch": "vit_demo_patch4_32.fractal", "checkpoint": None,
            "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
TRAINING = {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-2,
            "weight_decay": 1e-4, "warmup_lr_init": 1e-6, "lr_min": 1e-5, "label_smoothing": 0.0,
            "drop_path": 0.1, "train_aug": False, "num_workers": 0}
SEARCH = {"supernet_epochs": 2, "supernet_lr": 5e-3, "param_budget": 15_000, "search_population": 4,
          "search_select": 2, "search_generations": 2}


def run_values(task_dir, **hparams):
    return {"suite": "toy-suite", "task": "toy", "method": "noah", "seed": 3, "task_dir": str(task_dir),
            "num_classes": 3, "backbone": BACKBONE, "protocol": {"name": "val", "train_split": "train800",
                                                                  "eval_split": "val200"},
            "method_hparams": {**SEARCH, **hparams}, "training": TRAINING, "pretrained": False}


def test_supernet_then_search_within_budget_and_deterministic(vtab_task, tmp_path):
    run = run_values(vtab_task)
    supernet = tmp_path / "supernet.safetensors"
    record = train_supernet(run, supernet)
    assert supernet.is_file() and (tmp_path / "supernet.json").is_file()
    assert record["train"]["epochs"] == 2 and record["train"]["images"] == 2 * 12
    assert record["params"]["largest_subnet"] == formula({k: (10,) * 4 for k in KEYS}, 128)

    a = search_subnet(run, supernet, tmp_path / "a.json")
    b = search_subnet(run, supernet, tmp_path / "b.json")
    assert a == b == json.loads((tmp_path / "a.json").read_text())
    found = a["hparams"]
    assert found["mode"] == "subnet" and set(found) == {"mode", *KEYS}
    assert all(len(found[k]) == 4 for k in KEYS)
    assert a["params"] == subnet_parameter_count(found, 128) <= 15_000
    log = json.loads((tmp_path / "a.record.json").read_text())
    assert log["best"]["params"] == a["params"] and log["best"]["top1"] == a["eval_top1"]
    assert log["evaluated"] > 4 and all(e["params"] <= 15_000 for e in log["top"])

    # The final run lays the result over the method's hparams.
    final = with_searched_hparams(run, tmp_path / "a.json")
    model = timm.create_model("vit_demo_patch4_32", num_classes=3)
    applied = apply_method(model, build_method("noah", final["method_hparams"]))
    assert applied.parameter_counts()["trainable"] == a["params"]

    with pytest.raises(MethodError, match="no random subnet fits"):
        search_subnet(run, supernet, tmp_path / "c.json", param_budget=100)
    with pytest.raises(MethodError, match="does not match this run's supernet"):
        search_subnet(run_values(vtab_task, adapter_choices=[1, 2]), supernet, tmp_path / "d.json")
