"""Benchmark part ``analysis-suite``: every method and baseline on the planted scenario suite (issue #11).

For each scenario (:mod:`embeddings.synthetic.scenarios`) and method: the minority's weight mass ÷
its data share (``mass_ratio``, the smallest over planted minorities), the AUROC of the weights for
the minority (``auroc``), the effective sample size ÷ N (``ess``) and the largest ÷ smallest group
share after resampling (``balance``). Methods: ``default`` (``run_analysis`` as shipped), variants of
it on the same VAE's coordinates (``knn-auto``: the neighbour count chosen by held-out likelihood;
``no-share``: without the component-share factor; see :data:`VARIANTS`), ``gmm`` and ``histogram`` (the
DB-VAE rule) on the same VAE's μ, and the baselines ``uniform``, ``pca-knn`` and ``mahalanobis``.
Then each method's worst case per criterion and the issue's criteria, checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.errors import InvalidInput
from embeddings.latent import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_ESS,
    STRONGEST,
    AnalysisResult,
    HistogramDensity,
    clip_weights,
    effective_sample_size,
    ess_floor_weights,
    inverse_density_weights,
    make_estimator,
    run_analysis,
)
from embeddings.latent.baselines import BASELINES, baseline_weights
from embeddings.synthetic.scenarios import PlantedData, Scenario, full_suite, load_real, quick_suite

__all__ = [
    "METHODS",
    "VARIANTS",
    "check_criteria",
    "evaluate",
    "format_table",
    "null_spread",
    "run",
    "run_suite",
    "score",
    "stability",
    "variant_weights",
    "worst_cases",
]

# Variants of the default on its VAE and weight rule: the kNN density refitted with other parameters
# (``estimator``), or another component-share power λ (``component_share``).
VARIANTS: dict[str, dict[str, Any]] = {
    "knn-auto": {"estimator": {"n_neighbors": "auto"}},
    "no-share": {"component_share": 0.0},
}
METHODS = ("default", *VARIANTS, "gmm", "histogram", *BASELINES, "oracle")


def variant_weights(result: AnalysisResult, variant: str) -> tuple[np.ndarray, list[int]]:
    """The weights ``run_analysis`` would give with the variant's parameters, on ``result``'s VAE, and
    the neighbour counts used.

    The default's decoded coordinates, exponent (active dimensions), α, seed, clipping, ESS floor and
    mixture; only the variant's parameters differ, so a VAE fit is shared, not repeated."""
    p = result.params
    if result.method != "knn" or p["geometry"] != "decoded" or p["n_vaes"] != 1 or p["identity_aware"]:
        raise InvalidInput("variants apply to a single-VAE, decoded-geometry knn analysis")
    spec = VARIANTS[variant]
    est = result.estimator
    if "estimator" in spec:
        est = make_estimator(
            "knn", alpha=p["alpha"], dim=p["active_dims"], seed=p["seed"], **spec["estimator"]
        ).fit(result.coordinates)
    assert est is not None
    log_density = est._train_log_density()
    power = spec.get("component_share", p["component_share"])
    if power and result.component_log_share is not None:
        log_density = log_density + power * result.component_log_share
    w, _ = ess_floor_weights(
        log_density,
        alpha=p["alpha"],
        max_weight_ratio=p["max_weight_ratio"],
        min_ess=p["min_ess"],
    )
    return w, [int(k) for k in est.k_]


def score(weights: np.ndarray, planted: PlantedData) -> dict[str, float]:
    """The four figures of one weight vector against the planted truth (null: the planted random label)."""
    from sklearn.metrics import roc_auc_score

    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    n = w.size
    out: dict[str, float] = {"ess": effective_sample_size(w) / n}
    groups = planted.groups
    masses = [float(w[groups == g].sum()) for g in np.unique(groups)]
    out["balance"] = max(masses) / max(min(masses), 1e-300)
    if planted.kind == "null":
        # The planted label is a random 5% of rows: its mass should be its share and its AUROC 0.5, up
        # to the sampling spread the weights' dispersion allows (the mean over random subsets would be
        # 0.05 and 0.5 for any weights, so it is not used as the criterion).
        mask = planted.minorities["minority"]
        out["mass"] = float(w[mask].sum())
        out["share_planted"] = float(mask.mean())
        out["mass_ratio"] = out["mass"] / out["share_planted"]
        out["auroc"] = float(roc_auc_score(mask, w))
        out["mass_sd"], out["auroc_sd"] = null_spread(w, int(mask.sum()))
        return out
    ratios, aurocs = [], []
    for mask in planted.minorities.values():
        ratios.append(float(w[mask].sum() / mask.mean()))
        aurocs.append(float(roc_auc_score(mask, w)) if w.std() > 0 else 0.5)
    out["mass_ratio"] = min(ratios)
    out["auroc"] = min(aurocs)
    return out


