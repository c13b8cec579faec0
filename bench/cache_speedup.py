"""Linear probing and Partial-1 with the frozen-prefix cache against without, through the engine.

Whole runs of `vpeft.engine.train.run_training` on the `vtab1k` protocol (train on train800val200,
evaluate the final model on test) with the global training defaults of config/config.yaml (100
epochs, 10 warmup, batch 64) on a generated `vtab-mini` task and the shipped `vit-demo` backbone.
Speed-ups are given on the training loop's wall time (cache build included), and on the whole run's
wall and CPU time (decoding and evaluation included, the same for both, so these are conservative);
the CPU time does not move with other jobs on a shared machine. drop_path is 0, as in the embedded
suites: with V-PETL's 0.1 only block 0 of the prefix is exact to
cache (see `vpeft.engine.feature_cache`), which `plan_at_drop_path_0_1` reports.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path

import yaml
from common import REPO, ratio


def _task(root: Path, train_images: int, test_images: int) -> Path:
    from vpeft.data.synthetic.vtab_mini import generate_task

    train800 = max(1, round(train_images * 0.8))
    sizes = {"train800": train800, "val200": max(1, train_images - train800), "test": test_images}
    generate_task("digits", root / "digits", seed=0, sizes=sizes, image_size=32)
    return root / "digits"


def _values(task_dir: Path, method: str, hparams: dict, training: dict) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {"suite": "bench", "task": "digits", "method": method, "seed": 42, "task_dir": str(task_dir),
            "num_classes": 10, "backbone": {**config["backbones"]["vit-demo"], "name": "vit-demo"},
            "protocol": {**config["protocols"]["vtab1k"], "name": "vtab1k"}, "method_hparams": hparams,
            "training": {**config["training"], **training}, "pretrained": True, "layout": "vtab", "data": {}}


def _run(values: dict, out: Path, threads: int) -> tuple[dict, dict]:
    """One whole run; its wall and CPU seconds (data loading and evaluation included)."""
    from vpeft.engine.train import run_training

    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = run_training(values, out, threads=threads, base_dir=REPO, device="cpu")
    return metrics, {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu_start}


def plan_at_drop_path_0_1(task_dir: Path) -> dict:
    """What the cache would keep for linear probing with V-PETL's drop_path 0.1 (planning only)."""
    from vpeft.engine.feature_cache import plan_cache
    from vpeft.engine.train import RunConfig, TrainingConfig, _datasets, build_run_model
    from vpeft.methods import apply_method, build_method

    run = RunConfig.from_dict(_values(task_dir, "linear", {}, {"drop_path": 0.1}))
    tc = TrainingConfig.from_dict(run.training)
    spec, model, _ = build_run_model(run, tc, REPO)
    method = build_method("linear", {})
    apply_method(model, method)
    train_set, _ = _datasets(run, spec, tc)
    plan = plan_cache(model, method, tc.feature_cache, tc.train_aug, train_set)
    return {"declared_prefix_blocks": plan.declared_blocks, "cached_prefix_blocks": plan.blocks,
            "reason": plan.reason}


def run(train_images: int, test_images: int, epochs: int, threads: int) -> dict:
    logging.getLogger("vpeft").setLevel(logging.WARNING)  # one line per epoch x 4 runs is noise here
    out: dict = {"train_images": train_images, "test_images": test_images, "epochs": epochs,
                 "backbone": "vit-demo", "protocol": "vtab1k", "threads": threads, "methods": {}}
    with tempfile.TemporaryDirectory(prefix="vpeft-bench-") as tmp:
        root = Path(tmp)
        task_dir = _task(root, train_images, test_images)
        for method, hparams in (("linear", {}), ("partial", {"k": 1})):
            training = {"epochs": epochs, "drop_path": 0.0}
            cached, cached_cost = _run(_values(task_dir, method, hparams, {**training, "feature_cache": "auto"}),
                                       root / method / "cached" / "metrics.json", threads)
            plain, plain_cost = _run(_values(task_dir, method, hparams, {**training, "feature_cache": "off"}),
                                     root / method / "plain" / "metrics.json", threads)
            same = (cached["metric"] == plain["metric"] and
                    [h["loss"] for h in cached["train"]["history"]] == [h["loss"] for h in plain["train"]["history"]])
            out["methods"][method] = {
                "cache": copy.deepcopy(cached["train"]["feature_cache"]),
                "train_seconds": {"cached": cached["train"]["wall_seconds"], "uncached": plain["train"]["wall_seconds"]},
                "run_seconds": {"cached": cached_cost, "uncached": plain_cost},
                "speedup_train_wall": ratio(plain["train"]["wall_seconds"], cached["train"]["wall_seconds"]),
                "speedup_run_wall": ratio(plain_cost["wall"], cached_cost["wall"]),
                "speedup_run_cpu": ratio(plain_cost["cpu"], cached_cost["cpu"]),
                "identical_metric_and_loss_history": same,
                "top1": {"cached": cached["metric"]["value"], "uncached": plain["metric"]["value"]},
                "evaluated_merged": cached["eval"]["merged"],
            }
        out["linear_at_drop_path_0_1"] = plan_at_drop_path_0_1(task_dir)
    return out
