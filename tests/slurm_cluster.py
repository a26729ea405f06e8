"""A real single-node SLURM cluster for tests, run from one scratch folder.

It writes a minimal ``slurm.conf`` (one node with this machine's cores and memory, partitions
``cpu`` and ``gpu``), starts munged, MariaDB and slurmdbd (job accounting, so ``sacct`` and
``sacctmgr`` answer as on a production cluster), slurmctld and slurmd, waits until ``sinfo``
shows the node idle, and stops every daemon it started by its PID afterwards. Nothing outside the
folder is written: each daemon gets its own config, sockets, free TCP ports, state and logs, and
clients find the cluster through ``SLURM_CONF`` (:meth:`SlurmCluster.env`).

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env())

Accounting: Debian's SLURM 22.05 ``sacct`` reads only slurmdbd. With
``AccountingStorageType=accounting_storage/none`` it refuses ("Slurm accounting storage is
disabled"); ``JobCompType=jobcomp/filetxt`` plus ``sacct --completion`` reads a job completion log,
but without steps, requested TRES or comments, and Snakemake's SLURM executor queries plain
``sacct``. So the cluster runs slurmdbd on a private MariaDB (``--skip-grant-tables``, bound to
127.0.0.1, data in the scratch folder).

GPUs: the node declares ``Gres=gpu:<gpus>`` with a count and no device files, so a job that asks
for GPUs (``--gpus``, ``--gres``) is scheduled and accounted (``gres/gpu`` in ReqTRES and AllocTRES)
on a machine without one; what runs in it sees no CUDA device.

Needs root (slurmd starts jobs as their user) and the Debian packages slurm-wlm, slurmdbd, munge
and mariadb-server (``make slurm`` installs them). By hand:

    python -m tests.slurm_cluster /tmp/slurm     # starts it, prints SLURM_CONF, Ctrl-C stops it
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLUSTER = "gmnrtest"
NODE = "gmnr-node1"
ACCOUNTS = ("gmnr-test", "gmnr-project")  # root's default account first
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "srun", "squeue", "scancel", "sacct", "sacctmgr", "scontrol")
PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here: a package is missing or we are not root. The message says how to fix it."""


def missing_requirements() -> str | None:
    """Why a cluster cannot start on this machine, or None when it can."""
    missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"SLURM test cluster: {', '.join(missing)} not installed; as root run `make slurm` "
                f"(apt-get install -y {PACKAGES})")
    if os.geteuid() != 0:
        return "SLURM test cluster: slurmd must run as root (it starts jobs as their user); run the tests as root"
    return None


