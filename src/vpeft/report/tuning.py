"""The report's sensitivity section: what each hyper-parameter search found (tuned.json files).

Per method: how far the val200 score moves across its trials (the spread says how much tuning
matters), the setting chosen per task, and the tuned final run's test top-1 next to the fixed-setting
run's (the suite the tuned one `extends`) where both exist. Everything is read from the files; the
search's own val200 scores are never mixed with test numbers in one column.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..io import read_json


def _test_top1(folder: Path) -> float | None:
    """Mean test top-1 over the seeds of one (suite, method, task) folder, None without a finished run."""
    values = []
    for path in sorted(folder.glob("seed-*/metrics.json")):
        record = read_json(path)
        if record.get("status") == "ok":
            values.append(float(record["metric"]["value"]))
    return statistics.fmean(values) if values else None


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _fmt_delta(tuned: float | None, fixed: float | None) -> str:
    return "–" if tuned is None or fixed is None else f"{100 * (tuned - fixed):+.1f}"


def _fmt_setting(values: dict[str, Any]) -> str:
    def one(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k} {one(v)}" for k, v in values.items()) or "–"


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known and len(known) == len(values) else None


def tuning_context(tuned_paths, suites: dict[str, dict]) -> list[dict]:
    """One entry per tuned suite: method rows (spread, trials, tuned vs fixed test) and task rows."""
    by_suite: dict[str, list[dict]] = {}
    for path in sorted(map(Path, tuned_paths)):
        tuned = read_json(path)
        results = path.parents[3]  # results/<suite>/<method>/<task>/tuned.json
        base = (suites.get(tuned["suite"]) or {}).get("base_suite")
        complete = [t["value"] for t in tuned["trials"] if t["state"] == "COMPLETE"]
        by_suite.setdefault(tuned["suite"], []).append({
            "method": tuned["method"], "task": tuned["task"], "sampler": tuned["sampler"],
            "finished": tuned["counts"]["finished"], "pruned": tuned["counts"]["pruned"],
            "val_min": min(complete), "val_best": tuned["best"]["value"],
            "val_median": statistics.median(complete),
            "chosen": {**tuned["training"], **tuned["hparams"]},
            "fixed_setting": {**tuned.get("base_training", {}), **tuned.get("base_hparams", {})},
            "tuned_test": _test_top1(path.parent),
            "fixed_test": _test_top1(results / base / tuned["method"] / tuned["task"]) if base else None,
            "base": base,
        })
    out = []
    for suite, entries in by_suite.items():
        methods = list(dict.fromkeys(e["method"] for e in entries))
        rows = []
        for method in methods:
            tasks = [e for e in entries if e["method"] == method]
            spreads = [e["val_best"] - e["val_min"] for e in tasks]
            tuned_test, fixed_test = _mean([e["tuned_test"] for e in tasks]), _mean([e["fixed_test"] for e in tasks])
            rows.append({
                "method": method, "tasks": len(tasks), "trials": sum(e["finished"] for e in tasks),
                "pruned": sum(e["pruned"] for e in tasks),
                "val_min": _fmt_pct(statistics.fmean(e["val_min"] for e in tasks)),
                "val_median": _fmt_pct(statistics.fmean(e["val_median"] for e in tasks)),
                "val_best": _fmt_pct(statistics.fmean(e["val_best"] for e in tasks)),
                "spread": _fmt_pct(statistics.fmean(spreads)), "spread_max": _fmt_pct(max(spreads)),
                "tuned_test": _fmt_pct(tuned_test), "fixed_test": _fmt_pct(fixed_test),
                "delta": _fmt_delta(tuned_test, fixed_test),
            })
        tasks = [{"method": e["method"], "task": e["task"], "chosen": _fmt_setting(e["chosen"]),
                  "fixed_setting": _fmt_setting(e["fixed_setting"]), "trials": e["finished"],
                  "val_min": _fmt_pct(e["val_min"]), "val_best": _fmt_pct(e["val_best"]),
                  "tuned_test": _fmt_pct(e["tuned_test"]), "fixed_test": _fmt_pct(e["fixed_test"]),
                  "delta": _fmt_delta(e["tuned_test"], e["fixed_test"])} for e in entries]
        out.append({"suite": suite, "title": (suites.get(suite) or {}).get("title", suite),
                    "sampler": entries[0]["sampler"], "base": entries[0]["base"], "rows": rows, "tasks": tasks})
    return out
