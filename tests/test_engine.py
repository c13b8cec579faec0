"""One run end to end in the library: metrics.json content, determinism, failure on a NaN loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.runs import BACKBONE, run_values  # noqa: F401

from vpeft.engine.train import TrainingError, run_training


def test_metrics_file_records_result_and_provenance(vtab_task, tmp_path):
    out = tmp_path / "run" / "metrics.json"
    run_training(run_values(vtab_task), out)
    m = json.loads(out.read_text())
    assert m["schema"] == "vpeft.run/1" and m["status"] == "ok"
    assert 0.0 <= m["metric"]["value"] <= 1.0 and m["eval"]["num_images"] == 10 and m["eval"]["split"] == "test"
    assert m["params"]["trainable"] == 4 * 2 * 128 * 4  # LoRA q+v, rank 2, width 128, depth 4
    assert m["params"]["trainable_with_head"] == m["params"]["trainable"] + 129 * 3
    assert len(m["train"]["history"]) == 2 and m["train"]["images"] == 2 * 16
    assert m["train"]["images_per_second"] > 0 and m["train"]["process_peak_memory_mb"] > 0
    assert m["eval"]["merged"] is True
    eff = m["efficiency"]  # the method's own costs, measured on the run's device
    assert eff["device"].startswith("cpu: ") and eff["train_memory_kind"] == "cpu_tensor_bytes"
    parts = eff["train_memory_parts_mb"]
    assert all(parts[k] > 0 for k in ("parameters", "gradients", "optimizer_state", "saved_activations"))
    assert eff["train_memory_mb"] == pytest.approx(sum(parts.values()))
    assert eff["train_samples_per_second"] > 0 and eff["train_batch"] == 8 and eff["train_steps_timed"] >= 1
    latency = eff["latency_ms"]  # LoRA is mergeable: both forms at batch 1 and at the eval batch
    assert set(latency) == {"merged", "unmerged"}
    assert all(latency[f][b] > 0 for f in latency for b in ("batch_1", "batch_eval"))
    assert eff["trained_tensors_bytes"] == (out.parent / "trained.safetensors").stat().st_size
    assert m["config"]["training"]["epochs"] == 2 and m["config"]["method_hparams"]["rank"] == 2
    prov = m["provenance"]
    assert prov["packages"]["torch"] and prov["packages"]["timm"] and prov["hardware"]["cpu"]
    assert "git_commit" in prov and prov["threads"] == 1
    assert not list(out.parent.glob("*.tmp")), "no temporary files may be left behind"


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(vtab_task, tmp_path):
    a = run_training(run_values(vtab_task, "adapter", drop_path=0.1), tmp_path / "a.json")
    b = run_training(run_values(vtab_task, "adapter", drop_path=0.1), tmp_path / "b.json")
    assert a["metric"] == b["metric"]
    assert [h["loss"] for h in a["train"]["history"]] == [h["loss"] for h in b["train"]["history"]]
    # the seed reaches the run (head init, shuffling, drop-path): another one trains another model
    other = run_training(run_values(vtab_task, "adapter", seed=8, drop_path=0.1), tmp_path / "c.json")
    assert other["config"]["seed"] == 8
    assert [h["loss"] for h in other["train"]["history"]] != [h["loss"] for h in a["train"]["history"]]


def test_nan_loss_stops_at_the_first_bad_step_and_writes_nothing(vtab_task, tmp_path):
    """AdamW's first update moves every weight by about lr whatever the gradient's size, so at lr = 1e30
    step 1 of epoch 1 (16 training images, batch 8) is finite and step 2 is the first non-finite loss."""
    out = tmp_path / "metrics.json"
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch 1, step 2 \(toy-suite/full/toy, seed 7\)"):
        run_training(run_values(vtab_task, "full", lr=1e30, warmup_epochs=0, epochs=3), out)
    assert not out.exists()


def test_a_non_finite_loss_later_in_the_run_is_reported_at_its_epoch_and_step(vtab_task, tmp_path, monkeypatch):
    """The 4th loss of the run (epoch 2, step 2 at 2 steps per epoch) is made NaN; the run stops there,
    not before, and not at a later step."""
    calls = []
    original = torch.nn.CrossEntropyLoss.forward

    def nan_on_the_fourth(self, logits, labels):
        calls.append(1)
        loss = original(self, logits, labels)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_on_the_fourth)
    out = tmp_path / "metrics.json"
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 2, step 2 \(toy-suite/lora/toy, seed 7\)"):
        run_training(run_values(vtab_task, "lora", warmup_epochs=0, epochs=3, drop_path=0.0), out)
    assert len(calls) == 4 and not out.exists()


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


# -- multi-view evaluation ---------------------------------------------------------------------------

class _ViewsAreLogits(torch.utils.data.Dataset):
    """Each example is V views whose 'images' are the logits themselves (the model is the identity)."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, views: int):
        self.logits, self.labels, self.views = logits, labels, views

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.logits[i], self.labels[i]


