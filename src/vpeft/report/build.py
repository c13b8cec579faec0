"""Build reports/index.html from run records: used by the report rule and, after a failed workflow,
by the Snakefile's `onerror` handler (then missing and failed runs are shown, never hidden)."""

from __future__ import annotations

from pathlib import Path

from .findings import add_findings
from .html import build_context, render_report
from .speed import load_speed_benchmark
from .tables import load_runs
from .tuning import tuning_context


def build_report(run_paths, suites: dict[str, dict], out_path: str | Path, bench_path=None, tuned_paths=()) -> None:
    """``bench_path``: the speed benchmark's JSON (bench/run.py), shown as the report's speed table;
    ``tuned_paths``: hyper-parameter searches (tuned.json), shown as the sensitivity section."""
    runs = load_runs(run_paths)
    context = build_context(runs, add_findings(runs, suites))
    if bench_path:
        from vpeft.provenance import git_state

        state = git_state()
        current = state["git_commit"] if not state["git_dirty"] else None  # uncommitted code: nothing is current
        context["speed"] = load_speed_benchmark(bench_path, current_commit=current)
    else:
        context["speed"] = None
    context["tuning"] = tuning_context(tuned_paths, suites) if tuned_paths else None
    render_report(context, out_path)
