"""Verification error rates at a threshold, the threshold for a target FMR, curves and differentials.

Convention everywhere: a pair is declared a match when ``score >= threshold``. FMR is the
fraction of impostor pairs declared a match; FNMR the fraction of genuine pairs that are not.
Comparisons are made in float64 so a threshold read back from JSON decides exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from embeddings.errors import InvalidInput

__all__ = [
    "det_curve",
    "differentials",
    "false_match_rate",
    "false_non_match_rate",
    "threshold_for_fmr",
]


def _f64(scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64).ravel()


def false_match_rate(impostor_scores: np.ndarray, threshold: float) -> float:
    """Fraction of impostor scores ``>= threshold`` (NaN when there are none)."""
    s = _f64(impostor_scores)
    return float(np.mean(s >= threshold)) if s.size else math.nan


def false_non_match_rate(genuine_scores: np.ndarray, threshold: float) -> float:
    """Fraction of genuine scores ``< threshold`` (NaN when there are none)."""
    s = _f64(genuine_scores)
    return float(np.mean(s < threshold)) if s.size else math.nan


def threshold_for_fmr(
    impostor_scores: np.ndarray, target_fmr: float, *, weights: np.ndarray | None = None
) -> float:
    """The lowest threshold whose (weighted) FMR does not exceed ``target_fmr``.

    Impostor scores are taken in blocks of equal value, highest first; as many whole blocks are
    accepted as keep the accepted weight ``<= target_fmr`` of the total, and the threshold is
    put midway between the last accepted and the first rejected value. Ties are therefore
    never split: a tied block that would overshoot the target is rejected as a whole, so the
    FMR reached is at most the target (possibly below it). When even the top score cannot be
    accepted the threshold sits just above it (FMR 0). ``weights`` lets stratified samples
    stand for their strata (each sampled pair weighted by possible/sampled pairs of its cell).
    """
    if not 0.0 < target_fmr < 1.0:
        raise InvalidInput(f"target_fmr must be in (0, 1), got {target_fmr!r}")
    s = _f64(impostor_scores)
    if s.size == 0:
        raise InvalidInput("no impostor scores to set a threshold from")
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != s.shape:
        raise InvalidInput("weights must have one entry per score")
    order = np.argsort(-s, kind="stable")
    s, w = s[order], w[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    values = s[starts]
    cum = np.cumsum(np.add.reduceat(w, starts)) / w.sum()
    # a tiny tolerance so that exactly target*N accepted pairs count as "<= target"
    k = int(np.searchsorted(cum, target_fmr * (1 + 1e-12), side="right"))
    if k == 0:
        return float(np.nextafter(values[0], np.inf))
    if k == len(values):
        return float(values[-1])
    t = (values[k - 1] + values[k]) / 2.0
    if t <= values[k]:  # adjacent floats: the midpoint rounded onto the rejected value
        t = float(np.nextafter(values[k], np.inf))
    return float(t)


def det_curve(
    genuine_scores: np.ndarray, impostor_scores: np.ndarray, *, n_points: int = 60
) -> dict[str, list[float]]:
    """FMR and FNMR at ``n_points`` thresholds spread over the impostor tail and genuine body.

    Thresholds are quantiles of the pooled scores, refined in the impostor upper tail where
    low FMRs live, so the curve is smooth on a log axis.
    """
    g = np.sort(_f64(genuine_scores))
    i = np.sort(_f64(impostor_scores))
    if g.size == 0 or i.size == 0:
        return {"threshold": [], "fmr": [], "fnmr": []}
    # impostor tail: FMR from 1 down to 1/N on a log grid; plus genuine quantiles
    fmr_grid = np.logspace(0, -math.log10(i.size), n_points // 2)
    t_imp = np.quantile(i, 1 - fmr_grid)
    t_gen = np.quantile(g, np.linspace(0, 1, n_points - n_points // 2))
    ts = np.unique(np.r_[t_imp, t_gen])
    fmr = 1.0 - np.searchsorted(i, ts, side="left") / i.size
    fnmr = np.searchsorted(g, ts, side="left") / g.size
    return {"threshold": ts.tolist(), "fmr": fmr.tolist(), "fnmr": fnmr.tolist()}


def differentials(rates: Mapping[str, float | None]) -> dict[str, object]:
    """Across-group spread of one error rate (NIST's 2022 proposal): max/min and max/geometric mean.

    Groups whose rate is ``None`` (not measurable) are left out. A ratio whose denominator is 0
    is ``None`` (undefined), never infinity, so the JSON stays valid.
    """
    scored = {k: float(v) for k, v in rates.items() if v is not None and not math.isnan(v)}
    out: dict[str, object] = {
        "n_groups": len(scored),
        "max_min_ratio": None,
        "max_geomean_ratio": None,
        "worst_group": None,
        "best_group": None,
    }
    if not scored:
        return out
    worst = max(scored, key=lambda k: scored[k])
    best = min(scored, key=lambda k: scored[k])
    vals = np.array(list(scored.values()))
    out["worst_group"], out["best_group"] = worst, best
    if len(scored) < 2:
        return out
    hi, lo = float(vals.max()), float(vals.min())
    if lo > 0:
        out["max_min_ratio"] = hi / lo
        out["max_geomean_ratio"] = hi / float(np.exp(np.mean(np.log(vals))))
    elif hi == 0:
        out["max_min_ratio"] = out["max_geomean_ratio"] = 1.0
    return out
