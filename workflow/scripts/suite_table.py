"""Snakemake script: a suite's runs -> methods x tasks CSV with mean, params and PPT."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.report.tables")  # in the warm worker when there is one

from vpeft.logs import log_to_file  # noqa: E402
from vpeft.report.tables import load_runs, suite_table, write_suite_csv  # noqa: E402

log_to_file(snakemake.log[0])
info = snakemake.params.suite
table = suite_table(load_runs(snakemake.input), snakemake.wildcards.suite, info["methods"], info["tasks"],
                    groups=info["groups"])
write_suite_csv(table, snakemake.output[0])
