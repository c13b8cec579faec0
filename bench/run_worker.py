"""One training job as the workflow runs it (the imports of workflow/scripts/train.py, then
`run_training`) in a fresh process, for import_cost.py (under `python -X importtime`) and
concurrency.py. Writes the names of the loaded modules as JSON beside the metrics.

    python bench/run_worker.py RUN_JSON OUT_DIR BASE_DIR [DEVICE]
"""

import json
import sys
from pathlib import Path

from vpeft.engine.train import run_training
from vpeft.logs import log_to_file

run_json, out_dir, base_dir = sys.argv[1:4]
device = sys.argv[4] if len(sys.argv) > 4 else None
log_to_file(str(Path(out_dir) / "train.log"))
run_training(json.loads(Path(run_json).read_text()), Path(out_dir) / "metrics.json", threads=1, base_dir=base_dir,
             device=device or "cpu")
(Path(out_dir) / "modules.json").write_text(json.dumps(sorted(sys.modules)))