def evaluate(
    planted: PlantedData, *, methods: Iterable[str] = METHODS, seed: int = 0, strongest: bool = False
) -> list[dict[str, Any]]:
    """One row per method (plus ``default-strongest`` when asked) for one planted dataset."""
    ds = planted.dataset
    sc = planted.scenario
    rows: list[dict[str, Any]] = []
    share = min(float(m.mean()) for m in planted.minorities.values())
    meta = {
        "scenario": sc.name,
        "kind": planted.kind,
        "share": round(share, 4),
        "n": len(ds),
        "dim": ds.vectors.shape[1],
        "seed": sc.seed,
    }
    methods = list(methods)
    result = None
    for method in methods:
        start = time.perf_counter()
        extra: dict[str, Any] = {}
        if method == "default":
            result = run_analysis(ds, seed=seed)
            w = result.weights
            extra["knn_k"] = result.params["knn_k"]
        elif method in VARIANTS:
            if result is None:
                result = run_analysis(ds, seed=seed)
            w, extra["knn_k"] = variant_weights(result, method)
        elif method in ("gmm", "histogram"):
            if result is None:
                result = run_analysis(ds, seed=seed)
            # The same VAE's active μ as the default, so only the density estimator differs.
            est = make_estimator(
                method, alpha=DEFAULT_ALPHA[method], **({"seed": seed} if method == "gmm" else {})
            )
            est.fit(result.latent)
            if isinstance(est, HistogramDensity):
                raw = est.sample_weights()
            else:
                raw = inverse_density_weights(est._train_log_density(), alpha=DEFAULT_ALPHA[method])
            w = clip_weights(raw, max_ratio=50.0)
        elif method == "oracle":
            if planted.true_log_density is None:
                continue
            # The generating density itself, through the default's weight rule: what a perfect
            # density estimate would give (the limit of 1/density, not of the estimators).
            w, _ = ess_floor_weights(
                planted.true_log_density, alpha=0.0, max_weight_ratio=50.0, min_ess=DEFAULT_MIN_ESS
            )
        else:
            w = baseline_weights(method, ds.vectors, seed=seed)
        rows.append(
            {
                **meta,
                "method": method,
                **score(w, planted),
                **extra,
                "s": round(time.perf_counter() - start, 2),
            }
        )
    if strongest:
        start = time.perf_counter()
        w = run_analysis(ds, seed=seed, **STRONGEST).weights
        rows.append(
            {
                **meta,
                "method": "default-strongest",
                **score(w, planted),
                "s": round(time.perf_counter() - start, 2),
            }
        )
    return rows


def stability(
    planted: PlantedData, *, seed: int = 0, methods: Iterable[str] = ("default",)
) -> list[dict[str, Any]]:
    """Per method (``default`` or a variant): Spearman correlation of the weights with another analysis
    seed's, and with an 80% subsample's. The three analyses are shared by the methods."""
    from scipy.stats import spearmanr

    ds = planted.dataset
    keep = np.sort(np.random.default_rng(seed + 7).choice(len(ds), int(0.8 * len(ds)), replace=False))
    runs = [
        run_analysis(ds, seed=seed),
        run_analysis(ds, seed=seed + 1),
        run_analysis(ds.subset(keep), seed=seed),
    ]
    out = []
    for method in methods:
        base, other, sub = (r.weights if method == "default" else variant_weights(r, method)[0] for r in runs)
        out.append(
            {
                "method": method,
                "spearman_seed": float(spearmanr(base, other).statistic),
                "spearman_subsample": float(spearmanr(base[keep], sub).statistic),
            }
        )
    return out


def _is_95_5(planted: PlantedData) -> bool:
    shares = planted.scenario.params.get("shares")
    return planted.kind == "separable" and shares is not None and list(shares) == [0.05]


