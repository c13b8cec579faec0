"""One rank of a data-parallel run: `python -m vpeft.engine.ddp_worker <job.json>`, started by torchrun
(`vpeft.engine.ddp.launch` writes the job file; torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def main(job_file: str) -> int:
    import torch
    import torch.distributed as dist

    from ..torchrun import is_peer_error, record_failure, worker_logging
    from .ddp import World
    from .train import _train_and_evaluate

    job = json.loads(open(job_file).read())
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    worker_logging(world.rank)
    log = logging.getLogger("vpeft.ddp")
    try:
        device = None
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
            device = f"cuda:{world.local_rank}"
        elif job["backend"] == "nccl":
            raise RuntimeError("distributed.backend is nccl but this node has no CUDA device; use gloo on a CPU")
        dist.init_process_group(job["backend"])
        try:
            _train_and_evaluate(job["values"], Path(job["metrics_path"]), job["threads"], job["base_dir"], device,
                                job["selection_path"], world=world,
                                find_unused_parameters=job["find_unused_parameters"])
        finally:
            dist.destroy_process_group()
    except BaseException as err:  # noqa: BLE001 - any failure of this rank is reported, then fails the job
        record_failure(world.rank, err)
        if is_peer_error(err):
            log.error("stopped: another rank failed (%s: %s)", type(err).__name__, err)
        else:
            log.exception("failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
