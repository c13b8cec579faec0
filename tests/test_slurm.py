"""`snakemake --profile profiles/slurm` on a real single-node SLURM cluster on this machine.

The test installs Debian's SLURM (slurm-wlm, slurmdbd, munge) and MariaDB (for slurmdbd, without which
`sacct` sees nothing) with apt when they are missing, starts private instances of munged, MariaDB,
slurmdbd, slurmctld and slurmd on free localhost ports under a temporary folder (nothing system-wide
is configured or restarted), runs the smoke config (one task) through the cluster profile unchanged (the
node declares 64 CPUs, 256 GB and 4 GPUs, stand-in character devices, so the per-rule requests, GPUs
for training included, are scheduled as written), and checks that the workflow completed and that its
jobs are in `sacct`. The scratch control's run asks for 2 GPUs and 2 CPUs: it trains as a 2-process
data-parallel job (torchrun, gloo on the CPUs, as config `distributed.processes: auto` follows the GPUs). It skips, saying why, where it cannot install or
start SLURM (not root, no apt, a daemon that does not come up).

The cluster's config is found through SLURM_CONF (nothing is written to /etc/slurm). The executor
plugin's job step removes every SLURM_* variable before it calls `srun` inside the job, so `srun`
would look for /etc/slurm/slurm.conf; a two-line `srun` on the test's PATH puts SLURM_CONF back and
runs the real srun. Clusters configured the usual way (/etc/slurm or configless) need no such thing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.configs import smoke_config, write_config
from helpers.snake import ROOT, SNAKEMAKE

pytestmark = pytest.mark.slow

PACKAGES = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "sbatch": "slurm-client", "sacct": "slurm-client",
            "srun": "slurm-client",
            "slurmdbd": "slurmdbd", "munged": "munge", "mariadbd": "mariadb-server",
            "mariadb-install-db": "mariadb-server"}
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Character devices that stand in for GPUs, so that --gres=gpu:1 requests are schedulable.
STAND_IN_GPUS = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def _install_missing() -> None:
    missing = sorted({pkg for binary, pkg in PACKAGES.items() if not _which(binary)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing) and apt-get as root is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # package lists may be missing or stale
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env, timeout=600)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        pytest.skip(f"could not install {', '.join(missing)} with apt-get: {result.stderr.strip()[-500:]}")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait(check, what: str, logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in logs if p.is_file())
    pytest.skip(f"could not start the test SLURM cluster: {what} did not come up within {timeout:.0f} s\n{tails}")


class Cluster:
    """Private munge + MariaDB + slurmdbd + slurmctld + slurmd under one folder; stop() ends exactly
    the processes it started (by the pids they wrote)."""

    def __init__(self, base: Path):
        self.base = base
        self.host = socket.gethostname().split(".")[0]
        self.conf = base / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.pid_files: list[Path] = []

    def _run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=120, **kw)
        if check and result.returncode != 0:
            pytest.skip(f"could not start the test SLURM cluster: {' '.join(cmd)} failed: "
                        f"{(result.stdout + result.stderr).strip()[-800:]}")
        return result

    def start(self) -> None:
        b = self.base
        for sub in ("munge", "db", "state", "spool"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        (b / "munge").chmod(0o755)
        ctld_port, slurmd_port, dbd_port, db_port = _free_ports(4)
        sock = b / "munge" / "munge.socket"

        key = b / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.pid_files.append(b / "munge" / "munged.pid")
        self._run(_which("munged"), "--force", f"--key-file={key}", f"--socket={sock}",
                  f"--pid-file={b / 'munge/munged.pid'}", f"--log-file={b / 'munge/munged.log'}",
                  f"--seed-file={b / 'munge/munged.seed'}")

        self._run(_which("mariadb-install-db"), f"--datadir={b / 'db'}", "--user=root",
                  "--auth-root-authentication-method=socket", "--skip-test-db")
        self.pid_files.append(b / "mysql.pid")
        subprocess.Popen([_which("mariadbd"), f"--datadir={b / 'db'}", "--user=root", f"--socket={b / 'mysql.sock'}",
                          f"--port={db_port}", "--bind-address=127.0.0.1", f"--pid-file={b / 'mysql.pid'}",
                          f"--log-error={b / 'mysql.err'}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        mariadb = shutil.which("mariadb") or shutil.which("mysql")
        _wait(lambda: subprocess.run([mariadb, f"--socket={b / 'mysql.sock'}", "-uroot", "-e", "SELECT 1"],
                                     capture_output=True).returncode == 0, "MariaDB", [b / "mysql.err"])
        self._run(mariadb, f"--socket={b / 'mysql.sock'}", "-uroot", "-e",
                  "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
                  "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")

        (b / "slurmdbd.conf").write_text("\n".join([
            "AuthType=auth/munge", f"AuthInfo=socket={sock}", f"DbdHost={self.host}", "DbdAddr=127.0.0.1",
            f"DbdPort={dbd_port}", "SlurmUser=root", "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1", f"StoragePort={db_port}", "StorageUser=slurm", "StoragePass=slurm",
            "StorageLoc=slurm_acct_db", f"PidFile={b / 'slurmdbd.pid'}", f"LogFile={b / 'slurmdbd.log'}", ""]))
        (b / "slurmdbd.conf").chmod(0o600)
        (b / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.host} Name=gpu File={','.join(STAND_IN_GPUS)}\n")
        self.conf.write_text("\n".join([
            "ClusterName=vpeft-test", f"SlurmctldHost={self.host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={sock}", "CredType=cred/munge",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            f"StateSaveLocation={b / 'state'}", f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmctldPidFile={b / 'slurmctld.pid'}", f"SlurmdPidFile={b / 'slurmd.pid'}",
            f"SlurmctldLogFile={b / 'slurmctld.log'}", f"SlurmdLogFile={b / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none", "ReturnToService=2",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={dbd_port}", f"AccountingStoragePass={sock}",
            "AccountingStoreFlags=job_comment", "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none",
            "MinJobAge=3600", "GresTypes=gpu", "AccountingStorageTRES=gres/gpu",
            # the profile asks 8 CPUs, 32 GB and a GPU per training job: declare room for several at once
            # (config_overrides: trust the config, not the hardware)
            "SlurmdParameters=config_overrides",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs=64 RealMemory=256000 Gres=gpu:{len(STAND_IN_GPUS)} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))

        self.pid_files.append(b / "slurmdbd.pid")
        self._run(_which("slurmdbd"))
        _wait(lambda: self._run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0, "slurmdbd",
              [b / "slurmdbd.log"])
        self._run("sacctmgr", "-i", "add", "cluster", "vpeft-test")
        self.pid_files += [b / "slurmctld.pid", b / "slurmd.pid"]
        self._run(_which("slurmctld"), "-f", str(self.conf), "-c")
        self._run(_which("slurmd"), "-f", str(self.conf))
        _wait(lambda: "idle" in self._run("sinfo", "-h", "-o", "%t", check=False).stdout, "an idle node",
              [b / "slurmctld.log", b / "slurmd.log"])

    def stop(self) -> None:
        for pid_file in reversed(self.pid_files):
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (FileNotFoundError, ValueError, ProcessLookupError, IndexError):
                pass


@pytest.fixture
def cluster(tmp_path_factory):
    if sys.platform != "linux":
        pytest.skip("the test SLURM cluster needs Linux")
    _install_missing()
    base = tmp_path_factory.mktemp("slurm")
    cl = Cluster(base)
    try:
        cl.start()
        yield cl
    finally:
        cl.stop()


def _cluster_config(folder: Path) -> Path:
    """The smoke config on one task; the suites ask for GPUs as real ones would (the embedded suite asks
    for none), the scratch control for 2 GPUs and 2 CPUs: a 2-process data-parallel run."""
    path = smoke_config(folder)
    config = yaml.safe_load(path.read_text())
    mini = config["suites"]["vtab-mini"]
    mini["tasks"] = {"digits": mini["tasks"]["digits"]}
    mini["job_resources"] = {"gpus": 1, "cpus": 1, "mem_mb": 4000, "runtime": 60}
    config["suites"]["vtab-mini-scratch"]["job_resources"] = {"gpus": 2, "cpus": 2, "mem_mb": 4000, "runtime": 60}
    return write_config(config, path)


def test_smoke_run_through_the_slurm_profile_with_jobs_in_sacct(cluster, tmp_path):
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    shim = tmp_path / "bin" / "srun"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexport SLURM_CONF={cluster.conf}\nexec {_which('srun')} \"$@\"\n")
    shim.chmod(0o755)
    env = dict(cluster.env, PATH=f"{shim.parent}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    cmd = [*SNAKEMAKE, "--profile", str(ROOT / "profiles/slurm"), "--directory", str(tmp_path),
           "--configfile", str(_cluster_config(tmp_path)), "--slurm-init-seconds-before-status-checks", "2",
           "--seconds-between-status-checks", "3", "--latency-wait", "5"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert (tmp_path / "reports/index.html").is_file()
    assert (tmp_path / "results/vtab-mini/lora/digits/seed-42/metrics.json").is_file()

    sacct = subprocess.run(["sacct", "-X", "--parsable2", "--noheader", "--starttime", started,
                            "--format=JobIDRaw,State,Comment%200,ReqTRES%200,AllocCPUS"],
                           capture_output=True, text=True, env=cluster.env, timeout=60)
    assert sacct.returncode == 0, sacct.stderr
    jobs = [line.split("|") for line in sacct.stdout.splitlines() if line.strip()]
    assert jobs and all(state == "COMPLETED" for _, state, _, _, _ in jobs), sacct.stdout
    train = {job[2]: job for job in jobs if "train_run" in job[2]}
    assert len(train) == 3, sacct.stdout  # linear, lora + the scratch control's linear, on one task
    ddp = [job for comment, job in train.items() if "vtab-mini-scratch" in comment]
    assert len(ddp) == 1, sacct.stdout
    _, _, _, tres, cpus = ddp[0]
    assert "gres/gpu=2" in tres and "cpu=2" in tres and cpus == "2", sacct.stdout  # COMPLETED with what it asked
    assert all("gres/gpu=1" in job[3] for job in train.values() if job is not ddp[0]), sacct.stdout
    assert any("check_task_data" in job[2] for job in jobs), sacct.stdout
    # ... and it did train as 2 ranks: the metrics say so, and both ranks wrote to the job's log
    run = "vtab-mini-scratch/linear/digits/seed-42"
    assert json.loads((tmp_path / "results" / run / "metrics.json").read_text())["train"]["processes"] == 2
    log = (tmp_path / "logs/train" / f"{run}.log").read_text()
    assert "[rank 0]" in log and "[rank 1]" in log, log[-3000:]
