"""``latentface`` command line: one sub-command per module in ``service/commands``.

Exit codes: 0 success, 1 a negative answer (``verify`` found no match), 2 bad input or usage,
3 not found, 4 unavailable (weights, index), 5 authentication or permission, 6 any other
error (a latentface error of no other branch, or a bug: never 1, which scripts read as "no
match"), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from embeddings import errors

__all__ = ["main", "build_parser", "exit_code_for", "emit"]

# Command modules, in help order. Each exposes register(subparsers, common).
COMMAND_MODULES = (
    "service.commands.serve",
    "service.commands.gallery",
    "service.commands.collections",
    "service.commands.keys",
    "service.commands.analyze",
    "service.commands.audit",
    "service.commands.debias",
    "service.commands.bench",
)

_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.LimitExceeded, 2),
    (errors.InvalidInput, 2),
    (errors.NotFound, 3),
    (errors.AlreadyExists, 2),
    (errors.Unavailable, 4),
    (errors.AuthError, 5),
    (errors.Cancelled, 130),
    (errors.LatentfaceError, 6),
)


def exit_code_for(exc: BaseException) -> int:
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 6


def emit(obj: Any) -> None:
    """Print a result as JSON on stdout (the CLI's machine-readable output)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--data-dir", dest="data_dir", help="data directory (default ./data; env LATENTFACE_DATA_DIR)")
    g.add_argument("--collection", default="default", help="collection name (default: %(default)s)")
    g.add_argument(
        "--weights",
        help="encoder weights: vggface2 (default), casia-webface, a .pt state-dict path, "
        "or 'random' (tests/dev only); env LATENTFACE_WEIGHTS",
    )
    g.add_argument("--config", help="TOML config file (env LATENTFACE_CONFIG)")
    g.add_argument("--store", help="PostgreSQL DSN for the gallery and API keys (scale-out; env LATENTFACE_STORE)")
    g.add_argument("--vectors", help="Milvus URI, http://host:19530 (scale-out, with --store; env LATENTFACE_VECTORS)")
    g.add_argument("--precision", choices=("auto", "int8", "bf16", "fp32"), help="encoder precision (default auto)")
    g.add_argument("--offline", action="store_true", default=None, help="never download weights")
    g.add_argument("--adapter", help="debiasing adapter file (from `latentface debias`) applied after the encoder; "
                   "env LATENTFACE_ENCODER_ADAPTER")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentface",
        description="Face verification and identification service, latent-density debiasing and fairness audits.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def config_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the common options set (None values are ignored by load_config)."""
    return {
        "data_dir": getattr(args, "data_dir", None),
        "weights": getattr(args, "weights", None),
        "config": getattr(args, "config", None),
        "precision": getattr(args, "precision", None),
        "offline": getattr(args, "offline", None),
        "encoder.adapter": getattr(args, "adapter", None),
        "store": getattr(args, "store", None),
        "vectors": getattr(args, "vectors", None),
        **getattr(args, "config_overrides", {}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from service.config import load_config
    from service.logs import quiet_libraries

    quiet_libraries(level)

    try:
        config = load_config(config_flags(args))
        return int(args.handler(args, config) or 0)
    except KeyboardInterrupt:
        print("latentface: interrupted", file=sys.stderr)
        return 130
    except errors.LatentfaceError as exc:
        reasons = getattr(exc, "reasons", ())
        suffix = f" (reasons: {', '.join(reasons)})" if reasons else ""
        print(f"latentface: error: {exc}{suffix}", file=sys.stderr)
        return exit_code_for(exc)
    except Exception as exc:  # noqa: BLE001 - a bug: say so, keep the traceback, and never exit 1 ("no match")
        logging.getLogger("latentface.cli").critical("unexpected error (a bug in latentface)", exc_info=exc)
        print(f"latentface: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 6


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
