"""API keys: a hashed key store, roles scoped to collections, and the gRPC interceptor.

A key is a random secret (``lf_`` + 43 url-safe characters, 256 bits) shown once when it
is created; the store keeps only its SHA-256 (a fast hash is enough for secrets of that
entropy: there is nothing to brute-force). Each key has a role, ordered
``read < write < admin``, and a list of collections it may touch (``"*"`` = all):

- ``read``: Detect, Embed, Verify, Identify, GetSubject, ListSubjects, stats, jobs' status;
- ``write``: also Enroll, EnrollStream, DeleteSubject, DeleteFace;
- ``admin``: also Create/Delete collection, SetThreshold, Calibrate, analysis/audit jobs.

A key scoped to collections may use admin RPCs only on those collections (a scoped admin may
create a collection of a name it is scoped to); calls that touch no collection (Detect,
Embed) need only the role, and ListCollections shows a key only its own collections.
Servicers call :func:`authorize` with the collection and the role a call needs.

The store is read on every call, so ``latentface keys revoke`` (a separate process writing the
same SQLite file) takes effect on the next call, without a restart.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from embeddings.datadir import private_file
from embeddings.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    PermissionDenied,
    StorageError,
    Unauthenticated,
)
from embeddings.names import shown
from service._rpc_wrap import run_in_context

__all__ = [
    "ADMIN_KEY_FILE",
    "AuthInterceptor",
    "KeyInfo",
    "KeyStore",
    "PgKeyStore",
    "Principal",
    "ROLES",
    "authorize",
    "current_principal",
    "ensure_admin_key",
    "open_keystore",
    "visible_collections",
]

log = logging.getLogger(__name__)

ROLES = ("read", "write", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
ALL_COLLECTIONS = "*"
ADMIN_KEY_FILE = "admin.key"
KEYS_DB = "keys.sqlite3"
# Health checks and reflection must work without a key (load balancers, probes, grpcurl).
EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# The name under which a key from ``server.admin_key_file`` is stored; a new mounted key revokes older ones.
PROVIDED_ADMIN_NAME = "admin (provided)"
MIN_IMPORTED_KEY_CHARS = 32
# An imported key must carry at least this many bits, estimated from its own characters (length x
# per-character Shannon entropy; a random 32-char hex key has ~100-120, `openssl rand -base64 48` ~350).
MIN_IMPORTED_KEY_BITS = 90.0
# Words of template text (the shipped Secret says "REPLACE-ME-with-at-least-32-random-characters").
_PLACEHOLDER_WORDS = ("replace", "changeme", "change-me", "change_me", "placeholder", "example", "your-", "your_", "todo")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name, role and collections (``("*",)`` = all)."""

    key_id: str
    name: str
    role: str
    collections: tuple[str, ...]

    def allows(self, collection: str | None, role: str) -> bool:
        """True when this key has at least ``role`` and (if given) may touch ``collection``."""
        if _RANK[self.role] < _RANK[role]:
            return False
        return collection is None or ALL_COLLECTIONS in self.collections or collection in self.collections

    @property
    def all_collections(self) -> bool:
        return ALL_COLLECTIONS in self.collections


# Bound to every call when auth is disabled: everything is allowed.
UNRESTRICTED = Principal(key_id="-", name="auth disabled", role="admin", collections=(ALL_COLLECTIONS,))


@dataclass(frozen=True)
class KeyInfo:
    """A stored key as ``keys list`` shows it (never the secret)."""

    key_id: str
    name: str
    role: str
    collections: tuple[str, ...]
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role,
            "collections": list(self.collections),
            "created_at": self.created_at,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
        }


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _check_role(role: str) -> None:
    if role not in _RANK:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def estimated_bits(secret: str) -> float:
    """Length x the Shannon entropy of the key's own character frequencies (an upper bound for a pattern)."""
    if not secret:
        return 0.0
    counts = Counter(secret)
    n = len(secret)
    return max(0.0, n * -sum(c / n * math.log2(c / n) for c in counts.values()))


def check_imported_key(secret: str) -> None:
    """Refuse a key an operator made that is short, template text or guessable; says how to make one."""
    how = "make one with: openssl rand -base64 48 | tr -d '\\n'"
    if len(secret) < MIN_IMPORTED_KEY_CHARS:
        raise InvalidInput(f"an imported API key must be at least {MIN_IMPORTED_KEY_CHARS} characters long; {how}")
    lowered = secret.lower()
    for word in _PLACEHOLDER_WORDS:
        if word in lowered:
            raise InvalidInput(f"the API key looks like placeholder text (it contains {word!r}), not a secret; {how}")
    bits = estimated_bits(secret)
    repeated = secret in (secret + secret)[1:-1]  # one shorter unit over and over ("0123abcd0123abcd")
    if repeated or bits < MIN_IMPORTED_KEY_BITS or len(set(secret)) < 8:
        raise InvalidInput(
            f"the API key is too predictable (about {bits:.0f} bits from {len(set(secret))} distinct characters; "
            f"at least {MIN_IMPORTED_KEY_BITS:.0f} needed); {how}"
        )


