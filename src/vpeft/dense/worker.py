"""One rank of a multi-process dense run (started by torchrun from `vpeft.dense.launch`).

`python -m vpeft.dense.worker <spec.json>`: joins the process group from torchrun's environment
(env://; NCCL on GPUs, gloo on CPUs), then trains and evaluates through mmengine's `pytorch` launcher.
Rank 0 alone writes the result (to the spec's staging path, which the launching process moves into
place once every rank has finished). A rank that raises records its error (`vpeft.torchrun.record_failure`,
for the launching process to name the rank) and exits non-zero, which makes torchrun stop the others.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..torchrun import record_failure, worker_logging


def main(argv: list[str] | None = None) -> int:
    spec_path = Path((argv or sys.argv[1:])[0])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    worker_logging(rank, logging.INFO if rank == 0 else logging.WARNING)
    try:
        import json

        import torch
        import torch.distributed as dist

        spec = json.loads(spec_path.read_text())
        if spec["device"] == "cuda":
            torch.cuda.set_device(local_rank)
        # mmengine's Runner sees an initialised group and keeps it (its own init sets a CUDA device)
        dist.init_process_group("nccl" if spec["device"] == "cuda" else "gloo", init_method="env://")
        from .train import train_and_evaluate

        train_and_evaluate(spec["run"], Path(spec["metrics"]), Path(spec["index"]), spec["threads"],
                           spec["base_dir"], spec["device"], Path(spec["work_dir"]), processes=dist.get_world_size(),
                           write_to=Path(spec["write_to"]))
        dist.destroy_process_group()
    except BaseException as err:
        record_failure(rank, err)
        raise  # its traceback goes to the job's log
    return 0


if __name__ == "__main__":
    sys.exit(main())
