"""The fairness audit: per-group FNMR/FMR at one global threshold, with identity-bootstrap intervals.

Method (after NIST FRVT's demographic reports): a group's FNMR uses its genuine pairs, its FMR
the impostor pairs with BOTH people in the group; impostor pairs across groups form the
cross-group FMR matrix. One global threshold is used: the deployed one, or the one that gives
``target_fmr`` over all impostor pairs (cells weighted by possible/sampled pairs). Groups with
fewer than ``min_impostor_factor / target_fmr`` scored impostor pairs are flagged and get no
FMR (``null``), since a rate of 1e-3 cannot be measured from a few hundred pairs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.audit.bootstrap import BootstrapReplicates, identity_bootstrap, percentile_interval
from embeddings.audit.metrics import det_curve, differentials, threshold_for_fmr
from embeddings.audit.pairs import PairSet, build_pairs
from embeddings.errors import Cancelled, InvalidDataset, InvalidInput, StorageError

__all__ = ["AuditOptions", "AuditResult", "audit_arrays", "audit_pairs", "run_audit"]

Progress = Callable[[float, str], None]

SCHEMA = "latentface.audit/1"
INTERSECTION_SEP = " & "


@dataclass(frozen=True)
class AuditOptions:
    """Tuning of the audit; the defaults suit evaluation sets up to ~10^5 images."""

    n_bootstrap: int = 1000
    confidence: float = 0.95
    impostor_budget: int = 1_000_000  # scored impostor pairs per within-group cell, at most
    cross_budget: int = 200_000  # per cross-group cell
    max_genuine_pairs: int = 5_000_000
    min_impostor_factor: float = 10.0  # a group needs >= factor / target_fmr impostor pairs
    min_genuine_pairs: int = 30
    n_curve_points: int = 60
    n_hist_bins: int = 60

    def __post_init__(self) -> None:
        if self.n_bootstrap < 10:
            raise InvalidInput("n_bootstrap must be >= 10")
        if not 0.5 < self.confidence < 1.0:
            raise InvalidInput("confidence must be in (0.5, 1)")
        if self.impostor_budget < 1 or self.cross_budget < 0:
            raise InvalidInput("impostor budgets must be positive")


@dataclass
class AuditResult:
    """The audit's numbers (``report``, JSON-ready) and how to write them as report.json + report.html."""

    report: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.report, indent=2, allow_nan=False)

    def to_html(self) -> str:
        from embeddings.audit.report_html import render_html

        return render_html(self.report)

    def write(self, out_dir: Path | str) -> dict[str, Path]:
        """Write ``report.json`` and ``report.html`` into ``out_dir`` (created); returns their paths."""
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            paths = {"report.json": out / "report.json", "report.html": out / "report.html"}
            paths["report.json"].write_text(self.to_json() + "\n", encoding="utf-8")
            paths["report.html"].write_text(self.to_html(), encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"cannot write the audit report to {out}: {exc}") from exc
        return paths


def _stage(progress: Progress | None, should_stop: Callable[[], bool] | None, lo: float, hi: float) -> Progress:
    def report(frac: float, msg: str) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("audit cancelled")
        if progress is not None:
            progress(lo + (hi - lo) * min(max(frac, 0.0), 1.0), msg)

    return report


