"""Crash safety: a writer killed by SIGKILL loses nothing it acknowledged; the index agrees with the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from embeddings.config import GalleryConfig, IndexConfig
from embeddings.gallery import Gallery

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _durability_worker import vector  # noqa: E402


def run_and_kill(data_dir: Path, acks: int, first: int) -> list[str]:
    """Start the worker, read its acknowledgements until ``acks`` writes, then SIGKILL it mid-run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_durability_worker.py"), str(data_dir), str(first)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.split("\n")[0])
            if len(lines) >= acks:
                break
        os.kill(proc.pid, signal.SIGKILL)
        # Whatever it managed to print before dying was acknowledged too.
        lines += [ln for ln in proc.stdout.read().splitlines() if ln]
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return [ln for ln in lines if ln.count(" ") == 2]  # a torn last line was never fully acknowledged


def check(data_dir: Path, lines: list[str]) -> None:
    added = {int(f): int(i) for op, i, f in (ln.split() for ln in lines) if op == "add"}
    deleted = {int(f) for op, _, f in (ln.split() for ln in lines) if op == "del"}
    cfg = GalleryConfig(data_dir=data_dir, index=IndexConfig(ann_threshold=150, nprobe=4096))
    with Gallery.open(cfg, background=False) as g:
        store_ids, index_ids = g.face_ids("c")
        np.testing.assert_array_equal(store_ids, index_ids)  # the index agrees with the store
        live = set(added) - deleted
        assert live <= set(store_ids.tolist())  # every acknowledged enrollment survived
        assert not deleted & set(store_ids.tolist())  # every acknowledged delete too
        q = np.stack([vector(added[f]) for f in sorted(live)])
        top = g.search("c", q, 1)
        assert [row[0].face_id for row in top] == sorted(live)  # each is found by its own vector
        assert len(store_ids) - len(live) <= 1  # at most the one write in flight at the kill


def test_sigkill_loses_no_acknowledged_write(tmp_path) -> None:
    data_dir = tmp_path / "data"
    lines = run_and_kill(data_dir, acks=120, first=0)
    check(data_dir, lines)
    # A second run on the same data dir (snapshot + replay path), killed again.
    lines += run_and_kill(data_dir, acks=140, first=10_000)
    check(data_dir, lines)
