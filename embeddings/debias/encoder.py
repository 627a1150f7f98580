"""Serving a trained adapter: the base encoder followed by the adapter, under one model id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embeddings.debias.adapter import DebiasAdapter, adapter_digest, load_adapter
from embeddings.errors import InvalidInput

__all__ = ["AdaptedEncoder"]


class AdaptedEncoder:
    """``base`` encoder, then ``adapter``: what the pipeline, the batcher and the server see as the encoder.

    ``model_id`` is the base's plus ``+adapter-<sha256[:12]>`` of the adapter file, so a collection
    enrolled through the adapter refuses plain vectors and vice versa; ``embedding_dim`` is the
    adapter's output size. Every other attribute (``crop_size``, ``device``, ``align``, …) is the base's.
    """

    def __init__(self, base: Any, adapter: DebiasAdapter, *, digest: str) -> None:
        if adapter.in_dim_ != base.embedding_dim:
            raise InvalidInput(
                f"the adapter takes {adapter.in_dim_}-d embeddings but {base.model_id} makes {base.embedding_dim}-d ones"
            )
        self.base = base
        self.adapter = adapter
        self.adapter_digest = digest
        self.model_id = f"{base.model_id}+adapter-{digest[:12]}"
        self.embedding_dim = int(adapter.out_dim)

    @classmethod
    def from_file(cls, base: Any, path: str | Path) -> AdaptedEncoder:
        """Wrap ``base`` with the adapter saved at ``path``."""
        return cls(base, load_adapter(path), digest=adapter_digest(path))

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found here: everything else is the base encoder's.
        if name == "base":  # not yet set (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        return f"AdaptedEncoder(model_id={self.model_id!r})"

    def encode(self, crops: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) crops → (N, ``embedding_dim``) L2-normalised float32 rows."""
        return self.adapter.transform(np.asarray(self.base.encode(crops), dtype=np.float32))

    def encode_fp32_reference(self, crops: np.ndarray, **kwargs: Any) -> np.ndarray:
        return self.adapter.transform(np.asarray(self.base.encode_fp32_reference(crops, **kwargs), dtype=np.float32))
