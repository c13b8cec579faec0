"""Snakemake script: check a video task folder (csvs, labels, manifest checksums, decord) and write its index."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over()  # in the warm worker when there is one

from vpeft.io import atomic_write_json  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402
from vpeft.video.check import check_video_task  # noqa: E402

log_to_file(snakemake.log[0])
p = snakemake.params.task
atomic_write_json(snakemake.output[0], check_video_task(p["task_dir"], p["num_classes"], p["split_files"],
                                                        suite=p["suite"], task=p["task"], source=p["source"],
                                                        decode=p["decode"]))
