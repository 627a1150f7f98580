"""The fast identify path (#14): compressed codes in the index, exact re-rank, bounded search threads.

Correctness only (no timing): every answer is compared with a brute-force numpy reference.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from embeddings.config import GalleryConfig, IndexConfig
from embeddings.gallery import Gallery
from embeddings.index import VectorIndex
from embeddings.match import identify
from embeddings.synthetic.gallery import identity_embeddings, noisy_faces

DIM = 64
FACTORIES = ["IVF{nlist},PQ{pq}x4fs", "IVF{nlist},SQ8", "IVF{nlist}_HNSW16,SQ8"]


def brute(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sim = q.astype(np.float64) @ vecs.astype(np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, order, axis=1), ids[order]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vecs, _ = identity_embeddings(4000, faces_per_identity=5, dim=DIM, seed=11)
    queries = noisy_faces(np.arange(0, 800, 9), dim=DIM, seed=11, noise_seed=4)
    return np.arange(100, 4100, dtype=np.int64), vecs, queries


def test_fast_scan_codes_are_small_and_not_a_second_float_copy(data) -> None:
    from embeddings.index import pq_for

    ids, vecs, _ = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, ann_factory="IVF{nlist},PQ{pq}x4fs"))
    index.add(ids, vecs)
    index.build()
    assert index.kind == f"IVF64,PQ{pq_for(DIM)}x4fs"
    ann_bytes = faiss.serialize_index(index._ann).nbytes
    codes = len(ids) * pq_for(DIM) // 2  # 4 bits a sub-vector
    centroids = 4 * DIM * (64 + 16 * pq_for(DIM))  # coarse centroids and PQ codebooks
    assert codes <= ann_bytes < codes + 8 * len(ids) + centroids + 64 * 32 * pq_for(DIM)  # + ids, block padding
    assert ann_bytes < 0.35 * vecs.nbytes


@pytest.mark.parametrize("factory", FACTORIES)
def test_exhaustive_probe_with_rerank_equals_brute_force(data, factory: str) -> None:
    # Every list probed and the re-rank wide enough: the codes only propose, the floats decide.
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, ann_factory=factory, nprobe=4096, rerank_k=64))
    index.add(ids, vecs)
    index.build()
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index._ann).quantizer)
    if "HNSW" in factory:  # the coarse HNSW must look at every list too
        quantizer.hnsw.efSearch = 4096
    scores, got = index.search(q, 5)
    ref_s, ref_i = brute(ids, vecs, q, 5)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


@pytest.mark.parametrize("factory", FACTORIES)
def test_default_breadth_recall_and_exact_scores(data, factory: str) -> None:
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, ann_factory=factory))
    index.add(ids, vecs)
    index.build()
    scores, got = index.search(q, 5)
    _, ref_i = brute(ids, vecs, q, 1)
    assert (got[:, 0] == ref_i[:, 0]).mean() >= 0.97
    lookup = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    exact = np.array([[vecs[lookup[i]] @ qq for i in row] for row, qq in zip(got, q, strict=True)])
    np.testing.assert_allclose(scores, exact, atol=1e-5)  # returned scores are the float cosines


@pytest.mark.parametrize("factory", FACTORIES)
def test_deletes_and_snapshot_round_trip(tmp_path, data, factory: str) -> None:
    ids, vecs, q = data
    cfg = IndexConfig(ann_threshold=1000, ann_factory=factory, nprobe=4096, rerank_k=64)
    index = VectorIndex(DIM, cfg)
    index.add(ids, vecs, seq=3)
    index.build()
    _, first = brute(ids, vecs, q, 2)
    gone = np.unique(first.ravel())
    index.remove(gone, seq=4)
    index.save(tmp_path / "c.lfidx", meta={})
    loaded, _ = VectorIndex.load(tmp_path / "c.lfidx", cfg)
    keep = ~np.isin(ids, gone)
    for idx in (index, loaded):
        if "HNSW" in factory:
            faiss.downcast_index(faiss.extract_index_ivf(idx._ann).quantizer).hnsw.efSearch = 4096
        scores, got = idx.search(q, 5)
        assert not np.isin(got, gone).any()
        ref_s, ref_i = brute(ids[keep], vecs[keep], q, 5)
        np.testing.assert_array_equal(got, ref_i)
        np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_search_exact_is_brute_force_whatever_the_ann(data) -> None:
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, nprobe=1, rerank_k=1))
    index.add(ids, vecs)
    index.build()
    index.remove(ids[::7])
    keep = np.ones(len(ids), bool)
    keep[::7] = False
    scores, got = index.search_exact(q, 10)
    ref_s, ref_i = brute(ids[keep], vecs[keep], q, 10)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_train_iterations_reach_the_ivf(data) -> None:
    ids, vecs, _ = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, train_iterations=3))
    index.add(ids, vecs)
    index.build()
    assert faiss.extract_index_ivf(index._ann).cp.niter == 3


@pytest.mark.parametrize("threads", [0, 1])
def test_bounded_search_threads_same_answers_and_the_callers_setting_kept(data, threads: int) -> None:
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000, search_threads=threads))
    index.add(ids, vecs)
    index.build()
    reference = VectorIndex(DIM, IndexConfig(ann_threshold=1000, search_threads=0))
    reference.add(ids, vecs)
    reference.build()
    seen: list[int] = []

    def one_by_one() -> None:
        faiss.omp_set_num_threads(2)
        for i in range(len(q)):
            s, got = index.search(q[i], 5)
            rs, ri = reference.search(q[i], 5)
            np.testing.assert_array_equal(got, ri)
            np.testing.assert_allclose(s, rs, atol=1e-6)
        seen.append(faiss.omp_get_max_threads())

    t = threading.Thread(target=one_by_one)
    t.start()
    t.join()
    assert seen == [2]  # the search restored the thread's OpenMP setting


def test_identify_through_the_gallery_matches_brute_force_subjects(tmp_path, data) -> None:
    _, vecs, q = data
    subjects = [f"s{i // 5}" for i in range(len(vecs))]
    cfg = GalleryConfig(data_dir=tmp_path, index=IndexConfig(ann_threshold=1000, nprobe=4096, rerank_k=64))
    with Gallery.open(cfg, background=False) as g:
        g.create_collection("c")
        face_ids = g.bulk_enroll("c", subjects, vecs, model_id="m", maintain=False)
        assert g.build_index("c").endswith("x4fs")  # the default: fast-scan, deletes as tombstones
        g.delete_subject("c", "s3")
        keep = np.array([s != "s3" for s in subjects])
        for qq in q[:40]:
            got = identify(g, "c", qq, "m", k=3)
            sim = vecs[keep] @ qq
            order = np.argsort(-sim, kind="stable")
            ref: list[tuple[str, int, float]] = []
            for r in order:
                s = np.asarray(subjects)[keep][r]
                if s not in {x[0] for x in ref}:
                    ref.append((s, int(face_ids[keep][r]), float(sim[r])))
                if len(ref) == 3:
                    break
            assert [(c.subject_id, int(c.face_id)) for c in got] == [(s, f) for s, f, _ in ref]
            np.testing.assert_allclose([c.score for c in got], [sc for _, _, sc in ref], atol=1e-5)


def _check_all(index: VectorIndex, ids: np.ndarray, vecs: np.ndarray, q: np.ndarray) -> None:
    scores, got = index.search_exact(q, 5)
    ref_s, ref_i = brute(ids, vecs, q, 5)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    np.testing.assert_array_equal(index.ids(), ids)
    np.testing.assert_allclose(index.vectors(ids), vecs, atol=1e-7)  # the gallery re-normalises


@pytest.mark.parametrize("ann", [False, True])
def test_enroll_after_load_keeps_the_mapped_vectors_and_answers_exactly(tmp_path, data, ann: bool) -> None:
    ids, vecs, q = data
    cfg = IndexConfig(ann_threshold=1000 if ann else 10**6, nprobe=4096, rerank_k=64)
    index = VectorIndex(DIM, cfg)
    index.add(ids[:3000], vecs[:3000])
    if ann:
        index.build()
    index.save(tmp_path / "c.lfidx")
    loaded, _ = VectorIndex.load(tmp_path / "c.lfidx", cfg)
    base = loaded._base
    assert isinstance(base, np.memmap) and len(base) == 3000
    for s in range(3000, 4000, 250):  # appends land in the tail; the map is not copied
        loaded.add(ids[s : s + 250], vecs[s : s + 250])
    assert loaded._base is base and len(loaded._vecs) < 3000
    gone = ids[2990:3010]  # both sides of the segment boundary
    loaded.remove(gone)
    keep = ~np.isin(ids, gone)
    _check_all(loaded, ids[keep], vecs[keep], q)
    scores, got = loaded.search(q, 5)
    ref_s, ref_i = brute(ids[keep], vecs[keep], q, 5)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    if ann:  # a rebuild reads both segments
        loaded.build()
        np.testing.assert_array_equal(loaded.search(q, 5)[1], ref_i)
    loaded.save(tmp_path / "d.lfidx")  # a snapshot of a two-segment table
    again, _ = VectorIndex.load(tmp_path / "d.lfidx", cfg)
    _check_all(again, ids[keep], vecs[keep], q)


def test_a_snapshot_moves_the_vectors_to_its_map_and_later_changes_stay_exact(tmp_path, data) -> None:
    ids, vecs, q = data
    subjects = [f"s{i // 5}" for i in range(len(vecs))]
    cfg = GalleryConfig(data_dir=tmp_path, index=IndexConfig(ann_threshold=1000, nprobe=4096, rerank_k=64))
    with Gallery.open(cfg, background=False) as g:
        g.create_collection("c")
        fids = g.bulk_enroll("c", subjects[:3000], vecs[:3000], model_id="m", maintain=False)
        g.build_index("c")
        g.snapshot("c")
        index = g._state("c").index
        assert isinstance(index._base, np.memmap) and len(index._base) == 3000
        assert len(index._vecs) < 3000  # the memory copy is gone
        more = g.bulk_enroll("c", subjects[3000:], vecs[3000:], model_id="m", maintain=False)
        all_ids = np.concatenate([fids, more])
        gone = g.delete_subject("c", "s599") + g.delete_subject("c", "s600")  # faces 2995..3004
        keep = ~np.isin(all_ids, gone)
        _check_all(index, all_ids[keep], vecs[keep], q)
        g.snapshot("c")  # deleted rows in the copy: the file's rows are not the table's, no remap
        _check_all(index, all_ids[keep], vecs[keep], q)
        doomed = all_ids[keep][: int(keep.sum() * 0.3)]  # past a quarter dead: a compaction renumbers rows
        for subject in sorted({subjects[i] for i in np.flatnonzero(np.isin(all_ids, doomed))}):
            g.delete_subject("c", subject)
        keep = np.isin(all_ids, g.face_ids("c")[0])  # what the store still holds
        assert index._layout > 0 and not len(index._base)  # compacted into memory
        _check_all(index, all_ids[keep], vecs[keep], q)
        g.snapshot("c")
        hits = g.search("c", q, 3)
    with Gallery.open(cfg, background=False) as g:
        assert [[h.face_id for h in row] for row in g.search("c", q, 3)] == [[h.face_id for h in row] for row in hits]
        _check_all(g._state("c").index, all_ids[keep], vecs[keep], q)


def test_new_stores_use_16k_pages_and_old_4k_ones_keep_working(tmp_path) -> None:
    import sqlite3

    from embeddings.store import GalleryStore

    vecs = np.random.default_rng(1).standard_normal((50, DIM)).astype(np.float32)
    old = tmp_path / "old.sqlite3"
    c = sqlite3.connect(old)
    c.execute("PRAGMA page_size=4096")
    c.execute("PRAGMA journal_mode=WAL")  # what an older version made: 4 KB pages, WAL
    c.close()
    for path, page in ((tmp_path / "new.sqlite3", 16384), (old, 4096)):
        store = GalleryStore(path)
        store.create_collection("c", threshold=0.5)
        result, _ = store.add_faces("c", ["a"] * 50, vecs, model_id="m")
        got = np.concatenate([v for _, v in store.iter_vectors("c")])
        np.testing.assert_array_equal(got, vecs)
        assert store.subjects_of("c", list(result.face_ids)) == dict.fromkeys(result.face_ids, "a")
        store.close()
        c = sqlite3.connect(path)
        assert c.execute("PRAGMA page_size").fetchone()[0] == page
        c.close()


def test_pq_placeholder_follows_the_dimension_and_fast_scan_codes_answer_exactly(data) -> None:
    from embeddings.index import pq_for

    assert (pq_for(512), pq_for(128), pq_for(64), pq_for(100), pq_for(3)) == (64, 32, 32, 25, 3)
    ids, vecs, q = data
    index = VectorIndex(
        DIM, IndexConfig(ann_threshold=1000, ann_factory="IVF{nlist},PQ{pq}x4fs", nprobe=4096, rerank_k=400)
    )
    index.add(ids, vecs)
    index.build()
    assert index.kind == "IVF64,PQ32x4fs"
    index.remove(ids[:40])  # tombstones: FAISS fast-scan lists lose vectors added after a remove
    index.add(np.array([9000]), q[:1])
    assert index._ann_tombstones == 40
    s1, got1 = index.search(q[:1], 1)
    assert got1[0, 0] == 9000 and s1[0, 0] == pytest.approx(1.0, abs=1e-5)
    index.remove(np.array([9000]))
    scores, got = index.search(q, 3)
    ref_s, ref_i = brute(ids[40:], vecs[40:], q, 3)
    assert (got[:, 0] == ref_i[:, 0]).mean() >= 0.97
    lookup = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    exact = np.array([[vecs[lookup[i]] @ qq for i in row] for row, qq in zip(got, q, strict=True)])
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert not np.isin(got, ids[:40]).any()


def test_tombstones_are_skipped_inside_the_scan_not_in_the_rerank(tmp_path, data) -> None:
    """The default fast-scan index keeps deletes as tombstones; the search skips them inside FAISS's
    scan, so even when every query's 20 nearest faces are deleted, a re-rank of only 8 candidates
    still has 8 live ones to rank (dead candidates would leave it nothing: -1 padding) and its best
    is within the 4-bit codes' ranking error (measured ≤ 0.019) of the live best."""
    ids, vecs, q = data
    cfg = IndexConfig(ann_threshold=1000, nprobe=4096, rerank_k=8)
    index = VectorIndex(DIM, cfg)
    index.add(ids, vecs)
    index.build()
    assert index.kind.endswith("x4fs") and not index._ann_removable
    _, near = brute(ids, vecs, q, 20)
    gone = np.unique(near.ravel())
    index.remove(gone)
    assert index._ann_tombstones == len(gone) and index._ann.ntotal == len(ids)  # still in FAISS
    keep = ~np.isin(ids, gone)
    ref_s, ref = brute(ids[keep], vecs[keep], q, 1)
    index.save(tmp_path / "c.lfidx", meta={})
    loaded, _ = VectorIndex.load(tmp_path / "c.lfidx", cfg)
    assert loaded._ann_tombstones == len(gone)
    for idx in (index, loaded):
        scores, got = idx.search(q, 5)
        assert not np.isin(got, gone).any() and (got >= 0).all()
        assert (scores[:, 0] >= ref_s[:, 0] - 0.03).all() and (got[:, 0] == ref[:, 0]).mean() >= 0.4
        lookup = dict(zip(ids.tolist(), vecs, strict=True))
        exact = np.array([[lookup[i] @ qq for i in row] for row, qq in zip(got, q, strict=True)])
        np.testing.assert_allclose(scores, exact, atol=1e-5)
    # A deleted id added back (a replay) is in FAISS twice now: it is still answered once.
    again = gone[:1]
    loaded.add(again, vecs[ids == again[0]])
    _, got = loaded.search(vecs[ids == again[0]], 5)
    assert got[0, 0] == again[0] and (got[0] == again[0]).sum() == 1
    # Ids past the live-id bitmap's first size grow it; the new face is found, not skipped.
    big = np.array([10_000_000], np.int64)
    loaded.add(big, q[:1])
    assert loaded.search(q[:1], 1)[1][0, 0] == big[0]


