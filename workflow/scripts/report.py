"""Snakemake script: all runs of the default suites -> reports/index.html."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.logs import log_to_file  # noqa: E402
from vpeft.report.build import build_report  # noqa: E402

log_to_file(snakemake.log[0])
build_report(snakemake.input.runs, snakemake.params.suites, snakemake.output[0],
             bench_path=snakemake.input.speed[0] if snakemake.input.speed else None)
