"""Plain baselines the latent analysis must beat (issue #11): no VAE, same weight rule.

Each returns sampling weights (sum 1) for the rows of ``X`` through the same rule as the analysis —
∝ 1/(relative density + α), clipped at ``max_weight_ratio`` × the median — so a method and a
baseline differ only in how the density is estimated.
"""

from __future__ import annotations

import numpy as np

from embeddings.errors import InvalidInput
from embeddings.latent.density import KNNDensity
from embeddings.latent.weights import clip_weights, inverse_density_weights

__all__ = ["BASELINES", "baseline_weights", "mahalanobis_log_density", "pca_knn_log_density"]

BASELINES = ("uniform", "pca-knn", "mahalanobis")


def pca_knn_log_density(
    X: np.ndarray, *, n_components: int = 8, n_neighbors: int = 15, seed: int = 0
) -> np.ndarray:
    """Log-density of each row from its k-th neighbour (itself left out) after PCA to ``n_components``."""
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float64)
    Z = PCA(n_components=min(n_components, *X.shape), random_state=seed).fit_transform(X).astype(np.float32)
    return KNNDensity(n_neighbors=n_neighbors, alpha=0.0, seed=seed).fit(Z)._train_log_density()


def mahalanobis_log_density(X: np.ndarray) -> np.ndarray:
    """Gaussian log-density (up to a constant) with a Ledoit-Wolf shrunk covariance: −½ Mahalanobis²."""
    from sklearn.covariance import LedoitWolf

    X = np.asarray(X, dtype=np.float64)
    lw = LedoitWolf().fit(X)
    return -0.5 * lw.mahalanobis(X)


def baseline_weights(
    name: str, X: np.ndarray, *, alpha: float = 0.01, max_weight_ratio: float | None = 50.0, seed: int = 0
) -> np.ndarray:
    """Weights of baseline ``name`` (``uniform``, ``pca-knn`` or ``mahalanobis``) for the rows of ``X``."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2:
        raise InvalidInput("X must be a 2-D array with at least 2 rows")
    if name == "uniform":
        return np.full(X.shape[0], 1.0 / X.shape[0])
    if name == "pca-knn":
        log_density = pca_knn_log_density(X, seed=seed)
    elif name == "mahalanobis":
        log_density = mahalanobis_log_density(X)
    else:
        raise InvalidInput(f"unknown baseline {name!r}; choose from {BASELINES}")
    return clip_weights(inverse_density_weights(log_density, alpha=alpha), max_ratio=max_weight_ratio)
