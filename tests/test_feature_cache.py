"""The frozen-prefix feature cache: exact (same seed -> same metrics and loss history as uncached),
keyed by everything the features depend on, bounded in memory, off whenever it cannot be exact."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.runs import BACKBONE, run_values

from vpeft.engine.feature_cache import (
    PRE_LOGITS,
    build_cache,
    cache_keys,
    plan_cache,
    tensor_digest,
)
from vpeft.engine.train import (
    RunConfig,
    TrainingConfig,
    _datasets,
    build_run_model,
    run_training,
    seed_everything,
)
from vpeft.methods import apply_method, build_method

DEPTH = 4  # the demo ViT


def losses(metrics: dict) -> list[float]:
    return [h["loss"] for h in metrics["train"]["history"]]


def cached_and_plain(vtab_task, tmp_path, method, hparams, **training):
    out = {}
    for mode in ("auto", "off"):
        values = {**run_values(vtab_task, method, **{"drop_path": 0.0, **training, "feature_cache": mode}),
                  "method_hparams": hparams}
        out[mode] = run_training(values, tmp_path / mode / "metrics.json")
    return out["auto"], out["off"]


@pytest.mark.parametrize("method, hparams, blocks, positions", [
    ("linear", {}, DEPTH, [PRE_LOGITS]),
    ("partial", {"k": 1}, DEPTH - 1, ["3"]),
    ("dtl", {"start_block": -2}, 2, ["0", "1", "2"]),     # side state reads every cached block's input
    ("lst", {}, DEPTH, ["0", "1", "2", "3", "4"]),        # ladder reads every block's output
    ("last", {"gap": 2}, DEPTH, ["0", "1", "2", "3", "4"]),
])
def test_cached_run_is_identical_to_the_uncached_run(vtab_task, tmp_path, method, hparams, blocks, positions):
    cached, plain = cached_and_plain(vtab_task, tmp_path, method, hparams)
    info = cached["train"]["feature_cache"]
    assert info["used"] is True and info["cached_prefix_blocks"] == blocks and info["positions"] == positions
    assert plain["train"]["feature_cache"]["used"] is False
    assert plain["train"]["feature_cache"]["reason"] == "feature_cache: off"
    assert cached["metric"] == plain["metric"]
    assert losses(cached) == losses(plain)
    assert [h["train_top1"] for h in cached["train"]["history"]] == [h["train_top1"] for h in plain["train"]["history"]]


def test_drop_path_stops_the_cached_prefix_at_the_first_random_block(vtab_task, tmp_path):
    """timm's drop-path rates grow linearly from 0: only block 0 is deterministic at drop_path 0.1,
    so only it is cached, and the live blocks' drop-path draws stay exactly those of the uncached run."""
    cached, plain = cached_and_plain(vtab_task, tmp_path, "linear", {}, drop_path=0.1)
    info = cached["train"]["feature_cache"]
    assert info["used"] and info["declared_prefix_blocks"] == DEPTH and info["cached_prefix_blocks"] == 1
    assert "blocks.1" in info["reason"] and "DropPath" in info["reason"]
    assert cached["metric"] == plain["metric"] and losses(cached) == losses(plain)


def test_augmentation_turns_the_cache_off(vtab_task, tmp_path):
    m = run_training(run_values(vtab_task, "linear", train_aug=True, drop_path=0.0, epochs=1),
                     tmp_path / "metrics.json")
    info = m["train"]["feature_cache"]
    assert info["used"] is False and "train_aug" in info["reason"]


def test_methods_without_a_frozen_prefix_train_uncached(vtab_task, tmp_path):
    m = run_training(run_values(vtab_task, "lora", drop_path=0.0, epochs=1), tmp_path / "metrics.json")
    assert m["train"]["feature_cache"]["used"] is False
    assert "trains from the first block" in m["train"]["feature_cache"]["reason"]


def test_hst_reads_the_image_and_is_not_cached(vtab_task, tmp_path):
    # the side-tuning variant: no trainable tensor in the blocks, but its hooks read the image
    m = run_training({**run_values(vtab_task, "hst", drop_path=0.0, epochs=1),
                      "method_hparams": {"meta_mode": "readout"}},
                     tmp_path / "metrics.json")
    assert m["train"]["feature_cache"]["used"] is False and "hooks" in m["train"]["feature_cache"]["reason"]


def test_over_the_memory_bound_without_a_folder_the_cache_is_not_built(vtab_task, tmp_path):
    cached, plain = cached_and_plain(vtab_task, tmp_path, "partial", {"k": 1}, feature_cache_memory_mb=0.01)
    info = cached["train"]["feature_cache"]
    assert info["used"] is False and "feature_cache_memory_mb" in info["reason"] and info["megabytes"] > 0.01
    assert losses(cached) == losses(plain)


def test_disk_cache_is_written_then_reused_and_memory_mapped_over_the_bound(vtab_task, tmp_path):
    folder = tmp_path / "features"
    common = {"drop_path": 0.0, "feature_cache_dir": str(folder), "feature_cache_memory_mb": 0.01}
    first = run_training({**run_values(vtab_task, "partial", **common), "method_hparams": {"k": 1}},
                         tmp_path / "a" / "metrics.json")
    info = first["train"]["feature_cache"]
    assert info["used"] and info["storage"] == "disk-mmap" and not info["loaded_from_disk"]
    (key,) = info["keys"].values()
    assert (folder / f"{key}.bin").is_file() and json.loads((folder / f"{key}.json").read_text())["key"] == key
    second = run_training({**run_values(vtab_task, "partial", **common), "method_hparams": {"k": 1}},
                          tmp_path / "b" / "metrics.json")
    assert second["train"]["feature_cache"]["loaded_from_disk"] is True
    plain = run_training({**run_values(vtab_task, "partial", drop_path=0.0, feature_cache="off"),
                          "method_hparams": {"k": 1}}, tmp_path / "c" / "metrics.json")
    assert losses(first) == losses(second) == losses(plain)
    assert first["metric"] == second["metric"] == plain["metric"]
    assert not list(folder.glob("*.tmp"))


