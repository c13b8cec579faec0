"""One rank of a multi-process dense run (started by torchrun from `vpeft.dense.launch`).

`python -m vpeft.dense.worker <spec.json>`: joins the process group from torchrun's environment
(env://; NCCL on GPUs, gloo on CPUs), then trains and evaluates through mmengine's `pytorch` launcher.
Rank 0 alone writes the result (to the spec's staging path, which the launching process moves into
place once every rank has finished). A rank that raises records its error beside the spec (for the
launching process to name the rank) and exits non-zero, which makes torchrun stop the others.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

from ..io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    spec_path = Path((argv or sys.argv[1:])[0])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.captureWarnings(True)
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
        atomic_write_json(spec_path.with_name(f"rank-{rank}.error.json"),
                          {"rank": rank, "time": time.time(), "error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc()})
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
