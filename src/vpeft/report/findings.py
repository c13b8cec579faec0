"""Measured statements for the report: does pretraining help, do PEFT methods beat linear probing?

Every sentence is computed from the run files; nothing here is typed in by hand.
"""

from __future__ import annotations

import copy
import math

import pandas as pd

from .metric_labels import metric_name
from .tables import suite_table


def _means(runs: pd.DataFrame, name: str, info: dict) -> pd.Series:
    return suite_table(runs, name, info["methods"], info["tasks"])["mean"]


def _metric(runs: pd.DataFrame, name: str) -> str:
    """The suite's metric as its runs name it (top-1 accuracy, AP box, mIoU, ...)."""
    ok = runs[(runs["suite"] == name) & (runs["status"] == "ok")] if len(runs) else runs
    names = sorted({n for n in ok["metric_name"] if isinstance(n, str)}) if len(ok) else []
    return " / ".join(metric_name(n) for n in names) or metric_name(None)


def _pts(x: float) -> str:
    return f"{x:+.1f} points"


def add_findings(runs: pd.DataFrame, suites: dict[str, dict]) -> dict[str, dict]:
    """Return a copy of `suites` whose `notes` hold the measured comparisons.

    Within a suite: each method's mean metric (top-1, AP, mIoU: what its runs report) against `linear`.
    Between suites that share their data (`data_suite`) but differ in backbone: the same method's mean
    on both (e.g. pretrained vs random-init linear probe).
    """
    suites = copy.deepcopy(suites)
    means = {name: _means(runs, name, info) for name, info in suites.items()}
    for name, info in suites.items():
        m = means[name]
        if "linear" in m.index and not math.isnan(m["linear"]):
            diffs = [f"{method} {_pts(m[method] - m['linear'])}" for method in m.index
                     if method != "linear" and not math.isnan(m[method])]
            if diffs:
                # dense `linear` trains the neck and heads on the frozen backbone: no linear probe there
                baseline = "the frozen backbone (linear)" if info.get("kind") == "dense" else "linear probing"
                info["notes"].append(f"Mean {_metric(runs, name)} relative to {baseline} "
                                     f"({m['linear']:.1f}%): " + ", ".join(diffs) + ".")
        for other, other_info in suites.items():
            if other == name or other_info.get("data_suite") != info.get("data_suite"):
                continue
            if other_info.get("backbone") == info.get("backbone"):
                continue
            for method in m.index:
                if method in means[other].index and not math.isnan(m[method]) \
                        and not math.isnan(means[other][method]):
                    info["notes"].append(
                        f"{method}, mean {_metric(runs, name)} with {info['backbone']}: {m[method]:.1f}% vs "
                        f"{means[other][method]:.1f}% "
                        f"with {other_info['backbone']} (suite {other}): {_pts(m[method] - means[other][method])}.")
    return suites
