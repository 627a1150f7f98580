"""The one place where latentface errors become gRPC status codes.

:class:`ErrorInterceptor` wraps every handler of the server. For each call it sets the request id
(the client's ``x-request-id`` metadata, else a new one) in the logging context var, returns it in
the trailing metadata, and turns exceptions into statuses:

    InvalidInput (bad image, no face, quality, bad argument) → INVALID_ARGUMENT
    NotFound (collection, subject, face, job)                → NOT_FOUND
    AlreadyExists (a name taken, a request id reused)        → ALREADY_EXISTS
    LimitExceeded (message size, pixels, faces)              → RESOURCE_EXHAUSTED
    Unavailable (weights, index not ready, shutting down,
                 data dir held by another process)           → UNAVAILABLE
    Unauthenticated / PermissionDenied                       → UNAUTHENTICATED / PERMISSION_DENIED
    Cancelled / DeadlineExceeded / NotFitted                 → CANCELLED / DEADLINE_EXCEEDED / FAILED_PRECONDITION
    anything else (StorageError, bugs)                       → INTERNAL "internal error (request id …)"

INTERNAL never carries the exception's text: it is logged with the traceback and the request id.
:class:`QualityRejected` reasons travel in the trailing metadata ``latentface-reasons`` (comma-separated).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from embeddings import errors
from service._rpc_wrap import wrap_handler
from service.logs import REQUEST_ID_METADATA, request_id_from_metadata, request_id_var

__all__ = [
    "ENROLLED_KEY",
    "REASONS_KEY",
    "REQUEST_ID_KEY",
    "ErrorInterceptor",
    "current_request_id",
    "error_from_status",
    "status_for",
]

log = logging.getLogger("latentface.service")

REQUEST_ID_KEY = REQUEST_ID_METADATA
REASONS_KEY = "latentface-reasons"
# EnrollStream's trailing metadata: how many messages were committed when the stream ended.
ENROLLED_KEY = "latentface-enrolled"

# Most specific first: ImageTooLarge is both LimitExceeded and InvalidImage and must be RESOURCE_EXHAUSTED.
_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.NotFitted, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code of an exception; INTERNAL for anything not a deliberate latentface error."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def current_request_id() -> str | None:
    return request_id_var.get()


def _abort(context: grpc.ServicerContext, exc: BaseException, request_id: str, method: str) -> None:
    code = status_for(exc)
    # Keep what the handler already set (e.g. EnrollStream's committed count).
    trailing: list[tuple[str, str]] = [*(context.trailing_metadata() or ()), (REQUEST_ID_KEY, request_id)]
    if code is grpc.StatusCode.INTERNAL:
        log.error("internal error in %s (request id %s)", method, request_id, exc_info=exc)
        message = f"internal error (request id {request_id})"
    else:
        message = str(exc) or type(exc).__name__
        reasons = getattr(exc, "reasons", ())
        if reasons:
            trailing.append((REASONS_KEY, ",".join(reasons)))
        log.info("%s -> %s: %s (request id %s)", method, code.name, message, request_id)
    context.set_trailing_metadata(tuple(trailing))
    context.abort(code, message)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    """True when the handler (or an inner interceptor) already called ``context.abort``."""
    code = context.code()
    return code is not None and code is not grpc.StatusCode.OK


def _request_id(context: grpc.ServicerContext) -> str:
    return request_id_from_metadata(context.invocation_metadata())


def _wrap_unary(behavior: Callable, method: str) -> Callable:
    def wrapper(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        request_id = _request_id(context)
        token = request_id_var.set(request_id)
        try:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise errors.DeadlineExceeded("deadline passed before the call started")
            result = behavior(request_or_iterator, context)
            context.set_trailing_metadata((*(context.trailing_metadata() or ()), (REQUEST_ID_KEY, request_id)))
            return result
        except Exception as exc:  # noqa: BLE001 - this is the one place that maps every error
            if _already_aborted(context):
                raise
            _abort(context, exc, request_id, method)
        finally:
            request_id_var.reset(token)

    return wrapper


def _wrap_stream(behavior: Callable, method: str) -> Callable:
    def wrapper(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        request_id = _request_id(context)
        token = request_id_var.set(request_id)
        try:
            yield from behavior(request_or_iterator, context)
            context.set_trailing_metadata((*(context.trailing_metadata() or ()), (REQUEST_ID_KEY, request_id)))
        except Exception as exc:  # noqa: BLE001
            if _already_aborted(context):
                raise
            _abort(context, exc, request_id, method)
        finally:
            request_id_var.reset(token)

    return wrapper


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by handlers (and inner interceptors) to status codes; see the module doc."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return wrap_handler(
            handler,
            unary=lambda behavior: _wrap_unary(behavior, method),
            streaming=lambda behavior: _wrap_stream(behavior, method),
        )


# The client's reverse mapping: a status code back to the same branch of the error tree.
_ERROR_FOR_STATUS: dict[grpc.StatusCode, type[errors.LatentfaceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.LimitExceeded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: errors.NotFitted,
}


def error_from_status(
    code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, Any], ...] | None = ()
) -> errors.LatentfaceError:
    """The latentface error a client raises for a failed call (``QualityRejected`` when reasons came back)."""
    meta = dict(trailing or ())
    reasons = [r for r in str(meta.get(REASONS_KEY, "")).split(",") if r]
    message = details or code.name
    if code is grpc.StatusCode.INVALID_ARGUMENT and reasons:
        exc: errors.LatentfaceError = errors.QualityRejected(message, reasons)
    else:
        exc = _ERROR_FOR_STATUS.get(code, errors.LatentfaceError)(message)
    exc.status_code = code  # type: ignore[attr-defined]
    exc.request_id = meta.get(REQUEST_ID_KEY)  # type: ignore[attr-defined]
    return exc
