"""``latentface serve``: run the gRPC server on the data directory until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

__all__ = ["register", "run"]

# flag dest -> config key; None values are left to env / TOML / defaults.
_SERVER_FLAGS = {
    "host": "server.host",
    "port": "server.port",
    "max_workers": "server.max_workers",
    "max_streams": "server.max_streams",
    "max_streams_per_peer": "server.max_streams_per_peer",
    "max_images_per_request": "server.max_images_per_request",
    "default_deadline_s": "server.default_deadline_s",
    "grace_s": "server.grace_s",
    "tls_cert": "server.tls_cert",
    "tls_key": "server.tls_key",
    "tls_client_ca": "server.tls_client_ca",
    "metrics_port": "server.metrics_port",
    "batch_max_size": "server.batch_max_size",
    "batch_max_wait_ms": "server.batch_max_wait_ms",
    "log_format": "server.log_format",
    "auth": "server.auth",
    "admin_key_file": "server.admin_key_file",
}


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "serve",
        parents=[common],
        help="run the gRPC server (FaceService, CollectionService, AnalysisService, health, reflection)",
        description="Serve the gallery in --data-dir over gRPC. Config precedence: flags > LATENTFACE_* env > "
        "TOML (--config) > defaults. On first start an admin API key is written to <data-dir>/admin.key (0600).",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, help="port (default 50051; 0 picks a free one and logs it)")
    p.add_argument("--max-workers", type=int, help="RPC worker threads (default 16)")
    p.add_argument(
        "--max-streams", type=int, help="open Health/Watch, reflection and WatchJob streams in total (default 8)"
    )
    p.add_argument("--max-streams-per-peer", type=int, help="... and per client address (default 2)")
    p.add_argument("--max-images-per-request", type=int, help="images in one Enroll or EnrollStream message (default 16)")
    p.add_argument(
        "--default-deadline-s", type=float, help="deadline of image calls whose client set none, in s (default 60)"
    )
    p.add_argument("--grace-s", type=float, help="seconds running calls get to finish on shutdown (default 10)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key: TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA of client certificates (mutual TLS)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (0: any free port)")
    p.add_argument("--batch-max-size", type=int, help="max face crops per encoder batch (default 32)")
    p.add_argument("--batch-max-wait-ms", type=float, help="max wait for a batch to fill, in ms (default 5)")
    p.add_argument(
        "--admin-key-file",
        type=Path,
        help="file holding the admin key to install on first start (e.g. a mounted Kubernetes Secret)",
    )
    p.add_argument("--log-format", choices=("text", "json"), help="log format (default text)")
    p.add_argument(
        "--no-auth",
        dest="auth",
        action="store_const",
        const=False,
        default=None,
        help="disable API keys (only behind another authenticating layer)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, config) -> int:  # noqa: ANN001 - ServiceConfig
    from service.logs import configure_logging
    from service.server import serve

    overrides = {key: getattr(args, dest) for dest, key in _SERVER_FLAGS.items() if getattr(args, dest, None) is not None}
    if overrides:
        # Flags win over env and TOML, which load_config already applied to ``config``.
        server = dataclasses.replace(config.server, **{k.split(".", 1)[1]: v for k, v in overrides.items()})
        config = dataclasses.replace(config, server=server)
    configure_logging(config.server.log_format, level=logging.DEBUG if args.verbose else logging.INFO)
    return serve(config)
