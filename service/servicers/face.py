"""FaceService: detection, embedding, enrollment, verification and identification over the engine.

Image calls pass the call's deadline down to the engine as a ``time.monotonic()`` instant, so the
work stops between stages (and leaves the batchers' queues) once the client has stopped waiting,
and run inside ``track()`` so the batchers know how many image calls are on their way. A call
whose client set no deadline gets ``server.default_deadline_s`` (each EnrollStream message its
own); Enroll also stops, storing nothing, once the client cancels. One Enroll (or EnrollStream
message) carries at most ``server.max_images_per_request`` images.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import grpc
import numpy as np

from embeddings.errors import AlreadyExists, InvalidInput, LimitExceeded, NotFound, Unavailable
from service import convert
from service._generated.latentface.v1 import face_pb2, face_pb2_grpc
from service.auth import authorize
from service.config import ServerConfig
from service.errors import ENROLLED_KEY, status_for
from service.servicers._common import ServingState, check_deadline, require

__all__ = ["ENROLLED_KEY", "FaceServicer", "MAX_K", "MAX_PAGE_SIZE", "call_deadline"]

log = logging.getLogger("latentface.service")

MAX_K = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# Per-message failures EnrollStream reports and goes on from; anything else ends the stream.
_REJECTABLE = (InvalidInput, NotFound, LimitExceeded, AlreadyExists)
# gRPC reports a call without a deadline as one ~forever away; past this many seconds it is "none".
_NO_DEADLINE_S = 1e7


def call_deadline(context: grpc.ServicerContext, default_s: float | None = None) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant; ``default_s`` from now (or None) when the client set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None if default_s is None else time.monotonic() + default_s
    return time.monotonic() + remaining


def _optional(request: Any, field: str) -> Any:
    return getattr(request, field) if request.HasField(field) else None


class FaceServicer(face_pb2_grpc.FaceServiceServicer):
    """FaceService over a FaceEngine. Every RPC checks the caller's role on the collection it touches."""

    def __init__(
        self,
        engine: Any,
        *,
        state: ServingState | None = None,
        track: Callable[[], AbstractContextManager[Any]] | None = None,
        limits: ServerConfig | None = None,
    ) -> None:
        self._engine = engine
        self._state = state or ServingState()
        self._track = track or contextlib.nullcontext
        limits = limits or ServerConfig()
        self._max_images = limits.max_images_per_request
        self._default_deadline_s = limits.default_deadline_s

    def _deadline(self, context: grpc.ServicerContext) -> float | None:
        return call_deadline(context, self._default_deadline_s)

    # -- faces -------------------------------------------------------------------------------------
    def Detect(self, request: face_pb2.DetectRequest, context: grpc.ServicerContext) -> face_pb2.DetectResponse:
        authorize(None, "read")
        with self._track():
            faces = self._engine.detect(request.image, deadline=self._deadline(context))
        return face_pb2.DetectResponse(faces=[convert.face_to_proto(f) for f in faces])

    def Embed(self, request: face_pb2.EmbedRequest, context: grpc.ServicerContext) -> face_pb2.EmbedResponse:
        authorize(None, "read")
        with self._track():
            if request.aligned_crop:
                embeddings = [self._engine.embed_crop(request.image, deadline=self._deadline(context))]
            else:
                embeddings = self._engine.embed(request.image, deadline=self._deadline(context))
        return face_pb2.EmbedResponse(faces=[convert.face_embedding_to_proto(e) for e in embeddings])

    # -- enrollment --------------------------------------------------------------------------------
    def _enroll(
        self, request: face_pb2.EnrollRequest, deadline: float | None, cancelled: Callable[[], bool]
    ) -> face_pb2.EnrollResponse:
        collection = require(request.collection, "collection")
        subject_id = require(request.subject_id, "subject_id")
        authorize(collection, "write")
        common = dict(
            display_name=request.display_name or None,
            metadata=dict(request.metadata) or None,
            groups=dict(request.groups) or None,
            request_id=request.request_id or None,
        )
        if request.images and request.embeddings:
            raise InvalidInput("give images or embeddings, not both")
        if len(request.images) > self._max_images:
            raise LimitExceeded(
                f"{len(request.images)} images in one enrollment, over the limit of {self._max_images}; "
                "send them in several requests (or EnrollStream messages)"
            )
        if request.images:
            with self._track():
                result = self._engine.enroll(
                    collection,
                    subject_id,
                    list(request.images),
                    deadline=deadline,
                    cancelled=cancelled,
                    aligned_crops=request.aligned_crops,
                    **common,
                )
        elif request.embeddings:
            pairs = [convert.embedding_from_proto(e) for e in request.embeddings]
            model_ids = {m for _, m in pairs}
            if len(model_ids) != 1:
                raise InvalidInput(f"embeddings of one request must come from one model, got {sorted(model_ids)}")
            vectors = np.stack([v for v, _ in pairs])
            result = self._engine.enroll_embeddings(collection, subject_id, vectors, model_ids.pop(), **common)
        else:
            raise InvalidInput("images or embeddings are required")
        return face_pb2.EnrollResponse(
            subject_id=result.subject_id,
            face_ids=[str(f) for f in result.face_ids],
            created_subject=result.created_subject,
            replayed=result.replayed,
        )

    def Enroll(self, request: face_pb2.EnrollRequest, context: grpc.ServicerContext) -> face_pb2.EnrollResponse:
        return self._enroll(request, self._deadline(context), _gone(context))

    def EnrollStream(
        self, request_iterator: Iterator[face_pb2.EnrollRequest], context: grpc.ServicerContext
    ) -> face_pb2.EnrollStreamResponse:
        out = face_pb2.EnrollStreamResponse()

        def committed() -> None:
            # Set before every step that may end the stream, so any status carries the count.
            context.set_trailing_metadata(((ENROLLED_KEY, str(out.enrolled)),))

        committed()
        for index, request in enumerate(request_iterator):
            if self._state.shutting_down.is_set():
                raise Unavailable(
                    f"server is shutting down; {out.enrolled} enrollments of this stream were committed, "
                    f"resend from message {index}"
                )
            check_deadline(context, f"after {out.enrolled} enrollments")
            try:
                result = self._enroll(request, self._deadline(context), _gone(context))
            except _REJECTABLE as exc:
                out.rejected.append(
                    face_pb2.EnrollRejection(
                        index=index,
                        subject_id=request.subject_id,
                        request_id=request.request_id,
                        code=status_for(exc).name,
                        message=str(exc),
                        reasons=list(getattr(exc, "reasons", ())),
                    )
                )
                continue
            out.results.append(result)
            out.enrolled += 1
            out.faces += len(result.face_ids)
            committed()
        return out

    # -- matching ----------------------------------------------------------------------------------
    def Verify(self, request: face_pb2.VerifyRequest, context: grpc.ServicerContext) -> face_pb2.VerifyResponse:
        probe = request.WhichOneof("probe")
        reference = request.WhichOneof("reference")
        if probe is None or reference is None:
            raise InvalidInput("verify needs a probe (image or embedding) and a reference (reference_image or subject_id)")
        threshold = _optional(request, "threshold")
        collection = request.collection or None
        authorize(collection, "read")
        engine = self._engine
        if reference == "reference_image":
            if probe != "image":
                raise InvalidInput("an embedding can be verified against a subject, not against an image")
            with self._track():
                result = engine.verify_images(
                    request.image,
                    request.reference_image,
                    collection=collection,
                    threshold=threshold,
                    deadline=self._deadline(context),
                )
            return face_pb2.VerifyResponse(
                decision=convert.decision_to_proto(result.decision),
                probe_face=convert.face_to_proto(result.face_a),
                reference_face=convert.face_to_proto(result.face_b),
            )
        collection = require(request.collection, "collection")
        if probe == "image":
            with self._track():
                result = engine.verify_subject(
                    request.image, collection, request.subject_id, threshold=threshold, deadline=self._deadline(context)
                )
            face = convert.face_to_proto(result.face_a)
        else:
            vector, model_id = convert.embedding_from_proto(request.embedding)
            decision = engine.verify_embedding(vector, model_id, collection, request.subject_id, threshold=threshold)
            return face_pb2.VerifyResponse(decision=convert.decision_to_proto(decision))
        return face_pb2.VerifyResponse(decision=convert.decision_to_proto(result.decision), probe_face=face)

    def Identify(self, request: face_pb2.IdentifyRequest, context: grpc.ServicerContext) -> face_pb2.IdentifyResponse:
        collection = require(request.collection, "collection")
        authorize(collection, "read")
        k = request.k or 5
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be in 1..{MAX_K}, got {k}")
        threshold = _optional(request, "threshold")
        with self._track():
            result = self._engine.identify(request.image, collection, k=k, threshold=threshold, deadline=self._deadline(context))
        used = result.threshold  # the one is_match was decided with, not a second read of the collection
        model_id = self._engine.model_id or ""
        return face_pb2.IdentifyResponse(
            face=convert.face_to_proto(result.face),
            candidates=[convert.candidate_to_proto(c, threshold=used, model_id=model_id) for c in result.candidates],
        )

    # -- subjects ----------------------------------------------------------------------------------
    def GetSubject(self, request: face_pb2.GetSubjectRequest, context: grpc.ServicerContext) -> face_pb2.Subject:
        collection = require(request.collection, "collection")
        authorize(collection, "read")
        return _subject_to_proto(self._engine.get_subject(collection, require(request.subject_id, "subject_id")))

    def ListSubjects(
        self, request: face_pb2.ListSubjectsRequest, context: grpc.ServicerContext
    ) -> face_pb2.ListSubjectsResponse:
        collection = require(request.collection, "collection")
        authorize(collection, "read")
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidInput(f"page_size must be in 1..{MAX_PAGE_SIZE}, got {size}")
        subjects, next_token = self._engine.list_subjects(collection, page_size=size, page_token=request.page_token or None)
        return face_pb2.ListSubjectsResponse(
            subjects=[_subject_to_proto(s) for s in subjects], next_page_token=next_token or ""
        )

    def DeleteSubject(
        self, request: face_pb2.DeleteSubjectRequest, context: grpc.ServicerContext
    ) -> face_pb2.DeleteSubjectResponse:
        collection = require(request.collection, "collection")
        authorize(collection, "write")
        face_ids = self._engine.delete_subject(collection, require(request.subject_id, "subject_id"))
        return face_pb2.DeleteSubjectResponse(deleted_faces=len(face_ids))

    def DeleteFace(self, request: face_pb2.DeleteFaceRequest, context: grpc.ServicerContext) -> face_pb2.DeleteFaceResponse:
        collection = require(request.collection, "collection")
        authorize(collection, "write")
        self._engine.delete_face(collection, convert.face_id_from_wire(require(request.face_id, "face_id")))
        return face_pb2.DeleteFaceResponse()


def _gone(context: grpc.ServicerContext) -> Callable[[], bool]:
    """"The client went away": a cancelled (or otherwise ended) call is no longer active."""
    return lambda: not context.is_active()


def _subject_to_proto(subject: Any) -> face_pb2.Subject:
    return face_pb2.Subject(
        collection=subject.collection,
        subject_id=subject.subject_id,
        display_name=subject.display_name or "",
        metadata=convert.string_map(subject.metadata),
        groups=convert.string_map(subject.groups),
        face_ids=[str(f) for f in subject.face_ids],
    )