def _which(name: str) -> str:
    found = shutil.which(name) or str(Path("/usr/sbin", name))
    return found


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def node_hardware() -> dict[str, int]:
    """What slurmd itself detects here (``slurmd -C``): CPUs, sockets, cores, threads, memory."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = out.splitlines()[0]
    values = dict(re.findall(r"(\w+)=(\S+)", line))
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {k: int(values[k]) for k in keys}


class SlurmCluster:
    """munged + MariaDB + slurmdbd + slurmctld + slurmd under ``root``; a context manager.

    ``gpus``: the GPU count the node declares (no device behind it). ``min_memory_mb``: when the
    machine has less memory than this, the node still declares this much (``SlurmdParameters=
    config_overrides``), so a job asking for it can be scheduled on a small CI machine."""

    def __init__(self, root: Path, gpus: int = 2, min_memory_mb: int = 0):
        self.root = Path(root).resolve()
        self.gpus = gpus
        self.min_memory_mb = min_memory_mb
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.hardware: dict[str, int] = {}
        self.memory_mb = 0
        self.linked_conf: Path | None = None  # /etc/slurm/slurm.conf, where no mount namespace is allowed

    # -- paths and environment -------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def env(self, base: dict | None = None) -> dict:
        """An environment whose SLURM clients (sbatch, sacct, ...) talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
            del env[key]  # a cluster we run inside of must not leak into this one
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        done = subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}\n{self.logs_tail()}")
        return done

    # -- start -----------------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> None:
        reason = missing_requirements()
        if reason:
            raise SlurmUnavailable(reason)
        # the daemons run in sessions of their own: stop them also when the caller exits without
        # stop() (an exception past a `with`, sys.exit, Ctrl-C); only SIGKILL leaves them behind
        atexit.register(self.stop)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        r = self.root
        for sub in ("etc", "log", "run", "munge", "state", "spool", "db"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)
        ctld_port, slurmd_port, dbd_port, db_port = _free_ports(4)
        self.hardware = node_hardware()
        machine_mb = int(self.hardware["RealMemory"] * 0.95)  # leave slack: slurmd drains a node short of its config
        self.memory_mb = max(machine_mb, self.min_memory_mb)

        # munge: our own key and socket
        key = r / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        msock = r / "munge" / "munge.socket"
        self._spawn("munged", [_which("munged"), "-F", "--force", f"--socket={msock}", f"--key-file={key}",
                               f"--pid-file={r / 'run/munged.pid'}", f"--log-file={r / 'log/munged.log'}",
                               f"--seed-file={r / 'munge/munged.seed'}", "--num-threads=2"])
        self._wait(lambda: msock.exists(), "munged's socket", timeout)

        # MariaDB for slurmdbd: private data folder, TCP on 127.0.0.1 only, no grant tables
        data = r / "db" / "data"
        if not (data / "mysql").is_dir():
            done = subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
                                   "--auth-root-authentication-method=normal", "--skip-test-db"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode:
                raise RuntimeError(f"mariadb-install-db failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=root",
                                 f"--socket={r / 'run/mariadb.sock'}", f"--port={db_port}", "--bind-address=127.0.0.1",
                                 "--skip-grant-tables", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                                 "--innodb-log-file-size=16M", "--innodb-flush-log-at-trx-commit=0",
                                 f"--pid-file={r / 'run/mariadbd.pid'}", f"--log-error={r / 'log/mariadbd.log'}"])
        self._wait(lambda: _port_open(db_port), "MariaDB", timeout)

        auth = f"AuthType=auth/munge\nAuthInfo=socket={msock}\n"
        dbd_conf = r / "etc" / "slurmdbd.conf"
        dbd_conf.write_text(
            f"{auth}DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\nSlurmUser=root\n"
            f"PidFile={r / 'run/slurmdbd.pid'}\nLogFile={r / 'log/slurmdbd.log'}\nDebugLevel=info\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={db_port}\n"
            f"StorageUser=root\nStorageLoc=slurm_acct_db\n")
        dbd_conf.chmod(0o600)
        self._write_slurm_conf(auth, ctld_port, slurmd_port, dbd_port)

        # slurmdbd finds slurmdbd.conf beside $SLURM_CONF
        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait(lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0,
                   "slurmdbd", timeout)
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        for account in ACCOUNTS:
            self.run("sacctmgr", "-i", "add", "account", account, "Description=gmnr tests", "Organization=gmnr")
        self.run("sacctmgr", "-i", "add", "user", "root", f"Account={','.join(ACCOUNTS)}",
                 f"DefaultAccount={ACCOUNTS[0]}")

        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0, "slurmctld", timeout)
        slurmd = [_which("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)]
        self._spawn("slurmd", self._with_default_conf(slurmd))
        self._wait(self._node_idle, f"node {NODE} idle in sinfo", timeout)

    def _write_slurm_conf(self, auth: str, ctld_port: int, slurmd_port: int, dbd_port: int) -> None:
        r, hw = self.root, self.hardware
        host = socket.gethostname().split(".")[0]
        overrides = "SlurmdParameters=config_overrides\n" if self.memory_mb > int(hw["RealMemory"] * 0.95) else ""
        # GPUs without hardware: one empty file per declared GPU stands in for /dev/nvidiaN
        gres = ""
        if self.gpus:
            (r / "dev").mkdir(exist_ok=True)
            for i in range(self.gpus):
                (r / "dev" / f"gpu{i}").touch()
            gres = f"NodeName={NODE} Name=gpu File={r / 'dev'}/gpu[0-{self.gpus - 1}]\n"
        (r / "etc" / "gres.conf").write_text(gres)
        (r / "etc" / "plugstack.conf").write_text("")
        self.conf.write_text(f"""# Written by tests/slurm_cluster.py: one node, this machine's cores and memory.
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
{auth}CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'run/slurmctld.pid'}
SlurmdPidFile={r / 'run/slurmd.pid'}
SlurmctldLogFile={r / 'log/slurmctld.log'}
SlurmdLogFile={r / 'log/slurmd.log'}
PlugStackConfig={r / 'etc/plugstack.conf'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
{overrides}JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={r / 'munge/munge.socket'}
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={hw['CPUs']} Boards={hw['Boards']} SocketsPerBoard={hw['SocketsPerBoard']} CoresPerSocket={hw['CoresPerSocket']} ThreadsPerCore={hw['ThreadsPerCore']} RealMemory={self.memory_mb}{f' Gres=gpu:{self.gpus}' if self.gpus else ''} State=UNKNOWN
PartitionName=cpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={NODE} MaxTime=INFINITE State=UP
""")

    def _with_default_conf(self, cmd: list[str]) -> list[str]:
        """``cmd`` where SLURM's default config folder /etc/slurm is this cluster's ``etc/``.

        Jobs inherit SLURM_CONF, but snakemake-executor-plugin-slurm-jobstep removes every
        SLURM_* variable but the job's identity before its nested ``srun``, which then reads
        /etc/slurm/slurm.conf, as on a real cluster. So slurmd (and with it every job step) runs
        in its own mount namespace with ``etc/`` bound over /etc/slurm; the machine's /etc/slurm
        is not touched. Where mount namespaces are not allowed (a container without
        CAP_SYS_ADMIN), /etc/slurm/slurm.conf is linked to this cluster's, only if there is none,
        and removed by :meth:`stop`."""
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
        if probe.returncode == 0:
            script = 'mount --bind "$1" /etc/slurm && shift && exec "$@"'
            return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                    str(self.conf.parent), *cmd]
        system = Path("/etc/slurm/slurm.conf")
        if system.exists() or system.is_symlink():
            raise SlurmUnavailable(f"SLURM test cluster: no mount namespace here ({probe.stderr.decode().strip()}) "
                                   f"and {system} exists: jobs' srun would read that cluster's config")
        system.parent.mkdir(parents=True, exist_ok=True)
        system.symlink_to(self.conf)
        self.linked_conf = system
        return cmd

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}\n"
                                       f"{self.logs_tail()}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"no {what} after {timeout:.0f} s\n{self.logs_tail()}")

    def _node_idle(self) -> bool:
        done = self.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%T", check=False)
        return done.returncode == 0 and done.stdout.split() != [] and all(s == "idle" for s in done.stdout.split())

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel what is still queued or running, then stop the daemons (newest first) by PID."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self.procs):
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                deadline = time.time() + 60
                while time.time() < deadline and self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                    time.sleep(0.5)
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
        self.procs.clear()
        atexit.unregister(self.stop)
        if self.linked_conf is not None:
            self.linked_conf.unlink(missing_ok=True)
            self.linked_conf = None

    # -- diagnostics -----------------------------------------------------------------------------
    def logs_tail(self, chars: int = 1500) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*")) if (self.root / "log").is_dir() else []:
            text = log.read_text(errors="replace")[-chars:]
            if text.strip():
                parts.append(f"--- {log.name}\n{text}")
        return "\n".join(parts)

    def sacct(self, *fields: str, extra: tuple[str, ...] = ()) -> list[dict[str, str]]:
        """Every job (not its steps) accounting knows of, as dicts of ``fields``."""
        done = self.run("sacct", "-a", "-X", "-P", "-n", "--starttime", "2000-01-01", "-o", ",".join(fields), *extra)
        return [dict(zip(fields, line.split("|"))) for line in done.stdout.splitlines() if line.strip()]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the daemons as Ctrl-C does
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gmnr-slurm")
    with SlurmCluster(root) as cluster:
        print(f"SLURM cluster '{CLUSTER}' up (node {NODE}, partitions cpu and gpu, accounts {', '.join(ACCOUNTS)}).")
        print(f"export SLURM_CONF={cluster.conf}")
        print(cluster.run("sinfo").stdout, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("stopping")
