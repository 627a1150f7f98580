"""Labelled embeddings with a planted minority group, for the latent-analysis tests, benchmark and demos.

The generative story: a face is a point ``f`` in a low-dimensional factor space (``n_factors``);
identities are centres in that space and their images scatter around them (``identity_spread``);
the 512-d embedding is a fixed random orthonormal lift of ``f`` plus isotropic noise, L2-normalised.
The minority differs from the majority in one of three ways (``structure``):

- ``"offset"``: its identity centres sit ``separation`` away from the majority's inside a
  ``subspace_dim``-dimensional subspace of the factors (a separable minority);
- ``"correlation"``: on the first ``subspace_dim`` (>= 2) factors both groups have the same
  per-dimension marginals, but the sign pattern (the parity of the signs) differs, so only
  how the dimensions vary *together* tells them apart;
- ``"none"``: nothing is planted (a null control; the "minority" is a random label).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from embeddings.dataset import Dataset
from embeddings.errors import InvalidInput

__all__ = ["STRUCTURES", "make_group_embeddings"]

STRUCTURES = ("offset", "correlation", "none")


def make_group_embeddings(
    *,
    n: int = 5000,
    dim: int = 512,
    shares: Mapping[str, float] | None = None,
    structure: str = "offset",
    separation: float = 4.0,
    subspace_dim: int = 2,
    n_factors: int = 8,
    images_per_identity: int = 10,
    identity_spread: float = 0.5,
    noise: float = 0.03,
    group_column: str = "group",
    seed: int = 0,
) -> Dataset:
    """``n`` L2-normalised ``dim``-d embeddings with identities and a ``group_column`` label.

    ``shares`` maps group names to shares (default ``{"majority": 0.95, "minority": 0.05}``); the
    first group is the reference, every other group gets the planted ``structure``. Rows are shuffled.
    """
    shares = dict(shares or {"majority": 0.95, "minority": 0.05})
    if structure not in STRUCTURES:
        raise InvalidInput(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if n < len(shares) or dim < n_factors or not 1 <= subspace_dim <= n_factors:
        raise InvalidInput("need n >= number of groups, dim >= n_factors and 1 <= subspace_dim <= n_factors")
    if structure == "correlation" and subspace_dim < 2:
        raise InvalidInput("a correlation-only minority needs subspace_dim >= 2")
    if any(s <= 0 for s in shares.values()):
        raise InvalidInput("group shares must be positive")
    rng = np.random.default_rng(seed)
    names = list(shares)
    total = sum(shares.values())
    counts = np.floor(np.array([shares[g] / total for g in names]) * n).astype(int)
    counts[0] += n - counts.sum()  # the reference group absorbs rounding

    lift, _ = np.linalg.qr(rng.standard_normal((dim, n_factors)))  # orthonormal columns
    factors, identities, groups = [], [], []
    for gi, (name, count) in enumerate(zip(names, counts, strict=True)):
        n_ids = max(1, int(np.ceil(count / images_per_identity)))
        centres = rng.standard_normal((n_ids, n_factors))
        planted = gi > 0
        if structure == "offset":
            # Reference at -separation/2 along u, each planted group at +separation/2 along its own unit
            # vector in the subspace: every group's centres have the same expected norm, so the final
            # L2 normalisation does not shrink one group more than another (which would fake a density gap).
            centres += 0.5 * separation * _direction(gi, subspace_dim, n_factors)
        owner = np.arange(count) % n_ids
        f = centres[owner] + identity_spread * rng.standard_normal((count, n_factors))
        if structure == "correlation":
            # Same |value| distribution per dimension for every group, only the sign parity differs:
            # each marginal is symmetric and every pair of dimensions is uncorrelated in both groups.
            k = subspace_dim
            mags = separation / 2 + np.abs(rng.standard_normal((count, k))) * 0.5
            signs = rng.choice([-1.0, 1.0], size=(count, k))
            parity = np.prod(signs[:, : k - 1], axis=1)
            signs[:, k - 1] = parity if not planted else -parity
            f[:, :k] = mags * signs
        factors.append(f)
        identities.append(np.array([f"{name}-{i:05d}" for i in owner]))
        groups.append(np.full(count, name))
    f = np.concatenate(factors)
    vectors = f @ lift.T + noise * rng.standard_normal((n, dim))
    order = rng.permutation(n)
    return Dataset(
        ids=np.array([f"s{i:07d}" for i in range(n)]),
        vectors=vectors[order].astype(np.float32),
        identities=np.concatenate(identities)[order],
        groups={group_column: np.concatenate(groups)[order]},
        model_id="synthetic",
    )


def _direction(group_index: int, subspace_dim: int, n_factors: int) -> np.ndarray:
    """-u for the reference group, +u_g for planted group g (u_1 = u; later groups rotate within the subspace)."""
    u = np.zeros(n_factors)
    if group_index == 0:
        u[:subspace_dim] = -1.0 / np.sqrt(subspace_dim)
        return u
    u[:subspace_dim] = 1.0 / np.sqrt(subspace_dim)
    if group_index > 1:
        u[(group_index - 2) % subspace_dim] *= -1.0
        u[:subspace_dim] = np.roll(u[:subspace_dim], group_index - 1)
    return u
