"""Build reports/index.html from run records: used by the report rule and, after a failed workflow,
by the Snakefile's `onerror` handler (then missing and failed runs are shown, never hidden)."""

from __future__ import annotations

from pathlib import Path

from .backbones import backbone_comparison
from .findings import add_findings
from .html import build_context, render_report
from .protocols import fewshot_context, shift_context
from .speed import load_speed_benchmark
from .tables import load_runs
from .tuning import tuning_context


def build_report(run_paths, suites: dict[str, dict], out_path: str | Path, bench_path=None, tuned_paths=(),
                 shift_paths=()) -> None:
    """``bench_path``: the speed benchmark's JSON (bench/run.py), shown as the report's speed table;
    ``tuned_paths``: hyper-parameter searches (tuned.json), shown as the sensitivity section;
    ``shift_paths``: shift evaluations (shift.json), shown per suite with shift targets. Few-shot suites
    get their own section (curves and a table per k) instead of the methods x tasks table."""
    runs = load_runs(run_paths)
    regular = {name: info for name, info in suites.items() if not info.get("fewshot")}
    context = build_context(runs, add_findings(runs, regular))
    context["backbones"] = backbone_comparison(runs, suites)  # suites of the same data on several backbones
    context["fewshot"] = fewshot_context(runs, suites) or None
    context["shift"] = shift_context(shift_paths, suites) or None
    if bench_path:
        from vpeft.provenance import git_state

        state = git_state()
        current = state["git_commit"] if not state["git_dirty"] else None  # uncommitted code: nothing is current
        context["speed"] = load_speed_benchmark(bench_path, current_commit=current)
    else:
        context["speed"] = None
    context["tuning"] = tuning_context(tuned_paths, suites) if tuned_paths else None
    render_report(context, out_path)
