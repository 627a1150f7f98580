"""TLS and mutual TLS credentials from PEM files, for the server and for clients.

Server: ``server.tls_cert`` + ``server.tls_key`` turn TLS on; adding ``server.tls_client_ca``
turns on mutual TLS (clients must present a certificate signed by that CA). API keys are
still checked on top of mTLS when auth is on.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from embeddings.errors import InvalidInput

__all__ = ["channel_credentials", "server_credentials", "server_credentials_from_config"]


def _read(path: Path | str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the {what} {path}: {exc.strerror}") from exc
    if b"-----BEGIN" not in data:
        raise InvalidInput(f"the {what} {path} is not a PEM file")
    return data


def server_credentials(cert: Path | str, key: Path | str, client_ca: Path | str | None = None) -> grpc.ServerCredentials:
    """Credentials for ``server.add_secure_port``; with ``client_ca`` clients must present a certificate."""
    pair = (_read(key, "TLS private key"), _read(cert, "TLS certificate"))
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials([pair], root_certificates=_read(client_ca, "client CA"), require_client_auth=True)


def server_credentials_from_config(server_config) -> grpc.ServerCredentials | None:  # noqa: ANN001 - ServerConfig
    """Credentials for a :class:`service.config.ServerConfig`, or None when TLS is off."""
    if server_config.tls_cert is None:
        return None
    return server_credentials(server_config.tls_cert, server_config.tls_key, server_config.tls_client_ca)


def channel_credentials(
    ca: Path | str | None = None, *, cert: Path | str | None = None, key: Path | str | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: trust ``ca`` (None: the system roots); ``cert`` + ``key`` for mutual TLS."""
    if (cert is None) != (key is None):
        raise InvalidInput("a client certificate and its key must be given together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate") if ca is not None else None,
        private_key=_read(key, "client private key") if key is not None else None,
        certificate_chain=_read(cert, "client certificate") if cert is not None else None,
    )
