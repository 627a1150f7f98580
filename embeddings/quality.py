"""The quality gate: size, detection confidence, sharpness, pose and framing of one detected face.

Everything is measured against the ORIGINAL image (not the detector's downscaled copy), so the
thresholds in :class:`~embeddings.config.QualityConfig` mean the same thing at any resolution.

Pose is a rough estimate from MTCNN's five landmarks (no 3-D model):

* roll: the angle of the line from the left eye to the right eye.
* After undoing the roll, the face midline runs from the eye midpoint to the mouth midpoint.
  Treating the nose tip as protruding in front of the eye/mouth plane by about half the
  inter-ocular distance (and by about half the eye-to-mouth distance), a head turned by θ
  moves the projected nose off the midline by ``tan θ`` of those half-distances, so
* yaw = atan(horizontal nose offset from the midline / half the eye distance), and
* pitch = atan((nose depth between the eye and mouth lines − 0.5) / 0.5), where 0.5 is where
  the nose tip sits in a frontal face (e.g. the common 112 px ArcFace five-point template).

The angles are good to perhaps ±10° near frontal and grow less accurate towards profile;
they are meant to catch extreme poses, not to measure head orientation.
Signs: yaw > 0 nose towards image right, pitch > 0 nose down, roll > 0 right eye lower.

Framing ("partly outside") is judged on what alignment needs, the face itself, not on MTCNN's
box: MTCNN's box reaches well above the brows, so on tight portrait crops 10-62% of it lies
outside the frame although eyes, nose, mouth and chin are inside (37 of the 39 real 150 px
fixtures were refused that way). :func:`face_region` extrapolates the face from the five
landmarks (brows to chin top, cheek to cheek); the fraction of that region outside the image is what
``max_outside_fraction`` bounds. Aligners pad the rest of their crop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from embeddings.config import QualityConfig
from embeddings.types import Quality, QualityReason

__all__ = ["SHARPNESS_SIZE", "assess_face", "estimate_pose", "face_region", "outside_fraction", "sharpness"]

# Side of the square grayscale crop the Laplacian is taken on: a fixed size makes the
# sharpness comparable between small and large faces.
SHARPNESS_SIZE = 112

# Where the nose tip sits between the eye line (0) and the mouth line (1) in a frontal face.
_FRONTAL_NOSE_DEPTH = 0.5
# face_region: the core of the face that recognition depends on, the eyes, nose and mouth with a
# margin: 0.3 eye-to-mouth distances above the eye line (brows), 0.4 below the mouth line (lips and
# chin top), 0.3 eye distances beyond each eye centre. On the 24 real tight 150 px fixtures at most
# 7% of it lies outside (MTCNN's box: 10-62%), while a face cut through the middle loses ~50%.
_BROW_ABOVE_EYES = 0.3
_CHIN_BELOW_MOUTH = 0.4
_CHEEK_BEYOND_EYE = 0.3

Box = Sequence[float]
Landmarks = Sequence[Sequence[float]]


def assess_face(
    image: np.ndarray,
    box: Box,
    landmarks: Landmarks,
    probability: float,
    config: QualityConfig,
) -> Quality:
    """Measure one face and list the reasons (``QualityReason`` codes) it fails ``config``.

    ``image`` is the original H×W×3 (or H×W) uint8 image, ``box`` is (x1, y1, x2, y2) and
    ``landmarks`` the five (x, y) points (left eye, right eye, nose, left and right mouth
    corner), all in original pixel coordinates.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    face_px = min(x2 - x1, y2 - y1)
    sharp = sharpness(image, box)
    yaw, pitch, roll = estimate_pose(landmarks)
    outside = outside_fraction(face_region(landmarks), image.shape[1], image.shape[0])

    reasons = []
    if face_px < config.min_face_px:
        reasons.append(QualityReason.TOO_SMALL)
    if probability < config.min_probability:
        reasons.append(QualityReason.LOW_CONFIDENCE)
    if sharp < config.min_sharpness:
        reasons.append(QualityReason.BLURRY)
    if abs(yaw) > config.max_yaw_deg or abs(pitch) > config.max_pitch_deg or abs(roll) > config.max_roll_deg:
        reasons.append(QualityReason.EXTREME_POSE)
    if outside > config.max_outside_fraction:
        reasons.append(QualityReason.PARTLY_OUTSIDE)
    return Quality(
        reasons=tuple(reasons),
        face_px=face_px,
        sharpness=sharp,
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
        outside_fraction=outside,
    )


