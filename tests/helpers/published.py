"""Published numbers as the report ships them (src/vpeft/report/published/*.csv), and the mean head
size of a suite, which several papers include in their printed parameter count."""

from __future__ import annotations

import csv

import yaml

from .snake import ROOT


def published_params(table: str, method: str) -> int:
    """The `params` column of `method` in published/<table>.csv (the printed 0.28M as 280000)."""
    with open(ROOT / "src/vpeft/report/published" / f"{table}.csv", newline="") as f:
        [row] = [r for r in csv.DictReader(f) if r["method"] == method]
    return int(float(row["params"]))


def mean_head(suite: str, width: int = 768) -> float:
    """Mean parameters of a linear head (weight + bias) over the suite's tasks in config/config.yaml."""
    tasks = yaml.safe_load((ROOT / "config/config.yaml").read_text())["suites"][suite]["tasks"]
    return sum((width + 1) * t["num_classes"] for t in tasks.values()) / len(tasks)
