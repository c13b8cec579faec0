"""Render the benchmark report as one self-contained HTML file (inline CSS and SVG plots, no scripts,
no network).

:func:`build_context` turns the run frame from :func:`vpeft.report.tables.load_runs` plus a suite
description into plain, already-formatted values; :func:`render_report` feeds them to the Jinja2
template ``templates/index.html.j2`` with autoescaping on. All number formatting happens here so
the template only lays things out.

Suite description (one entry per suite, keyed by suite name)::

    {"title": "VTAB-mini", "kind": "image", "protocol": "vtab1k",
     "backbone": "vit-demo (vit_demo_patch4_32.fractal)",
     "methods": ["linear", "lora"], "tasks": ["digits", "shapes"],
     "groups": {"digits": "natural", "shapes": "structured"} | None,
     "published": "vtab" | "fgvc" | None,
     "notes": ["pretrained vs random-init linear probe: +X points"],
     "protocol_differences": [{"setting", "ours", "published", "where"}, ...]}  # protocol_diff
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
import pandas as pd

from vpeft.dense.settings import LAYOUTS
from vpeft.metrics import round_half_up
from vpeft.report.families import FAMILY_TITLES
from vpeft.report.metric_labels import DENSE_EVALUATORS, DENSE_METRICS, metric_name
from vpeft.report.plot_data import dense_plot_data, image_plot_data
from vpeft.report.plots import suite_plots
from vpeft.report.published import (
    DENSE_SOURCE,
    DENSE_TABLES,
    PUBLISHED_SOURCE,
    PUBLISHED_TASKS,
    load_published,
    load_published_dense,
    published_task,
)
from vpeft.report.tables import cell_table, dense_table, efficiency_table, suite_table

__all__ = ["build_context", "format_seconds", "human_params", "render_html", "render_report"]

_TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
_TEMPLATE_NAME = "index.html.j2"
_MINUS = "\u2212"


# --------------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------------


def _isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: Any, ndigits: int = 2) -> str:
    """Fixed-point with round-half-up; an en dash for NaN / None."""
    if not _isnum(x):
        return "\u2013"
    text = f"{round_half_up(float(x), ndigits):.{ndigits}f}"
    return text.replace("-", _MINUS) if text.startswith("-") else text


def _fmt_delta(x: float) -> str:
    text = f"{round_half_up(x, 2):+.2f}"
    return text.replace("-", _MINUS)


def human_params(n: Any) -> str:
    """``294912 -> '0.29M'``, ``12288 -> '12.3K'``, ``512 -> '512'``, ``0 -> '0'``, NaN -> en dash."""
    if not _isnum(n):
        return "\u2013"
    n = float(n)
    if n >= 1e5:  # from 100K on, millions with two decimals, like the published tables (0.16M)
        return f"{round_half_up(n / 1e6, 2):.2f}M"
    if n >= 1e3:
        return f"{round_half_up(n / 1e3, 1):.1f}K"
    return f"{n:.0f}" if n.is_integer() else f"{n:.1f}"


def format_seconds(seconds: Any) -> str:
    """``12.3 -> '12.3 s'``, ``245 -> '4 min 05 s'``, ``3725 -> '1 h 02 min'``."""
    if not _isnum(seconds):
        return "\u2013"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {(whole % 3600) // 60:02d} min"


def _distinct(values: Iterable[Any]) -> list[str]:
    out = set()
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            continue
        out.add(str(value))
    return sorted(out)


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------


def _prov_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _provenance(runs: pd.DataFrame) -> dict[str, Any]:
    """Code / package / hardware versions recorded in the run files, flagging disagreements."""
    items: list[dict[str, Any]] = []

    def add(label: str, values: Iterable[Any]) -> None:
        distinct = _distinct(values)
        items.append(
            {
                "label": label,
                "value": ", ".join(distinct) if distinct else "not recorded",
                "differs": len(distinct) > 1,
            }
        )

    recorded = runs[runs["status"] != "missing"] if len(runs) else runs
    if len(recorded):
        with_prov = recorded[recorded["vpeft_version"].notna() | recorded["git_commit"].notna()]
    else:
        with_prov = recorded
    commits = []
    for commit, dirty in zip(with_prov["git_commit"], with_prov["git_dirty"]):
        if isinstance(commit, str):
            commits.append(commit + (" (uncommitted changes)" if dirty is True else ""))
    add("git commit", commits)
    add("vpeft version", with_prov["vpeft_version"])
    add("python", with_prov["python"])

    for column, prefix in (("packages", ""), ("hardware", "hardware: ")):
        parsed = [json.loads(text) for text in with_prov[column] if isinstance(text, str)]
        for key in sorted({k for entry in parsed for k in entry} - {"vpeft"}):  # vpeft: shown above
            add(prefix + key, [_prov_value(entry[key]) for entry in parsed if key in entry])
    add("threads", [int(t) for t in with_prov["threads"] if _isnum(t)])
    created = _distinct(with_prov["created"])
    if len(created) > 1:
        created_range: str | None = f"{created[0]} \u2013 {created[-1]}"
    else:
        created_range = created[0] if created else None
    return {
        "items": items,
        "n_files": len(with_prov),
        "any_differs": any(item["differs"] for item in items),
        "created_range": created_range,
    }


# --------------------------------------------------------------------------------------------
# suites
# --------------------------------------------------------------------------------------------


def _cell(
    text: str, *, cls: str = "", title: str | None = None, sub: str | None = None, best: bool = False
) -> dict:
    return {"text": text, "cls": cls, "title": title, "sub": sub, "best": best}


def _problem_text(problems: list[tuple[Any, str, str]]) -> str:
    parts = []
    for seed, status, reason in problems:
        where = f"seed {seed}" if seed is not None else "run"
        parts.append(f"{where} {status}: {reason}")
    return "; ".join(parts)


def _best(values: Iterable[float]) -> float | None:
    """Highest value as displayed (2 decimals); None unless at least two methods have one."""
    finite = [round_half_up(v, 2) for v in values if _isnum(v)]
    return max(finite) if len(finite) >= 2 else None


def _is_best(value: float, best: float | None) -> bool:
    return best is not None and _isnum(value) and round_half_up(value, 2) == best


def _metric_label(names: list[str]) -> str:
    if not names:
        return "top-1 accuracy (%)"
    return ", ".join(f"{metric_name(n)} (%)" for n in names)


def _protocol_rows(cfg: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The suite's differences from its published table's recipe (vpeft.report.protocol_diff), shown
    beside the table; None where the suite has no published table or its description no comparison."""
    if not cfg.get("published") or cfg.get("protocol_differences") is None:
        return None
    return [{k: str(row.get(k, "")) for k in ("setting", "ours", "published", "where")}
            for row in cfg.get("protocol_differences") or []]


