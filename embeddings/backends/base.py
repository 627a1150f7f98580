"""The small interfaces a gallery backend implements (DESIGN.md section 3).

:class:`GalleryBackend` is what :class:`~embeddings.engine.FaceEngine`, :mod:`embeddings.match` and
:mod:`embeddings.dataset` call: the embedded :class:`~embeddings.gallery.Gallery` (SQLite + FAISS, one
process) and :class:`~embeddings.backends.pg_milvus.PgMilvusGallery` (PostgreSQL + Milvus, stateless
replicas) both satisfy it. Underneath, a gallery joins a store of record and a vector search:

- :class:`VectorSearch` proposes candidates and forgets deleted ids; it is derived data;
- the store (SQLite's :class:`~embeddings.store.GalleryStore`, PostgreSQL's
  :class:`~embeddings.backends.postgres.PgStore`) holds collections, subjects, faces with their
  vectors and the change log, and its vectors give every returned score (the exact re-rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from embeddings.config import GalleryConfig
from embeddings.gallery import CollectionStats, SearchHit
from embeddings.store import CollectionRecord, EnrollResult, SubjectRecord

__all__ = ["GalleryBackend", "VectorSearch"]


@runtime_checkable
class GalleryBackend(Protocol):
    """Collections, subjects and faces, durable on return, with exact-cosine search."""

    config: GalleryConfig

    def create_collection(self, name: str, *, threshold: float | None = None) -> CollectionRecord: ...
    def list_collections(self) -> list[CollectionRecord]: ...
    def get_collection(self, name: str) -> CollectionRecord: ...
    def delete_collection(self, name: str) -> None: ...
    def set_threshold(self, name: str, threshold: float) -> None: ...
    def collection_stats(self, name: str) -> CollectionStats: ...
    def index_size(self, name: str) -> int: ...

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
    ) -> EnrollResult: ...

    def bulk_enroll(
        self, collection: str, subject_ids: Sequence[str], vectors: Any, *, model_id: str, maintain: bool = True
    ) -> np.ndarray: ...

    def get_subject(self, collection: str, subject_id: str) -> SubjectRecord: ...
    def list_subjects(
        self, collection: str, *, page_size: int = 100, page_token: str | None = None
    ) -> tuple[list[SubjectRecord], str | None]: ...
    def delete_subject(self, collection: str, subject_id: str) -> list[int]: ...
    def delete_face(self, collection: str, face_id: int) -> str: ...
    def subject_vectors(self, collection: str, subject_id: str) -> tuple[np.ndarray, np.ndarray, str | None]: ...
    def face_ids(self, collection: str) -> tuple[np.ndarray, np.ndarray]: ...
    def search(self, collection: str, vectors: Any, k: int) -> list[list[SearchHit]]: ...

    def snapshot(self, collection: str | None = None) -> None: ...
    def build_index(self, collection: str) -> str: ...
    def wait_idle(self) -> None: ...
    def close(self, *, snapshot: bool = True) -> None: ...


@runtime_checkable
class VectorSearch(Protocol):
    """Candidate search over unit vectors, by collection incarnation; deletes are idempotent."""

    def upsert(self, incarnation: str, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, incarnation: str, ids: Sequence[int]) -> None: ...
    def search(self, incarnation: str, queries: np.ndarray, limit: int) -> list[list[int]]: ...
    def drop(self, incarnation: str) -> None: ...
    def count(self, incarnation: str) -> int: ...
