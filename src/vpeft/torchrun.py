"""Start the ranks of one data-parallel run on this node with torchrun and name the rank that failed.

Shared by the image/video runs (`vpeft.engine.ddp`) and the dense runs (`vpeft.dense.launch`): each
writes its own job file and worker module; this module runs torch's own launcher (`torch.distributed.run`,
standalone rendezvous, no restarts) in-process, shares the job's CPU threads out over the ranks, and
turns a failed run into one `DistributedRunError` that names the rank whose failure started it.

A rank that fails calls `record_failure` before it exits (so before its peers see their connections
break); the launcher prefers the earliest record that is not a lost connection to a peer, then a rank
killed by a signal (it could write nothing), then torchrun's own first failure.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from .io import atomic_write_json

log = logging.getLogger("vpeft.torchrun")

#: The folder where the ranks of the current run record their failures (set by `run_ranks`).
FAILURE_RECORDS_ENV = "VPEFT_FAILURE_RECORDS"


class DistributedRunError(RuntimeError):
    """A rank of a data-parallel run failed; the message names the rank and its error."""


def run_ranks(worker_module: str, job_file: str | Path, processes: int, threads: int) -> None:
    """Run `python -m <worker_module> <job_file>` as `processes` ranks; raise DistributedRunError naming
    the failing rank when the run does not end cleanly. Each rank gets threads // processes threads."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    per_rank = max(1, int(threads) // processes)
    args = get_args_parser().parse_args([
        "--standalone", f"--nproc-per-node={processes}", "--max-restarts=0", "--monitor-interval=0.5",
        "--module", worker_module, str(job_file)])
    log.info("starting %d ranks of %s, %d threads each", processes, worker_module, per_rank)
    src = str(Path(__file__).resolve().parents[1])  # the ranks import this copy of vpeft
    with tempfile.TemporaryDirectory(prefix="vpeft-ranks-") as records:
        env = {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
               "OMP_NUM_THREADS": str(per_rank), FAILURE_RECORDS_ENV: records}
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            run(args)
        except ChildFailedError as err:
            rank, message = _root_cause(err, Path(records))
            raise DistributedRunError(f"rank {rank} of {processes} failed: {message}") from None
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def record_failure(rank: int, err: BaseException) -> None:
    """Called by a failing rank: its error and the time, for the launcher to name the rank that failed first."""
    folder = os.environ.get(FAILURE_RECORDS_ENV)
    if folder:
        atomic_write_json(Path(folder) / f"rank-{rank}.json", {
            "rank": rank, "time": time.time(), "error": f"{type(err).__name__}: {err}",
            "peer_error": is_peer_error(err)})


def is_peer_error(err: BaseException) -> bool:
    """A collective that failed because another rank went away (a consequence, not a cause)."""
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "Broken pipe"))


def worker_logging(rank: int, level: int = logging.INFO) -> None:
    """Each rank logs to the job's log (the inherited stderr), every line prefixed with its rank."""
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.captureWarnings(True)


def _root_cause(err, records: Path) -> tuple[int, str]:
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
