"""Per-method summary of one suite: the folder target's result (results/<suite>/<method>/summary.json)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..metrics import ppt


def summarize_method(metrics_paths, suite: str, method: str) -> dict:
    per_task: dict[str, list[float]] = {}
    params = set()
    for path in metrics_paths:
        run = json.loads(Path(path).read_text())
        per_task.setdefault(run["task"], []).append(run["metric"]["value"])
        params.add(run["params"]["trainable"])
    tasks = {t: {"top1_mean": statistics.fmean(v), "top1_std": statistics.stdev(v) if len(v) > 1 else 0.0,
                 "seeds": len(v)} for t, v in per_task.items()}
    mean = statistics.fmean(t["top1_mean"] for t in tasks.values())
    trainable = max(params) if params else 0
    return {"suite": suite, "method": method, "tasks": tasks, "mean_top1": mean,
            "trainable_params": trainable, "params_differ_between_tasks": len(params) > 1,
            "ppt": ppt(mean, trainable)}
