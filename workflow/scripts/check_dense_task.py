"""Snakemake script: check a dense task folder (COCO json, VOC lists and XML, ADE20K pairs) and write
its index and manifest (vpeft.dense.datasets), which training reads."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over()  # in the warm worker when there is one

from vpeft.dense.datasets import check_dense_task, write_dense_index  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
options = dict(snakemake.params.task)
index, rows = check_dense_task(options.pop("layout"), options.pop("task_dir"), options.pop("num_classes"),
                               options.pop("splits"), **options)
write_dense_index(snakemake.output.index, index, rows)
