"""Snakemake script: a suite's runs -> methods x tasks CSV with mean, params and PPT (few-shot suites:
methods x shots, vpeft.report.protocols.fewshot_table)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.report.tables")  # in the warm worker when there is one

from vpeft.logs import log_to_file  # noqa: E402
from vpeft.report.tables import load_runs, suite_table, write_suite_csv  # noqa: E402

log_to_file(snakemake.log[0])
info = snakemake.params.suite
if info.get("fewshot"):  # one row per method x shots: top-1 per task and mean, mean +- std over seeds
    from vpeft.report.protocols import fewshot_table  # noqa: E402

    fewshot_table(load_runs(snakemake.input), info).to_csv(snakemake.output[0], index=False)
else:
    table = suite_table(load_runs(snakemake.input), snakemake.wildcards.suite, info["methods"], info["tasks"],
                        groups=info["groups"])
    write_suite_csv(table, snakemake.output[0])
