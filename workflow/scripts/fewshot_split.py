"""Snakemake script: k training images per class of one task, for one seed (see vpeft.data.fewshot)."""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from vpeft.data.fewshot import write_fewshot_index  # noqa: E402
from vpeft.logs import log_to_file  # noqa: E402

log_to_file(snakemake.log[0])
spec = snakemake.params.spec
index = write_fewshot_index(snakemake.input[0], snakemake.output.index, train_splits=spec["train_splits"],
                            eval_splits=spec["eval_splits"], shots=spec["shots"], seed=spec["seed"])
logging.getLogger("vpeft.data").info("few-shot split: %s", json.dumps(index["fewshot"]))
