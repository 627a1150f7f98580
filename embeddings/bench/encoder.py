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

int8 (issue #14): ``encoder_int8_*`` are facenet's int8 path on the same crops and weights (seeded
random weights have an int8 profile for seed 0 only), and ``encoder_dlib_*`` are dlib-resnet with its
real weights on dlib chips of the real photos in ``options.faces_dir``: fp32, bf16 and int8 timed in
turn in the same run (medians), each as a ratio to fp32, with the worst cosine to fp32. ``auto`` says
what ``precision="auto"`` chose and why; ``encoder_cpu_flags`` the CPU features that decide it.
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from embeddings.config import EncoderConfig
from embeddings.encode import FaceEncoder
from embeddings.errors import LatentfaceError, WeightsUnavailable
from embeddings.quantize import cpu_features, load_profile, min_cosine

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


def _interleaved(fns: dict[str, Callable[[np.ndarray], np.ndarray]], crops: np.ndarray, repeats: int):
    """Faces/s of each function, timed in turn within each repeat (so load drifts hit all alike)."""
    outputs = {name: fn(crops[: min(len(crops), 8)]) for name, fn in fns.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            outputs[name] = fn(crops)
            times[name].append(time.perf_counter() - start)
    return {name: len(crops) / statistics.median(t) for name, t in times.items()}, outputs


def _real_chips(faces_dir: Path, encoder: Any) -> np.ndarray | None:
    from embeddings.detect import FaceDetector
    from embeddings.image import decode_image
    from embeddings.pipeline import best_face

    manifest = Path(faces_dir) / "MANIFEST.csv"
    if not manifest.is_file():
        return None
    with open(manifest, newline="") as fh:
        paths = [Path(faces_dir) / row["path"] for row in csv.DictReader(fh)]
    detector = FaceDetector()
    chips = []
    for path in paths:
        image = decode_image(path)
        faces = detector.detect(image)
        if faces:
            chips.append(encoder.align(image, [best_face(faces)]))
    return np.concatenate(chips) if chips else None


def _int8_facenet(options: BenchOptions, encoder: FaceEncoder, crops: np.ndarray, repeats: int) -> dict[str, Any]:
    """facenet's int8 path vs its fp32 default on the same crops and weights."""
    try:
        int8 = FaceEncoder(dataclasses.replace(encoder.config, precision="int8"))
    except LatentfaceError as exc:
        return {"encoder_int8_note": str(exc)}
    rates, out = _interleaved(
        {"int8": int8.encode, "fp32": lambda c: int8.encode_fp32_reference(c, batch_size=_FP32_BATCH)}, crops, repeats
    )
    profile = load_profile(int8.model_id) or {}
    return {
        "encoder_int8_faces_per_s": round(rates["int8"], 2),
        "encoder_int8_speedup": round(rates["int8"] / rates["fp32"], 2),
        "encoder_int8_cosine_min": round(min_cosine(out["int8"], out["fp32"]), 6),
        "encoder_int8_heldout_cosine_min_real": profile.get("heldout_cosine_min"),
    }


def _dlib_real(options: BenchOptions, repeats: int) -> dict[str, Any]:
    """dlib-resnet (real weights) on real chips: fp32, bf16 and int8, ratios to fp32 in the same run."""
    from embeddings.dlib_encoder import DlibEncoder

    try:
        auto = DlibEncoder(EncoderConfig(weights="dlib-resnet", runtime="torch"))
        encoders = {p: DlibEncoder(EncoderConfig(weights="dlib-resnet", runtime="torch", precision=p)) for p in ("bf16", "int8")}
    except (LatentfaceError, ImportError) as exc:
        return {"encoder_dlib_note": f"dlib-resnet unavailable: {exc}"}
    chips = _real_chips(options.faces_dir, auto)
    if chips is None:
        return {"encoder_dlib_note": f"no real faces at {options.faces_dir} (MANIFEST.csv)"}
    if options.quick:
        chips = chips[:8]
    fns = {"fp32": auto.encode_fp32_reference, **{p: e.encode for p, e in encoders.items()}}
    rates, out = _interleaved(fns, chips, repeats)
    result: dict[str, Any] = {
        "encoder_dlib_model": auto.model_id,
        "encoder_dlib_crops": len(chips),
        "encoder_dlib_faces_per_s_fp32": round(rates["fp32"], 2),
        "encoder_dlib_auto_precision": auto.precision,
        "encoder_dlib_auto_note": auto.precision_note,
        "encoder_dlib_int8_heldout_cosine_min": (load_profile(auto.model_id) or {}).get("heldout_cosine_min"),
    }
    for p in encoders:
        result[f"encoder_dlib_faces_per_s_{p}"] = round(rates[p], 2)
        result[f"encoder_dlib_speedup_{p}"] = round(rates[p] / rates["fp32"], 2)
        result[f"encoder_dlib_cosine_min_{p}"] = round(min_cosine(out[p], out["fp32"]), 6)
    return result


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
    int8_figures = _int8_facenet(options, encoder, crops, repeats)
    dlib_figures = _dlib_real(options, repeats)
    return {
        "encoder_cpu_flags": cpu_features(),
        "encoder_precision_note": encoder.precision_note,
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
        **int8_figures,
        **dlib_figures,
    }
