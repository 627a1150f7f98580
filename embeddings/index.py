"""One collection's vector index: exact while small, ANN past a size threshold, always exact scores.

The index keeps every live vector in an in-memory float32 table sorted by face id (ids are
handed out in increasing order by the store, so appends keep it sorted). That table is the
exact search while the collection is small (a BLAS matrix product: what ``IndexFlatIP``
computes, without a second copy of the vectors) and the re-rank source once an ANN index
(a FAISS factory string, ``IVF{nlist},SQ8`` by default: 1-byte codes, a quarter of the
floats) proposes candidates, so returned scores are always exact cosines of L2-normalised
vectors and the floats are held once.

Deletes flip a live bit in the table and call ``remove_ids`` on the ANN index; where the
ANN index cannot remove (HNSW, and IVF fast-scan, whose FAISS 1.15 lists lose vectors added
after a ``remove_ids``) the id stays there as a tombstone: the search then passes FAISS a
selector over a bitmap of the live ids (:class:`_LiveIds`), so tombstones are skipped inside the
scan and never take a candidate's place, and the index is rebuilt once they pile up. ANN builds run aside (from a consistent
view of the table, without holding the lock) and are swapped in after the changes made
meanwhile are applied, so searches are not blocked by a build.

Snapshots are one file: a JSON header, the ids, the vectors and the serialised ANN index,
written to a temp file, fsynced and renamed over the old one. The vector table is two
segments: a read-only base that maps a snapshot's vectors, then an owned tail for the rows
added since. Loading maps the base (only the ids, 8 bytes a row, are copied on the first
change), and once a snapshot is written the rows it holds are served from its map again
(:meth:`VectorIndex.remap`), so a running server keeps the float vectors in the page cache,
not twice in its own memory, and an enroll never copies the whole table.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embeddings.config import IndexConfig
from embeddings.errors import InvalidInput, StorageError

__all__ = ["IndexCopy", "VectorIndex", "nlist_for", "pq_for"]

_MAGIC = b"LFIDX001"
_ALIGN = 64
# Build the ANN index again when the collection has grown this much since the last build.
_REBUILD_GROWTH = 4.0
# Rebuild when this fraction of the ANN index is tombstones (indexes that cannot remove).
_TOMBSTONE_FRACTION = 0.2
# Query rows × table rows per exact-search block (bounds the temporary score matrix).
_EXACT_BLOCK = 1 << 24
# Most IVF lists an index gets (see nlist_for).
_MAX_NLIST = 4096
# Rows per block of a vector table's owned tail, once it has grown that large.
_TAIL_BLOCK = 1 << 16
# Searches of at most this many queries run on ``IndexConfig.search_threads`` OpenMP threads.
_SMALL_BATCH = 8


def pq_for(dim: int) -> int:
    """Product-quantizer sub-vectors for ``dim``: the largest divisor of ``dim`` up to
    max(dim / 8, 32) (512 → 64, 128 → 32, 64 → 32): a 4-bit code per ~8 dimensions, and never
    fewer than 32 codes (16 bytes) a vector, so small dimensions keep enough detail."""
    return max(m for m in range(1, min(dim, max(dim // 8, 32)) + 1) if dim % m == 0)


def nlist_for(n: int) -> int:
    """IVF list count for ``n`` vectors: ~4·sqrt(n) as a power of two, ≥ 39 points per list, ≤ 4096.

    Past 1M vectors the lists grow instead of multiplying: a build assigns every vector to its
    nearest list (n × nlist dot products: 16 384 lists made a 10M build take 16 minutes on 2 cores),
    the coarse search of every query is nlist dot products, and 4-bit fast-scan lists are cheap
    to scan even when long; with ``nprobe`` fixed, the share of the data probed stays 16/4096."""
    target = 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(max(n, 1)))))
    cap = 2 ** int(math.log2(max(1, n // 39))) if n >= 39 else 1
    return int(max(1, min(target, cap, _MAX_NLIST)))


class _RWLock:
    """Many readers or one writer; a waiting writer holds new readers back so it cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _as_matrix(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != dim:
        raise InvalidInput(f"{what} must have shape (n, {dim}), got {np.shape(x)}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InvalidInput(f"{what} contain NaN or infinite values")
    return a


class VectorIndex:
    """Search structure of one collection (face ids → unit vectors). Thread-safe.

    ``add`` expects L2-normalised float32 vectors (the gallery normalises them);
    ``search`` returns exact cosine scores, best first, padded with id -1 / score -inf.
    """

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        if dim < 1:
            raise InvalidInput("dim must be >= 1")
        self.dim = int(dim)
        self.config = config or IndexConfig()
        self._lock = _RWLock()
        self._build_lock = threading.Lock()
        self._ids = np.empty(0, np.int64)
        self._base = np.empty((0, self.dim), np.float32)  # rows [0, len(base)): a snapshot's map, read-only
        self._vecs = _Tail(self.dim)  # rows [len(base), _n): owned, appended to
        self._alive = np.empty(0, bool)
        self._n = 0  # rows used in the table
        self._dead = 0  # rows of the table that are deleted
        self._owned = True  # False while the ids are a read-only map of a snapshot
        self._layout = 0  # bumped whenever rows are renumbered (merge, compaction)
        self._ann: faiss.Index | None = None
        self._ann_kind = "flat"
        self._ann_removable = True
        self._ann_tombstones = 0
        self._live_ids: _LiveIds | None = None  # while the ANN index holds tombstones
        self._built_n = 0
        self.applied_seq = 0  # last store change-log seq reflected here (the gallery sets it)

    # ------------------------------------------------------------------ introspection
    @property
    def ntotal(self) -> int:
        """Live vectors."""
        return self._n - self._dead

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or the ANN factory string in use."""
        return self._ann_kind

    def ids(self) -> np.ndarray:
        """Sorted ids of the live vectors."""
        with self._lock.read():
            return self._ids[: self._n][self._alive[: self._n]].copy()

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``ids`` (KeyError-free: missing ids raise InvalidInput)."""
        with self._lock.read():
            rows, ok = self._rows_of(np.asarray(ids, np.int64))
            if not ok.all():
                raise InvalidInput("some ids are not in the index")
            return self._view(self._n).take(rows)

    def _view(self, n: int) -> _Rows:
        return _Rows(self._base, self._vecs.view(), n)

    def _rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self._n:
            return np.zeros(ids.shape, np.intp), np.zeros(ids.shape, bool)
        rows = np.minimum(np.searchsorted(self._ids[: self._n], ids), self._n - 1)
        return rows, (self._ids[rows] == ids) & self._alive[rows]

    # ------------------------------------------------------------------ mutation
    def _own_table(self, extra: int) -> None:
        """Make the table writable with room for ``extra`` more rows (amortised growth).

        New arrays, never in place (a capture or a build may hold the old ones); the mapped base
        is never copied, only the ids and the live bits; the vectors' tail grows by new blocks."""
        n, nb = self._n, len(self._base)
        need = n + extra
        if not self._owned or need > len(self._ids):
            cap = max(need, int(len(self._ids) * 1.5), 1024)
            ids = np.empty(cap, np.int64)
            alive = np.zeros(cap, bool)
            ids[:n] = self._ids[:n]
            alive[:n] = self._alive[:n]
            self._ids, self._alive, self._owned = ids, alive, True
        self._vecs.reserve(need - nb)

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, seq: int | None = None) -> None:
        """Add vectors under new ids; ids already present are skipped (replay is idempotent).

        ``seq`` is the store change-log sequence this add reflects; it is recorded atomically
        with the change so a snapshot never claims a change it does not hold.
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        vecs = _as_matrix(vectors, self.dim, "vectors")
        if len(ids) != len(vecs):
            raise InvalidInput("need one id per vector")
        if (ids < 0).any():
            raise InvalidInput("ids must be non-negative")
        with self._lock.write():
            self._add_locked(ids, vecs)
            if seq is not None:  # only once the change is in
                self.applied_seq = max(self.applied_seq, int(seq))

    def _add_locked(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if not len(ids):
            return
        _, present = self._rows_of(ids)
        if present.any():
            ids, vecs = ids[~present], vecs[~present]
            if not len(ids):
                return
        order = np.argsort(ids, kind="stable")
        ids, vecs = ids[order], vecs[order]
        if len(np.unique(ids)) != len(ids):
            raise InvalidInput("duplicate ids in one add")
        if self._n and ids[0] <= self._ids[self._n - 1]:
            self._merge(ids, vecs)
        else:
            self._own_table(len(ids))
            t = self._n - len(self._base)
            self._ids[self._n : self._n + len(ids)] = ids
            self._vecs.write(t, vecs)
            self._alive[self._n : self._n + len(ids)] = True
            self._n += len(ids)
        if self._live_ids is not None:
            self._live_ids.set(ids, True)
        if self._ann is not None:
            self._ann_add(self._ann, ids, vecs)

    def _merge(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        # Out-of-order ids (rare: a replay or a re-add of an old id): rebuild the table sorted.
        # Rows of dead ids equal to a new id are dropped so the table stays unique.
        n = self._n
        keep = self._alive[:n] | ~np.isin(self._ids[:n], ids)
        all_ids = np.concatenate([self._ids[:n][keep], ids])
        order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[order]
        self._vecs = _Tail(self.dim, [np.concatenate([self._view(n).take(np.flatnonzero(keep)), vecs])[order]])
        self._base = np.empty((0, self.dim), np.float32)
        self._alive = np.concatenate([self._alive[:n][keep], np.ones(len(ids), bool)])[order]
        self._n = len(self._ids)
        self._dead = int(self._n - self._alive.sum())
        self._owned = True
        self._layout += 1

    def remove(self, ids: np.ndarray, *, seq: int | None = None) -> int:
        """Delete ids; unknown ids are ignored. Returns how many were removed. ``seq`` as in :meth:`add`."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        with self._lock.write():
            removed = self._remove_locked(ids)
            if seq is not None:  # only once the change is in
                self.applied_seq = max(self.applied_seq, int(seq))
            return removed

    def _remove_locked(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        rows, ok = self._rows_of(ids)
        rows = rows[ok]
        if not len(rows):
            return 0
        # Only the live bits change: a snapshot-mapped table stays mapped.
        self._alive[rows] = False
        self._dead += len(rows)
        if self._live_ids is not None:
            self._live_ids.set(ids[ok], False)
        if self._ann is not None:
            self._ann_remove(self._ann, ids[ok])
        if self._dead > max(1024, self._n // 4):
            self._compact()
        return int(len(rows))

    def _compact(self) -> None:
        # New arrays, never in place: a build running aside may hold views of the old ones.
        live = self._alive[: self._n]
        self._vecs = _Tail(self.dim, [self._view(self._n).take(np.flatnonzero(live))])
        self._base = np.empty((0, self.dim), np.float32)
        self._ids = self._ids[: self._n][live].copy()
        self._alive = np.ones(len(self._ids), bool)
        self._n = len(self._ids)
        self._dead = 0
        self._owned = True  # the copies are ours even when the old table was a snapshot map
        self._layout += 1

    # ------------------------------------------------------------------ ANN plumbing
    def _new_ann(self, n: int) -> tuple[faiss.Index, str, bool]:
        factory = self.config.ann_factory.format(nlist=nlist_for(n), pq=pq_for(self.dim))
        try:
            index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InvalidInput(f"bad index factory string {factory!r}: {exc}") from exc
        if self._tune(index):
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.niter = self.config.train_iterations
            # FAISS 1.15 fast-scan lists lose vectors added after a remove_ids (measured): tombstones.
            return index, factory, not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan)
        # Indexes without ids of their own (HNSW, flat codes) get an id map; they may not remove.
        return faiss.IndexIDMap2(index), factory, False

    def _tune(self, index: faiss.Index) -> bool:
        """Apply the configured search breadth (IVF nprobe, HNSW efSearch) to ``index`` — also after a
        load, where the saved value may predate the current config. True when ``index`` is an IVF."""
        ivf, hnsw = _search_parts(index)
        if ivf is not None:
            ivf.nprobe = self.config.nprobe
            coarse = getattr(faiss.downcast_index(ivf.quantizer), "hnsw", None)
            if coarse is not None:  # an HNSW coarse quantizer must find the nprobe nearest lists
                coarse.efSearch = max(4 * self.config.nprobe, 64)
            return True
        if hnsw is not None:
            hnsw.efSearch = max(2 * self.config.rerank_k, 64)
        return False

    @staticmethod
    def _ann_add(index: faiss.Index, ids: np.ndarray, vecs: np.ndarray) -> None:
        try:
            index.add_with_ids(vecs, ids)
        except RuntimeError as exc:
            raise StorageError(f"adding to the ANN index failed: {exc}") from exc

    def _ann_remove(self, index: faiss.Index, ids: np.ndarray) -> None:
        if self._ann_removable:
            try:
                index.remove_ids(faiss.IDSelectorBatch(ids))
                return
            except RuntimeError:
                self._ann_removable = False  # this index type cannot remove: fall back to tombstones
        self._ann_tombstones += len(ids)
        if self._live_ids is None:  # the table is already without ``ids``
            self._live_ids = _LiveIds(self._ids[: self._n][self._alive[: self._n]])

    def needs_build(self) -> bool:
        """True when the policy wants an ANN (re)build: past the threshold, grown 4x, or many tombstones."""
        n = self.ntotal
        if n < self.config.ann_threshold:
            return False
        if self._ann is None:
            return True
        if n > _REBUILD_GROWTH * max(self._built_n, 1):
            return True
        return self._ann_tombstones > _TOMBSTONE_FRACTION * max(self._ann.ntotal, 1)

    def build(self, *, seed: int = 0) -> None:
        """Build the ANN index from the current vectors aside, then swap it in.

        Searches keep using the previous structure while this runs; changes made meanwhile are
        applied to the new index before the swap. Below the threshold this drops to exact mode.
        """
        with self._build_lock:
            with self._lock.read():
                n = self._n
                ids, vecs, alive = self._ids[:n], self._view(n), self._alive[:n].copy()
            rows = np.flatnonzero(alive)
            if len(rows) < self.config.ann_threshold:
                with self._lock.write():
                    self._ann, self._ann_kind, self._ann_tombstones, self._built_n = None, "flat", 0, 0
                    self._live_ids = None
                return
            index, factory, removable = self._new_ann(len(rows))
            try:
                if not index.is_trained:
                    nl = nlist_for(len(rows))
                    m = min(len(rows), max(40 * nl, 10_000))
                    sample = np.sort(np.random.default_rng(seed).choice(rows, size=m, replace=False))
                    index.train(vecs.take(sample))
                for start in range(0, len(rows), 65536):
                    r = rows[start : start + 65536]
                    index.add_with_ids(vecs.take(r), np.ascontiguousarray(ids[r]))
            except RuntimeError as exc:
                raise StorageError(f"building the ANN index {factory!r} failed: {exc}") from exc
            built_ids = ids[rows]
            with self._lock.write():
                cur = self._ids[: self._n][self._alive[: self._n]]
                added = np.setdiff1d(cur, built_ids, assume_unique=True)
                removed = np.setdiff1d(built_ids, cur, assume_unique=True)
                if len(added):
                    r, _ = self._rows_of(added)
                    self._ann_add(index, added, self._view(self._n).take(r))
                self._ann, self._ann_kind, self._ann_removable = index, factory, removable
                self._ann_tombstones, self._live_ids = 0, None
                if len(removed):
                    self._ann_remove(index, removed)
                self._built_n = len(cur)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores (Q, k) float32, ids (Q, k) int64) by exact cosine; -1 / -inf padding."""
        if k < 1:
            raise InvalidInput("k must be >= 1")
        q = _as_matrix(queries, self.dim, "queries")
        with self._lock.read():
            if self._ann is None:
                return self._search_exact(q, k)
            return self._search_ann(q, k)

    def search_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`search`, but always by scanning every stored vector (the baseline ANN replaces)."""
        if k < 1:
            raise InvalidInput("k must be >= 1")
        q = _as_matrix(queries, self.dim, "queries")
        with self._lock.read():
            return self._search_exact(q, k)

    def _search_exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self._n
        scores = np.full((len(q), k), -np.inf, np.float32)
        out = np.full((len(q), k), -1, np.int64)
        if self.ntotal == 0:
            return scores, out
        kk = min(k, self.ntotal)
        dead = ~self._alive[:n]
        block = max(1, _EXACT_BLOCK // max(n, 1))
        nb = min(n, len(self._base))
        for s in range(0, len(q), block):
            sim = np.empty((len(q[s : s + block]), n), np.float32)
            sim[:, :nb] = q[s : s + block] @ self._base[:nb].T
            for a, blk in self._vecs.segments(n - nb):
                sim[:, nb + a : nb + a + len(blk)] = q[s : s + block] @ blk.T
            sim[:, dead] = -np.inf
            if kk < n:
                top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            else:
                top = np.tile(np.arange(n), (len(sim), 1))
            ts = np.take_along_axis(sim, top, axis=1)
            order = np.argsort(-ts, axis=1, kind="stable")
            top, ts = np.take_along_axis(top, order, axis=1), np.take_along_axis(ts, order, axis=1)
            scores[s : s + block, :kk] = ts[:, :kk]
            out[s : s + block, :kk] = self._ids[top[:, :kk]]
        return scores, out

    def _search_ann(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._ann is not None
        kk = min(max(k, self.config.rerank_k), max(int(self._ann.ntotal), 1))
        params = self._live_ids.params(self._ann) if self._live_ids is not None else None
        threads = self.config.search_threads if len(q) <= _SMALL_BATCH else 0
        # OpenMP's thread count is per calling thread (libgomp), so this bounds only this search.
        before = faiss.omp_get_max_threads() if threads else 0
        try:
            if threads:
                faiss.omp_set_num_threads(threads)
            _, cand = self._ann.search(q, kk, params=params)
        except RuntimeError as exc:
            raise StorageError(f"ANN search failed: {exc}") from exc
        finally:
            if threads:
                faiss.omp_set_num_threads(before)
        scores = np.full((len(q), k), -np.inf, np.float32)
        out = np.full((len(q), k), -1, np.int64)
        rows, ok = self._rows_of(cand.ravel())
        rows, ok = rows.reshape(cand.shape), ok.reshape(cand.shape) & (cand >= 0)
        if params is not None:  # an id removed and added again is in a tombstoning index twice
            ok &= _first_of_each(cand)
        # Exact re-rank from the stored vectors: the returned scores are true cosines.
        if isinstance(self._base, np.memmap):
            _will_need(self._base, rows[rows < len(self._base)])
        exact = np.einsum("qkd,qd->qk", self._view(self._n).take(rows), q)
        exact[~ok] = -np.inf
        kk = min(k, cand.shape[1])
        order = np.argsort(-exact, axis=1, kind="stable")[:, :kk]
        top = np.take_along_axis(exact, order, axis=1)
        ids = np.where(np.isfinite(top), np.take_along_axis(cand, order, axis=1), -1)
        scores[:, :kk], out[:, :kk] = top, ids
        return scores, out

    # ------------------------------------------------------------------ snapshots
    def save(self, path: Path, *, meta: dict[str, Any] | None = None) -> int:
        """Write a snapshot atomically (temp file, fsync, rename, fsync dir); returns the seq it covers."""
        return self.capture(meta=meta).write(path)

    def capture(self, *, meta: dict[str, Any] | None = None) -> IndexCopy:
        """A consistent copy of the index to write later with :meth:`IndexCopy.write`.

        Taken under the read lock, but short: the ids and vectors are not copied, because rows
        below ``_n`` of a table array are never changed in place (appends go past them; merges and
        compactions make new arrays), so holding the arrays and the row count is a stable view.
        Only the live bits (1 byte a row) and the serialised ANN index are copied. The long part,
        writing and fsyncing gigabytes, then runs without the lock, so writers (and the searches
        queued behind a waiting writer) are not held up by it.
        """
        with self._lock.read():
            n = self._n
            live = self._alive[:n].copy()
            ann = faiss.serialize_index(self._ann) if self._ann is not None else None
            header = {
                "dim": self.dim,
                "n": int(np.count_nonzero(live)),
                "kind": self._ann_kind,
                "removable": self._ann_removable,
                "tombstones": self._ann_tombstones,
                "built_n": self._built_n,
                "seq": self.applied_seq,
                "has_ann": ann is not None,
                "meta": meta or {},
            }
            copy = IndexCopy(header, self._ids[:n], self._view(n), live, ann)
            copy.layout = self._layout
            return copy

    def remap(self, path: Path, copy: IndexCopy) -> bool:
        """After ``copy`` was written to ``path``, serve the rows it holds from the file's map instead
        of memory (the rows added since move to a new tail). Only when the copy had no deleted rows
        and no rows were renumbered since, so file row i is table row i; True when remapped."""
        n = len(copy.live)
        if copy.vectors_offset is None or not n or not copy.live.all():
            return False
        try:
            base = np.memmap(path, np.float32, "r", offset=copy.vectors_offset, shape=(n, self.dim))
        except (OSError, ValueError):
            return False  # the memory copy stays; nothing is lost
        with self._lock.write():
            if self._layout != copy.layout or self._n < n:
                return False
            tail = self._view(self._n).take(np.arange(n, self._n))
            # Builds and captures running now hold views of the old arrays, which stay as they are.
            self._base, self._vecs = base, _Tail(self.dim, [tail] if len(tail) else [])
        return True

    @classmethod
    def load(cls, path: Path, config: IndexConfig | None = None) -> tuple[VectorIndex, dict[str, Any]]:
        """Open a snapshot written by :meth:`save`; returns (index, the ``meta`` saved with it)."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                magic = f.read(len(_MAGIC))
                if magic != _MAGIC:
                    raise StorageError(f"{path} is not an index snapshot")
                (head_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(head_len - len(_MAGIC) - 8).rstrip(b"\0"))
                dim, n = int(header["dim"]), int(header["n"])
                ids_off = head_len
                vec_off = ids_off + 8 * n + ((-(ids_off + 8 * n)) % _ALIGN)
                ann_off = vec_off + 4 * n * dim
                index = cls(dim, config)
                if n:
                    index._ids = np.memmap(path, np.int64, "r", offset=ids_off, shape=(n,))
                    index._base = np.memmap(path, np.float32, "r", offset=vec_off, shape=(n, dim))
                    index._owned = False
                index._alive = np.ones(n, bool)
                index._n = n
                if header["has_ann"]:
                    f.seek(ann_off)
                    ann = faiss.read_index(faiss.PyCallbackIOReader(f.read))
                    index._tune(ann)
                    index._ann = ann
                    index._ann_kind = header["kind"]
                    index._ann_removable = header["removable"]
                    index._ann_tombstones = header["tombstones"]
                    if index._ann_tombstones:
                        index._live_ids = _LiveIds(index._ids)
                    index._built_n = header["built_n"]
                index.applied_seq = int(header["seq"])
        except (OSError, ValueError, KeyError, RuntimeError, struct.error) as exc:
            raise StorageError(f"reading index snapshot {path} failed: {exc}") from exc
        return index, header["meta"]


class IndexCopy:
    """A point-in-time copy of a :class:`VectorIndex` (see :meth:`VectorIndex.capture`), written without locks."""

    def __init__(
        self, header: dict[str, Any], ids: np.ndarray, vecs: _Rows, live: np.ndarray, ann: np.ndarray | None
    ) -> None:
        self.header = header
        self._ids, self._vecs, self.live, self._ann = ids, vecs, live, ann
        self.layout = 0
        self.vectors_offset: int | None = None  # where the vectors start in the file, once written

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    def write(self, path: Path) -> int:
        """Write the snapshot file atomically (temp file ``0600``, fsync, rename, fsync dir); returns its seq."""
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}-{threading.get_ident()}")
        raw = json.dumps(self.header).encode()
        head_len = -(-(len(_MAGIC) + 8 + len(raw)) // _ALIGN) * _ALIGN
        live = self.live
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # embeddings: owner only
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + struct.pack("<Q", head_len) + raw)
                f.write(b"\0" * (head_len - len(_MAGIC) - 8 - len(raw)))
                f.write(np.ascontiguousarray(self._ids[live]).tobytes())
                pad = (-f.tell()) % _ALIGN
                f.write(b"\0" * pad)
                offset = f.tell()
                for s, blk in self._vecs.blocks():
                    f.write(np.ascontiguousarray(blk[live[s : s + len(blk)]]).tobytes())
                if self._ann is not None:
                    f.write(self._ann.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"writing index snapshot {path.name} failed: {exc}") from exc
        self.vectors_offset = offset
        return self.seq


class _Tail:
    """The owned rows after the mapped base: blocks that are only ever appended, so growing never
    copies what is there (nor holds it twice for a moment: at 1M 512-d faces that moment was the
    process's peak memory). Blocks double from 1 024 rows up to ``_TAIL_BLOCK`` rows, then stay
    that size. Rows are written once, past every row a reader may use; :meth:`view` is a stable
    snapshot of the block list for readers that run without the lock."""

    __slots__ = ("blocks", "dim", "starts")

    def __init__(self, dim: int, blocks: list[np.ndarray] | None = None) -> None:
        self.dim = dim
        self.blocks = list(blocks or [])
        self.starts = np.cumsum([0] + [len(b) for b in self.blocks])  # first row of each block, then the end

    def __len__(self) -> int:
        return int(self.starts[-1])

    def view(self) -> _Tail:
        return _Tail(self.dim, self.blocks)

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows in all, by appending blocks."""
        while len(self) < rows:
            size = min(max(1024, len(self)), _TAIL_BLOCK)
            self.blocks.append(np.empty((size, self.dim), np.float32))
            self.starts = np.append(self.starts, len(self) + size)

    def write(self, start: int, vecs: np.ndarray) -> None:
        """Rows ``start, start + 1, ...`` = ``vecs`` (room reserved beforehand)."""
        done = 0
        while done < len(vecs):
            b = int(np.searchsorted(self.starts, start + done, "right")) - 1
            off = start + done - int(self.starts[b])
            m = min(len(vecs) - done, len(self.blocks[b]) - off)
            self.blocks[b][off : off + m] = vecs[done : done + m]
            done += m

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (1-d) as a new (len(rows), dim) array."""
        if len(self.blocks) == 1:
            return self.blocks[0][rows]
        block = np.searchsorted(self.starts, rows, "right") - 1
        out = np.empty((len(rows), self.dim), np.float32)
        for b in np.unique(block):
            sel = block == b
            out[sel] = self.blocks[b][rows[sel] - self.starts[b]]
        return out

    def segments(self, n: int, step: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) covering rows ``[0, n)`` in order, at most ``step`` rows each."""
        for b, blk in enumerate(self.blocks):
            s = int(self.starts[b])
            if s >= n:
                break
            e = min(n, s + len(blk))
            for a in range(s, e, step):
                yield a, blk[a - s : min(a + step, e) - s]


class _Rows:
    """Rows ``[0, n)`` of the vector table: the read-only base, then the owned tail. A stable view:
    rows below ``n`` of either part are never changed in place."""

    __slots__ = ("base", "n", "tail")

    def __init__(self, base: np.ndarray, tail: _Tail, n: int) -> None:
        self.base, self.tail, self.n = base, tail, n

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of ``rows`` (any shape, each in ``[0, n)``): a new C-contiguous array (..., dim)."""
        rows = np.asarray(rows, np.intp)
        nb = len(self.base)
        flat = rows.ravel()
        if not nb:
            return self.tail.take(flat).reshape((*rows.shape, self.tail.dim))
        out = np.empty((len(flat), self.base.shape[1]), np.float32)
        in_base = flat < nb
        out[in_base] = self.base[flat[in_base]]
        if not in_base.all():
            out[~in_base] = self.tail.take(flat[~in_base] - nb)
        return out.reshape((*rows.shape, self.base.shape[1]))

    def blocks(self, step: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) in order, at most ``step`` rows each, never straddling the two segments."""
        nb = min(self.n, len(self.base))
        for s in range(0, nb, step):
            yield s, self.base[s : min(s + step, nb)]
        for s, blk in self.tail.segments(self.n - nb, step):
            yield nb + s, blk


def _search_parts(index: faiss.Index) -> tuple[Any, Any]:
    """(the IVF inside ``index``, or None; else its HNSW graph, through an id map, or None): where its
    search breadth (nprobe, efSearch) lives."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        return ivf, None
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return None, getattr(inner, "hnsw", None)


def _will_need(base: np.memmap, rows: np.ndarray) -> None:
    """Ask the kernel to read the pages of ``rows`` of a mapped table now, all at once (madvise
    WILLNEED starts the reads and returns), so a re-rank over a table larger than the page cache
    waits for about one disk read instead of faulting its candidates in one after another (64 reads
    in a row on a cold 10M table). About 1 µs a row when the pages are already in memory."""
    mm = getattr(base, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not len(rows):
        return
    row_bytes = base.shape[1] * base.itemsize
    start = base.offset % mmap.ALLOCATIONGRANULARITY  # where row 0 lies in numpy's mapping
    for r in np.unique(rows).tolist():
        at = start + r * row_bytes
        page = at - at % mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_WILLNEED, page, at + row_bytes - page)
        except (OSError, ValueError):  # advice only: the reads below fault the pages in anyway
            return


def _first_of_each(a: np.ndarray) -> np.ndarray:
    """Mask of each row's first occurrence of every value (later repeats False)."""
    order = np.argsort(a, axis=1, kind="stable")
    srt = np.take_along_axis(a, order, axis=1)
    first = np.ones(a.shape, bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    out = np.empty(a.shape, bool)
    np.put_along_axis(out, order, first, axis=1)
    return out


class _LiveIds:
    """A bitmap of the live ids (bit ``i`` set: id ``i`` is in the table) and the FAISS selector over
    it, for an ANN index that keeps tombstones: searches skip every id not set, inside the scan.

    ``id // 8`` bytes (1.25 MB for ids up to 10M), grown by half when a larger id is set; changed
    only under the index's write lock, read by searches under its read lock."""

    def __init__(self, ids: np.ndarray) -> None:
        self._bits = np.zeros(1024, np.uint8)
        self._selector = faiss.IDSelectorBitmap(len(self._bits), faiss.swig_ptr(self._bits))
        self.set(np.asarray(ids, np.int64), True)

    def set(self, ids: np.ndarray, live: bool) -> None:
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        need = int(ids.max()) // 8 + 1
        if need > len(self._bits):
            bits = np.zeros(max(need, len(self._bits) * 3 // 2), np.uint8)
            bits[: len(self._bits)] = self._bits
            # A new selector for the new array (no search runs meanwhile: this is under the write lock).
            self._bits, self._selector = bits, faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        byte, mask = ids >> 3, (1 << (ids & 7)).astype(np.uint8)
        if live:
            np.bitwise_or.at(self._bits, byte, mask)
        else:
            np.bitwise_and.at(self._bits, byte, ~mask)

    def params(self, index: faiss.Index) -> faiss.SearchParameters:
        """Search parameters for ``index`` that keep its search breadth and skip non-live ids."""
        ivf, hnsw = _search_parts(index)
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=self._selector, nprobe=ivf.nprobe)
        if hnsw is not None:
            return faiss.SearchParametersHNSW(sel=self._selector, efSearch=hnsw.efSearch)
        return faiss.SearchParameters(sel=self._selector)
