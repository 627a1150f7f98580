"""Every RPC end to end: a real server on port 0 (random seeded weights, real MTCNN, FAISS, SQLite)
and the real client. One server per module keeps start-up cost down."""

from __future__ import annotations

import dataclasses
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from embeddings import errors
from embeddings.align import crop_faces
from embeddings.image import decode_image
from service.client import Client
from service.config import load_config
from service.server import SERVICE_NAMES, create_server


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("server-data")
    config = load_config(
        {
            "data_dir": str(data_dir),
            "weights": "random",
            "offline": True,
            "server.port": 0,
            "server.batch_max_wait_ms": 20,
            "decode.max_pixels": 4_000_000,
        },
        env={},
    )
    srv, port = create_server(config)
    srv.start()
    yield srv
    srv.stop(2.0)


@pytest.fixture(scope="module")
def admin_key(server) -> str:
    assert server.admin_key_path is not None
    assert server.admin_key_path.stat().st_mode & 0o777 == 0o600
    return server.admin_key_path.read_text().strip()


@pytest.fixture(scope="module")
def client(server, admin_key):
    with Client(f"127.0.0.1:{server.port}", admin_key) as c:
        yield c


@pytest.fixture(scope="module")
def photo(astronaut: np.ndarray) -> bytes:
    return _jpeg(astronaut)


@pytest.fixture(scope="module")
def small_face(astronaut: np.ndarray) -> bytes:
    """The astronaut's head, 224 px: a cheap one-face image."""
    crop = Image.fromarray(astronaut).crop((130, 10, 330, 230)).resize((224, 224), Image.Resampling.BICUBIC)
    return _jpeg(np.asarray(crop))


@pytest.fixture(scope="module")
def embedded(client: Client, photo: bytes):
    faces = client.embed(photo)
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def gallery(client: Client, photo: bytes, embedded):
    """Collection "people": alice (the photo) and 20 synthetic subjects of the same model."""
    client.create_collection("people", threshold=0.5)
    first = client.enroll("people", "alice", [photo], display_name="Alice", metadata={"team": "a"}, groups={"age": "30-39"}, request_id="alice-1")
    rng = np.random.default_rng(7)
    vectors = _unit(rng, 20)
    for i, v in enumerate(vectors):
        client.enroll("people", f"s{i:02d}", embeddings=[(v, embedded.model_id)])
    return first, vectors


# -- faces ---------------------------------------------------------------------------------------------
def test_detect_returns_box_landmarks_probability_quality(client: Client, photo: bytes, astronaut) -> None:
    faces = client.detect(photo)
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.box
    h, w = astronaut.shape[:2]
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and (x2 - x1) > 60
    assert len(face.landmarks) == 5
    assert all(x1 - 5 <= x <= x2 + 5 and y1 - 5 <= y <= y2 + 5 for x, y in face.landmarks)
    assert face.probability > 0.9
    assert face.quality.reasons == ()


def test_embed_is_unit_norm_tagged_and_deterministic(client: Client, photo: bytes, embedded) -> None:
    assert embedded.vector.shape == (512,)
    assert np.linalg.norm(embedded.vector) == pytest.approx(1.0, abs=1e-5)
    assert "RANDOM" in embedded.model_id
    again = client.embed(photo)[0]
    np.testing.assert_allclose(again.vector, embedded.vector, atol=1e-5)


# -- enrollment and subjects ---------------------------------------------------------------------------
def test_enroll_is_idempotent_with_request_id(client: Client, photo: bytes, gallery) -> None:
    first, _ = gallery
    assert first.created_subject and not first.replayed and len(first.face_ids) == 1
    # A retry is the same request again (a different one under the same id is refused: #10 item 5).
    again = client.enroll(
        "people", "alice", [photo], display_name="Alice", metadata={"team": "a"}, groups={"age": "30-39"}, request_id="alice-1"
    )
    assert again.replayed and again.face_ids == first.face_ids
    subject = client.get_subject("people", "alice")
    assert subject.face_ids == first.face_ids
    assert subject.display_name == "Alice" and subject.metadata == {"team": "a"} and subject.groups == {"age": "30-39"}


def test_list_subjects_pages_cover_everything_once(client: Client, gallery) -> None:
    page = client.list_subjects("people", page_size=8)
    assert len(page.subjects) == 8 and page.next_page_token
    ids = [s.subject_id for s in client.iter_subjects("people", page_size=8)]
    assert ids == sorted(["alice", *(f"s{i:02d}" for i in range(20))])