def _published_rows(
    key: str,
    methods: list[str],
    tasks: list[str],
    groups: Mapping[str, str] | None,
    group_names: list[str],
    table: pd.DataFrame,
) -> tuple[dict[str, dict], list[str]]:
    """Published sub-rows keyed by method, plus notes about how they compare."""
    pub = load_published(key)
    if pub is None:
        return {}, [f"Unknown published table {key!r}; no published numbers shown."]
    pub_tasks = list(PUBLISHED_TASKS[key])
    mapped = {t: published_task(t) for t in tasks if published_task(t) in pub_tasks}
    all_mapped = len(mapped) == len(tasks)
    full_set = all_mapped and sorted(mapped.values()) == sorted(pub_tasks)
    notes = [
        f"Rows marked \u201cV-PETL\u201d are the published {PUBLISHED_SOURCE} numbers, transcribed from "
        "the README; they are reference points, not runs of this code. "
        "\u0394 = ours \u2212 published, in points."
    ]
    if not mapped:
        notes.append(
            "None of this suite's tasks is in the published table, so no per-task \u0394 is shown; "
            f"the published mean, parameters and PPT are those of the full {len(pub_tasks)}-task table."
        )
    elif not all_mapped:
        notes.append(
            "Only tasks with the same name as a published column are compared; the published mean is "
            f"that of the full {len(pub_tasks)}-task table and is not compared."
        )
    if key == "fgvc":
        notes.append(
            "The published FGVC parameter counts include the classification head for some methods "
            "(Adapter, VPT, SSF, LoRA); ours always exclude it."
        )
    missing = [m for m in methods if m not in pub.index]
    if missing:
        notes.append("No published row for: " + ", ".join(missing) + ".")

    rows: dict[str, dict] = {}
    for method in methods:
        if method not in pub.index:
            continue
        prow = pub.loc[method]
        ours = table.loc[method]
        cells = []
        for task in tasks:
            if task not in mapped:
                cells.append(_cell("\u2013", cls="na", title="task not in the published table"))
                continue
            value = float(prow[mapped[task]])
            sub = None
            if _isnum(ours[task]):
                sub = "\u0394 " + _fmt_delta(float(ours[task]) - value)
            cells.append(_cell(f"{value:.1f}", title=f"V-PETL README, task {mapped[task]}", sub=sub))

        if full_set:
            pub_mean = float(prow["mean"])
            mean_title = "README mean"
        elif all_mapped:
            pub_mean = sum(float(prow[mapped[t]]) for t in tasks) / len(tasks)
            mean_title = f"mean of the published values over this suite's {len(tasks)} tasks"
        else:
            pub_mean = None
            mean_title = (
                f"README mean over all {len(pub_tasks)} published tasks (task sets differ; not compared)"
            )
        if pub_mean is not None:
            sub = "\u0394 " + _fmt_delta(float(ours["mean"]) - pub_mean) if _isnum(ours["mean"]) else None
            mean_cell = _cell(_fmt(pub_mean), title=mean_title, sub=sub)
        else:
            mean_cell = _cell(_fmt(float(prow["mean"])), title=mean_title, cls="na")

        group_cells = []
        if group_names:
            group_values = []
            for name in group_names:
                members = [t for t in tasks if groups[t] == name]  # type: ignore[index]
                if all(t in mapped for t in members):
                    value = sum(float(prow[mapped[t]]) for t in members) / len(members)
                    ours_value = ours[f"mean_{name}"]
                    sub = "\u0394 " + _fmt_delta(float(ours_value) - value) if _isnum(ours_value) else None
                    title = f"computed from the published {name} tasks"
                    group_cells.append(_cell(_fmt(value), title=title, sub=sub))
                    group_values.append(value)
                else:
                    group_cells.append(_cell("\u2013", cls="na"))
                    group_values.append(math.nan)
            if all(_isnum(v) for v in group_values):
                value = sum(group_values) / len(group_values)
                ours_value = ours["mean_of_groups"]
                sub = "\u0394 " + _fmt_delta(float(ours_value) - value) if _isnum(ours_value) else None
                group_cells.append(_cell(_fmt(value), title="mean of the published group means", sub=sub))
            else:
                group_cells.append(_cell("\u2013", cls="na"))

        note = prow["note"] if isinstance(prow["note"], str) and prow["note"] else None
        params_title = f"{int(prow['params']):,} parameters as printed in the README"
        if note and "head" in note:
            params_title += f"; {note}"
        rows[method] = {
            "label": f"V-PETL: {prow['display_name']}",
            "cells": cells,
            "mean": mean_cell,
            "groups": group_cells,
            "params": _cell(str(prow["params_printed"]), title=params_title),
            "ppt": _cell(str(prow["ppt_printed"]), title=note),
        }
    return rows, notes