def test_multi_view_evaluation_averages_softmax_probabilities_over_views():
    from vpeft.engine.train import evaluate

    # Example 0: the mean of the logits says class 1 (one very confident view), the mean of the
    # probabilities says class 0 (two views prefer it). Example 1 is unambiguous.
    logits = torch.tensor([[[2.0, 0.0], [0.0, 20.0], [1.0, 0.0]],
                           [[0.0, 3.0], [0.0, 1.0], [0.5, 0.0]]])
    probs = logits.softmax(-1).mean(1).argmax(-1)
    assert probs.tolist() == [0, 1] and logits.mean(1).argmax(-1).tolist() == [1, 1]
    data = _ViewsAreLogits(logits, torch.tensor([0, 1]), views=3)
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    seen = []

    class Identity(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x

    accuracy, n = evaluate(Identity(), loader, "cpu")
    assert (accuracy, n) == (1.0, 2) and seen == [(6, 2)], "views are flattened into the batch, then averaged"


def test_multi_view_evaluation_rejects_a_batch_without_the_declared_view_axis():
    from vpeft.engine.train import evaluate

    data = _ViewsAreLogits(torch.zeros(4, 2, 5), torch.zeros(4, dtype=torch.long), views=3)
    with pytest.raises(TrainingError, match=r"views=3 .* shape \(4, 2, 5\)"):
        evaluate(torch.nn.Identity(), torch.utils.data.DataLoader(data, batch_size=4), "cpu")


# -- GPU knobs, exercised on CPU at tiny size ---------------------------------------------------------

def test_bf16_autocast_runs_on_cpu_and_changes_the_numerics(vtab_task, tmp_path):
    fp32 = run_training(run_values(vtab_task, "lora", epochs=1), tmp_path / "fp32.json")
    bf16 = run_training(run_values(vtab_task, "lora", epochs=1, precision="bf16"), tmp_path / "bf16.json")
    assert bf16["train"]["precision"] == "bf16" and fp32["train"]["precision"] == "fp32"
    assert all(math.isfinite(h["loss"]) for h in bf16["train"]["history"])
    assert bf16["train"]["history"][0]["loss"] != fp32["train"]["history"][0]["loss"], "autocast had no effect"
    assert 0.0 <= bf16["metric"]["value"] <= 1.0


@pytest.mark.parametrize("method, cache", [("lora", "off"), ("partial", "auto")])
def test_compiled_training_runs_and_matches_eager(vtab_task, tmp_path, method, cache):
    """torch.compile through dynamo + AOT autograd (aot_eager: no C++ code generation, so the test
    stays fast); inductor itself is exercised by the slow test below."""
    values = {**run_values(vtab_task, method, epochs=1, drop_path=0.0, feature_cache=cache),
              "method_hparams": {"rank": 2} if method == "lora" else {"k": 1}}
    eager = run_training(values, tmp_path / "eager.json")
    values["training"] = {**values["training"], "compile": True, "compile_backend": "aot_eager"}
    compiled = run_training(values, tmp_path / "compiled.json")
    assert compiled["train"]["compiled"] is True
    assert compiled["train"]["feature_cache"]["used"] is (cache == "auto")
    torch.testing.assert_close(compiled["train"]["history"][0]["loss"], eager["train"]["history"][0]["loss"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_compiled_training_runs(vtab_task, tmp_path):
    values = run_values(vtab_task, "lora", epochs=1, compile=True)
    # one block instead of four: the same code path (LoRA'd attention, inductor's C++ code generation) with
    # a quarter of the graph to compile on a cold cache
    values["backbone"] = {**values["backbone"], "model_kwargs": {"depth": 1}}
    m = run_training(values, tmp_path / "metrics.json")
    assert m["train"]["compiled"] is True and math.isfinite(m["train"]["final_loss"])
    assert m["params"]["backbone_total"] < 300_000  # the one-block model was the one compiled


def test_pin_memory_is_accepted_on_cpu_and_fused_attention_is_recorded(vtab_task, tmp_path):
    m = run_training(run_values(vtab_task, "lora", epochs=1, pin_memory=True), tmp_path / "metrics.json")
    assert m["train"]["fused_attention"] is True, "timm's SDPA path must stay on"


def test_training_config_rejects_bad_knobs_and_reads_yaml_off():
    from vpeft.engine.train import TrainingConfig

    with pytest.raises(ValueError, match="training.precision"):
        TrainingConfig(precision="fp16")
    with pytest.raises(ValueError, match="training.feature_cache"):
        TrainingConfig(feature_cache="sometimes")
    assert TrainingConfig(feature_cache=False).feature_cache == "off"  # YAML reads a bare `off` as false


def test_result_neutral_keys_do_not_change_the_run_fingerprint(vtab_task):
    from vpeft.engine.train import run_fingerprint

    base = run_values(vtab_task, "linear")
    neutral = run_values(vtab_task, "linear", feature_cache="off", feature_cache_dir="x", pin_memory=True)
    assert run_fingerprint(base) == run_fingerprint(neutral)
    assert run_fingerprint(base) != run_fingerprint(run_values(vtab_task, "linear", precision="bf16"))


def test_the_memory_column_separates_lora_from_side_tuning_as_measured(vtab_task, tmp_path):
    """LST's backbone builds no autograd graph (side-tuning): the saved activations it records are far
    below LoRA's, and the report's training-memory column follows the measurement, not the process."""
    from vpeft.report.html import _efficiency_cells
    from vpeft.report.tables import efficiency_table, load_runs

    paths = []
    for method in ("lora", "lst"):
        out = tmp_path / "results" / "toy-suite" / method / "toy" / "seed-7" / "metrics.json"
        run_training(run_values(vtab_task, method, epochs=1), out)
        paths.append(out)
    lora, lst = (json.loads(p.read_text())["efficiency"] for p in paths)
    assert lst["train_memory_parts_mb"]["saved_activations"] < lora["train_memory_parts_mb"]["saved_activations"]
    assert lst["train_memory_mb"] < lora["train_memory_mb"]  # the direction the measurement shows
    table = efficiency_table(load_runs(paths), "toy-suite", ["lora", "lst"])
    assert table.loc["lst", "train_memory_mb"] == lst["train_memory_mb"] < table.loc["lora", "train_memory_mb"]
    shown = {m: _efficiency_cells(table.loc[m])["train_memory"] for m in ("lora", "lst")}
    assert shown["lora"] != shown["lst"] and all(text.endswith(" MiB") for text in shown.values())
