"""Acceptance of the latent analysis end to end (VAE + density + weights + clusters) on planted minorities."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from embeddings.errors import Cancelled, InvalidInput
from embeddings.latent import (
    DEFAULT_METHOD,
    MAX_VAES,
    STRONGEST,
    EmbeddingVAE,
    HistogramDensity,
    KNNDensity,
    effective_sample_size,
    run_analysis,
)
from embeddings.synthetic.groups import make_group_embeddings

N = 4000


def _data(structure: str, share: float, **kw):
    ds = make_group_embeddings(
        n=N, shares={"majority": 1 - share, "minority": share}, structure=structure, seed=0, **kw
    )
    return ds, ds.groups["group"] == "minority"


@pytest.fixture(scope="module")
def offset5():
    ds, y = _data("offset", 0.05)
    return ds, y, run_analysis(ds, seed=0)


def test_default_method_is_knn() -> None:
    assert DEFAULT_METHOD == "knn"


def test_separable_5pct_minority_gets_5x_mass_and_ranks_above_majority(offset5) -> None:
    _, y, result = offset5
    assert result.weights.sum() == pytest.approx(1.0)
    assert result.weights[y].sum() >= 0.25
    assert roc_auc_score(y, result.weights) >= 0.9


def test_separable_1pct_minority_gets_10x_mass() -> None:
    ds, y = _data("offset", 0.01)
    result = run_analysis(ds, seed=0)
    assert result.weights[y].sum() >= 0.10
    assert roc_auc_score(y, result.weights) >= 0.9


@pytest.mark.parametrize("data_seed", [0, 3])
def test_strongest_setting_balances_a_95_5_split(data_seed: int) -> None:
    ds = make_group_embeddings(n=N, shares={"majority": 0.95, "minority": 0.05}, seed=data_seed)
    y = ds.groups["group"] == "minority"
    # Strongest setting: alpha = 0 (uniform over the volume the data occupies), no clipping, 3 VAEs,
    # the ESS floor lowered to 5% of N, no component-share factor (with it, power 1: balance 2.6 on
    # data seed 0, 1.03 on seed 3).
    result = run_analysis(ds, seed=0, **STRONGEST)
    assert effective_sample_size(result.weights) >= 0.05 * N
    draws = np.random.default_rng(0).choice(N, size=20 * N, p=result.weights)
    share = y[draws].mean()
    # Largest/smallest expected share for data seeds 0-4 x analysis seeds 0, 1, 2 (* = minority ahead):
    #   data 0: 1.00* 1.11  1.09    data 1: 1.08* 1.21* 1.10*   data 2: 1.21 1.29 1.06
    #   data 3: 1.28  1.23  1.36    data 4: 1.02* 1.14* 1.23*
    # Seed 3 is the hard one for any kNN estimate at alpha = 0: on the true 8 factors it gives 1.3-1.4.
    assert max(share, 1 - share) / min(share, 1 - share) <= 1.5


def test_decoded_geometry_undoes_the_vaes_squeeze_of_the_minority() -> None:
    ds, y = _data("offset", 0.05)
    shares = {}
    for geometry in ("latent", "decoded"):
        w = run_analysis(
            ds, seed=0, alpha=0.0, max_weight_ratio=None, min_ess=None, component_share=0, geometry=geometry
        ).weights
        shares[geometry] = w[y].sum()
    # Plain latent distances: the VAE gave the minority too little volume, so alpha = 0 leaves it
    # 2.2-4.0x behind the majority (15 seeds; 2.7x here); distances between decoded points restore its share.
    assert shares["latent"] < 1 / 3
    assert 1 / 1.5 <= shares["decoded"] / (1 - shares["decoded"]) <= 1.5
    with pytest.raises(InvalidInput):
        run_analysis(ds, method="gmm", geometry="decoded")
    with pytest.raises(InvalidInput):
        run_analysis(ds, geometry="pullback")


def test_vae_finds_the_planted_number_of_factors(offset5) -> None:
    # The synthetic faces vary along 8 factors: a VAE trained long enough keeps 8 latent dimensions
    # active and lets the other 24 collapse (with 40 epochs of 8 steps it kept 9-32).
    _, _, result = offset5
    assert result.params["active_dims"] == 8
    assert result.params["geometry"] == "decoded"
    # The density is estimated on the decoded surface: 32 principal coordinates, exponent 8.
    assert result.coordinates.shape == (N, 32) and result.latent.shape == (N, 8)
    assert result.estimator.n_features_in_ == 32 and result.estimator.dim == 8


def test_vae_ensemble_averages_the_members_log_densities() -> None:
    ds, _ = _data("offset", 0.05)
    ds = ds.subset(np.arange(600))
    kw = {"vae_params": {"epochs": 3}, "alpha": 0.0, "max_weight_ratio": None, "min_ess": None}
    members = [run_analysis(ds, seed=s, **kw) for s in (4, 1004)]
    both = run_analysis(ds, seed=4, n_vaes=2, **kw)
    np.testing.assert_array_equal(both.latent, members[0].latent)
    # Each member's log-density and log mode share (power 2, the knn default) are averaged.
    log_density = np.mean([m.estimator._train_log_density() + 2 * m.component_log_share for m in members], axis=0)
    np.testing.assert_allclose(both.weights, np.exp(-log_density) / np.exp(-log_density).sum(), rtol=1e-9)
    assert both.params["n_vaes"] == 2
    assert both.params["components_members"] == [m.params["components"] for m in members]
    with pytest.raises(InvalidInput):
        run_analysis(ds, n_vaes=0)
    with pytest.raises(InvalidInput):
        run_analysis(ds, n_vaes=MAX_VAES + 1)


def test_null_control_random_subset_gets_its_share() -> None:
    ds, _ = _data("none", 0.05)
    result = run_analysis(ds, seed=0)
    masses, aurocs = [], []
    for s in range(50):
        subset = np.zeros(N, bool)
        subset[np.random.default_rng(s).choice(N, N // 20, replace=False)] = True
        masses.append(result.weights[subset].sum())
        aurocs.append(roc_auc_score(subset, result.weights))
    assert np.all(np.abs(np.array(masses) - 0.05) <= 0.01)
    # One random subset's AUROC has a sampling spread of its own, whatever the weights:
    # sqrt((n1 + n2 + 1) / (12 n1 n2)) = 0.021 for 200 of 4000, so +-0.03 holds for ~80% of subsets
    # even for ideal weights. The mean over 50 subsets is the criterion, and the spread must be
    # that sampling spread (no subset systematically favoured).
    assert np.mean(aurocs) == pytest.approx(0.5, abs=0.01)
    assert np.std(aurocs) == pytest.approx(0.021, abs=0.006)


def test_correlation_only_minority_found_by_knn_missed_by_histogram() -> None:
    ds, y = _data("correlation", 0.05, subspace_dim=3)
    result = run_analysis(ds, seed=0)
    knn_auc = roc_auc_score(y, result.weights)
    assert knn_auc >= 0.65
    # Documented failure: per-dimension histograms on the same latent means see the same marginals.
    hist_auc = roc_auc_score(y, HistogramDensity().fit(result.latent).sample_weights())
    assert hist_auc < 0.8
    assert hist_auc < knn_auc - 0.15


def test_weights_are_stable_across_seeds_and_subsamples(offset5) -> None:
    ds, _, result = offset5
    other_seed = run_analysis(ds, seed=1)
    assert spearmanr(result.weights, other_seed.weights).statistic >= 0.9
    keep = np.sort(np.random.default_rng(3).choice(N, int(0.8 * N), replace=False))
    sub = run_analysis(ds.subset(keep), seed=0)
    assert spearmanr(result.weights[keep], sub.weights).statistic >= 0.9


def test_weights_tend_to_uniform_as_alpha_grows(offset5) -> None:
    _, _, result = offset5
    ess = [effective_sample_size(KNNDensity(alpha=a).fit(result.latent).sample_weights()) for a in (0.01, 0.1, 1, 10, 1e4)]
    assert ess == sorted(ess)
    assert ess[-1] == pytest.approx(N, rel=1e-3)


def test_clusters_rank_the_minority_region_first(offset5) -> None:
    _, _, result = offset5
    top = result.clusters[0]
    assert top.group_composition["group"].get("minority", 0) > 0.5
    assert top.group_enrichment["group"]["minority"] > 10
    # Its direction from the data's centroid is the minority's own (cosine 0.996 measured); the next
    # clusters, majority regions, point elsewhere (0.10 and 0.01).
    assert top.group_alignment["group"]["minority"] > 0.9
    assert all(abs(c.group_alignment["group"]["minority"]) < 0.5 for c in result.clusters[1:3])
    assert [c.mean_density for c in result.clusters] == sorted(c.mean_density for c in result.clusters)
    assert sum(c.size for c in result.clusters) == N


def test_artefacts_follow_the_contract(offset5, tmp_path) -> None:
    ds, y, result = offset5
    paths = result.write(tmp_path)
    with paths["weights"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ds.ids.tolist()
    np.testing.assert_allclose([float(r["weight"]) for r in rows], result.weights)
    summary = json.loads(paths["summary"].read_text())
    assert summary["method"] == "knn" and summary["n"] == N
    assert summary["effective_sample_size"] == pytest.approx(effective_sample_size(result.weights))
    mass = summary["group_weight_mass"]["group"]["minority"]
    assert mass["data_share"] == pytest.approx(0.05) and mass["weight_mass"] == pytest.approx(result.weights[y].sum())
    assert {"id", "size", "mass", "mean_density", "mean_weight", "group_composition"} <= set(summary["clusters"][0])
    clusters = json.loads(paths["clusters"].read_text())
    members = [m for c in clusters for m in c["members"]]
    assert sorted(members) == sorted(ds.ids.tolist())


def test_data_chosen_knn_scale_is_recorded_in_the_summary(tmp_path) -> None:
    ds, _ = _data("offset", 0.05)
    ds = ds.subset(np.arange(800))
    kw = {"vae_params": {"epochs": 3}, "seed": 2}
    auto = run_analysis(ds, estimator_params={"n_neighbors": "auto"}, **kw)
    assert auto.estimator.n_neighbors == "auto" and auto.estimator.k_.size == 1
    k = int(auto.estimator.k_[0])
    assert auto.estimator.k_grid_[0] <= k <= auto.estimator.k_grid_[-1]
    summary = json.loads(auto.write(tmp_path)["summary"].read_text())
    assert summary["params"]["estimator"]["n_neighbors"] == "auto"
    assert summary["params"]["knn_k"] == [k]
    # The same VAE and the same k, fixed by hand, give the same weights: the choice is all "auto" adds.
    fixed = run_analysis(ds, estimator_params={"n_neighbors": k}, **kw)
    np.testing.assert_allclose(fixed.weights, auto.weights, rtol=1e-9)
    # The default's fixed scales are recorded too: 2.5%, 5% and 10% of 800 rows.
    assert run_analysis(ds, **kw).params["knn_k"] == [20, 40, 80]
    with pytest.raises(InvalidInput, match="auto"):
        run_analysis(ds, estimator_params={"n_neighbors": "automatic"}, **kw)


def test_vae_is_reproducible_and_respects_thread_count() -> None:
    import torch

    ds, _ = _data("offset", 0.05)
    X = ds.vectors[:1000]
    before = torch.get_num_threads()
    a = EmbeddingVAE(latent_dim=8, epochs=3, seed=5, num_threads=1).fit(X).transform(X)
    assert torch.get_num_threads() == before
    b = EmbeddingVAE(latent_dim=8, epochs=3, seed=5, num_threads=1).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)


def test_vae_schedule_counts_optimiser_steps() -> None:
    vae = EmbeddingVAE()  # batches of 512
    assert vae.schedule(3600) == (188, 13)  # 8 steps an epoch: 1500 steps at most, 100 without progress
    assert vae.schedule(45_000) == (40, 4)  # 88 steps an epoch: the epoch floors rule
    assert EmbeddingVAE(epochs=7, patience=2).schedule(3600) == (7, 2)
    with pytest.raises(InvalidInput):
        EmbeddingVAE(epochs=0).fit(np.zeros((20, 4), np.float32))


def test_vae_posterior_and_decoder_round_trip() -> None:
    ds, _ = _data("offset", 0.05)
    X = ds.vectors[:1500]
    vae = EmbeddingVAE(latent_dim=8, epochs=30, seed=2, num_threads=1).fit(X)
    mu, log_var = vae.posterior(X)
    np.testing.assert_array_equal(mu, vae.transform(X))
    assert mu.shape == log_var.shape == (1500, 8)
    np.testing.assert_allclose(vae.kl_per_dim(X), 0.5 * (mu**2 + np.exp(log_var) - 1 - log_var).mean(0), rtol=1e-4)
    # The decoder's image of μ is the input, standardised, up to a residual far below the input's variance.
    standardised = (X - vae.mean_) / vae.scale_
    residual = ((vae.decode(mu) - standardised) ** 2).sum(1).mean()
    assert residual < 0.2 * (standardised**2).sum(1).mean()
    with pytest.raises(InvalidInput):
        vae.decode(np.zeros((3, 5), np.float32))


def test_progress_and_cancellation() -> None:
    ds, _ = _data("offset", 0.05)
    ds = ds.subset(np.arange(600))
    seen: list[float] = []
    run_analysis(ds, seed=0, vae_params={"epochs": 2}, progress=lambda f, _m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    calls = iter(range(1000))
    with pytest.raises(Cancelled):
        run_analysis(ds, seed=0, should_stop=lambda: next(calls) >= 3)
