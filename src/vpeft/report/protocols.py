"""The report's sections for the evaluation protocols beyond a task's own splits.

* Few-shot (suites with `fewshot`): top-1 against shots per method (mean over tasks, then mean ± sample
  std over the few-shot seeds), and a table per k: methods x tasks, each cell mean ± std over seeds.
* Distribution shift (suites with `shift_targets`, from the `shift.json` beside each run): source and
  target top-1 per method and their average over targets; where WiSE-FT ran, the source-vs-target curve
  of each method along alpha (Mai et al., CVPR 2025, Fig. on WiSE-FT) and its table.

Everything is recomputed from the run files; a missing or failed run is counted and named, never hidden.
A seed enters a mean over tasks only when every task of that seed finished.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure

from .families import family_colour
from .plots import _RC, Plot, _svg

_SHOTS = re.compile(r"/shots-(\d+)/")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _pct(value: float | None) -> str:
    return "\u2013" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _pm(mean: float | None, std: float | None) -> str:
    text = _pct(mean)
    if std is not None and not math.isnan(std) and text != "\u2013":
        text += f" \u00b1 {100 * std:.1f}"
    return text


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _shots_of(path: Any) -> int | None:
    match = _SHOTS.search(str(path).replace("\\", "/"))
    return int(match.group(1)) if match else None


# -- few-shot ------------------------------------------------------------------------------------
def fewshot_table(runs: pd.DataFrame, info: dict) -> pd.DataFrame:
    """One row per method x shots: per task the mean over seeds, `mean` / `std` over seeds of the
    seed's mean over tasks (complete seeds only), counts and a status."""
    runs = runs.assign(shots=[_shots_of(p) for p in runs["path"]])
    tasks, settings = list(info["tasks"]), info["fewshot"]
    rows = []
    for method in info["methods"]:
        for shots in settings["shots"]:
            part = runs[(runs["method"] == method) & (runs["shots"] == shots)]
            ok = part[part["status"] == "ok"]
            row: dict[str, Any] = {"method": method, "shots": shots}
            for task in tasks:
                values = ok[ok["task"] == task]["metric"].tolist()
                row[task] = statistics.fmean(values) if values else math.nan
                row[f"{task}:std"] = _std(values)
            per_seed = [statistics.fmean(group.set_index("task").loc[tasks, "metric"])
                        for _, group in ok.groupby("seed") if set(tasks) <= set(group["task"])]
            row.update(mean=statistics.fmean(per_seed) if per_seed else math.nan, std=_std(per_seed),
                       n_seeds=len(per_seed), n_ok=len(ok),
                       n_expected=len(tasks) * len(settings["seeds"]),
                       n_failed=int((part["status"] == "failed").sum()))
            missing = row["n_expected"] - row["n_ok"] - row["n_failed"]
            row["status"] = "ok" if row["n_ok"] == row["n_expected"] else (
                ", ".join(t for t in (f"{missing} missing" if missing else "",
                                      f"{row['n_failed']} failed" if row["n_failed"] else "") if t))
            rows.append(row)
    return pd.DataFrame(rows)


def _fewshot_plot(name: str, table: pd.DataFrame, info: dict) -> Plot | None:
    drawn = table[table["n_seeds"] > 0]
    if drawn.empty:
        return None
    plot_id = f"plot-{name}-fewshot"
    title = f"{info.get('title', name)}: top-1 against training images per class"
    methods = list(dict.fromkeys(drawn["method"]))
    with matplotlib.rc_context({**_RC, "svg.hashsalt": plot_id}):
        fig = Figure(figsize=(6.8, 3.6))
        ax = fig.add_axes((0.09, 0.14, 0.66, 0.78))
        for i, method in enumerate(methods):
            part = drawn[drawn["method"] == method].sort_values("shots")
            family = (info.get("families") or {}).get(method, {}).get("family")
            errors = [0.0 if math.isnan(s) else 100 * s for s in part["std"]]
            ax.errorbar(part["shots"], 100 * part["mean"], yerr=errors, color=family_colour(family),
                        marker=_MARKERS[i % len(_MARKERS)], capsize=3, linewidth=1.4, markersize=5,
                        linestyle=("-", "--", ":", "-.")[i // len(_MARKERS) % 4] if i >= len(_MARKERS) else "-",
                        label=method)
        shots = sorted(set(drawn["shots"]))
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
        ax.set_xlabel("training images per class (k)")
        ax.set_ylabel("mean top-1 over tasks (%)")
        ax.grid(True, linewidth=0.3, alpha=0.5)
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)
        desc = "; ".join(
            f"{m}: " + ", ".join(f"{int(r.shots)}-shot {_pm(r.mean, r.std)}"
                                 for r in drawn[drawn["method"] == m].sort_values("shots").itertuples())
            for m in methods)
        svg = _svg(fig, plot_id, title, desc)
    seeds = len(info["fewshot"]["seeds"])
    caption = (f"Mean top-1 over the {len(info['tasks'])} task(s) against k (log scale); error bars: sample std "
               f"over {seeds} seed(s), each seed drawing its own k images per class. A point is drawn when at "
               f"least one seed finished every task.")
    return Plot(id=plot_id, kind="fewshot", title=title, desc=desc, caption=caption, svg=svg,
                n_marks=len(drawn))


