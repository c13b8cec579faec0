"""Snakemake script: train and evaluate one run (see vpeft.engine.train)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from vpeft.engine.train import run_training  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
run_training(snakemake.params.run, snakemake.output.metrics, threads=snakemake.threads)
