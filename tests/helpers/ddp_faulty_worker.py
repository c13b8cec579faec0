"""A rank entry point for tests of failing data-parallel runs: the real worker (vpeft.engine.ddp_worker),
except that the rank named by VPEFT_TEST_FAULT_RANK fails in epoch VPEFT_TEST_FAULT_EPOCH, the way named
by VPEFT_TEST_FAULT (`raise`: an exception; `kill`: SIGKILL, which leaves no record)."""

from __future__ import annotations

import os
import signal
import sys

from vpeft.engine import ddp_worker, train


def _faulty(real):
    def train_epoch(*args, epoch: int, **kwargs):
        if os.environ["RANK"] == os.environ["VPEFT_TEST_FAULT_RANK"] and epoch == int(os.environ["VPEFT_TEST_FAULT_EPOCH"]):
            if os.environ["VPEFT_TEST_FAULT"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault in epoch {epoch}")
        return real(*args, epoch=epoch, **kwargs)

    return train_epoch


if __name__ == "__main__":
    train.train_epoch = _faulty(train.train_epoch)
    sys.exit(ddp_worker.main(sys.argv[1]))
