"""Several data-parallel processes on one node for a dense run: torchrun starts them, mmengine's `pytorch`
launcher (env:// rendezvous) trains them.

`process_count` says how many: `data.processes` where a suite sets it, else the job's GPUs (the GPUs the
job asked for that are visible), else 1. `launch` starts `vpeft.dense.worker` as every rank through
`vpeft.torchrun` (shared with the image and video runs); the ranks inherit the job's stdout and stderr
(the rule's log), and a failed run raises an error naming the rank that failed first.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..io import atomic_write_json
from ..torchrun import run_ranks
from .recipes import recipe_options

#: Every rank runs this module with the spec's path (`python -m vpeft.dense.worker spec.json`).
WORKER_MODULE = "vpeft.dense.worker"


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
    """Run `processes` ranks of the worker on `spec` (written to `spec_path`); a failed run raises
    `vpeft.torchrun.DistributedRunError` naming the rank that failed first."""
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_path, spec)
    run_ranks(WORKER_MODULE, spec_path, processes, threads)
