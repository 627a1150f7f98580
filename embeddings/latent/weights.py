"""From densities to sampling weights: inverse density with an α knob, clipping, effective sample size, sampler."""

from __future__ import annotations

import numpy as np

from embeddings.errors import InvalidInput

__all__ = [
    "clip_weights",
    "effective_sample_size",
    "inverse_density_weights",
    "relative_density",
    "weighted_sampler",
]


def relative_density(log_density: np.ndarray) -> np.ndarray:
    """Densities rescaled to mean 1 over the samples (so α is in units of "an average sample's density")."""
    log_density = np.asarray(log_density, dtype=np.float64)
    if log_density.ndim != 1 or log_density.size == 0:
        raise InvalidInput("log_density must be a non-empty 1-D array")
    if np.isnan(log_density).any() or np.isposinf(log_density).any():
        raise InvalidInput("log_density contains NaN or +inf")
    top = log_density.max()
    log_mean = top + np.log(np.mean(np.exp(log_density - top)))
    return np.exp(log_density - log_mean)


def inverse_density_weights(log_density: np.ndarray, *, alpha: float) -> np.ndarray:
    """Sampling probabilities ∝ 1/(p + α), p the density relative to its mean over the samples.

    α → 0 samples uniformly over the latent space (every region gets mass by its volume);
    α → ∞ tends to uniform over the data (every sample 1/N). Sums to 1.
    """
    if not alpha >= 0:
        raise InvalidInput(f"alpha must be >= 0, got {alpha}")
    p = relative_density(log_density)
    w = 1.0 / (p + alpha) if alpha > 0 else 1.0 / np.maximum(p, np.finfo(np.float64).tiny)
    return w / w.sum()


def clip_weights(weights: np.ndarray, *, max_ratio: float | None = 50.0) -> np.ndarray:
    """Cap every weight at ``max_ratio`` × the median weight, then renormalise to sum 1.

    Keeps one isolated sample (an outlier, a duplicate-free corner) from taking the sampler over.
    ``None`` only renormalises.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise InvalidInput("weights must be a non-empty 1-D array of finite non-negative numbers with a positive sum")
    if max_ratio is not None:
        if max_ratio < 1:
            raise InvalidInput(f"max_ratio must be >= 1, got {max_ratio}")
        w = np.minimum(w, max_ratio * np.median(w))
    return w / w.sum()


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (Σw)² / Σw²: N for uniform weights, 1 when one sample has all the mass."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / np.sum(w * w))


def weighted_sampler(weights: np.ndarray, *, num_samples: int | None = None, replacement: bool = True, seed: int = 0):
    """A seeded ``torch.utils.data.WeightedRandomSampler`` drawing dataset rows with these weights."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or (w < 0).any() or not np.isfinite(w).all():
        raise InvalidInput("weights must be a non-empty 1-D array of finite non-negative numbers")
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.from_numpy(w), num_samples=int(num_samples or w.size), replacement=replacement, generator=generator
    )
