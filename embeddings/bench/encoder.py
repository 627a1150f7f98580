"""Benchmark part ``encoder``: the fast encode path against facenet-pytorch's plain fp32 default.

Both paths embed the same seeded crops with the same weights in the same process: the fast path
(BatchNorm folded, channels-last, bf16 autocast where the hardware supports it) at the encoder's
batch size, the baseline exactly as facenet-pytorch runs (fp32, NCHW, batch 32). Throughput is the
median over repeats after a warm-up; ``encoder_cosine_min`` is the worst agreement between the two
on any crop (the target is >= 0.999). Weights are seeded random unless ``options.weights`` names a
checkpoint that is available offline; ``encoder_weights`` says which were used.

The crops are jittered face crops (shift, scale, mirror, brightness and contrast) of
scikit-image's astronaut photo when scikit-image is installed, since agreement is best measured
on what the encoder is for; otherwise seeded smooth noise. ``encoder_crops_source`` says which.
With random weights bf16 agrees less with fp32 than with trained ones (see
``embeddings.encode._calibrate_batchnorm``), and less on noise than on faces.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from embeddings.config import EncoderConfig
from embeddings.encode import FaceEncoder
from embeddings.errors import WeightsUnavailable

if TYPE_CHECKING:
    from embeddings.bench import BenchOptions

__all__ = ["face_crops", "run", "synthetic_crops"]

_FP32_BATCH = 32


def synthetic_crops(n: int, *, seed: int, size: int = 160) -> np.ndarray:
    """``n`` seeded, smooth RGB crops (bilinear-upsampled noise: natural-image-like spectra)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        low = rng.integers(0, 256, (int(rng.integers(4, 24)),) * 2 + (3,), dtype=np.uint8)
        out[i] = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR))
    return out


def face_crops(n: int, *, seed: int, size: int = 160) -> np.ndarray | None:
    """``n`` seeded jittered crops of the astronaut's face; None without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        return None
    rng = np.random.default_rng(seed)
    photo = Image.fromarray(data.astronaut())
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        # Her face is centred near (224, 117) and about 110 px across in the 512 px photo.
        cx, cy = 224 + rng.uniform(-10, 10), 117 + rng.uniform(-10, 10)
        half = 60 * rng.uniform(0.85, 1.2)
        box = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
        crop = np.asarray(photo.crop(box).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        crop = crop * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = np.clip(crop, 0, 255).astype(np.uint8)
    return out


def _encoder(options: BenchOptions) -> tuple[FaceEncoder, str]:
    note = "random by request"
    if options.weights != "random":
        try:
            return FaceEncoder(EncoderConfig(weights=options.weights)), "checkpoint"
        except WeightsUnavailable as exc:
            note = f"{options.weights!r} unavailable, used seeded random weights ({exc})"
    return FaceEncoder(EncoderConfig(weights="random", seed=options.seed)), note


def _throughput(fn: Callable[[np.ndarray], np.ndarray], crops: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    out = fn(crops[: min(len(crops), 8)])  # warm-up: oneDNN builds its kernels on first use
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(crops)
        times.append(time.perf_counter() - start)
    return len(crops) / statistics.median(times), out


def run(options: BenchOptions) -> dict[str, Any]:
    """Encoder throughput (fast vs plain fp32) and their agreement on the same crops."""
    encoder, note = _encoder(options)
    n, repeats = (32, 1) if options.quick else (256, 3)
    crops = face_crops(n, seed=options.seed, size=encoder.crop_size)
    source = "astronaut face, jittered"
    if crops is None:
        crops, source = synthetic_crops(n, seed=options.seed, size=encoder.crop_size), "smooth noise"
    fast_rate, fast = _throughput(encoder.encode, crops, repeats)
    ref_rate, ref = _throughput(lambda c: encoder.encode_fp32_reference(c, batch_size=_FP32_BATCH), crops, repeats)
    cosine = np.sum(fast.astype(np.float64) * ref.astype(np.float64), axis=1)
    return {
        "encoder_weights": encoder.model_id,
        "encoder_weights_note": note,
        "encoder_device": encoder.device,
        "encoder_precision": encoder.precision,
        "encoder_batch_size": encoder.config.batch_size,
        "encoder_fp32_batch_size": _FP32_BATCH,
        "encoder_crops": n,
        "encoder_crops_source": source,
        "encoder_torch_threads": torch.get_num_threads(),
        "encoder_faces_per_s_fast": round(fast_rate, 2),
        "encoder_faces_per_s_fp32": round(ref_rate, 2),
        "encoder_speedup": round(fast_rate / ref_rate, 2),
        "encoder_cosine_min": round(float(cosine.min()), 6),
    }
