"""The gallery: the SQLite store (truth) and one vector index per collection, kept consistent.

Every write commits to the store first and only then touches the index, under a per-collection
lock so the index applies a collection's changes in log order. On open, each collection loads
its index snapshot and replays the store's change log after the snapshot's sequence number;
a snapshot that is missing, unreadable, of another collection, older than the truncated log or
not agreeing with the store's face count is dropped and the index rebuilt from the faces table.
A crash therefore costs a replay, never data.

Snapshot files are named by the collection's ``incarnation`` (random hex, made at create), never
by its name, so no name can make a path too long or clash with a deleted namesake's file.

An index change that fails after its store commit (out of memory, a FAISS error) does not fail the
call: the data is stored, so the caller gets its result. The collection is marked dirty and
repaired from the change log (at once, else before the next search or write; searches that cannot
repair it get :class:`IndexNotReady`), and no snapshot is written while it is dirty.

The data directory is locked for the gallery's life (:mod:`embeddings.datadir`): a second process
gets :class:`DataDirLocked`.

Vectors passed in must be finite and of the collection's dimension; they are L2-normalised on
the way in (a zero vector is refused), so stored vectors and scores are always unit cosines.

ANN builds and periodic snapshots (every ``IndexConfig.snapshot_every`` changes) run on one
background thread, off the request path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embeddings import names
from embeddings.config import GalleryConfig
from embeddings.datadir import DataDirLock, private_dir
from embeddings.errors import (
    CollectionNotFound,
    FaceNotFound,
    IndexNotReady,
    InvalidInput,
    LatentfaceError,
    StorageError,
)
from embeddings.index import VectorIndex
from embeddings.store import (
    CollectionRecord,
    EnrollResult,
    GalleryStore,
    SubjectRecord,
)

__all__ = ["CollectionStats", "EnrollResult", "Gallery", "SearchHit", "SubjectRecord", "normalise_vectors"]

log = logging.getLogger(__name__)

_SNAPSHOT_SUFFIX = ".lfidx"
_INCARNATION = re.compile(r"[0-9a-f]{1,64}")


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
        # An index change failed after its commit: the index lacks changes after ``repair_from``.
        self.dirty = False
        self.repair_from = 0


class Gallery:
    """Store + per-collection indexes. Thread-safe. Open with :meth:`Gallery.open`."""

    SNAPSHOT_DIR = "index"

    def __init__(
        self,
        config: GalleryConfig,
        store: GalleryStore,
        *,
        background: bool = True,
        dir_lock: DataDirLock | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._dir_lock = dir_lock
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
        only when :meth:`build_index` / :meth:`snapshot` are called (tests, benchmarks). The data
        directory stays locked until :meth:`close`; :class:`DataDirLocked` if another holds it.
        """
        data_dir = Path(config.data_dir)
        private_dir(data_dir)
        lock = DataDirLock(data_dir)  # before anything is read or written
        try:
            private_dir(data_dir / cls.SNAPSHOT_DIR)
            store = GalleryStore(data_dir / "gallery.sqlite3")
        except BaseException:
            lock.release()
            raise
        gallery = cls(config, store, background=background, dir_lock=lock)
        try:
            records = store.list_collections()
            for rec in records:
                state = _Collection(rec)
                if rec.dim is not None:
                    state.index = gallery._load_index(rec)
                    if state.index.needs_build():
                        gallery._schedule("build", rec.name)
                gallery._colls[rec.name] = state
            gallery._remove_stray_snapshots({gallery._snapshot_path(r).name for r in records})
        except BaseException:
            gallery.close(snapshot=False)
            raise
        return gallery

    def _snapshot_path(self, rec: CollectionRecord) -> Path:
        if not _INCARNATION.fullmatch(rec.incarnation):
            raise StorageError("collection incarnation is not a hex id")  # never a path made of stored text
        return self._snap_dir / (rec.incarnation + _SNAPSHOT_SUFFIX)

    def _remove_stray_snapshots(self, keep: set[str]) -> None:
        """Delete snapshots of deleted collections, older versions' name-derived files and temp files."""
        try:
            entries = list(os.scandir(self._snap_dir))
        except OSError:
            return
        for entry in entries:
            if entry.name not in keep and (entry.name.endswith(_SNAPSHOT_SUFFIX) or ".lfidx.tmp-" in entry.name):
                try:
                    os.unlink(entry.path)
                except OSError:
                    log.warning("cannot remove stray index file %s", entry.path)

    def _load_index(self, rec: CollectionRecord) -> VectorIndex:
        assert rec.dim is not None
        index: VectorIndex | None = None
        try:
            index = self._load_snapshot(rec)
        except Exception:  # noqa: BLE001 - the snapshot is derived data; the store can always rebuild it
            log.warning(
                "index snapshot of collection %s unusable; rebuilding from the store",
                names.shown(rec.name),
                exc_info=True,
            )
            index = None
        if index is None:
            index = VectorIndex(rec.dim, self.config.index)
            seq = self._store.last_seq()  # nothing writes while we open
            for ids, vecs in self._store.iter_vectors(rec.name):
                index.add(ids, vecs)
            index.applied_seq = seq
        return index

    def _load_snapshot(self, rec: CollectionRecord) -> VectorIndex | None:
        """The snapshot caught up with the log, or None when there is none or it cannot be trusted."""
        assert rec.dim is not None
        path = self._snapshot_path(rec)
        if not path.is_file():
            return None
        index, meta = VectorIndex.load(path, self.config.index)
        if meta.get("incarnation") != rec.incarnation or index.dim != rec.dim:
            return None
        if index.applied_seq < self._store.log_floor(rec.name):
            log.warning("index snapshot %s predates the truncated change log; rebuilding", path.name)
            return None
        added, vecs, removed, last = self._store.changes_since(rec.name, index.applied_seq)
        if len(added):
            index.add(added, vecs)
        index.remove(removed, seq=last)
        faces = self._store.face_count(rec.name)
        if index.ntotal != faces:
            log.warning(
                "index snapshot %s holds %d faces after replay, the store %d; rebuilding",
                path.name,
                index.ntotal,
                faces,
            )
            return None
        return index

    def close(self, *, snapshot: bool = True) -> None:
        """Stop background work, snapshot collections with unsaved changes, close the store."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._tasks.put(None)
            self._worker.join()
        try:
            if snapshot:
                for name, state in list(self._colls.items()):
                    if state.unsnapshotted and state.index is not None:
                        try:
                            self._snapshot_one(name, state)
                        except LatentfaceError:
                            log.warning("snapshot of %s at close failed", names.shown(name), exc_info=True)
            self._store.close()
        finally:
            if self._dir_lock is not None:
                self._dir_lock.release()

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
            # The copy is taken with the collection's writes held off (a short copy, not the write),
            # so it holds exactly the changes up to its seq; a dirty index is repaired first or not saved.
            with state.write_lock:
                if self._colls.get(name) is not state or (state.dirty and not self._try_repair(state)):
                    return
                index = state.index
                if index is None:
                    return
                pending = state.unsnapshotted
                copy = index.capture(meta={"incarnation": state.record.incarnation})
            path = self._snapshot_path(state.record)
            seq = copy.write(path)  # outside every lock: searches and writes go on
            # The rows just written are served from the file's map from now on, not from memory.
            index.remap(path, copy)
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
        state = self._colls.get(name) if isinstance(name, str) else None
        if state is None:
            names.check_collection(name)  # a malformed name is a bad argument, not an unknown collection
            raise CollectionNotFound(f"collection {name!r} not found")
        return state

    def create_collection(self, name: str, *, threshold: float | None = None) -> CollectionRecord:
        """Create an empty collection (AlreadyExists if the name is taken; names follow :mod:`embeddings.names`)."""
        names.check_collection(name)
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
        # snapshot_lock first (the order _snapshot_one takes them): a snapshot being written must not
        # land after the unlink.
        with state.snapshot_lock, state.write_lock:
            self._store.delete_collection(name)
            with self._lock:
                self._colls.pop(name, None)
            self._snapshot_path(state.record).unlink(missing_ok=True)

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

    def collection_names(self) -> list[str]:
        """The collections' names from memory (no store read: cheap enough for every metrics scrape)."""
        with self._lock:
            return sorted(self._colls)

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
        content_digest: str | None = None,
    ) -> EnrollResult:
        """Add faces to a subject (created when new). Durable on return.

        A ``request_id`` makes a retry safe: repeating the same request returns the first result with
        ``replayed=True`` and stores nothing; the same id with a different request (subject, data,
        model or descriptive fields) raises :class:`RequestIdReused`; once any face of that enrollment
        is deleted, the id is forgotten. ``content_digest`` stands for the data in that comparison
        (the engine passes a digest of the image bytes); by default the vectors are hashed.
        """
        names.check_subject_id(subject_id)
        if request_id is not None:
            names.check_request_id(request_id)
        if not model_id:
            raise InvalidInput("model_id must not be empty")
        state = self._state(collection)
        vecs = normalise_vectors(vectors, state.record.dim)
        request_hash = None
        if request_id is not None:
            request_hash = _request_hash(
                subject_id,
                model_id,
                display_name,
                metadata,
                groups,
                content_digest or hashlib.sha256(vecs.tobytes()).hexdigest(),
            )
        with state.write_lock:
            self._repair_if_dirty(state)
            result, seq = self._store.add_faces(
                collection,
                [subject_id] * len(vecs),
                vecs,
                model_id=model_id,
                qualities=qualities,
                subject_info={subject_id: (display_name, metadata, groups)},
                request_id=request_id,
                request_hash=request_hash,
            )
            if not result.replayed:
                ids = np.asarray(result.face_ids, np.int64)
                self._apply(state, lambda: self._index_add(state, ids, vecs, seq))
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
        if len(subject_ids) != len(vecs):
            raise InvalidInput("need one subject id per vector")
        for s in set(subject_ids):
            names.check_subject_id(s)
        with state.write_lock:
            self._repair_if_dirty(state)
            result, seq = self._store.add_faces(collection, list(subject_ids), vecs, model_id=model_id)
            ids = np.asarray(result.face_ids, np.int64)
            self._apply(state, lambda: self._index_add(state, ids, vecs, seq))
            self._after_write(collection, state, len(vecs), maintain=maintain)
        return ids

    def _index_add(self, state: _Collection, ids: np.ndarray, vecs: np.ndarray, seq: int) -> None:
        if state.index is None:
            state.record = self._store.get_collection(state.record.name)  # dim + model now set
            state.index = VectorIndex(vecs.shape[1], self.config.index)
        state.index.add(ids, vecs, seq=seq)

    # ------------------------------------------------------------------ index repair (write_lock held)
    def _apply(self, state: _Collection, change: Callable[[], None]) -> None:
        """Apply a committed change to the index; on failure mark the collection dirty and try a repair.

        Never raises: the change is in the store, so the caller's answer is that it happened.
        """
        try:
            change()
        except Exception:  # noqa: BLE001 - whatever failed, the log can replay it
            log.exception("index update of collection %s failed after commit", names.shown(state.record.name))
            if not state.dirty:
                state.dirty = True
                state.repair_from = state.index.applied_seq if state.index is not None else 0
            self._try_repair(state)

    def _try_repair(self, state: _Collection) -> bool:
        """Bring a dirty index up to the store by replaying the log after ``repair_from``; True on success."""
        try:
            name = state.record.name
            if state.index is None:
                rec = self._store.get_collection(name)
                state.record = rec
                if rec.dim is not None:
                    state.index = self._load_index(rec)  # nothing of it was ever snapshotted: a rebuild
            else:
                added, vecs, removed, last = self._store.changes_since(name, state.repair_from)
                if len(added):
                    state.index.add(added, vecs)
                state.index.remove(removed, seq=last)
        except Exception:  # noqa: BLE001
            log.warning("repair of the index of collection %s failed", names.shown(state.record.name), exc_info=True)
            return False
        state.dirty = False
        log.info("index of collection %s repaired from the change log", names.shown(state.record.name))
        return True

    def _repair_if_dirty(self, state: _Collection) -> None:
        if state.dirty and not self._try_repair(state):
            raise IndexNotReady(f"the index of collection {state.record.name!r} is being repaired; retry")

    # ------------------------------------------------------------------ subjects and faces
    def get_subject(self, collection: str, subject_id: str) -> SubjectRecord:
        self._state(collection)
        return self._store.get_subject(collection, names.check_subject_id(subject_id))

    def list_subjects(
        self, collection: str, *, page_size: int = 100, page_token: str | None = None
    ) -> tuple[list[SubjectRecord], str | None]:
        """One page of subjects ordered by id, and the token of the next page (None at the end)."""
        self._state(collection)
        after = names.page_after(page_token, page_size)
        return names.page_of(self._store.list_subjects(collection, after=after, limit=page_size + 1), page_size)

    def delete_subject(self, collection: str, subject_id: str) -> list[int]:
        """Delete a subject and every face of it (store and index); returns the removed face ids."""
        state = self._state(collection)
        names.check_subject_id(subject_id)
        with state.write_lock:
            self._repair_if_dirty(state)
            ids, seq = self._store.delete_subject(collection, subject_id)
            index = state.index
            if index is not None:
                self._apply(state, lambda: index.remove(np.asarray(ids, np.int64), seq=seq))
            self._after_write(collection, state, max(1, len(ids)))
        return ids

    def delete_face(self, collection: str, face_id: int) -> str:
        """Delete one face (FaceNotFound if absent); returns its subject id."""
        state = self._state(collection)
        fid = names.face_id(face_id)
        if fid is None:  # well-formed, but no face can have this id
            raise FaceNotFound(f"face {names.shown(face_id)} not found in collection {collection!r}")
        with state.write_lock:
            self._repair_if_dirty(state)
            subject_id, seq = self._store.delete_face(collection, fid)
            index = state.index
            if index is not None:
                self._apply(state, lambda: index.remove(np.asarray([fid], np.int64), seq=seq))
            self._after_write(collection, state, 1)
        return subject_id

    def subject_vectors(self, collection: str, subject_id: str) -> tuple[np.ndarray, np.ndarray, str | None]:
        """(face ids, unit vectors (n, D), model id) of one subject."""
        self._state(collection)
        return self._store.subject_vectors(collection, names.check_subject_id(subject_id))

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
        if state.dirty:  # answer from an index that matches the store, or not at all
            with state.write_lock:
                self._repair_if_dirty(state)
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


def _request_hash(
    subject_id: str,
    model_id: str,
    display_name: str | None,
    metadata: dict[str, Any] | None,
    groups: dict[str, Any] | None,
    content_digest: str,
) -> str:
    """What identifies an enrollment request, for request-id replays."""
    try:
        fields = json.dumps([subject_id, model_id, display_name, metadata, groups, content_digest], sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be JSON-serialisable: {exc}") from exc
    return hashlib.sha256(fields.encode()).hexdigest()