def sharpness(image: np.ndarray, box: Box) -> float:
    """Variance of the Laplacian of the face's grayscale crop resized to SHARPNESS_SIZE².

    The crop is the part of ``box`` inside the image; an empty crop scores 0.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    left, top = max(0, int(math.floor(x1))), max(0, int(math.floor(y1)))
    right, bottom = min(w, int(math.ceil(x2))), min(h, int(math.ceil(y2)))
    if right - left < 2 or bottom - top < 2:
        return 0.0
    crop = image[top:bottom, left:right]
    if crop.ndim == 3:
        # ITU-R BT.601 luma, as PIL's convert("L") uses
        gray = crop[..., 0] * 0.299 + crop[..., 1] * 0.587 + crop[..., 2] * 0.114
    else:
        gray = crop.astype(np.float64)
    resized = Image.fromarray(gray.astype(np.float32)).resize(
        (SHARPNESS_SIZE, SHARPNESS_SIZE), Image.Resampling.BILINEAR
    )
    lap = ndimage.laplace(np.asarray(resized, dtype=np.float64), mode="reflect")
    return float(lap.var())


def estimate_pose(landmarks: Landmarks) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the five MTCNN landmarks; see the module docstring."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, mouth_l, mouth_r = pts
    eye_vec = right_eye - left_eye
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))

    # Undo the roll about the eye midpoint so the eye line is horizontal.
    c, s = math.cos(-math.radians(roll)), math.sin(-math.radians(roll))
    rot = np.array([[c, -s], [s, c]])
    eye_mid = (left_eye + right_eye) / 2
    p = (pts - eye_mid) @ rot.T
    nose_r = p[2]
    mouth_mid = (p[3] + p[4]) / 2
    half_eye = max(np.linalg.norm(eye_vec) / 2, 1e-6)
    mouth_depth = mouth_mid[1]  # eye midpoint is the origin

    if mouth_depth <= 1e-6:
        # Mouth at or above the eye line: no frontal-ish face looks like this.
        return 0.0, 90.0, roll
    t = nose_r[1] / mouth_depth  # nose depth: 0 at the eye line, 1 at the mouth line
    midline_x = mouth_mid[0] * t  # midline from eye midpoint (x=0) to mouth midpoint, at the nose's depth
    yaw = math.degrees(math.atan((nose_r[0] - midline_x) / half_eye))
    pitch = math.degrees(math.atan((t - _FRONTAL_NOSE_DEPTH) / (1 - _FRONTAL_NOSE_DEPTH)))
    return yaw, pitch, roll


def face_region(landmarks: Landmarks) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2): the box around the core of the face the five landmarks imply (brows to
    chin top, cheek to cheek), in the landmarks' pixels (see the module docstring)."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, _nose, mouth_l, mouth_r = pts
    eye_mid, mouth_mid = (left_eye + right_eye) / 2, (mouth_l + mouth_r) / 2
    down = mouth_mid - eye_mid
    across = right_eye - left_eye
    extra = np.stack(
        [
            eye_mid - _BROW_ABOVE_EYES * down,
            mouth_mid + _CHIN_BELOW_MOUTH * down,
            left_eye - _CHEEK_BEYOND_EYE * across,
            right_eye + _CHEEK_BEYOND_EYE * across,
        ]
    )
    every = np.concatenate([pts, extra])
    x1, y1 = every.min(axis=0)
    x2, y2 = every.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def outside_fraction(box: Box, width: int, height: int) -> float:
    """Fraction of the box's area that lies outside the width × height image (1.0 for an empty box)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    area = (x2 - x1) * (y2 - y1)
    if area <= 0:
        return 1.0
    iw = max(0.0, min(x2, width) - max(x1, 0.0))
    ih = max(0.0, min(y2, height) - max(y1, 0.0))
    return float(1.0 - (iw * ih) / area)
