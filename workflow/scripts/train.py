"""Snakemake script: train and evaluate one run (see vpeft.engine.train)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.engine.tune")  # in the warm worker when there is one

from vpeft.engine.ddp import process_count  # noqa: E402
from vpeft.engine.train import run_training, with_searched_hparams  # noqa: E402
from vpeft.engine.tune import with_tuned_settings  # noqa: E402
from vpeft.logs import console, finished_run_line, log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
run = snakemake.params.run
if "subnet" in snakemake.input.keys():
    run = with_searched_hparams(run, snakemake.input.subnet)
if "tuned" in snakemake.input.keys():  # the setting the suite's hyper-parameter search chose on val200
    run = with_tuned_settings(run, snakemake.input.tuned)
# data-parallel: one process per GPU of the job unless config `distributed.processes` says otherwise
distributed = snakemake.config.get("distributed") or {}
processes = process_count(distributed.get("processes", "auto"), getattr(snakemake.resources, "gpu", 0))
metrics = run_training(run, snakemake.output.metrics, threads=snakemake.threads,
                       selection_path=snakemake.input.get("selection"), processes=processes,
                       backend=distributed.get("backend", "auto"),
                       find_unused_parameters=distributed.get("find_unused_parameters", False))
console(finished_run_line(metrics))
