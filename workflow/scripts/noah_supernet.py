"""Snakemake script: train NOAH's supernet (see vpeft.engine.noah_search.train_supernet).

params.run: the resolved run (use the `val` protocol: train800 -> val200); output.supernet: the
.safetensors file; output.record (optional): the json record (default: beside the supernet).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.engine.noah_search")  # in the warm worker when there is one

from vpeft.engine.noah_search import train_supernet  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
train_supernet(snakemake.params.run, snakemake.output.supernet, threads=snakemake.threads,
               record_path=getattr(snakemake.output, "record", None))
