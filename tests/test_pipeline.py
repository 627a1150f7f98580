"""FacePipeline on real photographs with the real MTCNN and the seeded-random encoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from embeddings.align import crop_faces
from embeddings.config import EncoderConfig
from embeddings.detect import FaceDetector
from embeddings.encode import FaceEncoder
from embeddings.errors import DeadlineExceeded, InvalidImage, InvalidInput, NoFaceFound, QualityRejected
from embeddings.pipeline import FacePipeline, best_face
from embeddings.types import QualityReason

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Same crop encoded alone vs in a bigger batch: bf16 kernels may block the batch differently.
BATCH_ATOL = 2e-3


@pytest.fixture(scope="module")
def encoder() -> FaceEncoder:
    return FaceEncoder(EncoderConfig(weights="random", seed=0))


@pytest.fixture(scope="module")
def pipeline(encoder: FaceEncoder) -> FacePipeline:
    return FacePipeline(FaceDetector(), encoder)


@pytest.fixture(scope="module")
def two_faces(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut beside a half-size copy of herself: two faces, the left one twice as large."""
    half = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.Resampling.BILINEAR))
    right = np.full_like(astronaut, 255)
    right[128:384, 128:384] = half
    return np.ascontiguousarray(np.concatenate([astronaut, right], axis=1))


def test_astronaut_one_good_face(pipeline: FacePipeline, encoder: FaceEncoder, astronaut: np.ndarray) -> None:
    [emb] = pipeline.embed(astronaut)
    face = emb.face
    assert face is not None and face.quality.passed and face.probability > 0.99
    x1, y1, x2, y2 = face.box
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 200  # her face, not the flag or the helmet
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)
    assert emb.model_id == encoder.model_id == pipeline.model_id
    assert emb.vector.dtype == np.float32 and emb.vector.shape == (512,)
    # Reference: crop and encode by hand.
    expected = encoder.encode(crop_faces(astronaut, [face]))[0]
    np.testing.assert_allclose(emb.vector, expected, atol=1e-6)
    one = pipeline.embed_one(astronaut, require_quality=True)
    assert one.face == face and np.array_equal(one.vector, emb.vector)


def test_sources_agree_and_are_deterministic(pipeline: FacePipeline, astronaut: np.ndarray) -> None:
    png = io.BytesIO()
    Image.fromarray(astronaut).save(png, format="PNG")
    from_array = pipeline.embed_one(astronaut)
    from_bytes = pipeline.embed_one(png.getvalue())
    assert from_bytes.face == from_array.face
    assert np.array_equal(from_bytes.vector, from_array.vector)
    assert np.array_equal(pipeline.embed_one(astronaut).vector, from_array.vector)


def test_mirrored_image_mirrors_the_box(pipeline: FacePipeline, astronaut: np.ndarray) -> None:
    original = pipeline.embed_one(astronaut)
    flipped = pipeline.embed_one(np.ascontiguousarray(astronaut[:, ::-1]))
    w = astronaut.shape[1]
    x1, y1, x2, y2 = original.face.box
    # MTCNN is not exactly mirror-symmetric (its grid and regression are not): allow 10% of the face.
    np.testing.assert_allclose(flipped.face.box, (w - x2, y1, w - x1, y2), atol=0.1 * (x2 - x1))
    # A mirrored crop is a different input: the (random) encoder gives a different vector.
    assert float(original.vector @ flipped.vector) < 0.999


def test_no_face(pipeline: FacePipeline) -> None:
    gray = np.full((240, 320, 3), 128, np.uint8)
    assert pipeline.embed(gray) == []
    with pytest.raises(NoFaceFound):
        pipeline.embed_one(gray)


def test_blurry_face_rejected_only_when_required(pipeline: FacePipeline, astronaut: np.ndarray) -> None:
    blurred = np.asarray(Image.fromarray(astronaut).filter(ImageFilter.GaussianBlur(3)))
    lenient = pipeline.embed_one(blurred)  # verification reports quality but does not enforce it
    assert QualityReason.BLURRY in lenient.face.quality.reasons
    with pytest.raises(QualityRejected) as info:
        pipeline.embed_one(blurred, require_quality=True)
    assert QualityReason.BLURRY in info.value.reasons and "BLURRY" in str(info.value)


