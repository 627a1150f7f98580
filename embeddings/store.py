"""The gallery's source of truth: one SQLite database in WAL mode with ``synchronous=FULL``.

Every write runs in one ``BEGIN IMMEDIATE`` transaction and is acknowledged only after
``COMMIT`` returns, so a crash loses nothing that was acknowledged. The FAISS indexes are
derived from this store: every face added or removed appends a row to the ``changes`` log,
and an index snapshot taken at log sequence ``S`` is caught up by replaying ``S+1..``.

Tables::

    collections(name PK, threshold, model_id, dim, incarnation, created, settings JSON)
    subjects(collection, subject_id, display_name, metadata JSON, groups JSON, created)
    faces(face_id INTEGER PK AUTOINCREMENT, collection, subject_id, embedding BLOB float32,
          model_id, quality JSON, created)          -- face ids are never reused
    changes(seq INTEGER PK AUTOINCREMENT, collection, op 'add'|'remove', face_id)
    change_floor(collection PK, seq)                -- the log was truncated up to here
    enroll_requests(collection, request_id, result JSON, created, request_hash, first_face, last_face)

A request id names one enrollment: replaying it with the same request (same ``request_hash``)
returns the first result, with a different one raises :class:`RequestIdReused`, and deleting any
face of that enrollment forgets the id (a replay must never return a deleted face).

One connection is shared by all threads behind a lock: SQLite serialises writers anyway,
and reads here are short point or range queries.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from embeddings.datadir import private_file
from embeddings.errors import (
    AlreadyExists,
    CollectionNotFound,
    FaceNotFound,
    InvalidInput,
    ModelMismatch,
    RequestIdReused,
    StorageError,
    SubjectNotFound,
)
from embeddings.names import check_collection, shown

__all__ = ["CollectionRecord", "EnrollResult", "FaceRecord", "GalleryStore", "SubjectRecord"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    threshold REAL NOT NULL,
    model_id TEXT,
    dim INTEGER,
    incarnation TEXT NOT NULL,
    created REAL NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS subjects (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    subject_id TEXT NOT NULL,
    display_name TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    groups TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    PRIMARY KEY (collection, subject_id)
);
CREATE TABLE IF NOT EXISTS faces (
    face_id INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    embedding BLOB NOT NULL,
    model_id TEXT NOT NULL,
    quality TEXT,
    created REAL NOT NULL,
    FOREIGN KEY (collection, subject_id) REFERENCES subjects(collection, subject_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS faces_by_subject ON faces(collection, subject_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    face_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_collection ON changes(collection, seq);
CREATE TABLE IF NOT EXISTS enroll_requests (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    request_id TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (collection, request_id)
);
CREATE TABLE IF NOT EXISTS change_floor (
    collection TEXT PRIMARY KEY REFERENCES collections(name) ON DELETE CASCADE,
    seq INTEGER NOT NULL
);
"""


_SELECT_COLLECTION = "SELECT name, threshold, model_id, dim, incarnation, created, settings FROM collections"

_SELECT_SUBJECTS = "SELECT subject_id, display_name, metadata, groups, created FROM subjects WHERE collection = ?"

_SubjectInfo = tuple[str | None, dict[str, Any] | None, dict[str, Any] | None]  # name, metadata, groups


@dataclass(frozen=True)
class EnrollResult:
    """What an enrollment stored. ``replayed`` is True when a known request id returned the first result."""

    subject_id: str
    face_ids: tuple[int, ...]
    created_subject: bool
    replayed: bool = False


@dataclass(frozen=True)
class CollectionRecord:
    name: str
    threshold: float
    model_id: str | None
    dim: int | None
    incarnation: str
    created: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SubjectRecord:
    collection: str
    subject_id: str
    display_name: str | None
    metadata: dict[str, Any]
    groups: dict[str, Any]
    created: float
    face_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class FaceRecord:
    face_id: int
    collection: str
    subject_id: str
    model_id: str
    quality: dict[str, Any] | None
    created: float


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value if value is not None else {}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be JSON-serialisable: {exc}") from exc


