"""Face detection with MTCNN (facenet-pytorch) on a downscaled copy, mapped back to original pixels.

MTCNN's cost grows with the pixel count of its image pyramid, whose largest level is the input
scaled by ``12 / min_face_size``. Detecting on a copy whose longer side is at most
``DetectorConfig.max_side`` bounds that cost for any upload; ``min_face_size`` is in pixels of
that copy, so the smallest face found in the original is about
``min_face_size * original_long_side / max_side`` pixels (for a 2048 px photo with the defaults,
640 and 20: 64 px). Boxes and landmarks are scaled back, and the quality gate measures the face
in the original pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from embeddings.config import DetectorConfig, QualityConfig
from embeddings.errors import InvalidImage
from embeddings.quality import assess_face
from embeddings.types import DetectedFace

__all__ = ["FaceDetector", "NetworkFn", "RawDetections"]

# Per image: boxes (K×4), probabilities (K,), landmarks (K×5×2), in the downscaled copy's pixels.
RawDetections = tuple[np.ndarray, np.ndarray, np.ndarray]
NetworkFn = Callable[[np.ndarray], Sequence[RawDetections]]

# Images of one downscaled size go through MTCNN together, this many at a time (bounds memory).
_BATCH_CHUNK = 16


class FaceDetector:
    """Finds faces, their five landmarks and a quality verdict in RGB uint8 images.

    Thread-safe for concurrent ``detect`` calls (MTCNN keeps no per-call state).
    """

    def __init__(
        self, config: DetectorConfig = DetectorConfig(), quality: QualityConfig = QualityConfig()
    ) -> None:
        from facenet_pytorch import MTCNN  # heavy import, only when a detector is built

        from embeddings.encode import resolve_device  # imports facenet-pytorch too: kept lazy alike

        self.config = config
        self.quality = quality
        self.device = torch.device(resolve_device(config.device))
        # The P/R/O-net weights ship inside the facenet-pytorch wheel: nothing is downloaded.
        self._mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,
            min_face_size=config.min_face_size,
            thresholds=list(config.thresholds),
            factor=config.factor,
            post_process=False,
            device=self.device,
        ).eval()

    def __repr__(self) -> str:
        return f"FaceDetector(config={self.config!r}, device={str(self.device)!r})"

    def detect(self, image: np.ndarray, *, run_network: NetworkFn | None = None) -> list[DetectedFace]:
        """Faces in ``image`` (H×W×3 uint8 RGB), most probable first, at most ``config.max_faces``.

        ``run_network`` replaces :meth:`run_network` for the MTCNN step alone (downscaling and the
        quality gate stay on the calling thread); the service routes it through a batcher that
        stacks same-size images of concurrent calls. It must return what :meth:`run_network` would.
        """
        return self.detect_batch([image], run_network=run_network)[0]

    def detect_batch(
        self, images: Sequence[np.ndarray], *, run_network: NetworkFn | None = None
    ) -> list[list[DetectedFace]]:
        """``detect`` for many images, batching those whose downscaled sizes are equal."""
        run = run_network if run_network is not None else self.run_network
        originals = [_check_image(img) for img in images]
        small = [self._downscale(img) for img in originals]
        raw: list[RawDetections | None] = [None] * len(images)

        groups: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(small):
            if min(s.shape[:2]) < self.config.min_face_size:
                # No pyramid level fits: MTCNN would fail on an empty pyramid. No face can be found.
                raw[i] = _empty()
                continue
            groups.setdefault(s.shape[:2], []).append(i)

        for indices in groups.values():
            for start in range(0, len(indices), _BATCH_CHUNK):
                chunk = indices[start : start + _BATCH_CHUNK]
                batch = np.stack([small[i] for i in chunk])
                for i, result in zip(chunk, run(batch), strict=True):
                    raw[i] = result

        out = []
        for img, s, r in zip(originals, small, raw, strict=True):
            assert r is not None
            out.append(self._to_faces(img, s.shape[:2], *r))
        return out

    def _downscale(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        scale = self.config.max_side / max(h, w)
        if scale >= 1.0:
            return image
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # reducing_gap: box-reduce by an integer factor first, then bilinear: half the time on big photos.
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=1.5))

    def run_network(self, batch: np.ndarray) -> list[RawDetections]:
        """MTCNN on a stack (N×h×w×3 uint8) of same-size downscaled images: boxes, probabilities and
        landmarks per image, in the downscaled pixels. Each image's result does not depend on the
        others in the batch (up to float rounding; see tests/test_detect.py)."""
        with torch.inference_mode():
            boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
        results = []
        for b, p, pts in zip(boxes, probs, points, strict=True):
            if b is None:
                results.append(_empty())
            else:
                results.append(
                    (
                        np.asarray(b, dtype=np.float64).reshape(-1, 4),
                        np.asarray(p, dtype=np.float64).reshape(-1),
                        np.asarray(pts, dtype=np.float64).reshape(-1, 5, 2),
                    )
                )
        return results

    def _to_faces(
        self,
        image: np.ndarray,
        small_hw: tuple[int, int],
        boxes: np.ndarray,
        probs: np.ndarray,
        points: np.ndarray,
    ) -> list[DetectedFace]:
        h, w = image.shape[:2]
        sx, sy = w / small_hw[1], h / small_hw[0]
        boxes = boxes * np.array([sx, sy, sx, sy])
        points = points * np.array([sx, sy])
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = sorted(range(len(probs)), key=lambda k: (-probs[k], -areas[k]))[: self.config.max_faces]
        faces = []
        for k in order:
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            box = (x1, y1, x2, y2)
            marks = tuple((float(x), float(y)) for x, y in points[k])
            prob = float(probs[k])
            quality = assess_face(image, box, marks, prob, self.quality)
            faces.append(DetectedFace(box=box, landmarks=marks, probability=prob, quality=quality))
        return faces


def _empty() -> RawDetections:
    return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise InvalidImage(f"detector needs an HxWx3 uint8 RGB array (see decode_image), got {shape} {dtype}")
    return np.ascontiguousarray(image)
