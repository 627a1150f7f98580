"""Matching: 1:1 verification, 1:N identification over a gallery, and threshold calibration.

Scores are cosines of L2-normalised embeddings. A decision always carries the score, the
threshold it was compared with (``score >= threshold`` is a match) and the model id, and
embeddings of different models are never compared (:class:`ModelMismatch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from embeddings.errors import InvalidInput, ModelMismatch
from embeddings.gallery import Gallery, normalise_vectors
from embeddings.types import Candidate, FaceEmbedding, MatchDecision

__all__ = ["CalibrationResult", "calibrate", "cosine", "identify", "identify_at", "verify", "verify_subject"]

# Faces fetched per wanted subject in identify, so that subjects with several close faces
# still leave k distinct subjects after de-duplication.
_FACES_PER_SUBJECT = 4


@dataclass(frozen=True)
class CalibrationResult:
    """Threshold for a target false-match rate and the rates it achieves on the calibration pairs."""

    threshold: float
    fmr: float
    fnmr: float
    n_genuine: int
    n_impostor: int


def _vector(x: Any, dim: int | None = None) -> np.ndarray:
    v = x.vector if isinstance(x, FaceEmbedding) else x
    return normalise_vectors(v, dim)[0]


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two vectors (normalised here; InvalidInput on zero, NaN or shape mismatch)."""
    va, vb = _vector(a), _vector(b)
    if va.shape != vb.shape:
        raise InvalidInput(f"cannot compare a {va.shape[0]}-d with a {vb.shape[0]}-d embedding")
    return float(np.clip(np.dot(va.astype(np.float64), vb.astype(np.float64)), -1.0, 1.0))


def _model_of(x: Any, model_id: str | None) -> str | None:
    return x.model_id if isinstance(x, FaceEmbedding) else model_id


def verify(a: Any, b: Any, *, threshold: float, model_id: str | None = None) -> MatchDecision:
    """1:1 decision between two embeddings (FaceEmbedding or vectors).

    Plain vectors take ``model_id``; FaceEmbeddings carry their own and must agree.
    """
    ma, mb = _model_of(a, model_id), _model_of(b, model_id)
    if ma is not None and mb is not None and ma != mb:
        raise ModelMismatch(f"cannot compare embeddings of model {ma!r} with model {mb!r}")
    model = ma or mb
    if model is None:
        raise InvalidInput("model_id is required to verify plain vectors")
    _check_threshold(threshold)
    score = cosine(a, b)
    return MatchDecision(score=score, threshold=float(threshold), is_match=score >= threshold, model_id=model)


def _check_threshold(threshold: float) -> None:
    if not -1.0 <= threshold <= 1.0:
        raise InvalidInput("threshold must be a cosine in [-1, 1]")


def _collection_threshold(gallery: Gallery, collection: str, model_id: str, threshold: float | None) -> float:
    """The threshold to decide with (``threshold``, else the collection's), once the model is checked."""
    rec = gallery.get_collection(collection)
    if rec.model_id is not None and rec.model_id != model_id:
        raise ModelMismatch(
            f"collection {collection!r} holds embeddings of model {rec.model_id!r}, got {model_id!r}"
        )
    if threshold is None:
        return rec.threshold
    _check_threshold(threshold)
    return float(threshold)


def verify_subject(
    gallery: Gallery,
    collection: str,
    vector: Any,
    model_id: str,
    subject_id: str,
    *,
    threshold: float | None = None,
) -> MatchDecision:
    """1:1 decision of an embedding against an enrolled subject: the best cosine over its faces."""
    model_id = _model_of(vector, model_id) or model_id
    t = _collection_threshold(gallery, collection, model_id, threshold)
    _, vecs, subj_model = gallery.subject_vectors(collection, subject_id)
    if subj_model is not None and subj_model != model_id:
        raise ModelMismatch(
            f"subject {subject_id!r} was enrolled with model {subj_model!r}, got {model_id!r}"
        )
    if not len(vecs):
        score = -1.0  # a subject whose faces were all deleted matches nothing
    else:
        q = _vector(vector, vecs.shape[1])
        score = float(np.clip(np.max(vecs.astype(np.float64) @ q.astype(np.float64)), -1.0, 1.0))
    return MatchDecision(score=score, threshold=t, is_match=score >= t, model_id=model_id)


