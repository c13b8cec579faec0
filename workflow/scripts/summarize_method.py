"""Snakemake script: one method's runs on one suite -> summary.json (per-task and mean top-1, params)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over()  # in the warm worker when there is one

from vpeft.io import atomic_write_json  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402
from vpeft.report.summary import summarize_method  # noqa: E402

log_to_file(snakemake.log[0])
atomic_write_json(snakemake.output[0], summarize_method(snakemake.input, snakemake.wildcards.suite,
                                                       snakemake.wildcards.method))
