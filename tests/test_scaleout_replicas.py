"""Two real ``latentface serve`` processes on one PostgreSQL and one ``milvus-lite server``, a client on
each: the replica guarantees the README states (enroll visible ≤ 1 s, deletes never returned after it,
revoked keys refused everywhere, collections, thresholds and jobs shared)."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("psycopg")
pytest.importorskip("pymilvus")

import _services  # noqa: E402

from embeddings.errors import Unauthenticated  # noqa: E402
from service.client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 1.0  # the README's stated bound


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    dsn = _services.postgres().create_database()
    uri = _services.milvus().uri
    key_file = tmp / "admin.key"
    key_file.write_text(secrets.token_urlsafe(36) + "\n")
    key_file.chmod(0o600)
    common = ("--store", dsn, "--vectors", uri, "--admin-key-file", str(key_file), "--grace-s", "2")
    servers = [_services.start_server(ROOT, tmp / f"node{i}", *common) for i in range(2)]
    try:
        addresses = [_services.wait_listening(s) for s in servers]
        key = key_file.read_text().strip()
        clients = [Client(a, key) for a in addresses]
        yield clients, addresses, dsn, uri
        for c in clients:
            c.close()
    finally:
        for s in servers:  # both drain at once
            if s.process.poll() is None:
                s.process.terminate()
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG")
    return buf.getvalue()


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _top(client: Client, image: bytes, collection: str) -> str | None:
    found = client.identify(image, collection, k=1)
    return found.candidates[0].subject_id if found.candidates else None


def test_enroll_on_one_is_identifiable_on_the_other_and_deletes_never_return(replicas, astronaut_jpeg):
    (a, b), _addresses, _dsn, _uri = replicas
    a.create_collection("shared", threshold=0.5)
    assert "shared" in [c.name for c in b.list_collections()]  # created on A, known to B at once
    (probe,) = a.embed(astronaut_jpeg)
    model = probe.model_id
    rng = np.random.default_rng(3)
    dim = len(probe.vector)
    for i in range(20):  # distractors, enrolled through B
        b.enroll("shared", f"other-{i:02d}", embeddings=[(_unit(rng, dim), model)])
    a.enroll("shared", "astro", embeddings=[(probe.vector, model)])
    acked = time.monotonic()
    while _top(b, astronaut_jpeg, "shared") != "astro":
        assert time.monotonic() - acked <= BOUND_S, "enroll on A not identifiable on B within the bound"
        time.sleep(0.02)
    verdict = b.verify(embedding=(probe.vector, model), subject_id="astro", collection="shared")
    assert verdict.decision.is_match and verdict.decision.score == pytest.approx(1.0, abs=1e-4)

    # a threshold set on B decides on A
    b.set_threshold("shared", 0.99999)
    assert not a.verify(embedding=(0.9 * probe.vector + 0.1 * _unit(rng, dim), model), subject_id="astro",
                        collection="shared").decision.is_match

    a.delete_subject("shared", "astro")
    deleted = time.monotonic()
    # after the bound (here: from the acknowledgement on), B never returns it, however deep it looks
    while time.monotonic() - deleted < BOUND_S + 0.5:
        found = b.identify(astronaut_jpeg, "shared", k=25)
        assert "astro" not in [c.subject_id for c in found.candidates]
        assert len(found.candidates) == 20
    assert b.collection_stats("shared").faces == 20


def test_a_revoked_key_is_refused_by_every_replica(replicas):
    _clients, addresses, dsn, uri = replicas

    def cli(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "service.cli", "keys", *args, "--store", dsn, "--vectors", uri,
             "--data-dir", str(ROOT / "nonexistent-unused")],
            cwd=ROOT, env={**os.environ, "LATENTFACE_OFFLINE": "1"}, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    made = cli("create", "--role", "read", "--collections", "*", "--name", "replica-test")
    keyed = [Client(address, made["secret"]) for address in addresses]
    try:
        for c in keyed:
            c.list_collections()  # accepted by both
        cli("revoke", made["key_id"])
        for c in keyed:
            with pytest.raises(Unauthenticated):
                c.list_collections()
    finally:
        for c in keyed:
            c.close()


def test_an_audit_started_on_one_replica_is_watched_and_read_on_the_other(replicas):
    from embeddings.synthetic.groups import make_group_embeddings

    (a, b), _addresses, _dsn, _uri = replicas
    ds = make_group_embeddings(n=60, images_per_identity=4, shares={"majority": 0.7, "minority": 0.3}, seed=2)
    a.create_collection("team", threshold=0.31)
    for identity in sorted(set(ds.identities.tolist())):
        rows = ds.identities == identity
        [group] = set(ds.groups["group"][rows].tolist())
        b.enroll("team", identity, embeddings=[(v, "synthetic/v1") for v in ds.vectors[rows]], groups={"group": group})
    job = a.start_audit(collection="team", group_by=["group"], seed=1)
    assert b.get_job(job.id).id == job.id  # the record is shared at once
    final = list(b.watch_job(job.id, timeout=240))[-1]
    assert final.state == "DONE", final.error
    report = json.loads(b.get_report(job.id, "report.json").data)  # B never ran it
    assert (report["threshold"], set(report["groups"])) == (0.31, {"majority", "minority"})
    assert a.get_report(job.id, "report.json").data == b.get_report(job.id, "report.json").data
