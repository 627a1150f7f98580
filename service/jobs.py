"""Background jobs (latent analysis, audits) with progress, cancellation and durable records.

A job is a function ``fn(progress, should_stop, out_dir) -> {name: path}`` run on a small
thread pool. Its record lives in ``<data_dir>/jobs.sqlite3`` and its artifacts under
``<data_dir>/jobs/<id>/``. States::

    QUEUED ─▶ RUNNING ─▶ DONE
       │         ├────▶ FAILED      (the function raised; or the server stopped under it)
       └─────────┴────▶ CANCELLED   (cancel(): a queued job never starts; a running one stops
                                     at its next progress()/should_stop() check)

A job left QUEUED or RUNNING by a process that died is marked FAILED ("interrupted by server
restart") when the next process opens the manager, so no job is ever silently lost.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from embeddings.datadir import private_file
from embeddings.errors import Cancelled, InvalidInput, JobNotFound, LatentfaceError, StorageError, Unavailable

__all__ = ["JobFn", "JobInfo", "JobManager", "JobState", "Progress", "ShouldStop"]

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]
JobFn = Callable[[Progress, ShouldStop, Path], Mapping[str, Path | str]]

JOBS_DB = "jobs.sqlite3"
RESTART_ERROR = "interrupted by server restart"
SHUTDOWN_ERROR = "interrupted by server shutdown"
# Progress is kept in memory on every call; the record on disk is refreshed at most this often.
_PERSIST_EVERY_S = 0.5


class JobState:
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    TERMINAL = frozenset({DONE, FAILED, CANCELLED})
    ALL = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)


@dataclass(frozen=True)
class JobInfo:
    """A job's record. ``artifacts`` maps names to absolute file paths (strings)."""

    id: str
    kind: str
    state: str
    progress: float
    message: str
    error: str | None
    created_at: float
    finished_at: float | None
    artifacts: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in JobState.TERMINAL


@dataclass(eq=False)
class _Live:
    """In-memory state of a job this process runs."""

    info: JobInfo
    stop: threading.Event = field(default_factory=threading.Event)
    version: int = 0
    persisted_at: float = 0.0


_COLUMNS = "id, kind, state, progress, message, error, created_at, finished_at, artifacts, params, started_at"


