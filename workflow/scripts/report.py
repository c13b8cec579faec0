"""Snakemake script: all runs of the default suites -> reports/index.html (rule report); a tuned suite's
runs and searches -> reports/tuning/<suite>.html (rule tuning_report); a few-shot or shift suite's runs
and shift.json files -> reports/protocols/<suite>.html (rule protocol_report)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.report.build")  # in the warm worker when there is one

from vpeft.logs import log_to_file  # noqa: E402
from vpeft.report.build import build_report  # noqa: E402

log_to_file(snakemake.log[0])
speed = snakemake.input.get("speed")
build_report(snakemake.input.runs, snakemake.params.suites, snakemake.output[0],
             bench_path=speed[0] if speed else None, tuned_paths=snakemake.input.get("tuned", []),
             shift_paths=snakemake.input.get("shift", []))
