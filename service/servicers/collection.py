"""CollectionService: create, list, delete and tune galleries; calibrate thresholds from labelled scores."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from embeddings.errors import InvalidInput
from service._generated.latentface.v1 import collection_pb2, collection_pb2_grpc
from service.auth import authorize, visible_collections
from service.servicers._common import require

__all__ = ["CollectionServicer"]


def _collection_to_proto(record: Any) -> collection_pb2.Collection:
    return collection_pb2.Collection(name=record.name, threshold=float(record.threshold), model_id=record.model_id or "")


class CollectionServicer(collection_pb2_grpc.CollectionServiceServicer):
    """CollectionService over a FaceEngine. Creating, deleting and re-thresholding need the admin role."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def CreateCollection(
        self, request: collection_pb2.CreateCollectionRequest, context: grpc.ServicerContext
    ) -> collection_pb2.Collection:
        name = require(request.name, "name")
        authorize(name, "admin")
        threshold = request.threshold if request.HasField("threshold") else None
        return _collection_to_proto(self._engine.create_collection(name, threshold=threshold))

    def ListCollections(
        self, request: collection_pb2.ListCollectionsRequest, context: grpc.ServicerContext
    ) -> collection_pb2.ListCollectionsResponse:
        authorize(None, "read")
        records = {r.name: r for r in self._engine.list_collections()}
        return collection_pb2.ListCollectionsResponse(
            collections=[_collection_to_proto(records[n]) for n in visible_collections(records)]
        )

    def DeleteCollection(
        self, request: collection_pb2.DeleteCollectionRequest, context: grpc.ServicerContext
    ) -> collection_pb2.DeleteCollectionResponse:
        name = require(request.name, "name")
        authorize(name, "admin")
        self._engine.delete_collection(name)
        return collection_pb2.DeleteCollectionResponse()

    def GetCollectionStats(
        self, request: collection_pb2.GetCollectionStatsRequest, context: grpc.ServicerContext
    ) -> collection_pb2.CollectionStats:
        name = require(request.name, "name")
        authorize(name, "read")
        stats = self._engine.collection_stats(name)
        return collection_pb2.CollectionStats(
            collection=_collection_to_proto(stats),
            subjects=int(stats.subjects),
            faces=int(stats.faces),
            index_kind=str(getattr(stats, "index_kind", "") or ""),
        )

    def SetThreshold(
        self, request: collection_pb2.SetThresholdRequest, context: grpc.ServicerContext
    ) -> collection_pb2.Collection:
        name = require(request.name, "name")
        authorize(name, "admin")
        if not -1.0 <= request.threshold <= 1.0:
            raise InvalidInput(f"threshold must be a cosine in [-1, 1], got {request.threshold}")
        self._engine.set_threshold(name, request.threshold)
        return _collection_to_proto(self._engine.get_collection(name))

    def Calibrate(
        self, request: collection_pb2.CalibrateRequest, context: grpc.ServicerContext
    ) -> collection_pb2.CalibrateResponse:
        if request.apply:
            authorize(require(request.collection, "collection (to apply the threshold to)"), "admin")
        else:
            authorize(request.collection or None, "read")
        if len(request.scores) != len(request.same_identity):
            raise InvalidInput(f"{len(request.scores)} scores but {len(request.same_identity)} same_identity labels")
        if not 0 < request.target_fmr < 1:
            raise InvalidInput(f"target_fmr must be in (0, 1), got {request.target_fmr}")
        result = self._engine.calibrate(
            np.asarray(request.scores, dtype=np.float64),
            np.asarray(request.same_identity, dtype=bool),
            target_fmr=request.target_fmr,
        )
        if request.apply:
            self._engine.set_threshold(request.collection, result.threshold)
        return collection_pb2.CalibrateResponse(
            threshold=float(result.threshold),
            fmr=float(result.fmr),
            fnmr=float(result.fnmr),
            n_genuine=int(result.n_genuine),
            n_impostor=int(result.n_impostor),
            applied=request.apply,
        )
