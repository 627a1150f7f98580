"""``latentface debias``: train an adapter with and without latent weights, audit base / uniform / weighted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from embeddings.errors import InvalidInput

__all__ = ["register", "run"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "debias",
        parents=[common],
        help="train a debiasing adapter with the latent weights and audit it against uniform training",
        description="From a labelled dataset (an image folder ROOT/<identity>/<image>, an embeddings .npy with a "
        "labels CSV holding 'id', 'identity' and group columns, or the --collection's faces when neither is given) "
        "train a small adapter on the frozen encoder twice — uniform sampling and latent-density-weight sampling — "
        "on one part of the identities, and audit the encoder alone and both adapters on the rest. Writes "
        "report.json, report.html, adapter_uniform.pt and adapter_weighted.pt into --out; serve an adapter "
        "with `latentface serve --adapter FILE`.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, metavar="ROOT", help="image folder ROOT/<identity>/<image>")
    src.add_argument("--embeddings", type=Path, metavar="FILE.npy", help="float32 N x D embeddings (needs --labels)")
    p.add_argument("--labels", type=Path, metavar="CSV", help="labels CSV: id, identity, group columns")
    p.add_argument("--group-by", required=True, metavar="COL[,COL]", help="group column(s) the audits compare")
    p.add_argument("--target-fmr", type=float, default=1e-3, help="common operating point (default %(default)s)")
    p.add_argument("--eval-fraction", type=float, default=0.3, help="share of identities held out (default %(default)s)")
    p.add_argument("--out-dim", type=int, default=64, help="adapter output size (default %(default)s)")
    p.add_argument("--hidden-dim", type=int, default=256, help="hidden width; 0 for a linear adapter (default %(default)s)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs per adapter (default %(default)s)")
    p.add_argument("--margin", type=float, default=0.2, help="CosFace margin (default %(default)s)")
    p.add_argument("--method", choices=("knn", "gmm", "histogram"), default=None, help="latent density estimator")
    p.add_argument("--alpha", type=float, default=None, help="weight smoothing α (default 0.1 for knn and gmm, the method's for histogram)")
    p.add_argument("--vaes", type=int, default=1, metavar="N", help="VAEs averaged for the weights (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates per audit (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.set_defaults(handler=run)


def _load(args: argparse.Namespace, config: Any, progress: Any) -> Any:
    from embeddings import dataset as ds

    if args.embeddings is not None:
        if args.labels is None:
            raise InvalidInput("--embeddings needs --labels CSV (with an 'identity' column)")
        return ds.load_embeddings(args.embeddings, args.labels)
    if args.images is not None:
        from service.runtime import build_pipeline

        return ds.embed_image_folder(
            args.images,
            build_pipeline(config),
            cache_dir=Path(config.data_dir) / "cache" / "embeddings",  # shared with `analyze` and `audit`
            labels_csv=args.labels,
            progress=progress,
        )
    from service.commands.analyze import load_collection

    return load_collection(config, args.collection, progress=progress)[0]


def run(args: argparse.Namespace, config: Any) -> int:
    from tqdm import tqdm

    from embeddings.audit import AuditOptions
    from embeddings.debias import run_debias

    bar = tqdm(total=1000, file=sys.stderr, disable=not sys.stderr.isatty(), bar_format="{l_bar}{bar}| {elapsed}")

    def progress(frac: float, msg: str) -> None:
        bar.set_description(msg[:40])
        bar.n = int(1000 * min(max(frac, 0.0), 1.0))
        bar.refresh()

    analysis: dict[str, Any] = {"n_vaes": args.vaes}
    if args.method is not None:
        analysis["method"] = args.method
    if args.alpha is not None:
        analysis["alpha"] = args.alpha
    try:
        dataset = _load(args, config, progress)
        result = run_debias(
            dataset,
            group_by=[c.strip() for c in args.group_by.split(",") if c.strip()],
            target_fmr=args.target_fmr,
            eval_fraction=args.eval_fraction,
            adapter_params={
                "out_dim": args.out_dim,
                "hidden_dim": args.hidden_dim or None,
                "epochs": args.epochs,
                "margin": args.margin,
            },
            analysis_params=analysis,
            audit_options=AuditOptions(n_bootstrap=args.bootstrap),
            seed=args.seed,
            progress=progress,
        )
        paths = result.write(args.out)
    finally:
        bar.close()
    from service.cli import emit

    rep = result.report
    emit(
        {
            "model_id": rep["model_id"],
            "fnmr": {
                m: {g: r["fnmr"] for g, r in rep["models"][m]["groups"].items()} | {"overall": rep["models"][m]["overall"]["fnmr"]}
                for m in rep["models"]
            },
            "fnmr_max_min_ratio": {m: rep["models"][m]["differentials"]["fnmr"]["max_min_ratio"] for m in rep["models"]},
            "outputs": {k: str(v) for k, v in paths.items()},
        }
    )
    return 0
