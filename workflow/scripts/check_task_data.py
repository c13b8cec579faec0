"""Snakemake script: check a task folder (split files, sizes, labels, every image) and write its index
and checksummed manifest (vpeft.data.manifest), which training reads."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.data.manifest")  # in the warm worker when there is one

from vpeft.data.layouts import get_checker  # noqa: E402
from vpeft.data.manifest import write_task_index  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
options = dict(snakemake.params.task)
layout = options.pop("layout")
if "splits" in snakemake.output.keys():  # own data: the derived split assignment (rule check_own_data)
    options["split_file"] = snakemake.output.splits
# image layouts (vtab, fgvc): decode and hash on the job's threads
index, rows = get_checker(layout)(options.pop("task_dir"), options.pop("num_classes"), workers=snakemake.threads,
                                  **options)
write_task_index(snakemake.output.index, index, rows)
