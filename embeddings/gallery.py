"""The gallery: the SQLite store (truth) and one vector index per collection, kept consistent.

Every write commits to the store first and only then touches the index, under a per-collection
lock so the index applies a collection's changes in log order. On open, each collection loads
its index snapshot (if its ``incarnation`` matches) and replays the store's change log after
the snapshot's sequence number; without a usable snapshot the index is rebuilt from the faces
table. A crash therefore costs a replay, never data.

Vectors passed in must be finite and of the collection's dimension; they are L2-normalised on
the way in (a zero vector is refused), so stored vectors and scores are always unit cosines.

ANN builds and periodic snapshots (every ``IndexConfig.snapshot_every`` changes) run on one
background thread, off the request path.
"""

from __future__ import annotations

import base64
import binascii
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.config import GalleryConfig
from embeddings.errors import CollectionNotFound, InvalidInput, LatentfaceError, StorageError
from embeddings.index import VectorIndex
from embeddings.store import (
    CollectionRecord,
    EnrollResult,
    GalleryStore,
    SubjectRecord,
)

__all__ = ["CollectionStats", "EnrollResult", "Gallery", "SearchHit", "SubjectRecord", "normalise_vectors"]

log = logging.getLogger(__name__)

_MAX_PAGE = 1000


@dataclass(frozen=True)
class CollectionStats:
    name: str
    threshold: float
    model_id: str | None
    dim: int | None
    subjects: int
    faces: int
    index_kind: str
    index_ntotal: int


@dataclass(frozen=True)
class SearchHit:
    face_id: int
    subject_id: str
    score: float


