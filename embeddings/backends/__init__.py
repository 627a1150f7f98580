"""Gallery backends: the interfaces (:mod:`.base`) and the PostgreSQL + Milvus one for replicas.

The embedded default is :class:`embeddings.gallery.Gallery` (SQLite + FAISS). PostgreSQL and Milvus
need the ``scale`` extra (``pip install latentface[scale]``); nothing here imports them until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embeddings.backends.base import GalleryBackend, VectorSearch

if TYPE_CHECKING:
    from embeddings.backends.pg_milvus import PgMilvusGallery

__all__ = ["GalleryBackend", "PgMilvusGallery", "VectorSearch", "open_gallery"]


def open_gallery(config: Any, *, store: str | None = None, vectors: str | None = None, background: bool = True) -> Any:
    """The embedded gallery under ``config.data_dir`` when neither ``store`` nor ``vectors`` is set,
    else the PostgreSQL (``store``) + Milvus (``vectors``) gallery; both must then be set."""
    from embeddings.errors import InvalidInput

    if store is None and vectors is None:
        from embeddings.gallery import Gallery

        return Gallery.open(config, background=background)
    if store is None or vectors is None:
        raise InvalidInput("a PostgreSQL store and a Milvus vector search go together: set both store and vectors")
    from embeddings.backends.pg_milvus import PgMilvusGallery

    return PgMilvusGallery.open(config, store=store, vectors=vectors, background=background)


def __getattr__(name: str) -> Any:
    if name == "PgMilvusGallery":  # lazily: importing the package must not need psycopg or pymilvus
        from embeddings.backends.pg_milvus import PgMilvusGallery

        return PgMilvusGallery
    raise AttributeError(name)