def test_enroll_stream_reports_enrolled_and_rejected(client: Client, embedded, gallery) -> None:
    client.create_collection("bulk")
    rng = np.random.default_rng(11)
    vectors = _unit(rng, 3)
    items = [
        {"collection": "bulk", "subject_id": "b0", "embeddings": [(vectors[0], embedded.model_id)]},
        {"collection": "bulk", "subject_id": "b1", "images": [b"not an image"]},
        {"collection": "bulk", "subject_id": "b2", "embeddings": [(vectors[1], embedded.model_id)]},
        {"collection": "bulk", "subject_id": "b3", "embeddings": [(vectors[2], "other-model")]},
    ]
    result = client.enroll_stream(items)
    assert result.enrolled == 2 and result.faces == 2
    assert [(r.index, r.subject_id, r.code) for r in result.rejected] == [(1, "b1", "INVALID_ARGUMENT"), (3, "b3", "INVALID_ARGUMENT")]
    assert [s.subject_id for s in client.iter_subjects("bulk")] == ["b0", "b2"]


# -- matching ------------------------------------------------------------------------------------------
def test_verify_image_image_carries_score_threshold_model(client: Client, photo: bytes, embedded) -> None:
    result = client.verify(image=photo, reference_image=photo)
    assert result.decision.score == pytest.approx(1.0, abs=1e-4)
    assert result.decision.is_match and result.decision.model_id == embedded.model_id
    assert result.decision.threshold == pytest.approx(0.5)  # server default without a collection
    assert result.probe_face is not None and result.reference_face is not None
    strict = client.verify(image=photo, reference_image=photo, threshold=0.99999 + 1e-6)
    assert strict.decision.threshold == pytest.approx(0.999991)


def test_verify_against_subject_matches_brute_force(client: Client, photo: bytes, embedded, gallery) -> None:
    _, vectors = gallery
    by_image = client.verify(image=photo, subject_id="s03", collection="people")
    expected = float(embedded.vector @ vectors[3])
    assert by_image.decision.score == pytest.approx(expected, abs=1e-4)
    assert by_image.decision.is_match is (expected >= 0.5)
    assert by_image.decision.threshold == pytest.approx(0.5) and by_image.probe_face is not None
    by_vec = client.verify(embedding=(vectors[3], embedded.model_id), subject_id="s03", collection="people")
    assert by_vec.decision.score == pytest.approx(1.0, abs=1e-5) and by_vec.decision.is_match
    assert by_vec.probe_face is None


def test_identify_top_k_equals_brute_force(client: Client, photo: bytes, embedded, gallery) -> None:
    _, vectors = gallery
    result = client.identify(photo, "people", k=4)
    scores = {f"s{i:02d}": float(embedded.vector @ v) for i, v in enumerate(vectors)}
    scores["alice"] = 1.0
    expected = sorted(scores, key=lambda s: -scores[s])[:4]
    assert [c.subject_id for c in result.candidates] == expected
    for c in result.candidates:
        assert c.decision.score == pytest.approx(scores[c.subject_id], abs=1e-4)
        assert c.decision.threshold == pytest.approx(0.5) and c.decision.model_id == embedded.model_id
        assert c.decision.is_match is (scores[c.subject_id] >= 0.5)
    assert result.face is not None


def test_delete_face_and_subject(client: Client, embedded) -> None:
    client.create_collection("deletes")
    rng = np.random.default_rng(3)
    v = _unit(rng, 2)
    r = client.enroll("deletes", "d", embeddings=[(v[0], embedded.model_id), (v[1], embedded.model_id)])
    client.delete_face("deletes", r.face_ids[0])
    assert client.get_subject("deletes", "d").face_ids == r.face_ids[1:]
    with pytest.raises(errors.NotFound):
        client.delete_face("deletes", r.face_ids[0])
    assert client.delete_subject("deletes", "d") == 1
    with pytest.raises(errors.NotFound):
        client.get_subject("deletes", "d")
    assert client.collection_stats("deletes").faces == 0


