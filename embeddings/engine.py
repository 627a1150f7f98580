"""FaceEngine: the domain facade the gRPC servicers and the CLI call (like KServe's dataplane).

It joins the image pipeline (decode → detect → quality → align → encode) with the gallery and
the matching rules, so adapters only convert requests and responses. Enrollment from images
embeds and checks EVERY image first and stores nothing if any fails; verification reports the
quality verdicts without enforcing them. Every decision carries score, threshold and model id.
Image calls take ``deadline`` (a ``time.monotonic()`` instant, see ``embeddings.pipeline``): work
stops between stages once it passes, and an enrollment past it stores nothing. ``enroll`` also
takes ``cancelled``, a plain callable (the service passes "the client went away"), checked the
same way, so a cancelled enrollment stores nothing either.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embeddings import match
from embeddings.errors import Cancelled, InvalidInput, Unavailable
from embeddings.gallery import CollectionStats, Gallery
from embeddings.match import CalibrationResult
from embeddings.pipeline import check_deadline
from embeddings.store import CollectionRecord, EnrollResult, SubjectRecord
from embeddings.types import Candidate, DetectedFace, FaceEmbedding, MatchDecision

__all__ = ["FaceEngine", "IdentifyResult", "VerifyResult"]


class Pipeline(Protocol):
    """What the engine needs of ``embeddings.pipeline.FacePipeline``."""

    model_id: str

    def detect(self, source: Any, *, deadline: float | None = None) -> tuple[Any, list[DetectedFace]]: ...

    def embed(self, source: Any, *, deadline: float | None = None) -> list[FaceEmbedding]: ...

    def embed_one(self, source: Any, *, require_quality: bool, deadline: float | None = None) -> FaceEmbedding: ...

    def embed_crop(self, source: Any, *, deadline: float | None = None) -> FaceEmbedding: ...


@dataclass(frozen=True)
class VerifyResult:
    """A 1:1 decision and the faces it was made from (``face_b`` is None against a subject)."""

    decision: MatchDecision
    face_a: DetectedFace | None
    face_b: DetectedFace | None


@dataclass(frozen=True)
class IdentifyResult:
    """The probe face, the top subjects found for it and the threshold their ``is_match`` was decided with."""

    face: DetectedFace | None
    candidates: list[Candidate]
    threshold: float


def _check_cancelled(cancelled: Callable[[], bool] | None, stage: str) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled(f"the call was cancelled {stage}; nothing was stored")


def _quality_record(face: DetectedFace | None) -> dict[str, Any] | None:
    if face is None:
        return None
    return {"reasons": list(face.quality.reasons), "probability": face.probability, "box": list(face.box)}


def _images_digest(images: Sequence[Any]) -> str:
    """sha256 over the images as given (encoded bytes, arrays or paths), for request-id replays."""
    h = hashlib.sha256()
    for img in images:
        if isinstance(img, (bytes, bytearray, memoryview)):
            data = bytes(img)
        elif isinstance(img, (str, os.PathLike)):
            try:
                data = Path(img).read_bytes()
            except OSError:
                data = os.fsencode(img)  # the pipeline has reported the unreadable file by now
        else:
            a = np.ascontiguousarray(np.asarray(img))
            data = f"{a.dtype.str}{a.shape}".encode() + a.tobytes()
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


class FaceEngine:
    """Images and embeddings in, decisions and gallery changes out. ``pipeline`` may be None for an
    embeddings-only engine (image calls then raise :class:`Unavailable`)."""

    def __init__(self, pipeline: Pipeline | None, gallery: Gallery) -> None:
        self._pipeline = pipeline
        self.gallery = gallery

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise Unavailable("this engine has no image pipeline; only embedding calls are available")
        return self._pipeline

    @property
    def model_id(self) -> str | None:
        return self._pipeline.model_id if self._pipeline is not None else None

    # ------------------------------------------------------------------ images
    def detect(self, image: Any, *, deadline: float | None = None) -> list[DetectedFace]:
        _pixels, faces = self.pipeline.detect(image, deadline=deadline)
        return faces

    def embed(self, image: Any, *, deadline: float | None = None) -> list[FaceEmbedding]:
        return self.pipeline.embed(image, deadline=deadline)

    def embed_crop(self, crop: Any, *, deadline: float | None = None) -> FaceEmbedding:
        """The embedding of one already aligned face crop (no detection, no quality gate; ``face`` None)."""
        return self.pipeline.embed_crop(crop, deadline=deadline)

    def enroll(
        self,
        collection: str,
        subject_id: str,
        images: Sequence[Any],
        *,
        display_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        groups: dict[str, Any] | None = None,
        request_id: str | None = None,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        aligned_crops: bool = False,
    ) -> EnrollResult:
        """Enroll the best face of each image (each image IS one aligned face crop when ``aligned_crops``:
        detection and the quality gate are skipped, as in :meth:`FacePipeline.embed_crop`).

        NoFaceFound / QualityRejected if any image fails, DeadlineExceeded once ``deadline`` has
        passed and Cancelled once ``cancelled()`` is true before the write; then nothing is stored.
        """
        if not images:
            raise InvalidInput("enroll needs at least one image")
        self.gallery.get_collection(collection)  # fail fast before the expensive part
        pipeline = self.pipeline
        # All validated first.
        embs = []
        for i, img in enumerate(images):
            _check_cancelled(cancelled, f"after {i} of {len(images)} images")
            if aligned_crops:
                embs.append(pipeline.embed_crop(img, deadline=deadline))
            else:
                embs.append(pipeline.embed_one(img, require_quality=True, deadline=deadline))
        # Last check before the write: a caller that gave up must not find a half-known enrollment.
        check_deadline(deadline, "before storing the enrollment")
        _check_cancelled(cancelled, "before storing the enrollment")
        return self.gallery.enroll(
            collection,
            subject_id,
            np.stack([e.vector for e in embs]),
            model_id=pipeline.model_id,
            qualities=[_quality_record(e.face) for e in embs],
            display_name=display_name,
            metadata=metadata,
            groups=groups,
            request_id=request_id,
            # A retry re-sends the same bytes; the embeddings of them need not be bit-identical
            # (batch composition changes the arithmetic), so the replay check hashes the bytes.
            content_digest=(
                _images_digest(images) + (":aligned" if aligned_crops else "") if request_id is not None else None
            ),
        )

    def verify_images(
        self,
        a: Any,
        b: Any,
        *,
        collection: str | None = None,
        threshold: float | None = None,
        deadline: float | None = None,
    ) -> VerifyResult:
        """Same person in both images? Threshold: explicit, else the collection's, else the default."""
        ea = self.pipeline.embed_one(a, require_quality=False, deadline=deadline)
        eb = self.pipeline.embed_one(b, require_quality=False, deadline=deadline)
        decision = match.verify(ea, eb, threshold=self._threshold(collection, threshold))
        return VerifyResult(decision, ea.face, eb.face)

    def verify_subject(
        self,
        image: Any,
        collection: str,
        subject_id: str,
        *,
        threshold: float | None = None,
        deadline: float | None = None,
    ) -> VerifyResult:
        e = self.pipeline.embed_one(image, require_quality=False, deadline=deadline)
        decision = match.verify_subject(
            self.gallery, collection, e, e.model_id, subject_id, threshold=threshold
        )
        return VerifyResult(decision, e.face, None)

    def identify(
        self,
        image: Any,
        collection: str,
        *,
        k: int = 5,
        threshold: float | None = None,
        deadline: float | None = None,
    ) -> IdentifyResult:
        e = self.pipeline.embed_one(image, require_quality=False, deadline=deadline)
        found, used = match.identify_at(self.gallery, collection, e, e.model_id, k=k, threshold=threshold)
        return IdentifyResult(e.face, found, used)

    # ------------------------------------------------------------------ embeddings
    def enroll_embeddings(
        self,
        collection: str,
        subject_id: str,
        vectors: Any,
        model_id: str,
        *,
        display_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        groups: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> EnrollResult:
        return self.gallery.enroll(
            collection,
            subject_id,
            vectors,
            model_id=model_id,
            display_name=display_name,
            metadata=metadata,
            groups=groups,
            request_id=request_id,
        )

    def verify_embedding(
        self, vector: Any, model_id: str, collection: str, subject_id: str, *, threshold: float | None = None
    ) -> MatchDecision:
        return match.verify_subject(
            self.gallery, collection, vector, model_id, subject_id, threshold=threshold
        )

    def identify_embedding(
        self, vector: Any, model_id: str, collection: str, *, k: int = 5, threshold: float | None = None
    ) -> list[Candidate]:
        return match.identify(self.gallery, collection, vector, model_id, k=k, threshold=threshold)

    def _threshold(self, collection: str | None, threshold: float | None) -> float:
        if threshold is not None:
            return float(threshold)
        if collection is not None:
            return self.gallery.get_collection(collection).threshold
        return self.gallery.config.default_threshold

    # ------------------------------------------------------------------ pass-throughs
    def create_collection(self, name: str, *, threshold: float | None = None) -> CollectionRecord:
        return self.gallery.create_collection(name, threshold=threshold)

    def list_collections(self) -> list[CollectionRecord]:
        return self.gallery.list_collections()

    def delete_collection(self, name: str) -> None:
        self.gallery.delete_collection(name)

    def collection_stats(self, name: str) -> CollectionStats:
        return self.gallery.collection_stats(name)

    def set_threshold(self, name: str, threshold: float) -> None:
        self.gallery.set_threshold(name, threshold)

    def calibrate(self, scores: Any, labels: Any, *, target_fmr: float) -> CalibrationResult:
        return match.calibrate(scores, labels, target_fmr=target_fmr)

    def get_subject(self, collection: str, subject_id: str) -> SubjectRecord:
        return self.gallery.get_subject(collection, subject_id)

    def list_subjects(
        self, collection: str, *, page_size: int = 100, page_token: str | None = None
    ) -> tuple[list[SubjectRecord], str | None]:
        return self.gallery.list_subjects(collection, page_size=page_size, page_token=page_token)

    def delete_subject(self, collection: str, subject_id: str) -> list[int]:
        return self.gallery.delete_subject(collection, subject_id)

    def delete_face(self, collection: str, face_id: int) -> str:
        return self.gallery.delete_face(collection, face_id)

    def get_collection(self, name: str) -> CollectionRecord:
        return self.gallery.get_collection(name)

    def collection_names(self) -> list[str]:
        """Collection names, from memory where the backend keeps them (no store query)."""
        names = getattr(self.gallery, "collection_names", None)
        return names() if names is not None else [c.name for c in self.gallery.list_collections()]

    def index_size(self, name: str) -> int:
        """Live vectors in the collection's index (from memory: no store query)."""
        return int(self.gallery.index_size(name))

    def collection_dataset(self, name: str, *, progress: Any = None, should_stop: Any = None) -> Any:
        """The collection's faces as an :class:`embeddings.dataset.Dataset` (for analysis and audits)."""
        from embeddings.dataset import Dataset

        return Dataset.from_collection(self.gallery, name, progress=progress, should_stop=should_stop)

    def snapshot(self) -> None:
        """Write the index snapshots now (a no-op for backends whose vectors live elsewhere)."""
        self.gallery.snapshot()

    def close(self, *, snapshot: bool = True) -> None:
        """Close the gallery; ``snapshot=False`` leaves the data directory exactly as it was."""
        self.gallery.close(snapshot=snapshot)

    def __enter__(self) -> FaceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