def run_suite(
    scenarios: Iterable[Scenario | PlantedData],
    *,
    methods: Iterable[str] = METHODS,
    stability_on: Callable[[PlantedData], bool] = lambda _p: False,
    strongest: bool = True,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Rows for every scenario × method, stability where asked, each method's worst cases and the criteria.

    ``strongest`` adds the strongest setting (three VAEs) on the 95/5 splits."""
    rows: list[dict[str, Any]] = []
    stab: list[dict[str, Any]] = []
    methods = list(methods)
    stable = ["default", *(m for m in methods if m in VARIANTS)]
    for item in scenarios:
        planted = item if isinstance(item, PlantedData) else item.make()
        log(f"analysis-suite: {planted.scenario.label}")
        rows += evaluate(planted, methods=methods, strongest=strongest and _is_95_5(planted))
        if stability_on(planted):
            stab += [{"scenario": planted.scenario.label, **s} for s in stability(planted, methods=stable)]
    worst = worst_cases(rows)
    variants = {m: check_criteria(rows, stab, method=m) for m in methods if m in VARIANTS}
    return {
        "rows": rows,
        "stability": stab,
        "worst": worst,
        "criteria": check_criteria(rows, stab),
        "variant_criteria": variants,
    }


def worst_cases(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method: the smallest mass ratio and AUROC on separable minorities, the smallest AUROC on
    correlation-only ones in high-variance directions, the largest null deviations, the smallest ESS."""
    out: dict[str, dict[str, float]] = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        sep = [r for r in mine if r["kind"] == "separable"]
        corr = [r for r in mine if r["kind"] == "correlation-high"]
        null = [r for r in mine if r["kind"] == "null"]
        w: dict[str, float] = {"ess_min": min(r["ess"] for r in mine)}
        if sep:
            w["separable_mass_ratio_min"] = min(r["mass_ratio"] for r in sep)
            w["separable_auroc_min"] = min(r["auroc"] for r in sep)
        if corr:
            w["correlation_high_auroc_min"] = min(r["auroc"] for r in corr)
        if null:
            w["null_mass_max_error"] = max(abs(r["mass"] - r["share_planted"]) for r in null)
            w["null_auroc_max_error"] = max(abs(r["auroc"] - 0.5) for r in null)
        w["balance_max"] = max(r["balance"] for r in mine)
        out[method] = {k: round(v, 4) for k, v in w.items()}
    return out


def check_criteria(
    rows: list[dict[str, Any]], stab: list[dict[str, Any]] | None = None, *, method: str = "default"
) -> dict[str, dict[str, Any]]:
    """The issue's criteria for ``method`` (the default, or a variant of it), worst case over what ran:
    {name: {value, target, holds}}. The strongest setting's criteria are the default's only."""
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, value: float, target: str, holds: bool) -> None:
        out[name] = {"value": round(float(value), 4), "target": target, "holds": bool(holds)}

    default = [r for r in rows if r["method"] == method]
    sep = [r for r in default if r["kind"] == "separable"]
    # Shares are realised counts (0.0099 for a planted 1%): compare with half a percent of slack.
    eligible = [r for r in sep if 0.0095 <= r["share"] <= 0.0505]
    small = [r for r in sep if r["share"] < 0.0095]
    if eligible:
        ratio, auroc = min(r["mass_ratio"] for r in eligible), min(r["auroc"] for r in eligible)
        put("separable_1_5pct_mass_ratio", ratio, ">= 5", ratio >= 5)
        put("separable_1_5pct_auroc", auroc, ">= 0.9", auroc >= 0.9)
    if small:
        ratio = min(r["mass_ratio"] for r in small)
        put("separable_0.5pct_mass_ratio", ratio, ">= 3", ratio >= 3)
    corr = [r for r in rows if r["kind"] == "correlation-high"]
    if corr:
        keys = {(r["scenario"], r["n"], r["dim"], r["seed"]) for r in corr}
        shortfall = []
        for key in keys:
            here = [r for r in corr if (r["scenario"], r["n"], r["dim"], r["seed"]) == key]
            best_baseline = max(
                (r["auroc"] for r in here if r["method"] in BASELINES or r["method"] == "histogram"),
                default=0.0,
            )
            d = next(r["auroc"] for r in here if r["method"] == method)
            shortfall.append(d - max(0.65, best_baseline))
        put(
            "correlation_high_auroc_minus_target",
            min(shortfall),
            ">= 0 (target max(0.65, best baseline))",
            min(shortfall) >= 0,
        )
    null = [r for r in default if r["kind"] == "null"]
    if null:
        err = max(abs(r["mass"] - r["share_planted"]) for r in null)
        put("null_mass_max_error", err, "<= 0.01", err <= 0.01)
        err = max(abs(r["auroc"] - 0.5) for r in null)
        put("null_auroc_max_error", err, "<= 0.03", err <= 0.03)
        # Not one of the criteria: the same errors in units of their sampling spread
        # (null_spread). At 2 000 rows and ESS 0.2 N both spreads are about the tolerances,
        # so those fail by chance on some seeds; beyond 3 spreads the weights are biased.
        if all("mass_sd" in r for r in null):

            def spreads(err: float, sd: float) -> float:  # uniform weights: no spread and no error
                return err / sd if sd > 0 else (0.0 if err < 1e-12 else float("inf"))

            z = max(spreads(abs(r["mass"] - r["share_planted"]), r["mass_sd"]) for r in null)
            put("null_mass_max_z", z, "<= 3 (sampling spreads)", z <= 3)
            z = max(spreads(abs(r["auroc"] - 0.5), r["auroc_sd"]) for r in null)
            put("null_auroc_max_z", z, "<= 3 (sampling spreads)", z <= 3)
    if default:
        ess = min(r["ess"] for r in default)
        put("ess_min", ess, ">= 0.1", ess >= 0.1)
    strong = [r for r in rows if r["method"] == "default-strongest"]
    if strong and method == "default":
        bal = max(r["balance"] for r in strong)
        put("strongest_balance_max", bal, "<= 1.5", bal <= 1.5)
        ess = min(r["ess"] for r in strong)
        put("strongest_ess_min", ess, ">= 0.05", ess >= 0.05)
    stab = [s for s in stab or () if s.get("method", "default") == method]
    if stab:
        rho = min(min(s["spearman_seed"], s["spearman_subsample"]) for s in stab)
        put("stability_spearman_min", rho, ">= 0.9", rho >= 0.9)
    return out