def _plot_context(plot: Plot | None) -> dict | None:
    if plot is None:
        return None
    return {"id": plot.id, "kind": plot.kind, "caption": plot.caption, "svg": Markup(plot.svg), "n_marks": plot.n_marks}


def fewshot_context(runs: pd.DataFrame, suites: dict[str, dict]) -> list[dict]:
    out = []
    for name, info in suites.items():
        if not info.get("fewshot"):
            continue
        table = fewshot_table(runs[runs["suite"] == name], info)
        per_k = []
        for shots in info["fewshot"]["shots"]:
            part = table[table["shots"] == shots]
            per_k.append({"shots": shots, "rows": [
                {"method": r["method"], "cells": [_pm(r[t], r[f"{t}:std"]) for t in info["tasks"]],
                 "mean": _pm(r["mean"], r["std"]), "seeds": f"{r['n_seeds']} / {len(info['fewshot']['seeds'])}",
                 "status": r["status"]} for _, r in part.iterrows()]})
        plot = _plot_context(_fewshot_plot(name, table, info))
        protocol = f"{info.get('protocol')}" if info.get("protocol") else ""
        out.append({"suite": name, "title": info.get("title", name), "tasks": list(info["tasks"]),
                    "shots": info["fewshot"]["shots"], "seeds": info["fewshot"]["seeds"], "protocol": protocol,
                    "backbone": info.get("backbone", ""), "plot": plot, "per_k": per_k,
                    "n_ok": int(table["n_ok"].sum()), "n_expected": int(table["n_expected"].sum())})
    return out


# -- distribution shift and WiSE-FT ---------------------------------------------------------------
def _read_shift(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "ok" else None


def _label(method: str, record: dict) -> str:
    fewshot = record.get("fewshot") or {}
    return f"{method} ({fewshot['shots']}-shot)" if fewshot.get("shots") else method


def _wise_plot(name: str, info: dict, curves: dict[str, list[dict]], families: dict) -> Plot | None:
    if not curves:
        return None
    plot_id = f"plot-{name}-wise"
    title = f"{info.get('title', name)}: WiSE-FT, source against shift-target top-1"
    with matplotlib.rc_context({**_RC, "svg.hashsalt": plot_id}):
        fig = Figure(figsize=(6.8, 3.8))
        ax = fig.add_axes((0.09, 0.13, 0.62, 0.8))
        for i, (method, points) in enumerate(curves.items()):
            colour = family_colour(families.get(method.split(" (")[0], {}).get("family"))
            xs = [100 * p["source"] for p in points]
            ys = [100 * p["target"] for p in points]
            ax.plot(xs, ys, color=colour, marker=_MARKERS[i % len(_MARKERS)], linewidth=1.3, markersize=4,
                    label=method)
            for p, x, y in zip(points, xs, ys):
                if p["alpha"] in (0.0, 1.0):
                    ax.annotate(f"\u03b1={p['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 3),
                                fontsize=7, color=colour)
        ax.set_xlabel("source test top-1 (%)")
        ax.set_ylabel("mean top-1 over shift targets (%)")
        ax.grid(True, linewidth=0.3, alpha=0.5)
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)
        desc = "; ".join(f"{m}: " + ", ".join(f"alpha {p['alpha']:g} source {_pct(p['source'])} target "
                                              f"{_pct(p['target'])}" for p in pts) for m, pts in curves.items())
        svg = _svg(fig, plot_id, title, desc)
    caption = ("Each line is one method's weight-space ensemble theta0 + alpha (theta_ft - theta0) of its merged "
               "fine-tuned backbone with the frozen one (head: the trained one), from alpha = 0 (frozen backbone) "
               "to alpha = 1 (the trained model); means over tasks and seeds. Up and right is better: a curve that "
               "bulges above the straight line between its ends gains robustness without retraining.")
    return Plot(id=plot_id, kind="wise", title=title, desc=desc, caption=caption, svg=svg,
                n_marks=sum(len(p) for p in curves.values()))


