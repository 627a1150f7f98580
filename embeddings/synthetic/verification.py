"""Synthetic verification data with planted group behaviour, for audit tests, benchmarks and demos.

Two generators:

* :func:`make_verification_set` — labelled embeddings. Identity centres of group g are
  ``normalize(bias_g * u_g + z)`` with ``u_g`` a group direction and ``z ~ N(0, I/D)``; a larger
  ``bias_g`` packs the group's identities closer together, so its impostor scores (and FMR) rise.
  Images are ``normalize(centre + noise_g * n)``: a larger ``noise_g`` lowers genuine scores (FNMR up).
* :func:`simulate_scores` — pair scores with identity effects and closed-form true error rates,
  for checking interval coverage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from embeddings.audit.pairs import PairSet
from embeddings.errors import InvalidInput

__all__ = ["SimulatedScores", "VerificationSet", "make_verification_set", "simulate_scores"]


@dataclass(frozen=True, eq=False)
class VerificationSet:
    """Labelled embeddings shaped like ``embeddings.dataset.Dataset`` (ids, vectors, identities, groups)."""

    ids: np.ndarray
    vectors: np.ndarray
    identities: np.ndarray
    groups: dict[str, np.ndarray]
    model_id: str | None = "synthetic"
    params: dict[str, object] = field(default_factory=dict)


def _per_group(value: float | Mapping[str, float], names: list[str], what: str) -> dict[str, float]:
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise InvalidInput(f"{what} lacks groups {missing}")
        return {n: float(value[n]) for n in names}
    return {n: float(value) for n in names}


def make_verification_set(
    *,
    identities_per_group: Mapping[str, int],
    images_per_identity: int = 5,
    dim: int = 64,
    center_bias: float | Mapping[str, float] = 0.0,
    image_noise: float | Mapping[str, float] = 0.6,
    column: str = "group",
    seed: int = 0,
) -> VerificationSet:
    """Embeddings of ``sum(identities_per_group)`` identities x ``images_per_identity`` images, L2-normalised."""
    names = list(identities_per_group)
    if not names or images_per_identity < 1 or dim < 2:
        raise InvalidInput("need at least one group, one image per identity and dim >= 2")
    bias = _per_group(center_bias, names, "center_bias")
    noise = _per_group(image_noise, names, "image_noise")
    rng = np.random.default_rng(seed)
    vec_parts, ident_parts, group_parts = [], [], []
    for gi, name in enumerate(names):
        n_id = int(identities_per_group[name])
        u = rng.standard_normal(dim)
        u /= np.linalg.norm(u)
        centres = bias[name] * u + rng.standard_normal((n_id, dim)) / math.sqrt(dim)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        x = np.repeat(centres, images_per_identity, axis=0)
        x += noise[name] * rng.standard_normal(x.shape) / math.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vec_parts.append(x.astype(np.float32))
        ident_parts.append(np.repeat([f"g{gi}_id{k:06d}" for k in range(n_id)], images_per_identity))
        group_parts.append(np.full(n_id * images_per_identity, name))
    identities = np.concatenate(ident_parts)
    img = np.tile(np.arange(images_per_identity), len(identities) // images_per_identity)
    ids = np.char.add(np.char.add(identities.astype(str), "/"), img.astype(str))
    return VerificationSet(
        ids=ids,
        vectors=np.concatenate(vec_parts),
        identities=identities,
        groups={column: np.concatenate(group_parts)},
        params={"center_bias": bias, "image_noise": noise, "dim": dim, "seed": seed},
    )


@dataclass(frozen=True, eq=False)
class SimulatedScores:
    """Scored pairs of one group with known population rates.

    Genuine score of identity i: ``genuine_mean + u_i + e`` (u_i ~ N(0, genuine_identity_sd)),
    impostor score of identities (i, j): ``impostor_mean + v_i + v_j + e``; ``e`` is pair noise.
    """

    pairs: PairSet
    genuine_mean: float
    genuine_sd: float  # total sd of a genuine score
    impostor_mean: float
    impostor_sd: float

    def true_fnmr(self, threshold: float) -> float:
        return float(norm.cdf((threshold - self.genuine_mean) / self.genuine_sd))

    def true_fmr(self, threshold: float) -> float:
        return float(norm.sf((threshold - self.impostor_mean) / self.impostor_sd))


def simulate_scores(
    *,
    n_identities: int,
    genuine_pairs_per_identity: int = 6,
    genuine_mean: float = 0.6,
    genuine_identity_sd: float = 0.08,
    genuine_pair_sd: float = 0.08,
    impostor_mean: float = 0.0,
    impostor_identity_sd: float = 0.05,
    impostor_pair_sd: float = 0.08,
    seed: int = 0,
) -> SimulatedScores:
    """One group; every pair of identities contributes one impostor score (``image_counts`` are 1)."""
    if n_identities < 2:
        raise InvalidInput("n_identities must be >= 2")
    rng = np.random.default_rng(seed)
    k = genuine_pairs_per_identity
    u = rng.normal(0.0, genuine_identity_sd, n_identities)
    gen = genuine_mean + np.repeat(u, k) + rng.normal(0.0, genuine_pair_sd, n_identities * k)
    a, b = np.triu_indices(n_identities, 1)
    v = rng.normal(0.0, impostor_identity_sd, n_identities)
    imp = impostor_mean + v[a] + v[b] + rng.normal(0.0, impostor_pair_sd, a.size)
    n_pairs = float(a.size)
    pairs = PairSet(
        genuine_scores=gen.astype(np.float32),
        genuine_identity=np.repeat(np.arange(n_identities), k),
        impostor_scores=imp.astype(np.float32),
        impostor_a=a.astype(np.int64),
        impostor_b=b.astype(np.int64),
        identity_group=np.zeros(n_identities, np.int64),
        image_counts=np.ones(n_identities, np.int64),
        n_groups=1,
        cell_possible=np.array([[n_pairs]]),
        cell_sampled=np.array([[n_pairs]]),
    )
    return SimulatedScores(
        pairs=pairs,
        genuine_mean=genuine_mean,
        genuine_sd=math.hypot(genuine_identity_sd, genuine_pair_sd),
        impostor_mean=impostor_mean,
        impostor_sd=math.sqrt(2 * impostor_identity_sd**2 + impostor_pair_sd**2),
    )