class JobManager:
    """Runs, records and reports jobs. Thread-safe; one per data directory and process."""

    def __init__(self, data_dir: Path, conn: sqlite3.Connection, *, max_workers: int) -> None:
        self.data_dir = data_dir
        self.jobs_dir = data_dir / "jobs"
        self._conn = conn
        self._db_lock = threading.Lock()
        self._cv = threading.Condition()
        self._live: dict[str, _Live] = {}
        self._closing = False
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="latentface-job")

    @classmethod
    def open(cls, data_dir: Path | str, *, max_workers: int = 1) -> JobManager:
        """Open (or create) the job records; jobs a dead process left unfinished become FAILED."""
        if max_workers < 1:
            raise InvalidInput("max_workers must be >= 1")
        data_dir = Path(data_dir)
        path = data_dir / JOBS_DB
        try:
            (data_dir / "jobs").mkdir(parents=True, exist_ok=True, mode=0o700)
            private_file(path)  # job parameters name collections and files: owner only
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                """CREATE TABLE IF NOT EXISTS jobs (
                    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL,
                    progress REAL NOT NULL, message TEXT NOT NULL, error TEXT,
                    created_at REAL NOT NULL, finished_at REAL, artifacts TEXT NOT NULL,
                    params TEXT NOT NULL, started_at REAL)"""
            )
            n = conn.execute(
                "UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE state IN (?, ?)",
                (JobState.FAILED, RESTART_ERROR, time.time(), JobState.QUEUED, JobState.RUNNING),
            ).rowcount
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the job records {path}: {exc}") from exc
        if n:
            log.warning("%d job(s) left unfinished by a previous server process marked FAILED", n)
        return cls(data_dir, conn, max_workers=max_workers)

    # --- records -----------------------------------------------------------------------------
    def _write(self, info: JobInfo) -> None:
        artifacts = {name: self._relative(path) for name, path in info.artifacts.items()}
        self._execute(
            f"INSERT OR REPLACE INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.id, info.kind, info.state, info.progress, info.message, info.error, info.created_at,
                info.finished_at, json.dumps(artifacts), json.dumps(info.params, default=str), info.started_at,
            ),
            f"cannot record job {info.id}",
        )  # fmt: skip

    def _execute(self, sql: str, params: tuple, what: str) -> list[tuple]:
        """Run one statement under the lock; sqlite errors become StorageError(``what: ...``)."""
        try:
            with self._db_lock:
                return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"{what}: {exc}") from exc

    def _relative(self, path: str) -> str:
        # Stored relative to the job directory so a moved data directory keeps working.
        p = Path(path)
        try:
            return str(p.relative_to(self.jobs_dir))
        except ValueError:
            return str(p)

    def _row_to_info(self, row: tuple) -> JobInfo:
        artifacts = {k: str(self.jobs_dir / v) for k, v in json.loads(row[8]).items()}
        return JobInfo(
            id=row[0], kind=row[1], state=row[2], progress=row[3], message=row[4], error=row[5],
            created_at=row[6], finished_at=row[7], artifacts=artifacts, params=json.loads(row[9]), started_at=row[10],
        )  # fmt: skip

    def _read(self, job_id: str) -> JobInfo:
        rows = self._execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,), f"cannot read job {job_id}")
        if not rows:
            raise JobNotFound(f"no job with id {job_id!r}")
        return self._row_to_info(rows[0])

    def _update(self, live: _Live, *, persist: bool = True, **changes: Any) -> JobInfo:
        with self._cv:
            live.info = replace(live.info, **changes)
            live.version += 1
            info = live.info
            now = time.monotonic()
            persist = persist or now - live.persisted_at >= _PERSIST_EVERY_S
            if persist:
                live.persisted_at = now
            self._cv.notify_all()
        if persist:
            self._write(info)
        return info

    # --- public API ---------------------------------------------------------------------------
    def submit(self, kind: str, params: Mapping[str, Any], fn: JobFn) -> str:
        """Queue ``fn`` as a job of ``kind`` (``params`` are recorded for the user); returns its id."""
        if self._closing:
            raise Unavailable("the server is shutting down; no new jobs are taken")
        job_id = uuid.uuid4().hex
        info = JobInfo(
            id=job_id, kind=kind, state=JobState.QUEUED, progress=0.0, message="queued", error=None,
            created_at=time.time(), finished_at=None, params=dict(params),
        )  # fmt: skip
        self._write(info)
        live = _Live(info)
        with self._cv:
            # Registered under the lock close() takes, so a closing manager either refuses the job
            # here or sees it in its list of live jobs and records it FAILED.
            closing = self._closing
            if not closing:
                self._live[job_id] = live
        try:
            if closing:
                raise RuntimeError("closing")
            self._pool.submit(self._run, live, fn)
        except RuntimeError as exc:  # close() shut the pool down between the checks and here
            self._finish(live, JobState.FAILED, error=SHUTDOWN_ERROR)
            raise Unavailable("the server is shutting down; no new jobs are taken") from exc
        return job_id

    def get(self, job_id: str) -> JobInfo:
        """The job's current record; raises JobNotFound."""
        with self._cv:
            live = self._live.get(job_id)
            if live is not None:
                return live.info
        return self._read(job_id)

    def list(self, *, limit: int = 100) -> list[JobInfo]:
        """The newest ``limit`` jobs, newest first."""
        rows = self._execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,), "cannot list jobs")
        infos = [self._row_to_info(r) for r in rows]
        with self._cv:
            return [self._live[i.id].info if i.id in self._live else i for i in infos]

    def watch(
        self,
        job_id: str,
        *,
        poll_s: float = 0.2,
        timeout_s: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[JobInfo]:
        """Yield the job's record now and after every change, ending after a terminal state.

        Wakes on each update, and at least every ``poll_s`` to check ``stop()`` (e.g. "the
        client went away"); ends early when ``stop()`` is true or ``timeout_s`` has passed.
        """
        info, version = self._snapshot(job_id)
        yield info
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while not info.terminal:
            with self._cv:
                live = self._live.get(job_id)
                if live is not None and live.version == version:
                    self._cv.wait(poll_s)
            if live is None:
                time.sleep(poll_s)  # recorded by another process: poll the store
            if (end is not None and time.monotonic() >= end) or (stop is not None and stop()):
                return
            new, version = self._snapshot(job_id)
            if new != info:
                info = new
                yield info

    def _snapshot(self, job_id: str) -> tuple[JobInfo, int | None]:
        with self._cv:
            live = self._live.get(job_id)
            if live is not None:
                return live.info, live.version
        return self._read(job_id), None

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobInfo:
        """Block until the job is terminal (or ``timeout_s`` passes); returns its record."""
        info = self.get(job_id)
        for info in self.watch(job_id, timeout_s=timeout_s):  # noqa: B007 - we want the last one
            pass
        return info

    def cancel(self, job_id: str) -> JobInfo:
        """Ask a job to stop. Queued: CANCELLED at once. Running: CANCELLED when it next checks. Terminal: unchanged."""
        with self._cv:
            live = self._live.get(job_id)
        if live is None:
            return self._read(job_id)  # not running here: already terminal (or JobNotFound)
        live.stop.set()
        with self._cv:
            state = live.info.state
        if state == JobState.QUEUED:
            return self._finish(live, JobState.CANCELLED, message="cancelled before it started")
        return self.get(job_id)

    def artifact_path(self, job_id: str, name: str) -> Path:
        """The file of one artifact of a job; raises NotFound-family errors for unknown names."""
        info = self.get(job_id)
        if name not in info.artifacts:
            known = ", ".join(sorted(info.artifacts)) or "none"
            raise JobNotFound(f"job {job_id} has no artifact {name!r} (artifacts: {known})")
        return Path(info.artifacts[name])

    def delete(self, job_id: str) -> None:
        """Forget a terminal job and remove its artifacts."""
        info = self.get(job_id)
        if not info.terminal:
            raise InvalidInput(f"job {job_id} is {info.state}; cancel it first")
        self._execute("DELETE FROM jobs WHERE id = ?", (job_id,), f"cannot delete job {job_id}")
        with self._cv:
            self._live.pop(job_id, None)
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    def close(self, *, timeout_s: float = 10.0) -> None:
        """Stop running jobs (recorded FAILED, "interrupted by server shutdown") and the workers."""
        with self._cv:
            self._closing = True
            lives = list(self._live.values())
        for live in lives:
            live.stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout_s
        for live in lives:
            with self._cv:
                while not live.info.terminal and time.monotonic() < deadline:
                    self._cv.wait(max(0.0, min(0.1, deadline - time.monotonic())))
                pending = not live.info.terminal
            if pending:  # never started (future cancelled) or did not stop in time
                self._finish(live, JobState.FAILED, error=SHUTDOWN_ERROR)
        with self._db_lock:
            self._conn.close()

    def __enter__(self) -> JobManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running ------------------------------------------------------------------------------
    def _finish(self, live: _Live, state: str, *, message: str | None = None, error: str | None = None, **more: Any) -> JobInfo:
        with self._cv:
            if live.info.terminal:  # first terminal state wins (cancel vs. finish races)
                return live.info
            changes = {"state": state, "error": error, "finished_at": time.time(), **more}
            if message is not None:
                changes["message"] = message
            info = self._update(live, **changes)
            # Terminal records are final on disk; watchers and get() read them from there.
            self._live.pop(info.id, None)
            return info

    def _finish_stopped(self, live: _Live, cancelled_message: str) -> None:
        """A job that saw its stop flag: FAILED when the manager is closing, else CANCELLED."""
        if self._closing:
            self._finish(live, JobState.FAILED, error=SHUTDOWN_ERROR, message="stopped")
        else:
            self._finish(live, JobState.CANCELLED, message=cancelled_message)

    def _run(self, live: _Live, fn: JobFn) -> None:
        with self._cv:
            if live.info.terminal:
                return  # cancelled while queued
        out_dir = self.jobs_dir / live.info.id
        if live.stop.is_set():
            self._finish_stopped(live, "cancelled before it started")
            return
        self._update(live, state=JobState.RUNNING, started_at=time.time(), message="running")

        def should_stop() -> bool:
            return live.stop.is_set()

        def progress(fraction: float, message: str = "") -> None:
            # Checking here makes every job cancellable, even one that never calls should_stop.
            if live.stop.is_set():
                raise Cancelled("job cancelled")
            fraction = min(1.0, max(0.0, float(fraction)))
            self._update(live, persist=False, progress=fraction, message=str(message))

        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            artifacts = fn(progress, should_stop, out_dir)
            files = {str(k): str(Path(v).resolve()) for k, v in dict(artifacts or {}).items()}
        except Cancelled:
            self._finish_stopped(live, "cancelled")
        except LatentfaceError as exc:
            self._finish(live, JobState.FAILED, error=str(exc) or type(exc).__name__, message="failed")
        except Exception as exc:  # noqa: BLE001 - recorded on the job; details only in the server log
            log.exception("job %s (%s) failed", live.info.id, live.info.kind)
            self._finish(live, JobState.FAILED, error=f"internal error ({type(exc).__name__}); see the server log", message="failed")
        else:
            missing = [name for name, path in files.items() if not Path(path).exists()]
            if missing:
                self._finish(live, JobState.FAILED, error=f"artifacts not written: {', '.join(missing)}", message="failed")
            else:
                self._finish(live, JobState.DONE, message="done", progress=1.0, artifacts=files)
