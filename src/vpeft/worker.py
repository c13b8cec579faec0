"""A warm worker for the workflow's Python jobs: their imports paid once per `snakemake` run, not per job.

Each job of a local run is still its own Snakemake job (own process, log, outputs, exit status), but
its thin script calls `hand_over()` right after its `sys.path` line. When the Snakefile's `onstart`
marked the run (`ENV`: the Snakemake process id; local runs only), the script's process sends itself
over a Unix socket to a worker that has already imported torch, timm and the library: the worker
forks a child which takes the job's stdin/stdout/stderr, working directory, environment, argv and
sys.path and runs the same script file as `__main__`, exactly as the job's own process would have
(the worker itself never runs a job, so every child starts from the same freshly imported state and
no state passes from one run to the next). The job's process waits for the child's exit status and
exits with it; when it is killed (Snakemake cancels the job), the child kills itself.

Robust by falling back: no marker, no worker yet (the first job starts one and runs itself), a
refused or broken hand-over -> the script runs in its own process as before. The socket's name is
keyed by the Snakemake process, the interpreter, the environment (threads settings are read at
import) and the library's source files (an edit starts a fresh worker), so a job never runs on code
or settings other than its own. A worker exits with its Snakemake process or after `IDLE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

#: Set (to the Snakemake process id) by the Snakefile's `onstart` on local runs; unset: no hand-over.
ENV = "VPEFT_WARM_WORKER"
#: A worker with no job for this long exits (its Snakemake process is checked every second as well).
IDLE_SECONDS = 300
#: Modules every worker imports before it serves: what every training job needs.
BASE_PRELOAD = ("vpeft.engine.train",)

GO = b"g"  # the job's process still waits: run
_in_child = False  # True in a worker's child: hand_over() then returns and the script runs on


def hand_over(*preload: str) -> None:
    """Run the calling Snakemake script in the warm worker and exit with its status; return (and let
    the script run in this process) when there is no worker to run it. `preload`: modules the script
    needs, which the worker imports for later jobs."""
    if _in_child or not os.environ.get(ENV) or not hasattr(socket, "send_fds"):
        return
    main = sys.modules["__main__"]
    # the file Python runs: Snakemake's copy with its preamble (which sets __file__ to the original)
    script = getattr(main, "__real_file__", None) or getattr(main, "__file__", None)
    if not script or not Path(script).is_file():
        return
    address = _address()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(address)
    except OSError:
        conn.close()
        _start_worker(address, preload)
        return
    request = {"script": str(Path(script).resolve()), "cwd": os.getcwd(), "env": dict(os.environ),
               "argv": sys.argv, "path": sys.path, "preload": list(preload)}
    try:
        conn.settimeout(120)  # a worker busy importing answers late; one that never does is dead
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        socket.send_fds(conn, [_frame(request)], [0, 1, 2])
        reply = _receive(conn)
    except (OSError, ValueError):
        reply = None
    try:
        if reply and "accepted" in reply:
            conn.sendall(GO)  # the child runs the job only after this: a job that gave up waiting runs here
        else:
            reply = None
    except OSError:
        reply = None
    if reply is None:
        conn.close()
        return  # refused or broken before the job started: run it here
    conn.settimeout(None)
    try:
        status = _receive(conn)
    except (OSError, ValueError):
        status = None
    if status is None:
        sys.stderr.write(f"vpeft: the warm worker's process {reply['accepted']} running this job ended without "
                         "an exit status (killed?); the job's log may say more\n")
        code = 1
    elif "signal" in status:
        sys.stderr.write(f"vpeft: the warm worker's process running this job was killed by signal "
                         f"{status['signal']}; the job's log may say more\n")
        code = 128 + int(status["signal"])
    else:
        code = int(status["exit"])
    sys.stderr.flush()
    os._exit(code)


# -- addressing ------------------------------------------------------------------------------------
def _source_stamp() -> list:
    package = Path(__file__).resolve().parent
    stamp = [str(package)]
    for folder, _, files in sorted(os.walk(package)):
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                stamp.append((os.path.relpath(os.path.join(folder, name), package), st.st_mtime_ns, st.st_size))
    return stamp


def _address() -> str:
    """Abstract Unix socket name (Linux: no file to clean up) of the worker for this process's settings."""
    key = json.dumps([sys.executable, sorted(os.environ.items()), _source_stamp()], default=str)
    return "\0vpeft-worker-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _frame(message: dict) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack("!I", len(data)) + data


def _read_exact(conn: socket.socket, size: int, start: bytes = b"") -> bytes | None:
    data = start
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _receive(conn: socket.socket) -> dict | None:
    head = _read_exact(conn, 4)
    if head is None:
        return None
    body = _read_exact(conn, struct.unpack("!I", head)[0])
    return None if body is None else json.loads(body)


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(_frame(message))
    except OSError:
        pass  # the job's process is gone; nobody to tell


