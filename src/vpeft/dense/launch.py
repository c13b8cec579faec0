"""Several data-parallel processes on one node for a dense run: torchrun starts them, mmengine's `pytorch`
launcher (env:// rendezvous) trains them.

`process_count` says how many: `data.processes` where a suite sets it, else the job's GPUs (the GPUs the
job asked for that are visible), else 1. `launch` runs `python -m torch.distributed.run --standalone`
with `vpeft.dense.worker` as every rank's entry point; the workers inherit the job's stdout and stderr
(the rule's log). torchrun stops all ranks when one dies; the rank that failed first (each failing rank
records its error beside the spec) is named in the raised error, so the job fails with that error.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ..config import ConfigError
from ..io import atomic_write_json
from .recipes import recipe_options

log = logging.getLogger("vpeft.dense.launch")

#: Every rank runs this module with the spec's path (`python -m vpeft.dense.worker spec.json`).
WORKER_MODULE = "vpeft.dense.worker"
ERROR_GLOB = "rank-*.error.json"


class WorkerFailed(RuntimeError):
    """A rank of a multi-process dense run failed; the message is that rank's error."""


def process_count(run: dict, device: str, gpus: int | None = None, setting: int | str = "auto") -> int:
    """Processes of one run: the suite's `data.processes`, else config `distributed.processes` (`setting`,
    shared with the image and video runs) when it is a number, else one per GPU of the job (`gpus`: what
    the job asked for, None: all visible), else 1 on a CPU."""
    explicit = recipe_options(run).processes or (None if setting == "auto" else int(setting))
    if device != "cuda":
        return explicit or 1
    import torch

    visible = torch.cuda.device_count()
    if explicit:
        if explicit > visible:
            raise ConfigError(f"data.processes = {explicit} but only {visible} GPU(s) are visible")
        return explicit
    return max(1, visible if gpus is None else min(visible, int(gpus)))


def launch(spec: dict, spec_path: Path, processes: int, threads: int) -> None:
    """Run `processes` ranks of the worker on `spec` (written to `spec_path`); raise WorkerFailed with the
    first failing rank's error when torchrun ends unsuccessfully."""
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in spec_path.parent.glob(ERROR_GLOB):
        stale.unlink()
    atomic_write_json(spec_path, spec)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc-per-node", str(processes), "--max-restarts", "0", "-m", WORKER_MODULE, str(spec_path)]
    # the job's CPUs are shared by its ranks (torchrun would set 1 thread per rank)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // processes))}
    log.info("starting %d processes: %s", processes, " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    code = subprocess.run(command, env=env, check=False).returncode
    if code != 0:
        raise WorkerFailed(first_failure(spec_path.parent, processes) or
                           f"torchrun exited with code {code} and no rank recorded an error (see the log)")


def first_failure(folder: Path, processes: int) -> str | None:
    """The error of the rank that failed first (later ones mostly fail because a peer went away)."""
    records = []
    for path in folder.glob(ERROR_GLOB):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    if not records:
        return None
    first = min(records, key=lambda r: r["time"])
    return f"rank {first['rank']} of {processes} failed: {first['error']}"
