"""Typed Python client for a latentface server.

    with Client("127.0.0.1:50051", api_key=open("data/admin.key").read().strip()) as c:
        c.create_collection("staff")
        c.enroll("staff", "alice", [open("alice.jpg", "rb").read()], request_id="alice-1")
        result = c.verify(image=selfie, subject_id="alice", collection="staff")
        print(result.decision.is_match, result.decision.score, result.decision.threshold)

Methods mirror the RPCs and return plain dataclasses (the domain's ``DetectedFace``,
``MatchDecision`` and friends where they fit). A failed call raises the same
:mod:`embeddings.errors` class the server raised (INVALID_ARGUMENT → InvalidInput, or
QualityRejected with its reasons; NOT_FOUND → NotFound; UNAUTHENTICATED → Unauthenticated; ...),
with ``.status_code`` and ``.request_id`` attached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from embeddings.errors import InvalidInput, LatentfaceError
from embeddings.types import DetectedFace, FaceEmbedding, MatchDecision
from service import convert
from service._generated.latentface.v1 import (
    analysis_pb2,
    analysis_pb2_grpc,
    collection_pb2,
    collection_pb2_grpc,
    face_pb2,
    face_pb2_grpc,
)
from service.errors import ENROLLED_KEY, REQUEST_ID_KEY, error_from_status

__all__ = [
    "CalibrationResult",
    "Candidate",
    "Client",
    "Collection",
    "CollectionStats",
    "EnrollRejection",
    "EnrollResult",
    "EnrollStreamResult",
    "Identification",
    "Job",
    "Report",
    "Subject",
    "SubjectPage",
    "Verification",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Verification:
    decision: MatchDecision
    probe_face: DetectedFace | None
    reference_face: DetectedFace | None


@dataclass(frozen=True)
class Candidate:
    subject_id: str
    face_id: str
    decision: MatchDecision


@dataclass(frozen=True)
class Identification:
    face: DetectedFace | None
    candidates: list[Candidate]


@dataclass(frozen=True)
class EnrollResult:
    subject_id: str
    face_ids: list[str]
    created_subject: bool
    replayed: bool


@dataclass(frozen=True)
class EnrollRejection:
    index: int
    subject_id: str
    request_id: str
    code: str
    message: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class EnrollStreamResult:
    enrolled: int
    faces: int
    rejected: list[EnrollRejection]
    results: list[EnrollResult]


@dataclass(frozen=True)
class Subject:
    collection: str
    subject_id: str
    display_name: str
    metadata: dict[str, str]
    groups: dict[str, str]
    face_ids: list[str]


@dataclass(frozen=True)
class SubjectPage:
    subjects: list[Subject]
    next_page_token: str | None


@dataclass(frozen=True)
class Collection:
    name: str
    threshold: float
    model_id: str


@dataclass(frozen=True)
class CollectionStats:
    collection: Collection
    subjects: int
    faces: int
    index_kind: str


@dataclass(frozen=True)
class CalibrationResult:
    threshold: float
    fmr: float
    fnmr: float
    n_genuine: int
    n_impostor: int
    applied: bool


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: str  # QUEUED, RUNNING, DONE, FAILED, CANCELLED
    progress: float
    message: str
    error: str
    created_at: datetime | None
    finished_at: datetime | None
    artifacts: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in ("DONE", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class Report:
    job_id: str
    artifact: str
    content_type: str
    data: bytes


def _raise_typed(exc: grpc.RpcError) -> LatentfaceError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else ()
    return error_from_status(code, details or "", tuple(trailing or ()))


def _translating(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn grpc.RpcError into the typed latentface error (keeping the RpcError as the cause)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise _raise_typed(exc) from exc

    return wrapper


def _subject(msg: face_pb2.Subject) -> Subject:
    return Subject(
        collection=msg.collection,
        subject_id=msg.subject_id,
        display_name=msg.display_name,
        metadata=dict(msg.metadata),
        groups=dict(msg.groups),
        face_ids=list(msg.face_ids),
    )


def _collection(msg: collection_pb2.Collection) -> Collection:
    return Collection(name=msg.name, threshold=msg.threshold, model_id=msg.model_id)


def _enroll_result(msg: face_pb2.EnrollResponse) -> EnrollResult:
    return EnrollResult(
        subject_id=msg.subject_id, face_ids=list(msg.face_ids), created_subject=msg.created_subject, replayed=msg.replayed
    )


def _job(msg: analysis_pb2.Job) -> Job:
    return Job(
        id=msg.id,
        kind=msg.kind,
        state=analysis_pb2.JobState.Name(msg.state).removeprefix("JOB_STATE_"),
        progress=msg.progress,
        message=msg.message,
        error=msg.error,
        created_at=msg.created_at.ToDatetime() if msg.HasField("created_at") else None,
        finished_at=msg.finished_at.ToDatetime() if msg.HasField("finished_at") else None,
        artifacts=list(msg.artifacts),
    )


def _embedding_msg(vector: Any, model_id: str) -> Any:
    return convert.embedding_to_proto(np.asarray(vector, dtype=np.float32), model_id)


def _set_given(request: Any, **fields: Any) -> None:
    """Set each of ``fields`` on ``request`` whose value is not None; the others stay unset, for the server
    to default."""
    for name, value in fields.items():
        if value is not None:
            setattr(request, name, value)


def _dataset(
    *, image_folder: str | None, embeddings: tuple[str, str] | None, collection: str | None
) -> analysis_pb2.DatasetSource:
    given = [x is not None for x in (image_folder, embeddings, collection)]
    if sum(given) != 1:
        raise InvalidInput("give exactly one of image_folder, embeddings=(npy_path, labels_csv) or collection")
    if image_folder is not None:
        return analysis_pb2.DatasetSource(image_folder=str(image_folder))
    if embeddings is not None:
        npy, labels = embeddings
        return analysis_pb2.DatasetSource(
            embeddings=analysis_pb2.EmbeddingsFile(embeddings_path=str(npy), labels_path=str(labels))
        )
    return analysis_pb2.DatasetSource(collection=collection)


class Client:
    """A connection to one latentface server. Thread-safe; use as a context manager or call :meth:`close`.

    ``tls``: False/None (plaintext), True (TLS with the system roots), a CA certificate path, or
    ready ``grpc.ChannelCredentials``. ``client_cert``/``client_key`` add mutual TLS. ``timeout``
    is the default per-call deadline in seconds (None: no deadline).
    """

    def __init__(
        self,
        address: str,
        api_key: str | None = None,
        *,
        tls: bool | str | Path | grpc.ChannelCredentials | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        timeout: float | None = 60.0,
        max_message_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls is None or tls is False:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if isinstance(tls, grpc.ChannelCredentials):
                credentials = tls
            else:
                from service.tls import channel_credentials

                credentials = channel_credentials(None if tls is True else tls, cert=client_cert, key=client_key)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout
        self._face = face_pb2_grpc.FaceServiceStub(self._channel)
        self._collections = collection_pb2_grpc.CollectionServiceStub(self._channel)
        self._analysis = analysis_pb2_grpc.AnalysisServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, request_id: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        metadata = self._metadata + (((REQUEST_ID_KEY, request_id),) if request_id else ())
        return {"metadata": metadata, "timeout": self.timeout if timeout is None else timeout}

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel is connected (raises grpc.FutureTimeoutError)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    # -- FaceService ---------------------------------------------------------------------------------
    @_translating
    def detect(self, image: bytes, *, timeout: float | None = None) -> list[DetectedFace]:
        response = self._face.Detect(face_pb2.DetectRequest(image=image), **self._kw(timeout=timeout))
        return [convert.face_from_proto(f) for f in response.faces]

    @_translating
    def embed(
        self, image: bytes, *, aligned_crop: bool = False, timeout: float | None = None
    ) -> list[FaceEmbedding]:
        """Every face of ``image`` with its embedding; with ``aligned_crop`` the image is one already
        aligned 160×160 face crop: one embedding comes back, its ``face`` None (no detection ran)."""
        request = face_pb2.EmbedRequest(image=image, aligned_crop=aligned_crop)
        response = self._face.Embed(request, **self._kw(timeout=timeout))
        return [convert.face_embedding_from_proto(f) for f in response.faces]

    @staticmethod
    def _enroll_request(
        collection: str,
        subject_id: str,
        images: Sequence[bytes] = (),
        *,
        embeddings: Sequence[tuple[Any, str]] = (),
        display_name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        groups: Mapping[str, str] | None = None,
        request_id: str | None = None,
        aligned_crops: bool = False,
    ) -> face_pb2.EnrollRequest:
        return face_pb2.EnrollRequest(
            collection=collection,
            subject_id=subject_id,
            images=list(images),
            embeddings=[_embedding_msg(v, m) for v, m in embeddings],
            display_name=display_name or "",
            metadata=dict(metadata or {}),
            groups=dict(groups or {}),
            request_id=request_id or "",
            aligned_crops=aligned_crops,
        )

    @_translating
    def enroll(
        self,
        collection: str,
        subject_id: str,
        images: Sequence[bytes] = (),
        *,
        embeddings: Sequence[tuple[Any, str]] = (),
        display_name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        groups: Mapping[str, str] | None = None,
        request_id: str | None = None,
        aligned_crops: bool = False,
        timeout: float | None = None,
    ) -> EnrollResult:
        """Enroll images (or ``(vector, model_id)`` embeddings); a repeated ``request_id`` replays the first
        result. ``aligned_crops``: each image is one face already aligned as the server's model aligns it."""
        request = self._enroll_request(
            collection,
            subject_id,
            images,
            embeddings=embeddings,
            display_name=display_name,
            metadata=metadata,
            groups=groups,
            request_id=request_id,
            aligned_crops=aligned_crops,
        )
        return _enroll_result(self._face.Enroll(request, **self._kw(timeout=timeout)))

    def enroll_stream(
        self, requests: Iterable[face_pb2.EnrollRequest | Mapping[str, Any]], *, timeout: float | None = None
    ) -> EnrollStreamResult:
        """Bulk enrollment. Items are EnrollRequest messages or dicts of :meth:`enroll`'s arguments.

        If the stream fails (e.g. the server shuts down), the raised error has ``.enrolled``: how many
        items were committed (the first ones, minus rejected ones, in order) and are durable.
        """

        def messages() -> Iterator[face_pb2.EnrollRequest]:
            for item in requests:
                yield item if isinstance(item, face_pb2.EnrollRequest) else self._enroll_request(**item)

        try:
            response = self._face.EnrollStream(messages(), **self._kw(timeout=timeout))
        except grpc.RpcError as exc:
            error = _raise_typed(exc)
            trailing = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
            error.enrolled = int(trailing.get(ENROLLED_KEY, 0))  # type: ignore[attr-defined]
            raise error from exc
        return EnrollStreamResult(
            enrolled=response.enrolled,
            faces=response.faces,
            rejected=[
                EnrollRejection(r.index, r.subject_id, r.request_id, r.code, r.message, tuple(r.reasons))
                for r in response.rejected
            ],
            results=[_enroll_result(r) for r in response.results],
        )

    @_translating
    def verify(
        self,
        *,
        image: bytes | None = None,
        embedding: tuple[Any, str] | None = None,
        reference_image: bytes | None = None,
        subject_id: str | None = None,
        collection: str | None = None,
        threshold: float | None = None,
        timeout: float | None = None,
    ) -> Verification:
        """image↔image (``reference_image``), image↔subject or embedding ``(vector, model_id)``↔subject."""
        request = face_pb2.VerifyRequest(collection=collection or "")
        _set_given(request, image=image, reference_image=reference_image, subject_id=subject_id, threshold=threshold)
        if embedding is not None:
            request.embedding.CopyFrom(_embedding_msg(*embedding))
        response = self._face.Verify(request, **self._kw(timeout=timeout))
        return Verification(
            decision=convert.decision_from_proto(response.decision),
            probe_face=convert.face_from_proto(response.probe_face) if response.HasField("probe_face") else None,
            reference_face=(
                convert.face_from_proto(response.reference_face) if response.HasField("reference_face") else None
            ),
        )

    @_translating
    def identify(
        self, image: bytes, collection: str, *, k: int = 5, threshold: float | None = None, timeout: float | None = None
    ) -> Identification:
        request = face_pb2.IdentifyRequest(image=image, collection=collection, k=k)
        if threshold is not None:
            request.threshold = threshold
        response = self._face.Identify(request, **self._kw(timeout=timeout))
        return Identification(
            face=convert.face_from_proto(response.face) if response.HasField("face") else None,
            candidates=[
                Candidate(c.subject_id, c.face_id, convert.decision_from_proto(c.decision)) for c in response.candidates
            ],
        )

    @_translating
    def get_subject(self, collection: str, subject_id: str) -> Subject:
        request = face_pb2.GetSubjectRequest(collection=collection, subject_id=subject_id)
        return _subject(self._face.GetSubject(request, **self._kw()))

    @_translating
    def list_subjects(self, collection: str, *, page_size: int = 100, page_token: str | None = None) -> SubjectPage:
        request = face_pb2.ListSubjectsRequest(collection=collection, page_size=page_size, page_token=page_token or "")
        response = self._face.ListSubjects(request, **self._kw())
        return SubjectPage([_subject(s) for s in response.subjects], response.next_page_token or None)

    def iter_subjects(self, collection: str, *, page_size: int = 100) -> Iterator[Subject]:
        """Every subject of a collection, page by page."""
        token: str | None = None
        while True:
            page = self.list_subjects(collection, page_size=page_size, page_token=token)
            yield from page.subjects
            if not page.next_page_token:
                return
            token = page.next_page_token

    @_translating
    def delete_subject(self, collection: str, subject_id: str) -> int:
        """Delete a subject and its faces; returns how many faces were deleted."""
        request = face_pb2.DeleteSubjectRequest(collection=collection, subject_id=subject_id)
        return self._face.DeleteSubject(request, **self._kw()).deleted_faces

    @_translating
    def delete_face(self, collection: str, face_id: str) -> None:
        self._face.DeleteFace(face_pb2.DeleteFaceRequest(collection=collection, face_id=str(face_id)), **self._kw())

    # -- CollectionService ---------------------------------------------------------------------------
    @_translating
    def create_collection(self, name: str, *, threshold: float | None = None) -> Collection:
        request = collection_pb2.CreateCollectionRequest(name=name)
        if threshold is not None:
            request.threshold = threshold
        return _collection(self._collections.CreateCollection(request, **self._kw()))

    @_translating
    def list_collections(self) -> list[Collection]:
        response = self._collections.ListCollections(collection_pb2.ListCollectionsRequest(), **self._kw())
        return [_collection(c) for c in response.collections]

    @_translating
    def delete_collection(self, name: str) -> None:
        self._collections.DeleteCollection(collection_pb2.DeleteCollectionRequest(name=name), **self._kw())

    @_translating
    def collection_stats(self, name: str) -> CollectionStats:
        msg = self._collections.GetCollectionStats(collection_pb2.GetCollectionStatsRequest(name=name), **self._kw())
        return CollectionStats(_collection(msg.collection), msg.subjects, msg.faces, msg.index_kind)

    @_translating
    def set_threshold(self, name: str, threshold: float) -> Collection:
        request = collection_pb2.SetThresholdRequest(name=name, threshold=threshold)
        return _collection(self._collections.SetThreshold(request, **self._kw()))

    @_translating
    def calibrate(
        self,
        scores: Sequence[float],
        same_identity: Sequence[bool],
        *,
        target_fmr: float,
        collection: str | None = None,
        apply: bool = False,
    ) -> CalibrationResult:
        request = collection_pb2.CalibrateRequest(
            scores=[float(s) for s in scores],
            same_identity=[bool(s) for s in same_identity],
            target_fmr=target_fmr,
            collection=collection or "",
            apply=apply,
        )
        r = self._collections.Calibrate(request, **self._kw())
        return CalibrationResult(r.threshold, r.fmr, r.fnmr, r.n_genuine, r.n_impostor, r.applied)

    # -- AnalysisService -----------------------------------------------------------------------------
    @_translating
    def start_analysis(
        self,
        *,
        image_folder: str | None = None,
        embeddings: tuple[str, str] | None = None,
        collection: str | None = None,
        method: str = "",
        alpha: float | None = None,
        latent_dim: int | None = None,
        n_vaes: int | None = None,
        max_weight_ratio: float | None = None,
        min_ess: float | None = None,
        component_share: float | None = None,
        identity_aware: bool | None = None,
        seed: int = 0,
    ) -> Job:
        """Start a latent-density analysis of a dataset on the server (paths are server paths).

        ``max_weight_ratio=0`` turns clipping off; with ``alpha=0`` and ``n_vaes=3`` that is the strongest
        rebalancing. ``min_ess`` is the floor on the weights' effective sample size as a share of N
        (``None`` = the server's 0.2, ``0`` = no floor). ``component_share`` is the power of each sample's
        mode share multiplied into its density, in [0, 10] (``None`` = the method's default,
        2 for knn and 0 otherwise; ``0`` = off; non-zero is refused for histogram). ``identity_aware=True``
        gives one weight per identity, shared by its faces (needs identity labels). ``None`` leaves a field
        to the server."""
        request = analysis_pb2.StartAnalysisRequest(
            dataset=_dataset(image_folder=image_folder, embeddings=embeddings, collection=collection),
            method=method,
            seed=seed,
        )
        _set_given(
            request,
            alpha=alpha,
            latent_dim=latent_dim,
            n_vaes=n_vaes,
            max_weight_ratio=max_weight_ratio,
            min_ess=min_ess,
            component_share=component_share,
            identity_aware=identity_aware,
        )
        return _job(self._analysis.StartAnalysis(request, **self._kw()))

    @_translating
    def start_audit(
        self,
        *,
        image_folder: str | None = None,
        embeddings: tuple[str, str] | None = None,
        collection: str | None = None,
        group_by: Sequence[str] = (),
        target_fmr: float | None = None,
        threshold: float | None = None,
        analysis_job_id: str | None = None,
        seed: int = 0,
    ) -> Job:
        request = analysis_pb2.StartAuditRequest(
            dataset=_dataset(image_folder=image_folder, embeddings=embeddings, collection=collection),
            group_by=list(group_by),
            analysis_job_id=analysis_job_id or "",
            seed=seed,
        )
        if target_fmr is not None and threshold is not None:
            raise InvalidInput("give target_fmr or threshold, not both")
        _set_given(request, target_fmr=target_fmr, threshold=threshold)
        return _job(self._analysis.StartAudit(request, **self._kw()))

    @_translating
    def start_debias(
        self,
        *,
        image_folder: str | None = None,
        embeddings: tuple[str, str] | None = None,
        collection: str | None = None,
        group_by: Sequence[str] = (),
        target_fmr: float | None = None,
        eval_fraction: float | None = None,
        out_dim: int | None = None,
        hidden_dim: int | None = None,
        epochs: int | None = None,
        method: str = "",
        seed: int = 0,
    ) -> Job:
        """Train a debiasing adapter with and without the latent weights; the job's report compares both."""
        request = analysis_pb2.StartDebiasRequest(
            dataset=_dataset(image_folder=image_folder, embeddings=embeddings, collection=collection),
            group_by=list(group_by),
            method=method,
            seed=seed,
        )
        _set_given(
            request, target_fmr=target_fmr, eval_fraction=eval_fraction, out_dim=out_dim, hidden_dim=hidden_dim, epochs=epochs
        )
        return _job(self._analysis.StartDebias(request, **self._kw()))

    @_translating
    def get_job(self, job_id: str) -> Job:
        return _job(self._analysis.GetJob(analysis_pb2.GetJobRequest(job_id=job_id), **self._kw()))

    def watch_job(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job now and at every change until it is terminal."""
        stream = self._analysis.WatchJob(analysis_pb2.WatchJobRequest(job_id=job_id), **self._kw(timeout=timeout))
        try:
            for msg in stream:
                yield _job(msg)
        except grpc.RpcError as exc:
            raise _raise_typed(exc) from exc

    @_translating
    def cancel_job(self, job_id: str) -> Job:
        return _job(self._analysis.CancelJob(analysis_pb2.CancelJobRequest(job_id=job_id), **self._kw()))

    @_translating
    def get_report(self, job_id: str, artifact: str) -> Report:
        r = self._analysis.GetReport(analysis_pb2.GetReportRequest(job_id=job_id, artifact=artifact), **self._kw())
        return Report(r.job_id, r.artifact, r.content_type, r.data)
