"""Data-parallel training of one image or video run on the GPUs of one node (config `distributed`).

`launch` starts N copies of `vpeft.engine.ddp_worker` with torch's own launcher (torchrun, i.e.
`torch.distributed.run`, standalone rendezvous on this node); each copy is one rank of a process group
and trains the same run with `DistributedDataParallel`. The global batch and learning rate stay the
configured ones: rank r takes the r-th interleaved share of every global batch that one process would
draw (`ShardedBatches`), and the loss is scaled so that DDP's average of the ranks' gradients equals the
one-process gradient of the whole batch, also when the last batch splits unevenly.

A rank that fails leaves a record (its error, the time) before it exits; `launch` names the first
genuine failure (not a peer's broken connection, which only follows it), writes failed.json with it
and removes any metrics.json, and raises.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import atomic_write_json
from ..runs import FAILURE_RECORD, RUN_SCHEMA

log = logging.getLogger("vpeft.ddp")

BACKENDS = ("auto", "nccl", "gloo")
WORKER_MODULE = "vpeft.engine.ddp_worker"


class DistributedRunError(RuntimeError):
    """A rank of a data-parallel run failed; the message names the rank and its error."""


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
    """Train the run with `processes` ranks under torchrun; returns rank 0's metrics (metrics.json).

    The job's `threads` are shared out: each rank gets threads // processes (at least one) for torch and
    its DataLoader workers. `worker_module` is the entry point each rank runs (tests put a faulty one)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    metrics_path = Path(metrics_path)
    failure = metrics_path.with_name(FAILURE_RECORD)
    backend = resolve_backend(backend)
    per_rank = max(1, int(threads) // processes)
    with tempfile.TemporaryDirectory(prefix="vpeft-ddp-") as tmp:
        job = Path(tmp) / "job.json"
        records = Path(tmp) / "failures"
        records.mkdir()
        job.write_text(json.dumps({
            "values": values, "metrics_path": str(metrics_path.resolve()), "threads": per_rank,
            "base_dir": str(Path(base_dir).resolve()), "backend": backend,
            "selection_path": str(Path(selection_path).resolve()) if selection_path else None,
            "find_unused_parameters": bool(find_unused_parameters), "failure_records": str(records),
        }, default=str))
        args = get_args_parser().parse_args([
            "--standalone", f"--nproc-per-node={processes}", "--monitor-interval=0.5",
            "--module", worker_module, str(job)])
        log.info("data-parallel run: %d processes (%s), %d threads each", processes, backend, per_rank)
        src = str(Path(__file__).resolve().parents[2])  # the workers import this copy of vpeft
        env = {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
               "OMP_NUM_THREADS": str(per_rank)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            run(args)
        except ChildFailedError as err:
            rank, message = _root_cause(err, records)
            metrics_path.unlink(missing_ok=True)  # a rank may have died after rank 0 finished
            error = f"rank {rank} of {processes} failed: {message}"
            log.error("%s", error)
            atomic_write_json(failure, {
                "schema": RUN_SCHEMA, "status": "failed",
                **{k: values.get(k) for k in ("suite", "task", "method", "seed")}, "error": error})
            raise DistributedRunError(error) from None
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    failure.unlink(missing_ok=True)
    return json.loads(metrics_path.read_text())


def _root_cause(err, records: Path) -> tuple[int, str]:
    """The rank whose failure started it: the earliest recorded error that is not a lost connection to a
    peer; else a rank killed by a signal (it could write nothing); else torchrun's first failure."""
    written = [json.loads(p.read_text()) for p in sorted(records.glob("rank-*.json"))]
    own = sorted((r for r in written if not r["peer_error"]), key=lambda r: r["time"])
    if own:
        return own[0]["rank"], own[0]["error"]
    killed = [(rank, f) for rank, f in sorted(err.failures.items()) if f.exitcode < 0 and f.signal_name() != "SIGTERM"]
    if killed:
        rank, f = killed[0]
        return rank, f"killed by {f.signal_name()} (exit code {f.exitcode})"
    if written:
        first = min(written, key=lambda r: r["time"])
        return first["rank"], first["error"]
    rank, f = err.get_first_failure()
    message = f.message.get("message", f.message) if isinstance(f.message, dict) else f.message
    return rank, f"exit code {f.exitcode}: {message}"


def write_failure_record(folder: str | Path, rank: int, err: BaseException) -> None:
    """A rank's error, written before it exits (so before its peers see their connections break)."""
    record = {"rank": rank, "time": time.time(), "error": f"{type(err).__name__}: {err}",
              "peer_error": is_peer_error(err)}
    atomic_write_json(Path(folder) / f"rank-{rank}.json", record)


def is_peer_error(err: BaseException) -> bool:
    """A collective that failed because another rank went away (a consequence, not a cause)."""
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "Broken pipe"))


def worker_logging(rank: int) -> None:
    """Each rank logs to the job's log (the inherited stderr), every line prefixed with its rank."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.captureWarnings(True)
