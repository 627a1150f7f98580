"""Benchmark part ``scaleout``: the PostgreSQL + Milvus gallery against the embedded one, one replica vs two.

Starts a throwaway PostgreSQL cluster and a ``milvus-lite server`` on this machine
(:mod:`embeddings.bench.services`), loads the same synthetic gallery (``gallery_size`` faces, 5 per
identity, 128-d as dlib-resnet's) into the embedded gallery (SQLite + FAISS) and into
:class:`~embeddings.backends.pg_milvus.PgMilvusGallery`, and reports for each the bulk enroll rate
and 1:N identify p50/p99 (one caller, through :func:`embeddings.match.identify`), then the identify
throughput of one and of two replica processes on the shared PostgreSQL + Milvus (each replica
process calls back to back). Everything runs on this one machine, so two replicas share its cores
with PostgreSQL and Milvus: the replica figure shows the cost of coordination, not a cluster's scaling.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embeddings.config import GalleryConfig, IndexConfig
from embeddings.match import identify
from embeddings.synthetic.gallery import iter_identity_embeddings, noisy_faces

if TYPE_CHECKING:
    from embeddings.bench import BenchOptions

__all__ = ["run"]

_DIM = 128
_FACES_PER_ID = 5
_QUERIES = 200
_MODEL = "synthetic"
_REPLICA_S = 8.0


def _load(gallery: Any, n: int, seed: int) -> float:
    gallery.create_collection("bench")
    enroll_s = 0.0
    for vecs, ident in iter_identity_embeddings(n, faces_per_identity=_FACES_PER_ID, dim=_DIM, seed=seed):
        subjects = [f"id{i}" for i in ident.tolist()]
        t = time.perf_counter()
        gallery.bulk_enroll("bench", subjects, vecs, model_id=_MODEL, maintain=False)
        enroll_s += time.perf_counter() - t
    return enroll_s


def _latencies(gallery: Any, queries: np.ndarray) -> np.ndarray:
    identify(gallery, "bench", queries[0], _MODEL, k=5)  # warm-up
    lat = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        identify(gallery, "bench", q, _MODEL, k=5)
        lat[i] = time.perf_counter() - t
    return lat * 1000.0


def _replica(dsn: str, uri: str, queries: np.ndarray, start_at: float, seconds: float, out: Any) -> None:
    from embeddings.backends.pg_milvus import PgMilvusGallery

    g = PgMilvusGallery.open(GalleryConfig(data_dir=Path("."), index=IndexConfig()), store=dsn, vectors=uri,
                             background=False, pool_size=2)
    try:
        identify(g, "bench", queries[0], _MODEL, k=5)
        while time.time() < start_at:
            time.sleep(0.01)
        done, i = 0, 0
        while time.time() < start_at + seconds:
            identify(g, "bench", queries[i % len(queries)], _MODEL, k=5)
            done, i = done + 1, i + 1
        out.put(done)
    finally:
        g.close()


def _throughput(dsn: str, uri: str, queries: np.ndarray, replicas: int) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 15.0  # every replica connected and warm before the clock starts
    procs = [
        ctx.Process(target=_replica, args=(dsn, uri, queries, start_at, _REPLICA_S, out)) for _ in range(replicas)
    ]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    return total / _REPLICA_S


def run(options: BenchOptions) -> dict[str, Any]:
    """Scale-out figures at ``options.gallery_size`` faces (10k when quick)."""
    from embeddings.backends.pg_milvus import PgMilvusGallery
    from embeddings.bench import services
    from embeddings.gallery import Gallery

    n = min(options.gallery_size, 10_000) if options.quick else options.gallery_size
    work = Path(options.work_dir) / "scaleout"
    shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng([options.seed, 13])
    queries = noisy_faces(rng.integers(0, max(1, n // _FACES_PER_ID), _QUERIES), dim=_DIM, seed=options.seed)
    config = GalleryConfig(data_dir=work / "embedded", index=IndexConfig())
    result: dict[str, Any] = {"scaleout_gallery_size": n, "scaleout_dim": _DIM}

    g = Gallery.open(config, background=False)
    try:
        enroll_s = _load(g, n, options.seed)
        g.build_index("bench")
        lat = _latencies(g, queries)
    finally:
        g.close(snapshot=False)
    result.update(
        scaleout_embedded_enroll_per_s=round(n / enroll_s, 1),
        scaleout_embedded_identify_p50_ms=round(float(np.percentile(lat, 50)), 3),
        scaleout_embedded_identify_p99_ms=round(float(np.percentile(lat, 99)), 3),
    )

    dsn = services.postgres().create_database()
    uri = services.milvus().uri
    g = PgMilvusGallery.open(GalleryConfig(data_dir=work / "pg", index=IndexConfig()), store=dsn, vectors=uri,
                             background=False)
    try:
        enroll_s = _load(g, n, options.seed)
        t = time.perf_counter()
        g.build_index("bench")
        build_s = time.perf_counter() - t
        lat = _latencies(g, queries)
        kind = g.collection_stats("bench").index_kind
    finally:
        g.close()
    result.update(
        scaleout_pg_milvus_index=kind,
        scaleout_pg_milvus_enroll_per_s=round(n / enroll_s, 1),
        scaleout_pg_milvus_flush_s=round(build_s, 2),
        scaleout_pg_milvus_identify_p50_ms=round(float(np.percentile(lat, 50)), 3),
        scaleout_pg_milvus_identify_p99_ms=round(float(np.percentile(lat, 99)), 3),
        scaleout_one_replica_identify_per_s=round(_throughput(dsn, uri, queries, 1), 1),
        scaleout_two_replicas_identify_per_s=round(_throughput(dsn, uri, queries, 2), 1),
    )
    shutil.rmtree(work, ignore_errors=True)
    return result
