"""Snakemake script: check a task folder (split files, labels, images) and write its index."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.data.check import check_task_folder  # noqa: E402
from vpeft.io import atomic_write_json  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
p = snakemake.params.task
atomic_write_json(snakemake.output[0], check_task_folder(p["task_dir"], p["num_classes"], suite=p["suite"],
                                                          task=p["task"], source=p["source"]))