def test_a_corrupt_disk_entry_is_rebuilt_not_trusted(vtab_task, tmp_path):
    folder = tmp_path / "features"
    values = {**run_values(vtab_task, "linear", drop_path=0.0, feature_cache_dir=str(folder)), "method_hparams": {}}
    first = run_training(values, tmp_path / "a" / "metrics.json")
    (key,) = first["train"]["feature_cache"]["keys"].values()
    (folder / f"{key}.bin").write_bytes(b"truncated")
    again = run_training(values, tmp_path / "b" / "metrics.json")
    assert again["train"]["feature_cache"]["used"] and not again["train"]["feature_cache"]["loaded_from_disk"]
    assert losses(again) == losses(first)


# -- keys ---------------------------------------------------------------------------------------

def _keys(task_dir, method="partial", hparams=None, backbone=None, precision="fp32", seed=7):
    backbone = backbone or BACKBONE
    values = {**run_values(task_dir, method, drop_path=0.0), "method_hparams": hparams or {"k": 1},
              "backbone": backbone, "seed": seed, "pretrained": bool(backbone.get("checkpoint"))}
    run = RunConfig.from_dict(values)
    tc = TrainingConfig.from_dict(run.training)
    seed_everything(run.seed)
    spec, model, sha = build_run_model(run, tc, ".")
    method_obj = build_method(run.method, run.method_hparams)
    apply_method(model, method_obj)
    train_set, _ = _datasets(run, spec, tc)
    plan = plan_cache(model, method_obj, "auto", False, train_set)
    return cache_keys(model, plan, tensor_digest(train_set.tensors[0]), arch=spec.arch, checkpoint_sha=sha,
                      precision=precision, device_type="cpu")


def test_cache_key_is_stable_and_changes_with_data_preprocessing_backbone_and_k(vtab_task):
    reference = _keys(vtab_task)
    assert _keys(vtab_task) == reference, "same inputs, same backbone: same key (reusable across runs)"
    assert _keys(vtab_task, seed=8) != reference, "random-init backbone of another seed: other weights"
    assert _keys(vtab_task, backbone={**BACKBONE, "mean": [0.4] * 3}) != reference, "preprocessing"
    assert _keys(vtab_task, backbone={**BACKBONE, "std": [0.25] * 3}) != reference, "preprocessing"
    assert _keys(vtab_task, precision="bf16") != reference
    assert _keys(vtab_task, hparams={"k": 2}).values() != reference.values(), "another k, another position"
    image = vtab_task / "images" / "train800val200" / "000003.png"
    image.write_bytes((vtab_task / "images" / "train800val200" / "000004.png").read_bytes())
    assert _keys(vtab_task) != reference, "one training image changed"


def test_cache_key_changes_with_the_checkpoint(vtab_task, tmp_path):
    """Two checkpoints of the same architecture (in the real safetensors layout) give other keys."""
    import timm
    from safetensors.torch import save_file

    import vpeft.backbones  # noqa: F401

    shas = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = timm.create_model("vit_demo_patch4_32", pretrained=False, num_classes=0)
        path = tmp_path / f"ckpt{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        shas.append(_keys(vtab_task, backbone={**BACKBONE, "checkpoint": str(path)}))
    assert shas[0] != shas[1]
    assert shas[0] != _keys(vtab_task), "a checkpoint vs the random-init backbone"


# -- refusals and the self-check ---------------------------------------------------------------------

def _applied(vtab_task, method="linear", hparams=None, **training):
    values = {**run_values(vtab_task, method, drop_path=0.0, **training), "method_hparams": hparams or {}}
    run = RunConfig.from_dict(values)
    tc = TrainingConfig.from_dict(run.training)
    seed_everything(run.seed)
    spec, model, _ = build_run_model(run, tc, ".")
    method_obj = build_method(run.method, run.method_hparams)
    apply_method(model, method_obj)
    train_set, _ = _datasets(run, spec, tc)
    return model, method_obj, train_set


def test_plan_refuses_datasets_that_are_not_fixed_tensors(vtab_task):
    model, method, train_set = _applied(vtab_task)
    plan = plan_cache(model, method, "auto", False, list(zip(*train_set.tensors)))
    assert not plan.used and "fixed in-memory tensor dataset" in plan.reason


def test_plan_refuses_models_whose_forward_is_not_timms(vtab_task):
    model, method, train_set = _applied(vtab_task)
    model.forward_features = lambda x: x  # an instance override the replay would not follow
    plan = plan_cache(model, method, "auto", False, train_set)
    assert not plan.used and "forward_features" in plan.reason


def test_a_hook_that_changes_a_cached_block_fails_the_self_check(vtab_task):
    """Planning allows hooks on whole blocks (side networks read through them); a hook that *changes*
    the stream would make the replay wrong, and the self-check catches it before training."""
    model, method, train_set = _applied(vtab_task)
    model.blocks[1].register_forward_hook(lambda module, args, out: out * 2)
    plan = plan_cache(model, method, "auto", False, train_set)
    assert plan.used and plan.hooked_blocks == (1,)
    result = build_cache(model, plan, train_set, device=torch.device("cpu"), autocast=_null, batch_size=8,
                         memory_mb=100, folder=None, key_fn=lambda digest: {})
    assert not result.used and "self-check failed" in result.reason and "changes the output" in result.reason


def _null():
    import contextlib

    return contextlib.nullcontext()