def _num(x: float | None) -> float | None:
    """JSON-safe float: NaN and infinities become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ci(bounds: tuple[float, float] | None) -> list[float | None] | None:
    return None if bounds is None else [_num(bounds[0]), _num(bounds[1])]


def _interval(errors: int, n: int, replicates: np.ndarray, conf: float) -> list[float | None] | None:
    """The interval of a rate with ``errors`` in ``n``: [0, 3/N] (the rule of three) when nothing
    failed, else the bootstrap percentile interval of its ``replicates``."""
    return [0.0, 3.0 / n] if errors == 0 else _ci(percentile_interval(replicates, conf))


def _ratio_replicates(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-replicate max/min and max/geomean across the columns of r (inf where undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, mn = r.max(axis=1), r.min(axis=1)
        maxmin = np.where(mx == 0, 1.0, mx / mn)
        geo = np.exp(np.mean(np.log(r), axis=1))
        maxgeo = np.where(mx == 0, 1.0, mx / geo)
    bad = np.isnan(r).any(axis=1)
    maxmin[bad] = np.nan
    maxgeo[bad] = np.nan
    return maxmin, maxgeo


def audit_pairs(
    pairs: PairSet,
    group_names: Sequence[str],
    *,
    target_fmr: float = 1e-3,
    threshold: float | None = None,
    options: AuditOptions | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """The report's numbers from scored pairs (everything but the data summary and latent section)."""
    opts = options or AuditOptions()
    if not 0.0 < target_fmr < 1.0:
        raise InvalidInput(f"target_fmr must be in (0, 1), got {target_fmr!r}")
    if len(group_names) != pairs.n_groups:
        raise InvalidInput("one name per group is required")
    stage = _stage(progress, should_stop, 0.0, 1.0)
    G = pairs.n_groups
    imp = pairs.impostor_scores.astype(np.float64)
    gen = pairs.genuine_scores.astype(np.float64)
    if imp.size == 0:
        raise InvalidDataset("no impostor pairs: the audit needs at least two labelled identities")
    weights = pairs.impostor_weights()
    if threshold is None:
        t = threshold_for_fmr(imp, target_fmr, weights=weights)
        source = "target_fmr"
    else:
        t = float(threshold)
        source = "given"
    stage(0.05, "error rates")
    min_imp = opts.min_impostor_factor / target_fmr

    false_match = imp >= t
    lo, hi = pairs.impostor_cells
    gen_group = pairs.identity_group[pairs.genuine_identity]
    n_ids = len(pairs.identity_group)
    gen_counts = np.bincount(pairs.genuine_identity, minlength=n_ids)
    gen_errors = np.bincount(pairs.genuine_identity, weights=(gen < t).astype(np.float64), minlength=n_ids)

    stage(0.1, "identity bootstrap")
    reps = identity_bootstrap(
        identity_group=pairs.identity_group,
        n_groups=G,
        genuine_errors=gen_errors,
        genuine_counts=gen_counts,
        image_counts=pairs.image_counts,
        error_a=pairs.impostor_a[false_match],
        error_b=pairs.impostor_b[false_match],
        cell_sampled=pairs.cell_sampled,
        cell_possible=pairs.cell_possible,
        n_boot=opts.n_bootstrap,
        seed=seed,
    )
    stage(0.6, "per-group results")
    conf = opts.confidence
    groups: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    fnmr_point: dict[str, float | None] = {}
    fmr_point: dict[str, float | None] = {}
    hist_edges = np.linspace(min(gen.min(initial=1.0), imp.min()), max(gen.max(initial=-1.0), imp.max()), opts.n_hist_bins + 1)
    hists: dict[str, dict[str, list[int]]] = {}
    for g, name in enumerate(group_names):
        flags: list[str] = []
        g_scores = gen[gen_group == g]
        i_scores = imp[(lo == g) & (hi == g)]
        n_g, n_i = int(g_scores.size), int(i_scores.size)
        n_fnm, n_fm = int(np.sum(g_scores < t)), int(np.sum(i_scores >= t))
        fnmr = fnmr_ci = None
        if n_g < opts.min_genuine_pairs:
            flags.append("too_few_genuine_pairs")
        else:
            fnmr = n_fnm / n_g
            fnmr_ci = _interval(n_fnm, n_g, reps.fnmr[:, g], conf)
            if n_fnm == 0:
                flags.append("zero_false_non_matches")
        fmr = fmr_ci = t_target = None
        if n_i < min_imp:
            flags.append("too_few_impostor_pairs")
        else:
            fmr = n_fm / n_i
            t_target = threshold_for_fmr(i_scores, target_fmr)
            fmr_ci = _interval(n_fm, n_i, reps.fmr[:, g], conf)
            if n_fm == 0:
                flags.append("zero_false_matches")
        fnmr_point[name], fmr_point[name] = fnmr, fmr
        groups[name] = {
            "fnmr": _num(fnmr),
            "fnmr_ci": fnmr_ci,
            "fmr": _num(fmr),
            "fmr_ci": fmr_ci,
            "threshold_for_target": _num(t_target),
            "n_identities": int(np.sum(pairs.identity_group == g)),
            "n_images": int(pairs.image_counts[pairs.identity_group == g].sum()),
            "n_genuine": n_g,
            "n_false_non_matches": n_fnm,
            "n_impostor": n_i,
            "n_false_matches": n_fm,
            "flags": flags,
        }
        curves[name] = det_curve(g_scores, i_scores, n_points=opts.n_curve_points)
        hists[name] = {
            "genuine": np.histogram(g_scores, hist_edges)[0].tolist(),
            "impostor": np.histogram(i_scores, hist_edges)[0].tolist(),
        }

    stage(0.8, "differentials")
    diffs: dict[str, Any] = {}
    for metric, point, rep in (("fmr", fmr_point, reps.fmr), ("fnmr", fnmr_point, reps.fnmr)):
        d = differentials(point)
        cols = [g for g, name in enumerate(group_names) if point[name] is not None]
        d["max_min_ratio_ci"] = d["max_geomean_ratio_ci"] = None
        if len(cols) >= 2:
            maxmin, maxgeo = _ratio_replicates(rep[:, cols])
            d["max_min_ratio_ci"] = _ci(percentile_interval(maxmin, conf))
            d["max_geomean_ratio_ci"] = _ci(percentile_interval(maxgeo, conf))
        d["max_min_ratio"] = _num(d["max_min_ratio"])  # type: ignore[arg-type]
        d["max_geomean_ratio"] = _num(d["max_geomean_ratio"])  # type: ignore[arg-type]
        diffs[metric] = d

    cross_fmr: list[list[float | None]] = []
    cross_ci: list[list[list[float | None] | None]] = []
    cross_n: list[list[int]] = []
    for g in range(G):
        row, row_ci, row_n = [], [], []
        for h in range(G):
            a, b = min(g, h), max(g, h)
            sel = (lo == a) & (hi == b)
            n = int(sel.sum())
            row_n.append(n)
            if n < min_imp:
                row.append(None)
                row_ci.append(None)
                continue
            errs = int(np.sum(false_match[sel]))
            row.append(errs / n)
            row_ci.append(_interval(errs, n, reps.cross_fmr[:, g, h], conf))
        cross_fmr.append(row)
        cross_ci.append(row_ci)
        cross_n.append(row_n)

    stage(1.0, "done")
    return {
        "threshold": float(t),
        "threshold_source": source,
        "target_fmr": float(target_fmr),
        "confidence": conf,
        "n_bootstrap": opts.n_bootstrap,
        "min_impostor_pairs": min_imp,
        "min_genuine_pairs": opts.min_genuine_pairs,
        "overall": _overall(gen, t, false_match, weights, reps, conf),
        "groups": groups,
        "differentials": diffs,
        "cross_group_fmr": {"groups": list(group_names), "fmr": cross_fmr, "fmr_ci": cross_ci, "n_impostor": cross_n},
        "curves": curves,
        "score_histograms": {"bin_edges": hist_edges.tolist(), "groups": hists},
    }


