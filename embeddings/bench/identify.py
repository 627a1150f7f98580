"""Benchmark part ``identify``: a synthetic gallery through the real Gallery (SQLite + FAISS).

Bulk-enrolls ``gallery_size`` synthetic faces (5 per identity) in large transactions, builds the
ANN index, snapshots, then times 1:N identification of held-out noisy faces of enrolled identities
and compares each top-1 face with the exact brute-force top-1 (computed chunk by chunk during
enrollment). The exact scan of the same index (every stored vector, the baseline ANN must beat)
is timed on a few of the same queries in the same run, so the speed-up holds on any machine;
``identify_cpu_*`` are the calling thread's CPU times, which a busy machine inflates less than
wall times (``load_avg_1m`` says how busy it was). ``restart_s`` is the time for a fresh Gallery to
open the data directory and answer a query. The same recall is measured on an isotropic gallery (the hard case for IVF), capped at
``_ISOTROPIC_CAP`` faces to bound time and memory; ``identify_isotropic_size`` says how many.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embeddings.config import GalleryConfig, IndexConfig
from embeddings.gallery import Gallery
from embeddings.match import identify
from embeddings.synthetic.gallery import iter_identity_embeddings, noisy_faces

if TYPE_CHECKING:
    from embeddings.bench import BenchOptions

__all__ = ["run"]

_DIM = 512
_FACES_PER_ID = 5
_QUERIES = 200
_MODEL = "synthetic"
_ISOTROPIC_CAP = 200_000
_EXACT_QUERIES = 10  # the exact scan of 1M faces takes ~0.1-0.3 s a query
# Snapshot during the enroll once this many faces are held only in memory, as a server's upkeep
# would: the snapshot's map then serves them, so a 10M gallery (20 GB of floats) fits in 24 GB.
_MEMORY_FACES = 5_000_000


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_now_mb() -> dict[str, float]:
    """This process's resident memory now: anonymous (its own) and file-backed (mapped snapshots,
    which the kernel may drop and re-read), from /proc (empty elsewhere)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = {k: v for k, _, v in (line.partition(":") for line in lines)}
    return {k: round(int(fields[f].split()[0]) / 1024.0, 1) for k, f in (("anon", "RssAnon"), ("file", "RssFile"))}


def _load(
    data_dir: Path, n: int, spectrum: str, seed: int, queries: np.ndarray
) -> tuple[Gallery, GalleryConfig, dict[str, float], np.ndarray]:
    """Create a gallery of ``n`` faces; returns it, its config, timings and the brute-force top-1 face ids."""
    shutil.rmtree(data_dir, ignore_errors=True)
    cfg = GalleryConfig(data_dir=data_dir, index=IndexConfig())
    g = Gallery.open(cfg, background=False)
    g.create_collection("bench")
    best_score = np.full(len(queries), -np.inf, np.float32)
    best_id = np.full(len(queries), -1, np.int64)
    enroll_s = snap_during_s = 0.0
    in_memory = 0
    chunks = iter_identity_embeddings(
        n, faces_per_identity=_FACES_PER_ID, dim=_DIM, spectrum=spectrum, seed=seed
    )
    for vecs, ident in chunks:
        subjects = [f"id{i}" for i in ident.tolist()]
        t = time.perf_counter()
        ids = g.bulk_enroll("bench", subjects, vecs, model_id=_MODEL, maintain=False)
        enroll_s += time.perf_counter() - t
        in_memory += len(ids)
        if in_memory >= _MEMORY_FACES:
            t = time.perf_counter()
            g.snapshot()
            snap_during_s += time.perf_counter() - t
            in_memory = 0
        # Exact reference, chunk by chunk: the best face of the whole gallery per query.
        sim = queries @ vecs.T
        arg = sim.argmax(axis=1)
        top = sim[np.arange(len(queries)), arg]
        better = top > best_score
        best_score[better], best_id[better] = top[better], ids[arg[better]]
    t = time.perf_counter()
    kind = g.build_index("bench")
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    g.snapshot()
    snap_s = time.perf_counter() - t
    timings = {
        "enroll_s": enroll_s,
        "snapshots_during_enroll_s": snap_during_s,
        "build_s": build_s,
        "snapshot_s": snap_s,
        "kind": kind,
        "rss": _rss_now_mb(),
    }
    return g, cfg, timings, best_id


