"""VectorIndex against a brute-force numpy reference, in exact and ANN modes, with deletes and snapshots."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from embeddings.config import IndexConfig
from embeddings.errors import InvalidInput, StorageError
from embeddings.index import VectorIndex, nlist_for
from embeddings.synthetic.gallery import identity_embeddings, noisy_faces

DIM = 64
FLAT_CODES = "IVF{nlist},Flat"  # exact codes: an exhaustive probe must then equal brute force with any re-rank width


def brute(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Obviously-correct top-k by cosine (vectors are unit)."""
    sim = q.astype(np.float64) @ vecs.astype(np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, order, axis=1), ids[order]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vecs, ident = identity_embeddings(3000, faces_per_identity=5, dim=DIM, seed=3)
    queries = noisy_faces(np.arange(0, 600, 7), dim=DIM, seed=3, noise_seed=9)
    return np.arange(10, 3010, dtype=np.int64), vecs, queries


def test_nlist_policy() -> None:
    assert nlist_for(1_000_000) == 4096
    assert nlist_for(100_000) == 1024
    assert nlist_for(3000) == 64  # capped so every list gets >= 39 training points
    assert nlist_for(10) == 1
    assert nlist_for(10**7) == nlist_for(10**12) == 4096  # past 1M the lists grow instead


def test_exact_matches_brute_force(data) -> None:
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=10**6))
    index.add(ids, vecs)
    scores, got = index.search(q, 10)
    ref_s, ref_i = brute(ids, vecs, q, 10)
    assert index.kind == "flat"
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_padding_when_fewer_than_k(data) -> None:
    ids, vecs, q = data
    index = VectorIndex(DIM)
    index.add(ids[:3], vecs[:3])
    scores, got = index.search(q[:2], 5)
    assert (got[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert set(got[0, :3]) == set(ids[:3])


def test_ann_exhaustive_probe_equals_brute_force(data) -> None:
    # nprobe >= nlist makes IVF exhaustive, so the result must be the exact one.
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, ann_factory=FLAT_CODES, nprobe=4096, rerank_k=16))
    index.add(ids, vecs)
    assert index.needs_build()
    index.build()
    assert index.kind.startswith("IVF")
    scores, got = index.search(q, 10)
    ref_s, ref_i = brute(ids, vecs, q, 10)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_ann_scores_are_exact_cosines_and_recall_high(data) -> None:
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, nprobe=8, rerank_k=32))
    index.add(ids, vecs)
    index.build()
    scores, got = index.search(q, 5)
    _, ref_i = brute(ids, vecs, q, 1)
    assert (got[:, 0] == ref_i[:, 0]).mean() >= 0.95
    lookup = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    exact = np.array([[vecs[lookup[i]] @ qq for i in row] for row, qq in zip(got, q, strict=True)])
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first


@pytest.mark.parametrize("factory", ["flat", "IVF{nlist},Flat", "HNSW16"])
def test_deleted_ids_never_returned(data, factory: str) -> None:
    ids, vecs, q = data
    threshold = 10**6 if factory == "flat" else 1000
    ann_factory = factory if factory != "flat" else "IVF{nlist},Flat"
    index = VectorIndex(DIM, IndexConfig(ann_threshold=threshold, ann_factory=ann_factory, nprobe=4096))
    index.add(ids, vecs)
    if factory != "flat":
        index.build()
    _, first = brute(ids, vecs, q, 3)
    gone = np.unique(first.ravel())
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # idempotent
    keep = ~np.isin(ids, gone)
    scores, got = index.search(q, 5)
    assert not np.isin(got, gone).any()
    ref_s, ref_i = brute(ids[keep], vecs[keep], q, 5)
    if factory == "HNSW16":
        assert (got[:, 0] == ref_i[:, 0]).mean() >= 0.9
    else:
        np.testing.assert_array_equal(got, ref_i)
    assert index.ntotal == keep.sum()
    np.testing.assert_array_equal(index.ids(), ids[keep])