# -- the worker ------------------------------------------------------------------------------------
def _start_worker(address: str, preload) -> None:
    import subprocess

    src = str(Path(__file__).resolve().parents[1])
    log = Path(".snakemake") / "log" / f"vpeft-worker-{address[-32:]}.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        # the worker is keyed by this process's environment: it gets the same one (its imports see it)
        with open(log, "ab") as out:
            subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r}); "
                              "from vpeft.worker import main; main()", address.encode().hex(),
                              os.environ[ENV], *BASE_PRELOAD, *preload],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                             close_fds=True)
    except OSError:
        pass  # no worker: every job runs in its own process


def main() -> None:
    """Worker process: `... ADDRESS_HEX WATCH_PID [MODULE ...]` (started by `_start_worker`)."""
    address, watch = bytes.fromhex(sys.argv[1]).decode(), int(sys.argv[2])
    serve(address, watch, sys.argv[3:])


def _import(modules, log) -> None:
    import importlib

    for name in modules:
        if name in sys.modules:
            continue
        start = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - the job imports it again and reports the error itself
            log(f"preloading {name} failed: {type(err).__name__}: {err}")
        else:
            log(f"preloaded {name} in {time.perf_counter() - start:.1f} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(address: str, watch: int, preload, idle_seconds: float = IDLE_SECONDS) -> None:
    """Listen on `address`, import `preload`, then fork one child per job until the Snakemake process
    `watch` ends or no job came for `idle_seconds`. Never runs a job itself."""
    import select

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} vpeft-worker {os.getpid()}: {message}", flush=True)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)
    except OSError:
        return  # another job started this worker first
    listener.listen(64)  # jobs that come while the imports run wait in the backlog
    log(f"serving Snakemake process {watch}")
    _import(preload, log)
    children: dict[int, socket.socket] = {}
    wanted: list[str] = []
    last = time.monotonic()
    while True:
        _reap(children, log)
        if not _alive(watch) or (not children and time.monotonic() - last > idle_seconds):
            log("exiting: " + ("Snakemake ended" if not _alive(watch) else "idle"))
            return
        ready, _, _ = select.select([listener], [], [], 0 if wanted else 1.0)
        if not ready:
            if wanted:
                _import([wanted.pop(0)], log)
            continue
        conn, _ = listener.accept()
        last = time.monotonic()
        request = _accept_request(conn, log)
        if request is None:
            continue
        request, fds = request
        wanted += [m for m in request.get("preload", []) if m not in sys.modules and m not in wanted]
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        try:
            pid = os.fork()
        except OSError as err:
            log(f"fork failed ({err}); the job runs in its own process")
            _send(conn, {"refused": str(err)})
            conn.close()
            for fd in fds:
                os.close(fd)
            continue
        if pid == 0:
            code = 1
            try:
                code = _run_child(conn, listener, fds, request)
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        children[pid] = conn
        log(f"job {request['script']} -> process {pid}")


def _accept_request(conn: socket.socket, log):
    try:
        conn.settimeout(10)
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        if len(fds) != 3 or len(message) < 4:
            raise ValueError("no request")
        size = struct.unpack("!I", message[:4])[0]
        body = _read_exact(conn, size + 4, message)
        if body is None:
            raise ValueError("truncated request")
        request = json.loads(body[4:])
        conn.settimeout(None)
    except (OSError, ValueError) as err:
        log(f"bad request ({err})")
        conn.close()
        return None
    return request, fds


def _reap(children: dict, log) -> None:
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done == 0:
            continue
        conn = children.pop(pid)
        # the child sent its own exit status; this one is for a child that died without sending it
        if os.WIFSIGNALED(status):
            _send(conn, {"signal": os.WTERMSIG(status)})
            log(f"process {pid} killed by signal {os.WTERMSIG(status)}")
        else:
            _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
        conn.close()


def _run_child(conn: socket.socket, listener: socket.socket, fds: list[int], request: dict) -> int:
    """In the forked child: become the job's process, run its script as `__main__`, return its exit code."""
    import atexit
    import runpy
    import signal
    import threading

    global _in_child
    _in_child = True
    listener.close()
    os.setsid()  # the job and whatever it starts form one group, killed together
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    # the same stdio objects a fresh interpreter would make for these descriptors
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=-1 if not os.isatty(1) else 1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[:] = request["path"]
    _send(conn, {"accepted": os.getpid()})
    try:
        go = conn.recv(1)
    except OSError:
        go = b""
    if go != GO:
        return 1  # the job's process gave up waiting (and runs the job itself) or is gone
    finished = threading.Event()

    def watch_job_process():
        # EOF: the job's process died (Snakemake cancelled the job): end this one and its children
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        if not finished.is_set():
            os.killpg(0, signal.SIGTERM)

    threading.Thread(target=watch_job_process, daemon=True).start()
    code = 0
    try:
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:  # noqa: BLE001 - reported as an uncaught exception is by Python itself
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        finished.set()
        _send(conn, {"exit": code})
    return code


def _exit_code(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1