def _measure(g: Gallery, queries: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(wall ms, thread CPU ms, recall@1) of one identify per query."""
    lat, cpu = np.empty(len(queries)), np.empty(len(queries))
    hits = 0
    for i, q in enumerate(queries):
        c = time.thread_time()
        t = time.perf_counter()
        cands = identify(g, "bench", q, _MODEL, k=5)
        lat[i] = time.perf_counter() - t
        cpu[i] = time.thread_time() - c
        hits += bool(cands) and int(cands[0].face_id) == int(truth[i])
    return lat * 1000.0, cpu * 1000.0, hits / len(queries)


def _exact_scan_ms(g: Gallery, queries: np.ndarray) -> np.ndarray:
    """Wall ms of the exact scan (every stored vector of the same index) for each query, top 20."""
    index = g._state("bench").index  # the embedded index itself: the baseline the ANN path replaces
    assert index is not None
    lat = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        index.search_exact(q, 20)
        lat[i] = time.perf_counter() - t
    return lat * 1000.0


def run(options: BenchOptions) -> dict[str, Any]:
    """Identify figures for a synthetic gallery of ``options.gallery_size`` faces (20k when quick)."""
    n = min(options.gallery_size, 20_000) if options.quick else options.gallery_size
    work = Path(options.work_dir) / "identify"
    rng = np.random.default_rng([options.seed, 5])
    n_ids = max(1, n // _FACES_PER_ID)
    who = rng.integers(0, n_ids, _QUERIES)

    queries = noisy_faces(who, dim=_DIM, spectrum="powerlaw", seed=options.seed, noise_seed=77)
    g, cfg, t, truth = _load(work / "powerlaw", n, "powerlaw", options.seed, queries)
    load_avg = os.getloadavg()[0]
    identify(g, "bench", queries[0], _MODEL, k=5)  # warm-up
    lat, cpu, recall = _measure(g, queries, truth)
    exact = _exact_scan_ms(g, queries[:_EXACT_QUERIES])
    # The ANN path again, on the same few queries right after the exact scan, for a same-moment ratio.
    lat_same, _, _ = _measure(g, queries[:_EXACT_QUERIES], truth[:_EXACT_QUERIES])
    g.close(snapshot=False)

    start = time.perf_counter()
    g = Gallery.open(cfg, background=False)
    g.search("bench", queries[:1], 1)
    restart_s = time.perf_counter() - start
    _measure(g, queries, truth)
    rss_restarted = _rss_now_mb()
    g.close(snapshot=False)
    shutil.rmtree(work / "powerlaw", ignore_errors=True)

    n_iso = min(n, _ISOTROPIC_CAP)
    who_iso = who % max(1, n_iso // _FACES_PER_ID)
    q_iso = noisy_faces(who_iso, dim=_DIM, spectrum="isotropic", seed=options.seed, noise_seed=78)
    g, _, t_iso, truth_iso = _load(work / "isotropic", n_iso, "isotropic", options.seed, q_iso)
    _, _, recall_iso = _measure(g, q_iso, truth_iso)
    g.close(snapshot=False)
    shutil.rmtree(work / "isotropic", ignore_errors=True)

    return {
        "gallery_size": n,
        "index_kind": t["kind"],
        "index_build_s": round(t["build_s"], 2),
        "index_snapshot_s": round(t["snapshot_s"], 2),
        "snapshots_during_enroll_s": round(t["snapshots_during_enroll_s"], 2),
        "identify_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "identify_p99_ms": round(float(np.percentile(lat, 99)), 3),
        "identify_cpu_p50_ms": round(float(np.percentile(cpu, 50)), 3),
        "identify_cpu_p99_ms": round(float(np.percentile(cpu, 99)), 3),
        "exact_scan_p50_ms": round(float(np.median(exact)), 2),
        "identify_speedup_vs_exact": round(float(np.median(exact) / max(np.median(lat_same), 1e-9)), 1),
        "load_avg_1m": round(load_avg, 2),
        "identify_recall_at_1": recall,
        "identify_recall_at_1_isotropic": recall_iso,
        "identify_isotropic_size": n_iso,
        "identify_isotropic_index_kind": t_iso["kind"],
        "restart_s": round(restart_s, 2),
        "enroll_rate_per_s": round(n / max(t["enroll_s"], 1e-9), 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        # Resident memory once snapshotted, and after a restart and the 200 queries: the floats are
        # served from the snapshot's map (file-backed), the process holds the codes and the ids.
        "rss_after_snapshot_mb": t["rss"],
        "rss_after_restart_mb": rss_restarted,
    }
