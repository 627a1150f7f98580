"""The image pipeline: decode → detect (+ quality) → align/crop from the original pixels → encode.

One :class:`FacePipeline` serves the gRPC calls (one image at a time, the MTCNN step and the
encoding possibly routed through the service's dynamic batchers via ``network_fn`` and
``encode_fn``) and the analysis jobs (:meth:`FacePipeline.embed_many`: detection batched across
images, crops encoded in large batches).

Per-call deadlines: ``detect``, ``embed``, ``embed_one`` and ``embed_crop`` take ``deadline``, a
``time.monotonic()`` instant (the service turns the gRPC deadline into one). Work stops with
:class:`~embeddings.errors.DeadlineExceeded` between stages (after decoding, after detection,
before encoding) once it has passed, and the hooks get it to stop waiting in their queues.

Alignment belongs to the encoder (``encoder.align(image, faces)``): facenet's box crop, dlib's
5-point chip. Aligned crops: :meth:`FacePipeline.embed_crop` takes one face the caller already
detected and aligned (a ``crop_size`` square, as the encoder's ``align`` cuts it) and only encodes it, through
the same ``encode_fn`` hook, so the service batches such calls like any others.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any, Protocol

import numpy as np
from PIL import Image

from embeddings.align import crop_faces
from embeddings.config import DecodeLimits
from embeddings.errors import DeadlineExceeded, InvalidImage, InvalidInput, NoFaceFound, QualityRejected
from embeddings.image import ImageSource, decode_image
from embeddings.types import DetectedFace, FaceEmbedding, QualityReason

__all__ = ["MAX_CROP_ASPECT", "MIN_CROP_SIDE", "FacePipeline", "best_face", "check_deadline"]

# embed_many decodes and detects this many images at a time: bounds memory on big datasets
# while giving the detector and the encoder batches large enough to be efficient.
_MANY_CHUNK = 32
# embed_crop refuses crops smaller than this (a side) or longer than this ratio: upscaling a tiny
# crop 5x or squashing a strip into a square gives a vector, but not one of a face.
MIN_CROP_SIDE = 32
MAX_CROP_ASPECT = 2.0


class _Detector(Protocol):
    def detect(self, image: np.ndarray, *, run_network: Any = None) -> list[DetectedFace]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]: ...


class _Encoder(Protocol):
    model_id: str
    crop_size: int
    embedding_dim: int

    def encode(self, crops: np.ndarray) -> np.ndarray: ...


def _align(encoder: Any, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
    """The encoder's own alignment (a dlib chip, a facenet box crop); box crops if it has none."""
    align = getattr(encoder, "align", None)
    if align is None:
        return crop_faces(image, faces, size=encoder.crop_size)
    return align(image, faces)


