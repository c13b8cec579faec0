"""One table across backbones: the same methods on the same data with several backbones.

Suites that share their data (`data_suite`: a suite and the suites that `extends:` it) but differ in
`backbone` form one comparison: a methods x backbones table of the mean metric over the tasks (what
each suite's own table shows in its mean column, from the same run files) and a grouped bar plot, one
group per method and one bar per backbone. A suite per backbone is all it takes, e.g.

    suites:
      vtab-dinov2: {extends: vtab, backbone: dinov2-vitb14, methods: [linear, lora, ssf]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .metric_labels import metric_name
from .plots import _RC, Plot, _svg
from .tables import suite_table

#: bar colours per backbone (Okabe-Ito order, then greys)
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def comparison_groups(suites: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """data suite -> its suites in report order, for every data suite used with two or more backbones."""
    groups: dict[str, list[str]] = {}
    for name, info in suites.items():
        if info.get("kind") == "dense":
            continue
        groups.setdefault(info.get("data_suite") or name, []).append(name)
    return {data: names for data, names in groups.items()
            if len({suites[n].get("backbone") for n in names}) > 1}


def _metric(runs: pd.DataFrame, names: list[str]) -> str:
    ok = runs[runs["suite"].isin(names) & (runs["status"] == "ok")] if len(runs) else runs
    found = sorted({n for n in ok["metric_name"] if isinstance(n, str)}) if len(ok) else []
    return " / ".join(metric_name(n) for n in found) or metric_name(None)


def backbone_comparison(runs: pd.DataFrame, suites: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """The report's cross-backbone sections (empty when no data suite has two backbones)."""
    out = []
    for data, names in comparison_groups(suites).items():
        methods = list(dict.fromkeys(m for n in names for m in suites[n]["methods"]))
        columns = [{"suite": n, "backbone": str(suites[n].get("backbone")), "title": suites[n].get("title", n)}
                   for n in names]
        means = {}
        for n in names:
            info = suites[n]
            table = suite_table(runs, n, [m for m in methods if m in info["methods"]], info["tasks"])
            means[n] = {m: float(table.loc[m, "mean"]) for m in table.index}
        rows = []
        for method in methods:
            values = [means[n].get(method, math.nan) for n in names]
            finite = [v for v in values if not math.isnan(v)]
            best = max(finite) if finite else None
            rows.append({"method": method,
                         "cells": [{"text": "\u2013" if math.isnan(v) else f"{v:.1f}",
                                    "best": best is not None and len(finite) > 1 and v == best} for v in values]})
        section = {"id": f"backbones-{data}", "data_suite": data, "columns": columns, "rows": rows,
                   "metric": _metric(runs, names), "plot": None}
        section["plot"] = _plot(section, means, names, methods)
        out.append(section)
    return out


def _plot(section: dict, means: dict, names: list[str], methods: list[str]) -> dict | None:
    plotted = [m for m in methods if any(not math.isnan(means[n].get(m, math.nan)) for n in names)]
    if not plotted:
        return None
    plot_id = f"plot-{section['data_suite']}-backbones"
    with matplotlib.rc_context({**_RC, "svg.hashsalt": plot_id}):
        plot = _draw(plot_id, section, means, names, plotted)
    return {"id": plot.id, "kind": plot.kind, "title": plot.title, "desc": plot.desc, "caption": plot.caption,
            "svg": Markup(plot.svg), "n_marks": plot.n_marks}


def _draw(plot_id: str, section: dict, means: dict, names: list[str], methods: list[str]) -> Plot:
    labels = [c["backbone"] for c in section["columns"]]
    width = 0.8 / len(names)
    fig = Figure(figsize=(6.8, 3.4))
    fig.subplots_adjust(left=0.09, right=0.70, bottom=0.24, top=0.95)
    ax = fig.add_subplot()
    marks = 0
    desc = []
    for j, (name, label) in enumerate(zip(names, labels)):
        colour = _COLOURS[j % len(_COLOURS)]
        for i, method in enumerate(methods):
            value = means[name].get(method, math.nan)
            if math.isnan(value):
                continue
            bar = ax.bar([i - 0.4 + width * (j + 0.5)], [value], width=width * 0.92, color=colour)[0]
            bar.set_gid(f"{plot_id}-mark-{method}-{name}")
            marks += 1
            desc.append(f"{method} with {label}: {value:.1f}")
    ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right")
    ax.set_ylabel(f"mean {section['metric']} (%)")
    ax.grid(True, axis="y", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    handles = [Patch(color=_COLOURS[j % len(_COLOURS)], label=label) for j, label in enumerate(labels)]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=7)
    title = f"{section['data_suite']}: mean {section['metric']} per method and backbone"
    caption = ("One group of bars per method, one bar per backbone (suite), each the mean over the suite's "
               "tasks, as in the table above; a method without a result on every task has no bar there. "
               "Compare bars within a group: same method, same data, another backbone.")
    text = "; ".join(desc)
    return Plot(plot_id, "backbones", title, text, caption, _svg(fig, plot_id, title, text + "."), marks)
