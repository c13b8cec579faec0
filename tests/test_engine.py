"""One run end to end in the library: metrics.json content, determinism, failure on a NaN loss."""

from __future__ import annotations

import json

import pytest

from vpeft.engine.train import TrainingError, run_training

BACKBONE = {"name": "vit-demo-random", "arch": "vit_demo_patch4_32.fractal", "checkpoint": None,
            "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
TRAINING = {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3,
            "weight_decay": 1e-4, "warmup_lr_init": 1e-6, "lr_min": 1e-5, "label_smoothing": 0.1,
            "drop_path": 0.1, "train_aug": False, "num_workers": 0}


def run_values(task_dir, method="lora", **training):
    return {"suite": "toy-suite", "task": "toy", "method": method, "seed": 7, "task_dir": str(task_dir),
            "num_classes": 3, "backbone": BACKBONE, "protocol": {"name": "vtab1k", "train_split": "train800val200",
                                                                  "eval_split": "test"},
            "method_hparams": {"rank": 2} if method == "lora" else {}, "training": {**TRAINING, **training},
            "pretrained": False}


def test_metrics_file_records_result_and_provenance(vtab_task, tmp_path):
    out = tmp_path / "run" / "metrics.json"
    run_training(run_values(vtab_task), out)
    m = json.loads(out.read_text())
    assert m["schema"] == "vpeft.run/1" and m["status"] == "ok"
    assert 0.0 <= m["metric"]["value"] <= 1.0 and m["eval"]["num_images"] == 10 and m["eval"]["split"] == "test"
    assert m["params"]["trainable"] == 4 * 2 * 128 * 4  # LoRA q+v, rank 2, width 128, depth 4
    assert m["params"]["trainable_with_head"] == m["params"]["trainable"] + 129 * 3
    assert len(m["train"]["history"]) == 2 and m["train"]["images"] == 2 * 16
    assert m["train"]["images_per_second"] > 0 and m["train"]["peak_memory_mb"] > 0
    assert m["eval"]["merged"] is True
    assert m["config"]["training"]["epochs"] == 2 and m["config"]["method_hparams"]["rank"] == 2
    prov = m["provenance"]
    assert prov["packages"]["torch"] and prov["packages"]["timm"] and prov["hardware"]["cpu"]
    assert "git_commit" in prov and prov["threads"] == 1
    assert not list(out.parent.glob("*.tmp")), "no temporary files may be left behind"


def test_same_seed_gives_identical_metrics(vtab_task, tmp_path):
    a = run_training(run_values(vtab_task, "adapter", drop_path=0.1), tmp_path / "a.json")
    b = run_training(run_values(vtab_task, "adapter", drop_path=0.1), tmp_path / "b.json")
    assert a["metric"] == b["metric"]
    assert [h["loss"] for h in a["train"]["history"]] == [h["loss"] for h in b["train"]["history"]]


def test_nan_loss_stops_with_epoch_and_step_and_writes_nothing(vtab_task, tmp_path):
    out = tmp_path / "metrics.json"
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch \d+, step \d+ \(toy-suite/full/toy"):
        run_training(run_values(vtab_task, "full", lr=1e30, warmup_epochs=0, epochs=3), out)
    assert not out.exists()


@pytest.mark.parametrize("method, hparams", [("sct", {"top_n": 8}), ("gps", {"top_k": 1})])
def test_cached_selection_stage_gives_the_same_run_as_computing_it_in_process(vtab_task, tmp_path, method,
                                                                               hparams):
    """The workflow computes a data-dependent selection once (rule select_parameters) and the run loads
    it; a run without the file computes it itself. Both must train exactly the same model."""
    from vpeft.engine.selection import load_selection, run_selection

    values = {**run_values(vtab_task, method), "method_hparams": hparams}
    selection_file = tmp_path / "selection.safetensors"
    run_selection(values, selection_file)
    selection, sha = load_selection(selection_file)
    assert selection and all(t.numel() for t in selection.values())
    cached = run_training(values, tmp_path / "cached" / "metrics.json", selection_path=selection_file)
    inline = run_training(values, tmp_path / "inline" / "metrics.json")
    assert cached["metric"] == inline["metric"]
    assert [h["loss"] for h in cached["train"]["history"]] == [h["loss"] for h in inline["train"]["history"]]
    assert cached["config"]["selection_sha256"] == sha
    assert cached["params"] == inline["params"]


def test_selection_uses_the_training_split_only(vtab_task, tmp_path):
    """Corrupting the test split must not change the selection: it never reads it."""
    from vpeft.engine.selection import load_selection, run_selection

    values = {**run_values(vtab_task, "sct"), "method_hparams": {"top_n": 8}}
    run_selection(values, tmp_path / "a.safetensors")
    (vtab_task / "test.txt").write_text("")  # an empty test list would break any reader of it
    run_selection(values, tmp_path / "b.safetensors")
    a, _ = load_selection(tmp_path / "a.safetensors")
    b, _ = load_selection(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_weight_decay_1d_false_exempts_vectors(vtab_task):
    import timm

    from vpeft.engine.train import TrainingConfig, parameter_groups

    model = timm.create_model("vit_demo_patch4_32", num_classes=3)
    groups = parameter_groups(model, TrainingConfig(weight_decay_1d=False))
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0
    assert len(parameter_groups(model, TrainingConfig())) == 1
