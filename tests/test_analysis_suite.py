"""The latent analysis on the planted scenario suite (issue #11): the plants, the baselines against
brute force, the scoring, the ESS floor, identity-aware weights, and the criteria on a fast subset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embeddings.bench.analysis_suite import (
    check_criteria,
    format_table,
    null_spread,
    run_suite,
    score,
    worst_cases,
)
from embeddings.dataset import Dataset
from embeddings.errors import InvalidInput
from embeddings.latent import effective_sample_size, ess_floor_weights, run_analysis
from embeddings.latent.baselines import baseline_weights, mahalanobis_log_density, pca_knn_log_density
from embeddings.synthetic.scenarios import Scenario, full_suite, load_real, quick_suite, spectrum

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the plants ---------------------------------------------------------------------------------


def test_separable_scenario_plants_its_shares_and_offset() -> None:
    sc = Scenario(
        "s", "separable", n=4000, dim=128, params={"shares": [0.05, 0.01], "offset": 8.0, "subspace": 2}
    )
    p = sc.make()
    assert p.dataset.vectors.shape == (4000, 128)
    np.testing.assert_allclose(np.linalg.norm(p.dataset.vectors, axis=1), 1.0, atol=1e-5)
    assert p.minorities["minority1"].sum() == 200 and p.minorities["minority2"].sum() == 40
    # Each minority sits offset/sqrt(2) from the majority along each of its 2 planted directions
    # (4 columns: minority1's pair, then minority2's), and nowhere else.
    maj = p.groups == "majority"
    for name, cols in (("minority1", [0, 1]), ("minority2", [2, 3])):
        shift = p.planted_coords[p.minorities[name]].mean(0) - p.planted_coords[maj].mean(0)
        np.testing.assert_allclose(np.abs(shift[cols]), 8.0 / math.sqrt(2), atol=0.5)
        other = [c for c in range(4) if c not in cols]
        assert np.abs(shift[other]).max() < 0.5
    # Seeded: the same recipe gives the same data, another seed other data.
    np.testing.assert_array_equal(sc.make().dataset.vectors, p.dataset.vectors)
    assert not np.array_equal(sc.with_(seed=1).make().dataset.vectors, p.dataset.vectors)


def test_correlation_scenario_flips_only_the_correlation() -> None:
    p = Scenario("c", "correlation", n=6000, dim=128, params={"share": 0.1, "rho": 0.9, "pairs": 2}).make()
    z, y = p.planted_coords, p.minorities["minority"]
    for group, sign in ((~y, 1.0), (y, -1.0)):
        # Unit-variance, zero-mean marginals in both groups; the pair correlation is +-rho.
        np.testing.assert_allclose(z[group].std(0), 1.0, atol=0.1)
        np.testing.assert_allclose(z[group].mean(0), 0.0, atol=0.1)
        for a in (0, 2):
            assert np.corrcoef(z[group][:, a], z[group][:, a + 1])[0, 1] == pytest.approx(
                sign * 0.9, abs=0.03
            )


def test_spectrum_shapes() -> None:
    face = spectrum(512, "face")
    assert face.sum() == pytest.approx(1.0) and np.all(np.diff(face) <= 0)
    # A few dozen directions carry most of the variance, like real face embeddings.
    assert face[:32].sum() > 0.9
    np.testing.assert_allclose(spectrum(128, "isotropic"), 1 / 128)


def test_identity_scenario_has_identities_with_many_photos() -> None:
    p = Scenario("i", "identity", n=3000, dim=128, params={"shares": [0.05]}).make()
    assert p.kind == "identity"
    _, counts = np.unique(p.dataset.identities, return_counts=True)
    assert counts.max() >= 20 and counts.min() == 1 and 6 <= counts.mean() <= 10


def test_real_embeddings_file_becomes_a_scenario(tmp_path) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 128)).astype(np.float32)
    np.save(tmp_path / "e.npy", X)
    rows = ["id,identity"] + [f"f{i},p{i % 6}" for i in range(60)]
    (tmp_path / "e.csv").write_text("\n".join(rows) + "\n")
    p = load_real(tmp_path / "e.npy", tmp_path / "e.csv", keep=0.3)
    # p0 had 10 photos, 3 kept: it is the minority of 53 rows.
    assert len(p.dataset) == 53 and p.minorities["minority"].sum() == 3
    assert set(p.dataset.identities[p.minorities["minority"]]) == {"p0"}
    assert p.dataset.vectors.shape[1] == 128


def test_suites_cover_the_issue_families() -> None:
    full = full_suite()
    assert {s.family for s in full} == {"separable", "correlation", "overlap", "null", "identity"}
    assert {s.n for s in full} == {2000, 10_000} and {s.dim for s in full} == {128, 512}
    shares = {x for s in full if s.family == "separable" for x in s.params["shares"]}
    assert {0.1, 0.05, 0.03, 0.01, 0.005} <= shares
    assert {s.params["directions"] for s in full if s.family == "correlation"} == {"high", "low"}
    assert len({s.label for s in quick_suite()}) == len(quick_suite())


# --- baselines and scoring against brute force --------------------------------------------------


def test_pca_knn_baseline_matches_brute_force(rng: np.random.Generator) -> None:
    X = rng.standard_normal((300, 20)) * np.linspace(3, 0.1, 20)
    got = pca_knn_log_density(X, n_components=4, n_neighbors=7)
    Xc = X - X.mean(0)
    Z = Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:4].T
    d = np.sqrt(((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    r = np.sort(d, axis=1)[:, 6]
    log_ball = 2 * math.log(math.pi) - math.lgamma(3)
    want = math.log(7) - math.log(299) - log_ball - 4 * np.log(r)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mahalanobis_baseline_matches_brute_force(rng: np.random.Generator) -> None:
    from sklearn.covariance import LedoitWolf

    X = rng.standard_normal((200, 10)) @ rng.standard_normal((10, 10))
    cov = LedoitWolf().fit(X).covariance_
    diff = X - X.mean(0)
    want = -0.5 * np.einsum("ij,ij->i", diff, np.linalg.solve(cov, diff.T).T)
    np.testing.assert_allclose(mahalanobis_log_density(X), want, rtol=1e-8)
    w = baseline_weights("mahalanobis", X)
    assert w.sum() == pytest.approx(1.0) and w.max() <= 50 * np.median(w) / w.sum() + 1e-12


def test_score_matches_hand_computation() -> None:
    p = Scenario("s", "separable", n=2000, dim=32, params={"shares": [0.05]}).make()
    y = p.minorities["minority"]
    w = np.where(y, 4.0, 1.0)
    w[:10] *= 3.0  # a few extra-heavy rows so the AUROC is not trivial
    s = score(w, p)
    wn = w / w.sum()
    assert s["mass_ratio"] == pytest.approx(wn[y].sum() / y.mean())
    assert s["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum() / w.size)
    pos, neg = w[y], w[~y]
    auroc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert s["auroc"] == pytest.approx(auroc)
    assert s["balance"] == pytest.approx(max(wn[y].sum(), wn[~y].sum()) / min(wn[y].sum(), wn[~y].sum()))
    flat = score(np.ones(2000), p)
    assert (
        flat["mass_ratio"] == pytest.approx(1.0)
        and flat["auroc"] == 0.5
        and flat["ess"] == pytest.approx(1.0)
    )


def test_null_spread_matches_random_subsets(rng: np.random.Generator) -> None:
    """The analytic spread of a random subset's mass and AUROC against 20 000 drawn subsets, on heavy
    weights with half the rows tied at a cap (clipped weights tie there). The subset is 10% of the
    rows, so leaving out the finite-population factor would be 5% off, and half the rows tied make
    the tie-corrected AUROC spread 6% smaller than the plain one."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    n, m = 600, 60
    w = np.minimum(np.exp(rng.normal(0.0, 1.0, n)), 1.0)
    assert 0.4 < (w == 1.0).mean() < 0.6
    mass_sd, auroc_sd = null_spread(w, m)
    wn, ranks = w / w.sum(), rankdata(w)  # midranks: the AUROC of a subset is its rank sum's
    masses, aurocs = [], []
    for i in range(20_000):
        pick = rng.choice(n, m, replace=False)
        masses.append(wn[pick].sum())
        aurocs.append((ranks[pick].sum() - m * (m + 1) / 2) / (m * (n - m)))
        if i < 20:
            y = np.zeros(n, dtype=bool)
            y[pick] = True
            assert aurocs[-1] == pytest.approx(roc_auc_score(y, w))
    assert np.mean(masses) == pytest.approx(m / n, rel=0.01)
    assert np.std(masses) == pytest.approx(mass_sd, rel=0.025)
    assert np.std(aurocs) == pytest.approx(auroc_sd, rel=0.025)
    assert auroc_sd < 0.96 * math.sqrt((n + 1) / (12 * m * (n - m)))
    assert null_spread(np.ones(n), m) == (0.0, 0.0)
    with pytest.raises(InvalidInput):
        null_spread(w, 0)