def _overall(
    gen: np.ndarray,
    t: float,
    false_match: np.ndarray,
    weights: np.ndarray,
    reps: BootstrapReplicates,
    conf: float,
) -> dict[str, Any]:
    """All groups pooled: FNMR over the genuine pairs, FMR over the impostor pairs weighted back to every
    cell's possible pairs; intervals from the same identity bootstrap ([0, 3/N] when nothing failed)."""
    n_fnm, n_fm = int(np.sum(gen < t)), int(np.sum(false_match))
    fnmr = n_fnm / gen.size if gen.size else None
    fnmr_ci = _interval(n_fnm, gen.size, reps.overall_fnmr, conf) if gen.size else None
    fmr = float(np.sum(weights * false_match) / np.sum(weights))
    fmr_ci = _interval(n_fm, false_match.size, reps.overall_fmr, conf)
    return {
        "fnmr": _num(fnmr),
        "fnmr_ci": fnmr_ci,
        "fmr": _num(fmr),
        "fmr_ci": fmr_ci,
        "n_genuine": int(gen.size),
        "n_false_non_matches": n_fnm,
        "n_impostor": int(false_match.size),
        "n_false_matches": n_fm,
    }


def _identity_labels(
    identities: np.ndarray, groups: Mapping[str, np.ndarray], group_by: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, dict[str, int]]:
    """Map images to identity indices and identities to group indices (majority label per identity)."""
    ids = np.asarray(identities).astype(str)
    n = len(ids)
    missing = [c for c in group_by if c not in groups]
    if missing:
        raise InvalidInput(f"group column(s) {missing} not in the labels; available: {sorted(groups)}")
    cols = [np.asarray(groups[c]).astype(str) for c in group_by]
    if any(len(c) != n for c in cols):
        raise InvalidDataset("group columns must have one value per image")
    stripped = [np.char.strip(c) for c in cols]
    unlabelled = np.zeros(n, bool)
    for c in stripped:
        unlabelled |= (c == "") | (np.char.lower(c) == "nan")
    label = stripped[0].astype(object)
    for c in stripped[1:]:
        label = label + INTERSECTION_SEP + c.astype(object)
    label = np.where(unlabelled, "", label.astype(str))
    id_names, image_identity = np.unique(ids, return_inverse=True)
    label_names, label_code = np.unique(label, return_inverse=True)
    # majority label per identity: count (identity, label) pairs, keep the most frequent
    key = image_identity.astype(np.int64) * len(label_names) + label_code
    uk, cnt = np.unique(key, return_counts=True)
    who, lab = uk // len(label_names), uk % len(label_names)
    order = np.lexsort((-cnt, who))
    first = np.r_[True, who[order][1:] != who[order][:-1]]
    ident_label = np.empty(len(id_names), np.int64)
    ident_label[who[order][first]] = lab[order][first]
    n_labels_per_id = np.bincount(who, minlength=len(id_names))
    group_names = [s for s in label_names.tolist() if s != ""]
    remap = np.array([group_names.index(s) if s != "" else -1 for s in label_names.tolist()], dtype=np.int64)
    identity_group = remap[ident_label]
    stats = {
        "n_identities_unlabelled": int(np.sum(identity_group < 0)),
        "n_identities_mixed_labels": int(np.sum(n_labels_per_id > 1)),
    }
    return image_identity.astype(np.int64), identity_group, group_names, id_names, stats


