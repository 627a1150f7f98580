"""GalleryStore: durability settings, ids, the change log, deletes, errors and concurrent writers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from embeddings.errors import (
    AlreadyExists,
    CollectionNotFound,
    FaceNotFound,
    InvalidInput,
    ModelMismatch,
    SubjectNotFound,
)
from embeddings.store import GalleryStore


@pytest.fixture
def store(tmp_path):
    s = GalleryStore(tmp_path / "gallery.sqlite3")
    s.create_collection("c", threshold=0.4)
    yield s
    s.close()


def unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_durable_pragmas(store) -> None:
    assert store._read("PRAGMA journal_mode")[0][0] == "wal"
    assert store._read("PRAGMA synchronous")[0][0] == 2  # FULL


def test_collections(store) -> None:
    with pytest.raises(AlreadyExists):
        store.create_collection("c", threshold=0.1)
    with pytest.raises(CollectionNotFound):
        store.get_collection("nope")
    with pytest.raises(InvalidInput):
        store.create_collection("d", threshold=2.0)
    store.set_threshold("c", 0.6)
    assert store.get_collection("c").threshold == 0.6
    assert [c.name for c in store.list_collections()] == ["c"]


def test_add_faces_ids_blobs_and_model(store, rng) -> None:
    v = unit(rng, 3)
    res, seq = store.add_faces("c", ["a"] * 3, v, model_id="m1", qualities=[{"reasons": []}] * 3)
    assert res.face_ids == (1, 2, 3) and res.created_subject and seq == 3
    res2, _ = store.add_faces("c", ["a", "b"], v[:2], model_id="m1")
    assert res2.face_ids == (4, 5) and not res2.created_subject  # first row's subject existed
    ids, vecs, model = store.subject_vectors("c", "a")
    np.testing.assert_array_equal(ids, [1, 2, 3, 4])
    np.testing.assert_array_equal(vecs, np.concatenate([v, v[:1]]))  # bit-exact round trip
    assert model == "m1"
    with pytest.raises(ModelMismatch):
        store.add_faces("c", ["a"], v[:1], model_id="m2")
    with pytest.raises(InvalidInput):
        store.add_faces("c", ["a"], unit(rng, 1, 9), model_id="m1")
    with pytest.raises(CollectionNotFound):
        store.add_faces("x", ["a"], v[:1], model_id="m1")


def test_face_ids_never_reused(store, rng) -> None:
    res, _ = store.add_faces("c", ["a"] * 2, unit(rng, 2), model_id="m")
    store.delete_subject("c", "a")
    res2, _ = store.add_faces("c", ["a"], unit(rng, 1), model_id="m")
    assert res2.face_ids[0] > max(res.face_ids)


def test_change_log_net_effect(store, rng) -> None:
    store.add_faces("c", ["a"] * 2, unit(rng, 2), model_id="m")  # faces 1, 2 (seq 1, 2)
    v = unit(rng, 2)
    store.add_faces("c", ["b"] * 2, v, model_id="m")  # faces 3, 4 (seq 3, 4)
    store.delete_face("c", 4)  # seq 5
    store.delete_face("c", 1)  # seq 6
    added, vecs, removed, last = store.changes_since("c", 2)
    np.testing.assert_array_equal(added, [3])  # 4 was added and removed after seq 2
    np.testing.assert_array_equal(vecs, v[:1])
    assert sorted(removed.tolist()) == [1, 4] and last == 6
    store.truncate_changes("c", 5)
    added, _, removed, last = store.changes_since("c", 5)
    assert len(added) == 0 and removed.tolist() == [1] and last == 6


def test_deletes(store, rng) -> None:
    store.add_faces("c", ["a", "a", "b"], unit(rng, 3), model_id="m")
    ids, _ = store.delete_subject("c", "a")
    assert ids == [1, 2]
    with pytest.raises(SubjectNotFound):
        store.get_subject("c", "a")
    with pytest.raises(SubjectNotFound):
        store.delete_subject("c", "a")
    with pytest.raises(FaceNotFound):
        store.delete_face("c", 1)
    assert store.delete_face("c", 3)[0] == "b"
    assert store.get_subject("c", "b").face_ids == ()
    store.delete_collection("c")
    for table in ("collections", "subjects", "faces", "changes", "enroll_requests"):
        assert store._read(f"SELECT COUNT(*) FROM {table}")[0][0] == 0


def test_request_id_replay(store, rng) -> None:
    v = unit(rng, 2)
    first, _ = store.add_faces("c", ["a"] * 2, v, model_id="m", request_id="r")
    again, seq = store.add_faces("c", ["a"] * 2, v, model_id="m", request_id="r")
    assert again.replayed and again.face_ids == first.face_ids and seq == -1
    assert store.counts("c") == (1, 2)


def test_concurrent_writers(store) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        try:
            for i in range(20):
                store.add_faces("c", [f"t{t}-{i}"] * 2, unit(rng, 2), model_id="m")
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_array_equal(store.face_ids("c"), np.arange(1, 161))
    assert store.counts("c") == (80, 160)
