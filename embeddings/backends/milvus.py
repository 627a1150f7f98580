"""Vector search in Milvus (a cluster, Milvus standalone, or Milvus Lite): candidates, not answers.

One Milvus collection per latentface collection, named by its incarnation (``lf_<hex>``), never by
its name, so a deleted collection's vectors can never serve a namesake. Rows are (face id, unit
vector); the metric is inner product, i.e. cosine. Collections are created with Strong consistency:
a search issued after an insert or delete returned sees it, on every client of the same Milvus.

The index policy maps the project's :class:`~embeddings.config.IndexConfig`: a factory string
``IVF<n>,Flat`` becomes ``IVF_FLAT`` (``IVF<n>,SQ8`` and the 4-bit fast-scan default ``IVF_SQ8``, ``IVF<n>,PQ<m>`` ``IVF_PQ``) searched
with ``nprobe``, ``HNSW<M>`` becomes ``HNSW`` with ``ef`` = ``rerank_k``, anything else ``FLAT`` (exact). Milvus searches segments not yet indexed by brute
force, so a small collection is searched exactly whatever the type. Scores from here are only used
to pick candidates: the gallery re-ranks them with the stored vectors.

The URI is ``http://host:19530`` (a Milvus server or ``milvus-lite server``) or a Milvus Lite file
path (``./vectors.db``: one process only).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence

import numpy as np

from embeddings.config import IndexConfig
from embeddings.errors import InvalidInput, StorageError, Unavailable

__all__ = ["MilvusVectors", "milvus_index"]

log = logging.getLogger(__name__)

_INCARNATION = re.compile(r"[0-9a-f]{1,64}")
_INSERT_BATCH = 8192
# Milvus' own bound on topk.
_MAX_LIMIT = 16_384


def milvus_index(config: IndexConfig) -> tuple[str, dict, dict]:
    """(index type, build params, search params) for the project's index policy."""
    factory = config.ann_factory.upper()
    if factory.startswith("IVF"):
        m = re.match(r"IVF(\d+)", factory)
        nlist = int(m.group(1)) if m else 1024  # "{nlist}" follows the size in FAISS; Milvus fixes it at build
        search = {"nprobe": config.nprobe}
        # 1 byte a dimension in memory; the re-rank restores exact scores. Milvus has no 4-bit
        # fast-scan lists, so FAISS's default (PQ..x4fs) maps to its nearest kin here.
        if ",SQ8" in factory or "X4FS" in factory:
            return "IVF_SQ8", {"nlist": nlist}, search
        if pq := re.search(r",PQ(\d+)", factory):
            return "IVF_PQ", {"nlist": nlist, "m": int(pq.group(1)), "nbits": 8}, search
        return "IVF_FLAT", {"nlist": nlist}, search
    if factory.startswith("HNSW"):
        m = re.match(r"HNSW(\d+)", factory)
        return "HNSW", {"M": int(m.group(1)) if m else 32, "efConstruction": 200}, {"ef": max(64, config.rerank_k)}
    return "FLAT", {}, {}


def _name(incarnation: str) -> str:
    if not _INCARNATION.fullmatch(incarnation):
        raise StorageError("collection incarnation is not a hex id")
    return "lf_" + incarnation


