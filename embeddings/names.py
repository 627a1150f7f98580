"""The grammar of the names and ids callers give the gallery, defined once.

================  ====================================================  ==========================
what              grammar                                               why
================  ====================================================  ==========================
collection name   1-64 ASCII letters, digits, ``_ . -``; starts with    appears in API-key scopes
                  a letter or digit                                     (``*`` = all, ``a,b`` = a
                                                                        list), CLI flags and logs
subject id        1-128 characters, no control or format characters,    a person's id: Unicode ok
                  no surrounding whitespace
face id           decimal integer in 1 .. 2**63-1                       SQLite INTEGER PRIMARY KEY
request id        1-128 printable ASCII characters, no space            an idempotency key
================  ====================================================  ==========================

Every check raises :class:`InvalidInput` whose message shows at most a short prefix of the text
(:func:`shown`), so a 100k-character argument never ends up in a status message, trailer or log.
A well-formed face id that cannot exist (too many digits, zero) is not a bad argument but an
unknown face: :func:`face_id` returns None for it and callers answer NOT_FOUND.
"""

from __future__ import annotations

import base64
import binascii
import numbers
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from embeddings.errors import InvalidInput

__all__ = [
    "MAX_COLLECTION",
    "MAX_PAGE",
    "MAX_REQUEST_ID",
    "MAX_SUBJECT_ID",
    "check_collection",
    "check_request_id",
    "check_subject_id",
    "face_id",
    "page_after",
    "page_of",
    "shown",
]

MAX_COLLECTION = 64
MAX_PAGE = 1000
MAX_SUBJECT_ID = 128
MAX_REQUEST_ID = 128
_SHOWN = 40
_MAX_FACE_ID = 2**63 - 1

_COLLECTION = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_COLLECTION - 1}}}")
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")
# Printable ASCII without surrounding spaces: the common case, accepted without a per-character scan.
_PLAIN_SUBJECT = re.compile(rf"[\x21-\x7e](?:[\x20-\x7e]{{0,{MAX_SUBJECT_ID - 2}}}[\x21-\x7e])?")
_DIGITS = re.compile(r"[0-9]+")


def shown(text: object, limit: int = _SHOWN) -> str:
    """``repr`` of at most ``limit`` characters of ``text`` (with the total length when cut), for messages."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return repr(s)
    return f"{s[:limit]!r}… ({len(s)} characters)"


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a non-empty string")
    return value


def check_collection(name: object) -> str:
    """``name`` if it is a valid collection name, else InvalidInput."""
    s = _require_str(name, "collection name")
    if not _COLLECTION.fullmatch(s):
        raise InvalidInput(
            f"collection name {shown(s)} is invalid: use 1-{MAX_COLLECTION} ASCII letters, digits, '_', '.' "
            "or '-', starting with a letter or digit"
        )
    return s


def check_subject_id(subject_id: object) -> str:
    """``subject_id`` if it is a valid subject id, else InvalidInput."""
    s = _require_str(subject_id, "subject_id")
    if _PLAIN_SUBJECT.fullmatch(s):
        return s
    if len(s) > MAX_SUBJECT_ID:
        raise InvalidInput(f"subject_id {shown(s)} is longer than {MAX_SUBJECT_ID} characters")
    if s != s.strip():
        raise InvalidInput(f"subject_id {shown(s)} has leading or trailing whitespace")
    # Cc: control (NUL, newline...), Cf: format (zero-width, bidi overrides), Cs: lone surrogates.
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in s):
        raise InvalidInput(f"subject_id {shown(s)} contains control or format characters")
    return s


def check_request_id(request_id: object) -> str:
    """``request_id`` if it is a valid idempotency key, else InvalidInput."""
    s = _require_str(request_id, "request_id")
    if not _REQUEST_ID.fullmatch(s):
        raise InvalidInput(
            f"request_id {shown(s)} is invalid: use 1-{MAX_REQUEST_ID} printable ASCII characters without spaces"
        )
    return s


def face_id(value: object) -> int | None:
    """A face id as an int: from an int or a decimal string. None when it is well-formed but cannot
    name a face (0, or past SQLite's 64-bit range); InvalidInput when it is not a non-negative integer."""
    if isinstance(value, bool):
        raise InvalidInput("face_id must be an integer")
    if isinstance(value, numbers.Integral):
        n = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        if len(value) > 30:  # no need to convert a megabyte of digits to know it is too big
            return None
        n = int(value)
    else:
        raise InvalidInput(f"face_id must be a decimal integer, got {shown(value)}")
    if n < 0:
        raise InvalidInput("face_id must be a non-negative integer")
    return n if 1 <= n <= _MAX_FACE_ID else None


def page_after(page_token: str | None, page_size: int) -> str | None:
    """The subject id a listing page starts after (None: the first page), checking ``page_size``.

    Page tokens are the URL-safe base64 of the last subject id of the previous page, the same for
    every gallery backend; a malformed token is InvalidInput.
    """
    if not 1 <= page_size <= MAX_PAGE:
        raise InvalidInput(f"page_size must be in [1, {MAX_PAGE}]")
    if not page_token:
        return None
    try:
        return base64.b64decode(page_token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidInput("invalid page token") from exc


def page_of(rows: Sequence[Any], page_size: int) -> tuple[list[Any], str | None]:
    """A page from ``page_size + 1`` rows read after the token, and the next page's token (None at the end)."""
    page = list(rows[:page_size])
    if len(rows) <= page_size:
        return page, None
    return page, base64.urlsafe_b64encode(page[-1].subject_id.encode()).decode()
