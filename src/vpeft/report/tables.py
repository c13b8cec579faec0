"""Aggregate per-run ``metrics.json`` files (schema ``vpeft.run/1``) into benchmark tables.

Three steps, each a plain function over pandas frames:

1. :func:`load_runs` -- one row per expected run file. A file that does not exist becomes a row
   with status ``"missing"``; a file that cannot be read or reports a non-``ok`` status becomes a
   row with status ``"failed"`` and the reason in ``error``. Nothing is silently dropped.
2. :func:`cell_table` -- one row per (method, task): seeds that succeeded, failed, are missing,
   mean and sample standard deviation (in %), trainable parameters, and the failure reasons.
3. :func:`suite_table` -- methods x tasks, plus the task mean, optional group means, parameters,
   PPT, seed count and a status string. :func:`write_suite_csv` writes it.

Conventions: ``metrics.json`` stores the metric as a fraction; tables show percentages. ``params``
is always the trainable parameter count *excluding* the classification head, so that methods are
compared on what they add to the backbone (as in the V-PETL VTAB table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from vpeft.metrics import ppt
from vpeft.runs import FAILURE_RECORD, RUN_SCHEMA

__all__ = [
    "RUN_COLUMNS",
    "RUN_SCHEMA",
    "EFFICIENCY_COLUMNS",
    "cell_table",
    "dense_table",
    "efficiency_table",
    "format_status",
    "load_runs",
    "suite_table",
    "write_suite_csv",
]


#: Columns of the frame returned by :func:`load_runs`, in order.
RUN_COLUMNS: tuple[str, ...] = (
    "suite", "task", "method", "seed", "status", "metric", "metric_name", "metrics",
    "params", "params_with_head", "images_per_second", "process_peak_memory_mb", "wall_seconds",
    "train_seconds", "eval_seconds", "epochs", "protocol", "protocol_splits", "backbone", "backbone_arch",
    "error", "path",
    "train_memory_mb", "train_memory_kind", "train_samples_per_second", "latency_b1_ms", "latency_b1_unmerged_ms",
    "latency_eval_ms", "latency_eval_unmerged_ms", "eval_batch", "adapter_bytes", "efficiency_device",
    "vpeft_version", "git_commit", "git_dirty", "python", "packages", "hardware", "threads", "created",
)  # fmt: skip

_FLOAT_COLUMNS = (
    "metric", "params", "params_with_head", "images_per_second", "process_peak_memory_mb",
    "wall_seconds", "train_seconds", "eval_seconds", "epochs", "threads",
    "train_memory_mb", "train_samples_per_second", "latency_b1_ms", "latency_b1_unmerged_ms",
    "latency_eval_ms", "latency_eval_unmerged_ms", "eval_batch", "adapter_bytes",
)  # fmt: skip

#: The per-run efficiency record (metrics.json `efficiency`, vpeft.efficiency) as run-frame columns.
EFFICIENCY_COLUMNS: dict[str, tuple[str, ...]] = {
    "train_memory_mb": ("train_memory_mb",), "train_memory_kind": ("train_memory_kind",),
    "train_samples_per_second": ("train_samples_per_second",),
    "latency_b1_ms": ("latency_ms", "merged", "batch_1"), "latency_b1_unmerged_ms": ("latency_ms", "unmerged", "batch_1"),
    "latency_eval_ms": ("latency_ms", "merged", "batch_eval"),
    "latency_eval_unmerged_ms": ("latency_ms", "unmerged", "batch_eval"),
    "eval_batch": ("eval_batch",), "adapter_bytes": ("trained_tensors_bytes",), "efficiency_device": ("device",),
}

#: Column names that :func:`suite_table` uses itself; a task may not be called like one of them.
_RESERVED = {"mean", "mean_of_groups", "params", "params_note", "ppt", "n_seeds", "status"}


# --------------------------------------------------------------------------------------------
# load_runs
# --------------------------------------------------------------------------------------------


def _get(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...`` or ``None`` as soon as a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float:
    """``value`` as float, NaN for anything that is not a real number (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _parse_layout(path: Path) -> dict[str, Any]:
    """Identity from ``results/<suite>/<method>/<task>/seed-<seed>/metrics.json`` (None where unknown)."""
    parts = path.parts
    ident: dict[str, Any] = {"suite": None, "method": None, "task": None, "seed": None}
    if len(parts) >= 5 and parts[-2].startswith("seed-"):
        ident.update(suite=parts[-5], method=parts[-4], task=parts[-3])
        try:
            ident["seed"] = int(parts[-2][len("seed-") :])
        except ValueError:
            pass
    return ident


def _empty_row(path: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    row.update(_parse_layout(path))
    row["path"] = str(path)
    return row


def _read_run(path: Path) -> dict[str, Any]:
    row = _empty_row(path)
    if not path.is_file() and path.with_name(FAILURE_RECORD).is_file():
        # The run raised: the engine left its error beside the metrics.json it never wrote.
        path = path.with_name(FAILURE_RECORD)
        row["path"] = str(path)
    if not path.is_file():
        row.update(status="missing", error=f"no metrics.json at {path} (the run has not finished)")
        return row
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        row.update(status="failed", error=f"{path}: unreadable ({type(exc).__name__}: {exc})")
        return row
    if not isinstance(data, dict) or data.get("schema") != RUN_SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else type(data).__name__
        row.update(status="failed", error=f"unexpected schema {schema!r} (expected {RUN_SCHEMA!r})")
        return row

    # The file is authoritative for the run's identity; the path layout only fills gaps.
    for key in ("suite", "task", "method"):
        if isinstance(data.get(key), str) and data[key]:
            row[key] = data[key]
    if isinstance(data.get("seed"), int) and not isinstance(data.get("seed"), bool):
        row["seed"] = data["seed"]

    status = data.get("status")
    if status != "ok":
        message = str(data.get("error") or "no error message recorded")
        if status != "failed":
            message = f"status {status!r}: {message}"
        row.update(status="failed", error=message)
    else:
        value = _number(_get(data, "metric", "value"))
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raw = _get(data, "metric", "value")
            row.update(status="failed", error=f"metric.value is not a fraction in [0, 1]: {raw!r}")
        else:
            row.update(status="ok", metric=value)

    row["metric_name"] = _get(data, "metric", "name")
    # Tracks with several metrics per run (dense: box AP, mask AP, mIoU) list them all, as fractions;
    # kept as canonical JSON text like the other nested fields.
    named = data.get("metrics")
    if isinstance(named, Mapping):
        valid = {str(k): _number(v) for k, v in named.items() if 0.0 <= _number(v) <= 1.0}
        row["metrics"] = json.dumps(valid, sort_keys=True)
    row["params"] = _number(_get(data, "params", "trainable"))
    row["params_with_head"] = _number(_get(data, "params", "trainable_with_head"))
    row["images_per_second"] = _number(_get(data, "train", "images_per_second"))
    # the process's peak (torch's own footprint included; files before the rename call it peak_memory_mb)
    row["process_peak_memory_mb"] = _number(_get(data, "train", "process_peak_memory_mb")
                                            if _get(data, "train", "process_peak_memory_mb") is not None
                                            else _get(data, "train", "peak_memory_mb"))
    for column, keys in EFFICIENCY_COLUMNS.items():
        value = _get(data, "efficiency", *keys)
        row[column] = value if isinstance(value, str) else _number(value)
    row["train_seconds"] = _number(_get(data, "train", "wall_seconds"))
    row["eval_seconds"] = _number(_get(data, "eval", "wall_seconds"))
    timed = [s for s in (row["train_seconds"], row["eval_seconds"]) if not math.isnan(s)]
    row["wall_seconds"] = sum(timed) if timed else math.nan
    row["epochs"] = _number(_get(data, "train", "epochs"))
    row["protocol"] = _get(data, "protocol", "name")
    train_split, eval_split = _get(data, "protocol", "train_split"), _get(data, "protocol", "eval_split")
    if isinstance(train_split, str) and isinstance(eval_split, str):
        row["protocol_splits"] = f"trained on {train_split}, final model evaluated on {eval_split}"
    row["backbone"] = _get(data, "config", "backbone", "name")
    row["backbone_arch"] = _get(data, "config", "backbone", "arch")

    provenance = data.get("provenance") if isinstance(data.get("provenance"), Mapping) else {}
    row["vpeft_version"] = provenance.get("vpeft_version")
    row["git_commit"] = provenance.get("git_commit")
    dirty = provenance.get("git_dirty")
    row["git_dirty"] = dirty if isinstance(dirty, bool) else None
    row["python"] = provenance.get("python")
    row["threads"] = _number(provenance.get("threads"))
    row["created"] = provenance.get("created")
    # Nested provenance is kept as canonical JSON text so the frame stays hashable and CSV-friendly.
    for key in ("packages", "hardware"):
        if isinstance(provenance.get(key), Mapping):
            row[key] = json.dumps(provenance[key], sort_keys=True)
    return row


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run file, in the order given.

    Columns (see :data:`RUN_COLUMNS`): ``suite, task, method, seed, status`` (``ok`` / ``failed`` /
    ``missing``), ``metric`` (fraction, NaN unless ok), ``metric_name``, ``metrics`` (JSON text of all the run's
    metrics as fractions, for tracks with several, else None), ``params`` (trainable,
    head excluded), ``params_with_head``, ``images_per_second`` (the run's own training loop),
    ``process_peak_memory_mb`` (the process's peak, not the method's),
    ``wall_seconds`` (train + eval), ``train_seconds``, ``eval_seconds``, ``epochs``, ``protocol``
    (protocol name), ``protocol_splits`` (e.g. "trained on train800val200, final model evaluated on test"),
    ``backbone`` (config name), ``backbone_arch``, ``error``, ``path`` and the
    provenance fields ``vpeft_version, git_commit, git_dirty, python, packages`` (JSON text),
    ``hardware`` (JSON text), ``threads, created``, and the efficiency record's columns
    (:data:`EFFICIENCY_COLUMNS`; NaN / None for files without one).

    A path that does not exist becomes a ``missing`` row whose identity is parsed from the layout
    ``results/<suite>/<method>/<task>/seed-<seed>/metrics.json``. An unreadable file, a wrong
    schema, a non-``ok`` status or an ok run without a valid metric become ``failed`` rows.
    """
    rows = [_read_run(Path(p)) for p in paths]
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for column in _FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


# --------------------------------------------------------------------------------------------
# cell_table / suite_table
# --------------------------------------------------------------------------------------------


def _sample_std(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    return float(pd.Series(values).std(ddof=1))


def cell_table(runs: pd.DataFrame, suite: str, methods: list[str], tasks: list[str]) -> pd.DataFrame:
    """One row per (method, task) of the suite, methods-major in the order given.

    Columns: ``method, task, n_ok, n_failed, n_missing, mean`` (top-1 % over ok seeds),
    ``std`` (sample std in %, NaN unless >= 2 ok seeds), ``params`` (mean trainable params of the
    ok seeds, head excluded), ``params_values`` (sorted distinct values), ``seeds_ok`` and
    ``problems`` (list of ``(seed, status, reason)`` for failed / missing runs).

    A (method, task) pair with no row at all in ``runs`` counts as one missing run.
    """
    selected = runs[runs["suite"] == suite] if len(runs) else runs
    records = []
    for method in methods:
        for task in tasks:
            if len(selected):
                group = selected[(selected["method"] == method) & (selected["task"] == task)]
            else:
                group = selected
            ok = group[group["status"] == "ok"]
            failed = group[group["status"] == "failed"]
            missing = group[group["status"] == "missing"]
            values = [100.0 * v for v in ok["metric"].tolist()]
            params = [p for p in ok["params"].tolist() if not math.isnan(p)]
            problems = [
                (
                    None if pd.isna(r.seed) else int(r.seed),
                    r.status,
                    r.error if isinstance(r.error, str) else "",
                )
                for r in group.itertuples()
                if r.status != "ok"
            ]
            n_missing = len(missing)
            if len(group) == 0:
                n_missing = 1
                problems.append((None, "missing", f"no run recorded for {suite}/{method}/{task}"))
            records.append(
                {
                    "method": method,
                    "task": task,
                    "n_ok": len(ok),
                    "n_failed": len(failed),
                    "n_missing": n_missing,
                    "mean": sum(values) / len(values) if values else math.nan,
                    "std": _sample_std(values),
                    "params": sum(params) / len(params) if params else math.nan,
                    "params_values": sorted(set(params)),
                    "seeds_ok": sorted(int(s) for s in ok["seed"].dropna().tolist()),
                    "problems": problems,
                }
            )
    columns = [
        "method", "task", "n_ok", "n_failed", "n_missing", "mean", "std",
        "params", "params_values", "seeds_ok", "problems",
    ]  # fmt: skip
    return pd.DataFrame(records, columns=columns)


def format_status(n_missing: int, n_failed: int) -> str:
    """``"ok"``, or ``"incomplete: 2 missing, 1 failed"`` (zero counts omitted)."""
    parts = [f"{n} {label}" for n, label in ((n_missing, "missing"), (n_failed, "failed")) if n]
    return "incomplete: " + ", ".join(parts) if parts else "ok"


def _group_order(tasks: list[str], groups: Mapping[str, str]) -> list[str]:
    unassigned = [t for t in tasks if t not in groups]
    if unassigned:
        raise ValueError(f"tasks without a group: {unassigned}")
    order: list[str] = []
    for task in tasks:
        if groups[task] not in order:
            order.append(groups[task])
    return order


def _fmt_count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def suite_table(
    runs: pd.DataFrame,
    suite: str,
    methods: list[str],
    tasks: list[str],
    groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Methods x tasks table of top-1 (%) for one suite, indexed by method in the order given.

    Columns, in order:

    * ``<task>`` -- mean top-1 (%) over the ok seeds (NaN if none);
    * ``<task>_std`` -- sample standard deviation (%) over seeds, NaN with fewer than 2 ok seeds;
    * ``mean`` -- arithmetic mean over tasks of the per-task means (NaN if any task has no ok run);
    * with ``groups`` (task -> group name, every task assigned): ``mean_<group>`` per group, in
      order of first appearance, and ``mean_of_groups`` (the mean of the group means, which is what
      the VTAB source papers report);
    * ``params`` -- trainable parameters, head excluded. When the ok runs do not all agree (e.g.
      per-task ranks), this is the mean over tasks of the per-task counts and ``params_note`` says
      so; otherwise ``params_note`` is empty;
    * ``ppt`` -- :func:`vpeft.metrics.ppt` of ``mean / 100`` and ``params`` (fraction, unrounded);
    * ``n_seeds`` -- number of distinct seeds with at least one ok run;
    * ``status`` -- ``"ok"`` or e.g. ``"incomplete: 2 missing, 1 failed"`` (counted in runs; a
      (method, task) pair with no run recorded at all counts as 1 missing).
    """
    tasks = list(tasks)
    methods = list(methods)
    clash = _RESERVED.intersection(tasks) | {t for t in tasks if t.endswith("_std") or t.startswith("mean_")}
    if clash:
        raise ValueError(f"task names clash with table columns: {sorted(clash)}")
    group_names = _group_order(tasks, groups) if groups else []

    cells = cell_table(runs, suite, methods, tasks)
    rows = []
    for method in methods:
        mine = cells[cells["method"] == method].set_index("task")
        row: dict[str, Any] = {}
        for task in tasks:
            row[task] = mine.at[task, "mean"]
        for task in tasks:
            row[f"{task}_std"] = mine.at[task, "std"]
        per_task = [row[t] for t in tasks]
        row["mean"] = math.nan if any(math.isnan(v) for v in per_task) else sum(per_task) / len(per_task)
        if group_names:
            group_means = []
            for name in group_names:
                values = [row[t] for t in tasks if groups[t] == name]  # type: ignore[index]
                value = math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)
                row[f"mean_{name}"] = value
                group_means.append(value)
            row["mean_of_groups"] = (
                math.nan if any(math.isnan(v) for v in group_means) else sum(group_means) / len(group_means)
            )

        distinct = sorted({p for values in mine["params_values"] for p in values})
        task_params = [p for p in mine["params"].tolist() if not math.isnan(p)]
        if not distinct:
            row["params"], row["params_note"] = math.nan, ""
        elif len(distinct) == 1:
            row["params"], row["params_note"] = distinct[0], ""
        else:
            row["params"] = sum(task_params) / len(task_params)
            spread = f"{_fmt_count(distinct[0])} to {_fmt_count(distinct[-1])}"
            row["params_note"] = (
                f"trainable params differ between runs ({spread}); mean over {len(task_params)} tasks shown"
            )
        row["ppt"] = ppt(row["mean"] / 100.0, row["params"])
        row["n_seeds"] = len({s for seeds in mine["seeds_ok"] for s in seeds})
        row["status"] = format_status(int(mine["n_missing"].sum()), int(mine["n_failed"].sum()))
        rows.append(row)

    columns = [*tasks, *(f"{t}_std" for t in tasks), "mean"]
    if group_names:
        columns += [*(f"mean_{g}" for g in group_names), "mean_of_groups"]
    columns += ["params", "params_note", "ppt", "n_seeds", "status"]
    table = pd.DataFrame(rows, columns=columns, index=pd.Index(methods, name="method"))
    table["n_seeds"] = table["n_seeds"].astype("int64")
    return table


def run_metric(row, metric: str) -> float:
    """One named metric of an ok run, in % (its `metrics` first; the primary `metric` by name)."""
    if isinstance(row.metrics, str):
        value = json.loads(row.metrics).get(metric)
        if value is not None:
            return 100.0 * float(value)
    if row.metric_name == metric and not math.isnan(row.metric):
        return 100.0 * row.metric
    return math.nan


def dense_table(runs: pd.DataFrame, suite: str, methods: list[str], columns: list[tuple[str, str]]) -> pd.DataFrame:
    """Methods x (task, metric) table of a multi-metric suite (dense: box AP, mask AP, mIoU), in %.

    Columns, in order, for each ``(task, metric)`` of ``columns`` (key ``"<task>:<metric>"``): the mean
    over ok seeds and ``..._std`` (sample std, NaN below 2 seeds); then ``params`` (trainable, heads
    excluded; the mean over tasks with a note when runs disagree, as :func:`suite_table`), ``params_note``,
    ``ppt:<task>:<metric>`` per column, ``train_memory_mb`` (the method's training memory, highest over
    the ok runs: `efficiency.train_memory_mb`),
    ``n_seeds`` and ``status`` (missing and failed runs counted per (task, seed), as in :func:`suite_table`).
    """
    tasks = list(dict.fromkeys(task for task, _ in columns))
    cells = cell_table(runs, suite, methods, tasks)
    selected = runs[(runs["suite"] == suite) & (runs["status"] == "ok")] if len(runs) else runs
    rows = []
    for method in methods:
        mine = selected[selected["method"] == method] if len(selected) else selected
        row: dict[str, Any] = {}
        for task, metric in columns:
            values = [v for r in mine[mine["task"] == task].itertuples() if not math.isnan(v := run_metric(r, metric))]
            row[f"{task}:{metric}"] = sum(values) / len(values) if values else math.nan
            row[f"{task}:{metric}_std"] = _sample_std(values)
        own = cells[cells["method"] == method]
        distinct = sorted({p for values in own["params_values"] for p in values})
        task_params = [p for p in own["params"].tolist() if not math.isnan(p)]
        row["params"] = distinct[0] if len(distinct) == 1 else (sum(task_params) / len(task_params)
                                                                if task_params else math.nan)
        row["params_note"] = "" if len(distinct) <= 1 else (
            f"trainable params differ between runs ({_fmt_count(distinct[0])} to {_fmt_count(distinct[-1])}); "
            f"mean over {len(task_params)} tasks shown")
        for task, metric in columns:
            value = row[f"{task}:{metric}"]
            row[f"ppt:{task}:{metric}"] = ppt(value / 100.0, row["params"])
        memory = [m for m in mine["train_memory_mb"].tolist() if not math.isnan(m)]
        row["train_memory_mb"] = max(memory) if memory else math.nan
        row["n_seeds"] = len({s for seeds in own["seeds_ok"] for s in seeds})
        row["status"] = format_status(int(own["n_missing"].sum()), int(own["n_failed"].sum()))
        rows.append(row)
    keys = [f"{t}:{m}" for t, m in columns]
    order = [*keys, *(f"{k}_std" for k in keys), "params", "params_note", *(f"ppt:{k}" for k in keys),
             "train_memory_mb", "n_seeds", "status"]
    table = pd.DataFrame(rows, columns=order, index=pd.Index(methods, name="method"))
    table["n_seeds"] = table["n_seeds"].astype("int64")
    return table


def efficiency_table(runs: pd.DataFrame, suite: str, methods: list[str]) -> pd.DataFrame:
    """Per method, the median over the suite's ok runs of each efficiency figure (:data:`EFFICIENCY_COLUMNS`:
    training memory in MiB, training samples/s, latencies in ms, trained-tensor bytes), ``runs`` (ok runs
    with a record), ``devices`` (the distinct devices that measured them, "; "-joined) and
    ``train_memory_kind`` (how memory was measured, likewise)."""
    numeric = [c for c, _ in EFFICIENCY_COLUMNS.items() if c not in ("train_memory_kind", "efficiency_device")]
    selected = runs[(runs["suite"] == suite) & (runs["status"] == "ok")] if len(runs) else runs
    rows = []
    for method in methods:
        mine = selected[selected["method"] == method] if len(selected) else selected
        row: dict[str, Any] = {}
        for column in numeric:
            values = [v for v in mine[column].tolist() if _isfinite(v)] if len(mine) else []
            row[column] = float(pd.Series(values).median()) if values else math.nan
        recorded = mine[mine["efficiency_device"].notna()] if len(mine) else mine
        row["runs"] = len(recorded)
        row["devices"] = "; ".join(sorted({str(d) for d in recorded["efficiency_device"]})) if len(recorded) else ""
        row["train_memory_kind"] = "; ".join(sorted({str(k) for k in recorded["train_memory_kind"]
                                                     if isinstance(k, str)})) if len(recorded) else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=[*numeric, "runs", "devices", "train_memory_kind"],
                        index=pd.Index(methods, name="method"))


def _isfinite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_suite_csv(table: pd.DataFrame, path: str | Path) -> None:
    """Write a :func:`suite_table` to CSV (parent folders created, floats to 10 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=True, index_label=table.index.name or "method", float_format="%.10g")
