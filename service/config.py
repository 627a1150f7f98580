"""The one place that reads configuration: flags > environment > TOML file > defaults.

Everything else receives a validated :class:`ServiceConfig`. Keys are ``section.field``
(``encoder.precision``, ``server.port``); the top-level shortcuts ``data_dir`` and
``weights`` are the ones users set most. Environment variables are
``LATENTFACE_DATA_DIR``, ``LATENTFACE_WEIGHTS``, ``LATENTFACE_CONFIG`` (the TOML file)
and ``LATENTFACE_<SECTION>_<FIELD>`` for the rest (``LATENTFACE_SERVER_PORT=50051``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings.config import (
    DecodeLimits,
    DetectorConfig,
    EncoderConfig,
    GalleryConfig,
    IndexConfig,
    QualityConfig,
)
from embeddings.errors import InvalidInput

__all__ = ["ServerConfig", "ServiceConfig", "load_config", "ENV_PREFIX"]

ENV_PREFIX = "LATENTFACE_"


@dataclass(frozen=True)
class ServerConfig:
    """gRPC server settings."""

    host: str = "127.0.0.1"
    port: int = 50051
    max_workers: int = 16
    # Long-lived streams (Health/Watch, reflection, WatchJob) open at once, in total and per client
    # address; beyond them a stream ends at once with RESOURCE_EXHAUSTED (see service/admission.py).
    max_streams: int = 8
    max_streams_per_peer: int = 2
    # Work per request: images in one Enroll (or one EnrollStream message), and the deadline applied
    # to image calls whose client set none (None: no default).
    max_images_per_request: int = 16
    default_deadline_s: float | None = 60.0
    max_message_bytes: int = 32 * 1024 * 1024
    grace_s: float = 10.0
    auth: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # A file holding an admin API key to accept (e.g. a mounted Kubernetes Secret); see service.auth.ensure_admin_key.
    admin_key_file: Path | None = None
    metrics_port: int | None = None
    batch_max_size: int = 32
    batch_max_wait_ms: float = 5.0
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"server.port must be in 0..65535, got {self.port}")
        if self.max_workers < 1:
            raise InvalidInput("server.max_workers must be >= 1")
        if self.max_streams < 1 or self.max_streams_per_peer < 1:
            raise InvalidInput("server.max_streams and server.max_streams_per_peer must be >= 1")
        if self.max_images_per_request < 1:
            raise InvalidInput("server.max_images_per_request must be >= 1")
        if self.default_deadline_s is not None and not self.default_deadline_s > 0:
            raise InvalidInput("server.default_deadline_s must be > 0 (or none)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("server.tls_cert and server.tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInput("mutual TLS (server.tls_client_ca) needs server.tls_cert and server.tls_key")
        if self.batch_max_size < 1 or self.batch_max_wait_ms < 0:
            raise InvalidInput("server.batch_max_size must be >= 1 and server.batch_max_wait_ms >= 0")
        if self.log_format not in ("text", "json"):
            raise InvalidInput("server.log_format must be text or json")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the server, the CLI and the jobs need, validated once."""

    data_dir: Path = Path("data")
    allow_download: bool = True  # facenet-pytorch downloads checkpoints; LATENTFACE_OFFLINE=1 forbids it
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    index: IndexConfig = field(default_factory=IndexConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    # None: the encoder model's own default (PretrainedCfg.default_threshold), see service/runtime.py.
    default_threshold: float | None = None
    # Scale-out (README "Scale-out: PostgreSQL + Milvus"): a PostgreSQL DSN (gallery and API keys) and a
    # Milvus URI (http://host:19530, or a Milvus Lite file for one process); both or neither (embedded).
    # Not in repr: a DSN may carry a password.
    store: str | None = field(default=None, repr=False)
    vectors: str | None = None

    def __post_init__(self) -> None:
        if (self.store is None) != (self.vectors is None):
            raise InvalidInput("store (a postgresql:// DSN) and vectors (a Milvus URI) must be set together")
        if self.store is not None and not (
            self.store.startswith(("postgresql://", "postgres://")) or "host=" in self.store or "dbname=" in self.store
        ):
            raise InvalidInput("store must be a PostgreSQL DSN (postgresql://user@host:5432/db)")
        if self.vectors is not None and not (
            self.vectors.startswith(("http://", "https://", "tcp://")) or self.vectors.endswith(".db")
        ):
            raise InvalidInput("vectors must be a Milvus URI (http://host:19530) or a Milvus Lite file (*.db)")

    @property
    def gallery(self) -> GalleryConfig:
        """The gallery config; without an explicit default threshold, the model's (0.5 if unknown)."""
        return self.gallery_for(None)

    def gallery_for(self, model_threshold: float | None) -> GalleryConfig:
        """The gallery config, with ``model_threshold`` as the default unless one is configured."""
        threshold = self.default_threshold
        if threshold is None:
            threshold = 0.5 if model_threshold is None else model_threshold
        return GalleryConfig(data_dir=self.data_dir, default_threshold=threshold, index=self.index)


_SECTIONS: dict[str, type] = {
    "encoder": EncoderConfig,
    "detector": DetectorConfig,
    "quality": QualityConfig,
    "decode": DecodeLimits,
    "index": IndexConfig,
    "server": ServerConfig,
}
_TOP_LEVEL = {f.name for f in dataclasses.fields(ServiceConfig)} - set(_SECTIONS)
# Shortcuts: a top-level key that really lives in a section.
_ALIASES = {"weights": "encoder.weights", "device": "encoder.device", "precision": "encoder.precision"}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a string (from env or flags) or TOML value into the field's declared (resolved) type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, args[0], key)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is Path:
            return Path(value).expanduser()
        if annotation in (int, float, str):
            return annotation(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            (item_type, *_rest) = typing.get_args(annotation)
            return tuple(item_type(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"config {key}: cannot read {value!r} as {getattr(annotation, '__name__', annotation)}") from exc
    return value


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _TOP_LEVEL | set(_ALIASES) | {"offline"}:
        if (value := env.get(ENV_PREFIX + name.upper())) is not None:
            out[name] = value
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            if (value := env.get(f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}")) is not None:
                out[f"{section}.{f.name}"] = value
    return out


def load_config(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | str | None = None,
) -> ServiceConfig:
    """Build the validated config. ``flags`` are ``section.field`` keys (None values are ignored).

    The TOML file is ``config_file``, else ``flags["config"]``, else ``$LATENTFACE_CONFIG``.
    Unknown keys are errors, so a typo never silently falls back to a default.
    """
    env = os.environ if env is None else env
    flags = {k.replace("-", "_"): v for k, v in (flags or {}).items() if v is not None}
    path = config_file or flags.pop("config", None) or env.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                merged.update(_flatten(tomllib.load(fh)))
        except OSError as exc:
            raise InvalidInput(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from exc
    merged.update(_from_env(env))
    merged.update(flags)
    if "encoder.torch_home" not in merged and (home := _torch_home_from_env(env)) is not None:
        merged["encoder.torch_home"] = home
    if "offline" in merged:  # LATENTFACE_OFFLINE=1 forbids downloads whatever else says
        offline = _coerce(merged.pop("offline"), bool, "offline")
        if offline:
            merged["allow_download"] = False
    return _build(merged)


def _torch_home_from_env(env: Mapping[str, str]) -> str | None:
    """facenet-pytorch's get_torch_home() rule, read here so the domain reads no environment:
    ``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``; None leaves the domain's ``~/.cache/torch``."""
    if env.get("TORCH_HOME"):
        return env["TORCH_HOME"]
    if env.get("XDG_CACHE_HOME"):
        return os.path.join(env["XDG_CACHE_HOME"], "torch")
    return None


def _build(values: Mapping[str, Any]) -> ServiceConfig:
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in values.items():
        key = _ALIASES.get(key, key)
        section, _, name = key.rpartition(".")
        if not section:
            if name not in _TOP_LEVEL:
                raise InvalidInput(f"unknown config key {key!r}")
            top[name] = value
        elif section in _SECTIONS:
            sections[section][name] = value
        else:
            raise InvalidInput(f"unknown config section {section!r} (in key {key!r})")
    kwargs: dict[str, Any] = {}
    hints_top = typing.get_type_hints(ServiceConfig)
    for name, value in top.items():
        kwargs[name] = _coerce(value, hints_top[name], name)
    for section, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        given = sections[section]
        unknown = set(given) - known
        if unknown:
            raise InvalidInput(f"unknown config key(s) in [{section}]: {', '.join(sorted(unknown))}")
        try:
            kwargs[section] = cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in given.items()})
        except TypeError as exc:
            raise InvalidInput(f"config [{section}]: {exc}") from exc
    return ServiceConfig(**kwargs)
