"""The one error hierarchy of latentface.

Every error the domain raises on purpose derives from :class:`LatentfaceError`.
Errors of the libraries we call (Pillow, torch, FAISS, sqlite3) are converted
where those libraries are called, with ``raise ... from exc``, so callers only
ever catch these. The service layer maps each branch to one gRPC status code
(``service/errors.py``); the CLI maps them to exit codes.

    LatentfaceError
    ├── InvalidInput                 bad argument from the caller      → INVALID_ARGUMENT
    │   ├── InvalidImage             undecodable / unsupported / too small image
    │   ├── NoFaceFound              a face was required, none was detected
    │   ├── QualityRejected          a face failed the quality gate (carries reasons)
    │   ├── ModelMismatch            embeddings of different models compared or mixed
    │   └── InvalidDataset           malformed dataset, labels or embeddings file
    ├── NotFound                     unknown entity                    → NOT_FOUND
    │   ├── CollectionNotFound
    │   ├── SubjectNotFound
    │   ├── FaceNotFound
    │   └── JobNotFound
    ├── AlreadyExists                duplicate create                  → ALREADY_EXISTS
    │   └── RequestIdReused          a request id replayed with a different request
    ├── LimitExceeded                over a configured limit           → RESOURCE_EXHAUSTED
    │   └── ImageTooLarge            encoded bytes or pixel count over the limit
    ├── Unavailable                  cannot serve right now            → UNAVAILABLE
    │   ├── WeightsUnavailable       encoder checkpoint missing (says which file to put where)
    │   ├── IndexNotReady            index still loading / rebuilding
    │   └── DataDirLocked            another process holds the data directory
    ├── AuthError
    │   ├── Unauthenticated          missing / unknown / revoked key   → UNAUTHENTICATED
    │   └── PermissionDenied         key lacks the role or collection  → PERMISSION_DENIED
    ├── Cancelled                    a job or call was cancelled       → CANCELLED
    ├── DeadlineExceeded             a call ran past its deadline      → DEADLINE_EXCEEDED
    ├── NotFitted                    estimator used before ``fit``     → FAILED_PRECONDITION
    └── StorageError                 the store or a snapshot failed    → INTERNAL

``InvalidInput`` also derives from :class:`ValueError`, ``NotFound`` from
:class:`LookupError` and ``NotFitted`` from ``ValueError`` and
``AttributeError`` (as scikit-learn's ``NotFittedError`` does), so ordinary
``except`` clauses keep working.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AlreadyExists",
    "AuthError",
    "Cancelled",
    "CollectionNotFound",
    "DataDirLocked",
    "DeadlineExceeded",
    "FaceNotFound",
    "ImageTooLarge",
    "IndexNotReady",
    "InvalidDataset",
    "InvalidImage",
    "InvalidInput",
    "JobNotFound",
    "LatentfaceError",
    "LimitExceeded",
    "ModelMismatch",
    "NoFaceFound",
    "NotFitted",
    "NotFound",
    "PermissionDenied",
    "QualityRejected",
    "RequestIdReused",
    "StorageError",
    "SubjectNotFound",
    "Unauthenticated",
    "Unavailable",
    "WeightsUnavailable",
]


class LatentfaceError(Exception):
    """Base of every error latentface raises on purpose."""


class InvalidInput(LatentfaceError, ValueError):
    """The caller passed something we cannot use."""


class InvalidImage(InvalidInput):
    """The image bytes are empty, truncated, of an unsupported format or unusable."""


class NoFaceFound(InvalidInput):
    """A face was required but the detector found none."""


class QualityRejected(InvalidInput):
    """A face failed the quality gate; ``reasons`` says why (e.g. ``["BLURRY"]``)."""

    def __init__(self, message: str, reasons: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reasons = tuple(reasons)


class ModelMismatch(InvalidInput):
    """Embeddings made by different models were compared or mixed in one collection."""


class InvalidDataset(InvalidInput):
    """A dataset, labels file or embeddings file is malformed."""


class NotFound(LatentfaceError, LookupError):
    """An entity the caller named does not exist."""


class CollectionNotFound(NotFound):
    pass


class SubjectNotFound(NotFound):
    pass


class FaceNotFound(NotFound):
    pass


class JobNotFound(NotFound):
    pass


class AlreadyExists(LatentfaceError):
    """An entity with that name or id already exists."""


class RequestIdReused(AlreadyExists):
    """A request id already names an enrollment that differs from this request (its subject or data)."""


class LimitExceeded(LatentfaceError):
    """A configured limit (size, count, rate) was exceeded."""


class ImageTooLarge(LimitExceeded, InvalidImage):
    """Encoded size or pixel count over the configured limit (refused before full decode)."""


class Unavailable(LatentfaceError):
    """The service cannot do this right now; retrying later or fixing the deployment may help."""


class WeightsUnavailable(Unavailable):
    """The encoder checkpoint cannot be found or loaded; the message says which file goes where."""


class IndexNotReady(Unavailable):
    """The vector index is loading or rebuilding."""


class DataDirLocked(Unavailable):
    """Another process holds the data directory; the message names it (pid and command)."""


class AuthError(LatentfaceError):
    pass


class Unauthenticated(AuthError):
    """No API key, an unknown key or a revoked key."""


class PermissionDenied(AuthError):
    """The key is valid but lacks the role or the collection for this call."""


class Cancelled(LatentfaceError):
    """The work was cancelled."""


class DeadlineExceeded(LatentfaceError):
    """The call ran past its deadline and its work was stopped."""


class NotFitted(LatentfaceError, ValueError, AttributeError):
    """An estimator was used before ``fit``."""


class StorageError(LatentfaceError):
    """The store, a snapshot or the data directory failed."""
