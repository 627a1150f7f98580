"""Benchmark part ``detect``: MTCNN latency on a 2048 px photograph with one face.

The photo is scikit-image's astronaut (a test dependency, loaded lazily) upscaled 3x and set on a
2048x1536 canvas, so the detector pays for downscaling a camera-sized image as in production.
Latency is per ``FaceDetector.detect`` call on the decoded array, after warm-up.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from embeddings.config import DetectorConfig
from embeddings.detect import FaceDetector
from embeddings.errors import Unavailable

if TYPE_CHECKING:
    from embeddings.bench import BenchOptions

__all__ = ["one_face_photo", "run"]

_WIDTH, _HEIGHT = 2048, 1536


def one_face_photo() -> np.ndarray:
    """A 2048x1536 RGB photo with one ~260 px face (the astronaut, upscaled 3x, on a grey canvas)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise Unavailable(
            "the detect benchmark needs scikit-image's sample photo: install the test extras "
            "(pip install 'latentface[test]') or skip it with --only"
        ) from exc
    face = Image.fromarray(data.astronaut()).resize((1536, 1536), Image.Resampling.BICUBIC)
    canvas = np.full((_HEIGHT, _WIDTH, 3), 118, dtype=np.uint8)
    canvas[:, 256 : 256 + 1536] = np.asarray(face)
    return canvas


def run(options: BenchOptions) -> dict[str, Any]:
    """Median and 90th-percentile detection latency, and how many faces were found."""
    photo = one_face_photo()
    detector = FaceDetector(DetectorConfig())
    runs = 5 if options.quick else 20
    for _ in range(2):
        faces = detector.detect(photo)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        faces = detector.detect(photo)
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "detect_image_px": f"{_WIDTH}x{_HEIGHT}",
        "detect_device": str(detector.device),
        "detect_runs": runs,
        "detect_ms_p50": round(float(np.percentile(times, 50)), 2),
        "detect_ms_p90": round(float(np.percentile(times, 90)), 2),
        "detect_faces_found": len(faces),
        "detect_face_passed_quality": bool(faces and faces[0].quality.passed),
    }
