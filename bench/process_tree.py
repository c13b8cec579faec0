"""Run a command and write the wall time and CPU time (user + sys) of its whole process tree as JSON,
processes that left it included: this process is their subreaper (Linux), so the workflow's detached
warm worker (vpeft.worker) and its jobs count, as a process-tree CPU measurement should.

    python bench/process_tree.py OUT.json LOG.txt -- COMMAND ...
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    out, log, sep, *command = argv
    if sep != "--" or not command:
        raise SystemExit(__doc__)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    load = os.getloadavg()
    start = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    signal.alarm(300)  # adopted orphans (a warm worker) exit within seconds of their Snakemake process
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    signal.alarm(0)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as fh:
        json.dump({"returncode": rc, "wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                   "user_seconds": usage.ru_utime, "sys_seconds": usage.ru_stime,
                   "load_average_before": load, "load_average_after": os.getloadavg()}, fh)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
