"""Identity bootstrap of per-group FNMR and FMR at a fixed threshold.

Pairs are not independent: all pairs of one person share that person's appearance, so
resampling pairs gives intervals that are too narrow. Here each replicate resamples the
IDENTITIES of every group with replacement (stratified: each group keeps its size) and
recomputes the rates as weighted sums of precomputed per-identity counts, with no re-scoring:

* FNMR of group g: ``sum_i w_i e_i / sum_i w_i n_i`` over g's identities (``e_i`` genuine
  pairs of identity i that fail the threshold, ``n_i`` its scored genuine pairs).
* FMR of cell (g, h): an impostor pair of identities (i, j) appears ``w_i w_j`` times. The
  numerator sums ``w_i w_j`` over the false-match pairs only (few, at a low FMR); the
  denominator is the number of impostor image pairs the resampled identities make,
  ``(S1^2 - S2) / 2`` within a group (``S1 = sum w_i m_i``, ``S2 = sum w_i^2 m_i^2``, m_i images),
  ``S1_g S1_h`` across groups, times the cell's sampling fraction. On the original identities
  (all ``w = 1``) this is exactly the point estimate.
* Overall rates pool the groups: FNMR is ``sum w e / sum w n`` over every audited identity; FMR
  weights each cell's false matches back by its sampling fraction, ``sum num / frac`` over the
  cells, divided by all the cells' possible pairs — the point estimate's weighting again.

The threshold is held fixed (it is the operating point under audit, not re-estimated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embeddings.errors import InvalidInput

__all__ = ["BootstrapReplicates", "identity_bootstrap", "percentile_interval", "rates_for_weights"]


@dataclass(frozen=True)
class BootstrapReplicates:
    """Per-replicate rates: ``fnmr[b, g]``, within-group ``fmr[b, g]``, ``cross_fmr[b, g, h]`` and the
    all-groups ``overall_fnmr[b]`` and ``overall_fmr[b]`` (NaN: undefined)."""

    fnmr: np.ndarray
    fmr: np.ndarray
    cross_fmr: np.ndarray
    overall_fnmr: np.ndarray
    overall_fmr: np.ndarray


def _multinomial_weights(n_boot: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of n draws with replacement from n items, one row per replicate."""
    draws = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def identity_bootstrap(
    *,
    identity_group: np.ndarray,
    n_groups: int,
    genuine_errors: np.ndarray,
    genuine_counts: np.ndarray,
    image_counts: np.ndarray,
    error_a: np.ndarray,
    error_b: np.ndarray,
    cell_sampled: np.ndarray,
    cell_possible: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> BootstrapReplicates:
    """Replicate per-group rates by resampling identities within each group.

    Per identity i: ``identity_group[i]`` (-1: not audited), ``genuine_errors[i]`` and
    ``genuine_counts[i]`` (false non-matches and scored genuine pairs), ``image_counts[i]``.
    ``error_a``/``error_b`` are the identities of each scored impostor pair that is a false match.
    """
    if n_boot < 1:
        raise InvalidInput("n_boot must be >= 1")
    identity_group = np.asarray(identity_group, dtype=np.int64)
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, len(identity_group)))
    for g in range(n_groups):
        ids = np.flatnonzero(identity_group == g)
        if ids.size:
            w[:, ids] = _multinomial_weights(n_boot, ids.size, rng)
    return rates_for_weights(
        w,
        identity_group=identity_group,
        n_groups=n_groups,
        genuine_errors=genuine_errors,
        genuine_counts=genuine_counts,
        image_counts=image_counts,
        error_a=error_a,
        error_b=error_b,
        cell_sampled=cell_sampled,
        cell_possible=cell_possible,
    )


def rates_for_weights(
    w: np.ndarray,
    *,
    identity_group: np.ndarray,
    n_groups: int,
    genuine_errors: np.ndarray,
    genuine_counts: np.ndarray,
    image_counts: np.ndarray,
    error_a: np.ndarray,
    error_b: np.ndarray,
    cell_sampled: np.ndarray,
    cell_possible: np.ndarray,
) -> BootstrapReplicates:
    """Per-group rates when identity i is counted ``w[b, i]`` times in replicate b (see module doc)."""
    identity_group = np.asarray(identity_group, dtype=np.int64)
    w = np.asarray(w, dtype=np.float64)
    n_boot = w.shape[0]
    s1 = np.zeros((n_boot, n_groups))
    s2 = np.zeros((n_boot, n_groups))
    fnmr = np.full((n_boot, n_groups), np.nan)
    gen_errors, gen_pairs = np.zeros(n_boot), np.zeros(n_boot)
    e = np.asarray(genuine_errors, dtype=np.float64)
    n = np.asarray(genuine_counts, dtype=np.float64)
    m = np.asarray(image_counts, dtype=np.float64)
    for g in range(n_groups):
        ids = np.flatnonzero(identity_group == g)
        if ids.size == 0:
            continue
        wg = w[:, ids]
        den, errs = wg @ n[ids], wg @ e[ids]
        gen_errors += errs
        gen_pairs += den
        with np.errstate(invalid="ignore", divide="ignore"):
            fnmr[:, g] = np.where(den > 0, errs / den, np.nan)
        s1[:, g] = wg @ m[ids]
        s2[:, g] = (wg**2) @ (m[ids] ** 2)

    possible = s1[:, :, None] * s1[:, None, :]
    diag = np.arange(n_groups)
    possible[:, diag, diag] = (s1**2 - s2) / 2.0
    frac = np.divide(cell_sampled, cell_possible, out=np.zeros((n_groups, n_groups)), where=cell_possible > 0)
    expected = possible * frac[None]

    num = np.zeros((n_boot, n_groups, n_groups))
    error_a = np.asarray(error_a, dtype=np.int64)
    error_b = np.asarray(error_b, dtype=np.int64)
    if error_a.size:
        ga, gb = identity_group[error_a], identity_group[error_b]
        lo, hi = np.minimum(ga, gb), np.maximum(ga, gb)
        cell = lo * n_groups + hi
        prod = w[:, error_a] * w[:, error_b]
        for c in np.unique(cell):
            total = prod[:, cell == c].sum(axis=1)
            num[:, c // n_groups, c % n_groups] = total
            num[:, c % n_groups, c // n_groups] = total
    sampled_cells = np.triu(np.asarray(cell_sampled) > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = np.where(expected > 0, num / expected, np.nan)
        overall_fnmr = np.where(gen_pairs > 0, gen_errors / gen_pairs, np.nan)
        all_possible = possible[:, sampled_cells].sum(axis=1)
        weighted_errors = (num[:, sampled_cells] / frac[sampled_cells]).sum(axis=1)
        overall_fmr = np.where(all_possible > 0, weighted_errors / all_possible, np.nan)
    return BootstrapReplicates(
        fnmr=fnmr,
        fmr=cross[:, diag, diag].copy(),
        cross_fmr=cross,
        overall_fnmr=overall_fnmr,
        overall_fmr=overall_fmr,
    )


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the finite replicates (None when fewer than half are finite).

    Bounds use the 'lower'/'higher' order statistics, never interpolation, so an infinite
    replicate yields an infinite bound rather than NaN.
    """
    r = np.asarray(replicates, dtype=np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0 or r.size < 0.5 * np.asarray(replicates).size:
        return None
    alpha = (1.0 - confidence) / 2.0
    lo = float(np.quantile(r, alpha, method="lower"))
    hi = float(np.quantile(r, 1.0 - alpha, method="higher"))
    return lo, hi