def test_two_faces_best_and_max(pipeline: FacePipeline, two_faces: np.ndarray) -> None:
    embs = pipeline.embed(two_faces)
    assert len(embs) == 2
    assert len(pipeline.embed(two_faces, max_faces=1)) == 1
    with pytest.raises(InvalidInput):
        pipeline.embed(two_faces, max_faces=0)
    best = pipeline.embed_one(two_faces)
    assert best.face.box[2] < 512  # the large face, in the left half
    assert best_face([e.face for e in embs]) == best.face
    by_box = {e.face.box: e.vector for e in embs}
    np.testing.assert_allclose(by_box[best.face.box], best.vector, atol=BATCH_ATOL)


def test_embed_many_equals_embed(
    pipeline: FacePipeline, encoder: FaceEncoder, astronaut: np.ndarray, two_faces: np.ndarray
) -> None:
    calls: list[int] = []

    def counting_encode(crops: np.ndarray) -> np.ndarray:  # what a batcher does: forward to the encoder
        calls.append(len(crops))
        return encoder.encode(crops)

    many_pipeline = FacePipeline(pipeline.detector, encoder, encode_fn=counting_encode)
    gray = np.full((512, 512, 3), 128, np.uint8)
    images = [astronaut, gray, two_faces, np.ascontiguousarray(astronaut[:, ::-1])]
    seen: list[tuple[int, int | None]] = []
    many = many_pipeline.embed_many(images, progress=lambda done, total: seen.append((done, total)))
    assert calls == [4]  # every crop of every image encoded in one call
    assert seen == [(4, 4)]
    assert [len(m) for m in many] == [1, 0, 2, 1]
    for got, image in zip(many, images, strict=True):
        single = pipeline.embed(image)
        assert len(got) == len(single)
        for g, s in zip(got, single, strict=True):
            # Batched MTCNN runs its nets on a stacked tensor: boxes agree to float rounding (~1e-5 px).
            np.testing.assert_allclose(g.face.box, s.face.box, atol=1e-3)
            assert g.face.quality.reasons == s.face.quality.reasons
            np.testing.assert_allclose(g.vector, s.vector, atol=BATCH_ATOL)
            assert g.model_id == s.model_id


def test_embed_crop_equals_the_detected_face_embedding(
    pipeline: FacePipeline, encoder: FaceEncoder, astronaut: np.ndarray
) -> None:
    calls: list[int] = []

    def counting_encode(crops: np.ndarray) -> np.ndarray:  # the server's batcher hook
        calls.append(len(crops))
        return encoder.encode(crops)

    hooked = FacePipeline(pipeline.detector, encoder, encode_fn=counting_encode)
    full = pipeline.embed_one(astronaut)
    [crop] = crop_faces(astronaut, [full.face])
    png = io.BytesIO()
    Image.fromarray(crop).save(png, format="PNG")
    got = hooked.embed_crop(png.getvalue())
    assert calls == [1]  # encoded through the hook, no detection
    assert got.face is None and got.model_id == full.model_id
    np.testing.assert_allclose(got.vector, full.vector, atol=1e-6)
    # Another size is resized to crop_size with PIL's bilinear filter, like crop_faces.
    big = np.asarray(Image.fromarray(crop).resize((240, 200), Image.Resampling.BICUBIC))
    reference = np.array(Image.fromarray(big).resize((160, 160), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(pipeline.embed_crop(big).vector, encoder.encode(reference[None])[0], atol=1e-6)


def test_embed_crop_refuses_what_is_not_a_face_crop(pipeline: FacePipeline, astronaut: np.ndarray) -> None:
    for source, message in [
        (b"not an image", "unrecognised or unsupported image format"),
        (np.zeros((20, 20, 3), np.uint8), "at least 32 px a side, got 20x20"),
        (np.zeros((40, 160, 3), np.uint8), r"roughly square \(at most 2:1\), got 160x40"),
    ]:
        with pytest.raises(InvalidImage, match=message):
            pipeline.embed_crop(source)
    with pytest.raises(DeadlineExceeded):
        pipeline.embed_crop(astronaut[:160, :160], deadline=0.0)
