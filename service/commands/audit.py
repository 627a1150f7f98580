"""``latentface audit``: per-group verification error rates with intervals -> report.json + report.html."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embeddings.errors import InvalidInput

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "audit",
        parents=[common],
        help="fairness audit: FMR/FNMR per demographic group with bootstrap intervals",
        description="Audit a labelled evaluation set (an image folder ROOT/<identity>/<image> or an "
        "embeddings .npy, each with a labels CSV holding 'id', 'identity' and group columns; or the "
        "--collection's faces when neither is given: identities = subject ids, groups = the subjects' "
        "group attributes, a subject without one in group ''). Writes report.json and a self-contained "
        "report.html into --out.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, metavar="ROOT", help="image folder ROOT/<identity>/<image>")
    src.add_argument("--embeddings", type=Path, metavar="FILE.npy", help="float32 N x D embeddings")
    p.add_argument("--labels", type=Path, metavar="CSV", help="labels CSV: id, identity, group columns")
    p.add_argument("--group-by", required=True, metavar="COL[,COL]", help="group column(s); several = their intersection")
    op = p.add_mutually_exclusive_group()
    op.add_argument(
        "--target-fmr",
        type=float,
        help="global threshold from this FMR (default 1e-3; for a --collection audit see --threshold)",
    )
    op.add_argument(
        "--threshold",
        type=float,
        help="use this (deployed) threshold instead; a --collection audit given neither option uses the "
        "collection's own threshold (what it decides matches with), with target FMR 1e-3 for the per-group "
        "thresholds",
    )
    p.add_argument("--analysis-dir", type=Path, help="output folder of `latentface analyze` on the training set")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.set_defaults(handler=run)


_DEFAULT_TARGET_FMR = 1e-3


def _load(args, config, progress):
    """The dataset, and the threshold to audit at (None: set from the target FMR)."""
    from embeddings import dataset as ds

    if args.embeddings is not None:
        if args.labels is None:
            raise InvalidInput("--embeddings needs --labels CSV (with an 'identity' column)")
        return ds.load_embeddings(args.embeddings, args.labels), args.threshold
    if args.images is not None:
        from service.runtime import build_pipeline

        dataset = ds.embed_image_folder(
            args.images,
            build_pipeline(config),
            cache_dir=Path(config.data_dir) / "cache" / "embeddings",  # shared with `analyze` and jobs
            labels_csv=args.labels,
            progress=progress,
        )
        return dataset, args.threshold
    from service.commands.analyze import load_collection

    dataset, deployed = load_collection(config, args.collection, progress=progress)
    if args.threshold is None and args.target_fmr is None:
        return dataset, deployed
    return dataset, args.threshold


def run(args, config) -> int:
    from tqdm import tqdm

    from embeddings.audit import AuditOptions, run_audit

    bar = tqdm(total=1000, file=sys.stderr, disable=not sys.stderr.isatty(), bar_format="{l_bar}{bar}| {elapsed}")

    def progress(frac: float, msg: str) -> None:
        bar.set_description(msg[:40])
        bar.n = int(1000 * min(max(frac, 0.0), 1.0))
        bar.refresh()

    try:
        dataset, threshold = _load(args, config, progress)
        result = run_audit(
            dataset,
            group_by=[c.strip() for c in args.group_by.split(",") if c.strip()],
            target_fmr=_DEFAULT_TARGET_FMR if args.target_fmr is None else args.target_fmr,
            threshold=threshold,
            analysis_dir=args.analysis_dir,
            seed=args.seed,
            progress=progress,
            options=AuditOptions(n_bootstrap=args.bootstrap),
        )
        paths = result.write(args.out)
    finally:
        bar.close()
    rep = result.report
    print(f"threshold {rep['threshold']:.4f} ({rep['threshold_source']}); report in {paths['report.html']}", file=sys.stderr)
    for name, g in rep["groups"].items():
        fmr = "n/a" if g["fmr"] is None else f"{g['fmr']:.3g}"
        fnmr = "n/a" if g["fnmr"] is None else f"{g['fnmr']:.3g}"
        flags = f"  [{', '.join(g['flags'])}]" if g["flags"] else ""
        print(f"  {name}: FMR {fmr}  FNMR {fnmr}{flags}", file=sys.stderr)
    return 0
