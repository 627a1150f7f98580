"""Real PostgreSQL and Milvus Lite servers for the scale-out tests (started once per test process, by
:mod:`embeddings.bench.services`), and ``latentface serve`` subprocesses to run on them."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from embeddings.bench.services import free_port, milvus, postgres

__all__ = ["ServerProcess", "free_port", "milvus", "postgres", "start_server", "wait_listening"]


LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")


@dataclass
class ServerProcess:
    """A ``latentface serve`` subprocess, its address once it listens, and its log lines."""

    process: subprocess.Popen
    lines: list[str]
    address: str = ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_server(root: Path, data_dir: Path, *args: str) -> ServerProcess:
    """Start ``latentface serve --port 0`` with random weights (offline) and ``args``; returns at once."""
    env = {**os.environ, "LATENTFACE_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("LATENTFACE_CONFIG", None)
    cmd = [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data_dir), "--port", "0",
           "--weights", "random", *args]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = ServerProcess(proc, [])
    found: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)
            if m := LISTENING.search(line):
                found.put(f"{m.group(1)}:{m.group(2)}")

    server._pump = threading.Thread(target=pump, daemon=True)  # type: ignore[attr-defined]
    server._pump.start()  # type: ignore[attr-defined]
    server._found = found  # type: ignore[attr-defined]
    return server


def wait_listening(server: ServerProcess, timeout: float = 180.0) -> str:
    try:
        server.address = server._found.get(timeout=timeout)  # type: ignore[attr-defined]
    except queue.Empty:
        server.stop()
        raise AssertionError("server did not report its address:\n" + "".join(server.lines[-50:])) from None
    return server.address
