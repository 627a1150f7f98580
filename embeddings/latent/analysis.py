"""The whole latent analysis as one job: VAE → μ → density → weights → clusters → three artefacts."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.dataset import Dataset
from embeddings.errors import Cancelled, InvalidInput
from embeddings.latent.clusters import Cluster, find_clusters, kmeans_labels
from embeddings.latent.components import component_shares
from embeddings.latent.density import DensityEstimator, GMMDensity, KNNDensity, make_estimator
from embeddings.latent.vae import EmbeddingVAE, mean_kl_per_dim
from embeddings.latent.weights import (
    clip_weights,
    effective_sample_size,
    inverse_density_weights,
    relative_density,
)

__all__ = [
    "AnalysisResult",
    "DEFAULT_ALPHA",
    "DEFAULT_COMPONENT_SHARE",
    "DEFAULT_METHOD",
    "DEFAULT_MIN_ESS",
    "MAX_COMPONENT_SHARE",
    "MAX_VAES",
    "STRONGEST",
    "check_component_share",
    "check_min_ess",
    "ess_floor_weights",
    "run_analysis",
]

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]

DEFAULT_METHOD = "knn"
# α per method: relative to the mean density for knn/gmm/kde; the DB-VAE lab's smoothing for histogram.
# knn starts from α = 0 and lets the ESS floor (DEFAULT_MIN_ESS) choose how far to smooth on each
# dataset: a fixed α = 0.01 gave a 3% minority 4.2x its share on one planted suite entry and 7x on
# another, with ESS 0.3 N on both (issue #11).
DEFAULT_ALPHA: dict[str, float] = {"knn": 0.0, "gmm": 0.01, "kde": 0.01, "histogram": 0.001}
# λ per method: each sample's density is multiplied by its mode share to the power λ before the weight
# rule (embeddings.latent.components). Measured for knn only (issue #11: of the scenario suite's 24
# separable 1-5% rows × 2 seeds, λ = 0 met both criteria on 11, λ = 2 on 16, worst mass ratio 0.86 ->
# 1.99; λ = 3 gained no row); the others keep their plain densities.
DEFAULT_COMPONENT_SHARE: dict[str, float] = {"knn": 2.0, "gmm": 0.0, "kde": 0.0, "histogram": 0.0}
MAX_COMPONENT_SHARE = 10.0
# The weights' effective sample size is kept at or above this share of N by raising α (not for histogram).
DEFAULT_MIN_ESS = 0.2
# Each member is a full VAE fit; past a handful the average stops changing but the cost does not.
MAX_VAES = 10
# The strongest rebalancing (`--alpha 0 --max-weight-ratio 0 --vaes 3 --min-ess 0.05 --component-share 0`):
# α = 0, no cap, three VAEs, the ESS floor lowered to 5% of N. No component-share factor: at α = 0 with
# no cap it over-weights a far minority (95/5 balance up to 21 with λ = 1 against 11 without it, worst
# case over the scenario suite's 95/5 rows).
STRONGEST: dict[str, Any] = {"alpha": 0.0, "max_weight_ratio": None, "n_vaes": 3, "min_ess": 0.05, "component_share": 0.0}


@dataclass
class AnalysisResult:
    """Everything one analysis produced. ``weights`` sum to 1; ``density`` is relative (mean 1).

    ``latent`` holds the active posterior means (the clusters live there); ``coordinates`` the rows
    ``estimator`` was fitted on — the same μ for ``geometry="latent"``, their decoded projections for
    ``"decoded"`` — so new points must be mapped the same way before ``estimator.score_samples``.
    ``component_log_share`` holds log s, each fitted point's mode share (zeros when the mixture has one
    component; ``None`` when ``component_share`` is 0), of the first VAE like ``estimator``.
    """

    method: str
    params: dict[str, Any]
    ids: np.ndarray
    latent: np.ndarray = field(repr=False)
    density: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    clusters: list[Cluster] = field(repr=False)
    groups: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    estimator: DensityEstimator | None = field(default=None, repr=False)
    vae: EmbeddingVAE | None = field(default=None, repr=False)
    coordinates: np.ndarray | None = field(default=None, repr=False)
    component_log_share: np.ndarray | None = field(default=None, repr=False)

    @property
    def effective_sample_size(self) -> float:
        return effective_sample_size(self.weights)

    def group_weight_mass(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per group column and value: its share of the data and its share of the weights."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for col, values in self.groups.items():
            out[col] = {}
            for value in np.unique(values):
                mask = values == value
                out[col][str(value)] = {
                    "data_share": float(mask.mean()),
                    "weight_mass": float(self.weights[mask].sum()),
                }
        return out

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` document (clusters without their member lists)."""
        return {
            "method": self.method,
            "params": self.params,
            "n": int(self.ids.shape[0]),
            "effective_sample_size": self.effective_sample_size,
            "clusters": [c.to_dict(with_members=False) for c in self.clusters],
            "group_weight_mass": self.group_weight_mass(),
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``weights.csv`` (``id,weight``), ``clusters.json`` and ``summary.json``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"weights": out / "weights.csv", "clusters": out / "clusters.json", "summary": out / "summary.json"}
        tmp = paths["weights"].with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "weight"])
            writer.writerows((i, repr(float(w))) for i, w in zip(self.ids.tolist(), self.weights, strict=True))
        tmp.replace(paths["weights"])
        _write_json(paths["clusters"], [c.to_dict(with_members=True) for c in self.clusters])
        _write_json(paths["summary"], self.summary())
        return paths


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    tmp.replace(path)


