"""The workflow's console: Snakemake's logger plugin `vpeft` formats Snakemake's log records here. What it prints:

* a failed job: its rule and wildcards, its log path and the end of its log (the message that says what to
  do), whatever `quiet` hides (Snakemake's own handler drops job errors under `quiet: rules`);
* a progress line with an ETA, about every tenth of the jobs (training runs print their own `done ...`
  line from the job, `vpeft.logs.console`);
* a closing summary: per suite, the training runs that finished or failed in this run and the best method
  of its table by mean; where the report is;
* the plan (Snakemake's job-stats table), warnings and workflow errors, as Snakemake formats them.

Snakemake's per-job bookkeeping (job blocks, `Select jobs to execute...`, `Finished jobid`, `K of N steps`)
is left out; `--workflow-profile none` (no logger plugin) brings it back.

Runs in Snakemake's own process, loaded before the Snakefile puts its checkout's `src/` first on sys.path:
so it imports nothing from `vpeft` (that would pin the process to whichever vpeft is installed)."""

from __future__ import annotations

import csv
import logging
import re
import sys
import time
from pathlib import Path


def format_duration(seconds: float) -> str:
    """As vpeft.logs.format_duration (not imported: see the module docstring)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


#: Rules whose finished jobs are training runs (one `done ...` line each, printed by the job itself).
TRAINING_RULES = frozenset({"train_run", "train_dense_run"})
#: The rule that writes the HTML report; its output is named in the closing summary.
REPORT_RULES = frozenset({"report", "tuning_report"})
#: Snakemake's informational lines that only narrate its scheduling.
BOOKKEEPING = ("Building DAG", "Select jobs to execute", "Execute ", "Using shell", "Provided cores",
               "Rules claiming more threads", "Assuming unrestricted", "Conda environments", "Singularity",
               "Finished jobid", "Complete log", "Elapsed time", "Shutting down", "Ready for execution",
               "Waiting for more resources", "Touching output", "Removing temporary output", "Storing output",
               "host:", "Activating conda", "Using workflow specific profile", "Resources before job selection",
               "Waiting at most", "Job counts", "Retrieving", "Updating job", "Removing output files of failed job")
#: A traceback frame in the message of a workflow error.
FRAME = re.compile(r'^\s+File ".*", line \d+')
#: A progress line is printed after each tenth of the jobs, at most once per this many seconds.
PROGRESS_SECONDS = 20.0
#: How many lines of a failed job's log reach the console (the message is at its end).
LOG_TAIL = 12


def log_tail(path: str | Path, lines: int = LOG_TAIL) -> list[str]:
    """The end of a job's log: with a Python traceback in it, the lines before the last traceback and the
    exception's message (not the frames, which name library internals); otherwise the last `lines`."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError as err:
        return [f"(log not readable: {err})"]
    starts = [i for i, line in enumerate(text) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return text[-lines:]
    start = starts[-1]
    message = [line for line in text[start + 1:] if line and not line.startswith(" ")]
    return (text[max(0, start - 3):start] + message)[-lines:]


def failed_job_lines(rule: str, wildcards: dict, logs: list[str], message: str | None,
                     shellcmd: str | None) -> list[str]:
    """The console block of a failed job: what failed, where its log is, and the end of that log."""
    where = ", ".join(f"{k}={v}" for k, v in (wildcards or {}).items())
    out = [f"FAILED {rule}" + (f" ({where})" if where else "")]
    if message:
        out.append(f"  {message}")
    for path in logs:
        out.append(f"  log: {path}")
        out.extend(f"  | {line}" for line in log_tail(path))
    if not logs and shellcmd:
        out.append(f"  command: {shellcmd.strip()}")
    return out


def best_by_mean(table: str | Path) -> tuple[str, float] | None:
    """(method, mean) of the best finished row of a suite table (results/<suite>/table.csv), or None."""
    try:
        with open(table, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("status") == "ok" and r.get("mean")]
    except OSError:
        return None
    if not rows:
        return None
    best = max(rows, key=lambda r: float(r["mean"]))
    return best["method"], float(best["mean"])


def summary_lines(runs: dict[str, list[int]], reports: list[str], root: Path = Path(".")) -> list[str]:
    """The closing summary: per suite (in order of appearance) runs ok / failed in this run and the best
    method of its table; then where the report is."""
    out = []
    for suite, (ok, failed) in runs.items():
        line = f"{suite}: {ok} runs ok, {failed} failed"
        best = best_by_mean(root / "results" / suite / "table.csv")
        if best:
            line += f"; best by mean: {best[0]} ({best[1]:.2f})"
        out.append(line)
    out.extend(f"report: {path}" for path in reports)
    return out


class Console:
    """The state of one workflow run's console, fed with Snakemake's log records by the plugin handler."""

    def __init__(self, stream=None, quiet=(), printshellcmds: bool = False, dryrun: bool = False,
                 default_format=None, clock=time.monotonic, verbose: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = {str(q) for q in (quiet or ())}
        self.printshellcmds = printshellcmds
        self.dryrun = dryrun
        self.verbose = verbose
        self.default_format = default_format or (lambda record: record.getMessage())
        self.clock = clock
        self.started = clock()
        self.jobs: dict = {}              # jobid -> (rule, wildcards, outputs)
        self.runs: dict[str, list[int]] = {}  # suite -> [ok, failed] training runs in this run
        self.reports: list[str] = []
        self.next_progress = 0.1          # fraction of the jobs at which the next progress line is due
        self.last_progress = None  # the first progress line is never held back (a short run still shows one)
        self.failed = False
        self.closed = False

    def write(self, lines) -> None:
        for line in [lines] if isinstance(lines, str) else lines:
            self.stream.write(line.rstrip("\n") + "\n")
        self.stream.flush()

    def handle(self, record: logging.LogRecord) -> None:
        event = str(getattr(record, "event", "") or "")
        handler = getattr(self, f"on_{event}", None) if event else None
        if handler is not None:
            handler(record)
        elif record.levelno >= logging.WARNING:
            self.write(self.default_format(record))
        elif not event:
            message = record.getMessage() if record.msg is not None else ""
            if message.strip() and not message.lstrip().startswith(BOOKKEEPING):
                self.write(message)

    # -- Snakemake's events (snakemake_interface_logger_plugins.common.LogEvent) --
    def on_run_info(self, record) -> None:
        if "progress" not in self.quiet:
            self.write(record.getMessage())

    def on_job_info(self, record) -> None:
        self.jobs[record.jobid] = (record.rule_name, dict(record.wildcards or {}), list(record.output or []))
        if "rules" not in self.quiet:
            self.write(self.default_format(record))

    def on_shellcmd(self, record) -> None:
        if self.printshellcmds and getattr(record, "shellcmd", None):
            self.write(record.shellcmd.strip())

    def on_job_finished(self, record) -> None:
        rule, wildcards, outputs = self.jobs.get(record.job_id, (None, {}, []))
        if rule in TRAINING_RULES and "suite" in wildcards:
            self.runs.setdefault(wildcards["suite"], [0, 0])[0] += 1
        if rule in REPORT_RULES:
            self.reports.extend(o for o in outputs if o.endswith(".html"))

    def on_job_error(self, record) -> None:
        self.failed = True
        rule = record.rule_name
        wildcards = self.jobs.get(record.jobid, (rule, {}, []))[1]
        if rule in TRAINING_RULES and "suite" in wildcards:
            self.runs.setdefault(wildcards["suite"], [0, 0])[1] += 1
        self.write(failed_job_lines(rule, wildcards, list(record.log or []), record.rule_msg,
                                    getattr(record, "shellcmd", None)))

    def on_group_error(self, record) -> None:
        self.failed = True
        for info in record.job_error_info:
            self.write(failed_job_lines(info["rule_name"], {}, list(info.get("log") or []), None, None))

    def on_progress(self, record) -> None:
        done, total = int(record.done), int(record.total)
        now = self.clock()
        if ("progress" in self.quiet or total <= 0 or done >= total or done / total < self.next_progress
                or (self.last_progress is not None and now - self.last_progress < PROGRESS_SECONDS)):
            return
        while done / total >= self.next_progress:
            self.next_progress += 0.1
        self.last_progress = now
        elapsed = now - self.started
        remaining = elapsed / done * (total - done)
        self.write(f"[{done}/{total} jobs, {format_duration(elapsed)}, ETA {format_duration(remaining)}]")

    def on_error(self, record) -> None:
        message = self.default_format(record)
        # a failed script's CalledProcessError: the job's own block (on_job_error) says more
        if message.startswith("RuleException:") and "CalledProcessError" in message:
            return
        if not self.verbose:  # the message says what to do; the frames (--verbose) name library internals
            message = "\n".join(line for line in message.splitlines() if not FRAME.match(line))
        self.write(message)

    def close(self) -> None:
        """The closing summary (not for dry runs, which train nothing)."""
        if self.closed or self.dryrun or not (self.runs or self.reports):
            return
        self.closed = True
        elapsed = format_duration(self.clock() - self.started)
        self.write(summary_lines(self.runs, self.reports) + [f"finished in {elapsed}" if not self.failed
                                                             else f"stopped with errors after {elapsed}"])