def test_ess_floor_raises_alpha_to_the_smallest_value_that_meets_it(rng: np.random.Generator) -> None:
    log_density = rng.standard_normal(5000) * 3  # heavy density tails: 1/p alone collapses
    raw, a0 = ess_floor_weights(log_density, alpha=0.0, max_weight_ratio=None, min_ess=None)
    assert a0 == 0.0 and effective_sample_size(raw) < 0.01 * 5000
    w, alpha = ess_floor_weights(log_density, alpha=0.0, max_weight_ratio=None, min_ess=0.2)
    assert effective_sample_size(w) >= 0.2 * 5000
    below, _ = ess_floor_weights(log_density, alpha=alpha / 1.01, max_weight_ratio=None, min_ess=None)
    assert effective_sample_size(below) < 0.2 * 5000
    # A floor already met changes nothing.
    same, a = ess_floor_weights(log_density, alpha=alpha * 2, max_weight_ratio=None, min_ess=0.2)
    assert a == alpha * 2 and effective_sample_size(same) > 0.2 * 5000


def test_knn_auto_variant_is_run_analysis_with_the_data_chosen_scale() -> None:
    from embeddings.bench.analysis_suite import variant_weights

    p = Scenario("s", "separable", n=800, dim=32, params={"shares": [0.05]}).make()
    kw = {"seed": 1, "vae_params": {"epochs": 3}}
    result = run_analysis(p.dataset, **kw)
    auto = run_analysis(p.dataset, estimator_params={"n_neighbors": "auto"}, **kw)
    # The same VAE, refitted density: exactly what run_analysis gives with n_neighbors="auto".
    w, k = variant_weights(result, "knn-auto")
    np.testing.assert_allclose(w, auto.weights, rtol=1e-9)
    assert k == auto.params["knn_k"] and len(k) == 1
    with pytest.raises(InvalidInput):
        variant_weights(run_analysis(p.dataset, method="gmm", **kw), "knn-auto")
    # no-share: the same VAE and density without the component-share factor.
    plain = run_analysis(p.dataset, component_share=0, **kw)
    np.testing.assert_allclose(variant_weights(result, "no-share")[0], plain.weights, rtol=1e-9)


