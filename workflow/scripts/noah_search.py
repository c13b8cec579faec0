"""Snakemake script: evolutionary search of NOAH's subnet (see vpeft.engine.noah_search.search_subnet).

params.run: the resolved run (use the `val` protocol: candidates are scored on val200);
input.supernet: the output of noah_supernet.py; output.subnet: {"hparams": {...}} json that the final
run lays over the method's hparams (vpeft.engine.train.with_searched_hparams); output.record
(optional): the search record (default: beside output.subnet).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.worker import hand_over  # noqa: E402

hand_over("vpeft.engine.noah_search")  # in the warm worker when there is one

from vpeft.engine.noah_search import search_subnet  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
search_subnet(snakemake.params.run, snakemake.input.supernet, snakemake.output.subnet, threads=snakemake.threads,
              record_path=getattr(snakemake.output, "record", None))
