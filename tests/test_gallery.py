"""Gallery: store and index kept consistent across writes, deletes, snapshots, replays and reopen."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.config import GalleryConfig, IndexConfig
from embeddings.errors import (
    AlreadyExists,
    CollectionNotFound,
    FaceNotFound,
    InvalidInput,
    ModelMismatch,
    SubjectNotFound,
)
from embeddings.gallery import Gallery
from embeddings.index import pq_for
from embeddings.synthetic.gallery import identity_embeddings, noisy_faces

DIM = 32


def config(tmp_path, **index) -> GalleryConfig:
    return GalleryConfig(data_dir=tmp_path / "data", default_threshold=0.45, index=IndexConfig(**index))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vecs, ident = identity_embeddings(1500, faces_per_identity=5, dim=DIM, seed=5)
    return vecs, ident, noisy_faces(np.arange(0, 300, 3), dim=DIM, seed=5, noise_seed=2)


def brute_top(gallery: Gallery, name: str, q: np.ndarray, k: int) -> list[list[int]]:
    """Reference: every stored face's vector from the store, ranked by exact cosine."""
    ids = gallery._store.face_ids(name)
    vecs = np.concatenate([v for _, v in gallery._store.iter_vectors(name)])
    sim = q @ vecs.T
    return [ids[np.argsort(-row, kind="stable")[:k]].tolist() for row in sim]


def hits(gallery: Gallery, name: str, q: np.ndarray, k: int) -> list[list[int]]:
    return [[h.face_id for h in row] for row in gallery.search(name, q, k)]


def fill(g: Gallery, vecs: np.ndarray, ident: np.ndarray, name: str = "c") -> np.ndarray:
    g.create_collection(name)
    return g.bulk_enroll(name, [f"id{i:04d}" for i in ident], vecs, model_id="m")


def test_reopen_gives_same_results(tmp_path, data) -> None:
    vecs, ident, q = data
    with Gallery.open(config(tmp_path), background=False) as g:
        fill(g, vecs, ident)
        before = g.search("c", q, 5)
        assert hits(g, "c", q, 5) == brute_top(g, "c", q, 5)
    with Gallery.open(config(tmp_path), background=False) as g:
        assert g.search("c", q, 5) == before
        stats = g.collection_stats("c")
        got = (stats.subjects, stats.faces, stats.index_ntotal, stats.model_id, stats.dim)
        assert got == (300, 1500, 1500, "m", DIM)
        assert stats.threshold == 0.45


@pytest.mark.parametrize("ann", [False, True])
def test_snapshot_then_replay_adds_and_deletes(tmp_path, data, ann: bool) -> None:
    vecs, ident, q = data
    cfg = config(tmp_path, ann_threshold=500 if ann else 10**6, nprobe=4096)
    g = Gallery.open(cfg, background=False)
    fill(g, vecs[:1000], ident[:1000])
    assert g.build_index("c") == (f"IVF16,PQ{pq_for(DIM)}x4fs" if ann else "flat")
    g.snapshot()
    # After the snapshot: more adds, a subject delete and a face delete, then a crash (no close snapshot).
    g.bulk_enroll("c", [f"id{i:04d}" for i in ident[1000:]], vecs[1000:], model_id="m")
    removed = g.delete_subject("c", "id0000")
    g.delete_face("c", 1200)
    g.close(snapshot=False)
    g = Gallery.open(cfg, background=False)
    store_ids, index_ids = g.face_ids("c")
    np.testing.assert_array_equal(store_ids, index_ids)
    assert len(store_ids) == 1500 - 5 - 1
    got = hits(g, "c", q, 5)
    assert got == brute_top(g, "c", q, 5)
    flat = {f for row in got for f in row}
    assert not flat & set(removed) and 1200 not in flat
    assert g.collection_stats("c").index_kind == (f"IVF16,PQ{pq_for(DIM)}x4fs" if ann else "flat")
    g.close()


def test_idempotent_request_id_survives_reopen(tmp_path, data) -> None:
    vecs, _, _ = data
    with Gallery.open(config(tmp_path), background=False) as g:
        g.create_collection("c")
        first = g.enroll("c", "alice", vecs[:2], model_id="m", request_id="req-1", display_name="Alice")
        again = g.enroll("c", "alice", vecs[:2], model_id="m", request_id="req-1", display_name="Alice")
        assert again.replayed and not first.replayed and again.face_ids == first.face_ids
    with Gallery.open(config(tmp_path), background=False) as g:
        third = g.enroll("c", "alice", vecs[:2], model_id="m", request_id="req-1", display_name="Alice")
        assert third.face_ids == first.face_ids and third.replayed
        assert g.collection_stats("c").faces == 2 and g.collection_stats("c").index_ntotal == 2
        assert g.get_subject("c", "alice").display_name == "Alice"


def test_model_mismatch_and_invalid_vectors(tmp_path, data) -> None:
    vecs, _, _ = data
    with Gallery.open(config(tmp_path), background=False) as g:
        g.create_collection("c")
        g.enroll("c", "a", vecs[0], model_id="m1")
        with pytest.raises(ModelMismatch):
            g.enroll("c", "b", vecs[1], model_id="m2")
        with pytest.raises(InvalidInput):
            g.enroll("c", "b", np.ones(DIM + 1), model_id="m1")
        with pytest.raises(InvalidInput):
            g.enroll("c", "b", np.full(DIM, np.nan), model_id="m1")
        with pytest.raises(InvalidInput):
            g.enroll("c", "b", np.zeros(DIM), model_id="m1")
        with pytest.raises(InvalidInput):
            g.enroll("c", "", vecs[1], model_id="m1")
        # Not normalised: accepted and stored normalised.
        g.enroll("c", "b", 7.5 * vecs[1], model_id="m1")
        _, stored, _ = g.subject_vectors("c", "b")
        np.testing.assert_allclose(stored[0], vecs[1], atol=1e-6)
        assert g.collection_stats("c").faces == 2


