"""FaceDetector (real MTCNN on real pixels) and crop_faces (checked against facenet-pytorch's crops)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from embeddings.align import crop_box, crop_faces
from embeddings.config import DetectorConfig, QualityConfig
from embeddings.detect import FaceDetector
from embeddings.errors import InvalidImage, InvalidInput
from embeddings.image import decode_image
from embeddings.types import DetectedFace, Quality

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Where the astronaut's face is (checked by test_astronaut_one_face_in_place).
ASTRO_BOX = np.array([181.0, 62.0, 268.0, 172.0])


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def _box(face: DetectedFace) -> np.ndarray:
    return np.array(face.box)


def test_astronaut_one_face_in_place(detector: FaceDetector, astronaut: np.ndarray) -> None:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    f = faces[0]
    np.testing.assert_allclose(_box(f), ASTRO_BOX, atol=2)
    assert f.probability > 0.99
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = f.landmarks
    # Landmarks inside the box, in anatomical order.
    assert lex < nx < rex and lmx < nx < rmx
    assert max(ley, rey) < ny < min(lmy, rmy)
    x1, y1, x2, y2 = f.box
    assert all(x1 < x < x2 and y1 < y < y2 for x, y in f.landmarks)
    assert f.quality.passed and f.quality.face_px == pytest.approx(x2 - x1)


def test_grid_of_four_faces_one_per_quadrant(detector: FaceDetector, astronaut: np.ndarray) -> None:
    grid = np.ascontiguousarray(np.vstack([np.hstack([astronaut, astronaut])] * 2))
    faces = detector.detect(grid)
    assert len(faces) == 4
    offsets = set()
    for f in faces:
        b = _box(f)
        ox, oy = (b[0] // 512) * 512, (b[1] // 512) * 512
        offsets.add((ox, oy))
        # Each box lies inside its quadrant, where the astronaut's face is in that copy.
        np.testing.assert_allclose(b - [ox, oy, ox, oy], ASTRO_BOX, atol=6)
    assert offsets == {(0, 0), (512, 0), (0, 512), (512, 512)}
    probs = [f.probability for f in faces]
    assert probs == sorted(probs, reverse=True)

    capped = FaceDetector(dataclasses.replace(DetectorConfig(), max_faces=2)).detect(grid)
    assert [f.probability for f in capped] == probs[:2]


def test_horizontal_flip_mirrors_the_box(detector: FaceDetector, astronaut: np.ndarray) -> None:
    faces = detector.detect(np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(faces) == 1
    x1, y1, x2, y2 = ASTRO_BOX
    # MTCNN is not exactly mirror-symmetric: its box regression moves the edges by a few px.
    np.testing.assert_allclose(_box(faces[0]), [512 - x2, y1, 512 - x1, y2], atol=6)
    # The detector's left eye is the image-left one: after mirroring it is the astronaut's other eye.
    (lex, _), (rex, _) = faces[0].landmarks[:2]
    assert lex < rex


def test_upscaled_2048_maps_boxes_back_to_original_pixels(
    detector: FaceDetector, astronaut: np.ndarray
) -> None:
    # Detection runs on a 640 px copy; the box must come back in 2048 px coordinates.
    big = _resize(astronaut, 2048, 2048)
    faces = detector.detect(big)
    assert len(faces) == 1
    np.testing.assert_allclose(_box(faces[0]), 4 * ASTRO_BOX, atol=12)  # 3 px at 512
    lm = np.array(faces[0].landmarks)
    ref = np.array(detector.detect(astronaut)[0].landmarks)
    np.testing.assert_allclose(lm, 4 * ref, atol=12)
    assert faces[0].quality.passed and faces[0].quality.face_px > 300


def test_face_on_a_large_canvas_at_a_known_offset(detector: FaceDetector, astronaut: np.ndarray) -> None:
    canvas = np.full((2000, 3000, 3), 235, dtype=np.uint8)
    face = _resize(astronaut, 1024, 1024)  # at the 640 px detection scale its face is ~37 px
    ox, oy = 1700, 900
    canvas[oy : oy + 1024, ox : ox + 1024] = face
    faces = detector.detect(canvas)
    assert len(faces) == 1
    np.testing.assert_allclose(_box(faces[0]), 2 * ASTRO_BOX + [ox, oy, ox, oy], atol=10)


def test_exif_rotated_jpeg_is_detected_upright(detector: FaceDetector, astronaut: np.ndarray) -> None:
    # A camera held sideways stores the pixels rotated and says "rotate 90° clockwise" (6).
    stored = np.ascontiguousarray(np.rot90(astronaut, 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif)
    sideways = detector.detect(stored)
    upright = decode_image(buf.getvalue())
    faces = detector.detect(upright)
    assert len(faces) == 1
    np.testing.assert_allclose(_box(faces[0]), ASTRO_BOX, atol=5)
    # Without the EXIF fix the face lies on its side: no upright face where the astronaut's is.
    assert all(np.abs(_box(f) - ASTRO_BOX).max() > 20 for f in sideways)


def test_blank_and_noise_have_no_faces(detector: FaceDetector, rng: np.random.Generator) -> None:
    assert detector.detect(np.full((480, 640, 3), 128, dtype=np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)) == []
    # Thinner than the smallest face MTCNN looks for: no pyramid at all, still no crash.
    assert detector.detect(np.full((16, 900, 3), 128, dtype=np.uint8)) == []


def test_detect_batch_equals_per_image_detect(detector: FaceDetector, astronaut: np.ndarray) -> None:
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    blank = np.full((512, 512, 3), 200, dtype=np.uint8)
    other_size = _resize(astronaut, 400, 300)
    images = [astronaut, flipped, blank, other_size]  # three share a size and run as one batch
    batched = detector.detect_batch(images)
    assert [len(b) for b in batched] == [1, 1, 0, 1]
    for img, got in zip(images, batched, strict=True):
        want = detector.detect(img)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.box, w.box, atol=1e-3)
            np.testing.assert_allclose(g.landmarks, w.landmarks, atol=1e-3)
            assert g.probability == pytest.approx(w.probability, abs=1e-5)
            assert g.quality.reasons == w.quality.reasons
    assert detector.detect_batch([]) == []


def test_detector_rejects_non_rgb_arrays(detector: FaceDetector) -> None:
    with pytest.raises(InvalidImage, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(InvalidImage, match="HxWx3"):
        detector.detect(np.zeros((64, 64), dtype=np.uint8))


def test_unknown_device_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="device"):
        FaceDetector(DetectorConfig(device="warp-drive"))
    # The encoder's device rule: a real torch device that is neither CPU nor CUDA is refused up front.
    with pytest.raises(InvalidInput, match="cpu or cuda"):
        FaceDetector(DetectorConfig(device="meta"))


def test_quality_config_is_applied(astronaut: np.ndarray) -> None:
    strict = FaceDetector(quality=QualityConfig(min_face_px=100))
    (face,) = strict.detect(astronaut)
    assert face.quality.reasons == ("TOO_SMALL",)


# --- crop_faces ------------------------------------------------------------------------------------


def _face(box: tuple[float, float, float, float]) -> DetectedFace:
    q = Quality(
        reasons=(), face_px=0.0, sharpness=0.0, yaw_deg=0.0, pitch_deg=0.0, roll_deg=0.0, outside_fraction=0.0
    )
    return DetectedFace(box=box, landmarks=((0.0, 0.0),) * 5, probability=1.0, quality=q)


@pytest.fixture(scope="module")
def gradient() -> np.ndarray:
    """300 x 400 image whose pixels encode their own coordinates."""
    y, x = np.mgrid[0:300, 0:400]
    return np.stack([x % 256, y % 256, (x // 256) * 100 + (y // 256) * 50], axis=-1).astype(np.uint8)


def test_crop_of_a_planted_exact_box_is_the_pixels_themselves(gradient: np.ndarray) -> None:
    out = crop_faces(gradient, [_face((37.0, 21.0, 197.0, 181.0))])
    assert out.shape == (1, 160, 160, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], gradient[21:181, 37:197])


@pytest.mark.parametrize("margin", [0.0, 20.0, 44.0])
@pytest.mark.parametrize(
    "box",
    [(50.7, 40.2, 130.9, 160.5), (-12.3, -8.0, 90.4, 95.1), (310.2, 200.9, 420.0, 330.0)],
)
def test_crop_matches_facenet_pytorch_extract_face(
    gradient: np.ndarray, box: tuple[float, float, float, float], margin: float
) -> None:
    from facenet_pytorch import extract_face

    ref = extract_face(Image.fromarray(gradient), np.array(box), image_size=160, margin=margin)
    ref = ref.permute(1, 2, 0).numpy().astype(np.uint8)
    out = crop_faces(gradient, [_face(box), _face(box)], size=160, margin=margin)
    assert out.shape == (2, 160, 160, 3)
    np.testing.assert_array_equal(out[0], ref)
    np.testing.assert_array_equal(out[1], ref)
    # And the region is the documented formula.
    w, h = box[2] - box[0], box[3] - box[1]
    mx, my = margin * w / (160 - margin), margin * h / (160 - margin)
    assert crop_box(box, 400, 300, margin=margin) == (
        int(max(box[0] - mx / 2, 0)),
        int(max(box[1] - my / 2, 0)),
        int(min(box[2] + mx / 2, 400)),
        int(min(box[3] + my / 2, 300)),
    )


def test_crop_of_the_detected_astronaut(detector: FaceDetector, astronaut: np.ndarray) -> None:
    faces = detector.detect(astronaut)
    crops = crop_faces(astronaut, faces)
    assert crops.shape == (1, 160, 160, 3)
    left, top, right, bottom = crop_box(faces[0].box, 512, 512)
    region = Image.fromarray(astronaut[top:bottom, left:right])
    expected = np.asarray(region.resize((160, 160), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(crops[0], expected)


def test_crop_zero_faces_and_bad_arguments(gradient: np.ndarray) -> None:
    assert crop_faces(gradient, []).shape == (0, 160, 160, 3)
    assert crop_faces(gradient, [], size=112).shape == (0, 112, 112, 3)
    with pytest.raises(InvalidInput, match="outside"):
        crop_faces(gradient, [_face((500.0, 10.0, 600.0, 100.0))])
    with pytest.raises(InvalidInput, match="margin"):
        crop_faces(gradient, [], margin=160)
