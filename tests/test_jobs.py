"""JobManager: progress and watching, cancellation, artifacts, and jobs left behind by a killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from embeddings.errors import InvalidDataset, JobNotFound
from service.jobs import RESTART_ERROR, JobManager, JobState

ROOT = Path(__file__).resolve().parents[1]


def steps_job(n: int, gate: threading.Event | None = None):
    """A job reporting progress i/n at each step, writing one artifact at the end."""

    def fn(progress, should_stop, out_dir: Path):
        for i in range(n):
            if gate is not None:
                gate.wait(5)
            progress((i + 1) / n, f"step {i + 1}/{n}")
        (out_dir / "result.txt").write_text("ok\n")
        (out_dir / "summary.json").write_text(f'{{"n": {n}}}\n')
        return {"result.txt": out_dir / "result.txt", "summary.json": out_dir / "summary.json"}

    return fn


@pytest.fixture
def manager(tmp_path):
    m = JobManager.open(tmp_path)
    yield m
    m.close(timeout_s=2)


def test_job_runs_to_done_with_artifacts_and_recorded_params(manager, tmp_path):
    job_id = manager.submit("analysis", {"method": "histogram", "seed": 3}, steps_job(4))
    info = manager.wait(job_id, timeout_s=10)
    assert info.state == JobState.DONE and info.progress == 1.0 and info.error is None
    assert set(info.artifacts) == {"result.txt", "summary.json"}
    assert Path(info.artifacts["result.txt"]) == tmp_path / "jobs" / job_id / "result.txt"
    assert manager.artifact_path(job_id, "summary.json").read_text() == '{"n": 4}\n'
    assert info.params == {"method": "histogram", "seed": 3}
    assert info.finished_at >= info.created_at
    with pytest.raises(JobNotFound):
        manager.artifact_path(job_id, "nope.csv")
    with pytest.raises(JobNotFound):
        manager.get("no-such-job")


def test_watch_yields_every_progress_step_until_terminal(manager):
    # The job takes each step only when the watcher has seen the previous one, so nothing coalesces.
    steps = threading.Semaphore(0)

    def fn(progress, should_stop, out_dir):
        for i in range(4):
            assert steps.acquire(timeout=5)
            progress((i + 1) / 4, f"step {i + 1}/4")
        assert steps.acquire(timeout=5)  # let the watcher see the last step before DONE replaces it
        return {}

    job_id = manager.submit("analysis", {}, fn)
    seen = []
    for info in manager.watch(job_id, poll_s=0.05):
        seen.append(info)
        if info.state == JobState.RUNNING:
            steps.release()
    running = [(i.progress, i.message) for i in seen if i.state == JobState.RUNNING]
    assert running == [(0.0, "running"), (0.25, "step 1/4"), (0.5, "step 2/4"), (0.75, "step 3/4"), (1.0, "step 4/4")]
    assert [i.state for i in seen if i.state != JobState.RUNNING][-1] == JobState.DONE
    assert seen[-1].state == JobState.DONE and seen[-1].message == "done"


def test_cancel_stops_a_running_job(manager):
    started = threading.Event()
    stopped_cleanly = threading.Event()

    def forever(progress, should_stop, out_dir):
        started.set()
        while not should_stop():
            time.sleep(0.01)
        stopped_cleanly.set()
        progress(0.5, "noticed")  # raises Cancelled: the manager checks on every progress call

    job_id = manager.submit("audit", {}, forever)
    assert started.wait(5)
    assert manager.get(job_id).state == JobState.RUNNING
    manager.cancel(job_id)
    info = manager.wait(job_id, timeout_s=5)
    assert info.state == JobState.CANCELLED and stopped_cleanly.is_set()
    assert manager.cancel(job_id).state == JobState.CANCELLED  # cancelling again changes nothing


def test_cancel_a_queued_job_never_runs_it(manager):
    gate = threading.Event()
    ran = []
    first = manager.submit("analysis", {}, steps_job(1, gate))  # occupies the single worker
    second = manager.submit("analysis", {}, lambda p, s, o: ran.append(1) or {})
    assert manager.get(second).state == JobState.QUEUED
    assert manager.cancel(second).state == JobState.CANCELLED
    gate.set()
    assert manager.wait(first, timeout_s=5).state == JobState.DONE
    time.sleep(0.05)
    assert ran == [] and manager.get(second).state == JobState.CANCELLED


def test_failures_are_recorded_without_internals(manager):
    def bad_data(progress, should_stop, out_dir):
        raise InvalidDataset("labels.csv has no id column")

    def bug(progress, should_stop, out_dir):
        raise KeyError("secret internal detail")

    def liar(progress, should_stop, out_dir):
        return {"report.html": out_dir / "report.html"}  # never written

    a, b, c = (manager.submit("audit", {}, f) for f in (bad_data, bug, liar))
    info_a, info_b, info_c = (manager.wait(j, timeout_s=5) for j in (a, b, c))
    assert info_a.state == JobState.FAILED and info_a.error == "labels.csv has no id column"
    assert info_b.state == JobState.FAILED and "KeyError" in info_b.error and "secret" not in info_b.error
    assert info_c.state == JobState.FAILED and "report.html" in info_c.error


def test_records_survive_reopen(tmp_path):
    with JobManager.open(tmp_path) as m:
        job_id = m.submit("analysis", {"k": 1}, steps_job(2))
        done = m.wait(job_id, timeout_s=5)
    with JobManager.open(tmp_path) as m:
        again = m.get(job_id)
        assert again == done
        assert [j.id for j in m.list()] == [job_id]


def test_job_left_running_by_a_killed_process_is_failed_after_reopen(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from service.jobs import JobManager
        m = JobManager.open({str(tmp_path)!r})
        def forever(progress, should_stop, out_dir):
            progress(0.25, "working")
            time.sleep(60)
        job_id = m.submit("analysis", {{}}, forever)
        while m.get(job_id).state != "RUNNING":
            time.sleep(0.01)
        queued = m.submit("audit", {{}}, forever)
        print(job_id, queued, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        running_id, queued_id = proc.stdout.readline().split()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    with JobManager.open(tmp_path) as m:
        for job_id in (running_id, queued_id):
            info = m.get(job_id)
            assert info.state == JobState.FAILED and info.error == RESTART_ERROR
            assert list(m.watch(job_id)) == [info]  # a terminal job's watch ends at once


def test_close_stops_running_jobs_as_failed(tmp_path):
    started = threading.Event()

    def forever(progress, should_stop, out_dir):
        started.set()
        while True:
            progress(0.1, "looping")
            time.sleep(0.01)

    m = JobManager.open(tmp_path)
    job_id = m.submit("analysis", {}, forever)
    assert started.wait(5)
    m.close(timeout_s=5)
    with JobManager.open(tmp_path) as again:
        info = again.get(job_id)
    assert info.state == JobState.FAILED and info.error == "interrupted by server shutdown"


def test_watch_ends_when_its_stop_callback_says_so(manager):
    gate = threading.Event()
    job_id = manager.submit("analysis", {}, steps_job(1, gate))
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3  # e.g. the RPC client went away

    start = time.monotonic()
    seen = list(manager.watch(job_id, poll_s=0.02, stop=stop))
    assert time.monotonic() - start < 2 and len(calls) == 3
    assert all(not i.terminal for i in seen)
    gate.set()
    assert manager.wait(job_id, timeout_s=5).state == JobState.DONE


def test_submit_after_close_is_unavailable(tmp_path):
    from embeddings.errors import Unavailable
    from service.jobs import JobManager

    manager = JobManager.open(tmp_path)
    manager.close()
    with pytest.raises(Unavailable, match="shutting down"):
        manager.submit("analysis", {}, lambda progress, should_stop, out_dir: {})