def test_list_subjects_pages_cover_each_once(tmp_path, data) -> None:
    vecs, _, _ = data
    names = [f"s{i:02d}" for i in range(47)] + ["ünïcode", "a b", "z/1"]
    with Gallery.open(config(tmp_path), background=False) as g:
        g.create_collection("c")
        g.bulk_enroll("c", names, vecs[: len(names)], model_id="m")
        g.enroll("c", "s03", vecs[60:62], model_id="m", groups={"g": "x"})  # a subject with three faces
        seen, token = [], None
        while True:
            page, token = g.list_subjects("c", page_size=7, page_token=token)
            seen += [s.subject_id for s in page]
            for s in page:  # a page row is the same record the single-subject read gives
                assert s == g.get_subject("c", s.subject_id)
            if token is None:
                break
        assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))
        assert len(g.get_subject("c", "s03").face_ids) == 3
        with pytest.raises(InvalidInput):
            g.list_subjects("c", page_size=0)
        with pytest.raises(InvalidInput):
            g.list_subjects("c", page_token="%%%")


def test_deletes_remove_store_rows_and_index_entries(tmp_path, data) -> None:
    vecs, ident, q = data
    with Gallery.open(config(tmp_path), background=False) as g:
        ids = fill(g, vecs[:200], ident[:200])
        target = g.search("c", q[:1], 1)[0][0]
        removed = g.delete_subject("c", target.subject_id)
        assert target.face_id in removed and len(removed) == 5
        with pytest.raises(SubjectNotFound):
            g.get_subject("c", target.subject_id)
        store_ids, index_ids = g.face_ids("c")
        np.testing.assert_array_equal(store_ids, index_ids)
        assert not np.isin(removed, index_ids).any()
        assert all(h.subject_id != target.subject_id for h in g.search("c", q[:1], 200)[0])
        g.delete_face("c", int(ids[-1]))
        with pytest.raises(FaceNotFound):
            g.delete_face("c", int(ids[-1]))
        assert int(ids[-1]) not in g.face_ids("c")[1]


def test_collection_lifecycle_and_stale_snapshot(tmp_path, data) -> None:
    vecs, ident, q = data
    with Gallery.open(config(tmp_path), background=False) as g:
        fill(g, vecs[:100], ident[:100])
        g.snapshot()
        with pytest.raises(AlreadyExists):
            g.create_collection("c")
        g.set_threshold("c", 0.7)
        assert g.collection_stats("c").threshold == 0.7
        g.delete_collection("c")
        with pytest.raises(CollectionNotFound):
            g.search("c", q[:1], 1)
        g.create_collection("c")
        g.enroll("c", "new", vecs[500], model_id="m")
    with Gallery.open(config(tmp_path), background=False) as g:
        assert [h.subject_id for h in g.search("c", q[:3], 5)[0]] == ["new"]
        assert [c.name for c in g.list_collections()] == ["c"]


def test_background_build_and_snapshot(tmp_path, data) -> None:
    vecs, ident, q = data
    cfg = config(tmp_path, ann_threshold=800, snapshot_every=100, nprobe=4096)
    with Gallery.open(cfg) as g:
        fill(g, vecs, ident)
        g.wait_idle()
        assert g.collection_stats("c").index_kind.startswith("IVF")
        assert list((tmp_path / "data" / "index").glob("*.lfidx"))
        expected = hits(g, "c", q, 3)
        # The log up to the snapshot is truncated: the snapshot is what covers it now.
        assert g._store.changes_since("c", 0)[0].size == 0
    with Gallery.open(cfg) as g:
        assert g.collection_stats("c").index_kind.startswith("IVF")
        assert hits(g, "c", q, 3) == expected


def test_concurrent_enroll_search_and_snapshot(tmp_path, data) -> None:
    import threading

    vecs, ident, q = data
    cfg = config(tmp_path, ann_threshold=300, snapshot_every=50, nprobe=4096)
    errors: list[BaseException] = []
    with Gallery.open(cfg) as g:
        g.create_collection("c")

        def writer(t: int) -> None:
            try:
                for i in range(t, 600, 3):
                    g.enroll("c", f"id{ident[i]:04d}", vecs[i], model_id="m")
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        def reader() -> None:
            try:
                for _ in range(30):
                    g.search("c", q[:5], 3)
                    g.snapshot()
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
        threads.append(threading.Thread(target=reader))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        g.wait_idle()
        assert not errors
        store_ids, index_ids = g.face_ids("c")
        np.testing.assert_array_equal(store_ids, index_ids)
        assert len(store_ids) == 600
    with Gallery.open(cfg, background=False) as g:
        store_ids, index_ids = g.face_ids("c")
        np.testing.assert_array_equal(store_ids, index_ids)
        assert hits(g, "c", q, 3) == brute_top(g, "c", q, 3)