class GalleryStore:
    """SQLite store of collections, subjects and faces. Thread-safe; every write is durable on return."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            private_file(self.path)  # embeddings are biometric data: 0600 (the -wal/-shm files follow)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a transaction is exactly one call.
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            # A new database only (an existing one keeps its page size): a 512-d float32 face is 2 KB,
            # so 4 KB pages hold one face each; 16 KB pages hold seven, near halving the file.
            self._conn.execute("PRAGMA page_size=16384")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.executescript(_SCHEMA)
            _migrate(self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open gallery store {self.path}: {exc}") from exc
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._conn.close()
                except sqlite3.Error as exc:
                    raise StorageError(f"closing the store failed: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the caller's work is acknowledged only once COMMIT returned."""
        with self._lock:
            if self._closed:
                raise StorageError("the gallery store is closed")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot start a transaction: {exc}") from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the transaction may already be gone; the original error matters
                if isinstance(exc, sqlite3.IntegrityError):
                    raise AlreadyExists(str(exc)) from exc
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"store write failed: {exc}") from exc
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._read_many(lambda c: c.execute(sql, params).fetchall())

    def _read_many(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run several reads as one view of the store: the connection's lock keeps writers out between them."""
        with self._lock:
            if self._closed:
                raise StorageError("the gallery store is closed")
            try:
                return work(self._conn)
            except sqlite3.Error as exc:
                raise StorageError(f"store read failed: {exc}") from exc

    # ------------------------------------------------------------------ collections
    def create_collection(
        self, name: str, *, threshold: float, settings: dict[str, Any] | None = None
    ) -> CollectionRecord:
        check_collection(name)
        if not -1.0 <= threshold <= 1.0:
            raise InvalidInput("threshold must be a cosine in [-1, 1]")
        incarnation = secrets.token_hex(8)  # tells this collection's snapshots from a deleted namesake's
        rec = CollectionRecord(name, float(threshold), None, None, incarnation, time.time(), settings or {})
        try:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO collections(name, threshold, model_id, dim, incarnation, created, settings)"
                    " VALUES (?, ?, NULL, NULL, ?, ?, ?)",
                    (name, rec.threshold, rec.incarnation, rec.created, _dumps(rec.settings)),
                )
        except AlreadyExists as exc:
            raise AlreadyExists(f"collection {name!r} already exists") from exc
        return rec

    @staticmethod
    def _collection_record(r: tuple) -> CollectionRecord:
        return CollectionRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))

    def get_collection(self, name: str) -> CollectionRecord:
        rows = self._read(_SELECT_COLLECTION + " WHERE name = ?", (name,))
        if not rows:
            raise CollectionNotFound(f"collection {name!r} not found")
        return self._collection_record(rows[0])

    def list_collections(self) -> list[CollectionRecord]:
        return [self._collection_record(r) for r in self._read(_SELECT_COLLECTION + " ORDER BY name")]

    def delete_collection(self, name: str) -> None:
        with self._tx() as c:
            if c.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone() is None:
                raise CollectionNotFound(f"collection {name!r} not found")
            c.execute("DELETE FROM faces WHERE collection = ?", (name,))
            c.execute("DELETE FROM subjects WHERE collection = ?", (name,))
            c.execute("DELETE FROM changes WHERE collection = ?", (name,))
            c.execute("DELETE FROM enroll_requests WHERE collection = ?", (name,))
            c.execute("DELETE FROM change_floor WHERE collection = ?", (name,))
            c.execute("DELETE FROM collections WHERE name = ?", (name,))

    def set_threshold(self, name: str, threshold: float) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise InvalidInput("threshold must be a cosine in [-1, 1]")
        with self._tx() as c:
            cur = c.execute("UPDATE collections SET threshold = ? WHERE name = ?", (float(threshold), name))
            if cur.rowcount == 0:
                raise CollectionNotFound(f"collection {name!r} not found")

    def counts(self, name: str) -> tuple[int, int]:
        """(subjects, faces) of a collection."""
        self.get_collection(name)
        s = self._read("SELECT COUNT(*) FROM subjects WHERE collection = ?", (name,))[0][0]
        f = self._read("SELECT COUNT(*) FROM faces WHERE collection = ?", (name,))[0][0]
        return int(s), int(f)

    # ------------------------------------------------------------------ enrollment
    def add_faces(
        self,
        collection: str,
        subject_ids: Sequence[str],
        vectors: np.ndarray,
        *,
        model_id: str,
        qualities: Sequence[dict[str, Any] | None] | None = None,
        subject_info: dict[str, _SubjectInfo] | None = None,
        request_id: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[EnrollResult, int]:
        """Store faces (one subject id per row) in ONE transaction; returns (result, last change seq).

        ``vectors`` must already be validated float32 (N, D). Subjects are created when missing;
        ``subject_info`` maps a subject id to (display_name, metadata, groups) to set. With a
        ``request_id`` already seen in this collection, the first result is returned with
        ``replayed=True`` and nothing is written, if ``request_hash`` (a digest of the request) is the
        one stored with it; otherwise :class:`RequestIdReused`. The returned result describes the first subject
        (enrollment of one subject); bulk callers use ``face_ids``, aligned with the rows.
        """
        n = len(subject_ids)
        if vectors.shape[0] != n or n == 0:
            raise InvalidInput("need one subject id per vector and at least one vector")
        if qualities is not None and len(qualities) != n:
            raise InvalidInput("need one quality per vector")
        info = subject_info or {}
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT model_id, dim FROM collections WHERE name = ?", (collection,)).fetchone()
            if row is None:
                raise CollectionNotFound(f"collection {collection!r} not found")
            if request_id is not None:
                prev = c.execute(
                    "SELECT result, request_hash FROM enroll_requests WHERE collection = ? AND request_id = ?",
                    (collection, request_id),
                ).fetchone()
                if prev is not None:
                    d = json.loads(prev[0])
                    # Rows from before request hashes were kept can only be told apart by subject.
                    same = prev[1] == request_hash if prev[1] is not None else d["subject_id"] == subject_ids[0]
                    if not same:
                        raise RequestIdReused(
                            f"request_id {shown(request_id)} was already used for a different enrollment "
                            f"in collection {collection!r}; use a new request id"
                        )
                    res = EnrollResult(
                        d["subject_id"], tuple(d["face_ids"]), d["created_subject"], replayed=True
                    )
                    return res, -1
            coll_model, coll_dim = row
            if coll_model is not None and coll_model != model_id:
                raise ModelMismatch(
                    f"collection {collection!r} holds embeddings of model {coll_model!r}, got {model_id!r}"
                )
            if coll_dim is not None and coll_dim != vectors.shape[1]:
                raise InvalidInput(
                    f"collection {collection!r} holds {coll_dim}-d vectors, got {vectors.shape[1]}-d"
                )
            if coll_model is None:
                c.execute(
                    "UPDATE collections SET model_id = ?, dim = ? WHERE name = ?",
                    (model_id, int(vectors.shape[1]), collection),
                )
            # Subjects: create the missing ones; update the descriptive fields that were given.
            unique = list(dict.fromkeys(subject_ids))
            existing = set()
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                q = ",".join("?" * len(chunk))
                existing.update(
                    r[0]
                    for r in c.execute(
                        f"SELECT subject_id FROM subjects WHERE collection = ? AND subject_id IN ({q})",
                        (collection, *chunk),
                    )
                )
            c.executemany(
                "INSERT INTO subjects(collection, subject_id, display_name, metadata, groups, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        collection,
                        s,
                        info.get(s, (None, None, None))[0],
                        _dumps(info.get(s, (None, None, None))[1]),
                        _dumps(info.get(s, (None, None, None))[2]),
                        now,
                    )
                    for s in unique
                    if s not in existing
                ],
            )
            for s in existing & info.keys():
                name, meta, groups = info[s]
                if name is not None:
                    c.execute(
                        "UPDATE subjects SET display_name = ? WHERE collection = ? AND subject_id = ?",
                        (name, collection, s),
                    )
                if meta is not None:
                    c.execute(
                        "UPDATE subjects SET metadata = ? WHERE collection = ? AND subject_id = ?",
                        (_dumps(meta), collection, s),
                    )
                if groups is not None:
                    c.execute(
                        "UPDATE subjects SET groups = ? WHERE collection = ? AND subject_id = ?",
                        (_dumps(groups), collection, s),
                    )
            # Faces. With the write lock held and no explicit ids, AUTOINCREMENT hands out
            # consecutive ids after sqlite_sequence's value; we check that instead of trusting it.
            before = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'faces'").fetchone()
            first = (before[0] if before else 0) + 1
            vec = np.ascontiguousarray(vectors, dtype=np.float32)
            c.executemany(
                "INSERT INTO faces(collection, subject_id, embedding, model_id, quality, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (
                        collection,
                        subject_ids[i],
                        vec[i].tobytes(),
                        model_id,
                        None if qualities is None or qualities[i] is None else _dumps(qualities[i]),
                        now,
                    )
                    for i in range(n)
                ),
            )
            last = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'faces'").fetchone()[0]
            if last - first + 1 != n:
                raise StorageError("face ids were not allocated consecutively")
            face_ids = tuple(range(first, last + 1))
            c.executemany(
                "INSERT INTO changes(collection, op, face_id) VALUES (?, 'add', ?)",
                ((collection, f) for f in face_ids),
            )
            seq = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()[0]
            result = EnrollResult(subject_ids[0], face_ids, subject_ids[0] not in existing)
            if request_id is not None:
                c.execute(
                    "INSERT INTO enroll_requests(collection, request_id, result, created, request_hash,"
                    " first_face, last_face) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        collection,
                        request_id,
                        json.dumps(
                            {
                                "subject_id": result.subject_id,
                                "face_ids": list(face_ids),
                                "created_subject": result.created_subject,
                            }
                        ),
                        now,
                        request_hash,
                        face_ids[0],
                        face_ids[-1],
                    ),
                )
        return result, int(seq)

    # ------------------------------------------------------------------ deletes
    def delete_subject(self, collection: str, subject_id: str) -> tuple[list[int], int]:
        """Delete a subject and all its faces; returns (removed face ids, last change seq)."""
        with self._tx() as c:
            self._require_collection(c, collection)
            if (
                c.execute(
                    "SELECT 1 FROM subjects WHERE collection = ? AND subject_id = ?", (collection, subject_id)
                ).fetchone()
                is None
            ):
                raise SubjectNotFound(f"subject {subject_id!r} not found in collection {collection!r}")
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT face_id FROM faces WHERE collection = ? AND subject_id = ?",
                    (collection, subject_id),
                )
            ]
            c.execute("DELETE FROM faces WHERE collection = ? AND subject_id = ?", (collection, subject_id))
            c.execute(
                "DELETE FROM subjects WHERE collection = ? AND subject_id = ?", (collection, subject_id)
            )
            seq = self._log_removals(c, collection, ids)
        return ids, seq

    def delete_face(self, collection: str, face_id: int) -> tuple[str, int]:
        """Delete one face; returns (its subject id, last change seq). The subject stays, possibly empty."""
        with self._tx() as c:
            self._require_collection(c, collection)
            row = c.execute(
                "SELECT subject_id FROM faces WHERE +collection = ? AND face_id = ?",
                (collection, int(face_id)),
            ).fetchone()
            if row is None:
                raise FaceNotFound(f"face {face_id} not found in collection {collection!r}")
            c.execute("DELETE FROM faces WHERE face_id = ?", (int(face_id),))
            seq = self._log_removals(c, collection, [int(face_id)])
        return row[0], seq

    @staticmethod
    def _require_collection(c: sqlite3.Connection, collection: str) -> None:
        if c.execute("SELECT 1 FROM collections WHERE name = ?", (collection,)).fetchone() is None:
            raise CollectionNotFound(f"collection {collection!r} not found")

    @staticmethod
    def _log_removals(c: sqlite3.Connection, collection: str, ids: Sequence[int]) -> int:
        # A request id whose enrollment lost a face is forgotten: its replay would name a deleted face.
        # An enrollment's faces are one id range, and ranges do not overlap: the first range ending
        # at or after ``f`` is the only one that can hold it.
        c.executemany(
            "DELETE FROM enroll_requests WHERE rowid = (SELECT rowid FROM enroll_requests"
            " WHERE collection = ? AND last_face >= ? ORDER BY last_face LIMIT 1) AND first_face <= ?",
            ((collection, f, f) for f in ids),
        )
        c.executemany(
            "INSERT INTO changes(collection, op, face_id) VALUES (?, 'remove', ?)",
            ((collection, f) for f in ids),
        )
        row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ reads
    def get_subject(self, collection: str, subject_id: str) -> SubjectRecord:
        def read(c: sqlite3.Connection) -> list[SubjectRecord]:
            _require_collection(c, collection)
            rows = c.execute(_SELECT_SUBJECTS + " AND subject_id = ?", (collection, subject_id)).fetchall()
            if not rows:
                raise SubjectNotFound(f"subject {subject_id!r} not found in collection {collection!r}")
            return _with_faces(c, collection, rows)

        return self._read_many(read)[0]

    def list_subjects(self, collection: str, *, after: str | None, limit: int) -> list[SubjectRecord]:
        """Subjects ordered by id, strictly after ``after`` (keyset paging, stable under writes).

        Two queries (the page, then its faces) seen as one state, so a subject deleted meanwhile can
        neither fail the page nor appear without its faces."""

        def read(c: sqlite3.Connection) -> list[SubjectRecord]:
            _require_collection(c, collection)
            if after is None:
                sql, args = _SELECT_SUBJECTS + " ORDER BY subject_id LIMIT ?", (collection, int(limit))
            else:
                sql, args = _SELECT_SUBJECTS + " AND subject_id > ? ORDER BY subject_id LIMIT ?", (collection, after, int(limit))
            return _with_faces(c, collection, c.execute(sql, args).fetchall())

        return self._read_many(read)

    def subject_vectors(self, collection: str, subject_id: str) -> tuple[np.ndarray, np.ndarray, str | None]:
        """(face ids int64 (n,), vectors float32 (n, D), model id) of one subject.

        One view of the store: a subject deleted meanwhile is SubjectNotFound, never "no faces"."""

        def read(c: sqlite3.Connection) -> tuple[CollectionRecord, list[tuple]]:
            coll = c.execute(_SELECT_COLLECTION + " WHERE name = ?", (collection,)).fetchone()
            if coll is None:
                raise CollectionNotFound(f"collection {collection!r} not found")
            if (
                c.execute(
                    "SELECT 1 FROM subjects WHERE collection = ? AND subject_id = ?", (collection, subject_id)
                ).fetchone()
                is None
            ):
                raise SubjectNotFound(f"subject {subject_id!r} not found in collection {collection!r}")
            rows = c.execute(
                "SELECT face_id, embedding, model_id FROM faces WHERE collection = ? AND subject_id = ?"
                " ORDER BY face_id",
                (collection, subject_id),
            ).fetchall()
            return self._collection_record(coll), rows

        coll, rows = self._read_many(read)
        if not rows:
            return np.empty(0, np.int64), np.empty((0, coll.dim or 0), np.float32), coll.model_id
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return ids, vecs, rows[0][2]

    def subjects_of(self, collection: str, face_ids: Sequence[int]) -> dict[int, str]:
        """Map face id → subject id for the faces that still exist."""
        out: dict[int, str] = {}
        ids = [int(f) for f in face_ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = ",".join("?" * len(chunk))
            # Primary-key lookups only: with "collection = ?" in the WHERE clause SQLite may pick the
            # (collection, subject_id) index and scan the whole collection.
            for fid, sid, coll in self._read(
                f"SELECT face_id, subject_id, collection FROM faces WHERE face_id IN ({q})", chunk
            ):
                if coll == collection:
                    out[int(fid)] = sid
        return out

    def face_ids(self, collection: str) -> np.ndarray:
        rows = self._read("SELECT face_id FROM faces WHERE collection = ? ORDER BY face_id", (collection,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def iter_vectors(
        self, collection: str, *, batch: int = 65536, after_id: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (face ids, vectors) of a collection in id order, in batches (a full index rebuild reads this).

        ``+collection`` keeps SQLite on the primary key (a range scan) rather than the subject index.
        """
        last = after_id
        while True:
            rows = self._read(
                "SELECT face_id, embedding FROM faces WHERE +collection = ? AND face_id > ?"
                " ORDER BY face_id LIMIT ?",
                (collection, last, batch),
            )
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            yield ids, vecs
            last = int(ids[-1])

    def last_seq(self) -> int:
        row = self._read("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
        return int(row[0][0]) if row else 0

    def changes_since(self, collection: str, seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Net effect of the log after ``seq``.

        Returns (added ids still present, their vectors, removed ids, last seq of the collection).
        """
        with self._lock:  # the three reads see one state: no write may land between them
            last = self._read("SELECT MAX(seq) FROM changes WHERE collection = ?", (collection,))[0][0]
            removed = self._read(
                "SELECT face_id FROM changes WHERE collection = ? AND seq > ? AND op = 'remove'",
                (collection, seq),
            )
            added = self._read(
                "SELECT f.face_id, f.embedding FROM changes c JOIN faces f ON f.face_id = c.face_id"
                " WHERE c.collection = ? AND c.seq > ? AND c.op = 'add' ORDER BY f.face_id",
                (collection, seq),
            )
        ids = np.array([r[0] for r in added], dtype=np.int64)
        vecs = (
            np.frombuffer(b"".join(r[1] for r in added), dtype=np.float32).reshape(len(added), -1)
            if added
            else np.empty((0, 0), np.float32)
        )
        return ids, vecs, np.array([r[0] for r in removed], dtype=np.int64), int(last or seq)

    def truncate_changes(self, collection: str, upto_seq: int) -> None:
        """Drop log rows a durable snapshot already covers, and remember how far (:meth:`log_floor`)."""
        with self._tx() as c:
            c.execute("DELETE FROM changes WHERE collection = ? AND seq <= ?", (collection, int(upto_seq)))
            c.execute(
                "INSERT INTO change_floor(collection, seq) SELECT name, ? FROM collections WHERE name = ?"
                " ON CONFLICT(collection) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                (int(upto_seq), collection),
            )

    def log_floor(self, collection: str) -> int:
        """The seq up to which the collection's log was truncated: a snapshot older than this cannot be
        caught up by replay."""
        rows = self._read("SELECT seq FROM change_floor WHERE collection = ?", (collection,))
        return int(rows[0][0]) if rows else 0

    def face_count(self, collection: str) -> int:
        return int(self._read("SELECT COUNT(*) FROM faces WHERE collection = ?", (collection,))[0][0])


def _migrate(c: sqlite3.Connection) -> None:
    """Bring a store made by an older version up to this schema (idempotent)."""
    cols = {r[1] for r in c.execute("PRAGMA table_info(enroll_requests)")}
    if "request_hash" not in cols:
        c.execute("ALTER TABLE enroll_requests ADD COLUMN request_hash TEXT")
    if "first_face" not in cols:
        c.execute("ALTER TABLE enroll_requests ADD COLUMN first_face INTEGER")
        c.execute("ALTER TABLE enroll_requests ADD COLUMN last_face INTEGER")
        rows = c.execute("SELECT rowid, result FROM enroll_requests").fetchall()
        ranges = []
        for rowid, result in rows:
            ids = json.loads(result)["face_ids"]
            ranges.append((min(ids), max(ids), rowid))
        c.executemany("UPDATE enroll_requests SET first_face = ?, last_face = ? WHERE rowid = ?", ranges)
    c.execute("CREATE INDEX IF NOT EXISTS enroll_requests_by_face ON enroll_requests(collection, last_face)")


def _require_collection(c: sqlite3.Connection, name: str) -> None:
    if c.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone() is None:
        raise CollectionNotFound(f"collection {name!r} not found")


def _with_faces(c: sqlite3.Connection, collection: str, rows: list[tuple]) -> list[SubjectRecord]:
    """Subject records for ``rows`` (of :data:`_SELECT_SUBJECTS`, ordered by id) with their face ids,
    read in one query over the rows' id range."""
    if not rows:
        return []
    face_ids: dict[str, list[int]] = {}
    for subject_id, face_id in c.execute(
        "SELECT subject_id, face_id FROM faces WHERE collection = ? AND subject_id BETWEEN ? AND ? ORDER BY face_id",
        (collection, rows[0][0], rows[-1][0]),
    ):
        face_ids.setdefault(subject_id, []).append(face_id)
    return [
        SubjectRecord(collection, sid, name, json.loads(meta), json.loads(groups), created, tuple(face_ids.get(sid, ())))
        for sid, name, meta, groups, created in rows
    ]
