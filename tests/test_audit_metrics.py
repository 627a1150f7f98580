"""Thresholds, error rates and differentials against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.audit import differentials, false_match_rate, threshold_for_fmr
from embeddings.audit.bootstrap import rates_for_weights
from embeddings.errors import InvalidInput


def _brute_threshold(scores: np.ndarray, target: float) -> float:
    """Slow reference: the smallest candidate threshold (each distinct score, or above the max) meeting the target."""
    cands = np.r_[np.unique(scores), np.nextafter(scores.max(), np.inf)]
    ok = [t for t in cands if np.mean(scores >= t) <= target + 1e-15]
    return min(ok)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=3000), 2)  # heavy ties
    for target in (1e-3, 1e-2, 0.1):
        t = threshold_for_fmr(scores, target)
        ref = _brute_threshold(scores, target)
        # same decisions on every score, and the FMR never overshoots the target
        assert np.array_equal(scores >= t, scores >= ref)
        assert false_match_rate(scores, t) <= target


def test_threshold_weights_equal_duplication() -> None:
    rng = np.random.default_rng(5)
    s = rng.normal(size=500)
    w = rng.integers(1, 4, size=500)
    t_w = threshold_for_fmr(s, 0.02, weights=w.astype(float))
    t_dup = threshold_for_fmr(np.repeat(s, w), 0.02)
    assert np.array_equal(s >= t_w, s >= t_dup)


def test_threshold_edge_cases() -> None:
    s = np.array([0.1, 0.2, 0.3])
    assert false_match_rate(s, threshold_for_fmr(s, 1e-3)) == 0.0  # cannot accept even the top score
    with pytest.raises(InvalidInput):
        threshold_for_fmr(s, 0.0)
    with pytest.raises(InvalidInput):
        threshold_for_fmr(np.array([]), 0.1)


def test_differentials_values_and_undefined_ratio() -> None:
    d = differentials({"a": 1e-3, "b": 1e-4, "c": None, "d": 1e-3})
    assert d["worst_group"] in ("a", "d") and d["best_group"] == "b" and d["n_groups"] == 3
    assert d["max_min_ratio"] == pytest.approx(10.0)
    geo = np.exp(np.mean(np.log([1e-3, 1e-4, 1e-3])))
    assert d["max_geomean_ratio"] == pytest.approx(1e-3 / geo)
    assert differentials({"a": 0.0, "b": 0.1})["max_min_ratio"] is None


def test_bootstrap_weights_equal_enumerating_the_resampled_people() -> None:
    """A replicate's rates equal a brute-force count over the resampled multiset of identities."""
    rng = np.random.default_rng(3)
    n_ids, imgs = 6, 3
    group = np.array([0, 0, 0, 1, 1, 1])
    x = rng.normal(size=(n_ids * imgs, 4))
    img_id = np.repeat(np.arange(n_ids), imgs)
    t = 0.5
    w = np.array([[2, 0, 1, 1, 1, 1], [0, 3, 0, 2, 0, 1], [1, 1, 1, 0, 2, 1]], dtype=float)
    # per-identity genuine counts over all image pairs of each identity
    iu = np.triu_indices(imgs, 1)
    ge = np.zeros(n_ids)
    gc = np.zeros(n_ids)
    for i in range(n_ids):
        s = (x[img_id == i] @ x[img_id == i].T)[iu]
        ge[i], gc[i] = np.sum(s < t), s.size
    full = x @ x.T
    a, b = np.triu_indices(len(x), 1)
    keep = img_id[a] != img_id[b]
    ea, eb = img_id[a][keep], img_id[b][keep]
    fm = full[a, b][keep] >= t
    possible = np.zeros((2, 2))
    for ga in range(2):
        for gb in range(2):
            m_a, m_b = imgs * 3, imgs * 3
            possible[ga, gb] = m_a * m_b if ga != gb else (m_a**2 - 3 * imgs**2) / 2
    reps = rates_for_weights(
        w, identity_group=group, n_groups=2, genuine_errors=ge, genuine_counts=gc,
        image_counts=np.full(n_ids, imgs), error_a=ea[fm], error_b=eb[fm],
        cell_sampled=possible, cell_possible=possible,
    )
    for r in range(len(w)):
        people = np.repeat(np.arange(n_ids), w[r].astype(int))  # copies are distinct people
        assert reps.overall_fnmr[r] == pytest.approx(ge[people].sum() / gc[people].sum())
        pairs = [(p, q) for p in range(len(people)) for q in range(p + 1, len(people)) if people[p] != people[q]]
        blocks = [full[np.ix_(img_id == people[p], img_id == people[q])] for p, q in pairs]
        assert reps.overall_fmr[r] == pytest.approx(sum(np.sum(s >= t) for s in blocks) / sum(s.size for s in blocks))
        for g in range(2):
            mine = people[group[people] == g]
            assert reps.fnmr[r, g] == pytest.approx(ge[mine].sum() / gc[mine].sum())
            errs = tot = 0
            for p in range(len(mine)):
                for q in range(p + 1, len(mine)):
                    if mine[p] == mine[q]:
                        continue  # two copies of one person are not an impostor pair
                    s = full[np.ix_(img_id == mine[p], img_id == mine[q])]
                    errs += np.sum(s >= t)
                    tot += s.size
            if tot == 0:  # only copies of one person: no impostor pair, rate undefined
                assert np.isnan(reps.fmr[r, g])
            else:
                assert reps.fmr[r, g] == pytest.approx(errs / tot)