def null_spread(weights: np.ndarray, m: int) -> tuple[float, float]:
    """The standard deviations of a random ``m``-row subset's weight mass and of its AUROC under these
    weights: how far from (share, 0.5) the null control's planted label lands by chance alone.

    Mass: sampling ``m`` of N rows without replacement, Var = m (N − m) / (N − 1) · σ², σ² the
    variance of the normalised weights. AUROC: the Mann–Whitney null variance with the tie correction
    (clipped weights tie at the cap), [(N + 1) − Σ(t³ − t) / (N (N − 1))] / (12 m (N − m)).
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    n = w.size
    if not 0 < m < n:
        raise InvalidInput(f"the subset size must be in 1..{n - 1}, got {m}")
    mass_var = m * (n - m) / (n - 1) * float(w.var())
    _, ties = np.unique(w, return_counts=True)
    ties = ties.astype(np.float64)
    auroc_var = ((n + 1) - float((ties**3 - ties).sum()) / (n * (n - 1))) / (12.0 * m * (n - m))
    return float(np.sqrt(mass_var)), float(np.sqrt(max(auroc_var, 0.0)))


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per scenario, one ``mass ratio / AUROC / ESS / balance`` cell per method."""
    methods = [m for m in (*METHODS, "default-strongest") if any(r["method"] == m for r in rows)]
    keys: list[tuple] = []
    for r in rows:
        key = (r["scenario"], r["n"], r["dim"], r["seed"])
        if key not in keys:
            keys.append(key)
    lines = ["| scenario | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for key in keys:
        cells = []
        for m in methods:
            r = next(
                (r for r in rows if (r["scenario"], r["n"], r["dim"], r["seed"]) == key and r["method"] == m),
                None,
            )
            cells.append(
                ""
                if r is None
                else f"{r['mass_ratio']:.1f} / {r['auroc']:.2f} / {r['ess']:.2f} / {r['balance']:.1f}"
            )
        lines.append(f"| {key[0]} n{key[1]} d{key[2]} s{key[3]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(options: Any) -> dict[str, Any]:
    """``analysis_suite``: the quick subset with ``options.quick``, else the full suite at 2k and 10k rows,
    plus the real-embeddings scenario when ``options.real_embeddings`` names ``FILE.npy`` (labels
    beside it as ``FILE.csv``)."""
    import sys

    items: list[Any] = list(quick_suite() if options.quick else full_suite())
    real = getattr(options, "real_embeddings", None)
    skipped = []
    if real:
        npy = Path(real)
        planted = load_real(npy, npy.with_suffix(".csv"))
        if len(planted.dataset) >= 50:
            items.append(planted)
        else:
            skipped.append(f"real: {len(planted.dataset)} rows, the analysis needs 50")
    else:
        skipped.append("real: no --real-embeddings given")
    out = run_suite(
        items,
        stability_on=lambda p: (
            p.scenario.seed == 0 and p.kind in ("separable", "null") and p.scenario.n <= 2000
        ),
        log=lambda m: print(m, file=sys.stderr),
    )
    return {"analysis_suite": {**out, "skipped": skipped, "table": format_table(out["rows"])}}
