"""The debias loop: train a small adapter on the frozen encoder with latent-density weights, and audit it.

``run_debias(dataset, group_by=[...])`` splits the identities, trains a :class:`DebiasAdapter` twice
(uniform and latent-weight sampling) and audits the base encoder and both adapters on the held-out
identities; its :class:`DebiasResult` writes ``report.json``, ``report.html`` and the two adapter
files. :class:`AdaptedEncoder` serves an adapter after the encoder under its own model id.
"""

from __future__ import annotations

from embeddings.debias.adapter import ADAPTER_FORMAT, DebiasAdapter, adapter_digest, load_adapter
from embeddings.debias.encoder import AdaptedEncoder
from embeddings.debias.run import MODELS, DebiasResult, run_debias, split_identities

__all__ = [
    "ADAPTER_FORMAT",
    "AdaptedEncoder",
    "DebiasAdapter",
    "DebiasResult",
    "MODELS",
    "adapter_digest",
    "load_adapter",
    "run_debias",
    "split_identities",
]
