"""Per-method summary of one suite: the folder target's result (results/<suite>/<method>/summary.json).

The suite's metric is whatever its runs report (top-1 for image and video suites, box AP or mIoU for
dense ones); the summary names it rather than assuming top-1.
"""

from __future__ import annotations

import statistics

from ..io import read_json
from ..metrics import ppt


def summarize_method(metrics_paths, suite: str, method: str) -> dict:
    runs = [read_json(path) for path in metrics_paths]
    by_k: dict[int, list[dict]] = {}
    for run in runs:
        by_k.setdefault(((run.get("protocol") or {}).get("fewshot") or {}).get("shots"), []).append(run)
    if set(by_k) != {None}:  # a few-shot suite: one summary per k, never mixed
        return {"suite": suite, "method": method,
                "shots": {str(k): _summarize(part, suite, method) for k, part in sorted(by_k.items())}}
    return _summarize(runs, suite, method)


def _summarize(runs: list[dict], suite: str, method: str) -> dict:
    per_task: dict[str, list[float]] = {}
    params = set()
    metric_names = set()
    for run in runs:
        per_task.setdefault(run["task"], []).append(run["metric"]["value"])
        metric_names.add(run["metric"]["name"])
        params.add(run["params"]["trainable"])
    if len(metric_names) > 1:
        raise ValueError(f"runs of {suite}/{method} report different metrics: {sorted(metric_names)}")
    tasks = {t: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                 "seeds": len(v)} for t, v in per_task.items()}
    mean = statistics.fmean(t["mean"] for t in tasks.values())
    trainable = max(params) if params else 0
    return {"suite": suite, "method": method, "metric": metric_names.pop() if metric_names else None,
            "tasks": tasks, "mean": mean, "trainable_params": trainable,
            "params_differ_between_tasks": len(params) > 1, "ppt": ppt(mean, trainable)}