# -- collections ---------------------------------------------------------------------------------------
def test_collection_lifecycle_threshold_and_calibrate(client: Client, embedded) -> None:
    created = client.create_collection("coll", threshold=0.4)
    assert created.threshold == pytest.approx(0.4)
    with pytest.raises(errors.AlreadyExists):
        client.create_collection("coll")
    assert "coll" in {c.name for c in client.list_collections()}
    assert client.set_threshold("coll", 0.61).threshold == pytest.approx(0.61)
    # Planted pairs: impostors in [0, 0.3), genuines in [0.6, 0.9): any threshold in between gives FMR 0.
    rng = np.random.default_rng(5)
    imp, gen = rng.uniform(0, 0.3, 400), rng.uniform(0.6, 0.9, 100)
    cal = client.calibrate(np.r_[imp, gen], [False] * 400 + [True] * 100, target_fmr=0.01, collection="coll", apply=True)
    assert cal.n_impostor == 400 and cal.n_genuine == 100 and cal.applied
    assert 0.2 < cal.threshold <= 0.6 and cal.fmr <= 0.01 and cal.fnmr == 0.0
    stats = client.collection_stats("coll")
    assert stats.collection.threshold == pytest.approx(cal.threshold) and stats.faces == 0
    client.delete_collection("coll")
    with pytest.raises(errors.NotFound):
        client.collection_stats("coll")