def normalise_vectors(vectors: Any, dim: int | None = None) -> np.ndarray:
    """Validate and L2-normalise embeddings to float32 (N, D); InvalidInput on bad shape, NaN or zero."""
    try:
        a = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"vectors must be numeric: {exc}") from exc
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise InvalidInput(f"vectors must have shape (n, dim) with n, dim >= 1, got {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise InvalidInput(f"vectors must be {dim}-dimensional, got {a.shape[1]}")
    if not np.isfinite(a).all():
        raise InvalidInput("vectors contain NaN or infinite values")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise InvalidInput("a zero vector cannot be normalised")
    return np.ascontiguousarray(a / norms, dtype=np.float32)


class _Collection:
    """Runtime state of one collection: its index and the lock that orders its writes."""

    def __init__(self, record: CollectionRecord) -> None:
        self.record = record
        self.write_lock = threading.Lock()
        # One snapshot at a time: an older one renamed last would claim less than the truncated log.
        self.snapshot_lock = threading.Lock()
        self.index: VectorIndex | None = None
        self.unsnapshotted = 0


class Gallery:
    """Store + per-collection indexes. Thread-safe. Open with :meth:`Gallery.open`."""

    SNAPSHOT_DIR = "index"

    def __init__(self, config: GalleryConfig, store: GalleryStore, *, background: bool = True) -> None:
        self.config = config
        self._store = store
        self._lock = threading.Lock()
        self._colls: dict[str, _Collection] = {}
        self._snap_dir = Path(config.data_dir) / self.SNAPSHOT_DIR
        self._tasks: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._pending: set[tuple[str, str]] = set()
        self._worker: threading.Thread | None = None
        self._closed = False
        if background:
            self._worker = threading.Thread(target=self._work, name="gallery-maintenance", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, config: GalleryConfig, *, background: bool = True) -> Gallery:
        """Open (creating if needed) the gallery under ``config.data_dir`` and bring every index up to date.

        ``background=False`` runs no maintenance thread: ANN builds and snapshots then happen
        only when :meth:`build_index` / :meth:`snapshot` are called (tests, benchmarks).
        """
        data_dir = Path(config.data_dir)
        try:
            (data_dir / cls.SNAPSHOT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data dir {data_dir}: {exc}") from exc
        store = GalleryStore(data_dir / "gallery.sqlite3")
        gallery = cls(config, store, background=background)
        try:
            for rec in store.list_collections():
                state = _Collection(rec)
                if rec.dim is not None:
                    state.index = gallery._load_index(rec)
                    if state.index.needs_build():
                        gallery._schedule("build", rec.name)
                gallery._colls[rec.name] = state
        except BaseException:
            gallery.close(snapshot=False)
            raise
        return gallery

    def _snapshot_path(self, name: str) -> Path:
        return self._snap_dir / (binascii.hexlify(name.encode()).decode() + ".lfidx")

    def _load_index(self, rec: CollectionRecord) -> VectorIndex:
        assert rec.dim is not None
        path = self._snapshot_path(rec.name)
        index: VectorIndex | None = None
        if path.exists():
            try:
                index, meta = VectorIndex.load(path, self.config.index)
                if meta.get("incarnation") != rec.incarnation or index.dim != rec.dim:
                    index = None  # a snapshot of an older collection of the same name
            except StorageError:
                log.warning("index snapshot %s unreadable; rebuilding from the store", path, exc_info=True)
                index = None
        if index is None:
            index = VectorIndex(rec.dim, self.config.index)
            seq = self._store.last_seq()  # nothing writes while we open
            for ids, vecs in self._store.iter_vectors(rec.name):
                index.add(ids, vecs)
            index.applied_seq = seq
            return index
        added, vecs, removed, last = self._store.changes_since(rec.name, index.applied_seq)
        if len(added):
            index.add(added, vecs)
        index.remove(removed, seq=last)
        return index

    def close(self, *, snapshot: bool = True) -> None:
        """Stop background work, snapshot collections with unsaved changes, close the store."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._tasks.put(None)
            self._worker.join()
        if snapshot:
            for name, state in list(self._colls.items()):
                if state.unsnapshotted and state.index is not None:
                    try:
                        self._snapshot_one(name, state)
                    except LatentfaceError:
                        log.warning("snapshot of %r at close failed", name, exc_info=True)
        self._store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ background work
    def _schedule(self, task: str, name: str) -> None:
        if self._worker is None or self._closed:
            return
        with self._lock:
            if (task, name) in self._pending:
                return
            self._pending.add((task, name))
        self._tasks.put((task, name))

    def _work(self) -> None:
        while True:
            item = self._tasks.get()
            try:
                if item is None:
                    return
                with self._lock:
                    self._pending.discard(item)
                task, name = item
                state = self._colls.get(name)
                if state is None or state.index is None:
                    continue
                if task == "build":
                    state.index.build()
                self._snapshot_one(name, state)
            except Exception:  # keep serving; the store is intact and the next open replays
                log.exception("gallery maintenance task %r failed", item)
            finally:
                self._tasks.task_done()

    def wait_idle(self) -> None:
        """Block until queued background builds and snapshots are done."""
        if self._worker is not None:
            self._tasks.join()

    def _after_write(self, name: str, state: _Collection, changes: int, *, maintain: bool = True) -> None:
        state.unsnapshotted += changes
        if not maintain or state.index is None:
            return
        if state.index.needs_build():
            self._schedule("build", name)
        elif state.unsnapshotted >= self.config.index.snapshot_every:
            self._schedule("snapshot", name)

    def _snapshot_one(self, name: str, state: _Collection) -> None:
        if state.index is None or self._colls.get(name) is not state:
            return
        with state.snapshot_lock:
            pending = state.unsnapshotted
            meta = {"incarnation": state.record.incarnation, "name": name}
            seq = state.index.save(self._snapshot_path(name), meta=meta)
            state.unsnapshotted = max(0, state.unsnapshotted - pending)
            self._store.truncate_changes(name, seq)

    def snapshot(self, collection: str | None = None) -> None:
        """Write index snapshots now (one collection or all) so the next open replays little."""
        names = [collection] if collection is not None else list(self._colls)
        for name in names:
            state = self._state(name)
            if state.index is not None:
                self._snapshot_one(name, state)

    def build_index(self, collection: str) -> str:
        """Build (or rebuild) the collection's ANN index now, if the policy wants one; returns the kind."""
        state = self._state(collection)
        if state.index is None:
            return "flat"
        if state.index.needs_build():
            state.index.build()
        return state.index.kind

    # ------------------------------------------------------------------ collections
    def _state(self, name: str) -> _Collection:
        state = self._colls.get(name)
        if state is None:
            raise CollectionNotFound(f"collection {name!r} not found")
        return state

    def create_collection(self, name: str, *, threshold: float | None = None) -> CollectionRecord:
        """Create an empty collection (AlreadyExists if the name is taken)."""
        t = self.config.default_threshold if threshold is None else float(threshold)
        with self._lock:
            rec = self._store.create_collection(name, threshold=t)
            self._colls[name] = _Collection(rec)
        return rec

    def list_collections(self) -> list[CollectionRecord]:
        return self._store.list_collections()

    def get_collection(self, name: str) -> CollectionRecord:
        self._state(name)
        return self._store.get_collection(name)

    def delete_collection(self, name: str) -> None:
        """Delete a collection with all its subjects, faces, log rows and its index snapshot."""
        state = self._state(name)
        with state.write_lock:
            self._store.delete_collection(name)
            with self._lock:
                self._colls.pop(name, None)
            self._snapshot_path(name).unlink(missing_ok=True)

    def set_threshold(self, name: str, threshold: float) -> None:
        state = self._state(name)
        with state.write_lock:  # the cached record must end as the last write, not an interleaved one
            self._store.set_threshold(name, threshold)
            state.record = self._store.get_collection(name)

    def collection_stats(self, name: str) -> CollectionStats:
        state = self._state(name)
        rec = self._store.get_collection(name)
        subjects, faces = self._store.counts(name)
        idx = state.index
        return CollectionStats(
            name=name,
            threshold=rec.threshold,
            model_id=rec.model_id,
            dim=rec.dim,
            subjects=subjects,
            faces=faces,
            index_kind=idx.kind if idx is not None else "flat",
            index_ntotal=idx.ntotal if idx is not None else 0,
        )

    def index_size(self, name: str) -> int:
        """Live vectors in the collection's index (cheap, unlike :meth:`collection_stats`)."""
        idx = self._state(name).index
        return idx.ntotal if idx is not None else 0

    # ------------------------------------------------------------------ enrollment
    def enroll(
        self,
        collection: str,
        subject_id: str,
        vectors: Any,
        *,
        model_id: str,
        qualities: Sequence[dict[str, Any] | None] | None = None,
        display_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        groups: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> EnrollResult:
        """Add faces to a subject (created when new). Durable on return; a repeated ``request_id`` is a no-op
        returning the first result with ``replayed=True``."""
        if not isinstance(subject_id, str) or not subject_id:
            raise InvalidInput("subject_id must be a non-empty string")
        if not model_id:
            raise InvalidInput("model_id must not be empty")
        state = self._state(collection)
        vecs = normalise_vectors(vectors, state.record.dim)
        with state.write_lock:
            result, seq = self._store.add_faces(
                collection,
                [subject_id] * len(vecs),
                vecs,
                model_id=model_id,
                qualities=qualities,
                subject_info={subject_id: (display_name, metadata, groups)},
                request_id=request_id,
            )
            if not result.replayed:
                self._index_add(state, np.asarray(result.face_ids, np.int64), vecs, seq)
                self._after_write(collection, state, len(vecs))
        return result

    def bulk_enroll(
        self,
        collection: str,
        subject_ids: Sequence[str],
        vectors: Any,
        *,
        model_id: str,
        maintain: bool = True,
    ) -> np.ndarray:
        """Enroll many faces (row i belongs to ``subject_ids[i]``) in ONE transaction; returns their face ids.

        ``maintain=False`` defers ANN builds and snapshots to explicit calls (bulk loads).
        """
        state = self._state(collection)
        vecs = normalise_vectors(vectors, state.record.dim)
        if len(subject_ids) != len(vecs) or not all(isinstance(s, str) and s for s in subject_ids):
            raise InvalidInput("need one non-empty subject id per vector")
        with state.write_lock:
            result, seq = self._store.add_faces(collection, list(subject_ids), vecs, model_id=model_id)
            ids = np.asarray(result.face_ids, np.int64)
            self._index_add(state, ids, vecs, seq)
            self._after_write(collection, state, len(vecs), maintain=maintain)
        return ids

    def _index_add(self, state: _Collection, ids: np.ndarray, vecs: np.ndarray, seq: int) -> None:
        if state.index is None:
            state.record = self._store.get_collection(state.record.name)  # dim + model now set
            state.index = VectorIndex(vecs.shape[1], self.config.index)
        state.index.add(ids, vecs, seq=seq)

    # ------------------------------------------------------------------ subjects and faces
    def get_subject(self, collection: str, subject_id: str) -> SubjectRecord:
        self._state(collection)
        return self._store.get_subject(collection, subject_id)

    def list_subjects(
        self, collection: str, *, page_size: int = 100, page_token: str | None = None
    ) -> tuple[list[SubjectRecord], str | None]:
        """One page of subjects ordered by id, and the token of the next page (None at the end)."""
        self._state(collection)
        if not 1 <= page_size <= _MAX_PAGE:
            raise InvalidInput(f"page_size must be in [1, {_MAX_PAGE}]")
        after = None
        if page_token:
            try:
                after = base64.b64decode(page_token.encode(), altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeError, ValueError) as exc:
                raise InvalidInput("invalid page token") from exc
        rows = self._store.list_subjects(collection, after=after, limit=page_size + 1)
        page = rows[:page_size]
        token = None
        if len(rows) > page_size:
            token = base64.urlsafe_b64encode(page[-1].subject_id.encode()).decode()
        return page, token

    def delete_subject(self, collection: str, subject_id: str) -> list[int]:
        """Delete a subject and every face of it (store and index); returns the removed face ids."""
        state = self._state(collection)
        with state.write_lock:
            ids, seq = self._store.delete_subject(collection, subject_id)
            if state.index is not None:
                state.index.remove(np.asarray(ids, np.int64), seq=seq)
            self._after_write(collection, state, max(1, len(ids)))
        return ids

    def delete_face(self, collection: str, face_id: int) -> str:
        """Delete one face (FaceNotFound if absent); returns its subject id."""
        state = self._state(collection)
        with state.write_lock:
            subject_id, seq = self._store.delete_face(collection, int(face_id))
            if state.index is not None:
                state.index.remove(np.asarray([face_id], np.int64), seq=seq)
            self._after_write(collection, state, 1)
        return subject_id

    def subject_vectors(self, collection: str, subject_id: str) -> tuple[np.ndarray, np.ndarray, str | None]:
        """(face ids, unit vectors (n, D), model id) of one subject."""
        self._state(collection)
        return self._store.subject_vectors(collection, subject_id)

    def face_ids(self, collection: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids in the store, ids in the index), both sorted: equal when the two agree."""
        state = self._state(collection)
        with state.write_lock:
            store = self._store.face_ids(collection)
            index = state.index.ids() if state.index is not None else np.empty(0, np.int64)
        return store, index

    # ------------------------------------------------------------------ search
    def search(self, collection: str, vectors: Any, k: int) -> list[list[SearchHit]]:
        """Top-``k`` faces per query by exact cosine (best first). Deleted faces are never returned."""
        state = self._state(collection)
        if k < 1:
            raise InvalidInput("k must be >= 1")
        q = normalise_vectors(vectors, state.record.dim)
        if state.index is None or state.index.ntotal == 0:
            return [[] for _ in range(len(q))]
        scores, ids = state.index.search(q, k)
        found = ids[ids >= 0]
        # A face deleted between the index search and this lookup has no row any more: dropped.
        subjects = self._store.subjects_of(collection, np.unique(found).tolist()) if len(found) else {}
        return [
            [
                SearchHit(int(f), subjects[int(f)], float(s))
                for s, f in zip(scores[i], ids[i], strict=True)
                if f >= 0 and int(f) in subjects
            ]
            for i in range(len(q))
        ]
