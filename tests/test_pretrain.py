"""The demo backbone's formula-driven pretraining (vpeft.engine.pretrain), on a few fractal classes."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.snake import ROOT
from safetensors import safe_open

from vpeft.backbones import BackboneSpec, create_backbone, sha256_of
from vpeft.engine.pretrain import PretrainConfig, pretrain_demo_backbone

TINY = {"num_classes": 3, "images_per_class": 8, "epochs": 4, "warmup_epochs": 0, "batch_size": 8, "lr": 2e-3}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")
    return folder, pretrain_demo_backbone(folder / "a.safetensors", PretrainConfig(**TINY))


def test_checkpoint_is_headless_records_its_recipe_and_loads_as_a_backbone(pretrained):
    folder, summary = pretrained
    path = folder / "a.safetensors"
    assert summary["sha256"] == sha256_of(path)
    assert json.loads((folder / "a.safetensors.json").read_text()) == json.loads(json.dumps(summary))
    with safe_open(str(path), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("head.")]  # noqa: SIM118 (safe_open has no __iter__)
        assert f.metadata()["arch"] == "vit_demo_patch4_32"
        assert json.loads(f.metadata()["recipe"]) == summary["config"] == {**PretrainConfig().__dict__, **TINY}
    assert len(summary["history"]) == TINY["epochs"]
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]  # it learns the fractal classes
    spec = BackboneSpec(name="demo", arch="vit_demo_patch4_32", checkpoint=str(path), input_size=32)
    model, digest = create_backbone(spec, num_classes=5)
    assert digest == summary["sha256"]
    with safe_open(str(path), "pt") as f:  # the saved weights, not a fresh init, are in the model
        saved = f.get_tensor("blocks.0.attn.qkv.weight")
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], saved)


def test_another_seed_gives_other_weights(pretrained, tmp_path):
    # (same seed -> same bytes is NOT asserted: two runs in one process differed now and then on this
    # machine; reported to the lead as a finding about pretrain_demo_backbone's reproducibility)
    _, first = pretrained
    other = pretrain_demo_backbone(tmp_path / "c.safetensors", PretrainConfig(**{**TINY, "seed": 1}))
    assert other["sha256"] != first["sha256"] and other["config"]["seed"] == 1


def test_the_shipped_demo_checkpoint_was_made_by_this_recipe():
    record = json.loads((ROOT / "assets/vit_demo_patch4_32.fractal.safetensors.json").read_text())
    with safe_open(str(ROOT / "assets/vit_demo_patch4_32.fractal.safetensors"), "pt") as f:
        recipe = json.loads(f.metadata()["recipe"])
    assert set(recipe) == set(PretrainConfig().__dict__) and recipe["arch"] == "vit_demo_patch4_32"
    assert record["sha256"] == sha256_of(ROOT / "assets/vit_demo_patch4_32.fractal.safetensors")
