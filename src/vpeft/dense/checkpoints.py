"""Resumable dense checkpoints: written atomically, loaded back by the run that wrote them.

mmengine 0.10.7's CheckpointHook deletes the oldest kept checkpoint *before* writing the next one and
writes it in place, so a kill during the save leaves no complete checkpoint (with `max_keep_ckpts: 1`)
and `last_checkpoint` naming a file that is gone. Its loader calls `torch.load` with torch's default
`weights_only=True`, which refuses the runner state mmengine pickles (message hub, history buffers).

`AtomicCheckpointHook` (registered as an mmengine hook; generated configs use it) writes
`epoch_N.pth` / `iter_N.pth` under a temporary name, renames it when complete, then points
`last_checkpoint` at it (also by rename), and only then deletes the older one. It also keeps the random
streams (torch, CUDA, numpy, Python) in the checkpoint and restores them where an uninterrupted run
would be, so a resumed run draws what the uninterrupted one would have.

`own_checkpoint(work_dir)` is the last complete checkpoint of a run's own folder as a `vpeft-run://`
path: only that scheme loads without pickle restrictions, and only files inside a folder that holds
the run's fingerprint stamp (the folder this run wrote); every other checkpoint keeps torch's default.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import CheckpointLoader

log = logging.getLogger("vpeft.dense.checkpoints")

SCHEME = "vpeft-run://"
#: Written by `vpeft.dense.train` into the run's checkpoint folder; marks the folder as the run's own.
STAMP = "fingerprint.txt"
_LAST = "last_checkpoint"
_RNG_KEY = "vpeft_rng"


class DenseCheckpointError(RuntimeError):
    """A run's own checkpoint cannot be read; the message names the file."""


def own_checkpoint(work_dir: str | Path) -> str | None:
    """The last complete checkpoint in `work_dir` as a `vpeft-run://` path, or None (nothing to resume)."""
    work_dir = Path(work_dir)
    last = work_dir / _LAST
    if not last.is_file():
        return None
    path = Path(last.read_text().strip())
    if not path.is_absolute():
        path = work_dir / path.name
    if not path.is_file():  # written by an older vpeft (mmengine's own hook): nothing complete to resume
        log.warning("%s names %s, which does not exist; starting from scratch", last, path)
        return None
    return SCHEME + str(path.resolve())


@CheckpointLoader.register_scheme(prefixes=SCHEME, force=True)
def _load_own_checkpoint(filename: str, map_location=None):
    path = Path(filename[len(SCHEME):])
    if not (path.parent / STAMP).is_file():
        raise DenseCheckpointError(f"{path}: not in a vpeft run's checkpoint folder (no {STAMP} beside it)")
    try:
        # a file this run wrote into its own folder: its pickled runner state is trusted
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - one line naming the file
        raise DenseCheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); delete "
                                   f"{path.parent} to restart the run") from err


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _RestoreAfter:
    """The loop's data iterator, restoring the random streams once `skip` batches were drawn: mmengine's
    iteration loop replays the batches it already trained on before it continues."""

    def __init__(self, iterator, skip: int, state: dict):
        self._iterator, self._left, self._state = iterator, skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self._left == 0 and self._state is not None:
            _set_rng_state(self._state)
            self._state = None
        self._left -= 1
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module(force=True)
class AtomicCheckpointHook(Hook):
    """Every `interval` epochs (or iterations) and at the end: a complete checkpoint, atomically; the
    previous one is deleted only after the new one is complete and named in `last_checkpoint`."""

    priority = "VERY_LOW"  # after the schedulers and the record hook, as mmengine's CheckpointHook

    def __init__(self, interval: int = 1, by_epoch: bool = True, max_keep_ckpts: int = 1):
        self.interval, self.by_epoch, self.max_keep_ckpts = int(interval), bool(by_epoch), max(1, int(max_keep_ckpts))
        self._resumed_rng = None

    # -- saving ---------------------------------------------------------------------------------------
    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (self.every_n_epochs(runner, self.interval) or self.is_last_train_epoch(runner)):
            self._save(runner, f"epoch_{runner.epoch + 1}.pth")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.by_epoch and (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)):
            self._save(runner, f"iter_{runner.iter + 1}.pth")

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[_RNG_KEY] = _rng_state()

    def _save(self, runner, name: str) -> None:
        out = Path(runner.work_dir)
        tmp = f".{name}.tmp"
        try:
            runner.save_checkpoint(str(out), tmp, save_optimizer=True, save_param_scheduler=True,
                                   by_epoch=self.by_epoch)  # mmengine saves on the main process only
            if not is_main_process():
                return
            with open(out / tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(out / tmp, out / name)
            last_tmp = out / f".{_LAST}.tmp"
            last_tmp.write_text(str(out / name))
            os.replace(last_tmp, out / _LAST)
        except BaseException:  # a failed save (a full disk) does not keep the space it took
            if is_main_process():
                (out / tmp).unlink(missing_ok=True)
            raise
        kept = sorted(out.glob("epoch_*.pth" if self.by_epoch else "iter_*.pth"),
                      key=lambda p: int(p.stem.rpartition("_")[2]))
        for old in kept[:-self.max_keep_ckpts]:
            old.unlink(missing_ok=True)

    # -- resuming -------------------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._resumed_rng = checkpoint.get(_RNG_KEY)

    def before_train_epoch(self, runner) -> None:
        state, self._resumed_rng = self._resumed_rng, None
        if state is None:
            return
        loop = runner.train_loop
        if self.by_epoch:  # before the epoch's data iterator draws its worker seed
            _set_rng_state(state)
        else:  # after the loop replayed the iterations it resumes past
            loop.dataloader_iterator = _RestoreAfter(loop.dataloader_iterator, loop.iter, state)
