"""Structured logging with request ids.

One contextvar, :data:`request_id_var`, holds the id of the call being served; every log
record gets it as ``record.request_id`` (``-`` outside a call). ``configure_logging("json")``
writes one JSON object per line (for log shippers), ``"text"`` a readable line. Both
formatters redact anything that looks like an API key, as a second line of defence: the
code never logs keys on purpose.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable
from typing import IO, Any

__all__ = [
    "JsonFormatter",
    "RequestIdFilter",
    "REQUEST_ID_METADATA",
    "TextFormatter",
    "configure_logging",
    "new_request_id",
    "redact",
    "request_id_from_metadata",
    "request_id_var",
]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("latentface_request_id", default=None)

REQUEST_ID_METADATA = "x-request-id"
# A client-sent id is echoed into logs, so accept only short, plain ids.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# "Bearer <anything>" and our own key format (service.auth makes "lf_" + urlsafe base64).
_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\blf_[A-Za-z0-9_-]{16,}"),
)
# Attributes every LogRecord has; anything else came in through ``extra=`` and is emitted as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


def new_request_id() -> str:
    """A fresh random request id (32 hex characters)."""
    return uuid.uuid4().hex


def request_id_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The client's ``x-request-id`` when it is a plain id of at most 64 characters, else a new one."""
    for key, value in metadata or ():
        if key.lower() == REQUEST_ID_METADATA and isinstance(value, str) and _CLIENT_ID.match(value):
            return value
    return new_request_id()


def redact(text: str) -> str:
    """Replace anything that looks like an API key or a bearer token with ``[REDACTED]``."""
    text = _SECRET_PATTERNS[0].sub(r"\1[REDACTED]", text)
    return _SECRET_PATTERNS[1].sub("[REDACTED]", text)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` from :data:`request_id_var` (``-`` outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request-id] message key=value ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return redact(f"{line} {extras}" if extras else line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, any ``extra=`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": _request_id_of(record),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps({k: redact(v) if isinstance(v, str) else v for k, v in out.items()}, default=str)


def _request_id_of(record: logging.LogRecord) -> str | None:
    rid = getattr(record, "request_id", None)
    return request_id_var.get() if rid in (None, "-") else rid


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


# Libraries whose INFO lines are noise to an operator: faiss's loader reports every SIMD variant it
# tries, with a ModuleNotFoundError for each one this CPU or build lacks, on every start.
QUIET_LOGGERS = ("faiss", "faiss.loader")


def quiet_libraries(level: int) -> None:
    """Raise the quiet libraries' loggers to WARNING unless ``level`` asks for DEBUG."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)


def configure_logging(format: str = "text", *, level: int = logging.INFO, stream: IO[str] | None = None) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr) in ``"text"`` or ``"json"`` format; returns the handler.

    Replaces handlers a previous call installed, so calling it twice does not duplicate lines.
    """
    if format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    handler._latentface = True  # type: ignore[attr-defined]  # marks handlers we own
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_latentface", False)]:
        root.removeHandler(old)
    # basicConfig (the CLI's default) would print every line twice next to ours.
    for old in [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.stdout)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_libraries(level)
    return handler
