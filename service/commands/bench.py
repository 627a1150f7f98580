"""``latentface bench``: the project's benchmark; prints one JSON object."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from embeddings.bench import PARTS, BenchOptions, run_bench

SERVICE_PARTS = ("server",)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench",
        parents=[common],
        help="run the benchmark (encoder, detect, identify, analysis, analysis-suite, audit, real, server)",
        description="Measures the figures the issues set targets for. Use --only to run parts, "
        "--gallery-size to size the identify part, --analysis-size the analysis part.",
    )
    p.add_argument("--only", help=f"comma-separated parts: {','.join(PARTS + SERVICE_PARTS)}")
    p.add_argument("--gallery-size", type=int, default=100_000, help="faces in the identify part's gallery")
    p.add_argument("--analysis-size", type=int, default=100_000, help="embeddings in the analysis part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=Path("bench-out"))
    p.add_argument("--quick", action="store_true", help="smaller inputs (smoke run)")
    p.add_argument(
        "--faces",
        type=Path,
        default=Path("../shared/faces"),
        help="real photos for the 'real' part: <person>/<image> with MANIFEST.csv (default: %(default)s)",
    )
    p.add_argument(
        "--real-embeddings",
        type=Path,
        default=None,
        metavar="FILE.npy",
        help="real embeddings for the analysis-suite part (labels in FILE.csv beside it); skipped when absent",
    )
    p.add_argument("--json", action="store_true", help="print only the JSON object (default prints it too)")
    p.set_defaults(handler=run)


def _server_part(options: BenchOptions) -> dict:
    from service.bench_server import run as run_server

    return run_server(options)


def run(args, config) -> int:
    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    if only is None:
        only = list(PARTS) + list(SERVICE_PARTS)
    options = BenchOptions(
        gallery_size=args.gallery_size,
        analysis_size=args.analysis_size,
        seed=args.seed,
        work_dir=args.work_dir,
        quick=args.quick,
        weights=args.weights or "random",
        faces_dir=args.faces,
        real_embeddings=args.real_embeddings,
    )
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_bench(only, options, extra_parts={"server": _server_part}, log=log)
    json.dump(result, sys.stdout, indent=None if args.json else 2)
    sys.stdout.write("\n")
    return 0
