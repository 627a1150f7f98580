"""The gallery contract, run against both backends: embedded (SQLite + FAISS) and PostgreSQL + Milvus.

Real parts only: a PostgreSQL cluster and a ``milvus-lite server`` started by tests/_services.py.
Every score is compared with a brute-force cosine over the vectors the test enrolled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embeddings.config import GalleryConfig
from embeddings.engine import FaceEngine
from embeddings.errors import (
    AlreadyExists,
    CollectionNotFound,
    FaceNotFound,
    InvalidInput,
    ModelMismatch,
    RequestIdReused,
    SubjectNotFound,
)

pytest.importorskip("psycopg")
pytest.importorskip("pymilvus")

import _services  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "test-model"
BACKENDS = ["embedded", "pg_milvus"]


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def open_gallery(backend: str, tmp_path: Path, **kw):
    from embeddings.backends import open_gallery as open_

    config = GalleryConfig(data_dir=tmp_path / "data", default_threshold=0.5)
    if backend == "embedded":
        return open_(config, **kw)
    return open_(config, store=_services.postgres().create_database(), vectors=_services.milvus().uri, **kw)


@pytest.fixture(params=BACKENDS)
def gallery(request, tmp_path):
    g = open_gallery(request.param, tmp_path)
    yield g
    g.close()


def test_both_satisfy_the_backend_protocol(gallery):
    from embeddings.backends import GalleryBackend

    assert isinstance(gallery, GalleryBackend)


def test_collections_lifecycle_and_bad_names(gallery):
    rec = gallery.create_collection("staff", threshold=0.3)
    assert (rec.name, rec.threshold, rec.model_id, rec.dim) == ("staff", 0.3, None, None)
    assert gallery.create_collection("visitors").threshold == 0.5  # the configured default
    assert [c.name for c in gallery.list_collections()] == ["staff", "visitors"]
    with pytest.raises(AlreadyExists):
        gallery.create_collection("staff")
    for bad in ["", "a b", "-x", "x" * 65, "é"]:
        with pytest.raises(InvalidInput):
            gallery.create_collection(bad)
        with pytest.raises(InvalidInput):
            gallery.get_collection(bad)
    with pytest.raises(CollectionNotFound):
        gallery.get_collection("nobody")
    with pytest.raises(InvalidInput):
        gallery.create_collection("t", threshold=1.5)
    gallery.delete_collection("visitors")
    with pytest.raises(CollectionNotFound):
        gallery.get_collection("visitors")
    with pytest.raises(CollectionNotFound):
        gallery.delete_collection("visitors")


@pytest.mark.parametrize("dim", [128, 512])
def test_search_scores_are_exact_cosines_in_order(gallery, rng, dim):
    gallery.create_collection("c")
    vecs = unit(rng, 60, dim)
    subjects = [f"s{i % 20:02d}" for i in range(60)]
    ids = gallery.bulk_enroll("c", subjects, vecs, model_id=MODEL)
    assert gallery.get_collection("c").dim == dim
    q = unit(rng, 3, dim)
    hits = gallery.search("c", q, 10)
    ref = q @ vecs.T
    for i in range(3):
        order = np.argsort(-ref[i])[:10]
        assert [h.face_id for h in hits[i]] == [int(ids[j]) for j in order]
        assert [h.subject_id for h in hits[i]] == [subjects[j] for j in order]
        np.testing.assert_allclose([h.score for h in hits[i]], ref[i][order], atol=1e-5)
    # the query itself is its own best match at cosine 1
    top = gallery.search("c", vecs[7], 1)[0][0]
    assert top.face_id == int(ids[7]) and top.score == pytest.approx(1.0, abs=1e-5)


def test_engine_verify_and_identify_unchanged(gallery, rng):
    engine = FaceEngine(None, gallery)  # the engine takes either backend as it is
    engine.create_collection("c", threshold=0.6)
    vecs = unit(rng, 10, 128)
    for i in range(10):
        res = engine.enroll_embeddings("c", f"p{i}", vecs[i], MODEL, display_name=f"P {i}", metadata={"i": i})
        assert res.created_subject and len(res.face_ids) == 1
    noisy = vecs[4] + 0.05 * unit(rng, 1, 128)[0]
    decision = engine.verify_embedding(noisy, MODEL, "c", "p4")
    assert decision.is_match and decision.threshold == 0.6
    assert decision.score == pytest.approx(float(vecs[4] @ (noisy / np.linalg.norm(noisy))), abs=1e-5)
    assert not engine.verify_embedding(noisy, MODEL, "c", "p5").is_match
    cands = engine.identify_embedding(noisy, MODEL, "c", k=3)
    assert cands[0].subject_id == "p4" and cands[0].is_match
    assert len(cands) == 3 and not any(c.is_match for c in cands[1:])
    # thresholds: per call, then the collection's after a change
    assert not engine.identify_embedding(noisy, MODEL, "c", k=1, threshold=0.999)[0].is_match
    engine.set_threshold("c", 0.9999)
    assert not engine.verify_embedding(noisy, MODEL, "c", "p4").is_match
    with pytest.raises(InvalidInput):
        engine.set_threshold("c", -2)
    subject = engine.get_subject("c", "p4")
    assert subject.display_name == "P 4" and subject.metadata == {"i": 4} and len(subject.face_ids) == 1
    with pytest.raises(ModelMismatch):
        engine.identify_embedding(noisy, "other-model", "c")
    with pytest.raises(ModelMismatch):
        engine.enroll_embeddings("c", "p0", vecs[0], "other-model")


def test_deletes_are_never_returned(gallery, rng):
    gallery.create_collection("c")
    vecs = unit(rng, 30, 64)
    ids = gallery.bulk_enroll("c", [f"s{i // 3}" for i in range(30)], vecs, model_id=MODEL)
    assert gallery.delete_face("c", int(ids[0])) == "s0"
    removed = gallery.delete_subject("c", "s1")
    assert sorted(removed) == sorted(int(i) for i in ids[3:6])
    gone = {int(ids[0]), *removed}
    for probe in (vecs[0], vecs[4]):
        hits = gallery.search("c", probe, 30)[0]
        assert gone.isdisjoint(h.face_id for h in hits)
        assert len(hits) == 26
    with pytest.raises(FaceNotFound):
        gallery.delete_face("c", int(ids[0]))
    with pytest.raises(FaceNotFound):
        gallery.delete_face("c", "9" * 26)  # well-formed, cannot exist
    with pytest.raises(InvalidInput):
        gallery.delete_face("c", "abc")
    with pytest.raises(SubjectNotFound):
        gallery.delete_subject("c", "s1")
    with pytest.raises(SubjectNotFound):
        gallery.get_subject("c", "s1")
    assert gallery.get_subject("c", "s0").face_ids == tuple(int(i) for i in ids[1:3])
    gallery.wait_idle()
    store_ids, index_ids = gallery.face_ids("c")
    assert store_ids.tolist() == index_ids.tolist() == sorted(set(ids.tolist()) - gone)
    # a deleted collection's namesake starts empty
    gallery.delete_collection("c")
    gallery.create_collection("c")
    assert gallery.search("c", vecs[5], 5) == [[]]
    gallery.enroll("c", "new", vecs[5], model_id=MODEL)
    assert [h.subject_id for h in gallery.search("c", vecs[5], 5)[0]] == ["new"]


def test_paging_is_ordered_complete_and_checked(gallery, rng):
    gallery.create_collection("c")
    subjects = [f"id-{i:03d}" for i in range(25)] + ["Zed", "älva"]
    gallery.bulk_enroll("c", subjects, unit(rng, len(subjects), 32), model_id=MODEL)
    seen, token, pages = [], None, 0
    while True:
        page, token = gallery.list_subjects("c", page_size=10, page_token=token)
        pages += 1
        seen += [s.subject_id for s in page]
        assert all(len(s.face_ids) == 1 for s in page)
        if token is None:
            break
    assert pages == 3
    assert seen == sorted(subjects, key=lambda s: s.encode())
    for bad in (0, 1001):
        with pytest.raises(InvalidInput):
            gallery.list_subjects("c", page_size=bad)
    with pytest.raises(InvalidInput):
        gallery.list_subjects("c", page_token="not base64 !")
    with pytest.raises(CollectionNotFound):
        gallery.list_subjects("nope")


def test_bad_input_is_refused_and_stores_nothing(gallery, rng):
    gallery.create_collection("c")
    good = unit(rng, 1, 128)[0]
    gallery.enroll("c", "a", good, model_id=MODEL)
    bad_vectors = [
        np.full(128, np.nan, np.float32),
        np.zeros(128, np.float32),
        unit(rng, 1, 64)[0],  # the collection is 128-d now
        "not a vector",
        np.empty((0, 128), np.float32),
    ]
    for bad in bad_vectors:
        with pytest.raises(InvalidInput):
            gallery.enroll("c", "b", bad, model_id=MODEL)
        with pytest.raises(InvalidInput):
            gallery.search("c", bad, 3)
    for subject in ["", " x", "a\x00b", "x" * 129]:
        with pytest.raises(InvalidInput):
            gallery.enroll("c", subject, good, model_id=MODEL)
    with pytest.raises(InvalidInput):
        gallery.enroll("c", "b", good, model_id="")
    with pytest.raises(InvalidInput):
        gallery.enroll("c", "b", good, model_id=MODEL, request_id="has space")
    with pytest.raises(InvalidInput):
        gallery.search("c", good, 0)
    with pytest.raises(CollectionNotFound):
        gallery.enroll("nope", "b", good, model_id=MODEL)
    assert gallery.collection_stats("c").faces == 1
    assert gallery.collection_stats("c").subjects == 1


def test_request_id_replay_reuse_and_forget(gallery, rng):
    gallery.create_collection("c")
    v = unit(rng, 2, 128)
    first = gallery.enroll("c", "a", v, model_id=MODEL, request_id="req-1")
    again = gallery.enroll("c", "a", v, model_id=MODEL, request_id="req-1")
    assert again.replayed and again.face_ids == first.face_ids and not first.replayed
    assert gallery.collection_stats("c").faces == 2
    with pytest.raises(RequestIdReused):
        gallery.enroll("c", "b", v, model_id=MODEL, request_id="req-1")
    gallery.delete_face("c", first.face_ids[0])
    fresh = gallery.enroll("c", "a", v, model_id=MODEL, request_id="req-1")
    assert not fresh.replayed and set(fresh.face_ids).isdisjoint(first.face_ids)


def test_stats(gallery, rng):
    gallery.create_collection("c", threshold=0.4)
    gallery.bulk_enroll("c", ["a", "a", "b"], unit(rng, 3, 16), model_id=MODEL)
    gallery.wait_idle()
    st = gallery.collection_stats("c")
    assert (st.subjects, st.faces, st.index_ntotal, st.dim, st.model_id, st.threshold) == (2, 3, 3, 16, MODEL, 0.4)
    assert gallery.index_size("c") == 3


# ---------------------------------------------------------------------- PostgreSQL + Milvus only


@pytest.fixture
def pg_gallery(tmp_path):
    g = open_gallery("pg_milvus", tmp_path, background=False)
    yield g
    g.close()


def test_a_commit_without_its_vector_write_is_replayed_from_the_outbox(pg_gallery, rng):
    """A replica that died between the PostgreSQL commit and the Milvus write: the log replays it."""
    g = pg_gallery
    g.create_collection("c")
    vecs = unit(rng, 4, 128)
    g.bulk_enroll("c", ["a", "b"], vecs[:2], model_id=MODEL)
    # the store's own write, as the gallery does it, and no Milvus write after it
    result, rec, seqs = g.store.add_faces("c", ["c", "d"], vecs[2:], model_id=MODEL)
    assert g.store.unapplied() == 2
    assert {h.subject_id for h in g.search("c", vecs[2], 4)[0]} == {"a", "b"}  # not searchable yet
    assert g.replay_outbox(older_than_s=60.0) == 0  # too young: its writer may still be at work
    assert g.replay_outbox(older_than_s=0.0) == 2
    assert g.search("c", vecs[2], 1)[0][0].subject_id == "c"
    assert g.store.unapplied() == 0
    # a face deleted before the replay is not resurrected by it
    result, rec, seqs = g.store.add_faces("c", ["e"], unit(rng, 1, 128), model_id=MODEL)
    g.store.delete_face("c", result.face_ids[0])
    assert g.replay_outbox(older_than_s=0.0) == 2
    store_ids, index_ids = g.face_ids("c")
    assert store_ids.tolist() == index_ids.tolist() and result.face_ids[0] not in index_ids


def test_outbox_is_replayed_in_the_background_within_the_bound(tmp_path, rng):
    g = open_gallery("pg_milvus", tmp_path)  # background thread on
    try:
        g.create_collection("c")
        v = unit(rng, 1, 128)
        g.store.add_faces("c", ["late"], v, model_id=MODEL)
        t0 = time.monotonic()
        while not g.search("c", v, 1)[0]:
            assert time.monotonic() - t0 < g.repair_after_s + 2.0
            time.sleep(0.05)
        assert g.search("c", v, 1)[0][0].subject_id == "late"
    finally:
        g.close()


_WORKER = r"""
import sys, numpy as np
from embeddings.backends import open_gallery
from embeddings.config import GalleryConfig
g = open_gallery(GalleryConfig(data_dir=sys.argv[1]), store=sys.argv[2], vectors=sys.argv[3], background=False)
rng = np.random.default_rng(7)
for i in range(100000):
    v = rng.standard_normal(64).astype(np.float32)
    r = g.enroll("c", f"s{i}", v, model_id="test-model")
    print(r.face_ids[0], flush=True)  # acknowledged
