"""Thin gRPC servicers over :class:`embeddings.engine.FaceEngine`: validate, convert, call, convert back."""

from __future__ import annotations

from service.servicers._common import ServingState
from service.servicers.collection import CollectionServicer
from service.servicers.face import FaceServicer

__all__ = ["CollectionServicer", "FaceServicer", "ServingState"]