def _area(face: DetectedFace) -> float:
    x1, y1, x2, y2 = face.box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def check_deadline(deadline: float | None, stage: str) -> None:
    """Raise DeadlineExceeded when the monotonic ``deadline`` has passed (nobody waits for the result)."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"deadline passed {stage}")


def best_face(faces: Sequence[DetectedFace]) -> DetectedFace:
    """The face a one-face call means: the largest among the confidently detected ones.

    MTCNN's probability saturates near 1 for every clear face, so among faces without
    ``LOW_CONFIDENCE`` the largest box wins (the subject of an ID or enrollment photo is its
    largest face); if all are low-confidence, the largest of those. Raises NoFaceFound if empty.
    """
    if not faces:
        raise NoFaceFound("no face was detected in the image")
    confident = [f for f in faces if QualityReason.LOW_CONFIDENCE not in f.quality.reasons]
    return max(confident or faces, key=lambda f: (_area(f), f.probability))


class FacePipeline:
    """Turns images (bytes, paths, PIL images or arrays) into tagged, L2-normalised face embeddings."""

    def __init__(
        self,
        detector: _Detector,
        encoder: _Encoder,
        *,
        limits: DecodeLimits = DecodeLimits(),
        encode_fn: Callable[..., np.ndarray] | None = None,
        network_fn: Callable[..., Sequence[Any]] | None = None,
    ) -> None:
        self.detector = detector
        self.encoder = encoder
        self.limits = limits
        # The service plugs its dynamic batchers in here; they must behave exactly like
        # encoder.encode and detector.run_network. When a call has a deadline they are also
        # passed ``deadline=`` (monotonic seconds), so hooks used with deadlines must accept it.
        self._encode = encode_fn if encode_fn is not None else encoder.encode
        self._encode_is_hook = encode_fn is not None
        self._network = network_fn

    @property
    def model_id(self) -> str:
        """The id of the encoder that makes this pipeline's embeddings."""
        return self.encoder.model_id

    def __repr__(self) -> str:
        return f"FacePipeline(model_id={self.model_id!r})"

    def decode(self, source: ImageSource) -> np.ndarray:
        """Decode ``source`` under this pipeline's limits to an H×W×3 uint8 RGB array."""
        return decode_image(source, limits=self.limits)

    def detect(
        self, source: ImageSource, *, deadline: float | None = None
    ) -> tuple[np.ndarray, list[DetectedFace]]:
        """The decoded image and its faces (original pixel coordinates, most probable first)."""
        check_deadline(deadline, "before decoding")
        image = self.decode(source)
        check_deadline(deadline, "after decoding")
        if self._network is None:
            faces = self.detector.detect(image)
        else:
            network = self._network if deadline is None else functools.partial(self._network, deadline=deadline)
            faces = self.detector.detect(image, run_network=network)
        check_deadline(deadline, "after detection")
        return image, faces

    def embed(
        self, source: ImageSource, *, max_faces: int | None = None, deadline: float | None = None
    ) -> list[FaceEmbedding]:
        """Every detected face (at most ``max_faces``, most probable first) with its embedding.

        Faces that fail the quality gate are included; their ``face.quality`` says why.
        An image without faces gives an empty list.
        """
        if max_faces is not None and max_faces < 1:
            raise InvalidInput(f"max_faces must be >= 1, got {max_faces}")
        image, faces = self.detect(source, deadline=deadline)
        return self._embed_faces([(image, faces[:max_faces])], deadline=deadline)[0]

    def embed_one(
        self, source: ImageSource, *, require_quality: bool = False, deadline: float | None = None
    ) -> FaceEmbedding:
        """The embedding of the image's main face (see :func:`best_face`).

        Raises NoFaceFound when there is no face, and, when ``require_quality`` is set and the
        main face fails the quality gate, QualityRejected carrying the reason codes.
        """
        image, faces = self.detect(source, deadline=deadline)
        face = best_face(faces)
        if require_quality and not face.quality.passed:
            reasons = face.quality.reasons
            raise QualityRejected(f"the face failed the quality gate: {', '.join(reasons)}", reasons)
        return self._embed_faces([(image, [face])], deadline=deadline)[0][0]

    def embed_crop(self, source: ImageSource, *, deadline: float | None = None) -> FaceEmbedding:
        """The embedding of one face the caller already detected, aligned and cropped.

        ``source`` is a crop like ``embeddings.align.crop_faces`` makes (``crop_size`` square);
        other sizes are resized to it with the same bilinear filter. No detection or quality gate
        runs, so the result's ``face`` is None. InvalidImage if the crop is not decodable, smaller
        than ``MIN_CROP_SIDE`` a side, or longer than ``MAX_CROP_ASPECT`` : 1.
        """
        check_deadline(deadline, "before decoding")
        pixels = self.decode(source)
        h, w = pixels.shape[:2]
        if min(h, w) < MIN_CROP_SIDE:
            raise InvalidImage(
                f"an aligned face crop must be at least {MIN_CROP_SIDE} px a side, got {w}x{h}"
            )
        if max(h, w) > MAX_CROP_ASPECT * min(h, w):
            raise InvalidImage(
                f"an aligned face crop must be roughly square (at most {MAX_CROP_ASPECT:g}:1), "
                f"got {w}x{h}"
            )
        size = self.encoder.crop_size
        if (h, w) != (size, size):
            # crop_faces' filter: a client sending the un-resized region gets what crop_faces makes.
            pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
        # A private, writable copy: decoded and PIL-made arrays may be read-only views (torch warns).
        vectors = self._encode_crops(np.array(pixels[None]), deadline=deadline)
        return FaceEmbedding(face=None, vector=vectors[0].copy(), model_id=self.model_id)

    def embed_many(
        self,
        sources: Iterable[ImageSource],
        progress: Callable[[int, int | None], None] | None = None,
    ) -> list[list[FaceEmbedding]]:
        """``embed`` for many images: detection batched over same-size images, crops encoded together.

        ``progress(done, total)`` is called after each chunk (``total`` is None for an iterator
        without a length). The first undecodable image raises, as ``embed`` would.
        """
        total = len(sources) if isinstance(sources, Sized) else None
        out: list[list[FaceEmbedding]] = []
        chunk: list[np.ndarray] = []

        def flush() -> None:
            detected = self.detector.detect_batch(chunk)
            out.extend(self._embed_faces(list(zip(chunk, detected, strict=True))))
            chunk.clear()
            if progress is not None:
                progress(len(out), total)

        for source in sources:
            chunk.append(self.decode(source))
            if len(chunk) == _MANY_CHUNK:
                flush()
        if chunk:
            flush()
        return out

    def _embed_faces(
        self, items: Sequence[tuple[np.ndarray, Sequence[DetectedFace]]], *, deadline: float | None = None
    ) -> list[list[FaceEmbedding]]:
        """Crop every face of every image, encode all crops in one call, split back per image."""
        crops = [_align(self.encoder, image, faces) for image, faces in items if faces]
        if not crops:
            return [[] for _ in items]
        all_crops = np.concatenate(crops) if len(crops) > 1 else crops[0]
        vectors = self._encode_crops(all_crops, deadline=deadline)
        model_id = self.model_id
        out: list[list[FaceEmbedding]] = []
        row = 0
        for _image, faces in items:
            embeddings = []
            for face in faces:
                embeddings.append(FaceEmbedding(face=face, vector=vectors[row].copy(), model_id=model_id))
                row += 1
            out.append(embeddings)
        return out

    def _encode_crops(self, crops: np.ndarray, *, deadline: float | None = None) -> np.ndarray:
        """N×size×size×3 uint8 crops → N×dim float32 vectors, through the encode hook."""
        check_deadline(deadline, "before encoding")
        if deadline is not None and self._encode_is_hook:
            vectors = np.asarray(self._encode(crops, deadline=deadline), dtype=np.float32)
        else:
            vectors = np.asarray(self._encode(crops), dtype=np.float32)
        if vectors.shape != (len(crops), self.encoder.embedding_dim):
            raise RuntimeError(f"encoder returned {vectors.shape} for {len(crops)} crops")
        return vectors
