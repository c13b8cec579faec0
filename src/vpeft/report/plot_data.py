"""The numbers behind the report's plots, taken from the same run frame and tables as its tables.

One :class:`SuitePlotData` per suite: a mark per method with a result on every task (the suite's
metric in %, trainable parameters, PPT, and the spread over seeds when there are several complete
seeds), and the published numbers of the same methods where the suite has a published table whose
tasks match.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from vpeft.metrics import ppt
from vpeft.report.published import (
    DENSE_SOURCE,
    PUBLISHED_SOURCE,
    PUBLISHED_TASKS,
    load_published,
    load_published_dense,
    published_task,
)
from vpeft.report.tables import run_metric

__all__ = ["Mark", "PublishedMark", "SuitePlotData", "dense_plot_data", "image_plot_data", "seed_means"]


@dataclass(frozen=True)
class Mark:
    method: str
    family: str | None
    params: float
    value: float  # the suite's metric, %, mean over seeds
    error: float  # sample std over the complete seeds' values, NaN below two
    ppt: float  # fraction, as the tables print it
    ppt_error: float
    n_seeds: int
    train_memory_mb: float = math.nan  # the method's training memory (median over runs, vpeft.efficiency)
    latency_ms: float = math.nan  # eval-mode forward at the evaluation batch, merged (median over runs)


@dataclass(frozen=True)
class PublishedMark:
    method: str
    family: str | None
    params: float
    value: float
    label: str


@dataclass
class SuitePlotData:
    suite: str
    title: str
    metric: str  # axis label, e.g. "mean top-1 accuracy (%)"
    params_label: str
    marks: list[Mark]
    without_result: list[str]  # methods with no result on every task: no mark
    published: list[PublishedMark] = field(default_factory=list)
    published_source: str | None = None
    devices: str = ""  # the device(s) that measured the efficiency figures
    eval_batch: float = math.nan


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def seed_means(runs: pd.DataFrame, suite: str, method: str, tasks: list[str], metric: str | None = None
               ) -> list[float]:
    """Per seed that succeeded on every task: the mean over tasks of the metric (%), in seed order.

    ``metric`` None: each run's primary metric; otherwise that named metric (dense runs report several).
    """
    if not len(runs):
        return []
    ok = runs[(runs["suite"] == suite) & (runs["method"] == method) & (runs["status"] == "ok")]
    out = []
    for seed in sorted(s for s in ok["seed"].dropna().unique()):
        by_task = {}
        for row in ok[ok["seed"] == seed].itertuples():
            value = 100.0 * row.metric if metric is None else run_metric(row, metric)
            if _finite(value):
                by_task[row.task] = value
        if all(t in by_task for t in tasks):
            out.append(statistics.fmean(by_task[t] for t in tasks))
    return out


def _mark(method: str, family: str | None, value: float, params: float, seeds: list[float]) -> Mark:
    spread = statistics.stdev(seeds) if len(seeds) > 1 else math.nan
    ppt_spread = statistics.stdev(ppt(v / 100.0, params) for v in seeds) if len(seeds) > 1 else math.nan
    return Mark(method, family, float(params), float(value), spread, ppt(value / 100.0, params), ppt_spread,
                len(seeds))


def _with_costs(mark: Mark, efficiency: pd.DataFrame | None) -> Mark:
    if efficiency is None or mark.method not in efficiency.index:
        return mark
    row = efficiency.loc[mark.method]
    return dataclasses.replace(mark, train_memory_mb=float(row["train_memory_mb"]),
                               latency_ms=float(row["latency_eval_ms"]))


def _cost_context(data: SuitePlotData, efficiency: pd.DataFrame | None) -> None:
    if efficiency is None or not len(efficiency):
        return
    data.devices = "; ".join(sorted({d for text in efficiency["devices"] for d in str(text).split("; ") if d}))
    batches = [b for b in efficiency["eval_batch"] if _finite(b)]
    data.eval_batch = statistics.median(batches) if batches else math.nan


def _family(families: Mapping[str, Mapping[str, Any]], method: str) -> str | None:
    return (families.get(method) or {}).get("family")


def image_plot_data(runs: pd.DataFrame, name: str, cfg: Mapping[str, Any], methods: list[str],
                    tasks: list[str], table: pd.DataFrame, metric_label: str,
                    efficiency: pd.DataFrame | None = None) -> SuitePlotData:
    """An image / video suite: the table's task mean against its trainable parameters (and, with the
    suite's `efficiency_table`, against training memory and latency)."""
    families = cfg.get("families") or {}
    marks, without = [], []
    for method in methods:
        value, params = table.loc[method, "mean"], table.loc[method, "params"]
        if not (_finite(value) and _finite(params)):
            without.append(method)
            continue
        seeds = seed_means(runs, name, method, tasks)
        marks.append(_with_costs(_mark(method, _family(families, method), value, params, seeds), efficiency))
    data = SuitePlotData(name, str(cfg.get("title") or name), f"mean {metric_label}",
                         "trainable parameters (classification head excluded)", marks, without)
    _cost_context(data, efficiency)
    key = str(cfg.get("published") or "")
    pub = load_published(key) if key else None
    if pub is None:
        return data
    mapped = {t: published_task(t) for t in tasks}
    if not tasks or not all(p in PUBLISHED_TASKS[key] for p in mapped.values()):
        return data  # the published mean is over other tasks: not comparable, so not drawn
    full_set = sorted(mapped.values()) == sorted(PUBLISHED_TASKS[key])
    for method in methods:
        if method not in pub.index:
            continue
        prow = pub.loc[method]
        value = float(prow["mean"]) if full_set else statistics.fmean(float(prow[p]) for p in mapped.values())
        data.published.append(PublishedMark(method, _family(families, method), float(prow["params"]), value,
                                            str(prow["display_name"])))
    data.published_source = PUBLISHED_SOURCE
    return data


def dense_plot_data(runs: pd.DataFrame, name: str, cfg: Mapping[str, Any], methods: list[str],
                    columns: list[tuple[str, str]], table: pd.DataFrame, metric_titles: Mapping[str, str],
                    efficiency: pd.DataFrame | None = None) -> SuitePlotData:
    """A dense suite: its first metric (box AP, VOC AP@0.5 or mIoU), mean over tasks, against parameters."""
    families = cfg.get("families") or {}
    metric = columns[0][1] if columns else None
    tasks = [t for t, m in columns if m == metric]
    label = metric_titles.get(metric, metric) if metric else "metric"
    axis = f"{label} (%)" + (", mean over tasks" if len(tasks) > 1 else "")
    data = SuitePlotData(name, str(cfg.get("title") or name), axis,
                         "trainable backbone parameters (neck and heads excluded)", [], [])
    for method in methods:
        values = [table.loc[method, f"{t}:{metric}"] for t in tasks]
        params = table.loc[method, "params"]
        if not tasks or not all(_finite(v) for v in values) or not _finite(params):
            data.without_result.append(method)
            continue
        data.marks.append(_with_costs(_mark(method, _family(families, method), statistics.fmean(values), params,
                                            seed_means(runs, name, method, tasks, metric)), efficiency))
    _cost_context(data, efficiency)
    key = str(cfg.get("published") or "")
    pub = load_published_dense(key) if key else None
    if pub is None or metric not in pub.columns:
        return data
    for method in methods:
        if method in pub.index:
            prow = pub.loc[method]
            data.published.append(PublishedMark(method, _family(families, method), float(prow["params"]),
                                                float(prow[metric]), str(prow["display_name"])))
    data.published_source = DENSE_SOURCE
    return data
