"""verify / verify_subject / identify against brute force; calibrate against a brute-force count."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.config import GalleryConfig
from embeddings.errors import InvalidInput, ModelMismatch, SubjectNotFound
from embeddings.gallery import Gallery
from embeddings.match import calibrate, cosine, identify, verify, verify_subject
from embeddings.synthetic.gallery import identity_embeddings, noisy_faces
from embeddings.types import FaceEmbedding

DIM = 32


@pytest.fixture
def gallery(tmp_path):
    vecs, ident = identity_embeddings(600, faces_per_identity=6, dim=DIM, seed=11)
    g = Gallery.open(GalleryConfig(data_dir=tmp_path, default_threshold=0.5), background=False)
    g.create_collection("c")
    g.bulk_enroll("c", [f"p{i:03d}" for i in ident], vecs, model_id="m")
    yield g, vecs, ident
    g.close()


def test_cosine_and_verify(rng) -> None:
    a, b = rng.standard_normal(DIM), rng.standard_normal(DIM)
    ref = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cosine(a, b) == pytest.approx(ref, abs=1e-6)
    d = verify(a, b, threshold=float(ref) - 1e-3, model_id="m")
    assert d.is_match and d.model_id == "m" and d.score == pytest.approx(ref, abs=1e-6)
    assert not verify(a, b, threshold=float(ref) + 1e-3, model_id="m").is_match
    fa, fb = FaceEmbedding(None, a, "m1"), FaceEmbedding(None, b, "m2")
    with pytest.raises(ModelMismatch):
        verify(fa, fb, threshold=0.5)
    with pytest.raises(ModelMismatch):
        verify(fa, b, threshold=0.5, model_id="m2")
    with pytest.raises(InvalidInput):
        cosine(a, b[:-1])


def test_verify_subject_is_best_face(gallery) -> None:
    g, vecs, ident = gallery
    q = noisy_faces([3], dim=DIM, seed=11)[0]
    d = verify_subject(g, "c", q, "m", "p003")
    assert d.score == pytest.approx(float(np.max(vecs[ident == 3] @ q)), abs=1e-5)
    assert d.threshold == 0.5 and d.is_match == (d.score >= 0.5)
    with pytest.raises(ModelMismatch):
        verify_subject(g, "c", q, "other", "p003")
    with pytest.raises(SubjectNotFound):
        verify_subject(g, "c", q, "m", "nobody")
    with pytest.raises(InvalidInput, match="cosine"):  # as verify refuses it
        verify_subject(g, "c", q, "m", "p003", threshold=1.5)


def test_identify_top_subjects_match_brute_force(gallery) -> None:
    g, vecs, ident = gallery
    queries = noisy_faces(np.arange(0, 100, 10), dim=DIM, seed=11, noise_seed=4)
    for q in queries:
        got = identify(g, "c", q, "m", k=5, threshold=0.6)
        best = {}
        for s, i in zip(vecs @ q, ident, strict=True):  # brute force: best face per subject
            best[i] = max(best.get(i, -2.0), float(s))
        ref = sorted(best.items(), key=lambda kv: -kv[1])[:5]
        assert [c.subject_id for c in got] == [f"p{i:03d}" for i, _ in ref]
        np.testing.assert_allclose([c.score for c in got], [s for _, s in ref], atol=1e-5)
        assert [c.is_match for c in got] == [s >= 0.6 for _, s in ref]
        assert len({c.subject_id for c in got}) == 5
    # Collection threshold when none is given.
    assert all(c.is_match == (c.score >= 0.5) for c in identify(g, "c", queries[0], "m", k=3))
    with pytest.raises(ModelMismatch):
        identify(g, "c", queries[0], "other")
    with pytest.raises(InvalidInput, match="cosine"):
        identify(g, "c", queries[0], "m", threshold=-1.01)


def test_identify_dedupes_many_faces_of_one_subject(tmp_path, rng) -> None:
    centre = rng.standard_normal(DIM)
    with Gallery.open(GalleryConfig(data_dir=tmp_path), background=False) as g:
        g.create_collection("c")
        # 60 near-duplicates of one subject crowd the top faces; two other subjects are further away.
        g.enroll("c", "crowd", centre + 0.01 * rng.standard_normal((60, DIM)), model_id="m")
        g.enroll("c", "x", centre + 0.8 * rng.standard_normal(DIM), model_id="m")
        g.enroll("c", "y", -centre, model_id="m")
        got = identify(g, "c", centre, "m", k=3)
        assert got[0].subject_id == "crowd"
        assert {c.subject_id for c in got} == {"crowd", "x", "y"}


def brute_calibrate(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """Try every candidate (each score and the float just above it); the smallest meeting the target."""
    imp = scores[~labels]
    cands = np.sort(np.concatenate([scores, np.nextafter(scores, np.inf)]))
    for t in cands:
        if np.count_nonzero(imp >= t) / len(imp) <= target:
            return float(t)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("target", [0.1, 0.01, 0.05])
def test_calibrate_against_brute_force(rng, target: float) -> None:
    gen = rng.normal(0.7, 0.1, 300)
    imp = np.round(rng.normal(0.1, 0.12, 2000), 2)  # rounded: plenty of ties
    scores = np.concatenate([gen, imp])
    labels = np.concatenate([np.ones(300, bool), np.zeros(2000, bool)])
    res = calibrate(scores, labels, target_fmr=target)
    assert res.threshold == brute_calibrate(scores, labels, target)
    assert res.fmr == np.count_nonzero(imp >= res.threshold) / 2000 <= target
    assert res.fnmr == np.count_nonzero(gen < res.threshold) / 300
    assert (res.n_genuine, res.n_impostor) == (300, 2000)


def test_calibrate_refuses_unresolvable_target(rng) -> None:
    scores, labels = rng.random(150), np.arange(150) < 60  # 90 impostors
    with pytest.raises(InvalidInput):
        calibrate(scores, labels, target_fmr=0.01)
    with pytest.raises(InvalidInput):
        calibrate(scores, labels, target_fmr=0.0)
    assert calibrate(scores, labels, target_fmr=0.2).n_impostor == 90
