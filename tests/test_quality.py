"""The quality gate, unit level: planted landmarks, boxes and pixels, no detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from embeddings.config import QualityConfig
from embeddings.quality import assess_face, estimate_pose, face_region, outside_fraction, sharpness
from embeddings.types import QualityReason

# MTCNN's output on the astronaut (measured once; tests/test_detect.py checks the detector agrees).
ASTRO_BOX = (181.05, 62.16, 267.75, 172.05)
ASTRO_LANDMARKS = ((205.01, 101.73), (246.76, 103.71), (224.67, 128.96), (201.72, 139.25), (245.27, 141.86))

# A frontal face: the widely used 112 px five-point template (eyes, nose tip, mouth corners).
FRONTAL = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])

CONFIG = QualityConfig()


def _rotate(points: np.ndarray, degrees: float, center: tuple[float, float] = (56.0, 70.0)) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = np.asarray(center)
    return (points - c) @ rot.T + c


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    out = ndimage.gaussian_filter(img.astype(np.float64), sigma=(sigma, sigma, 0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_astronaut_passes(astronaut: np.ndarray) -> None:
    q = assess_face(astronaut, ASTRO_BOX, ASTRO_LANDMARKS, 0.9999, CONFIG)
    assert q.reasons == () and q.passed
    assert q.face_px == pytest.approx(86.7, abs=0.1)
    assert q.outside_fraction == 0.0
    assert q.sharpness > 10 * CONFIG.min_sharpness
    assert abs(q.yaw_deg) < 10 and abs(q.roll_deg) < 10 and abs(q.pitch_deg) < CONFIG.max_pitch_deg


def test_blur_lowers_sharpness_and_fails_the_gate(astronaut: np.ndarray) -> None:
    values = [sharpness(astronaut, ASTRO_BOX)]
    values += [sharpness(_blur(astronaut, s), ASTRO_BOX) for s in (1, 2, 3, 4)]
    assert values == sorted(values, reverse=True)
    # The calibration recorded in QualityConfig.min_sharpness.
    np.testing.assert_allclose(values, [284.2, 37.1, 7.4, 2.8, 1.5], rtol=0.02)
    for sigma in (3, 4):
        q = assess_face(_blur(astronaut, sigma), ASTRO_BOX, ASTRO_LANDMARKS, 0.9999, CONFIG)
        assert q.reasons == (QualityReason.BLURRY,)


def test_sharpness_planted_values() -> None:
    flat = np.full((100, 100, 3), 90, dtype=np.uint8)
    assert sharpness(flat, (10, 10, 90, 90)) == 0.0
    assert sharpness(flat, (200, 200, 300, 300)) == 0.0  # box entirely outside: empty crop
    stripes = np.zeros((100, 100, 3), dtype=np.uint8)
    stripes[:, ::8] = 255
    assert sharpness(stripes, (0, 0, 100, 100)) > 1000


def test_tiny_copy_is_too_small(astronaut: np.ndarray) -> None:
    factor = 128 / 512
    tiny = np.asarray(Image.fromarray(astronaut).resize((128, 128), Image.Resampling.BILINEAR))
    box = tuple(v * factor for v in ASTRO_BOX)
    marks = tuple((x * factor, y * factor) for x, y in ASTRO_LANDMARKS)
    q = assess_face(tiny, box, marks, 0.9999, CONFIG)
    assert QualityReason.TOO_SMALL in q.reasons
    assert q.face_px == pytest.approx(86.7 * factor, abs=0.1)
    # Pose is scale-free.
    full = assess_face(astronaut, ASTRO_BOX, ASTRO_LANDMARKS, 0.9999, CONFIG)
    pose, full_pose = (q.yaw_deg, q.pitch_deg, q.roll_deg), (full.yaw_deg, full.pitch_deg, full.roll_deg)
    assert pose == pytest.approx(full_pose)


def test_face_cut_by_the_border_is_partly_outside(astronaut: np.ndarray) -> None:
    cut = 224  # through the middle of the face
    img = np.ascontiguousarray(astronaut[:, cut:])
    box = (ASTRO_BOX[0] - cut, ASTRO_BOX[1], ASTRO_BOX[2] - cut, ASTRO_BOX[3])
    marks = tuple((x - cut, y) for x, y in ASTRO_LANDMARKS)
    q = assess_face(img, box, marks, 0.9999, CONFIG)
    assert QualityReason.PARTLY_OUTSIDE in q.reasons
    # Judged on the face the landmarks imply, not on MTCNN's box (which reaches above the brows).
    x1, _y1, x2, _y2 = face_region(ASTRO_LANDMARKS)
    assert q.outside_fraction == pytest.approx((cut - x1) / (x2 - x1), abs=1e-6)
    assert 0.4 < q.outside_fraction < 0.6


def test_face_region_covers_the_landmarks_with_margins() -> None:
    x1, y1, x2, y2 = face_region(FRONTAL)
    eye_dist = FRONTAL[1, 0] - FRONTAL[0, 0]
    eye_to_mouth = (FRONTAL[3, 1] + FRONTAL[4, 1]) / 2 - (FRONTAL[0, 1] + FRONTAL[1, 1]) / 2
    assert x1 == pytest.approx(FRONTAL[0, 0] - 0.3 * eye_dist, abs=0.05)
    assert x2 == pytest.approx(FRONTAL[1, 0] + 0.3 * eye_dist, abs=0.05)
    assert y1 == pytest.approx((FRONTAL[0, 1] + FRONTAL[1, 1]) / 2 - 0.3 * eye_to_mouth, abs=0.05)
    assert y2 == pytest.approx((FRONTAL[3, 1] + FRONTAL[4, 1]) / 2 + 0.4 * eye_to_mouth, abs=0.05)


def test_tight_portrait_crop_passes_although_the_detector_box_leaves_the_frame() -> None:
    """A 150 px crop tight around the face: MTCNN's box pokes out above; the face itself is inside."""
    w = h = 112
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    box = (12.0, -20.0, 100.0, 110.0)  # 15% of it above the frame
    assert outside_fraction(box, w, h) > CONFIG.max_outside_fraction
    q = assess_face(img, box, FRONTAL, 0.9999, CONFIG)
    assert q.outside_fraction == 0.0
    assert QualityReason.PARTLY_OUTSIDE not in q.reasons


