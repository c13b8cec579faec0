"""Logging for workflow scripts: everything (log records, warnings, tracebacks, third-party prints)
goes to the rule's log; the console gets only what `console()` writes (one line per finished run)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

#: The job's console (Snakemake's terminal) once `log_to_file` moved stdout and stderr to the log.
_console = None


def log_to_file(path: str | Path | None, level: int = logging.INFO) -> None:
    """Send logging, warnings and both stdout and stderr to `path` (line-buffered, so progress is visible
    while a job runs). The redirection is done on the file descriptors: prints of third-party code
    (mmengine's per-iteration logs, which go to stdout), C-level writes and tracebacks all land in the log."""
    global _console
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the process
        for fh in (sys.stdout, sys.stderr):
            fh.flush()
        if _console is None:
            _console = os.fdopen(os.dup(2), "w", buffering=1)  # Snakemake writes its progress to stderr
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        sys.stdout = sys.stderr = stream
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.captureWarnings(True)


def console(line: str) -> None:
    """Write one line to the job's console (the terminal Snakemake runs in), and to the log."""
    (_console or sys.__stderr__).write(line.rstrip("\n") + "\n")
    if _console is not None:
        logging.getLogger("vpeft").info("%s", line)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def eta(done: int, total: int, elapsed: float) -> str:
    """'ETA 3m05s' from the mean time per unit of work so far (units: epochs, iterations)."""
    if done <= 0 or total <= done:
        return "ETA 0s"
    return f"ETA {format_duration(elapsed / done * (total - done))}"


#: Display names of the metrics a run records as `metric.name`.
METRIC_LABELS = {"top1": "top-1", "box_ap": "AP box", "mask_ap": "AP mask", "box_ap50": "AP50 box", "miou": "mIoU"}


def finished_run_line(metrics: dict) -> str:
    """The console line of one finished run: suite / method / task (seed): metric, trainable params, wall time."""
    metric = metrics["metric"]
    wall = float(metrics["train"]["wall_seconds"]) + float(metrics["eval"]["wall_seconds"])
    return (f"done {metrics['suite']} / {metrics['method']} / {metrics['task']} (seed {metrics['seed']}): "
            f"{METRIC_LABELS.get(metric['name'], metric['name'])} {100 * float(metric['value']):.2f}%, "
            f"{int(metrics['params']['trainable']):,} trainable params, {wall:.1f} s")


def tuned_line(result: dict) -> str:
    """The console line of one finished search (vpeft.engine.tune): its best val200 score and setting."""
    best = result["best"]
    setting = ", ".join(f"{name.split('.', 1)[-1]}={value:.3g}" if isinstance(value, float)
                        else f"{name.split('.', 1)[-1]}={value}" for name, value in sorted(best["params"].items()))
    split = result.get("protocol", {}).get("eval_split") or "val"
    return (f"tuned {result['suite']} / {result['method']} / {result['task']}: best {split} top-1 "
            f"{100 * float(best['value']):.2f}% ({setting}), trial {best['trial']} of "
            f"{result['counts']['finished']} ({result['counts']['pruned']} pruned)")
