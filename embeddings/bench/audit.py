"""Benchmark part ``audit``: seconds to audit 20k identities x 5 faces in 4 groups (embeddings in, report out)."""

from __future__ import annotations

import time
from typing import Any

from embeddings.audit import run_audit
from embeddings.synthetic.verification import make_verification_set

__all__ = ["run"]


def run(options: Any) -> dict[str, Any]:
    """Returns ``audit_s`` (the whole audit: pairs, bootstrap, report.json + report.html written)."""
    per_group = 500 if options.quick else 5000
    ds = make_verification_set(
        identities_per_group={g: per_group for g in ("g0", "g1", "g2", "g3")},
        images_per_identity=5,
        dim=512,
        center_bias={"g0": 0.0, "g1": 0.15, "g2": 0.25, "g3": 0.35},
        image_noise={"g0": 1.1, "g1": 1.2, "g2": 1.1, "g3": 1.3},
        seed=options.seed,
    )
    out = options.work_dir / "audit"
    t0 = time.perf_counter()
    result = run_audit(ds, group_by=["group"], target_fmr=1e-3, seed=options.seed)
    t_audit = time.perf_counter() - t0
    result.write(out)
    total = time.perf_counter() - t0
    rep = result.report
    return {
        "audit_s": round(total, 2),
        "audit_compute_s": round(t_audit, 2),
        "audit_identities": 4 * per_group,
        "audit_images": len(ds.vectors),
        "audit_impostor_pairs": rep["data"]["impostor_pairs_scored"],
        "audit_fmr_max_min_ratio": rep["differentials"]["fmr"]["max_min_ratio"],
    }
