"""Throwaway local PostgreSQL and Milvus Lite servers, for the scale-out benchmark and tests.

PostgreSQL: ``initdb`` into a temp dir and ``pg_ctl start`` on a free 127.0.0.1 port, as the
``postgres`` system user when run as root (PostgreSQL refuses root), installing Debian's
``postgresql`` when the binaries are missing and we are root. Milvus: ``milvus-lite server`` on a
free port, which serves the Milvus protocol to any number of processes. Each is started once per
process, on first use, and stopped at exit. Not for production: trust auth, temp dirs.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MilvusServer", "PgCluster", "free_port", "milvus", "postgres"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def _pg_bin() -> Path:
    found = sorted(glob.glob(_PG_BIN_GLOB + "/initdb"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, capture_output=True, timeout=600)
        found = sorted(glob.glob(_PG_BIN_GLOB + "/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return Path(found[-1]).parent


@dataclass
class PgCluster:
    root: Path
    port: int
    _run_as: list[str]
    _bin: Path

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        subprocess.run(
            [*self._run_as, str(self._bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class MilvusServer:
    root: Path
    port: int
    process: subprocess.Popen

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


_pg: PgCluster | None = None
_milvus: MilvusServer | None = None


def postgres() -> PgCluster:
    """The process' PostgreSQL cluster (started on first use)."""
    global _pg
    if _pg is not None:
        return _pg
    pg_bin = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="lf-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
            user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(pg_bin / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync", "--locale=C"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    # fsync stays on: the durability tests SIGKILL servers, not PostgreSQL, but nothing here cheats.
    subprocess.run(
        [*run_as, str(pg_bin / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60",
         "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    _pg = PgCluster(root, port, run_as, pg_bin)
    atexit.register(_pg.stop)
    return _pg


def milvus() -> MilvusServer:
    """The process' ``milvus-lite server`` (started on first use; waits until it accepts clients)."""
    global _milvus
    if _milvus is not None:
        return _milvus
    root = Path(tempfile.mkdtemp(prefix="lf-milvus-"))
    port = free_port()
    exe = Path(sys.executable).parent / "milvus-lite"
    if not exe.exists():
        exe = Path(shutil.which("milvus-lite") or exe)
    log = open(root / "log", "wb")  # noqa: SIM115 - the server writes it for its whole life
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(root / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus-lite server exited: {(root / 'log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("milvus-lite server did not start within 60 s") from None
            time.sleep(0.1)
    _milvus = MilvusServer(root, port, proc)
    atexit.register(_milvus.stop)
    return _milvus