def _check_collections(collections: Sequence[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(c.strip() for c in collections if c.strip()))
    if not out:
        raise InvalidInput("a key needs at least one collection ('*' for all)")
    return out


class KeyStore:
    """API keys in ``<data_dir>/keys.sqlite3`` (WAL), stored hashed. Thread-safe."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path | str) -> KeyStore:
        data_dir = Path(data_dir)
        path = data_dir / KEYS_DB
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            private_file(path)  # key hashes: owner only (0600), whatever the umask
            # Autocommit: every SELECT sees what another process (the keys CLI) committed.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(
                """CREATE TABLE IF NOT EXISTS api_keys (
                    key_id TEXT PRIMARY KEY,
                    name TEXT NOT NULL,
                    role TEXT NOT NULL,
                    collections TEXT NOT NULL,
                    secret_hash TEXT NOT NULL UNIQUE,
                    created_at REAL NOT NULL,
                    revoked_at REAL
                )"""
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the key store {path}: {exc}") from exc
        return cls(path, conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"key store {self.path}: {exc}") from exc

    def create(self, *, name: str, role: str, collections: Sequence[str]) -> tuple[str, str]:
        """Create a key; returns ``(key_id, secret)``. The secret is not stored and cannot be shown again."""
        secret = "lf_" + secrets.token_urlsafe(32)
        key_id = self._insert(secret, name=name, role=role, collections=collections)
        return key_id, secret

    def import_key(self, secret: str, *, name: str, role: str, collections: Sequence[str]) -> str:
        """Store a key whose secret the operator made (e.g. from a Kubernetes Secret); idempotent.

        Refuses short, placeholder and low-entropy keys (:func:`check_imported_key`), and a key that
        was revoked: importing it again must not bring it back.
        """
        secret = secret.strip()
        check_imported_key(secret)
        found = self.find(secret)
        if found is not None:
            if found.revoked:
                raise InvalidInput(f"this API key was revoked (key id {found.key_id}); a revoked key cannot be imported again")
            return found.key_id
        return self._insert(secret, name=name, role=role, collections=collections)

    def find(self, secret: str) -> KeyInfo | None:
        """The stored key with this secret (active or revoked), or None."""
        rows = self._execute(
            "SELECT key_id, name, role, collections, created_at, revoked_at FROM api_keys WHERE secret_hash = ?",
            (_hash(secret.strip()),),
        )
        return KeyInfo(rows[0][0], rows[0][1], rows[0][2], tuple(json.loads(rows[0][3])), rows[0][4], rows[0][5]) if rows else None

    def _insert(self, secret: str, *, name: str, role: str, collections: Sequence[str]) -> str:
        _check_role(role)
        scope = _check_collections(collections)
        if not name.strip():
            raise InvalidInput("a key needs a name")
        key_id = "k_" + secrets.token_hex(6)
        self._execute(
            "INSERT INTO api_keys (key_id, name, role, collections, secret_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (key_id, name.strip(), role, json.dumps(scope), _hash(secret), time.time()),
        )
        return key_id

    def list(self, *, include_revoked: bool = True) -> list[KeyInfo]:
        """All keys, oldest first (no secrets: the store has none)."""
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        rows = self._execute(
            f"SELECT key_id, name, role, collections, created_at, revoked_at FROM api_keys {where} ORDER BY created_at"
        )
        return [KeyInfo(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5]) for r in rows]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key (kept in the list, marked revoked). Revoking twice is harmless."""
        rows = self._execute("SELECT key_id FROM api_keys WHERE key_id = ?", (key_id,))
        if not rows:
            raise NotFound(f"no API key with id {key_id!r}")
        self._execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (time.time(), key_id))
        return next(k for k in self.list() if k.key_id == key_id)

    def authenticate(self, secret: str | None) -> Principal:
        """The principal of an active key; raises Unauthenticated for a missing, unknown or revoked key."""
        if not secret:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>' metadata")
        # Looked up by hash: the index compares digests, never the secret itself.
        rows = self._execute(
            "SELECT key_id, name, role, collections, revoked_at FROM api_keys WHERE secret_hash = ?", (_hash(secret),)
        )
        if not rows:
            raise Unauthenticated("invalid API key")
        key_id, name, role, collections, revoked_at = rows[0]
        if revoked_at is not None:
            raise Unauthenticated("API key revoked")
        return Principal(key_id=key_id, name=name, role=role, collections=tuple(json.loads(collections)))


class PgKeyStore(KeyStore):
    """API keys in PostgreSQL (``api_keys``, created by :mod:`embeddings.backends.postgres`'s migrations),
    shared by every replica: a key revoked through one is refused by all on their next call."""

    def __init__(self, dsn: str) -> None:
        from embeddings.backends.postgres import PgStore

        self._pg = PgStore(dsn, pool_size=4)
        self.path = Path(self._pg.dsn_shown)  # for messages only
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pg.close()

    def _execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        # KeyStore's statements use sqlite's "?" placeholders and contain no literal "?".
        return self._pg.execute(sql.replace("?", "%s"), params)

    def import_key(self, secret: str, *, name: str, role: str, collections: Sequence[str]) -> str:
        try:
            return super().import_key(secret, name=name, role=role, collections=collections)
        except AlreadyExists:  # replicas starting together import the same mounted key: one insert wins
            return super().import_key(secret, name=name, role=role, collections=collections)


