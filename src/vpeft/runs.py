"""Names shared by the engine that writes run records and the report that reads them, and the writing
of failure records."""

from __future__ import annotations

import errno
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("vpeft.runs")

#: Schema tag of every run record (metrics.json and failure records).
RUN_SCHEMA = "vpeft.run/1"

#: Written beside the metrics.json of a run that raised, holding the error; removed on success.
FAILURE_RECORD = "failed.json"

#: Undeclared folder beside metrics.json with the latest per-epoch training state (for resume).
CHECKPOINT_DIR = "checkpoint"

#: Beside metrics.json: the run's trained tensors (method + head) and how to rebuild the model
#: (vpeft.artifacts); written just before metrics.json.
TRAINED_TENSORS = "trained.safetensors"

#: Beside metrics.json while a run trains: room held on the disk for its failure record, so a run that
#: fails because the disk is full can still say so (see `failure_recorded`).
FAILURE_RESERVE = ".failed.json.reserve"
_RESERVE_BYTES = 64 * 1024


@contextmanager
def failure_recorded(metrics_path, values: dict):
    """Around a run: if it raises, leave FAILURE_RECORD beside `metrics_path` with the error and re-raise;
    if it succeeds, remove an old one.

    The record is small but the error may be that the disk is full: room for it is reserved on entry
    (a file of zeros) and, when the ordinary atomic write fails, the record is written into that room
    in place and renamed (neither needs free space)."""
    metrics_path = Path(metrics_path)
    failure, reserve = metrics_path.with_name(FAILURE_RECORD), metrics_path.with_name(FAILURE_RESERVE)
    try:
        reserve.parent.mkdir(parents=True, exist_ok=True)
        with open(reserve, "wb") as fh:
            fh.write(bytes(_RESERVE_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:  # the disk is already full: the ordinary write is all there is
        reserve.unlink(missing_ok=True)
    try:
        yield
    except Exception as err:
        record = {"schema": RUN_SCHEMA, "status": "failed",
                  **{k: values.get(k) for k in ("suite", "task", "method", "seed")},
                  "error": error_text(err)}
        try:
            write_failure_record(failure, record, reserve)
        except OSError as write_err:  # never hide the run's own error behind this one
            log.error("could not write %s (%s); the run failed with: %s", failure, write_err, record["error"])
        raise
    else:
        failure.unlink(missing_ok=True)
    finally:
        reserve.unlink(missing_ok=True)


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def write_failure_record(failure, record: dict, reserve=None) -> None:
    """Write `record` to `failure` atomically; on a full disk, into the reserved file `reserve` instead."""
    from .io import atomic_write_json

    try:
        atomic_write_json(failure, record)
        return
    except OSError as err:
        if reserve is None or not Path(reserve).is_file() or err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    data = (json.dumps(record, indent=2, default=str) + "\n").encode()
    if len(data) > _RESERVE_BYTES:
        record = {**record, "error": record["error"][: _RESERVE_BYTES // 2] + " ... (cut)"}
        data = (json.dumps(record, indent=2, default=str) + "\n").encode()[:_RESERVE_BYTES]
    with open(reserve, "r+b") as fh:  # overwrites blocks the file already holds: no new space
        fh.write(data)
        fh.truncate(len(data))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(reserve, failure)
    log.warning("the disk was full: %s written into the space reserved for it", failure)
