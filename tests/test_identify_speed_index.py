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
FACTORIES = ["IVF{nlist},SQ8", "IVF{nlist}_HNSW16,SQ8"]


def brute(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sim = q.astype(np.float64) @ vecs.astype(np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, order, axis=1), ids[order]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vecs, _ = identity_embeddings(4000, faces_per_identity=5, dim=DIM, seed=11)
    queries = noisy_faces(np.arange(0, 800, 9), dim=DIM, seed=11, noise_seed=4)
    return np.arange(100, 4100, dtype=np.int64), vecs, queries


def test_default_index_keeps_one_byte_codes_not_a_second_float_copy(data) -> None:
    ids, vecs, _ = data
    index = VectorIndex(DIM, IndexConfig(ann_threshold=1000))
    index.add(ids, vecs)
    index.build()
    assert index.kind.endswith(",SQ8")
    ann_bytes = faiss.serialize_index(index._ann).nbytes
    codes = len(ids) * DIM  # one byte a dimension
    assert codes <= ann_bytes < codes + 8 * len(ids) + 4 * DIM * 64 * 3  # + ids, centroids, trainer state
    assert ann_bytes < 0.5 * vecs.nbytes


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
        assert g.build_index("c").endswith(",SQ8")
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