def open_keystore(config) -> KeyStore:  # noqa: ANN001 - ServiceConfig (service.config imports nothing of this)
    """PostgreSQL's key store when ``config.store`` is set (shared by replicas), else ``<data_dir>/keys.sqlite3``."""
    if getattr(config, "store", None):
        return PgKeyStore(config.store)
    return KeyStore.open(config.data_dir)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (atomic rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case the umask or an old file left other bits
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_admin_key(keystore: KeyStore, data_dir: Path | str, *, provided_key_file: Path | str | None = None) -> Path | None:
    """Make sure someone can administer the server; never logs a key.

    With ``provided_key_file`` (e.g. a mounted Kubernetes Secret), that file's key is stored
    (hashed) as an admin key for all collections, idempotently, and None is returned. A key that
    is short, template text or guessable is refused, and so is one that was revoked; mounting a
    new key (rotation) revokes the keys earlier mounted files provided.
    Otherwise, on first start (an empty key store) a new admin key is created and written to
    ``<data_dir>/admin.key`` with mode 0600; its path is logged and returned. Later starts
    return None: keys are then managed with ``latentface keys``.
    """
    if provided_key_file is not None:
        try:
            secret = Path(provided_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read the admin key file {provided_key_file}: {exc.strerror}") from exc
        try:
            key_id = keystore.import_key(secret, name=PROVIDED_ADMIN_NAME, role="admin", collections=[ALL_COLLECTIONS])
        except InvalidInput as exc:
            raise InvalidInput(f"the admin key file {provided_key_file} cannot be used: {exc}") from exc
        for old in keystore.list(include_revoked=False):
            if old.name == PROVIDED_ADMIN_NAME and old.key_id != key_id:
                keystore.revoke(old.key_id)
                log.warning("revoked %s, the admin key an earlier %s provided (rotated)", old.key_id, provided_key_file)
        log.info("admin key from %s is active as %s", provided_key_file, key_id)
        return None
    if keystore.list():
        return None
    path = Path(data_dir) / ADMIN_KEY_FILE
    key_id, secret = keystore.create(name="admin (first start)", role="admin", collections=[ALL_COLLECTIONS])
    try:
        _write_private(path, secret + "\n")
    except OSError as exc:
        keystore.revoke(key_id)
        raise StorageError(f"cannot write the admin key to {path}: {exc.strerror}") from exc
    log.warning("created admin API key %s; the key is in %s (mode 0600)", key_id, path)
    return path


_principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("latentface_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the call being served (None outside an authenticated call)."""
    return _principal_var.get()


def authorize(collection: str | None, role: str) -> None:
    """Raise unless the current call's key has ``role`` on ``collection`` (None: no collection involved).

    With auth disabled the interceptor binds an unrestricted principal, so this passes. Outside
    any call that went through :class:`AuthInterceptor` it fails closed (Unauthenticated).
    """
    _check_role(role)
    principal = _principal_var.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller")
    if not principal.allows(collection, role):
        if _RANK[principal.role] < _RANK[role]:
            raise PermissionDenied(f"this API key has role {principal.role!r}; the call needs {role!r}")
        raise PermissionDenied(f"this API key may not access collection {shown(collection)}")


def visible_collections(names: Iterable[str]) -> list[str]:
    """Filter collection names to the ones the current call's key may read (for ListCollections)."""
    principal = _principal_var.get()
    if principal is None:
        return []
    return [n for n in names if principal.allows(n, "read")]


def _bearer(metadata: Iterable[tuple[str, object]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates ``authorization: Bearer <key>`` and binds the caller for :func:`authorize`.

    Health and reflection are exempt. A missing, unknown or revoked key ends the call with
    UNAUTHENTICATED before the servicer runs. With ``enabled=False`` every call gets an
    unrestricted principal. The key store is consulted in the worker thread of each call.
    """

    def __init__(self, keystore: KeyStore | None, *, enabled: bool) -> None:
        if enabled and keystore is None:
            raise ValueError("AuthInterceptor needs a KeyStore when enabled")
        self._keystore = keystore
        self._enabled = enabled

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        if not self._enabled:
            return run_in_context(handler, lambda _context: _principal_var.set(UNRESTRICTED))
        secret = _bearer(handler_call_details.invocation_metadata)
        keystore = self._keystore
        assert keystore is not None

        def setup(context: grpc.ServicerContext) -> None:
            try:
                principal = keystore.authenticate(secret)
            except Unauthenticated as exc:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            _principal_var.set(principal)

        return run_in_context(handler, setup)
