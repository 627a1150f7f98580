"""``latentface keys create|list|revoke``: manage API keys in the data directory.

Works on ``<data-dir>/keys.sqlite3`` (or PostgreSQL with ``--store``) directly, also while a server runs: the server checks
the store on every call, so a revoked key stops working at once.
"""

from __future__ import annotations

import argparse
import sys

from service.auth import ROLES, open_keystore
from service.cli import emit

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("keys", help="create, list and revoke API keys")
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    # Common options go on the leaves: argparse lets a sub-parser's defaults overwrite its parent's values.
    create = actions.add_parser("create", parents=[common], help="create a key and print it (shown only once)")
    create.add_argument("--role", choices=ROLES, required=True, help="read < write < admin")
    create.add_argument(
        "--collections", required=True, help="comma-separated collections the key may use, or '*' for all"
    )
    create.add_argument("--name", required=True, help="who or what the key is for")
    actions.add_parser("list", parents=[common], help="list keys (never their secrets)")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key by id")
    revoke.add_argument("key_id", help="the key's id (from 'keys list')")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config) -> int:  # noqa: ANN001 - ServiceConfig
    with open_keystore(config) as store:
        if args.keys_action == "create":
            collections = [c for c in args.collections.split(",") if c.strip()]
            key_id, secret = store.create(name=args.name, role=args.role, collections=collections)
            info = next(k for k in store.list() if k.key_id == key_id)
            emit({**info.to_dict(), "secret": secret})
            print("latentface: store this key now; it cannot be shown again", file=sys.stderr)
        elif args.keys_action == "list":
            emit([k.to_dict() for k in store.list()])
        else:
            emit(store.revoke(args.key_id).to_dict())
    return 0