def test_criteria_are_checked_for_the_method_asked() -> None:
    base = {"scenario": "s", "kind": "separable", "share": 0.03, "n": 2000, "dim": 128, "seed": 0, "ess": 0.3}
    rows = [
        {**base, "method": "default", "mass_ratio": 2.0, "auroc": 0.7},
        {**base, "method": "knn-auto", "mass_ratio": 6.0, "auroc": 0.95},
    ]
    stab = [
        {"scenario": "s", "method": "default", "spearman_seed": 0.95, "spearman_subsample": 0.97},
        {"scenario": "s", "method": "knn-auto", "spearman_seed": 0.85, "spearman_subsample": 0.97},
    ]
    d, a = check_criteria(rows, stab), check_criteria(rows, stab, method="knn-auto")
    assert d["separable_1_5pct_mass_ratio"]["value"] == 2.0 and not d["separable_1_5pct_mass_ratio"]["holds"]
    assert a["separable_1_5pct_mass_ratio"]["value"] == 6.0 and a["separable_1_5pct_auroc"]["holds"]
    assert d["stability_spearman_min"]["value"] == 0.95 and a["stability_spearman_min"]["value"] == 0.85
    # Null rows: the issue's tolerances, and the same errors in sampling spreads (uniform weights: 0).
    null = {**base, "kind": "null", "method": "default", "share_planted": 0.05, "mass_ratio": 1.0}
    rows = [
        {**null, "mass": 0.065, "auroc": 0.54, "mass_sd": 0.01, "auroc_sd": 0.03},
        {**null, "seed": 1, "mass": 0.05, "auroc": 0.5, "mass_sd": 0.0, "auroc_sd": 0.0},
    ]
    c = check_criteria(rows)
    assert c["null_mass_max_error"]["value"] == 0.015 and not c["null_mass_max_error"]["holds"]
    assert c["null_mass_max_z"]["value"] == 1.5 and c["null_mass_max_z"]["holds"]
    assert c["null_auroc_max_z"]["value"] == pytest.approx(1.3333, abs=1e-4)
    rows[0]["mass"] = 0.09
    assert check_criteria(rows)["null_mass_max_z"] == {"value": 4.0, "target": "<= 3 (sampling spreads)", "holds": False}


