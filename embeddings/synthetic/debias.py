"""Planted data for the debias loop: a minority whose identities differ along directions the majority barely uses.

The embedding space is split (before a random rotation) into orthogonal parts:

- ``A`` (``signal_dim`` dims): the majority's identity directions. For a minority face, variation
  here is image-to-image nuisance (``cross_sd``): it moves along features fitted to the majority;
- ``B`` (``signal_dim`` dims, one block per planted group): the minority's identity directions. A
  majority face only varies here image to image (``majority_b_sd``): for the majority, ``B`` is noise;
- one column per planted group: the groups sit ``group_offset`` apart (at equal norms);
- ``C`` (the rest): nuisance every face varies in, which any trained head should drop.

A head trained mostly on majority faces learns to keep ``A`` and drop ``B`` and ``C``; minority faces
are then compared by their nuisance in ``A``. Serving both groups needs ``B`` kept for the minority
only, which a two-layer head can learn from the group offset — if it sees enough minority faces.
The two groups are mirror images (same spreads, same norms), so the minority is a region of the same
extent holding fewer faces: of low density, which the latent weights find. ``structure="none"`` is
the null control: every group is drawn like the majority, nothing sets them apart.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from embeddings.dataset import Dataset
from embeddings.errors import InvalidInput

__all__ = ["DEBIAS_STRUCTURES", "make_debias_embeddings"]

DEBIAS_STRUCTURES = ("neglected", "none")


def make_debias_embeddings(
    *,
    n_identities: int = 3000,
    images_per_identity: int = 8,
    dim: int = 64,
    shares: Mapping[str, float] | None = None,
    structure: str = "neglected",
    signal_dim: int = 16,
    within_sd: float = 0.45,
    cross_sd: float = 0.6,
    majority_b_sd: float = 0.6,
    nuisance_sd: float = 0.1,
    group_offset: float = 5.0,
    group_column: str = "group",
    seed: int = 0,
) -> Dataset:
    """``n_identities`` × ``images_per_identity`` L2-normalised ``dim``-d embeddings with identities and groups.

    Per image, with unit-variance identity centres: ``within_sd`` is the identity's own spread in its
    signal part, ``cross_sd`` a minority face's nuisance in ``A``, ``majority_b_sd`` a majority face's
    nuisance in ``B`` and ``nuisance_sd`` the per-dimension spread in ``C``. ``shares`` maps group
    names to shares of the identities (default ``{"majority": 0.95, "minority": 0.05}``); the first group
    is the majority, every other one gets the minority's structure (each its own ``B`` when there is room).
    """
    shares = dict(shares or {"majority": 0.95, "minority": 0.05})
    if structure not in DEBIAS_STRUCTURES:
        raise InvalidInput(f"structure must be one of {DEBIAS_STRUCTURES}, got {structure!r}")
    if any(s <= 0 for s in shares.values()) or len(shares) < 1:
        raise InvalidInput("group shares must be positive")
    n_parts = len(shares) + 2  # A, one B per planted group, the group offsets and C
    if signal_dim < 1 or dim < n_parts * signal_dim or images_per_identity < 1:
        raise InvalidInput(f"need signal_dim >= 1, dim >= {n_parts} * signal_dim and images_per_identity >= 1")
    if n_identities < len(shares):
        raise InvalidInput("need at least one identity per group")
    rng = np.random.default_rng(seed)
    names = list(shares)
    total = sum(shares.values())
    counts = np.maximum(1, np.floor(np.array([shares[g] / total for g in names]) * n_identities).astype(int))
    counts[0] += n_identities - counts.sum()
    k = signal_dim
    b_end = len(names) * k if structure == "neglected" else k  # A, then one B per planted group
    offsets = b_end  # then one column per planted group for its offset, then C
    c_start = offsets + len(names) - 1
    parts, identities, groups = [], [], []
    for gi, (name, n_ids) in enumerate(zip(names, counts, strict=True)):
        m = n_ids * images_per_identity
        x = np.zeros((m, dim))
        owner = np.repeat(np.arange(n_ids), images_per_identity)
        centres = rng.standard_normal((n_ids, k))
        own = centres[owner] + within_sd * rng.standard_normal((m, k))
        if gi == 0 or structure == "none":
            x[:, :k] = own
            x[:, k:b_end] = majority_b_sd * rng.standard_normal((m, b_end - k))
        else:
            b = slice(gi * k, (gi + 1) * k)
            x[:, :k] = cross_sd * rng.standard_normal((m, k))
            x[:, b] = own
        if structure != "none" and c_start > offsets:
            # The groups sit apart (a region of the planted group's own, of low density) at equal norms,
            # so the final L2 normalisation shrinks no group's spread more than another's.
            if gi == 0:
                x[:, offsets:c_start] = -0.5 * group_offset / np.sqrt(c_start - offsets)
            else:
                x[:, offsets + gi - 1] = 0.5 * group_offset
        x[:, c_start:] = nuisance_sd * rng.standard_normal((m, dim - c_start))
        parts.append(x)
        identities.append(np.array([f"{name}-{i:05d}" for i in owner]))
        groups.append(np.full(m, name))
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    vectors = np.concatenate(parts) @ rotation.T
    order = rng.permutation(len(vectors))
    return Dataset(
        ids=np.array([f"d{i:07d}" for i in range(len(vectors))]),
        vectors=vectors[order].astype(np.float32),
        identities=np.concatenate(identities)[order],
        groups={group_column: np.concatenate(groups)[order]},
        model_id="synthetic",
    )