def _by_family(methods: list[str], families: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Methods grouped by family (stable within a family); unknown families go last."""
    order = list(FAMILY_TITLES)

    def key(method: str) -> int:
        family = (families.get(method) or {}).get("family")
        return order.index(family) if family in order else len(order)

    return sorted(methods, key=key)


def _plots_context(data) -> list[dict[str, Any]]:
    return [{"id": p.id, "kind": p.kind, "caption": p.caption, "svg": Markup(p.svg), "n_marks": p.n_marks}
            for p in suite_plots(data)]


def _suite_context(runs: pd.DataFrame, name: str, cfg: Mapping[str, Any], *,
                   plots: bool = True) -> dict[str, Any]:
    families = cfg.get("families") or {}
    methods = _by_family(list(cfg.get("methods") or []), families)
    tasks = list(cfg.get("tasks") or [])
    groups = cfg.get("groups") or None
    table = suite_table(runs, name, methods, tasks, groups=groups)
    cells = cell_table(runs, name, methods, tasks)
    group_names = [
        c[len("mean_") :] for c in table.columns if c.startswith("mean_") and c != "mean_of_groups"
    ]
    suite_runs = runs[runs["suite"] == name] if len(runs) else runs
    ok_runs = suite_runs[suite_runs["status"] == "ok"] if len(suite_runs) else suite_runs

    best_task = {t: _best(table[t]) for t in tasks}
    best_mean = _best(table["mean"])
    best_groups = {g: _best(table[f"mean_{g}"]) for g in group_names}
    best_mog = _best(table["mean_of_groups"]) if group_names else None
    best_ppt = _best(table["ppt"])

    rows = []
    for method in methods:
        mine = cells[cells["method"] == method].set_index("task")
        row = table.loc[method]
        row_cells = []
        for task in tasks:
            info = mine.loc[task]
            problems = info["problems"]
            if info["n_ok"] == 0:
                status = "failed" if info["n_failed"] else "missing"
                row_cells.append(_cell(status, cls=status, title=_problem_text(problems)))
                continue
            text = _fmt(info["mean"])
            sub = f"\u00b1 {_fmt(info['std'])}" if info["n_ok"] > 1 else None
            title = f"mean over {info['n_ok']} seed(s): {', '.join(str(s) for s in info['seeds_ok'])}"
            cls = ""
            if problems:
                cls = "partial"
                title += "; " + _problem_text(problems)
            best = _is_best(info["mean"], best_task[task])
            row_cells.append(_cell(text, cls=cls, title=title, sub=sub, best=best))

        incomplete = None if _isnum(row["mean"]) else "mean is undefined while a task has no successful run"
        group_cells = [
            _cell(_fmt(row[f"mean_{g}"]), best=_is_best(row[f"mean_{g}"], best_groups[g]))
            for g in group_names
        ]
        if group_names:
            value = row["mean_of_groups"]
            group_cells.append(_cell(_fmt(value), best=_is_best(value, best_mog)))
        params_title = None
        if _isnum(row["params"]):
            params_title = f"{row['params']:,.0f} trainable parameters (classification head excluded)"
            if row["params_note"]:
                params_title += f"; {row['params_note']}"
        info_family = families.get(method) or {}
        family = info_family.get("family")
        rows.append(
            {
                "method": method,
                "family": family,
                "family_title": FAMILY_TITLES.get(family, family) if family else None,
                "mergeable": bool(info_family.get("mergeable")),
                "reference": info_family.get("paper"),
                "verified": info_family.get("verified"),
                "verified_detail": info_family.get("verified_detail"),
                "cells": row_cells,
                "mean": _cell(_fmt(row["mean"]), title=incomplete, best=_is_best(row["mean"], best_mean)),
                "groups": group_cells,
                "params": _cell(
                    human_params(row["params"]), title=params_title, cls="note" if row["params_note"] else ""
                ),
                "ppt": _cell(_fmt(row["ppt"]), best=_is_best(row["ppt"], best_ppt)),
                "status": row["status"],
                "n_seeds": int(row["n_seeds"]),
            }
        )

    published_rows: dict[str, dict] = {}
    published_notes: list[str] = []
    if cfg.get("published"):
        published_rows, published_notes = _published_rows(
            str(cfg["published"]), methods, tasks, groups, group_names, table
        )
    for row in rows:
        row["published"] = published_rows.get(row["method"])

    failures = []
    for info in cells.itertuples():
        for seed, status, reason in info.problems:
            failures.append(
                {"method": info.method, "task": info.task, "seed": "\u2013" if seed is None else seed,
                 "status": status, "reason": reason}
            )
    n_expected = int(cells[["n_ok", "n_failed", "n_missing"]].to_numpy().sum()) if len(cells) else 0

    efficiency = efficiency_table(runs, name, methods)
    cost = []
    for method in methods:
        mine = ok_runs[ok_runs["method"] == method] if len(ok_runs) else ok_runs
        wall = [v for v in mine["wall_seconds"] if _isnum(v)]
        cost.append({"method": method, "runs": len(mine), **_efficiency_cells(efficiency.loc[method]),
                     "wall": format_seconds(sum(wall)) if wall else "\u2013"})
    devices = sorted({d for text in efficiency["devices"] for d in text.split("; ") if d})
    kinds = sorted({k for text in efficiency["train_memory_kind"] for k in text.split("; ") if k})

    checks = []
    run_protocols = _distinct(suite_runs["protocol"]) if len(suite_runs) else []
    stated = [str(cfg["protocol"])] if cfg.get("protocol") else run_protocols
    if run_protocols and (len(run_protocols) > 1 or run_protocols != stated):
        checks.append(f"Protocol names in the run files: {', '.join(run_protocols)}.")
    run_archs = _distinct(suite_runs["backbone_arch"]) if len(suite_runs) else []
    if len(run_archs) > 1:
        checks.append(f"Run files use more than one backbone: {', '.join(run_archs)}.")

    metric_names = _distinct(ok_runs["metric_name"]) if len(ok_runs) else []
    plot_list = []
    if plots:
        short = ", ".join(metric_name(n) for n in metric_names) or metric_name(None)
        plot_list = _plots_context(image_plot_data(runs, name, cfg, methods, tasks, table, f"{short} (%)",
                                                   efficiency))
    return {
        "name": name,
        "title": cfg.get("title") or name,
        "protocol_splits": ", ".join(_distinct(suite_runs["protocol_splits"])) if len(suite_runs) else "",
        "kind": cfg.get("kind") or "image",
        "protocol": cfg.get("protocol") or (", ".join(run_protocols) if run_protocols else "not stated"),
        "backbone": cfg.get("backbone") or (", ".join(run_archs) if run_archs else "not stated"),
        "metric": _metric_label(metric_names),
        "plots": plot_list,
        "notes": [str(n) for n in (cfg.get("notes") or [])],
        "checks": checks,
        "tasks": tasks,
        "group_names": group_names,
        "rows": rows,
        "has_published": bool(published_rows),
        "published_notes": published_notes,
        "protocol_differences": _protocol_rows(cfg),
        "failures": failures,
        "n_expected": n_expected,
        "n_ok": int(cells["n_ok"].sum()) if len(cells) else 0,
        "cost": cost,
        "cost_devices": ", ".join(devices) or "not recorded",
        "cost_memory_kinds": ", ".join(_MEMORY_KINDS.get(k, k) for k in kinds),
        "ppt_note": _ppt_note(table["params"].tolist()),
        "throughput_unit": "clips/s" if cfg.get("kind") == "video" else "img/s",
    }


_MEMORY_KINDS = {
    "cuda_max_allocated": "GPU: torch.cuda.max_memory_allocated during a training step, the run's other tensors "
                          "subtracted",
    "cpu_tensor_bytes": "CPU: bytes of parameters, gradients, optimizer state and autograd-saved activations of "
                        "one training step",
}


def _ms(value: Any) -> str:
    if not _isnum(value):
        return "\u2013"
    return f"{value:,.1f} ms" if value >= 10 else f"{value:.2f} ms"


def _size(n: Any) -> str:
    if not _isnum(n):
        return "\u2013"
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def _efficiency_cells(row: pd.Series) -> dict[str, str]:
    """One method's efficiency figures (medians over its runs, `efficiency_table`), formatted."""
    def pair(merged: Any, unmerged: Any) -> str:
        text = _ms(merged)
        return f"{text} / {_ms(unmerged)}" if _isnum(unmerged) and _isnum(merged) else text

    memory = row["train_memory_mb"]
    throughput = row["train_samples_per_second"]
    batch = row["eval_batch"]
    return {"train_memory": f"{memory:,.1f} MiB" if _isnum(memory) else "\u2013",
            "throughput": f"{throughput:,.1f}" if _isnum(throughput) else "\u2013",
            "latency_1": pair(row["latency_b1_ms"], row["latency_b1_unmerged_ms"]),
            "latency_eval": pair(row["latency_eval_ms"], row["latency_eval_unmerged_ms"]),
            "eval_batch": f"{batch:.0f}" if _isnum(batch) else "\u2013",
            "adapter_size": _size(row["adapter_bytes"]), "devices": row["devices"] or "\u2013"}


def _ppt_note(params: list[Any]) -> str | None:
    """Where PPT cannot tell methods apart: its penalty is exp(-log10(P / 1e7 + 1)), under 4 % below 1 M
    parameters, so with every method there PPT is the metric (point to the efficiency plots)."""
    counts = [p for p in params if _isnum(p)]
    if not counts or max(counts) >= 1e6:
        return None
    return (f"Every method here trains at most {human_params(max(counts))} parameters (\u226a 10^7): PPT's "
            f"parameter penalty is then under 4 % and PPT ranks the methods almost exactly as the metric does. "
            "The Pareto plots of the metric against training memory and against inference latency separate "
            "them by what they cost instead.")


# --------------------------------------------------------------------------------------------
# dense suites: several metrics per task (box AP, mask AP, mIoU), PPT per metric, training memory
# --------------------------------------------------------------------------------------------

def _dense_columns(runs: pd.DataFrame, name: str, tasks: list[str], published: str | None,
                   layout: str | None = None) -> list[tuple[str, str]]:
    """(task, metric) columns: the metrics the suite's ok runs report, else the published table's, else
    the layout's primary metric (a task none of whose runs succeeded still gets its column of marks)."""
    ok = runs[(runs["suite"] == name) & (runs["status"] == "ok")] if len(runs) else runs
    columns = []
    for task in tasks:
        found: set[str] = set()
        for row in ok[ok["task"] == task].itertuples() if len(ok) else []:
            if isinstance(row.metrics, str):
                found |= set(json.loads(row.metrics))
            if isinstance(row.metric_name, str):
                found.add(row.metric_name)
        if not found and published in DENSE_TABLES:
            found = set(DENSE_TABLES[published][1])
        if not found and layout in LAYOUTS:
            found = {LAYOUTS[layout][2]}
        if "box_ap" in found:  # COCO: AP@[.5:.95] for boxes and masks, as the dense papers' tables
            found.discard("box_ap50")
        shown = [m for m in DENSE_METRICS if m in found] or sorted(found)[:1]
        columns += [(task, m) for m in shown]
    return columns


def _dense_published_rows(key: str, methods: list[str], columns: list[tuple[str, str]],
                          table: pd.DataFrame) -> tuple[dict[str, dict], list[str]]:
    pub = load_published_dense(key)
    if pub is None:
        return {}, [f"Unknown published dense table {key!r}; no published numbers shown."]
    notes = [f"Rows marked \u201cpublished\u201d are the {DENSE_SOURCE}, transcribed from the README; they are "
             "reference points, not runs of this code. \u0394 = ours \u2212 published, in points. Published memory is "
             "the papers' training GPU memory; ours is the method's training memory on the device that ran it "
             "(the efficiency table names it)."]
    missing = [m for m in methods if m not in pub.index]
    if missing:
        notes.append("No published row for: " + ", ".join(missing) + ".")
    rows = {}
    for method in methods:
        if method not in pub.index:
            continue
        prow = pub.loc[method]
        ours = table.loc[method]
        cells, ppts = [], []
        for task, metric in columns:
            if metric not in pub.columns:
                cells.append(_cell("\u2013", cls="na", title="not in the published table"))
                ppts.append(_cell("\u2013", cls="na"))
                continue
            value = float(prow[metric])
            mine = ours[f"{task}:{metric}"]
            sub = "\u0394 " + _fmt_delta(float(mine) - value) if _isnum(mine) else None
            cells.append(_cell(f"{value:.2f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.1f}",
                               title=f"published {DENSE_METRICS.get(metric, metric)}", sub=sub))
            ppts.append(_cell(str(prow[f"{metric}_ppt_printed"])))
        note = prow["note"] if isinstance(prow["note"], str) and prow["note"] else None
        memory = prow["memory_mb"]
        rows[method] = {
            "label": f"published: {prow['display_name']}", "cells": cells, "ppts": ppts,
            "params": _cell(str(prow["params_printed"]), title=f"{int(prow['params']):,} parameters as printed"
                            + (f"; {note}" if note else "")),
            "memory": _cell(f"{memory:,.0f} MB" if _isnum(memory) else "\u2013", title="training GPU memory, published"),
        }
    return rows, notes


def _dense_suite_context(runs: pd.DataFrame, name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A dense suite: the image context's shared parts (failures, cost, checks) plus the dense table."""
    base = _suite_context(runs, name, {**cfg, "published": None}, plots=False)
    base["protocol_differences"] = _protocol_rows(cfg)
    families = cfg.get("families") or {}
    methods = _by_family(list(cfg.get("methods") or []), families)
    tasks = list(cfg.get("tasks") or [])
    columns = _dense_columns(runs, name, tasks, cfg.get("published"), cfg.get("layout"))
    table = dense_table(runs, name, methods, columns)
    cells = cell_table(runs, name, methods, tasks)
    keys = [f"{t}:{m}" for t, m in columns]
    best = {k: _best(table[k]) for k in keys}
    best_ppt = {k: _best(table[f"ppt:{k}"]) for k in keys}
    ok = runs[(runs["suite"] == name) & (runs["status"] == "ok")] if len(runs) else runs
    rows = []
    for row_base, method in zip(base["rows"], methods):
        row = table.loc[method]
        mine = cells[cells["method"] == method]
        problems = [p for ps in mine["problems"] for p in ps]
        out_cells = []
        for key, (task, _) in zip(keys, columns):
            info = mine[mine["task"] == task].iloc[0]
            if info["n_ok"] == 0:
                status = "failed" if info["n_failed"] else "missing"
                out_cells.append(_cell(status, cls=status, title=_problem_text(info["problems"])))
                continue
            sub = f"\u00b1 {_fmt(row[f'{key}_std'])}" if info["n_ok"] > 1 else None
            title = f"mean over {info['n_ok']} seed(s): {', '.join(str(s) for s in info['seeds_ok'])}"
            out_cells.append(_cell(_fmt(row[key]), cls="partial" if info["problems"] else "", title=title, sub=sub,
                                   best=_is_best(row[key], best[key])))
        params_title = None
        if _isnum(row["params"]):
            params_title = f"{row['params']:,.0f} trainable backbone parameters (neck and heads excluded)"
            if row["params_note"]:
                params_title += f"; {row['params_note']}"
        memory = row["train_memory_mb"]
        n_runs = int((ok["method"] == method).sum()) if len(ok) else 0
        rows.append({**row_base, "cells": out_cells,
                     "params": _cell(human_params(row["params"]), title=params_title,
                                     cls="note" if row["params_note"] else ""),
                     "ppts": [_cell(_fmt(row[f"ppt:{k}"]), best=_is_best(row[f"ppt:{k}"], best_ppt[k])) for k in keys],
                     "memory": _cell(f"{memory:,.0f} MB" if _isnum(memory) else "\u2013",
                                     title=f"the method's training memory, highest over {n_runs} run(s)"
                                     if n_runs else None),
                     "status": row["status"], "problems": problems})
    published_rows, published_notes = ({}, [])
    if cfg.get("published"):
        published_rows, published_notes = _dense_published_rows(str(cfg["published"]), methods, columns, table)
    for row in rows:
        row["published"] = published_rows.get(row["method"])
    labels = [DENSE_METRICS.get(m, m) if len(tasks) == 1 else f"{t} \u00b7 {DENSE_METRICS.get(m, m)}"
              for t, m in columns]
    metric_text = ", ".join(dict.fromkeys(f"{DENSE_METRICS.get(m, m)} ({DENSE_EVALUATORS.get(m, m)}, %)"
                                          for _, m in columns))
    return {**base, "kind": "dense", "metric": metric_text or base["metric"], "columns": labels, "rows": rows,
            "has_published": bool(published_rows), "published_notes": published_notes,
            "plots": _plots_context(dense_plot_data(runs, name, cfg, methods, columns, table, DENSE_METRICS,
                                                    efficiency_table(runs, name, methods)))}


def _controls(suites: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Control suites (e.g. vtab-mini-scratch: the same tasks on a random-init backbone) -> the suite they
    control: an image suite extending another suite of the report, with its tasks, another backbone and
    only methods the parent runs. They are shown as rows of the parent's table, not as sections."""
    out = {}
    for name, cfg in suites.items():
        parent = suites.get(cfg.get("base_suite") or "")
        if (parent is not None and cfg.get("kind", "image") == parent.get("kind", "image") == "image"
                and list(cfg.get("tasks") or []) == list(parent.get("tasks") or [])
                and cfg.get("backbone") != parent.get("backbone")
                and set(cfg.get("methods") or []) <= set(parent.get("methods") or [])):
            out[name] = cfg["base_suite"]
    return out


def _merge_control(parent: dict[str, Any], control: dict[str, Any], cfg: Mapping[str, Any]) -> None:
    """The control's rows (labelled with its backbone; never marked best), failures and cost go into the
    parent's context; the parent's notes already hold the comparison sentence (vpeft.report.findings)."""
    backbone = str(cfg.get("backbone") or control["name"]).split(" (")[0]
    label = f"control ({backbone})"
    for row in control["rows"]:
        row = {**row, "method": f"{label}: {row['method']}", "family": "control", "family_title": label,
               "reference": cfg.get("title"), "published": None, "verified": None, "mergeable": False}
        for key in ("cells", "groups"):
            row[key] = [{**c, "best": False} for c in row[key]]
        for key in ("mean", "ppt"):
            row[key] = {**row[key], "best": False}
        parent["rows"].append(row)
    parent["failures"] += [{**f, "method": f"{label}: {f['method']}"} for f in control["failures"]]
    parent["cost"] += [{**c, "method": f"{label}: {c['method']}"} for c in control["cost"]]
    parent.setdefault("controls", []).append(control["name"])


def build_context(
    runs: pd.DataFrame,
    suites: dict[str, dict],
    *,
    title: str = "V-PEFT Bench report",
    generated: datetime | None = None,
) -> dict:
    """Everything the template needs, as formatted strings and small dicts.

    Args:
        runs: the frame from :func:`vpeft.report.tables.load_runs` (all suites together).
        suites: suite name -> description (see the module docstring), rendered in the given order.
        title: page title.
        generated: generation time (default: now, UTC); pass a fixed value for reproducible output.
    """
    generated = generated or datetime.now(timezone.utc)
    contexts = {name: _dense_suite_context(runs, name, cfg) if cfg.get("kind") == "dense" else
                _suite_context(runs, name, cfg) for name, cfg in suites.items()}
    for name, parent in _controls(suites).items():
        _merge_control(contexts[parent], contexts.pop(name), suites[name])
    return {
        "title": title,
        "generated": generated.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "provenance": _provenance(runs),
        "suites": list(contexts.values()),
        "speed": None,  # vpeft.report.speed.load_speed_benchmark(...) to show the speed benchmark
        "tuning": None,  # vpeft.report.tuning.tuning_context(...) to show the hyper-parameter sensitivity
        "fewshot": None,  # vpeft.report.protocols.fewshot_context(...): few-shot curves and tables
        "shift": None,  # vpeft.report.protocols.shift_context(...): shift targets and WiSE-FT
    }


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATE_DIR)),
        autoescape=True,  # the template name ends in .j2, so select_autoescape would not catch it
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(context: dict) -> str:
    """The report as an HTML string."""
    return _environment().get_template(_TEMPLATE_NAME).render(**context)


def render_report(context: dict, out_path: str | Path) -> None:
    """Render ``context`` (from :func:`build_context`) to ``out_path`` (UTF-8, parent folders created)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_html(context), encoding="utf-8")
