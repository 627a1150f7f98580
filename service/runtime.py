"""Builds the domain objects from a :class:`ServiceConfig` (shared by the server, the CLI and jobs)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from service.config import ServiceConfig

__all__ = ["build_encoder", "build_engine", "build_pipeline", "open_engine"]

log = logging.getLogger("latentface.model")


def build_encoder(config: ServiceConfig):
    """The encoder of the data directory's model (chosen and recorded on first use, see
    service/model_choice.py). Raises WeightsUnavailable with the remedy when it is missing."""
    from embeddings.encode import create_encoder
    from service.model_choice import choose_weights, record_choice

    choice = choose_weights(config.data_dir, config.encoder, allow_download=config.allow_download)
    encoder_config = dataclasses.replace(config.encoder, weights=choice.weights)
    encoder = create_encoder(encoder_config, allow_download=config.allow_download)
    if not choice.recorded:
        record_choice(config.data_dir, choice.weights, encoder.model_id, choice.reason)
        log.warning("model for data directory %s: %s (%s); recorded, later starts use it", config.data_dir,
                    choice.weights, choice.reason)
    if getattr(encoder, "is_random", False):
        log.warning("encoder weights are RANDOM (%s): results are meaningless for recognition", encoder.model_id)
    if config.encoder.adapter is not None:  # after the record: the data dir remembers its weights, not the adapter
        from embeddings.debias import AdaptedEncoder

        encoder = AdaptedEncoder.from_file(encoder, config.encoder.adapter)
    return encoder


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
    """Pipeline + durable gallery: under ``config.data_dir``, or PostgreSQL + Milvus when ``config.store``
    and ``config.vectors`` are set; new collections start at the model's default threshold unless the
    config sets one."""
    from embeddings.backends import open_gallery
    from embeddings.engine import FaceEngine

    pipeline = pipeline if pipeline is not None else build_pipeline(config)
    pretrained = getattr(pipeline.encoder, "pretrained", None)
    gallery = open_gallery(
        config.gallery_for(getattr(pretrained, "default_threshold", None)), store=config.store, vectors=config.vectors
    )
    return FaceEngine(pipeline, gallery)


def open_engine(config: ServiceConfig, *, background: bool = True):
    """An engine over the configured gallery without a face pipeline (collections, subjects, deletes,
    datasets, thresholds): CLI commands that need no encoder talk to the gallery through it."""
    from embeddings.backends import open_gallery
    from embeddings.engine import FaceEngine

    return FaceEngine(None, open_gallery(config.gallery, store=config.store, vectors=config.vectors, background=background))
