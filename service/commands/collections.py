"""``latentface collections``: create, list, delete, inspect collections and set their threshold (local data dir)."""

from __future__ import annotations

import argparse

from service.cli import emit


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("collections", parents=[common], help="manage collections in the local data directory")
    p.add_argument("action", choices=("create", "list", "delete", "stats", "set-threshold"))
    p.add_argument("--threshold", type=float, help="cosine threshold (create, set-threshold)")
    p.add_argument("--yes", action="store_true", help="confirm delete (it removes every subject and face)")
    p.set_defaults(handler=run)


def _as_dict(obj):
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    return obj


def run(args, config) -> int:
    from embeddings.errors import InvalidInput
    from service.runtime import open_engine

    engine = open_engine(config)
    try:
        name = args.collection
        if args.action == "create":
            emit(_as_dict(engine.create_collection(name, threshold=args.threshold)))
        elif args.action == "list":
            emit([_as_dict(c) for c in engine.list_collections()])
        elif args.action == "stats":
            emit(_as_dict(engine.collection_stats(name)))
        elif args.action == "set-threshold":
            if args.threshold is None:
                raise InvalidInput("set-threshold needs --threshold")
            engine.set_threshold(name, args.threshold)
            emit(_as_dict(engine.collection_stats(name)))
        elif args.action == "delete":
            if not args.yes:
                raise InvalidInput(f"deleting collection {name!r} removes all its subjects and faces; add --yes")
            engine.delete_collection(name)
            emit({"deleted": name})
        return 0
    finally:
        engine.close()
