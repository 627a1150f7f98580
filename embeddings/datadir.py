"""The data directory: one owner at a time, readable by its owner only.

A gallery holds an exclusive ``flock`` on ``<data_dir>/latentface.lock`` for as long as it is
open (a server: its whole life). A second process (a local-mode CLI next to a running server, a
second server) would otherwise snapshot an index that lacks the first one's writes and truncate
the change log past them; instead it gets :class:`DataDirLocked` naming the holder's pid and
command. The kernel drops the lock when the holder dies, even by SIGKILL, so a crash never leaves
a stale lock behind.

Faces are biometric data: the directory is made ``0700`` and the files the gallery creates
``0600``, whatever the umask.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path

from embeddings.errors import DataDirLocked, StorageError

__all__ = ["DataDirLock", "LOCK_FILE", "private_dir", "private_file"]

log = logging.getLogger(__name__)

LOCK_FILE = "latentface.lock"
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make it ``0700``.

    A directory we may not chmod (a volume's mount point owned by root, shared through a group as
    Kubernetes' ``fsGroup`` does) is used as it is, with a warning: the files in it are still 0600.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise StorageError(f"cannot create data dir {path}: {exc.strerror or exc}") from exc
    if mode != DIR_MODE:
        try:
            os.chmod(path, DIR_MODE)
        except PermissionError:
            log.warning("cannot make %s mode 0700 (not its owner; it is %o); its files are 0600", path, mode)
        except OSError as exc:
            raise StorageError(f"cannot set the mode of {path}: {exc.strerror or exc}") from exc


def private_file(path: Path) -> None:
    """Create ``path`` if missing, with mode ``0600``; tighten it if it exists.

    SQLite creates its ``-wal`` and ``-shm`` files with the mode of the database file, so making
    the database ``0600`` before opening it covers those too.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
        try:
            mode = os.fstat(fd).st_mode & 0o777
            if mode != FILE_MODE:
                try:
                    os.fchmod(fd, FILE_MODE)
                except PermissionError:
                    log.warning("cannot make %s mode 0600 (not its owner; it is %o)", path, mode)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc


def _command_line() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
        text = " ".join(p.decode(errors="replace") for p in parts if p)
    except OSError:
        text = " ".join(sys.argv)
    return text[:200]


class DataDirLock:
    """An exclusive lock on a data directory, held until :meth:`release` (or the process ends)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, FILE_MODE)
        except OSError as exc:
            raise StorageError(f"cannot open the lock file {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirLocked(
                f"data directory {Path(data_dir)} is in use by {holder}; stop it, or talk to it "
                "(the CLI's --server HOST:PORT) instead of opening the directory"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        # Who holds it, for the error the next process gets (informational: the lock is the flock).
        info = f"pid {os.getpid()} ({_command_line()})\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except OSError:
            pass  # the lock holds without the note
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"
