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
