"""Jobs shared by replicas (service/jobs_pg.py): two job managers on one real PostgreSQL, as two replicas."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("psycopg")

import _services  # noqa: E402

from embeddings.errors import JobNotFound  # noqa: E402
from service.jobs import JobState  # noqa: E402
from service.jobs_pg import ORPHAN_ERROR, PgJobManager  # noqa: E402


@pytest.fixture
def two(tmp_path):
    from embeddings.backends.postgres import PgStore

    dsn = _services.postgres().create_database()
    managers = [
        PgJobManager(tmp_path / f"node{i}", PgStore(dsn, pool_size=3), heartbeat_s=0.1, stale_s=1.0) for i in range(2)
    ]
    for m in managers:
        m.jobs_dir.mkdir(parents=True, exist_ok=True)
    yield (*managers, dsn)
    for m in managers:
        m.close(timeout_s=5)


def _blocking_job(release: threading.Event, started: threading.Event):
    def job(progress, should_stop, out_dir: Path):
        started.set()
        progress(0.5, "half way")
        while not release.wait(0.02):
            if should_stop():
                progress(0.5, "stopping")  # raises Cancelled
        (out_dir / "report.json").write_text(json.dumps({"ok": True}))
        (out_dir / "report.html").write_text("<html>report</html>")
        return {"report.json": out_dir / "report.json", "report.html": out_dir / "report.html"}

    return job


def _until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def test_a_job_started_on_one_replica_is_watched_and_read_on_the_other(two):
    a, b, dsn = two
    release, started = threading.Event(), threading.Event()
    job_id = a.submit("audit", {"dataset": {"collection": "c"}}, _blocking_job(release, started))
    assert started.wait(10)
    _until(lambda: b.get(job_id).state == JobState.RUNNING and b.get(job_id).progress == 0.5)
    assert job_id in [j.id for j in b.list()]
    release.set()
    states = [info.state for info in b.watch(job_id, poll_s=0.05, timeout_s=20)]
    assert states[-1] == JobState.DONE
    info = b.get(job_id)  # B never ran it: its artifacts come from the store
    assert sorted(info.artifacts) == ["report.html", "report.json"]
    path = b.artifact_path(job_id, "report.html")
    assert path.is_relative_to(b.jobs_dir) and path.read_text() == "<html>report</html>"
    assert json.loads(b.artifact_path(job_id, "report.json").read_text()) == {"ok": True}
    b.delete(job_id)
    with pytest.raises(JobNotFound):
        a.get(job_id)


def test_cancel_through_another_replica_reaches_the_owner(two):
    a, b, dsn = two
    release, started = threading.Event(), threading.Event()
    job_id = a.submit("analysis", {}, _blocking_job(release, started))
    assert started.wait(10)
    assert b.cancel(job_id).state == JobState.RUNNING  # asked; the owner stops at its next heartbeat
    _until(lambda: b.get(job_id).state == JobState.CANCELLED)
    assert a.get(job_id).state == JobState.CANCELLED


def test_a_dead_replicas_jobs_are_failed_once_by_one_survivor(two, tmp_path):
    a, b, dsn = two
    release, started = threading.Event(), threading.Event()
    job_id = a.submit("analysis", {}, _blocking_job(release, started))
    assert started.wait(10)
    for m in (a, b):  # A stops heart-beating, as a killed replica would; B sweeps only when told, below
        m._stop_beat.set()
        m._beat.join()
    from embeddings.backends.postgres import PgStore

    c = PgJobManager(tmp_path / "node2", PgStore(dsn, pool_size=2), heartbeat_s=60, stale_s=1.0)
    try:
        time.sleep(1.2)
        counts: list[int] = []
        barrier = threading.Barrier(2)

        def sweep(m: PgJobManager) -> None:
            barrier.wait()
            counts.append(m.fail_orphans())

        threads = [threading.Thread(target=sweep, args=(m,)) for m in (b, c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(counts) == [0, 1]  # exactly one replica claimed it
        info = b.get(job_id)
        assert (info.state, info.error) == (JobState.FAILED, ORPHAN_ERROR)
        release.set()  # the "dead" owner finishing late does not overwrite the verdict
        time.sleep(0.5)
        assert b.get(job_id).state == JobState.FAILED
    finally:
        c.close(timeout_s=5)


def test_replicas_importing_the_same_admin_key_together_all_start(tmp_path):
    """Every replica imports the mounted admin key at start; racing inserts must not fail any of them."""
    import secrets as _secrets

    from service.auth import PgKeyStore

    dsn = _services.postgres().create_database()
    secret = _secrets.token_urlsafe(36)
    stores = [PgKeyStore(dsn) for _ in range(4)]
    try:
        barrier = threading.Barrier(len(stores))
        ids: list[str] = []
        errors: list[BaseException] = []

        def start(store: PgKeyStore) -> None:
            barrier.wait()
            try:
                ids.append(store.import_key(secret, name="admin (provided)", role="admin", collections=["*"]))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(set(ids)) == 1 and len(ids) == len(stores)
        assert stores[0].authenticate(secret).key_id == ids[0]
        stores[1].revoke(ids[0])
        for s in stores:  # revoked through one, refused by all
            with pytest.raises(Exception, match="revoked"):
                s.authenticate(secret)
    finally:
        for s in stores:
            s.close()
