"""Builds the domain objects from a :class:`ServiceConfig` (shared by the server, the CLI and jobs)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.config import ServiceConfig

__all__ = ["build_encoder", "build_engine", "build_pipeline"]


def build_encoder(config: ServiceConfig):
    from embeddings.encode import FaceEncoder

    return FaceEncoder(config.encoder, allow_download=config.allow_download)


def build_pipeline(
    config: ServiceConfig,
    *,
    encoder=None,
    encode_fn: Callable[[np.ndarray], np.ndarray] | None = None,
):
    """The detect → quality → crop → encode pipeline. Raises WeightsUnavailable when weights are missing."""
    from embeddings.detect import FaceDetector
    from embeddings.pipeline import FacePipeline

    encoder = encoder if encoder is not None else build_encoder(config)
    detector = FaceDetector(config.detector, config.quality)
    return FacePipeline(detector, encoder, limits=config.decode, encode_fn=encode_fn)


def build_engine(config: ServiceConfig, *, pipeline=None):
    """Pipeline + durable gallery under ``config.data_dir``."""
    from embeddings.engine import FaceEngine
    from embeddings.gallery import Gallery

    pipeline = pipeline if pipeline is not None else build_pipeline(config)
    return FaceEngine(pipeline, Gallery.open(config.gallery))