"""


def test_sigkill_loses_nothing_acknowledged(tmp_path):
    pg, mv = _services.postgres(), _services.milvus()
    dsn = pg.create_database()
    from embeddings.backends import open_gallery as open_

    g = open_(GalleryConfig(data_dir=tmp_path), store=dsn, vectors=mv.uri, background=False)
    g.create_collection("c")
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(tmp_path), dsn, mv.uri],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: list[int] = []
    assert proc.stdout is not None
    while len(acked) < 40:
        line = proc.stdout.readline()
        assert line, "the worker stopped early"
        acked.append(int(line))
    proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.wait()
    acked += [int(x) for x in rest.split()]
    try:
        g.wait_idle()  # what the killed writer left unapplied
        store_ids, index_ids = g.face_ids("c")
        assert set(acked) <= set(store_ids.tolist())
        assert store_ids.tolist() == index_ids.tolist()
        rng = np.random.default_rng(7)
        first = rng.standard_normal(64).astype(np.float32)
        assert g.search("c", first, 1)[0][0].subject_id == "s0"
    finally:
        g.close()


def test_index_policy_maps_to_milvus_index_types():
    from embeddings.backends.milvus import milvus_index
    from embeddings.config import IndexConfig

    assert milvus_index(IndexConfig(ann_factory="IVF{nlist},Flat", nprobe=16)) == ("IVF_FLAT", {"nlist": 1024}, {"nprobe": 16})
    assert milvus_index(IndexConfig(ann_factory="IVF{nlist},SQ8"))[:2] == ("IVF_SQ8", {"nlist": 1024})
    assert milvus_index(IndexConfig())[:2] == ("IVF_SQ8", {"nlist": 1024})  # no 4-bit fast-scan in Milvus
    assert milvus_index(IndexConfig(ann_factory="IVF256,SQ8", nprobe=8))[:2] == ("IVF_SQ8", {"nlist": 256})
    assert milvus_index(IndexConfig(ann_factory="IVF256,PQ16"))[:2] == ("IVF_PQ", {"nlist": 256, "m": 16, "nbits": 8})
    assert milvus_index(IndexConfig(ann_factory="HNSW32", rerank_k=100)) == (
        "HNSW", {"M": 32, "efConstruction": 200}, {"ef": 100}
    )
    assert milvus_index(IndexConfig(ann_factory="Flat"))[0] == "FLAT"


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,SQ8", "HNSW16"])
def test_every_milvus_index_type_returns_exact_rescored_hits(tmp_path, rng, factory):
    from embeddings.backends.pg_milvus import PgMilvusGallery
    from embeddings.config import IndexConfig

    config = GalleryConfig(data_dir=tmp_path, index=IndexConfig(ann_factory=factory, nprobe=16))
    g = PgMilvusGallery.open(config, store=_services.postgres().create_database(), vectors=_services.milvus().uri,
                             background=False)
    try:
        g.create_collection("c")
        vecs = unit(rng, 400, 32)
        ids = g.bulk_enroll("c", [f"s{i}" for i in range(400)], vecs, model_id=MODEL)
        g.build_index("c")
        expected = {"Flat": "flat", "IVF16,Flat": "ivf_flat", "IVF16,SQ8": "ivf_sq8", "HNSW16": "hnsw"}[factory]
        assert g.collection_stats("c").index_kind == "milvus-" + expected  # as Milvus describes the index
        q = vecs[:5] + 0.1 * unit(rng, 5, 32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        for i, hits in enumerate(g.search("c", q, 3)):
            assert hits[0].face_id == int(ids[i])  # its own face, however approximate the candidates
            np.testing.assert_allclose([h.score for h in hits], [float(vecs[ids.tolist().index(h.face_id)] @ q[i])
                                                                 for h in hits], atol=1e-5)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    finally:
        g.close()


def test_applied_log_rows_are_pruned_and_unapplied_ones_kept(pg_gallery, rng):
    g = pg_gallery
    g.create_collection("c")
    g.bulk_enroll("c", ["a", "b"], unit(rng, 2, 16), model_id=MODEL)  # applied
    g.store.add_faces("c", ["c"], unit(rng, 1, 16), model_id=MODEL)  # left unapplied
    assert g.store.prune_log(3600.0) == 0  # all younger than the retention
    assert g.store.prune_log(-1.0) == 2
    assert g.store.unapplied() == 1
    assert g.replay_outbox(older_than_s=0.0) == 1


def test_the_local_cli_follows_store_and_vectors(tmp_path):
    """`latentface collections …` with --store/--vectors works on the shared gallery, not a local one."""
    from embeddings.backends.pg_milvus import PgMilvusGallery

    dsn, uri = _services.postgres().create_database(), _services.milvus().uri

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "collections", *args, "--store", dsn, "--vectors", uri,
             "--data-dir", str(tmp_path / "local")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )

    made = cli("create", "--collection", "via-cli", "--threshold", "0.42")
    assert made.returncode == 0, made.stderr
    g = PgMilvusGallery.open(GalleryConfig(data_dir=tmp_path), store=dsn, vectors=uri, background=False)
    try:
        assert g.get_collection("via-cli").threshold == 0.42
    finally:
        g.close()
    assert not (tmp_path / "local" / "gallery.sqlite3").exists()
    half = subprocess.run([sys.executable, "-m", "service.cli", "collections", "list", "--store", dsn],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert half.returncode == 2 and "together" in half.stderr  # one without the other is refused


def test_face_counts_stay_exact_under_concurrent_writers(pg_gallery, rng):
    """index_size (asked by every identify) reads sharded counters kept by the writes: never a scan, never off."""
    import threading

    g = pg_gallery
    g.create_collection("c")
    vecs = unit(rng, 200, 16)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(10):
                r = g.enroll("c", f"w{w}-{i}", vecs[w * 20 + i * 2 : w * 20 + i * 2 + 2], model_id=MODEL)
                if i % 3 == 0:
                    g.delete_face("c", r.face_ids[0])
                if i % 5 == 4:
                    g.delete_subject("c", f"w{w}-{i}")
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    scanned = int(g.store.execute("SELECT COUNT(*) FROM faces WHERE collection = 'c'")[0][0])
    assert g.index_size("c") == scanned == g.collection_stats("c").faces == len(g.face_ids("c")[0])
    assert scanned == 8 * (20 - 4 - 2 * 2 + 1)  # 20 faces, 4 single deletes, 2 subjects of 2 (one already short)


def test_migrations_run_once_even_when_replicas_start_together():
    import threading

    from embeddings.backends.postgres import _MIGRATIONS, PgStore

    dsn = _services.postgres().create_database()
    stores: list[PgStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PgStore(dsn, pool_size=1))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        versions = [r[0] for r in stores[0].execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(_MIGRATIONS) + 1))
    finally:
        for s in stores:
            s.close()
    again = PgStore(dsn)  # a later start finds nothing to do
    again.close()


def test_a_lost_milvus_collection_is_rebuilt_from_postgresql(tmp_path, rng):
    from pymilvus import MilvusClient

    from embeddings.backends.pg_milvus import PgMilvusGallery

    dsn, uri = _services.postgres().create_database(), _services.milvus().uri
    g = PgMilvusGallery.open(GalleryConfig(data_dir=tmp_path), store=dsn, vectors=uri, background=False)
    g.create_collection("c")
    vecs = unit(rng, 50, 32)
    ids = g.bulk_enroll("c", [f"s{i}" for i in range(50)], vecs, model_id=MODEL)
    g.delete_face("c", int(ids[3]))
    incarnation = g.get_collection("c").incarnation
    g.close()
    client = MilvusClient(uri=uri)
    client.drop_collection("lf_" + incarnation)  # Milvus lost it
    client.close()
    g = PgMilvusGallery.open(GalleryConfig(data_dir=tmp_path), store=dsn, vectors=uri, background=False)
    try:
        assert g.search("c", vecs[7], 1) == [[]]
        assert g.rebuild_vectors("c") == 49
        assert g.search("c", vecs[7], 1)[0][0].face_id == int(ids[7])
        store_ids, index_ids = g.face_ids("c")
        assert store_ids.tolist() == index_ids.tolist() and int(ids[3]) not in index_ids
    finally:
        g.close()