def shift_context(shift_paths, suites: dict[str, dict]) -> list[dict]:
    """One entry per suite with shift targets: the per-method table and the WiSE-FT curves."""
    records: dict[str, list[tuple[Path, dict | None]]] = {}
    for path in shift_paths:
        path = Path(path)
        suite = path.parts[-5] if _shots_of(path) is None else path.parts[-6]
        records.setdefault(suite, []).append((path, _read_shift(path)))
    out = []
    for name, info in suites.items():
        shift = info.get("shift")
        if not shift:
            continue
        targets = list(shift["targets"])
        found = records.get(name, [])
        ok = [r for _, r in found if r is not None]
        problems = [str(p) for p, r in found if r is None]
        by_method: dict[str, list[dict]] = {}
        for record in ok:
            by_method.setdefault(_label(record["method"], record), []).append(record)
        order = [m for m in info["methods"]]
        labels = sorted(by_method, key=lambda lab: (order.index(lab.split(" (")[0]) if lab.split(" (")[0] in order
                                                   else len(order), lab))
        rows, curves, wise_rows = [], {}, []
        for label in labels:
            group = by_method[label]
            source = statistics.fmean(r["source"]["top1"] for r in group)
            per_target = {t: statistics.fmean(r["targets"][t]["top1"] for r in group) for t in targets}
            rows.append({"method": label, "runs": len(group), "source": _pct(source),
                         "targets": [_pct(per_target[t]) for t in targets],
                         "mean": _pct(statistics.fmean(per_target.values())),
                         "drop": f"{100 * (statistics.fmean(per_target.values()) - source):+.1f}"})
            alphas = [set(p["alpha"] for p in r["wise"]["points"]) for r in group]
            common = sorted(set.intersection(*alphas)) if alphas and all(alphas) else []
            if len(common) > 1:
                points = []
                for alpha in common:
                    picked = [next(p for p in r["wise"]["points"] if p["alpha"] == alpha) for r in group]
                    points.append({"alpha": alpha, "source": statistics.fmean(p["source"]["top1"] for p in picked),
                                   "target": statistics.fmean(statistics.fmean(p["targets"][t]["top1"] for t in targets)
                                                              for p in picked)})
                curves[label] = points
                best = max(points, key=lambda p: (p["target"], p["alpha"]))  # ties: the larger alpha
                wise_rows.append({"method": label, "cells": [f"{_pct(p['source'])} / {_pct(p['target'])}" for p in points],
                                  "best": f"\u03b1 = {best['alpha']:g}"})
            else:
                reason = next((r["wise"].get("reason") for r in group if r["wise"].get("reason")), None)
                wise_rows.append({"method": label, "cells": [], "best": "\u2013", "reason": reason})
        grid = sorted({p["alpha"] for pts in curves.values() for p in pts})
        for row in wise_rows:  # align each method's cells with the common alpha columns
            if row["cells"] and len(row["cells"]) != len(grid):
                points = {p["alpha"]: p for p in curves[row["method"]]}
                row["cells"] = [f"{_pct(points[a]['source'])} / {_pct(points[a]['target'])}" if a in points else "\u2013"
                                for a in grid]
        titles = [shift["targets"][t].get("title", t) for t in targets]
        out.append({"suite": name, "title": info.get("title", name), "targets": targets, "target_titles": titles,
                    "classes": [shift["targets"][t].get("classes") for t in targets],
                    "rows": rows, "wise_alphas": grid, "wise_rows": wise_rows,
                    "plot": _plot_context(_wise_plot(name, info, curves, info.get("families") or {})),
                    "n_ok": len(ok), "n_expected": len(found), "problems": problems})
    return out
