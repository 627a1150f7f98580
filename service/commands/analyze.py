"""``latentface analyze``: latent density analysis of a dataset → weights.csv, clusters.json, summary.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from embeddings.errors import InvalidInput

__all__ = ["load_collection", "register", "run"]


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "analyze",
        parents=[common],
        help="find under-represented faces (VAE latent density) and write rebalancing sample weights",
        description="Analyse an image folder (--images), an embeddings file (--embeddings + --labels) or, "
        "when neither is given, every enrolled face of --collection (ids = face ids, identities = subject "
        "ids, groups = the subjects' group attributes). Writes weights.csv, clusters.json and summary.json.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, metavar="ROOT", help="image folder ROOT/<identity>/<image>")
    source.add_argument("--embeddings", type=Path, metavar="FILE.npy", help="float32 N×D embeddings (needs --labels)")
    parser.add_argument("--labels", type=Path, metavar="FILE.csv", help="CSV with an id column (+ identity, groups)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--method", choices=("knn", "gmm", "histogram", "kde"), default=None, help="density estimator")
    parser.add_argument("--alpha", type=float, default=None, help="weight smoothing α (default: the method's)")
    parser.add_argument(
        "--max-weight-ratio",
        type=float,
        default=50.0,
        metavar="R",
        help="cap a weight at R × the median weight, 0 for no cap (default %(default)s)",
    )
    parser.add_argument(
        "--vaes",
        type=int,
        default=1,
        metavar="N",
        help="average the densities of N VAEs with different seeds (default %(default)s). "
        "Strongest rebalancing: --alpha 0 --max-weight-ratio 0 --vaes 3 --min-ess 0.05 --component-share 0",
    )
    parser.add_argument(
        "--min-ess",
        type=float,
        default=None,
        metavar="F",
        help="keep the weights' effective sample size >= F x N by raising alpha as needed, 0 to turn off "
        "(default: 0.2)",
    )
    parser.add_argument(
        "--component-share",
        type=float,
        default=None,
        metavar="L",
        help="multiply each sample's density by its mode share (the share of the data in its Gaussian-mixture "
        "mode) to the power L before weighting; 0 turns it off (default 2 for knn, 0 otherwise)",
    )
    parser.add_argument(
        "--identity-aware",
        action="store_true",
        help="density over identities, one weight per identity shared by its faces (needs identities)",
    )
    parser.add_argument("--latent-dim", type=int, default=32, help="VAE latent size (default %(default)s)")
    parser.add_argument("--clusters", type=int, default=8, help="number of latent clusters (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run)


def load_collection(config: Any, collection: str, *, progress: Any = None) -> tuple[Any, float]:
    """The collection's faces as a Dataset, and its deployed threshold; the gallery is open only meanwhile.

    No maintenance thread and no snapshot at close: reading a collection leaves the data dir as it was.
    """
    from service.runtime import open_engine

    engine = open_engine(config, background=False)
    try:
        dataset = engine.collection_dataset(collection, progress=progress)
        return dataset, engine.get_collection(collection).threshold
    finally:
        engine.close(snapshot=False)


def run(args: argparse.Namespace, config: Any) -> int:
    from tqdm import tqdm

    from embeddings.dataset import embed_image_folder, load_embeddings
    from embeddings.latent import (
        DEFAULT_METHOD,
        DEFAULT_MIN_ESS,
        MAX_VAES,
        check_component_share,
        check_min_ess,
        run_analysis,
    )

    if not (args.max_weight_ratio == 0 or args.max_weight_ratio >= 1):
        raise InvalidInput("--max-weight-ratio must be 0 (no cap) or >= 1")
    check_min_ess(args.min_ess, name="--min-ess")
    check_component_share(args.component_share, args.method, name="--component-share")
    if not 1 <= args.vaes <= MAX_VAES:
        raise InvalidInput(f"--vaes must be in 1..{MAX_VAES}")
    bar = tqdm(total=1000, file=sys.stderr, disable=not sys.stderr.isatty(), unit="‰")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_description(message[:60], refresh=True)

    try:
        if args.embeddings is not None:
            if args.labels is None:
                raise InvalidInput("--embeddings needs --labels FILE.csv")
            dataset = load_embeddings(args.embeddings, args.labels)
        elif args.images is not None:
            from service.runtime import build_pipeline

            pipeline = build_pipeline(config)
            cache_dir = Path(config.data_dir) / "cache" / "embeddings"
            dataset = embed_image_folder(args.images, pipeline, cache_dir=cache_dir, labels_csv=args.labels, progress=progress)
        else:
            dataset, _threshold = load_collection(config, args.collection, progress=progress)
        result = run_analysis(
            dataset,
            method=args.method or DEFAULT_METHOD,
            alpha=args.alpha,
            max_weight_ratio=args.max_weight_ratio or None,
            n_vaes=args.vaes,
            min_ess=DEFAULT_MIN_ESS if args.min_ess is None else (args.min_ess or None),
            component_share=args.component_share,
            identity_aware=args.identity_aware,
            latent_dim=args.latent_dim,
            n_clusters=args.clusters,
            seed=args.seed,
            progress=progress,
        )
        paths = result.write(args.out)
    finally:
        bar.close()
    from service.cli import emit

    emit(
        {
            "method": result.method,
            "n": len(dataset),
            "skipped": dataset.skipped,
            "effective_sample_size": round(result.effective_sample_size, 1),
            "alpha_effective": result.params["alpha_effective"],
            "outputs": {k: str(v) for k, v in paths.items()},
        }
    )
    return 0
