"""Face crops for the encoder, cut from the ORIGINAL pixels the way facenet-pytorch cuts them.

The encoder's weights were published with facenet-pytorch's MTCNN crops, so we reproduce its
``extract_face`` on a PIL image: grow the box by ``margin`` (given in pixels of the OUTPUT crop,
so ``margin * box_side / (size - margin)`` original pixels, half on each side), truncate to
integers and clamp to the image, then resize to ``size × size`` with PIL's bilinear filter
(antialiased when shrinking). The box is not squared, so the aspect ratio follows the box.
The default margin, 0, is facenet-pytorch's own default (``MTCNN(margin=0)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from embeddings.errors import InvalidInput
from embeddings.types import DetectedFace

__all__ = ["DEFAULT_MARGIN", "crop_box", "crop_faces"]

DEFAULT_MARGIN = 0.0


def crop_box(
    box: Sequence[float], width: int, height: int, *, size: int = 160, margin: float = DEFAULT_MARGIN
) -> tuple[int, int, int, int]:
    """The integer (left, top, right, bottom) region ``crop_faces`` cuts for ``box``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    mx = margin * (x2 - x1) / (size - margin)
    my = margin * (y2 - y1) / (size - margin)
    # int() truncates towards zero, as facenet-pytorch does.
    return (
        int(max(x1 - mx / 2, 0)),
        int(max(y1 - my / 2, 0)),
        int(min(x2 + mx / 2, width)),
        int(min(y2 + my / 2, height)),
    )


def crop_faces(
    image: np.ndarray,
    faces: Sequence[DetectedFace],
    *,
    size: int = 160,
    margin: float = DEFAULT_MARGIN,
) -> np.ndarray:
    """N×size×size×3 uint8 crops of ``faces`` from ``image`` (H×W×3 uint8 RGB, original pixels).

    Raises ``InvalidInput`` for a bad size or margin, or a face box that lies outside the image.
    """
    if size < 1:
        raise InvalidInput(f"crop size must be >= 1, got {size}")
    if not 0 <= margin < size:
        raise InvalidInput(f"margin must be in [0, size), got {margin}")
    out = np.empty((len(faces), size, size, 3), dtype=np.uint8)
    if not faces:
        return out
    h, w = image.shape[:2]
    pil = Image.fromarray(np.ascontiguousarray(image))
    for i, face in enumerate(faces):
        left, top, right, bottom = crop_box(face.box, w, h, size=size, margin=margin)
        if right <= left or bottom <= top:
            raise InvalidInput(f"face box {face.box} lies outside the {w}x{h} image")
        crop = pil.crop((left, top, right, bottom)).resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(crop.convert("RGB"))
    return out
