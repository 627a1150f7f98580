"""Under-represented regions: clusters in latent space ranked by density, with members and group make-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embeddings.errors import InvalidInput

__all__ = ["Cluster", "find_clusters", "kmeans_labels"]


@dataclass(frozen=True)
class Cluster:
    """One latent region. ``mass`` is its share of the data, ``weight_mass`` its share of the sampling weights;
    ``mean_density`` is relative (1 = the dataset's average sample); ``mean_weight`` is relative to
    uniform (1 = 1/N). ``group_composition`` gives value shares inside the cluster per group column and
    ``group_enrichment`` those shares divided by the whole dataset's.

    ``direction`` is the cluster's centroid minus the data's centroid in latent coordinates (unit
    length; ``direction_norm`` its length) — the seeds' latent arithmetic: an attribute is a
    direction between centroids. ``group_alignment`` gives, per group column and value, the cosine
    between that direction and the group's own centroid direction: a value near 1 names the
    attribute that sets the cluster apart.
    """

    id: int
    size: int
    mass: float
    weight_mass: float
    mean_density: float
    mean_weight: float
    members: np.ndarray = field(repr=False)
    group_composition: dict[str, dict[str, float]] = field(default_factory=dict)
    group_enrichment: dict[str, dict[str, float]] = field(default_factory=dict)
    direction: np.ndarray | None = field(default=None, repr=False)
    direction_norm: float | None = None
    group_alignment: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self, *, with_members: bool) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "size": self.size,
            "mass": self.mass,
            "weight_mass": self.weight_mass,
            "mean_density": self.mean_density,
            "mean_weight": self.mean_weight,
            "group_composition": self.group_composition,
            "group_enrichment": self.group_enrichment,
        }
        if self.direction is not None:
            d["direction"] = [round(float(v), 6) for v in self.direction]
            d["direction_norm"] = self.direction_norm
            d["group_alignment"] = self.group_alignment
        if with_members:
            d["members"] = [str(m) for m in self.members]
        return d


def kmeans_labels(latent: np.ndarray, *, n_clusters: int, seed: int = 0, max_fit_samples: int = 50_000) -> np.ndarray:
    """k-means cluster labels of the rows (fit on at most ``max_fit_samples`` seeded rows, assign all)."""
    from sklearn.cluster import KMeans

    latent = np.asarray(latent, dtype=np.float32)
    k = max(1, min(int(n_clusters), latent.shape[0]))
    rng = np.random.default_rng(seed)
    rows = latent if latent.shape[0] <= max_fit_samples else latent[rng.choice(latent.shape[0], max_fit_samples, replace=False)]
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(rows)
    return km.predict(latent)


def find_clusters(
    labels: np.ndarray,
    *,
    ids: np.ndarray,
    weights: np.ndarray,
    density: np.ndarray,
    groups: Mapping[str, np.ndarray] | None = None,
    latent: np.ndarray | None = None,
) -> list[Cluster]:
    """Summarise each cluster label; the result is ranked most under-represented first.

    Ranking: lowest mean relative density first, ties by smaller mass. With ``latent`` (N×d) each
    cluster also gets its direction from the data's centroid and its alignment with the groups'.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    weights = np.asarray(weights, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    if ids.shape[0] != n or weights.shape[0] != n or density.shape[0] != n:
        raise InvalidInput("labels, ids, weights and density must have one entry per sample")
    groups = dict(groups or {})
    overall = {col: _shares(v) for col, v in groups.items()}
    w_sum = weights.sum()
    centre = group_dirs = None
    if latent is not None:
        latent = np.asarray(latent, dtype=np.float64)
        if latent.shape[0] != n:
            raise InvalidInput("latent must have one row per sample")
        centre = latent.mean(axis=0)
        group_dirs = {
            col: {str(val): _unit(latent[v == val].mean(axis=0) - centre)[0] for val in np.unique(v)}
            for col, v in groups.items()
        }
    raw = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        comp = {col: _shares(v[idx]) for col, v in groups.items()}
        enrich = {col: {val: share / overall[col][val] for val, share in comp[col].items()} for col in comp}
        raw.append(
            dict(
                size=int(idx.size),
                mass=float(idx.size / n),
                weight_mass=float(weights[idx].sum() / w_sum),
                mean_density=float(density[idx].mean()),
                mean_weight=float(weights[idx].mean() / w_sum * n),
                members=ids[idx],
                group_composition=comp,
                group_enrichment=enrich,
            )
        )
        if centre is not None and group_dirs is not None:
            unit, norm = _unit(latent[idx].mean(axis=0) - centre)
            raw[-1]["direction"], raw[-1]["direction_norm"] = unit, norm
            raw[-1]["group_alignment"] = {
                col: {val: round(float(unit @ g), 4) for val, g in dirs.items()} for col, dirs in group_dirs.items()
            }
    raw.sort(key=lambda c: (c["mean_density"], c["mass"]))
    return [Cluster(id=i, **c) for i, c in enumerate(raw)]


def _unit(v: np.ndarray) -> tuple[np.ndarray, float]:
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else np.zeros_like(v)), norm


def _shares(values: np.ndarray) -> dict[str, float]:
    uniq, counts = np.unique(values, return_counts=True)
    return {str(u): float(c / values.shape[0]) for u, c in zip(uniq, counts, strict=True)}
