"""The dense worker (vpeft.dense.worker) with rank 1 dying in its first training iteration, for the test
that a dead rank fails the whole multi-process run (tests/test_dense_ddp.py)."""

from __future__ import annotations

import os
import sys

from vpeft.dense import train, worker

ERROR = "rank 1 lost its device (injected by the test)"

if os.environ.get("RANK") == "1":  # (the test process imports ERROR without being a rank)
    _real_hook = train._record_hook

    def _dying_hook():
        hook = _real_hook()

        def after_train_iter(runner, batch_idx, data_batch=None, outputs=None):
            raise RuntimeError(ERROR)

        hook.after_train_iter = after_train_iter
        return hook

    train._record_hook = _dying_hook

if __name__ == "__main__":
    sys.exit(worker.main())
