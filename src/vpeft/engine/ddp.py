"""Data-parallel training of one image or video run on the GPUs of one node (config `distributed`).

`launch` starts N copies of `vpeft.engine.ddp_worker` with torch's own launcher (torchrun, i.e.
`torch.distributed.run`, standalone rendezvous on this node); each copy is one rank of a process group
and trains the same run with `DistributedDataParallel`. The global batch and learning rate stay the
configured ones: rank r takes the r-th interleaved share of every global batch that one process would
draw (`ShardedBatches`), and the loss is scaled so that DDP's average of the ranks' gradients equals the
one-process gradient of the whole batch, also when the last batch splits unevenly.

A failed rank fails the run (`vpeft.torchrun` names the rank whose failure started it): `launch` writes
failed.json with that error, removes any metrics.json, and raises `DistributedRunError`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import atomic_write_json
from ..runs import FAILURE_RECORD, RUN_SCHEMA
from ..torchrun import DistributedRunError, run_ranks

log = logging.getLogger("vpeft.ddp")

BACKENDS = ("auto", "nccl", "gloo")
WORKER_MODULE = "vpeft.engine.ddp_worker"


def process_count(setting: int | str, gpus: int) -> int:
    """Processes per run: `auto` follows the job's GPUs (one process per GPU, at least one)."""
    if setting == "auto":
        return max(1, int(gpus or 0))
    if not (isinstance(setting, int) and setting >= 1):
        raise ValueError(f"distributed.processes must be auto or an integer >= 1, got {setting!r}")
    return setting


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"distributed.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


@dataclass(frozen=True)
class World:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64; the values themselves when not distributed)."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj) -> list:
        """`obj` of every rank, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ShardedBatches:
    """Rank `world.rank`'s share of the global batches that `global_batches` (an iterable of index or
    sample batches, e.g. a shuffling index DataLoader with the run's generator) yields: elements
    rank, rank + N, ... of each. The union over ranks of step k is exactly one process's batch k, and
    `global_size(step)` is its size (the loss scale). A last batch smaller than N is skipped."""

    def __init__(self, global_batches, world: World, num_samples: int, batch_size: int):
        self.global_batches, self.world = global_batches, world
        self.num_samples, self.batch_size = num_samples, batch_size

    def __len__(self) -> int:
        return len(self.global_batches) - self._short_tail()

    def __iter__(self):
        r, n = self.world.rank, self.world.size
        for step, batch in zip(range(len(self)), self.global_batches):
            if isinstance(batch, torch.Tensor):  # indices, for a batch_sampler
                yield batch[r::n].tolist()
            else:  # (indices, labels) of an IndexDataset loader
                yield [part[r::n] for part in batch]

    def global_size(self, step: int) -> int:
        return min(self.batch_size, self.num_samples - step * self.batch_size)

    def _short_tail(self) -> int:
        """1 when the epoch's last batch has fewer examples than there are ranks: it is skipped (every
        rank needs a share; at most N - 1 examples of an epoch), 0 otherwise."""
        rest = self.num_samples % self.batch_size
        return int(0 < rest < self.world.size)


class ShardedBatchSampler(ShardedBatches):
    """`ShardedBatches` as a DataLoader `batch_sampler` (lists of dataset indices)."""

    def __init__(self, num_samples: int, batch_size: int, generator: torch.Generator, world: World):
        from torch.utils.data import DataLoader

        # the indices that DataLoader(dataset, shuffle=True, generator=generator, batch_size=...) draws in
        # one process (its iterator takes a seed from the generator before the permutation: so does this one)
        order = DataLoader(range(num_samples), batch_size=batch_size, shuffle=True, generator=generator)
        super().__init__(order, world, num_samples, batch_size)


def eval_shard(dataset, world: World):
    """Rank r evaluates examples r, r + N, ...: every example exactly once over the ranks (no padding)."""
    if not world.distributed:
        return dataset
    from torch.utils.data import Subset

    shard = Subset(dataset, range(world.rank, len(dataset), world.size))
    shard.views = getattr(dataset, "views", 1)
    return shard


# -- the launcher (the job's process) -----------------------------------------------------------------
def launch(values: dict, metrics_path: str | Path, *, processes: int, backend: str = "auto", threads: int = 1,
           base_dir: str | Path = ".", selection_path: str | Path | None = None,
           find_unused_parameters: bool = False, worker_module: str = WORKER_MODULE) -> dict:
    """Train the run with `processes` ranks under torchrun (`vpeft.torchrun.run_ranks`); returns rank 0's
    metrics (metrics.json). `worker_module` is the entry point each rank runs (tests put a faulty one)."""
    metrics_path = Path(metrics_path)
    failure = metrics_path.with_name(FAILURE_RECORD)
    backend = resolve_backend(backend)
    with tempfile.TemporaryDirectory(prefix="vpeft-ddp-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({
            "values": values, "metrics_path": str(metrics_path.resolve()),
            "threads": max(1, int(threads) // processes), "base_dir": str(Path(base_dir).resolve()),
            "backend": backend, "selection_path": str(Path(selection_path).resolve()) if selection_path else None,
            "find_unused_parameters": bool(find_unused_parameters),
        }, default=str))
        log.info("data-parallel run: %d processes (%s)", processes, backend)
        try:
            run_ranks(worker_module, job, processes, threads)
        except DistributedRunError as err:
            metrics_path.unlink(missing_ok=True)  # a rank may have died after rank 0 finished
            log.error("%s", err)
            atomic_write_json(failure, {
                "schema": RUN_SCHEMA, "status": "failed",
                **{k: values.get(k) for k in ("suite", "task", "method", "seed")}, "error": str(err)})
            raise
    failure.unlink(missing_ok=True)
    return json.loads(metrics_path.read_text())