# -- errors --------------------------------------------------------------------------------------------
def test_bad_inputs_map_to_status_codes(client: Client, photo: bytes, embedded, gallery) -> None:
    cases = [
        (lambda: client.detect(b"\x89PNG garbage"), errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.embed(b""), errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.enroll("people", "x", [_png(np.zeros((200, 200, 3), np.uint8))]), errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.verify(image=photo), errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.verify(embedding=(embedded.vector, "other-model"), subject_id="alice", collection="people"), errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.identify(photo, "people", k=100_000), errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.identify(photo, "nope"), errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (lambda: client.get_subject("people", "nobody"), errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (lambda: client.verify(image=photo, subject_id="nobody", collection="people"), errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (lambda: client.detect(_png(np.zeros((2100, 2100, 3), np.uint8))), errors.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ]
    for call, cls, code in cases:
        with pytest.raises(cls) as info:
            call()
        assert info.value.status_code is code, info.value
        assert info.value.request_id  # every failure carries the request id for support


# -- auth ----------------------------------------------------------------------------------------------
def test_auth_statuses(server, client: Client, photo: bytes, gallery) -> None:
    address = f"127.0.0.1:{server.port}"
    client.create_collection("other")
    read_id, read_key = server.keystore.create(name="reader", role="read", collections=["people"])
    revoked_id, revoked_key = server.keystore.create(name="gone", role="write", collections=["*"])
    server.keystore.revoke(revoked_id)
    with Client(address) as anonymous, Client(address, "lf_wrong") as wrong, Client(address, revoked_key) as revoked:
        for c in (anonymous, wrong, revoked):
            with pytest.raises(errors.Unauthenticated):
                c.list_subjects("people")
    with Client(address, read_key) as reader:
        assert reader.get_subject("people", "alice").subject_id == "alice"
        assert [c.name for c in reader.list_collections()] == ["people"]
        with pytest.raises(errors.PermissionDenied):
            reader.enroll("people", "mallory", [photo])
        with pytest.raises(errors.PermissionDenied):
            reader.list_subjects("other")
        with pytest.raises(errors.PermissionDenied):
            reader.create_collection("mine")


# -- health, reflection, concurrency -------------------------------------------------------------------
def test_health_serving_and_reflection_lists_services(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "latentface.v1.FaceService", "latentface.v1.CollectionService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"latentface.v1.FaceService", "latentface.v1.CollectionService", "grpc.health.v1.Health"} <= names
    assert names <= set(SERVICE_NAMES)


_CALLS = 24  # per thread, 16 threads: half of them embeds


def test_concurrent_mixed_calls_equal_sequential_and_batch(server, admin_key, small_face: bytes, embedded, gallery) -> None:
    _, vectors = gallery
    address = f"127.0.0.1:{server.port}"
    calls = {
        "embed": lambda c: c.embed(small_face)[0].vector,
        "verify_emb": lambda c: c.verify(embedding=(vectors[5], embedded.model_id), subject_id="s07", collection="people").decision.score,
        "subject": lambda c: tuple(c.get_subject("people", "s02").face_ids),
        "stats": lambda c: c.collection_stats("people").faces,
    }
    order = ["embed", "verify_emb", "embed", "subject", "embed", "stats"]
    with Client(address, admin_key) as c:
        expected = {name: fn(c) for name, fn in calls.items()}
    before = server.batch_stats()
    errors_seen: list[BaseException] = []
    mismatches: list[str] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        with Client(address, admin_key) as c:
            for i in range(_CALLS):
                name = order[(t + i) % len(order)]
                try:
                    got = calls[name](c)
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    with lock:
                        errors_seen.append(exc)
                    continue
                same = np.allclose(got, expected[name], atol=1e-5) if name in ("embed", "verify_emb") else got == expected[name]
                if not same:
                    with lock:
                        mismatches.append(f"{name} thread {t} call {i}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(worker, range(16)))
    assert not errors_seen, errors_seen[:3]
    assert not mismatches, mismatches[:5]
    after = server.batch_stats()
    assert after.items - before.items >= 16 * _CALLS // 2  # every embed call went through the batcher
    assert after.max_batch > 1  # concurrent crops were encoded together


# -- aligned face crops (detection done by the caller) -------------------------------------------------
@pytest.fixture(scope="module")
def aligned_crops(photo: bytes, embedded) -> list[bytes]:
    """Four distinct 160 px crops as an on-device SDK sends them (PNG, so the pixels are exact):
    the face the server detected in ``photo``, its mirror image, a darker copy and a shifted cut."""
    pixels = decode_image(photo)
    [crop] = crop_faces(pixels, [embedded.face])
    x1, y1, x2, y2 = embedded.face.box
    shifted = dataclasses.replace(embedded.face, box=(x1 + 8, y1 + 6, x2 + 8, y2 + 6))
    [moved] = crop_faces(pixels, [shifted])
    return [_png(c) for c in (crop, np.ascontiguousarray(crop[:, ::-1]), (crop * 0.7).astype(np.uint8), moved)]


def test_embed_aligned_crop_skips_detection_and_matches_the_full_embed(client: Client, embedded, aligned_crops) -> None:
    [got] = client.embed(aligned_crops[0], aligned_crop=True)
    assert got.face is None  # no detection ran: no box, landmarks or quality verdict
    assert got.model_id == embedded.model_id
    assert np.linalg.norm(got.vector) == pytest.approx(1.0, abs=1e-5)
    assert float(got.vector @ embedded.vector) >= 0.999
    # The other crops are other inputs: a mix-up in the concurrency test below would show.
    others = [client.embed(c, aligned_crop=True)[0].vector for c in aligned_crops[1:]]
    assert all(float(v @ got.vector) < 0.999 for v in others)


def test_bad_aligned_crops_are_invalid_argument(client: Client, photo: bytes) -> None:
    for image, message in [
        (b"garbage", "unrecognised or unsupported image format"),
        (_png(np.zeros((20, 20, 3), np.uint8)), "at least 32 px a side"),
        (_png(np.zeros((40, 160, 3), np.uint8)), "roughly square"),
    ]:
        with pytest.raises(errors.InvalidInput, match=message) as info:
            client.embed(image, aligned_crop=True)
        assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_aligned_crops_equal_sequential_and_batch(server, admin_key, aligned_crops) -> None:
    address = f"127.0.0.1:{server.port}"
    threads, calls_each = 8, 8
    with Client(address, admin_key) as c:
        expected = [c.embed(crop, aligned_crop=True)[0].vector for crop in aligned_crops]
    before = server.batch_stats()

    def worker(t: int) -> list[tuple[int, np.ndarray]]:
        with Client(address, admin_key) as c:
            picks = [(t + i) % len(aligned_crops) for i in range(calls_each)]
            return [(k, c.embed(aligned_crops[k], aligned_crop=True)[0].vector) for k in picks]

    with ThreadPoolExecutor(threads) as pool:
        results = [r for rs in pool.map(worker, range(threads)) for r in rs]
    after = server.batch_stats()
    assert len(results) == threads * calls_each
    for k, vector in results:
        # Same crop alone vs inside a batch: bf16/oneDNN kernels may block a batch differently.
        np.testing.assert_allclose(vector, expected[k], atol=2e-3)
    assert after.items - before.items == threads * calls_each  # every call went through the batcher
    assert after.batches - before.batches < threads * calls_each  # ...and some were encoded together
