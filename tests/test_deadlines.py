"""Per-call deadlines stop work: in the batchers, between pipeline stages, and through a real server.

A call past its deadline must end with DEADLINE_EXCEEDED *on the server* (not only on the client's
clock), leave the batch queues, and an enrollment past it must store nothing.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from embeddings import errors
from embeddings.config import EncoderConfig
from embeddings.detect import FaceDetector
from embeddings.encode import FaceEncoder
from embeddings.pipeline import FacePipeline
from service.batching import BatchWorker, DynamicBatcher
from service.client import Client
from service.config import load_config
from service.server import create_server


def double(rows: np.ndarray) -> np.ndarray:
    return rows * 2.0


# -- the batchers ------------------------------------------------------------------------------------
def test_rows_of_a_caller_past_its_deadline_are_never_run() -> None:
    ran: list[np.ndarray] = []
    release = threading.Event()

    def slow(rows: np.ndarray) -> np.ndarray:
        ran.append(rows.copy())
        release.wait(5)
        return double(rows)

    with DynamicBatcher(slow, max_batch_size=1, max_wait_ms=0) as batcher:
        busy = threading.Thread(target=batcher.encode, args=(np.zeros((1, 2)),))
        busy.start()
        while not ran:  # the worker is now stuck in the first batch
            time.sleep(0.005)
        with pytest.raises(errors.DeadlineExceeded):
            batcher.encode(np.ones((1, 2)), deadline=time.monotonic() + 0.05)
        release.set()
        busy.join(5)
        assert batcher.encode(np.full((1, 2), 3.0)).tolist() == [[6.0, 6.0]]  # the worker goes on
    assert [r.tolist() for r in ran] == [[[0.0, 0.0]], [[3.0, 3.0]]]  # the expired row was dropped
    with DynamicBatcher(double, max_batch_size=4, max_wait_ms=0) as batcher:
        with pytest.raises(errors.DeadlineExceeded, match="before queueing"):
            batcher.encode(np.ones((1, 2)), deadline=time.monotonic() - 1)


def test_tracked_lone_caller_does_not_wait_but_waits_for_a_tracked_caller_on_its_way() -> None:
    worker = BatchWorker()
    sizes: list[int] = []

    def record(rows: np.ndarray) -> np.ndarray:
        sizes.append(len(rows))
        return double(rows)

    batcher = DynamicBatcher(record, max_batch_size=8, max_wait_ms=2000, worker=worker)
    try:
        with worker.track():
            start = time.monotonic()
            batcher.encode(np.ones((1, 2)))
            assert time.monotonic() - start < 1.0  # nobody else in flight: no 2 s wait
        results: list[np.ndarray] = []
        second_in_flight = threading.Event()
        go = threading.Event()

        def other() -> None:
            with worker.track():
                second_in_flight.set()
                go.wait(5)  # "decoding": in flight but not yet queued
                results.append(batcher.encode(np.full((1, 2), 2.0)))

        t = threading.Thread(target=other)
        t.start()
        second_in_flight.wait(5)
        with worker.track():
            timer = threading.Timer(0.2, go.set)
            timer.start()
            results.append(batcher.encode(np.full((1, 2), 5.0)))
        t.join(5)
        assert sizes == [1, 2]  # the first caller waited for the one on its way, then both ran together
        assert sorted(r.tolist() for r in results) == [[[4.0, 4.0]], [[10.0, 10.0]]]
    finally:
        worker.close()


# -- the pipeline --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder() -> FaceEncoder:
    return FaceEncoder(EncoderConfig(weights="random", seed=0))


def test_pipeline_stops_between_stages(encoder: FaceEncoder, astronaut: np.ndarray) -> None:
    detector = FaceDetector()
    encoded: list[int] = []

    def encode(crops: np.ndarray, *, deadline: float | None = None) -> np.ndarray:
        encoded.append(len(crops))
        return encoder.encode(crops)

    def slow_network(batch: np.ndarray, *, deadline: float | None = None):
        time.sleep(0.3)  # detection outlives the deadline
        return detector.run_network(batch)

    pipeline = FacePipeline(detector, encoder, encode_fn=encode, network_fn=slow_network)
    with pytest.raises(errors.DeadlineExceeded, match="before decoding"):
        pipeline.embed(astronaut, deadline=time.monotonic() - 1)
    with pytest.raises(errors.DeadlineExceeded, match="after detection"):
        pipeline.embed_one(astronaut, deadline=time.monotonic() + 0.1)
    assert encoded == []  # nothing reached the encoder
    [face] = pipeline.embed(astronaut, deadline=time.monotonic() + 60)  # enough time: same answer as without
    assert encoded == [1]
    np.testing.assert_allclose(face.vector, pipeline.embed(astronaut)[0].vector, atol=1e-6)


# -- a real server ---------------------------------------------------------------------------------------
def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    config = load_config(
        {
            "data_dir": str(tmp_path_factory.mktemp("deadline-data")),
            "weights": "random",
            "offline": True,
            "server.port": 0,
            "server.batch_max_wait_ms": 5,
        },
        env={},
    )
    srv, _port = create_server(config)
    srv.start()
    yield srv
    srv.stop(2.0)


def _server_statuses(server, method: str, code: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "latentface_rpc_total", {"service": "latentface.v1.FaceService", "method": method, "code": code}
    )
    return value or 0.0


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_enroll_past_its_deadline_stops_and_stores_nothing(server, astronaut: np.ndarray) -> None:
    key = server.admin_key_path.read_text().strip()
    big = _jpeg(np.asarray(Image.fromarray(astronaut).resize((1600, 1600), Image.Resampling.BILINEAR)))
    images = [big] * 6  # each ~100+ ms to decode and detect: the whole request takes far longer than 0.15 s
    with Client(f"127.0.0.1:{server.port}", key) as client:
        client.create_collection("late")
        encoded_before = server.batch_stats().items
        with pytest.raises(errors.DeadlineExceeded):
            client.enroll("late", "slowpoke", images, timeout=0.15)
        # The server itself ended the call with DEADLINE_EXCEEDED (not OK after finishing the work) ...
        assert _wait_for(lambda: _server_statuses(server, "Enroll", "DEADLINE_EXCEEDED") == 1)
        # ... having stopped early (not every image reached the encoder) and stored nothing.
        assert server.batch_stats().items - encoded_before < len(images)
        with pytest.raises(errors.NotFound):
            client.get_subject("late", "slowpoke")
        assert client.collection_stats("late").faces == 0
        # The same request with time to spare enrolls every image.
        result = client.enroll("late", "slowpoke", images[:2], timeout=60)
        assert len(result.face_ids) == 2
        assert client.collection_stats("late").faces == 2


def test_embed_past_its_deadline_is_deadline_exceeded_on_the_server(server, astronaut: np.ndarray) -> None:
    key = server.admin_key_path.read_text().strip()
    # ~2400 px: decoding and detecting it alone take longer than the 50 ms the client allows.
    big = _jpeg(np.asarray(Image.fromarray(astronaut).resize((2400, 2400), Image.Resampling.BILINEAR)))
    with Client(f"127.0.0.1:{server.port}", key) as client:
        before = _server_statuses(server, "Embed", "DEADLINE_EXCEEDED")
        encoded_before = server.batch_stats().items
        with pytest.raises(errors.DeadlineExceeded):
            client.embed(big, timeout=0.05)
        assert _wait_for(lambda: _server_statuses(server, "Embed", "DEADLINE_EXCEEDED") == before + 1)
        assert _server_statuses(server, "Embed", "OK") == 0
        assert server.batch_stats().items == encoded_before  # stopped before the encoder


# -- issue #10 items 4 and 10: cancellation, a server-side default deadline, caps per request ----------
def _companion(server, tmp_path, **server_flags):
    """A second server over the same engine (and so the same batchers), with other server settings."""
    flags = {"data_dir": str(tmp_path), "weights": "random", "offline": True, "server.port": 0}
    flags.update({f"server.{k}": v for k, v in server_flags.items()})
    srv, _port = create_server(load_config(flags, env={}), engine=server.engine)
    srv.start()
    return srv


def _statuses(srv, method: str, code: str) -> float:
    return _server_statuses(srv, method, code)


def test_a_cancelled_enroll_stops_and_stores_nothing(server, astronaut: np.ndarray) -> None:
    import grpc

    from service._generated.latentface.v1 import face_pb2, face_pb2_grpc

    key = server.admin_key_path.read_text().strip()
    big = _jpeg(np.asarray(Image.fromarray(astronaut).resize((1600, 1600), Image.Resampling.BILINEAR)))
    images = [big] * 12  # ~0.2 s each on two cores: the whole request takes seconds, no deadline set
    with Client(f"127.0.0.1:{server.port}", key) as client:
        client.create_collection("cancelled")
    encoded_before = server.batch_stats().items
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = face_pb2_grpc.FaceServiceStub(channel)
        request = face_pb2.EnrollRequest(collection="cancelled", subject_id="quitter", images=images)
        call = stub.Enroll.future(request, metadata=(("authorization", f"Bearer {key}"),))
        time.sleep(0.6)  # a few images in
        assert call.cancel()
    # The server saw the cancellation between images and ended the call, not after storing all 12.
    assert _wait_for(lambda: _server_statuses(server, "Enroll", "CANCELLED") == 1)
    assert server.batch_stats().items - encoded_before < len(images)
    with Client(f"127.0.0.1:{server.port}", key) as client:
        with pytest.raises(errors.NotFound):
            client.get_subject("cancelled", "quitter")
        assert client.collection_stats("cancelled").faces == 0


def test_server_default_deadline_applies_when_the_client_sets_none(server, astronaut, tmp_path) -> None:
    srv = _companion(server, tmp_path, default_deadline_s=0.2)
    try:
        key = srv.admin_key_path.read_text().strip()
        big = _jpeg(np.asarray(Image.fromarray(astronaut).resize((1600, 1600), Image.Resampling.BILINEAR)))
        with Client(f"127.0.0.1:{srv.port}", key, timeout=None) as client:
            client.create_collection("slow")
            start = time.perf_counter()
            with pytest.raises(errors.DeadlineExceeded):
                client.enroll("slow", "s1", [big] * 8)  # no client deadline at all
            took = time.perf_counter() - start
            assert _statuses(srv, "Enroll", "DEADLINE_EXCEEDED") == 1  # decided by the server
            assert took < 2.0, f"the server's 0.2 s default deadline let the call run {took:.2f} s"
            assert client.collection_stats("slow").faces == 0
            # A client deadline overrides the default, both ways.
            assert len(client.enroll("slow", "s1", [big], timeout=60).face_ids) == 1
    finally:
        srv.stop(2.0)


def test_images_per_request_cap_is_resource_exhausted(server, astronaut, tmp_path) -> None:
    srv = _companion(server, tmp_path, max_images_per_request=3)
    try:
        key = srv.admin_key_path.read_text().strip()
        photo = _jpeg(astronaut)
        with Client(f"127.0.0.1:{srv.port}", key) as client:
            client.create_collection("capped")
            encoded_before = server.batch_stats().items
            with pytest.raises(errors.LimitExceeded, match="4 images in one enrollment, over the limit of 3") as info:
                client.enroll("capped", "many", [photo] * 4)
            assert info.value.status_code.name == "RESOURCE_EXHAUSTED"
            assert server.batch_stats().items == encoded_before  # refused before any work
            # EnrollStream: the capped message is rejected, the others go on.
            result = client.enroll_stream(
                [
                    {"collection": "capped", "subject_id": "a", "images": [photo] * 4},
                    {"collection": "capped", "subject_id": "b", "images": [photo] * 3},
                ]
            )
            assert result.enrolled == 1
            assert [(r.index, r.code) for r in result.rejected] == [(0, "RESOURCE_EXHAUSTED")]
            assert client.collection_stats("capped").faces == 3
    finally:
        srv.stop(2.0)