def test_the_vector_table_grows_by_blocks_without_copying_what_is_there(tmp_path, data, monkeypatch) -> None:
    """Enrolls append blocks to the table's owned tail: rows already there stay in the same arrays
    (no grow-and-copy, which at 1M faces was the peak of memory), and reads, the exact scan, the
    ANN re-rank and a snapshot see every row across the blocks."""
    import embeddings.index as index_mod

    monkeypatch.setattr(index_mod, "_TAIL_BLOCK", 1024)
    ids, vecs, q = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=10**6))
    rng = np.random.default_rng(2)
    cuts = np.sort(rng.choice(np.arange(1, len(ids)), 12, replace=False))
    first_block = None
    for part_ids, part in zip(np.split(ids, cuts), np.split(vecs, cuts), strict=True):
        index.add(part_ids, part)
        first_block = first_block if first_block is not None else index._vecs.blocks[0]
    assert index._vecs.blocks[0] is first_block and len(index._vecs.blocks) >= 4
    assert all(len(b) <= 1024 for b in index._vecs.blocks)
    pick = rng.choice(ids, 500, replace=False)
    np.testing.assert_array_equal(index.vectors(pick), vecs[pick - 100])
    scores, got = index.search(q, 5)
    ref_s, ref_i = brute(ids, vecs, q, 5)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    index.save(tmp_path / "c.lfidx", meta={})
    loaded, _ = VectorIndex.load(tmp_path / "c.lfidx")
    np.testing.assert_array_equal(np.asarray(loaded._base), vecs)