def run_analysis(
    dataset: Dataset,
    *,
    method: str = DEFAULT_METHOD,
    alpha: float | None = None,
    latent_dim: int = 32,
    n_clusters: int = 8,
    max_weight_ratio: float | None = 50.0,
    min_ess: float | None = DEFAULT_MIN_ESS,
    component_share: float | None = None,
    identity_aware: bool = False,
    active_kl: float = 0.1,
    n_vaes: int = 1,
    geometry: str | None = None,
    vae_params: Mapping[str, Any] | None = None,
    estimator_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> AnalysisResult:
    """Fit a VAE on the embeddings, estimate the density of the posterior means and derive weights and clusters.

    Only *active* latent dimensions (mean KL > ``active_kl`` nats) enter the density: collapsed
    dimensions carry no information and would only add noise. ``alpha=None`` takes the method's
    default (:data:`DEFAULT_ALPHA`). Weights are clipped at ``max_weight_ratio`` × the median.

    ``geometry`` says how distances between latent points are measured. ``"latent"``: plain
    Euclidean distances between the μ. ``"decoded"`` (the default for ``knn``, the only method it
    applies to): distances between the decoder's images of the μ — the metric the decoder pulls
    back onto the latent space (Arvanitidis et al., ICLR 2018) — with the kNN exponent set to the
    number of active latent dimensions, so the density is per unit of *data-space* volume on the
    VAE's learned surface. It matters at small α: a VAE gives a rare group less latent volume than
    the group's spread in the data (the KL term pulls the latent distribution towards the prior),
    so plain latent densities under-weight it — about 3× at a 95/5 split at α = 0, against
    1.0–1.5× with decoded distances (measurements in ``tests/test_latent_analysis.py``).

    ``estimator_params`` go to the density estimator; ``{"n_neighbors": "auto"}`` has the kNN density
    choose its neighbour count by held-out likelihood (:class:`~embeddings.latent.density.KNNDensity`).
    ``params["knn_k"]`` records the counts the kNN density used, chosen or given.

    ``n_vaes`` > 1 fits that many VAEs (seeds ``seed``, ``seed + 1000``, ``seed + 2000``, …) and
    averages the members' log-densities (for ``histogram``: their weights), which cancels most of
    the seed-to-seed variance of how much volume each VAE gives each region. ``latent``, ``vae``,
    ``estimator`` and the clusters are those of the first member (seed ``seed``). The strongest
    setting — α = 0, ``max_weight_ratio=None`` and ``n_vaes=3`` — brings a planted 95/5 split to
    a largest ÷ smallest group share ≤ 1.5 (measurements in ``tests/test_latent_analysis.py``).
    ``min_ess`` (a share of N; ``None`` or 0 turns it off) is a floor on the weights' effective
    sample size: when 1/(density + α), clipped, falls below it, α is raised to the smallest value that
    meets it (``params["alpha_effective"]``). It is the temperature chosen from the data: the same
    request smooths a dataset with heavy density tails more than a smooth one, and the weights can
    never collapse onto a few samples (α = 0 with no cap gave ESS ≈ 0.01 N on planted suites). The
    histogram reference is left as DB-VAE defines it.

    ``component_share`` (λ; ``None`` takes :data:`DEFAULT_COMPONENT_SHARE`, 2 for ``knn``) multiplies
    each sample's density by s^λ before the weight rule, s the share of the data in the sample's
    mode: a diagonal Gaussian mixture over the active μ, sized by BIC
    (:func:`~embeddings.latent.components.component_shares`). In many dimensions a sample's density
    varies more with its distance from its mode's centre than between a large mode and a small one,
    so 1/density alone leaves a 5% minority near its share; with λ = 2 it gets 7–8× (issue #11). One
    mode found (s = 1) changes nothing. ``params["components"]`` records the mixture sizes;
    ``density`` stays the estimator's plain density.

    ``identity_aware=True`` (needs ``dataset.identities``) estimates the density over identities —
    each identity one point, the centroid of its faces' coordinates — and gives each identity one
    weight, shared equally by its faces: in face data an identity with many photos otherwise looks
    like a dense region and is down-weighted for being well photographed, not for being common.
    ``min_ess`` then counts identities. ``estimator`` is fitted on the centroids; ``density`` is
    each face's identity's.
    Raises :class:`~embeddings.errors.Cancelled` when ``should_stop()`` turns true.
    """
    report = progress or (lambda _f, _m: None)
    stop = should_stop or (lambda: False)
    if method not in DEFAULT_ALPHA:
        raise InvalidInput(f"unknown method {method!r}; choose from {sorted(DEFAULT_ALPHA)}")
    alpha = DEFAULT_ALPHA[method] if alpha is None else float(alpha)
    if len(dataset) < 50:
        raise InvalidInput(f"the analysis needs at least 50 samples, got {len(dataset)}")
    owner = n_ids = counts = None
    if identity_aware:
        if dataset.identities is None:
            raise InvalidInput("identity-aware weighting needs identities (an identity column)")
        _, owner, counts = np.unique(dataset.identities, return_inverse=True, return_counts=True)
        n_ids = counts.size
        if n_ids < 20:
            raise InvalidInput(f"identity-aware weighting needs at least 20 identities, got {n_ids}")
    check_min_ess(min_ess)
    check_component_share(component_share, method)
    component_share = DEFAULT_COMPONENT_SHARE[method] if component_share is None else float(component_share)
    if not 1 <= n_vaes <= MAX_VAES:
        raise InvalidInput(f"n_vaes must be in 1..{MAX_VAES}, got {n_vaes}")
    if geometry is None:
        geometry = "decoded" if method == "knn" else "latent"
    if geometry not in ("latent", "decoded"):
        raise InvalidInput(f"geometry must be 'latent' or 'decoded', got {geometry!r}")
    if geometry == "decoded" and method != "knn":
        raise InvalidInput(f"geometry 'decoded' applies to the knn density only, not to {method!r}")
    params = dict(estimator_params or {})
    if method in ("gmm", "knn"):
        params.setdefault("seed", seed)
    members: list[tuple[EmbeddingVAE, np.ndarray, DensityEstimator, np.ndarray]] = []
    log_densities: list[np.ndarray] = []
    log_shares: list[np.ndarray] = []
    n_components: list[int] = []
    share = 0.85 / n_vaes  # progress: each member's VAE, then its density
    for m in range(n_vaes):
        start = m * share
        report(start, "training the VAE" if n_vaes == 1 else f"training VAE {m + 1} of {n_vaes}")
        vae = EmbeddingVAE(latent_dim=latent_dim, seed=seed + 1000 * m, **dict(vae_params or {}))
        vae.fit(dataset.vectors, progress=lambda f, msg, s0=start: report(s0 + 0.7 * share * f, msg), should_stop=stop)
        mu, active = _active_latent(vae, dataset.vectors, active_kl=active_kl)
        latent = np.ascontiguousarray(mu[:, active])
        _check_stop(stop)
        report(start + 0.7 * share, f"estimating {method} density on {active.size} active latent dimensions")
        if geometry == "decoded":
            coords = _decoded_coordinates(vae, mu, n_active=active.size, seed=seed)
            extra = {"dim": int(active.size)}
        else:
            coords, extra = latent, {}
        points = coords if owner is None else _centroids(coords, owner, n_ids)
        estimator = make_estimator(method, alpha=alpha, **{**extra, **params}).fit(points)
        members.append((vae, latent, estimator, coords))
        log_densities.append(estimator._train_log_density())
        if component_share:
            shares = component_shares(
                latent if owner is None else _centroids(latent, owner, n_ids), seed=seed + 1000 * m
            )
            log_shares.append(shares.log_share)
            n_components.append(shares.n_components)
        _check_stop(stop)
    vae, latent, estimator, coords = members[0]
    report(0.85, "computing weights")
    log_density = np.mean(log_densities, axis=0)
    weighted_log_density = log_density + component_share * np.mean(log_shares, axis=0) if log_shares else log_density
    alpha_effective = alpha
    if method == "histogram":  # its weights are not a function of one log-density: mix the members' samplers
        raw = np.mean([est.sample_weights() for _, _, est, _ in members], axis=0)
        weights = clip_weights(raw, max_ratio=max_weight_ratio)
    else:
        weights, alpha_effective = ess_floor_weights(
            weighted_log_density, alpha=alpha, max_weight_ratio=max_weight_ratio, min_ess=min_ess
        )
    density = relative_density(log_density)
    if owner is not None:  # one weight per identity, shared by its faces
        weights = weights[owner] / counts[owner]
        weights /= weights.sum()
        density = density[owner]
    _check_stop(stop)

    report(0.9, "clustering the latent space")
    if isinstance(estimator, GMMDensity) and estimator.n_components_ > 1:
        labels = estimator.predict(latent)
    else:
        labels = kmeans_labels(latent, n_clusters=n_clusters, seed=seed)
    clusters = find_clusters(
        labels, ids=dataset.ids, weights=weights, density=density, groups=dataset.groups, latent=latent
    )
    report(1.0, "done")
    return AnalysisResult(
        method=method,
        params={
            "alpha": alpha,
            "alpha_effective": alpha_effective,
            "min_ess": min_ess,
            "component_share": component_share,
            **({"components": n_components[0]} if n_components else {}),
            **({"components_members": n_components} if len(n_components) > 1 else {}),
            "identity_aware": identity_aware,
            **({} if n_ids is None else {"identities": int(n_ids)}),
            "latent_dim": latent_dim,
            "active_dims": int(latent.shape[1]),
            "n_vaes": n_vaes,
            "geometry": geometry,
            "n_clusters": len(clusters),
            "max_weight_ratio": max_weight_ratio,
            "seed": seed,
            "vae_epochs": vae.n_epochs_,
            "model_id": dataset.model_id,
            "estimator": {k: (list(v) if isinstance(v, tuple) else v) for k, v in estimator.get_params().items()},
            **_knn_scales(members),
        },
        ids=dataset.ids,
        latent=latent,
        density=density,
        weights=weights,
        clusters=clusters,
        groups=dict(dataset.groups),
        estimator=estimator,
        vae=vae,
        coordinates=coords,
        component_log_share=log_shares[0] if log_shares else None,
    )


def _knn_scales(members: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The neighbour counts the kNN density used (chosen from the data with ``n_neighbors="auto"``).

    ``knn_k``: the first member's, like ``estimator``; ``knn_k_members``: each member's, when several."""
    ks = [[int(k) for k in est.k_] for _, _, est, _ in members if isinstance(est, KNNDensity)]
    if not ks:
        return {}
    return {"knn_k": ks[0], **({"knn_k_members": ks} if len(ks) > 1 else {})}


def check_min_ess(min_ess: float | None, *, name: str = "min_ess") -> None:
    """Refuse an ESS floor outside [0, 1) (``None`` or 0: no floor). ``name`` is the option as the
    caller's users spell it (``--min-ess`` on the command line), so front ends can check it before a
    long job and say the same thing."""
    if min_ess is not None and not 0 <= min_ess < 1:
        raise InvalidInput(f"{name} must be a share of N in [0, 1) (0 = no floor), got {min_ess:g}")


def check_component_share(component_share: float | None, method: str, *, name: str = "component_share") -> None:
    """Refuse a component-share power outside [0, :data:`MAX_COMPONENT_SHARE`], or a non-zero one for
    ``histogram`` (DB-VAE's rule is kept as defined); ``None`` is the method's default. ``name`` as in
    :func:`check_min_ess`."""
    if component_share is None:
        return
    if not 0 <= component_share <= MAX_COMPONENT_SHARE:
        raise InvalidInput(f"{name} must be in [0, {MAX_COMPONENT_SHARE:g}] (0 = off), got {component_share:g}")
    if component_share and method == "histogram":
        raise InvalidInput(f"{name} does not apply to the histogram method (DB-VAE's rule is kept as defined); leave it out or 0")


def ess_floor_weights(
    log_density: np.ndarray, *, alpha: float, max_weight_ratio: float | None, min_ess: float | None
) -> tuple[np.ndarray, float]:
    """Weights ∝ 1/(p + α) clipped at ``max_weight_ratio`` × the median, with α raised to the smallest
    value (to 0.1% by bisection on log α) whose weights keep an ESS ≥ ``min_ess`` × N; returns (weights, α used)."""

    def weights(a: float) -> np.ndarray:
        return clip_weights(inverse_density_weights(log_density, alpha=a), max_ratio=max_weight_ratio)

    w = weights(alpha)
    target = (min_ess or 0.0) * w.size
    if effective_sample_size(w) >= target:
        return w, alpha
    # ESS grows with α (to N as α → ∞); bracket the floor, then bisect on log α.
    lo, hi = max(alpha, 1e-9), max(alpha, 1e-4)
    while effective_sample_size(weights(hi)) < target:
        lo, hi = hi, hi * 4.0
        if hi > 1e9:  # only a degenerate density gets here; uniform weights meet any floor below 1
            return np.full(w.size, 1.0 / w.size), math.inf
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        if effective_sample_size(weights(mid)) >= target:
            hi = mid
        else:
            lo = mid
    return weights(hi), hi


def _centroids(coords: np.ndarray, owner: np.ndarray, n_groups: int) -> np.ndarray:
    """The mean row of each group (``owner`` holds each row's group index 0..n_groups-1)."""
    sums = np.zeros((n_groups, coords.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, coords)
    return (sums / np.bincount(owner, minlength=n_groups)[:, None]).astype(np.float32)


def _active_latent(vae: EmbeddingVAE, X: np.ndarray, *, active_kl: float) -> tuple[np.ndarray, np.ndarray]:
    """All posterior means μ, and the indices of the *active* dimensions (mean KL > ``active_kl``;
    the most informative one if none is)."""
    mu, log_var = vae.posterior(X)
    kl = mean_kl_per_dim(mu, log_var)
    active = np.flatnonzero(kl > active_kl)
    if active.size == 0:
        active = np.array([int(np.argmax(kl))])
    return mu, active


def _decoded_coordinates(
    vae: EmbeddingVAE, mu: np.ndarray, *, n_active: int, seed: int, batch_size: int = 65_536
) -> np.ndarray:
    """The decoder's images of ``mu`` on their leading principal directions (at least 32, 4 per active
    dimension, at most all features): the decoded surface has ``n_active`` dimensions, so these keep
    its distances (and its curvature) while the neighbour search runs in far fewer columns. The
    directions come from a seeded sample of at most 20 000 rows; the rest are decoded and projected
    in batches, so memory stays at N × (columns kept), not N × D."""
    sample = np.sort(np.random.default_rng(seed).permutation(mu.shape[0])[:20_000])
    decoded = vae.decode(mu[sample]).astype(np.float64)
    centre = decoded.mean(axis=0)
    _, _, vt = np.linalg.svd(decoded - centre, full_matrices=False)
    basis = vt[: min(vt.shape[0], max(32, 4 * n_active))].T
    out = np.empty((mu.shape[0], basis.shape[1]), dtype=np.float32)
    for start in range(0, mu.shape[0], batch_size):
        part = vae.decode(mu[start : start + batch_size]).astype(np.float64)
        out[start : start + batch_size] = (part - centre) @ basis
    return out


def _check_stop(stop: ShouldStop) -> None:
    if stop():
        raise Cancelled("the analysis was cancelled")
