"""Snakemake script: assemble one task folder from its verified archives (see vpeft.data.prepare)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.data.prepare import prepare_task_folder  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
spec = snakemake.params.spec
prepare_task_folder(snakemake.output[0], spec["pieces"], spec["names"], lock=spec["lock"], what=spec["what"])
