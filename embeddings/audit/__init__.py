"""Fairness audit: per-group verification error rates with identity-bootstrap intervals.

``run_audit(dataset, group_by=[...])`` returns an :class:`AuditResult` whose ``write(out_dir)``
produces ``report.json`` (every number, keyed for machines) and a self-contained ``report.html``.
"""

from __future__ import annotations

from embeddings.audit.audit import AuditOptions, AuditResult, audit_arrays, audit_pairs, run_audit
from embeddings.audit.bootstrap import BootstrapReplicates, identity_bootstrap, percentile_interval
from embeddings.audit.metrics import (
    det_curve,
    differentials,
    false_match_rate,
    false_non_match_rate,
    threshold_for_fmr,
)
from embeddings.audit.pairs import PairSet, build_pairs

__all__ = [
    "AuditOptions",
    "AuditResult",
    "BootstrapReplicates",
    "PairSet",
    "audit_arrays",
    "audit_pairs",
    "build_pairs",
    "det_curve",
    "differentials",
    "false_match_rate",
    "false_non_match_rate",
    "identity_bootstrap",
    "percentile_interval",
    "run_audit",
    "threshold_for_fmr",
]
