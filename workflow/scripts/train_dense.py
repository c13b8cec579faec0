"""Snakemake script: train and evaluate one dense run with mmdet / mmseg (see vpeft.dense.train), one
process per GPU of the job (torchrun + mmengine's pytorch launcher when there are several)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

# in the warm worker when there is one
hand_over("vpeft.dense.train", "mmengine.runner", "vpeft.dense.backbone")

from vpeft.dense.train import run_dense_training  # noqa: E402
from vpeft.logs import console, finished_run_line, log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
metrics = run_dense_training(snakemake.params.run, snakemake.output.metrics, index_path=snakemake.input.index,
                             threads=snakemake.threads, gpus=snakemake.resources.get("gpu"),
                             processes_setting=(snakemake.config.get("distributed") or {}).get("processes", "auto"))
console(finished_run_line(metrics))