def test_build_aside_applies_concurrent_changes(data) -> None:
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, nprobe=4096))
    index.add(ids[:2000], vecs[:2000])
    t = threading.Thread(target=index.build)
    t.start()
    for s in range(2000, 3000, 100):  # writes while the build runs aside
        index.add(ids[s : s + 100], vecs[s : s + 100])
    index.remove(ids[:50])
    t.join()
    index.remove(ids[50:60])
    assert index.kind.startswith("IVF")
    _, got = index.search(q, 5)
    _, ref_i = brute(ids[60:], vecs[60:], q, 5)
    np.testing.assert_array_equal(got, ref_i)


@pytest.mark.parametrize("ann", [False, True])
def test_snapshot_round_trip(tmp_path, data, ann: bool) -> None:
    ids, vecs, q = data
    cfg = IndexConfig(ann_threshold=1000 if ann else 10**6, nprobe=4096)
    index = VectorIndex(DIM, cfg)
    index.add(ids, vecs, seq=41)
    if ann:
        index.build()
    index.remove(ids[:5], seq=42)
    path = tmp_path / "c.lfidx"
    index.save(path, meta={"incarnation": "x"})
    assert not list(tmp_path.glob("*.tmp-*"))
    loaded, meta = VectorIndex.load(path, cfg)
    assert meta == {"incarnation": "x"} and loaded.applied_seq == 42 and loaded.kind == index.kind
    (s1, i1), (s2, i2) = loaded.search(q, 7), index.search(q, 7)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)  # BLAS may sum in another order on the mapped table
    # The loaded table is a map of the file: changing it must not touch the snapshot.
    before = path.read_bytes()
    loaded.add(np.array([5000]), q[:1])
    loaded.remove(ids[5:10])
    assert path.read_bytes() == before
    s, got = loaded.search(q[:1], 1)
    assert got[0, 0] == 5000 and s[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_out_of_order_and_duplicate_adds(data) -> None:
    ids, vecs, _ = data
    index = VectorIndex(DIM)
    index.add(ids[100:200], vecs[100:200])
    index.add(ids[:100], vecs[:100])  # older ids later: kept sorted
    index.add(ids[:10], vecs[:10])  # already present: skipped
    np.testing.assert_array_equal(index.ids(), ids[:200])
    np.testing.assert_allclose(index.vectors(ids[[0, 150]]), vecs[[0, 150]])


def test_invalid_inputs(tmp_path) -> None:
    index = VectorIndex(4)
    with pytest.raises(InvalidInput):
        index.add(np.array([1]), np.ones((1, 5), np.float32))
    with pytest.raises(InvalidInput):
        index.search(np.full((1, 4), np.nan), 1)
    with pytest.raises(InvalidInput):
        index.search(np.ones((1, 4)), 0)
    bad = VectorIndex(4, IndexConfig(ann_threshold=1, ann_factory="NoSuchIndex"))
    bad.add(np.arange(3), np.eye(4, dtype=np.float32)[:3])
    with pytest.raises(InvalidInput):
        bad.build()
    junk = tmp_path / "junk.lfidx"
    junk.write_bytes(b"not a snapshot")
    with pytest.raises(StorageError):
        VectorIndex.load(junk)


@pytest.mark.parametrize("factory", ["IVF{nlist},Flat", "HNSW16"])
def test_a_loaded_snapshot_searches_as_wide_as_the_current_config(tmp_path, data, factory: str) -> None:
    ids, vecs, _ = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, ann_factory=factory, nprobe=4, rerank_k=16))
    index.add(ids, vecs)
    index.build()
    index.save(tmp_path / "c.lfidx", meta={})
    loaded, _ = VectorIndex.load(tmp_path / "c.lfidx", IndexConfig(ann_factory=factory, nprobe=32, rerank_k=100))
    ann = loaded._ann
    if factory.startswith("IVF"):
        assert faiss.extract_index_ivf(ann).nprobe == 32
    else:
        assert faiss.downcast_index(ann.index).hnsw.efSearch == 200  # 2 x rerank_k, not the saved 64
