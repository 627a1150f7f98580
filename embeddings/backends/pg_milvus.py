"""PgMilvusGallery: the gallery over PostgreSQL (truth) and Milvus (candidates), for stateless replicas.

It exposes the methods :class:`embeddings.gallery.Gallery` does, with the same validation
(:mod:`embeddings.names`, :func:`~embeddings.gallery.normalise_vectors`), so ``FaceEngine(pipeline,
gallery)`` works with either. A replica keeps no state of its own: every call reads PostgreSQL, so
what one replica acknowledged the next call on any other sees.

Consistency model (what the replica tests check):

- A write commits to PostgreSQL first, then goes to Milvus, and is acknowledged after both. Milvus
  collections use Strong consistency, so an acknowledged enroll is identifiable from every replica at
  once. If Milvus fails after the commit the call still succeeds (the faces are stored) and the change
  stays in the log's outbox; a background pass on every replica replays outbox rows older than
  ``repair_after_s`` (1 s), so the face becomes identifiable within about that bound once Milvus is back.
- Deletes never come back: every search re-ranks its candidates with the vectors read from PostgreSQL
  in the same call, and a face without a row is dropped, whatever Milvus still holds.
- Thresholds, subjects and collections are read from PostgreSQL on every call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from embeddings import names
from embeddings.backends.milvus import MilvusVectors, milvus_index
from embeddings.backends.postgres import PgStore
from embeddings.config import GalleryConfig
from embeddings.errors import FaceNotFound, InvalidInput, LatentfaceError
from embeddings.gallery import CollectionStats, SearchHit, normalise_vectors
from embeddings.store import CollectionRecord, EnrollResult, SubjectRecord

__all__ = ["PgMilvusGallery"]

log = logging.getLogger(__name__)


def _request_hash(subject_id: str, model_id: str, display_name: str | None, metadata: Any, groups: Any, digest: str) -> str:
    """What identifies an enrollment request, for request-id replays (the embedded gallery's fields)."""
    try:
        fields = json.dumps([subject_id, model_id, display_name, metadata, groups, digest], sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be JSON-serialisable: {exc}") from exc
    return hashlib.sha256(fields.encode()).hexdigest()


class PgMilvusGallery:
    """Gallery over a shared PostgreSQL store and Milvus vector search. Thread-safe.

    Open with :meth:`open`. ``background=False`` runs no outbox replay thread (call :meth:`wait_idle`).
    """

    def __init__(
        self,
        config: GalleryConfig,
        store: PgStore,
        vectors: MilvusVectors,
        *,
        background: bool = True,
        repair_after_s: float = 1.0,
        poll_s: float = 0.25,
        log_retention_s: float = 7 * 86400.0,
    ) -> None:
        self.config = config
        self.store = store
        self.vectors = vectors
        self.repair_after_s = repair_after_s
        self.log_retention_s = log_retention_s
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._closed = False
        self._worker: threading.Thread | None = None
        if background:
            self._worker = threading.Thread(target=self._work, name="gallery-outbox", daemon=True)
            self._worker.start()

    @classmethod
    def open(
        cls, config: GalleryConfig, *, store: str, vectors: str, background: bool = True, pool_size: int = 8
    ) -> PgMilvusGallery:
        """Connect to PostgreSQL (``store``, a libpq DSN) and Milvus (``vectors``, a URI); migrate the schema."""
        pg = PgStore(store, pool_size=pool_size)
        try:
            mv = MilvusVectors(vectors, config.index)
        except BaseException:
            pg.close()
            raise
        return cls(config, pg, mv, background=background)

    def close(self, *, snapshot: bool = True) -> None:
        """Stop the outbox thread and close the connections (``snapshot`` is accepted for symmetry: nothing to save)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
        self.vectors.close()
        self.store.close()

    def __enter__(self) -> PgMilvusGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the outbox
    def _work(self) -> None:
        pruned_at = 0.0
        while not self._stop.wait(self._poll_s):
            try:
                self.replay_outbox()
                if time.monotonic() - pruned_at > 60.0:
                    pruned_at = time.monotonic()
                    self.store.prune_log(self.log_retention_s)
            except LatentfaceError:  # Milvus or PostgreSQL away: the rows stay; retried next round
                log.warning("replaying the vector outbox failed; will retry", exc_info=True)
            except Exception:  # keep the thread alive whatever happens
                log.exception("vector outbox replay failed")

    def replay_outbox(self, *, older_than_s: float | None = None) -> int:
        """Apply logged changes no replica confirmed to Milvus; returns how many rows were applied."""
        age = self.repair_after_s if older_than_s is None else older_than_s
        return self.store.claim_unapplied(self._apply_rows, older_than_s=age)

    def _apply_rows(self, rows: list[tuple[int, str, str, str, int]]) -> None:
        by_incarnation: dict[str, tuple[str, set[int], set[int]]] = {}
        for _seq, collection, incarnation, op, face_id in rows:
            _c, adds, removes = by_incarnation.setdefault(incarnation, (collection, set(), set()))
            (adds if op == "add" else removes).add(face_id)
        for incarnation, (collection, adds, removes) in by_incarnation.items():
            # Face ids are never reused: what still has a row is added, everything else removed.
            ids, _subjects, vecs = self.store.faces(collection, sorted(adds)) if adds else (np.empty(0, np.int64), [], None)
            if len(ids):
                self.vectors.upsert(incarnation, ids, vecs)
            gone = removes | (adds - set(ids.tolist()))
            if gone:
                self.vectors.remove(incarnation, sorted(gone))

    def wait_idle(self) -> None:
        """Replay every pending outbox row now, whatever its age."""
        while self.replay_outbox(older_than_s=-1.0):
            pass

    def snapshot(self, collection: str | None = None) -> None:
        """Nothing to do: PostgreSQL and Milvus persist themselves."""

    def rebuild_vectors(self, collection: str) -> int:
        """Rebuild the collection's Milvus side from PostgreSQL (after a lost or damaged Milvus); returns
        the vectors written. Searches meanwhile may miss faces, never return deleted ones."""
        rec = self.get_collection(collection)
        self.vectors.drop(rec.incarnation)
        n = 0
        for ids, vecs in self.store.iter_vectors(collection):
            self.vectors.upsert(rec.incarnation, ids, vecs)
            n += len(ids)
        # Faces deleted while we copied may have been copied after their Milvus delete: take them out again.
        stale = set(self.vectors.ids(rec.incarnation)) - set(self.store.face_ids(collection).tolist())
        if stale:
            self.vectors.remove(rec.incarnation, sorted(stale))
        self.vectors.flush(rec.incarnation)
        return n

    def build_index(self, collection: str) -> str:
        """Have Milvus index what it holds now (a flush); returns the index type."""
        self.vectors.flush(self.get_collection(collection).incarnation)
        return milvus_index(self.config.index)[0].lower()

    # ------------------------------------------------------------------ collections
    def create_collection(self, name: str, *, threshold: float | None = None) -> CollectionRecord:
        names.check_collection(name)
        t = self.config.default_threshold if threshold is None else float(threshold)
        return self.store.create_collection(name, threshold=t)

    def list_collections(self) -> list[CollectionRecord]:
        return self.store.list_collections()

    def get_collection(self, name: str) -> CollectionRecord:
        names.check_collection(name)
        return self.store.get_collection(name)

    def delete_collection(self, name: str) -> None:
        names.check_collection(name)
        rec = self.store.delete_collection(name)
        try:
            self.vectors.drop(rec.incarnation)
        except LatentfaceError:  # the rows are gone, so nothing of it can be returned; the Milvus side is an orphan
            log.warning("dropping the Milvus collection of %s failed", names.shown(name), exc_info=True)

    def set_threshold(self, name: str, threshold: float) -> None:
        names.check_collection(name)
        self.store.set_threshold(name, threshold)

    def collection_stats(self, name: str) -> CollectionStats:
        rec = self.get_collection(name)
        subjects, faces = self.store.counts(name)
        return CollectionStats(
            name=name,
            threshold=rec.threshold,
            model_id=rec.model_id,
            dim=rec.dim,
            subjects=subjects,
            faces=faces,
            index_kind="milvus-" + (self.vectors.index_type(rec.incarnation) or milvus_index(self.config.index)[0]).lower(),
            index_ntotal=self.vectors.count(rec.incarnation),
        )

    def index_size(self, name: str) -> int:
        """Faces in the collection (the store's count: every one of them is searchable)."""
        names.check_collection(name)
        return self.store.face_count(name)

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
        """Add faces to a subject (created when new); durable and searchable from every replica on return."""
        names.check_subject_id(subject_id)
        if request_id is not None:
            names.check_request_id(request_id)
        if not model_id:
            raise InvalidInput("model_id must not be empty")
        rec = self.get_collection(collection)
        vecs = normalise_vectors(vectors, rec.dim)
        request_hash = None
        if request_id is not None:
            digest = content_digest or hashlib.sha256(vecs.tobytes()).hexdigest()
            request_hash = _request_hash(subject_id, model_id, display_name, metadata, groups, digest)
        result, rec, seqs = self.store.add_faces(
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
            self._index_add(rec, np.asarray(result.face_ids, np.int64), vecs, seqs)
        return result

    def bulk_enroll(
        self, collection: str, subject_ids: Sequence[str], vectors: Any, *, model_id: str, maintain: bool = True
    ) -> np.ndarray:
        """Enroll many faces (row i belongs to ``subject_ids[i]``) in ONE transaction; returns their face ids."""
        rec = self.get_collection(collection)
        vecs = normalise_vectors(vectors, rec.dim)
        if len(subject_ids) != len(vecs):
            raise InvalidInput("need one subject id per vector")
        for s in set(subject_ids):
            names.check_subject_id(s)
        result, rec, seqs = self.store.add_faces(collection, list(subject_ids), vecs, model_id=model_id)
        ids = np.asarray(result.face_ids, np.int64)
        self._index_add(rec, ids, vecs, seqs)
        return ids

    def _index_add(self, rec: CollectionRecord, ids: np.ndarray, vecs: np.ndarray, seqs: list[int]) -> None:
        """Committed faces to Milvus; on failure they stay in the outbox (the call still succeeds)."""
        try:
            self.vectors.upsert(rec.incarnation, ids, vecs)
            # A replica may have deleted some of them between our commit and our upsert, and its Milvus
            # delete may have run first: take those out again rather than leave stale candidates.
            gone = set(ids.tolist()) - self.store.existing(ids.tolist())
            if gone:
                self.vectors.remove(rec.incarnation, sorted(gone))
            self.store.mark_applied(seqs)
        except LatentfaceError:
            log.warning(
                "adding %d vectors of collection %s to Milvus failed after commit; the outbox replays them",
                len(ids),
                names.shown(rec.name),
                exc_info=True,
            )

    def _index_remove(self, collection: str, incarnation: str, ids: Sequence[int], seqs: list[int]) -> None:
        try:
            self.vectors.remove(incarnation, ids)
            self.store.mark_applied(seqs)
        except LatentfaceError:  # searches re-check rows, so the faces are already never returned
            log.warning("removing vectors of %s from Milvus failed; the outbox replays it", names.shown(collection),
                        exc_info=True)

    # ------------------------------------------------------------------ subjects and faces
    def get_subject(self, collection: str, subject_id: str) -> SubjectRecord:
        names.check_collection(collection)
        return self.store.get_subject(collection, names.check_subject_id(subject_id))

    def list_subjects(
        self, collection: str, *, page_size: int = 100, page_token: str | None = None
    ) -> tuple[list[SubjectRecord], str | None]:
        """One page of subjects ordered by id, and the token of the next page (None at the end)."""
        names.check_collection(collection)
        after = names.page_after(page_token, page_size)
        return names.page_of(self.store.list_subjects(collection, after=after, limit=page_size + 1), page_size)

    def delete_subject(self, collection: str, subject_id: str) -> list[int]:
        """Delete a subject and every face of it; returns the removed face ids."""
        names.check_collection(collection)
        names.check_subject_id(subject_id)
        ids, incarnation, seqs = self.store.delete_subject(collection, subject_id)
        self._index_remove(collection, incarnation, ids, seqs)
        return ids

    def delete_face(self, collection: str, face_id: int) -> str:
        """Delete one face (FaceNotFound if absent); returns its subject id."""
        names.check_collection(collection)
        fid = names.face_id(face_id)
        if fid is None:
            self.store.get_collection(collection)
            raise FaceNotFound(f"face {names.shown(face_id)} not found in collection {collection!r}")
        subject, incarnation, seqs = self.store.delete_face(collection, fid)
        self._index_remove(collection, incarnation, [fid], seqs)
        return subject

    def subject_vectors(self, collection: str, subject_id: str) -> tuple[np.ndarray, np.ndarray, str | None]:
        names.check_collection(collection)
        return self.store.subject_vectors(collection, names.check_subject_id(subject_id))

    def face_ids(self, collection: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids in the store, ids in Milvus), both sorted: equal when the two agree."""
        rec = self.get_collection(collection)
        return self.store.face_ids(collection), np.asarray(sorted(self.vectors.ids(rec.incarnation)), np.int64)

    # ------------------------------------------------------------------ search
    def search(self, collection: str, vectors: Any, k: int) -> list[list[SearchHit]]:
        """Top-``k`` faces per query by exact cosine (best first). Deleted faces are never returned.

        Milvus proposes ``max(k, index.rerank_k)`` candidates; their stored vectors, read from
        PostgreSQL in this call, give the scores, so a face deleted on any replica is gone.
        """
        if k < 1:
            raise InvalidInput("k must be >= 1")
        rec = self.get_collection(collection)
        q = normalise_vectors(vectors, rec.dim)
        if rec.dim is None:
            return [[] for _ in range(len(q))]
        candidates = self.vectors.search(rec.incarnation, q, max(int(k), self.config.index.rerank_k))
        wanted = sorted({f for row in candidates for f in row})
        if not wanted:
            return [[] for _ in range(len(q))]
        ids, subjects, vecs = self.store.faces(collection, wanted)
        pos = {int(f): i for i, f in enumerate(ids)}
        out: list[list[SearchHit]] = []
        for qi, row in enumerate(candidates):
            live = [pos[f] for f in dict.fromkeys(row) if f in pos]
            if not live:
                out.append([])
                continue
            scores = vecs[live] @ q[qi]
            order = np.argsort(-scores, kind="stable")[:k]
            out.append([SearchHit(int(ids[live[j]]), subjects[live[j]], float(scores[j])) for j in order])
        return out
