"""Bench part ``real``: accuracy and speed of a real model on real face photos.

The photos are ``options.faces_dir`` (``<person>/<image>`` with a ``MANIFEST.csv`` of
``path,identity``; the repository's fixtures are ``../shared/faces``). The model is
``options.weights`` when it names a real one, else ``dlib-resnet``. Figures:

* ``real_faces``, ``real_identities``; ``real_rank1`` (leave-one-out nearest neighbour);
* ``real_eer`` and, at the model's default threshold, ``real_fnmr_at_default`` / ``real_fmr_at_default``
  over all genuine / impostor pairs;
* ``real_encoder_faces_per_s`` (the serving precision) and ``real_encoder_faces_per_s_fp32``,
  the aligned chips encoded in one batch, best of a few runs, as a ratio too;
* ``real_port_cosine_min``: the PyTorch port vs dlib's own runtime on the same chips (dlib only);
* ``real_align_cosine_min``: our chips (MTCNN box + dlib's predictor) vs dlib's own pipeline;
* ``encoder_cosine_min_real_crops``: facenet's fast path vs its fp32 path on facenet crops of the
  same photos, with SEEDED RANDOM facenet weights (the real checkpoints cannot be had here).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from embeddings.config import DLIB_FAMILY, EncoderConfig
from embeddings.errors import InvalidInput

__all__ = ["run"]

_REPEATS = 3


def _manifest(root: Path) -> tuple[list[Path], np.ndarray]:
    manifest = root / "MANIFEST.csv"
    if not manifest.is_file():
        raise InvalidInput(f"no MANIFEST.csv (path,identity) in {root}; pass --faces DIR")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [root / r["path"] for r in rows], np.asarray([r["identity"] for r in rows])


def _rates(vectors: np.ndarray, identities: np.ndarray, threshold: float) -> dict[str, float]:
    scores = vectors @ vectors.T
    upper = np.triu_indices(len(vectors), 1)
    same = (identities[:, None] == identities[None, :])[upper]
    genuine, impostor = scores[upper][same], scores[upper][~same]
    # EER: the threshold where FNMR and FMR cross, scanned over every observed score.
    cuts = np.unique(np.concatenate([genuine, impostor]))
    fnmr = np.searchsorted(np.sort(genuine), cuts, side="left") / len(genuine)
    fmr = 1.0 - np.searchsorted(np.sort(impostor), cuts, side="left") / len(impostor)
    k = int(np.argmin(np.abs(fnmr - fmr)))
    np.fill_diagonal(scores, -np.inf)
    return {
        "real_genuine_pairs": int(len(genuine)),
        "real_impostor_pairs": int(len(impostor)),
        "real_eer": round(float((fnmr[k] + fmr[k]) / 2), 4),
        "real_fnmr_at_default": round(float((genuine < threshold).mean()), 4),
        "real_fmr_at_default": round(float((impostor >= threshold).mean()), 4),
        "real_rank1": round(float((identities[scores.argmax(axis=1)] == identities).mean()), 4),
    }


def _faces_per_s(encode: Any, chips: np.ndarray) -> float:
    encode(chips[:2])  # warm-up
    best = float("inf")
    for _ in range(_REPEATS):
        start = time.perf_counter()
        encode(chips)
        best = min(best, time.perf_counter() - start)
    return len(chips) / best


def run(options: Any) -> dict[str, Any]:
    from embeddings.detect import FaceDetector
    from embeddings.encode import FaceEncoder, create_encoder
    from embeddings.pipeline import best_face

    weights = options.weights if options.weights not in ("random", "auto") else "dlib-resnet"
    paths, identities = _manifest(Path(options.faces_dir))
    encoder = create_encoder(EncoderConfig(weights=weights))
    detector = FaceDetector()
    decoded = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    faces = [best_face(detector.detect(img)) for img in decoded]
    chips = np.concatenate([encoder.align(img, [f]) for img, f in zip(decoded, faces, strict=True)])
    vectors = encoder.encode(chips)
    threshold = encoder.pretrained.default_threshold
    out: dict[str, Any] = {
        "real_model_id": encoder.model_id,
        "real_faces": len(paths),
        "real_identities": int(len(set(identities.tolist()))),
        "real_quality_passed": int(sum(f.quality.passed for f in faces)),
        "real_default_threshold": threshold,
        **_rates(vectors, identities, threshold),
    }
    fast = _faces_per_s(encoder.encode, chips)
    fp32 = _faces_per_s(encoder.encode_fp32_reference, chips)
    out["real_encoder_precision"] = encoder.precision
    out["real_encoder_faces_per_s"] = round(fast, 1)
    out["real_encoder_faces_per_s_fp32"] = round(fp32, 1)
    out["real_encoder_speedup_vs_fp32"] = round(fast / fp32, 2)
    out["real_encoder_cosine_min_vs_fp32"] = round(
        float(np.sum(vectors * encoder.encode_fp32_reference(chips), axis=1).min()), 6
    )
    if encoder.pretrained.family == DLIB_FAMILY and getattr(encoder, "runtime", None) == "torch":
        out.update(_dlib_reference_figures(encoder, chips, decoded, vectors))
    # facenet's fast path on real crops of the same photos (seeded random weights: say so).
    facenet = FaceEncoder(EncoderConfig(weights="random", seed=options.seed))
    crops = np.concatenate([facenet.align(img, [f]) for img, f in zip(decoded, faces, strict=True)])
    cos = np.sum(facenet.encode(crops) * facenet.encode_fp32_reference(crops), axis=1)
    out["encoder_cosine_min_real_crops"] = round(float(cos.min()), 6)
    out["encoder_cosine_min_real_crops_weights"] = "facenet seeded random (checkpoints unavailable offline)"
    return out


def _dlib_reference_figures(encoder: Any, chips: np.ndarray, decoded: list, vectors: np.ndarray) -> dict[str, Any]:
    import dataclasses

    import dlib

    from embeddings.config import DLIB_LANDMARKS_FILE
    from embeddings.dlib_encoder import DlibEncoder
    from embeddings.weights import dlib_model_file

    reference = DlibEncoder(dataclasses.replace(encoder.config, runtime="dlib", device="cpu"))
    port_cos = np.sum(encoder.encode_fp32_reference(chips) * reference.encode(chips), axis=1)
    out = {
        "real_port_cosine_min": round(float(port_cos.min()), 7),
        "real_dlib_runtime_faces_per_s": round(_faces_per_s(reference.encode, chips), 1),
    }
    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_file(DLIB_LANDMARKS_FILE)))
    own, ours = [], []
    for i, img in enumerate(decoded):
        found = hog(img, 1)
        if found:
            own.append(dlib.get_face_chip(img, predictor(img, found[0]), size=150, padding=0.25))
            ours.append(i)
    if own:
        cos = np.sum(encoder.encode(np.stack(own)) * vectors[ours], axis=1)
        out["real_align_cosine_min"] = round(float(cos.min()), 4)
        out["real_align_cosine_mean"] = round(float(cos.mean()), 4)
    return out