def _latent_section(analysis_dir: Path, group_by: Sequence[str], max_clusters: int = 10) -> dict[str, Any]:
    path = Path(analysis_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidDataset(f"{path}: no latent analysis summary (run `latentface analyze` first)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidDataset(f"{path}: unreadable latent analysis summary: {exc}") from exc
    if not isinstance(summary, dict):
        raise InvalidDataset(f"{path}: expected a JSON object")
    keep_cols = set(group_by)
    clusters = []
    for c in list(summary.get("clusters", []))[:max_clusters]:
        comp = c.get("group_composition", {}) or {}
        clusters.append(
            {
                "id": c.get("id"),
                "size": c.get("size"),
                "mass": _num(c.get("mass")),
                "mean_density": _num(c.get("mean_density")),
                "mean_weight": _num(c.get("mean_weight")),
                "group_composition": {k: v for k, v in comp.items() if k in keep_cols} or comp,
                "direction_norm": _num(c.get("direction_norm")),
                "top_alignment": _top_alignment(c.get("group_alignment") or {}),
            }
        )
    gwm = summary.get("group_weight_mass", {}) or {}
    return {
        "source": str(path),
        "method": summary.get("method"),
        "n": summary.get("n"),
        "effective_sample_size": _num(summary.get("effective_sample_size")),
        "clusters": clusters,
        "group_weight_mass": {k: v for k, v in gwm.items() if k in keep_cols} or gwm,
    }


def _top_alignment(alignment: Mapping[str, Mapping[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """The ``top`` group values whose centroid direction best matches a cluster's, highest cosine first.

    All the analysis' label columns compete, not only the audited ones: the attribute that sets a
    cluster apart may be one the audit does not group by."""
    rows = [
        {"column": str(col), "value": str(val), "cosine": _num(cos)}
        for col, values in alignment.items()
        for val, cos in (values or {}).items()
        if _num(cos) is not None
    ]
    rows.sort(key=lambda r: (-r["cosine"], r["column"], r["value"]))
    return rows[:top]


def audit_arrays(
    vectors: np.ndarray,
    identities: np.ndarray,
    groups: Mapping[str, np.ndarray],
    *,
    group_by: Sequence[str],
    target_fmr: float = 1e-3,
    threshold: float | None = None,
    analysis_dir: Path | None = None,
    model_id: str | None = None,
    options: AuditOptions | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AuditResult:
    """Audit plain arrays: L2-normalised ``vectors`` (N, D), ``identities`` (N,), group columns (N,) each."""
    opts = options or AuditOptions()
    if not group_by:
        raise InvalidInput("group_by needs at least one column")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(identities):
        raise InvalidDataset("vectors must be (N, D) with one identity per row")
    if not np.all(np.isfinite(vectors)):
        raise InvalidDataset("vectors contain NaN or infinity")
    image_identity, identity_group, names, _, stats = _identity_labels(identities, groups, group_by)
    if not names:
        raise InvalidDataset(f"no identity has a value in {list(group_by)}")
    stage = _stage(progress, should_stop, 0.0, 0.6)
    pairs = build_pairs(
        vectors,
        image_identity,
        identity_group,
        n_groups=len(names),
        impostor_budget=opts.impostor_budget,
        cross_budget=opts.cross_budget,
        max_genuine_pairs=opts.max_genuine_pairs,
        seed=seed,
        progress=stage,
        should_stop=should_stop,
    )
    report: dict[str, Any] = {"schema": SCHEMA, "generated_at": datetime.now(UTC).isoformat(timespec="seconds")}
    report["model_id"] = model_id
    report["group_by"] = list(group_by)
    core = audit_pairs(
        pairs,
        names,
        target_fmr=target_fmr,
        threshold=threshold,
        options=opts,
        seed=seed,
        progress=_stage(progress, should_stop, 0.6, 1.0),
        should_stop=should_stop,
    )
    labelled = identity_group >= 0
    report["data"] = {
        "n_images": int(len(vectors)),
        "n_images_audited": int(pairs.image_counts.sum()),
        "n_identities": int(len(identity_group)),
        "n_identities_audited": int(labelled.sum()),
        **stats,
        "n_identities_single_image": int(np.sum(labelled & (pairs.image_counts == 1))),
        "genuine_pairs_sampled_fraction": pairs.genuine_sampled_fraction,
        "impostor_budget_within_group": opts.impostor_budget,
        "impostor_budget_cross_group": opts.cross_budget,
        "impostor_pairs_possible": float(np.triu(pairs.cell_possible).sum()),
        "impostor_pairs_scored": int(pairs.impostor_scores.size),
        "seed": seed,
    }
    report.update(core)
    report["latent"] = _latent_section(analysis_dir, group_by) if analysis_dir is not None else None
    report["caveats"] = _caveats(report)
    return AuditResult(report=report)


def _caveats(report: Mapping[str, Any]) -> list[str]:
    out = [
        "Intervals are percentile bootstrap intervals that resample identities within each group "
        f"({report['n_bootstrap']} replicates); the threshold is held fixed. Where a group has no errors "
        "the interval is [0, 3/N] (the 'rule of three' 95% upper bound).",
        f"A group's FMR is reported only when it has at least {report['min_impostor_pairs']:.0f} impostor "
        "pairs (10 / target FMR); otherwise it is flagged 'too_few_impostor_pairs' and left blank.",
        "Each identity is assigned the most frequent group label among its images.",
    ]
    d = report["data"]
    if d["impostor_pairs_scored"] < d["impostor_pairs_possible"]:
        out.append(
            f"Impostor pairs were sampled: {d['impostor_pairs_scored']:,} of {d['impostor_pairs_possible']:,.0f} "
            "possible were scored (uniformly within each pair of groups, seeded)."
        )
    if d["n_identities_mixed_labels"]:
        out.append(f"{d['n_identities_mixed_labels']} identities carry more than one label across their images.")
    if d["n_identities_unlabelled"]:
        out.append(f"{d['n_identities_unlabelled']} identities have no label and were left out.")
    if report["threshold_source"] == "given":
        out.append("The threshold was given (a deployed operating point), not set from the target FMR.")
    return out


def run_audit(
    dataset: Any,
    *,
    group_by: Sequence[str],
    target_fmr: float = 1e-3,
    threshold: float | None = None,
    analysis_dir: Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    options: AuditOptions | None = None,
) -> AuditResult:
    """Audit a :class:`embeddings.dataset.Dataset` (vectors, identities, groups, model_id).

    Job entry point for the service and the CLI. Raises ``InvalidDataset`` when the dataset has
    no identity labels, ``Cancelled`` when ``should_stop()`` turns true.
    """
    identities = getattr(dataset, "identities", None)
    if identities is None:
        raise InvalidDataset("the audit needs an 'identity' column in the labels")
    return audit_arrays(
        dataset.vectors,
        identities,
        getattr(dataset, "groups", None) or {},
        group_by=group_by,
        target_fmr=target_fmr,
        threshold=threshold,
        analysis_dir=analysis_dir,
        model_id=getattr(dataset, "model_id", None),
        options=options,
        seed=seed,
        progress=progress,
        should_stop=should_stop,
    )
