"""Client-side pieces that need no server: wire conversions and the status ↔ error mapping."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from embeddings import errors
from embeddings.types import DetectedFace, FaceEmbedding, MatchDecision, Quality
from service import convert
from service.errors import REASONS_KEY, REQUEST_ID_KEY, error_from_status, status_for


def _face() -> DetectedFace:
    return DetectedFace(
        box=(10.5, 20.25, 110.0, 140.75),
        landmarks=((40.0, 60.0), (80.0, 61.5), (60.0, 90.0), (45.0, 110.0), (75.0, 111.0)),
        probability=0.998046875,  # exactly representable in float32
        quality=Quality(("BLURRY", "TOO_SMALL"), 39.5, 12.25, 3.5, -2.0, 1.25, 0.0),
    )


def test_face_round_trips_through_the_wire() -> None:
    face = _face()
    msg = convert.face_to_proto(face)
    again = convert.face_from_proto(type(msg).FromString(msg.SerializeToString()))
    assert again == face
    assert msg.quality.passed is False and list(msg.quality.reasons) == ["BLURRY", "TOO_SMALL"]


def test_embedding_and_decision_round_trip(rng: np.random.Generator) -> None:
    v = rng.normal(size=512).astype(np.float32)
    v /= np.linalg.norm(v)
    emb = FaceEmbedding(face=_face(), vector=v, model_id="m/1")
    back = convert.face_embedding_from_proto(convert.face_embedding_to_proto(emb))
    np.testing.assert_array_equal(back.vector, v)  # float32 on the wire: bit-exact
    assert back.model_id == "m/1" and back.face == emb.face
    d = MatchDecision(score=0.73125, threshold=0.5, is_match=True, model_id="m/1")
    assert convert.decision_from_proto(convert.decision_to_proto(d)) == d


def test_embedding_without_model_id_is_rejected() -> None:
    with pytest.raises(errors.InvalidInput, match="model_id"):
        convert.embedding_from_proto(convert.embedding_to_proto(np.ones(4), ""))
    with pytest.raises(errors.InvalidInput):
        convert.face_id_from_wire("not-an-id")
    assert convert.face_id_from_wire("42") == 42
    assert convert.string_map({"a": "x", "b": 3, "c": [1, 2]}) == {"a": "x", "b": "3", "c": "[1, 2]"}


@pytest.mark.parametrize(
    ("exc", "code", "client_cls"),
    [
        (errors.InvalidImage("bad"), grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidInput),
        (errors.NoFaceFound("none"), grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidInput),
        (errors.ModelMismatch("mix"), grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidInput),
        (errors.SubjectNotFound("s"), grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (errors.CollectionNotFound("c"), grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (errors.ImageTooLarge("big"), grpc.StatusCode.RESOURCE_EXHAUSTED, errors.LimitExceeded),
        (errors.WeightsUnavailable("w"), grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (errors.IndexNotReady("i"), grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (errors.Unauthenticated("k"), grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (errors.PermissionDenied("p"), grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (errors.AlreadyExists("a"), grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (errors.DeadlineExceeded("d"), grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (errors.StorageError("disk"), grpc.StatusCode.INTERNAL, errors.LatentfaceError),
        (RuntimeError("bug"), grpc.StatusCode.INTERNAL, errors.LatentfaceError),
    ],
)
def test_status_mapping_and_its_reverse(exc: BaseException, code: grpc.StatusCode, client_cls: type) -> None:
    assert status_for(exc) is code
    back = error_from_status(code, "msg", ((REQUEST_ID_KEY, "rid-1"),))
    assert type(back) is client_cls
    assert back.status_code is code and back.request_id == "rid-1"


def test_quality_reasons_come_back_as_quality_rejected() -> None:
    back = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "face failed", ((REASONS_KEY, "BLURRY,EXTREME_POSE"),))
    assert isinstance(back, errors.QualityRejected)
    assert back.reasons == ("BLURRY", "EXTREME_POSE")
