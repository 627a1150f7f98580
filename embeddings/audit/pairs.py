"""Genuine and impostor pairs of an evaluation set, scored by cosine, sampled reproducibly.

Genuine pairs: every pair of images of one identity (sampled down uniformly past
``max_genuine_pairs``). Impostor pairs are organised in cells ``(g, h)``, ``g <= h``, of the
groups of the two identities: a cell is enumerated exhaustively when it has at most
``impostor_budget`` possible pairs and sampled otherwise. Sampling draws random blocks of
``block`` images on each side and keeps every cross-identity pair of the block product: each
kept pair is uniform over the cell's image pairs (so rates are unbiased), and the block
product lets one batched matmul score 4096 pairs from 128 gathered rows instead of 4096.
The identity bootstrap, not the pair count, carries the dependence between pairs sharing
an image or an identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embeddings.errors import Cancelled, InvalidInput

__all__ = ["PairSet", "build_pairs"]


@dataclass(frozen=True)
class PairSet:
    """Scored pairs plus the per-identity facts the bootstrap needs.

    Identities are integers ``0..n_identities-1``; ``identity_group[i]`` is identity i's group.
    ``cell_possible[g, h]`` and ``cell_sampled[g, h]`` (symmetric) count the impostor pairs
    that exist and that were scored between groups g and h.
    """

    genuine_scores: np.ndarray  # float32 (Ng,)
    genuine_identity: np.ndarray  # int64 (Ng,)
    impostor_scores: np.ndarray  # float32 (Ni,)
    impostor_a: np.ndarray  # int64 (Ni,) identity of one side
    impostor_b: np.ndarray  # int64 (Ni,)
    identity_group: np.ndarray  # int64 (n_identities,)
    image_counts: np.ndarray  # int64 (n_identities,)
    n_groups: int
    cell_possible: np.ndarray  # float64 (G, G)
    cell_sampled: np.ndarray  # float64 (G, G)
    genuine_sampled_fraction: float = 1.0

    @property
    def impostor_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """The (lower, higher) group index of each impostor pair."""
        ga = self.identity_group[self.impostor_a]
        gb = self.identity_group[self.impostor_b]
        return np.minimum(ga, gb), np.maximum(ga, gb)

    def impostor_weights(self) -> np.ndarray:
        """Weight of each scored impostor pair so the sample stands for all pairs of all cells."""
        lo, hi = self.impostor_cells
        ratio = np.divide(
            self.cell_possible, self.cell_sampled, out=np.zeros_like(self.cell_possible), where=self.cell_sampled > 0
        )
        return ratio[lo, hi]


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("audit cancelled")


def _genuine(
    vectors: np.ndarray, image_identity: np.ndarray, keep: np.ndarray, max_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(image_identity[idx], kind="stable")]
    ids, starts, counts = np.unique(image_identity[idx], return_index=True, return_counts=True)
    a_parts, b_parts, id_parts = [], [], []
    for m in np.unique(counts[counts >= 2]):
        sel = counts == m
        rows = starts[sel][:, None] + np.arange(m)[None, :]
        r, c = np.triu_indices(int(m), 1)
        a_parts.append(idx[rows[:, r]].ravel())
        b_parts.append(idx[rows[:, c]].ravel())
        id_parts.append(np.repeat(ids[sel], len(r)))
    if not a_parts:
        return np.empty(0, np.float32), np.empty(0, np.int64), 1.0
    a, b, who = np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(id_parts)
    fraction = 1.0
    if a.size > max_pairs:
        pick = np.sort(rng.choice(a.size, size=max_pairs, replace=False))
        fraction = max_pairs / a.size
        a, b, who = a[pick], b[pick], who[pick]
    scores = np.empty(a.size, np.float32)
    step = 1 << 16
    for s in range(0, a.size, step):
        scores[s : s + step] = np.einsum("ij,ij->i", vectors[a[s : s + step]], vectors[b[s : s + step]])
    return scores, who.astype(np.int64), fraction


def _exhaustive_cell(
    vectors: np.ndarray, image_identity: np.ndarray, pool_a: np.ndarray, pool_b: np.ndarray, same: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out_s, out_a, out_b = [], [], []
    vb, idb = vectors[pool_b], image_identity[pool_b]
    step = max(1, (1 << 22) // max(1, len(pool_b)))
    for s in range(0, len(pool_a), step):
        rows = pool_a[s : s + step]
        sc = vectors[rows] @ vb.T
        ida = image_identity[rows]
        mask = ida[:, None] != idb[None, :]
        if same:  # each unordered pair once: column index above row index
            mask &= np.arange(s, s + len(rows))[:, None] < np.arange(len(pool_b))[None, :]
        r, c = np.nonzero(mask)
        out_s.append(sc[r, c])
        out_a.append(ida[r])
        out_b.append(idb[c])
    return np.concatenate(out_s), np.concatenate(out_a), np.concatenate(out_b)


def _sampled_cell(
    vectors: np.ndarray,
    image_identity: np.ndarray,
    pool_a: np.ndarray,
    pool_b: np.ndarray,
    n_pairs: int,
    rng: np.random.Generator,
    block: int,
    should_stop: Callable[[], bool] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out_s, out_a, out_b = [], [], []
    n_blocks = -(-n_pairs // (block * block))
    per_step = 64
    for s in range(0, n_blocks, per_step):
        _check_stop(should_stop)
        nb = min(per_step, n_blocks - s)
        ia = pool_a[rng.integers(0, len(pool_a), size=(nb, block))]
        ib = pool_b[rng.integers(0, len(pool_b), size=(nb, block))]
        sc = np.matmul(vectors[ia], vectors[ib].transpose(0, 2, 1))
        ida = image_identity[ia][:, :, None]
        idb = image_identity[ib][:, None, :]
        mask = ida != idb
        out_s.append(sc[mask])
        out_a.append(np.broadcast_to(ida, mask.shape)[mask])
        out_b.append(np.broadcast_to(idb, mask.shape)[mask])
    return np.concatenate(out_s), np.concatenate(out_a), np.concatenate(out_b)


def build_pairs(
    vectors: np.ndarray,
    image_identity: np.ndarray,
    identity_group: np.ndarray,
    *,
    n_groups: int,
    impostor_budget: int = 1_000_000,
    cross_budget: int = 200_000,
    max_genuine_pairs: int = 5_000_000,
    block: int = 64,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PairSet:
    """Score the genuine pairs and (a reproducible sample of) the impostor pairs.

    ``vectors`` are L2-normalised rows; ``image_identity[k]`` is the identity index of row k;
    ``identity_group[i]`` the group index of identity i, or -1 to leave it out. Within-group
    cells get up to ``impostor_budget`` pairs each, cross-group cells ``cross_budget``.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    image_identity = np.asarray(image_identity, dtype=np.int64)
    identity_group = np.asarray(identity_group, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(image_identity):
        raise InvalidInput("vectors must be (N, D) with one identity per row")
    if image_identity.size and (image_identity.min() < 0 or image_identity.max() >= len(identity_group)):
        raise InvalidInput("image identity index out of range")
    rng = np.random.default_rng(seed)
    image_group = identity_group[image_identity]
    keep = image_group >= 0
    image_counts = np.bincount(image_identity[keep], minlength=len(identity_group)).astype(np.int64)

    if progress:
        progress(0.0, "scoring genuine pairs")
    g_scores, g_ident, g_frac = _genuine(vectors, image_identity, keep, max_genuine_pairs, rng)

    pools = [np.flatnonzero(image_group == g) for g in range(n_groups)]
    # images per group and sum of squared per-identity image counts, for possible-pair counts
    m_tot = np.array([len(p) for p in pools], dtype=np.float64)
    m_sq = np.bincount(
        identity_group[identity_group >= 0],
        weights=image_counts[identity_group >= 0].astype(np.float64) ** 2,
        minlength=n_groups,
    )[:n_groups]
    possible = np.outer(m_tot, m_tot)
    possible[np.diag_indices(n_groups)] = (m_tot**2 - m_sq) / 2.0
    sampled = np.zeros((n_groups, n_groups))
    cells = [(g, h) for g in range(n_groups) for h in range(g, n_groups)]
    parts_s, parts_a, parts_b = [], [], []
    for k, (g, h) in enumerate(cells):
        _check_stop(should_stop)
        if progress:
            progress(0.1 + 0.9 * k / len(cells), f"scoring impostor pairs {g}x{h}")
        budget = impostor_budget if g == h else cross_budget
        if possible[g, h] <= 0 or budget <= 0:
            continue
        if possible[g, h] <= budget:
            s, a, b = _exhaustive_cell(vectors, image_identity, pools[g], pools[h], g == h)
        else:
            s, a, b = _sampled_cell(
                vectors, image_identity, pools[g], pools[h], budget, rng, block, should_stop
            )
        parts_s.append(s)
        parts_a.append(a)
        parts_b.append(b)
        sampled[g, h] = sampled[h, g] = len(s)
    possible = np.triu(possible) + np.triu(possible, 1).T
    if progress:
        progress(1.0, "pairs scored")
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.empty(0, dt)  # noqa: E731
    return PairSet(
        genuine_scores=g_scores,
        genuine_identity=g_ident,
        impostor_scores=cat(parts_s, np.float32),
        impostor_a=cat(parts_a, np.int64),
        impostor_b=cat(parts_b, np.int64),
        identity_group=identity_group,
        image_counts=image_counts,
        n_groups=n_groups,
        cell_possible=possible,
        cell_sampled=sampled,
        genuine_sampled_fraction=g_frac,
    )
