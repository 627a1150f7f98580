"""Analysis/audit jobs shared by replicas: records and artifacts in PostgreSQL (``--store``).

:class:`PgJobManager` is a :class:`~service.jobs.JobManager` whose records live in the ``jobs`` table
of the shared store, so a job started through one replica is listed, watched, cancelled and its
reports read through any other. A job runs on the replica that accepted it (its function is a
closure of that process); that replica is its ``owner`` and refreshes a heartbeat while it lives.
When a job is DONE its artifact files are stored in ``job_artifacts`` in the same transaction as
the record, and a replica asked for them writes them under its own ``<data_dir>/jobs/<id>/`` first.

A cancel through another replica sets ``cancel_requested``; the owner sees it at its next heartbeat.
Jobs whose owner stopped heart-beating (a replica that died) are marked FAILED by exactly one live
replica: the sweep claims them with ``SELECT … FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from embeddings.errors import InvalidInput, StorageError
from service.jobs import _COLUMNS, JobInfo, JobManager, JobState

__all__ = ["ORPHAN_ERROR", "PgJobManager", "open_job_manager"]

log = logging.getLogger(__name__)

ORPHAN_ERROR = "interrupted: the replica running it stopped"


class _Closer:
    """Stands in for the sqlite connection the base class closes."""

    def __init__(self, close: Any) -> None:
        self.close = close


class PgJobManager(JobManager):
    """Job records and artifacts in PostgreSQL, shared by every replica on the same store."""

    def __init__(
        self,
        data_dir: Path,
        pg: Any,
        *,
        max_workers: int = 1,
        heartbeat_s: float = 2.0,
        stale_s: float = 15.0,
    ) -> None:
        super().__init__(data_dir, _Closer(self._close_pg), max_workers=max_workers)  # type: ignore[arg-type]
        self._pg = pg
        self.owner = uuid.uuid4().hex[:16]
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self._stop_beat = threading.Event()
        self._beat = threading.Thread(target=self._beat_loop, name="jobs-heartbeat", daemon=True)
        self._beat.start()

    @classmethod
    def open(cls, data_dir: Path | str, *, store: str, max_workers: int = 1) -> PgJobManager:  # type: ignore[override]
        from embeddings.backends.postgres import PgStore

        if max_workers < 1:
            raise InvalidInput("max_workers must be >= 1")
        data_dir = Path(data_dir)
        try:
            (data_dir / "jobs").mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create {data_dir / 'jobs'}: {exc.strerror}") from exc
        return cls(data_dir, PgStore(store, pool_size=4), max_workers=max_workers)

    def _close_pg(self) -> None:
        self._stop_beat.set()
        self._beat.join()
        self._pg.close()

    # --- records ------------------------------------------------------------------------------
    def _execute(self, sql: str, params: tuple, what: str) -> list[tuple]:
        try:
            # The base class' statements use sqlite's "?" and contain no literal "?".
            return self._pg.execute(sql.replace("?", "%s"), params)
        except StorageError as exc:
            raise StorageError(f"{what}: {exc}") from exc

    def _write(self, info: JobInfo) -> None:
        artifacts = {name: self._relative(path) for name, path in info.artifacts.items()}
        now = time.time()
        try:
            with self._pg.tx() as c:
                c.execute(
                    f"INSERT INTO jobs ({_COLUMNS}, owner, heartbeat) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, progress = excluded.progress,"
                    " message = excluded.message, error = excluded.error, finished_at = excluded.finished_at,"
                    " artifacts = excluded.artifacts, started_at = excluded.started_at, heartbeat = excluded.heartbeat"
                    # a record the sweep (or a cancel) made terminal stays so
                    " WHERE jobs.state NOT IN ('DONE', 'FAILED', 'CANCELLED')",
                    (
                        info.id, info.kind, info.state, info.progress, info.message, info.error, info.created_at,
                        info.finished_at, json.dumps(artifacts), json.dumps(info.params, default=str),
                        info.started_at, self.owner, now,
                    ),
                )  # fmt: skip
                if info.state == JobState.DONE:
                    for name, path in info.artifacts.items():
                        c.execute(
                            "INSERT INTO job_artifacts(job_id, name, path, data) VALUES (%s, %s, %s, %s)"
                            " ON CONFLICT DO NOTHING",
                            (info.id, name, artifacts[name], Path(path).read_bytes()),
                        )
        except OSError as exc:
            raise StorageError(f"cannot store the artifacts of job {info.id}: {exc}") from exc
        except StorageError as exc:
            raise StorageError(f"cannot record job {info.id}: {exc}") from exc

    def get(self, job_id: str) -> JobInfo:
        """The job's record (from any replica); a DONE job's artifacts are made readable here first."""
        info = super().get(job_id)
        if info.state == JobState.DONE:
            self._materialise(info)
        return info

    def _materialise(self, info: JobInfo) -> None:
        missing = {name: Path(p) for name, p in info.artifacts.items() if not Path(p).exists()}
        if not missing:
            return
        rows = self._execute(
            "SELECT name, data FROM job_artifacts WHERE job_id = %s AND name = ANY(%s)",
            (info.id, list(missing)),
            f"cannot read the artifacts of job {info.id}",
        )
        for name, data in rows:
            path = missing[name]
            if self.jobs_dir.resolve() not in path.resolve().parents:
                raise StorageError(f"artifact path of job {info.id} leaves the job directory")  # never stored text as a path
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(bytes(data))
            os.replace(tmp, path)

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel here when this replica runs it, else ask its owner (it stops at its next heartbeat)."""
        with self._cv:
            live = self._live.get(job_id)
        if live is not None:
            return super().cancel(job_id)
        info = self._read(job_id)
        if not info.terminal:
            self._execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = %s", (job_id,), f"cannot cancel job {job_id}")
        return info

    # --- heartbeats, remote cancels, orphans ------------------------------------------------------
    def _beat_loop(self) -> None:
        while not self._stop_beat.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the store may be away for a while; keep beating
                log.warning("job heartbeat failed", exc_info=True)

    def beat(self) -> int:
        """Refresh this replica's heartbeat and its jobs' progress, pass on remote cancels, fail orphans;
        returns how many orphans it failed."""
        with self._cv:
            running = [live.info for live in self._live.values() if not live.info.terminal]
        for info in running:  # progress between the base class' persists, for watchers on other replicas
            self._write(info)
        now = time.time()
        cancels = self._execute(
            "UPDATE jobs SET heartbeat = %s WHERE owner = %s AND state IN ('QUEUED', 'RUNNING')"
            " RETURNING id, cancel_requested",
            (now, self.owner),
            "cannot refresh job heartbeats",
        )
        with self._cv:
            lives = [self._live.get(job_id) for job_id, wanted in cancels if wanted]
        for live in lives:
            if live is not None:
                self.cancel(live.info.id)
        return self.fail_orphans()

    def fail_orphans(self) -> int:
        """Mark FAILED the open jobs whose owner's heartbeat is older than ``stale_s``; one replica does each."""
        with self._pg.tx() as c:
            rows = c.execute(
                "SELECT id FROM jobs WHERE state IN ('QUEUED', 'RUNNING') AND heartbeat < %s FOR UPDATE SKIP LOCKED",
                (time.time() - self.stale_s,),
            ).fetchall()
            if rows:
                c.execute(
                    "UPDATE jobs SET state = 'FAILED', error = %s, finished_at = %s WHERE id = ANY(%s)",
                    (ORPHAN_ERROR, time.time(), [r[0] for r in rows]),
                )
        if rows:
            log.warning("%d job(s) whose replica stopped marked FAILED", len(rows))
        return len(rows)

    def delete(self, job_id: str) -> None:
        info = self.get(job_id)
        if not info.terminal:
            raise InvalidInput(f"job {job_id} is {info.state}; cancel it first")
        super().delete(job_id)  # the artifacts go with the record (ON DELETE CASCADE)


def open_job_manager(config: Any) -> JobManager:
    """Jobs in PostgreSQL when ``config.store`` is set (shared by replicas), else ``<data_dir>/jobs.sqlite3``."""
    if getattr(config, "store", None):
        return PgJobManager.open(config.data_dir, store=config.store)
    return JobManager.open(config.data_dir)
