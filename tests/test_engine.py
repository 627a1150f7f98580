"""FaceEngine over a real Gallery: embedding paths always; image paths with the real pipeline when present."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.config import GalleryConfig
from embeddings.engine import FaceEngine
from embeddings.errors import CollectionNotFound, ModelMismatch, RequestIdReused, Unavailable
from embeddings.gallery import Gallery
from embeddings.synthetic.gallery import identity_embeddings, noisy_faces

DIM = 32


@pytest.fixture
def engine(tmp_path):
    g = Gallery.open(GalleryConfig(data_dir=tmp_path, default_threshold=0.5), background=False)
    yield FaceEngine(None, g)
    g.close()


def test_embedding_paths(engine) -> None:
    vecs, ident = identity_embeddings(40, faces_per_identity=4, dim=DIM, seed=2)
    engine.create_collection("c", threshold=0.55)
    for s in range(10):
        res = engine.enroll_embeddings("c", f"p{s}", vecs[ident == s], "m", request_id=f"r{s}")
        assert len(res.face_ids) == 4
    q = noisy_faces([7], dim=DIM, seed=2)[0]
    cands = engine.identify_embedding(q, "m", "c", k=3)
    ref = max(range(10), key=lambda s: float(np.max(vecs[ident == s] @ q)))
    assert cands[0].subject_id == f"p{ref}" and all(c.is_match == (c.score >= 0.55) for c in cands)
    d = engine.verify_embedding(q, "m", "c", "p7")
    assert d.score == pytest.approx(float(np.max(vecs[ident == 7] @ q)), abs=1e-5) and d.threshold == 0.55
    with pytest.raises(ModelMismatch):
        engine.verify_embedding(q, "other", "c", "p7")
    assert engine.collection_stats("c").faces == 40
    page, token = engine.list_subjects("c", page_size=10)
    assert len(page) == 10 and token is None
    assert engine.delete_subject("c", "p7") == list(range(29, 33))
    assert all(c.subject_id != "p7" for c in engine.identify_embedding(q, "m", "c", k=10))
    with pytest.raises(Unavailable):
        engine.detect(np.zeros((8, 8, 3), np.uint8))
    engine.delete_collection("c")
    with pytest.raises(CollectionNotFound):
        engine.identify_embedding(q, "m", "c")


def test_image_paths(tmp_path, astronaut) -> None:
    from embeddings.config import EncoderConfig
    from embeddings.detect import FaceDetector
    from embeddings.encode import FaceEncoder
    from embeddings.errors import NoFaceFound
    from embeddings.pipeline import FacePipeline

    pipeline = FacePipeline(FaceDetector(), FaceEncoder(EncoderConfig(weights="random")))
    with Gallery.open(GalleryConfig(data_dir=tmp_path), background=False) as g:
        engine = FaceEngine(pipeline, g)
        engine.create_collection("c")
        blank = np.full((200, 200, 3), 128, np.uint8)
        with pytest.raises(NoFaceFound):
            engine.enroll("c", "eileen", [astronaut, blank])
        assert engine.collection_stats("c").faces == 0  # nothing stored when one image fails
        res = engine.enroll("c", "eileen", [astronaut])
        assert len(res.face_ids) == 1
        found = engine.identify(astronaut, "c", k=1)
        assert found.candidates[0].subject_id == "eileen"
        assert found.candidates[0].score == pytest.approx(1.0, abs=1e-3)
        v = engine.verify_images(astronaut, astronaut)
        assert v.decision.is_match and v.decision.model_id == pipeline.model_id
        assert engine.verify_subject(astronaut, "c", "eileen").decision.is_match
        assert found.threshold == g.get_collection("c").threshold  # the threshold is_match was decided with
        # A request id replays the same images; other image bytes under it are refused, nothing stored.
        first = engine.enroll("c", "eileen", [astronaut], request_id="R1")
        assert engine.enroll("c", "eileen", [astronaut.copy()], request_id="R1").face_ids == first.face_ids
        with pytest.raises(RequestIdReused):
            engine.enroll("c", "eileen", [np.ascontiguousarray(astronaut[:, ::-1])], request_id="R1")
        assert engine.collection_stats("c").faces == 2
