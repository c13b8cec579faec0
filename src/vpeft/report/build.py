"""Build reports/index.html from run records: used by the report rule and, after a failed workflow,
by the Snakefile's `onerror` handler (then missing and failed runs are shown, never hidden)."""

from __future__ import annotations

from pathlib import Path

from .findings import add_findings
from .html import build_context, render_report
from .tables import load_runs


def build_report(run_paths, suites: dict[str, dict], out_path: str | Path) -> None:
    runs = load_runs(run_paths)
    render_report(build_context(runs, add_findings(runs, suites)), out_path)
