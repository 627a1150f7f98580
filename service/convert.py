"""Conversions between latentface.v1 messages and domain values, both ways.

Servicers use the ``*_to_proto`` direction, the client the ``*_from_proto`` one, so a value
survives a round trip through the wire unchanged (a test pins that).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from embeddings.errors import InvalidInput
from embeddings.names import shown
from embeddings.types import Candidate, DetectedFace, FaceEmbedding, MatchDecision, Quality
from service._generated.latentface.v1 import common_pb2, face_pb2

__all__ = [
    "candidate_to_proto",
    "decision_from_proto",
    "decision_to_proto",
    "embedding_from_proto",
    "embedding_to_proto",
    "face_from_proto",
    "face_id_from_wire",
    "face_to_proto",
    "string_map",
]


def face_to_proto(face: DetectedFace | None) -> common_pb2.Face | None:
    if face is None:
        return None
    x1, y1, x2, y2 = face.box
    q = face.quality
    return common_pb2.Face(
        box=common_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2),
        landmarks=[common_pb2.Point(x=x, y=y) for x, y in face.landmarks],
        probability=face.probability,
        quality=common_pb2.Quality(
            reasons=list(q.reasons),
            passed=q.passed,
            face_px=q.face_px,
            sharpness=q.sharpness,
            yaw_deg=q.yaw_deg,
            pitch_deg=q.pitch_deg,
            roll_deg=q.roll_deg,
            outside_fraction=q.outside_fraction,
        ),
    )


def face_from_proto(msg: common_pb2.Face) -> DetectedFace:
    q = msg.quality
    return DetectedFace(
        box=(msg.box.x1, msg.box.y1, msg.box.x2, msg.box.y2),
        landmarks=tuple((p.x, p.y) for p in msg.landmarks),
        probability=msg.probability,
        quality=Quality(
            reasons=tuple(q.reasons),
            face_px=q.face_px,
            sharpness=q.sharpness,
            yaw_deg=q.yaw_deg,
            pitch_deg=q.pitch_deg,
            roll_deg=q.roll_deg,
            outside_fraction=q.outside_fraction,
        ),
    )


def embedding_to_proto(vector: np.ndarray, model_id: str) -> common_pb2.Embedding:
    return common_pb2.Embedding(vector=np.asarray(vector, dtype=np.float32).ravel().tolist(), model_id=model_id)


def embedding_from_proto(msg: common_pb2.Embedding) -> tuple[np.ndarray, str]:
    """The vector (float32, 1-D) and model id; an empty vector or model id is a bad argument."""
    if not msg.vector:
        raise InvalidInput("embedding.vector is empty")
    if not msg.model_id:
        raise InvalidInput("embedding.model_id is required (embeddings of different models are not comparable)")
    return np.asarray(msg.vector, dtype=np.float32), msg.model_id


def face_embedding_to_proto(emb: FaceEmbedding) -> face_pb2.FaceWithEmbedding:
    return face_pb2.FaceWithEmbedding(face=face_to_proto(emb.face), embedding=embedding_to_proto(emb.vector, emb.model_id))


def face_embedding_from_proto(msg: face_pb2.FaceWithEmbedding) -> FaceEmbedding:
    vector, model_id = embedding_from_proto(msg.embedding)
    return FaceEmbedding(face=face_from_proto(msg.face) if msg.HasField("face") else None, vector=vector, model_id=model_id)


def decision_to_proto(decision: MatchDecision) -> common_pb2.MatchDecision:
    return common_pb2.MatchDecision(
        score=float(decision.score),
        threshold=float(decision.threshold),
        is_match=bool(decision.is_match),
        model_id=decision.model_id,
    )


def decision_from_proto(msg: common_pb2.MatchDecision) -> MatchDecision:
    return MatchDecision(score=msg.score, threshold=msg.threshold, is_match=msg.is_match, model_id=msg.model_id)


def candidate_to_proto(candidate: Candidate, *, threshold: float, model_id: str) -> face_pb2.Candidate:
    return face_pb2.Candidate(
        subject_id=candidate.subject_id,
        face_id=str(candidate.face_id),
        decision=common_pb2.MatchDecision(
            score=float(candidate.score), threshold=float(threshold), is_match=bool(candidate.is_match), model_id=model_id
        ),
    )


def face_id_from_wire(face_id: str) -> int:
    """Face ids are opaque strings on the wire and integers in the store."""
    try:
        return int(face_id)
    except ValueError as exc:
        raise InvalidInput(f"face_id must be an id returned by Enroll, got {shown(face_id)}") from exc


def string_map(values: Mapping[str, Any] | None) -> dict[str, str]:
    """Metadata as the wire's map<string, string>: strings as they are, anything else as JSON."""
    return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (values or {}).items()}
