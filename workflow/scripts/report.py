"""Snakemake script: all runs of the default suites -> reports/index.html."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from vpeft.logs import log_to_file  # noqa: E402
from vpeft.report.findings import add_findings  # noqa: E402
from vpeft.report.html import build_context, render_report  # noqa: E402
from vpeft.report.tables import load_runs  # noqa: E402

log_to_file(snakemake.log[0])
runs = load_runs(snakemake.input.runs)
suites = add_findings(runs, snakemake.params.suites)
render_report(build_context(runs, suites), snakemake.output[0])