def identify(
    gallery: Gallery,
    collection: str,
    vector: Any,
    model_id: str,
    *,
    k: int = 5,
    threshold: float | None = None,
) -> list[Candidate]:
    """Top-``k`` SUBJECTS for one embedding, each with its best face; ``is_match`` against the threshold
    (the collection's when None)."""
    return identify_at(gallery, collection, vector, model_id, k=k, threshold=threshold)[0]


def identify_at(
    gallery: Gallery,
    collection: str,
    vector: Any,
    model_id: str,
    *,
    k: int = 5,
    threshold: float | None = None,
) -> tuple[list[Candidate], float]:
    """:func:`identify` and the threshold its ``is_match`` flags were decided with (read once, so a
    concurrent SetThreshold cannot make the reported threshold differ from the one used)."""
    if k < 1:
        raise InvalidInput("k must be >= 1")
    model_id = _model_of(vector, model_id) or model_id
    t = _collection_threshold(gallery, collection, model_id, threshold)
    q = _vector(vector)
    n_faces = gallery.index_size(collection)
    want = k * _FACES_PER_SUBJECT
    while True:
        hits = gallery.search(collection, q, min(want, max(n_faces, 1)))[0]
        best: dict[str, tuple[int, float]] = {}
        for h in hits:  # best first, so the first face seen of a subject is its best
            if h.subject_id not in best:
                best[h.subject_id] = (h.face_id, h.score)
        if len(best) >= k or want >= n_faces:
            break
        want *= 4  # many faces per subject near the query: look deeper
    ranked = sorted(best.items(), key=lambda kv: -kv[1][1])[:k]
    return [Candidate(subject_id=s, face_id=str(f), score=sc, is_match=sc >= t) for s, (f, sc) in ranked], t


def calibrate(scores: Any, labels: Any, *, target_fmr: float) -> CalibrationResult:
    """Smallest threshold whose false-match rate (impostor scores >= t) is at most ``target_fmr``.

    ``labels`` are True for genuine pairs. Needs at least ``ceil(1 / target_fmr)`` impostor scores
    (fewer cannot resolve the target) and one genuine score.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape or not len(s):
        raise InvalidInput("scores and labels must be non-empty and of equal length")
    if not np.isfinite(s).all():
        raise InvalidInput("scores contain NaN or infinite values")
    if not 0.0 < target_fmr < 1.0:
        raise InvalidInput("target_fmr must be in (0, 1)")
    y = y.astype(bool)
    imp, gen = np.sort(s[~y]), s[y]
    n_imp, n_gen = len(imp), len(gen)
    if n_gen == 0:
        raise InvalidInput("calibration needs at least one genuine pair")
    if n_imp < math.ceil(1.0 / target_fmr - 1e-9):
        raise InvalidInput(
            f"{n_imp} impostor pairs cannot resolve a false-match rate of {target_fmr}; "
            f"need at least {math.ceil(1.0 / target_fmr - 1e-9)}"
        )
    # Allowed false matches m = floor(target * n_imp) < n_imp. The count of impostors >= t is at
    # most m exactly when t exceeds the (m+1)-th largest impostor score; the smallest such t is
    # the next float above it.
    m = int(math.floor(target_fmr * n_imp + 1e-9))
    t = float(np.nextafter(imp[n_imp - m - 1], np.inf))
    fmr = float(np.count_nonzero(imp >= t)) / n_imp
    fnmr = float(np.count_nonzero(gen < t)) / n_gen
    return CalibrationResult(threshold=t, fmr=fmr, fnmr=fnmr, n_genuine=n_gen, n_impostor=n_imp)
