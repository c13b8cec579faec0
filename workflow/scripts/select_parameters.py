"""Snakemake script: the selection stage of a data-dependent method (see vpeft.engine.selection)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over()  # in the warm worker when there is one

from vpeft.engine.selection import run_selection  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
run_selection(snakemake.params.run, snakemake.output[0], threads=snakemake.threads)
