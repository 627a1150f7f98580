"""Benchmark part ``analysis``: end-to-end latent analysis time per method, plus the acceptance figures."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from embeddings.latent import DEFAULT_METHOD, STRONGEST, HistogramDensity, run_analysis
from embeddings.synthetic.groups import make_group_embeddings

__all__ = ["run"]

_ACCEPTANCE_N = 4000


def run(options: Any) -> dict[str, Any]:
    """``analysis_s`` (default method, ``options.analysis_size`` × 512, VAE + density + weights + clusters),
    ``analysis_s_<method>`` for the others (skipped when ``options.quick``) and ``analysis_acceptance``."""
    n = 10_000 if options.quick else int(options.analysis_size)
    ds = make_group_embeddings(n=n, seed=options.seed)
    out: dict[str, Any] = {"analysis_n": n, "analysis_method": DEFAULT_METHOD}
    methods = [DEFAULT_METHOD] + ([] if options.quick else [m for m in ("gmm", "histogram") if m != DEFAULT_METHOD])
    for method in methods:
        start = time.perf_counter()
        result = run_analysis(ds, method=method, seed=options.seed)
        elapsed = round(time.perf_counter() - start, 2)
        out["analysis_s" if method == DEFAULT_METHOD else f"analysis_s_{method}"] = elapsed
        if method == DEFAULT_METHOD:
            out["analysis_vae_epochs"] = result.params["vae_epochs"]
            out["analysis_active_dims"] = result.params["active_dims"]
    if not options.quick:
        # The Balance criterion at this size too (the tests check it at 4 000 rows).
        start = time.perf_counter()
        out["analysis_balance_ratio_95_5"] = round(balance_ratio(ds, seed=options.seed), 4)
        out["analysis_s_strongest"] = round(time.perf_counter() - start, 2)
    out["analysis_acceptance"] = acceptance_figures(seed=options.seed)
    return out


def balance_ratio(ds: Any, *, seed: int) -> float:
    """Largest ÷ smallest expected group share after resampling with the strongest setting's weights."""
    w = run_analysis(ds, seed=seed, **STRONGEST).weights
    groups = ds.groups["group"]
    mass = [float(w[groups == g].sum()) for g in np.unique(groups)]
    return max(mass) / min(mass)


def acceptance_figures(*, seed: int = 0, n: int = _ACCEPTANCE_N) -> dict[str, float]:
    """The issue's acceptance numbers for the default method on synthetic 512-d data (as in the tests)."""
    from sklearn.metrics import roc_auc_score

    figures: dict[str, float] = {}
    for share in (0.05, 0.01):
        ds = make_group_embeddings(n=n, shares={"majority": 1 - share, "minority": share}, seed=seed)
        y = ds.groups["group"] == "minority"
        w = run_analysis(ds, seed=seed).weights
        figures[f"minority_{share:g}_mass"] = round(float(w[y].sum()), 4)
        figures[f"minority_{share:g}_auroc"] = round(float(roc_auc_score(y, w)), 4)
        if share == 0.05:
            figures["balance_ratio_95_5"] = round(balance_ratio(ds, seed=seed), 4)
    ds = make_group_embeddings(n=n, structure="none", seed=seed)
    w = run_analysis(ds, seed=seed).weights
    masses, aurocs = [], []
    for s in range(50):  # one subset's AUROC alone has a sampling spread of ~0.02
        subset = np.zeros(n, bool)
        subset[np.random.default_rng(seed + s).choice(n, n // 20, replace=False)] = True
        masses.append(float(w[subset].sum()))
        aurocs.append(float(roc_auc_score(subset, w)))
    figures["null_subset_mass_mean"] = round(float(np.mean(masses)), 4)
    figures["null_subset_mass_max_error"] = round(float(np.max(np.abs(np.array(masses) - 0.05))), 4)
    figures["null_subset_auroc_mean"] = round(float(np.mean(aurocs)), 4)
    figures["null_subset_auroc_sd"] = round(float(np.std(aurocs)), 4)
    ds = make_group_embeddings(n=n, structure="correlation", subspace_dim=3, seed=seed)
    y = ds.groups["group"] == "minority"
    result = run_analysis(ds, seed=seed)
    figures["correlation_auroc"] = round(float(roc_auc_score(y, result.weights)), 4)
    hist = HistogramDensity().fit(result.latent).sample_weights()
    figures["correlation_auroc_histogram"] = round(float(roc_auc_score(y, hist)), 4)
    return figures
