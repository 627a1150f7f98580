"""Latent density analysis (DB-VAE, done properly): find under-represented faces without demographic labels.

A small VAE maps embeddings to latent means μ; a density estimator on μ (``histogram`` — the DB-VAE
reference —, ``knn`` or ``gmm``; ``knn`` measures distances between μ through the decoder) gives each
sample a density; sampling weights ∝ 1/(density + α) rebalance the data; clusters of low density name
the under-represented regions.
"""

from __future__ import annotations

from embeddings.latent.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_COMPONENT_SHARE,
    DEFAULT_METHOD,
    DEFAULT_MIN_ESS,
    MAX_COMPONENT_SHARE,
    MAX_VAES,
    STRONGEST,
    AnalysisResult,
    check_component_share,
    check_min_ess,
    ess_floor_weights,
    run_analysis,
)
from embeddings.latent.clusters import Cluster, find_clusters, kmeans_labels
from embeddings.latent.components import ComponentShares, component_shares
from embeddings.latent.density import (
    METHODS,
    DensityEstimator,
    GMMDensity,
    HistogramDensity,
    KDEDensity,
    KNNDensity,
    make_estimator,
)
from embeddings.latent.vae import EmbeddingVAE
from embeddings.latent.weights import (
    clip_weights,
    effective_sample_size,
    inverse_density_weights,
    relative_density,
    weighted_sampler,
)

__all__ = [
    "AnalysisResult",
    "Cluster",
    "ComponentShares",
    "DEFAULT_ALPHA",
    "DEFAULT_COMPONENT_SHARE",
    "DEFAULT_METHOD",
    "DEFAULT_MIN_ESS",
    "MAX_COMPONENT_SHARE",
    "MAX_VAES",
    "STRONGEST",
    "DensityEstimator",
    "EmbeddingVAE",
    "GMMDensity",
    "HistogramDensity",
    "KDEDensity",
    "KNNDensity",
    "METHODS",
    "check_component_share",
    "check_min_ess",
    "clip_weights",
    "component_shares",
    "effective_sample_size",
    "ess_floor_weights",
    "find_clusters",
    "inverse_density_weights",
    "kmeans_labels",
    "make_estimator",
    "relative_density",
    "run_analysis",
    "weighted_sampler",
]
