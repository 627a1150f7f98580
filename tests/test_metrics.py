"""Observability: Prometheus metrics through a real gRPC server and HTTP scrape; structured logs with request ids."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest

from embeddings.errors import SubjectNotFound
from service.errors import ErrorInterceptor
from service.logs import configure_logging, new_request_id, redact, request_id_from_metadata, request_id_var
from service.metrics import Metrics

log = logging.getLogger("latentface.test")


def _ok(request: bytes, context) -> bytes:
    log.info("handling ok", extra={"collection": "a"})
    return request


def _missing(request: bytes, context) -> bytes:
    raise SubjectNotFound("no subject 's1'")


def _bug(request: bytes, context) -> bytes:
    raise ZeroDivisionError("internal detail")


def _stream(request: bytes, context):
    yield from (b"1", b"2", b"3")


@pytest.fixture(scope="module")
def served():
    metrics = Metrics()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[metrics.interceptor(), ErrorInterceptor()])
    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(_ok),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
        "Bug": grpc.unary_unary_rpc_method_handler(_bug),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield metrics, channel
    channel.close()
    server.stop(None)
    metrics.close()


def _call(channel: grpc.Channel, method: str, **kw) -> grpc.StatusCode:
    try:
        channel.unary_unary(f"/test.Svc/{method}")(b"x", timeout=10, **kw)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_calls_counted_by_method_and_status_with_latency(served):
    metrics, channel = served
    codes = [_call(channel, m) for m in ("Ok", "Ok", "Ok", "Missing", "Missing", "Bug")]
    assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.NOT_FOUND] * 2 + [grpc.StatusCode.INTERNAL]
    assert list(channel.unary_stream("/test.Svc/Stream")(b"", timeout=10)) == [b"1", b"2", b"3"]
    value = metrics.registry.get_sample_value

    def total(method: str, code: str) -> float | None:
        return value("latentface_rpc_total", {"service": "test.Svc", "method": method, "code": code})

    assert total("Ok", "OK") == 3
    assert total("Missing", "NOT_FOUND") == 2
    assert total("Bug", "INTERNAL") == 1
    assert total("Stream", "OK") == 1
    assert total("Ok", "NOT_FOUND") is None
    assert value("latentface_rpc_duration_seconds_count", {"service": "test.Svc", "method": "Ok"}) == 3
    assert value("latentface_rpc_duration_seconds_sum", {"service": "test.Svc", "method": "Ok"}) > 0
    assert value("latentface_rpc_in_flight", {"service": "test.Svc", "method": "Ok"}) == 0


def test_batch_sizes_and_faces_per_collection_over_http(served):
    metrics, _channel = served
    for size in (1, 3, 3, 32):
        metrics.observe_batch(size)
    metrics.set_faces("static", 7)
    live = {"a": 2, "b": 5}
    metrics.faces_source(lambda: dict(live))
    port = metrics.start_http_server(0, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert 'latentface_collection_faces{collection="a"} 2.0' in text
    assert 'latentface_collection_faces{collection="static"} 7.0' in text
    assert "latentface_encode_batch_size_count 4.0" in text
    assert "latentface_encode_batch_size_sum 39.0" in text
    assert 'latentface_encode_batch_size_bucket{le="2.0"} 1.0' in text
    assert 'latentface_encode_batch_size_bucket{le="4.0"} 3.0' in text
    live["a"] = 9  # read at scrape time
    assert metrics.registry.get_sample_value("latentface_collection_faces", {"collection": "a"}) == 9
    metrics.faces_source(lambda: 1 / 0)  # a broken callback must not break the scrape
    assert b"latentface_rpc_total" in metrics.render()


def test_two_metrics_objects_do_not_clash():
    a, b = Metrics(), Metrics()
    a.observe_batch(4)
    assert a.registry.get_sample_value("latentface_encode_batch_size_count") == 1
    assert b.registry.get_sample_value("latentface_encode_batch_size_count") == 0


# --- logs ---------------------------------------------------------------------------------------------------
def test_json_logs_carry_request_id_and_extras_and_redact_keys():
    stream = io.StringIO()
    handler = configure_logging("json", stream=stream)
    try:
        token = request_id_var.set("req-123")
        try:
            log.info("verified", extra={"collection": "a", "score": 0.75})
            log.warning("bad header authorization: Bearer lf_abcdefghijklmnopqrstuvwxyz012345")
        finally:
            request_id_var.reset(token)
        log.info("outside a call")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "verified" and lines[0]["request_id"] == "req-123"
    assert lines[0]["collection"] == "a" and lines[0]["score"] == 0.75 and lines[0]["level"] == "INFO"
    assert "lf_abcdefghijklmnop" not in stream.getvalue() and "[REDACTED]" in lines[1]["msg"]
    assert lines[2]["request_id"] is None


def test_text_logs_and_reconfiguring_does_not_duplicate():
    stream = io.StringIO()
    configure_logging("json", stream=io.StringIO())
    handler = configure_logging("text", stream=stream)
    try:
        token = request_id_var.set("abc")
        log.info("hello %s", "world", extra={"faces": 2})
        request_id_var.reset(token)
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("INFO latentface.test [abc] hello world faces=2")
    with pytest.raises(ValueError):
        configure_logging("xml")


def test_request_ids_from_metadata():
    assert request_id_from_metadata([("x-request-id", "client-42")]) == "client-42"
    generated = request_id_from_metadata([("x-request-id", "bad id with spaces\n")])
    assert len(generated) == 32 and generated != new_request_id()
    assert request_id_from_metadata(None) != request_id_from_metadata(None)
    assert redact("key lf_" + "A" * 43 + " end") == "key [REDACTED] end"


def test_a_scrape_reads_faces_from_memory_not_under_the_store_lock(tmp_path):
    """Issue #10 item 16: two COUNT(*) per collection under the store's lock made scrapes wait for enrolls."""
    import threading

    from service.config import load_config
    from service.server import create_server

    config = load_config(
        {"data_dir": str(tmp_path), "weights": "random", "offline": True, "server.port": 0, "server.metrics_port": 0},
        env={},
    )
    srv, _port = create_server(config)
    try:
        engine = srv.engine
        engine.create_collection("m1")
        engine.create_collection("m2")
        rng = np.random.default_rng(0)
        dim = engine.pipeline.encoder.embedding_dim
        vectors = rng.standard_normal((3, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        model_id = engine.model_id
        engine.enroll_embeddings("m1", "a", vectors[:2], model_id)
        engine.enroll_embeddings("m2", "b", vectors[2:], model_id)
        store_lock = engine.gallery._store._lock  # what a long write transaction holds
        held, release = threading.Event(), threading.Event()

        def writer() -> None:
            with store_lock:
                held.set()
                release.wait(10)

        t = threading.Thread(target=writer)
        t.start()
        held.wait(5)
        try:
            start = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            took = time.perf_counter() - start
        finally:
            release.set()
            t.join(10)
        assert 'latentface_collection_faces{collection="m1"} 2.0' in text
        assert 'latentface_collection_faces{collection="m2"} 1.0' in text
        assert took < 1.0, f"the scrape waited {took:.2f} s for the store"
        engine.delete_collection("m2")
        assert srv.metrics.registry.get_sample_value("latentface_collection_faces", {"collection": "m2"}) is None
    finally:
        srv.stop(1.0)