class MilvusVectors:
    """Vectors of every collection in one Milvus. Thread-safe (pymilvus' client is)."""

    def __init__(self, uri: str, index: IndexConfig, *, timeout_s: float = 10.0) -> None:
        from pymilvus import MilvusClient, MilvusException  # imported here: the embedded default needs none

        self._exc = MilvusException
        self.uri = uri
        self._index = index
        self._timeout = timeout_s
        self._known: set[str] = set()
        self._lock = threading.Lock()
        try:
            self._client = MilvusClient(uri=uri, timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - pymilvus raises its own and grpc's errors at connect
            raise Unavailable(f"cannot connect to Milvus at {uri}: {exc}") from exc

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must not fail shutdown
            log.debug("closing the Milvus client failed", exc_info=True)

    def _call(self, what: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except self._exc as exc:
            raise StorageError(f"Milvus {what} failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - grpc errors under pymilvus: the server is away
            raise Unavailable(f"Milvus {what} failed ({self.uri}): {exc}") from exc

    # ------------------------------------------------------------------ collections
    def ensure(self, incarnation: str, dim: int) -> str:
        """The Milvus collection of this incarnation, created (and loaded) if missing; idempotent across replicas."""
        name = _name(incarnation)
        if name in self._known:
            return name
        with self._lock:
            if name in self._known:
                return name
            if not self._call("has_collection", self._client.has_collection, name):
                try:
                    self._create(name, dim)
                except StorageError:
                    # Another replica may have created it first.
                    if not self._call("has_collection", self._client.has_collection, name):
                        raise
            self._known.add(name)
        return name

    def _create(self, name: str, dim: int) -> None:
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=int(dim))
        kind, params, _search = milvus_index(self._index)
        index = self._client.prepare_index_params()
        index.add_index(field_name="vec", index_type=kind, metric_type="IP", params=params)
        self._call(
            "create_collection",
            self._client.create_collection,
            name,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
        )

    def flush(self, incarnation: str) -> None:
        """Seal the collection's growing segments so its index is built (searches of growing segments
        are brute force: after a bulk load this is much faster)."""
        name = _name(incarnation)
        if self._call("has_collection", self._client.has_collection, name):
            self._call("flush", self._client.flush, name)

    def index_type(self, incarnation: str) -> str | None:
        """The index type Milvus reports for the collection (None before its first vectors)."""
        name = _name(incarnation)
        if not self._call("has_collection", self._client.has_collection, name):
            return None
        indexes = self._call("list_indexes", self._client.list_indexes, name)
        if not indexes:
            return None
        return str(self._call("describe_index", self._client.describe_index, name, indexes[0])["index_type"])

    def exists(self, incarnation: str) -> bool:
        return bool(self._call("has_collection", self._client.has_collection, _name(incarnation)))

    def drop(self, incarnation: str) -> None:
        name = _name(incarnation)
        with self._lock:
            self._known.discard(name)
        if self._call("has_collection", self._client.has_collection, name):
            self._call("drop_collection", self._client.drop_collection, name)

    def count(self, incarnation: str) -> int:
        name = _name(incarnation)
        if not self._call("has_collection", self._client.has_collection, name):
            return 0
        rows = self._call("count", self._client.query, name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def ids(self, incarnation: str) -> list[int]:
        """Every face id in the collection (consistency checks; pages through by id)."""
        name = _name(incarnation)
        if not self._call("has_collection", self._client.has_collection, name):
            return []
        out: list[int] = []
        last = -1
        while True:
            rows = self._call(
                "query", self._client.query, name, filter=f"id > {last}", output_fields=["id"], limit=_MAX_LIMIT
            )
            if not rows:
                return out
            page = sorted(int(r["id"]) for r in rows)
            out.extend(page)
            last = page[-1]

    # ------------------------------------------------------------------ rows
    def upsert(self, incarnation: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace rows (idempotent: a replayed change writes the same row)."""
        if not len(ids):
            return
        name = self.ensure(incarnation, vectors.shape[1])
        for start in range(0, len(ids), _INSERT_BATCH):
            rows = [
                {"id": int(i), "vec": v.tolist()}
                for i, v in zip(ids[start : start + _INSERT_BATCH], vectors[start : start + _INSERT_BATCH], strict=True)
            ]
            self._call("upsert", self._client.upsert, name, rows)

    def remove(self, incarnation: str, ids: Sequence[int]) -> None:
        """Delete rows by face id (idempotent; a missing collection has nothing to delete)."""
        if not len(ids):
            return
        name = _name(incarnation)
        if name not in self._known and not self._call("has_collection", self._client.has_collection, name):
            return
        self._call("delete", self._client.delete, name, ids=[int(i) for i in ids])

    def search(self, incarnation: str, queries: np.ndarray, limit: int) -> list[list[int]]:
        """Candidate face ids per query, best first (at most ``limit``; Milvus caps it at 16384)."""
        if limit < 1:
            raise InvalidInput("limit must be >= 1")
        name = _name(incarnation)
        if name not in self._known and not self._call("has_collection", self._client.has_collection, name):
            return [[] for _ in range(len(queries))]
        _kind, _params, search_params = milvus_index(self._index)
        res = self._call(
            "search",
            self._client.search,
            name,
            data=[q.tolist() for q in queries],
            limit=min(int(limit), _MAX_LIMIT),
            output_fields=["id"],
            search_params={"metric_type": "IP", "params": search_params},
        )
        return [[int(hit["id"]) for hit in hits] for hits in res]