def test_outside_fraction_against_pixel_count() -> None:
    # Brute force: count the unit cells of an integer box that fall inside a 50 x 40 image.
    w, h = 50, 40
    for box in [(-10, -5, 20, 15), (30, 30, 70, 60), (5, 5, 45, 35), (-20, -20, -1, -1), (-5, 10, 60, 20)]:
        xs = np.arange(box[0], box[2]) + 0.5
        ys = np.arange(box[1], box[3]) + 0.5
        gx, gy = np.meshgrid(xs, ys)
        inside = ((gx > 0) & (gx < w) & (gy > 0) & (gy < h)).mean()
        assert outside_fraction(box, w, h) == pytest.approx(1 - inside)
    assert outside_fraction((10, 10, 10, 20), w, h) == 1.0  # empty box


def test_low_confidence(astronaut: np.ndarray) -> None:
    q = assess_face(astronaut, ASTRO_BOX, ASTRO_LANDMARKS, 0.5, CONFIG)
    assert q.reasons == (QualityReason.LOW_CONFIDENCE,)


def test_frontal_template_has_near_zero_pose() -> None:
    yaw, pitch, roll = estimate_pose(FRONTAL)
    assert abs(yaw) < 1.5 and abs(pitch) < 1.5 and abs(roll) < 0.5


def test_roll_is_the_eye_line_angle() -> None:
    base = estimate_pose(FRONTAL)
    for angle in (-60.0, -20.0, 30.0, 60.0):
        yaw, pitch, roll = estimate_pose(_rotate(FRONTAL, angle))
        assert roll == pytest.approx(base[2] + angle, abs=1e-6)
        # In-plane rotation changes neither yaw nor pitch.
        assert (yaw, pitch) == pytest.approx(base[:2], abs=1e-6)


def test_rolled_sixty_degrees_is_extreme(astronaut: np.ndarray) -> None:
    marks = _rotate(FRONTAL + [150, 60], 60, center=(206, 130))
    q = assess_face(astronaut, ASTRO_BOX, marks, 0.9999, CONFIG)
    assert q.reasons == (QualityReason.EXTREME_POSE,)
    assert q.roll_deg == pytest.approx(60, abs=0.5)


def _yawed(tan_yaw: float) -> np.ndarray:
    """A symmetric face whose nose sits tan_yaw half-eye-distances off the midline."""
    pts = np.array([[40.0, 50.0], [72.0, 50.0], [56.0, 70.0], [44.0, 90.0], [68.0, 90.0]])
    pts[2, 0] += tan_yaw * 16.0
    return pts


@pytest.mark.parametrize("yaw", [-60.0, -30.0, 0.0, 30.0, 60.0])
def test_yaw_from_the_nose_offset(yaw: float) -> None:
    pts = _yawed(math.tan(math.radians(yaw)))
    y, p, r = estimate_pose(pts)
    assert y == pytest.approx(yaw, abs=1e-6)
    assert p == pytest.approx(0.0, abs=1e-6) and r == pytest.approx(0.0, abs=1e-6)
    # Rolling the whole face does not change the yaw estimate.
    y2, _, r2 = estimate_pose(_rotate(pts, 35.0))
    assert y2 == pytest.approx(yaw, abs=1e-6) and r2 == pytest.approx(35.0, abs=1e-6)
    extreme = QualityReason.EXTREME_POSE in assess_face(
        np.full((120, 120, 3), 128, np.uint8), (20, 20, 100, 110), pts, 1.0, CONFIG
    ).reasons
    assert extreme == (abs(yaw) > CONFIG.max_yaw_deg)


def test_pitch_from_the_nose_depth() -> None:
    pts = _yawed(0.0)
    cases = [(0.5, 0.0), (0.9, math.degrees(math.atan(0.8))), (0.2, -math.degrees(math.atan(0.6)))]
    for depth, expected in cases:
        pts[2, 1] = 50.0 + depth * 40.0
        _, pitch, _ = estimate_pose(pts)
        assert pitch == pytest.approx(expected, abs=1e-6)
    pts[2, 1] = 50.0 + 0.9 * 40.0
    q = assess_face(np.full((120, 120, 3), 128, np.uint8), (20, 20, 100, 110), pts, 1.0, CONFIG)
    assert QualityReason.EXTREME_POSE in q.reasons


def test_degenerate_landmarks_do_not_crash() -> None:
    same = np.tile([[50.0, 50.0]], (5, 1))
    yaw, pitch, roll = estimate_pose(same)
    assert all(math.isfinite(v) for v in (yaw, pitch, roll))
    assert abs(pitch) == 90.0


def test_reasons_come_in_a_fixed_order(astronaut: np.ndarray) -> None:
    tiny_blurred = _blur(astronaut, 4)
    box = (200.0, 100.0, 230.0, 130.0)
    marks = _rotate(np.array(ASTRO_LANDMARKS), 80, center=(215, 115))
    q = assess_face(tiny_blurred, box, marks, 0.1, CONFIG)
    assert q.reasons == (
        QualityReason.TOO_SMALL,
        QualityReason.LOW_CONFIDENCE,
        QualityReason.BLURRY,
        QualityReason.EXTREME_POSE,
    )
