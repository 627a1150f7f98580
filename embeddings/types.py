"""Value types shared across the domain: detected faces, quality verdicts, embeddings, match decisions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Candidate",
    "DetectedFace",
    "FaceEmbedding",
    "MatchDecision",
    "Quality",
    "QualityReason",
]


class QualityReason:
    """Reason codes a client can act on (in the spirit of AWS Rekognition's unindexed-face reasons)."""

    TOO_SMALL = "TOO_SMALL"  # face box smaller than the minimum size in original pixels
    LOW_CONFIDENCE = "LOW_CONFIDENCE"  # detection probability under the threshold
    BLURRY = "BLURRY"  # sharpness (variance of the Laplacian on the crop) under the threshold
    EXTREME_POSE = "EXTREME_POSE"  # yaw, pitch or roll estimated from the 5 landmarks over the limits
    PARTLY_OUTSIDE = "PARTLY_OUTSIDE"  # too much of the face box lies outside the image

    ALL = (TOO_SMALL, LOW_CONFIDENCE, BLURRY, EXTREME_POSE, PARTLY_OUTSIDE)


@dataclass(frozen=True)
class Quality:
    """The quality gate's verdict on one face; ``reasons`` is empty when it passed."""

    reasons: tuple[str, ...]
    face_px: float
    sharpness: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    outside_fraction: float

    @property
    def passed(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class DetectedFace:
    """One face found in an image, in the ORIGINAL image's pixel coordinates.

    ``box`` is (x1, y1, x2, y2); ``landmarks`` are five (x, y) points: left eye, right eye,
    nose, left mouth corner, right mouth corner (as MTCNN returns them).
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    probability: float
    quality: Quality


@dataclass(frozen=True, eq=False)
class FaceEmbedding:
    """A face and its L2-normalised embedding, tagged with the id of the model that made it."""

    face: DetectedFace | None
    vector: np.ndarray = field(repr=False)
    model_id: str


@dataclass(frozen=True)
class MatchDecision:
    """A 1:1 decision: cosine score, the threshold used, and which model made the embeddings."""

    score: float
    threshold: float
    is_match: bool
    model_id: str


@dataclass(frozen=True)
class Candidate:
    """One 1:N result: the subject, its best face, the cosine score and whether it clears the threshold."""

    subject_id: str
    face_id: str
    score: float
    is_match: bool
