"""vpeft.worker: a job script handed to the warm worker runs in a fresh fork with the job's own stdio, cwd,
environment and exit status; without a worker, or with a dead one, it runs in its own process; a
cancelled job's process takes the forked run with it; no state passes from one run to the next."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vpeft import worker

SRC = str(Path(worker.__file__).resolve().parents[1])

# A job script as the workflow writes them: the hand-over right after the imports it needs to find the library.
SCRIPT = textwrap.dedent(f"""
    import os, sys
    sys.path.insert(0, {SRC!r})
    from vpeft.worker import hand_over
    hand_over()
    import vpeft.worker as w
    state = sys.modules.setdefault("job_state", type(sys)("job_state"))
    print("ran", os.getpid(), w._in_child, os.getcwd(), os.environ.get("JOB_VALUE"), sys.argv[1:],
          getattr(state, "seen", None), flush=True)
    state.seen = "leaked"
    print("to stderr", file=sys.stderr)
    if sys.argv[1] == "fail":
        raise RuntimeError("the job failed")
    if sys.argv[1] == "sleep":
        open("started", "w").close()
        import time
        time.sleep(60)
        open("not-killed", "w").close()
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
""")


@pytest.fixture
def job_env(monkeypatch, tmp_path):
    monkeypatch.setenv(worker.ENV, str(os.getpid()))
    monkeypatch.setenv("JOB_VALUE", "from-the-job")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    return script


@pytest.fixture
def running_worker(job_env, tmp_path):
    """Starts a worker at the address the job will compute (same interpreter, environment, sources; called
    in the test itself, as pytest changes PYTEST_CURRENT_TEST between phases), without preloading."""
    procs = []

    def start():
        address = worker._address()
        procs.append(subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {SRC!r}); "
                                       "from vpeft.worker import main; main()", address.encode().hex(),
                                       str(os.getpid())], stdout=open(tmp_path / "worker.log", "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        for _ in range(400):  # the log says so once it listens
            if "serving" in (tmp_path / "worker.log").read_text():
                return
            time.sleep(0.05)
        pytest.fail("the worker did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _job(script: Path, cwd: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ), timeout=120, **kwargs)


def _ran(result) -> list[str]:
    return next(line for line in result.stdout.splitlines() if line.startswith("ran")).split()


def test_a_handed_over_job_runs_in_a_fork_with_its_own_stdio_cwd_env_and_status(running_worker, job_env, tmp_path):
    running_worker()
    work = tmp_path / "work"
    work.mkdir()
    result = _job(job_env, work, "ok", "3")
    assert result.returncode == 3, result.stderr
    ran = _ran(result)
    assert ran[2] == "True", (result.stderr, (tmp_path / "worker.log").read_text())  # in the worker's child, not in the job's own process
    assert ran[3] == str(work) and ran[4] == "from-the-job" and ran[5:7] == ["['ok',", "'3']"]
    assert "to stderr" in result.stderr
    assert f"-> process {ran[1]}" in (tmp_path / "worker.log").read_text()


def test_no_state_passes_from_one_run_to_the_next(running_worker, job_env, tmp_path):
    running_worker()
    first, second = _job(job_env, tmp_path, "ok"), _job(job_env, tmp_path, "ok")
    assert _ran(first)[2] == _ran(second)[2] == "True"
    assert _ran(first)[-1] == _ran(second)[-1] == "None"  # the first run's module state is not seen
    assert _ran(first)[1] != _ran(second)[1]


def test_a_failing_job_reports_its_traceback_and_status(running_worker, job_env, tmp_path):
    running_worker()
    result = _job(job_env, tmp_path, "fail")
    assert result.returncode == 1
    assert _ran(result)[2] == "True"
    assert "RuntimeError: the job failed" in result.stderr and "Traceback" in result.stderr


def test_without_a_worker_the_job_runs_in_its_own_process(job_env, tmp_path, monkeypatch):
    monkeypatch.delenv(worker.ENV)  # not a local Snakemake run: no hand-over at all
    result = _job(job_env, tmp_path, "ok", "0")
    assert result.returncode == 0 and _ran(result)[2] == "False"


def test_a_dead_worker_falls_back_to_the_jobs_own_process(job_env, tmp_path):
    # a worker that took the connection and died: the hand-over is refused, the job runs itself
    address = worker._address()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(1)
    job = subprocess.Popen([sys.executable, str(job_env), "ok", "5"], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    conn, _ = listener.accept()
    conn.close()
    listener.close()
    out, err = job.communicate(timeout=120)
    assert job.returncode == 5, err
    assert next(line for line in out.splitlines() if line.startswith("ran")).split()[2] == "False"


def test_a_cancelled_job_takes_its_forked_run_with_it(running_worker, job_env, tmp_path):
    running_worker()
    job = subprocess.Popen([sys.executable, str(job_env), "sleep"], cwd=tmp_path, env=dict(os.environ),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        if (tmp_path / "started").exists():
            break
        time.sleep(0.05)
    assert (tmp_path / "started").exists()
    job.send_signal(signal.SIGTERM)  # what Snakemake does to a cancelled job
    job.wait(timeout=30)
    log = tmp_path / "worker.log"
    pid = int(log.read_text().split("-> process ")[-1].split()[0])
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the forked run {pid} outlived its job's process")
    assert not (tmp_path / "not-killed").exists()