# --- identity-aware weighting -------------------------------------------------------------------


def _identity_mass(weights: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, owner, counts = np.unique(identities, return_inverse=True, return_counts=True)
    return np.bincount(owner, weights=weights, minlength=names.size), counts


def test_identity_aware_weights_do_not_follow_photo_counts() -> None:
    from scipy.stats import spearmanr

    # No group planted; identities have 1-40 photos (geometric, mean 8) around their centres.
    p = Scenario("ids", "null", n=1500, dim=64, params={"faces_per_identity": 8, "face_noise": 0.3}).make()
    ids = p.dataset.identities
    plain = run_analysis(p.dataset, seed=0)
    aware = run_analysis(p.dataset, seed=0, identity_aware=True)
    assert aware.params["identity_aware"] and aware.params["identities"] == np.unique(ids).size
    mass_plain, counts = _identity_mass(plain.weights, ids)
    mass_aware, _ = _identity_mass(aware.weights, ids)
    # Faces of one identity share its weight equally.
    for name in np.unique(ids)[:20]:
        w = aware.weights[ids == name]
        np.testing.assert_allclose(w, w[0])
    rho_plain = spearmanr(counts, mass_plain).statistic
    rho_aware = spearmanr(counts, mass_aware).statistic
    # Measured (199 identities): 0.70 per face — well-photographed identities gather mass — and
    # 0.16 per identity (their centroids are less noisy, so a little denser); ESS 0.24 x identities.
    assert rho_plain > 0.5
    assert abs(rho_aware) < 0.3
    assert effective_sample_size(mass_aware) >= 0.2 * counts.size * 0.99
    with pytest.raises(InvalidInput, match="identities"):
        run_analysis(Dataset(ids=p.dataset.ids, vectors=p.dataset.vectors), identity_aware=True)


# --- the oracle density and cluster directions --------------------------------------------------


def test_mixture_log_density_matches_scipy(rng: np.random.Generator) -> None:
    from scipy.stats import multivariate_normal

    from embeddings.synthetic.scenarios import _Component, _mixture_log_density

    dim = 5
    comps = [
        _Component(0.7, np.zeros(dim), np.ones(dim), [(0, 1, 0.8)]),
        _Component(0.3, np.array([0, 0, 3.0, 0, 0]), np.array([1, 1, 0.5, 1, 1.0]), [(0, 1, -0.8)]),
    ]
    z = rng.standard_normal((50, dim)) * 2
    want = np.zeros(50)
    for c in comps:
        cov = np.diag(c.scale**2)
        for a, b, rho in c.pairs:
            cov[a, b] = cov[b, a] = rho * c.scale[a] * c.scale[b]
        want += c.share * multivariate_normal(c.mean, cov).pdf(z)
    np.testing.assert_allclose(_mixture_log_density(z, comps), np.log(want), rtol=1e-10)


def test_cluster_directions_and_group_alignment() -> None:
    from embeddings.latent import find_clusters

    rng = np.random.default_rng(5)
    n = 600
    latent = rng.standard_normal((n, 4))
    groups = np.where(np.arange(n) < 60, "b", "a")
    latent[groups == "b"] += np.array([6.0, 0, 0, 0])  # group b apart along the first axis
    labels = (groups == "b").astype(int)
    w = np.where(groups == "b", 5.0, 1.0)
    clusters = find_clusters(
        labels, ids=np.arange(n).astype(str), weights=w, density=1 / w, groups={"g": groups}, latent=latent
    )
    top = clusters[0]  # the low-density one: group b
    diff = latent[groups == "b"].mean(0) - latent.mean(0)
    np.testing.assert_allclose(top.direction, diff / np.linalg.norm(diff))
    assert top.direction_norm == pytest.approx(np.linalg.norm(diff))
    # b's own direction from the centroid is the cluster's: cosine 1; a's points the other way.
    assert top.group_alignment["g"]["b"] == pytest.approx(1.0, abs=1e-4)
    assert top.group_alignment["g"]["a"] == pytest.approx(-1.0, abs=1e-4)
    d = top.to_dict(with_members=False)
    assert len(d["direction"]) == 4 and d["group_alignment"]["g"]["b"] == pytest.approx(1.0, abs=1e-4)


# --- the criteria on the fast subset (the full suite runs in `latentface bench --only analysis-suite`) ---


@pytest.fixture(scope="module")
def quick():
    methods = ["default", "no-share", "histogram", "uniform", "pca-knn", "mahalanobis", "oracle"]
    return run_suite(
        quick_suite(),
        methods=methods,
        stability_on=lambda p: p.scenario.label.startswith("sep-3pct") and p.scenario.seed == 0,
    )


def _rows(quick, scenario: str, method: str) -> list[dict]:
    return [r for r in quick["rows"] if r["scenario"] == scenario and r["method"] == method]


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module fixture fits 18 VAEs (~75 s on an idle 2-core box)
def test_quick_suite_separable_minorities(quick) -> None:
    # The issue's 3% case (2.4x under the old defaults), a 1% and a 5% one: >= 5x and AUROC >= 0.9 on
    # both seeds (measured 5.4-10.5x, AUROC 0.92-0.99).
    for name in ("sep-3pct-4d-5sd", "sep-1pct-2d-6sd", "sep-5pct-4d-5sd"):
        for r in _rows(quick, name, "default"):
            assert r["mass_ratio"] >= 5 and r["auroc"] >= 0.9, r
    # The 5% one passes because of the component-share factor: without it (and with the generating
    # density itself, through the same rule) 1/density leaves it near its share (measured 1.9-2.3x,
    # AUROC 0.69-0.72; oracle AUROC 0.58-0.64). The mixture found no second mode in the other two, so
    # the factor changes nothing there.
    for d, plain, o in zip(
        *(_rows(quick, "sep-5pct-4d-5sd", m) for m in ("default", "no-share", "oracle")), strict=True
    ):
        assert plain["mass_ratio"] < 3 and plain["auroc"] < 0.8 and o["auroc"] < 0.8
        assert d["mass_ratio"] >= 2 * plain["mass_ratio"]
    # On every separable row the default is at least as good as each baseline.
    for r in quick["rows"]:
        if r["kind"] == "separable" and r["method"] in ("pca-knn", "mahalanobis", "histogram"):
            d = next(x for x in _rows(quick, r["scenario"], "default") if x["seed"] == r["seed"])
            assert d["mass_ratio"] >= r["mass_ratio"] and d["auroc"] >= r["auroc"] - 0.01, (r, d)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module fixture fits 18 VAEs (~75 s on an idle 2-core box)
def test_quick_suite_correlation_null_ess_stability(quick) -> None:
    crit = check_criteria(quick["rows"], quick["stability"])
    # Null control, the planted random 5% label: no bias beyond the sampling spread the weights'
    # dispersion allows. At ESS 0.2 N and 2 000 rows that spread is 0.01 of mass, so the issue's
    # +-0.01 does not hold on every seed (measured errors 0.012 and 0.001; AUROC 0.501 and 0.466).
    assert crit["null_mass_max_z"]["holds"] and crit["null_auroc_max_z"]["holds"]  # within 3 spreads
    for r in _rows(quick, "null", "default"):
        assert 0.005 < r["mass_sd"] < 0.015 and 0.02 < r["auroc_sd"] < 0.04  # about the tolerances
    assert crit["ess_min"]["holds"]
    assert crit["stability_spearman_min"]["holds"]
    # Correlation-only in high-variance directions: above 0.65 on both seeds, but the DB-VAE histogram
    # rule on the same latent means is as good or slightly better (measured shortfall 0.02 on seed 1).
    corr = _rows(quick, "corr-high-5pct", "default")
    assert min(r["auroc"] for r in corr) >= 0.65
    assert crit["correlation_high_auroc_minus_target"]["value"] >= -0.05


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module fixture fits 18 VAEs (~75 s on an idle 2-core box)
def test_quick_suite_strongest_setting_does_not_collapse(quick) -> None:
    # The strongest setting (alpha 0, no cap, 3 VAEs, ESS floor 0.05, no component share) does not
    # collapse, but at 95/5 it misses the issue's balance <= 1.5 (measured 3.3 and 8.2; uniform weights
    # give 19). The default itself, with the share factor, reaches 1.6-1.7 there.
    strong = [r for r in quick["rows"] if r["method"] == "default-strongest"]
    assert len(strong) == 2
    for r in strong:
        assert r["ess"] >= 0.05 - 1e-9
        assert r["balance"] <= 10, r
        d = next(x for x in _rows(quick, r["scenario"], "default") if x["seed"] == r["seed"])
        assert d["balance"] <= 2, d
    table = format_table(quick["rows"])
    assert table.count("\n") == len({(r["scenario"], r["seed"]) for r in quick["rows"]}) + 1
    assert set(worst_cases(quick["rows"])) >= {"default", "default-strongest", "oracle", "pca-knn"}
