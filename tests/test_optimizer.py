"""The optimiser is a training key: AdamW (image recipes) or SGD with momentum and a batch-scaled learning
rate (V-PETL's video recipe: base lr 0.1 x batch / 256, momentum 0.9, no weight decay)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.runs import run_values

from vpeft.config import load_method_configs, load_yaml, resolve_run, resolve_suites
from vpeft.engine.optim import build_optimizer
from vpeft.engine.train import TrainingConfig, run_training

ROOT = Path(__file__).resolve().parents[1]


CONFIG = load_yaml(ROOT / "config/config.yaml")
SUITES = resolve_suites(CONFIG)
VIDEO_RUNS = [(s, m) for s, suite in SUITES.items() if suite["kind"] == "video" and suite["source"] != "embedded"
              for m in suite["methods"]]


@pytest.mark.parametrize("suite, method", VIDEO_RUNS)
def test_real_video_suites_train_with_v_petls_sgd_recipe(suite, method):
    config, suites = CONFIG, SUITES
    run = resolve_run(config, suites, load_method_configs(ROOT / "config/methods"), suite, method,
                      next(iter(suites[suite]["tasks"])), 42)
    tc = TrainingConfig.from_dict(run["training"])
    assert (tc.optimizer, tc.momentum, tc.weight_decay, tc.epochs, tc.warmup_epochs) == ("sgd", 0.9, 0.0, 90, 10)
    optimizer = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], tc)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == pytest.approx(0.1 * tc.batch_size / 256)
    assert optimizer.defaults["momentum"] == 0.9


def test_sgd_run_uses_the_scaled_lr_after_warmup_and_differs_from_adamw(vtab_task, tmp_path):
    sgd = run_training(run_values(vtab_task, optimizer="sgd", momentum=0.9, lr=0.1, lr_reference_batch=256,
                                  epochs=2, warmup_epochs=0, lr_min=0.0), tmp_path / "sgd.json")
    adamw = run_training(run_values(vtab_task, epochs=2, warmup_epochs=0, lr_min=0.0), tmp_path / "adamw.json")
    # batch 8: 0.1 x 8 / 256 at the first epoch (cosine from its peak, no warm-up)
    assert sgd["train"]["history"][0]["lr"] == pytest.approx(0.1 * 8 / 256)
    assert sgd["config"]["training"]["optimizer"] == "sgd"
    assert [h["loss"] for h in sgd["train"]["history"]] != [h["loss"] for h in adamw["train"]["history"]]


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="training.optimizer must be one of"):
        TrainingConfig.from_dict({"optimizer": "lamb"})
