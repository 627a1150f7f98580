"""The debias loop as one job: split → latent weights → two adapters → three audits → report and adapter files."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.audit import AuditOptions, audit_arrays
from embeddings.dataset import Dataset
from embeddings.debias.adapter import DebiasAdapter, adapter_digest
from embeddings.errors import Cancelled, InvalidDataset, InvalidInput, StorageError

__all__ = ["DEFAULT_WEIGHT_ALPHA", "MODELS", "DebiasResult", "run_debias", "split_identities"]

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]

SCHEMA = "latentface.debias/1"
MODELS = ("base", "uniform", "weighted")
# α = 0.1 (knn, gmm) instead of the analysis' 0.01: a rare group is drawn several times more often but not to parity,
# so the majority keeps most of its draws (measured on the planted data: the minority's share of draws 0.27
# instead of 0.47, majority FNMR +7% instead of +12% against uniform, the minority's gain the same).
DEFAULT_WEIGHT_ALPHA = 0.1


@dataclass
class DebiasResult:
    """The three audits side by side (``report``, JSON-ready) and the two trained adapters."""

    report: dict[str, Any]
    adapters: dict[str, DebiasAdapter] = field(repr=False)
    weights: np.ndarray = field(repr=False)

    def to_json(self) -> str:
        return json.dumps(self.report, indent=2, allow_nan=False)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """``report.json``, ``report.html``, ``adapter_uniform.pt`` and ``adapter_weighted.pt`` in ``out_dir``."""
        from embeddings.debias.report_html import render_html

        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            paths = {name: self.adapters[name].save(out / f"adapter_{name}.pt") for name in ("uniform", "weighted")}
            paths = {f"adapter_{k}.pt": v for k, v in paths.items()}
            # The id a server gives the adapted model (AdaptedEncoder), so a collection can be traced to its file.
            self.report["adapters"] = {
                name: {"file": name, "sha256": (d := adapter_digest(path)),
                       "model_id": f"{self.report.get('model_id') or 'unknown'}+adapter-{d[:12]}"}
                for name, path in paths.items()
            }  # fmt: skip
            paths["report.json"] = out / "report.json"
            paths["report.json"].write_text(self.to_json() + "\n", encoding="utf-8")
            paths["report.html"] = out / "report.html"
            paths["report.html"].write_text(render_html(self.report), encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"cannot write the debias report to {out}: {exc}") from exc
        return paths


def split_identities(
    identities: np.ndarray, strata: np.ndarray | None, *, eval_fraction: float, seed: int
) -> np.ndarray:
    """A boolean mask of the evaluation rows: ``eval_fraction`` of the identities of every stratum, seeded.

    Identity-disjoint: every image of an identity falls on the same side. A stratum (an identity's
    first group label) with a single identity keeps it for training.
    """
    if not 0 < eval_fraction < 1:
        raise InvalidInput(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    names, first, inverse = np.unique(identities, return_index=True, return_inverse=True)
    label = np.zeros(len(names), dtype=np.int64) if strata is None else np.unique(strata[first], return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    held = np.zeros(len(names), dtype=bool)
    for s in np.unique(label):
        members = np.flatnonzero(label == s)
        k = int(round(eval_fraction * len(members)))
        k = min(k, len(members) - 1)
        held[rng.permutation(members)[:k]] = True
    return held[inverse]


def _group_label(groups: Mapping[str, np.ndarray], group_by: Sequence[str]) -> np.ndarray:
    label = np.asarray(groups[group_by[0]]).astype(str).astype(object)
    for col in group_by[1:]:
        label = label + " & " + np.asarray(groups[col]).astype(str).astype(object)
    return label.astype(str)


def _stage(progress: Progress | None, stop: ShouldStop | None, lo: float, hi: float) -> Progress:
    def report(frac: float, msg: str) -> None:
        if stop is not None and stop():
            raise Cancelled("the debias run was cancelled")
        if progress is not None:
            progress(lo + (hi - lo) * min(max(frac, 0.0), 1.0), msg)

    return report


def run_debias(
    dataset: Dataset,
    *,
    group_by: Sequence[str],
    target_fmr: float = 1e-3,
    eval_fraction: float = 0.3,
    adapter_params: Mapping[str, Any] | None = None,
    analysis_params: Mapping[str, Any] | None = None,
    audit_options: AuditOptions | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> DebiasResult:
    """Train an adapter with uniform and with latent-weight sampling; audit base, uniform and weighted.

    The identities are split (seeded, ``eval_fraction`` of each group's identities held out, no
    identity on both sides). :func:`embeddings.latent.run_analysis` on the training rows gives the
    weights (``analysis_params`` pass through: method, alpha — default :data:`DEFAULT_WEIGHT_ALPHA` for knn and gmm —, n_vaes, …); two
    :class:`~embeddings.debias.DebiasAdapter` with the same seed and ``adapter_params`` train on the
    same rows, one drawing them uniformly, one by those weights. The evaluation rows are audited three
    times — raw embeddings, uniform adapter, weighted adapter — each at its own threshold for the one
    ``target_fmr``, with the audit's identity-bootstrap intervals. Group columns are optional for
    training but ``group_by`` names the ones the audits compare.
    """
    from embeddings.latent import DEFAULT_METHOD, run_analysis

    if dataset.identities is None:
        raise InvalidDataset("debiasing needs identity labels (an 'identity' column)")
    group_by = [c for c in group_by if c]
    if not group_by:
        raise InvalidInput("group_by needs at least one column")
    missing = [c for c in group_by if c not in dataset.groups]
    if missing:
        raise InvalidInput(f"group column(s) {missing} not in the labels; available: {sorted(dataset.groups)}")
    if not 0.0 < target_fmr < 1.0:
        raise InvalidInput(f"target_fmr must be in (0, 1), got {target_fmr!r}")
    label = _group_label(dataset.groups, group_by)
    held = split_identities(dataset.identities, label, eval_fraction=eval_fraction, seed=seed)
    train, evaluation = dataset.subset(np.flatnonzero(~held)), dataset.subset(np.flatnonzero(held))
    if len(np.unique(train.identities)) < 2 or len(np.unique(evaluation.identities)) < 2:
        raise InvalidDataset("need at least two identities on each side of the train/evaluation split")

    aparams = {"seed": seed, **dict(analysis_params or {})}
    if aparams.get("method", DEFAULT_METHOD) != "histogram":  # histogram's α is the lab's smoothing, not relative
        aparams.setdefault("alpha", DEFAULT_WEIGHT_ALPHA)
    analysis = run_analysis(
        train, **aparams,
        progress=_stage(progress, should_stop, 0.0, 0.3), should_stop=should_stop,
    )  # fmt: skip
    weights = analysis.weights
    params = {"seed": seed, **dict(adapter_params or {})}
    adapters: dict[str, DebiasAdapter] = {}
    for i, (name, w) in enumerate((("uniform", None), ("weighted", weights))):
        lo = 0.3 + 0.25 * i
        adapters[name] = DebiasAdapter(**params).fit(
            train.vectors, train.identities, sample_weight=w,
            progress=_stage(progress, should_stop, lo, lo + 0.25), should_stop=should_stop,
        )  # fmt: skip

    opts = audit_options or AuditOptions()
    vectors = {"base": evaluation.vectors, **{k: a.transform(evaluation.vectors) for k, a in adapters.items()}}
    models: dict[str, Any] = {}
    for i, name in enumerate(MODELS):
        lo = 0.8 + 0.2 * i / len(MODELS)
        audit = audit_arrays(
            vectors[name], evaluation.identities, evaluation.groups, group_by=group_by, target_fmr=target_fmr,
            model_id=_model_id(dataset.model_id, name), options=opts, seed=seed,
            progress=_stage(progress, should_stop, lo, lo + 0.2 / len(MODELS)), should_stop=should_stop,
        )  # fmt: skip
        models[name] = audit.report

    train_label = label[~held]
    report = {
        "schema": SCHEMA,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_id": dataset.model_id,
        "group_by": list(group_by),
        "target_fmr": float(target_fmr),
        "seed": seed,
        "split": {
            "eval_fraction": eval_fraction,
            "train_images": len(train),
            "train_identities": int(len(np.unique(train.identities))),
            "eval_images": len(evaluation),
            "eval_identities": int(len(np.unique(evaluation.identities))),
        },
        "weights": {
            "method": analysis.method,
            "params": analysis.params,
            "effective_sample_size": analysis.effective_sample_size,
            "groups": {
                str(g): {"data_share": float(np.mean(train_label == g)), "weight_mass": float(weights[train_label == g].sum())}
                for g in np.unique(train_label)
            },
        },
        "training": {
            name: {
                "params": a.get_params(),
                "in_dim": a.in_dim_,
                "n_identities": a.n_identities_,
                "seconds": round(a.fit_seconds_, 2),
                "loss_per_epoch": [round(v, 4) for v in a.loss_history_],
            }
            for name, a in adapters.items()
        },
        "models": models,
    }
    report["comparison"] = _comparison(models)
    return DebiasResult(report=report, adapters=adapters, weights=weights)


def _model_id(base: str | None, name: str) -> str | None:
    if name == "base":
        return base
    return f"{base or 'unknown'}+adapter-{name}"


def _rel(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return (new - old) / old


def _comparison(models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Weighted against uniform: relative change of each group's FNMR, the overall FNMR and the FNMR max/min
    ratio (negative is better), and whether a group's weighted FNMR lies outside the uniform one's interval."""
    u, w = models["uniform"], models["weighted"]
    groups = {}
    for name, gu in u["groups"].items():
        gw = w["groups"].get(name, {})
        ci = gu.get("fnmr_ci")
        groups[name] = {
            "fnmr_uniform": gu.get("fnmr"),
            "fnmr_weighted": gw.get("fnmr"),
            "fnmr_relative_change": _rel(gw.get("fnmr"), gu.get("fnmr")),
            "weighted_outside_uniform_ci": None
            if ci is None or gw.get("fnmr") is None or None in ci
            else bool(gw["fnmr"] < ci[0] or gw["fnmr"] > ci[1]),
        }
    du, dw = u["differentials"]["fnmr"]["max_min_ratio"], w["differentials"]["fnmr"]["max_min_ratio"]
    return {
        "groups": groups,
        "overall_fnmr_relative_change": _rel(w["overall"]["fnmr"], u["overall"]["fnmr"]),
        "fnmr_max_min_ratio": {"uniform": du, "weighted": dw, "relative_change": _rel(dw, du)},
    }
