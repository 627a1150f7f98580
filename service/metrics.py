"""Prometheus metrics: RPCs by method and status code, latency, encoder batch sizes, faces per collection.

Exposed over HTTP by :meth:`Metrics.start_http_server` (``server.metrics_port``; off by
default). Each :class:`Metrics` has its own registry, so several servers in one process
(tests) never clash.

    latentface_rpc_total{service, method, code}          counter
    latentface_rpc_duration_seconds{service, method}     histogram
    latentface_rpc_in_flight{service, method}            gauge
    latentface_encode_batch_size                         histogram (rows per encoder call)
    latentface_collection_faces{collection}              gauge (set, or read from a callback at scrape time;
                                                         the server's callback reads in-memory index sizes)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server as _prom_http_server
from prometheus_client.core import GaugeMetricFamily

from service._rpc_wrap import wrap_handler

__all__ = ["Metrics"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").rpartition("/")
    return service or "unknown", method or full


class _FacesCollector:
    """``latentface_collection_faces``: values set directly, or read from a callback on each scrape."""

    def __init__(self) -> None:
        self._values: dict[str, float] = {}
        self._source: Callable[[], Mapping[str, int]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("latentface_collection_faces", "Faces stored per collection", labels=["collection"])
        with self._lock:
            values = dict(self._values)
            source = self._source
        if source is not None:
            try:
                values.update({str(k): float(v) for k, v in source().items()})
            except Exception:  # noqa: BLE001 - a failing callback must not break the scrape
                log.exception("faces-per-collection callback failed")
        for name, n in sorted(values.items()):
            family.add_metric([name], n)
        yield family

    def describe(self) -> list:
        return []  # collected lazily; no fixed description at registration


class Metrics:
    """The server's metrics in one registry (a fresh one unless ``registry`` is given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.rpc_total = Counter(
            "latentface_rpc", "RPCs handled, by method and status code", ["service", "method", "code"], registry=self.registry
        )
        self.rpc_seconds = Histogram(
            "latentface_rpc_duration_seconds",
            "RPC latency in seconds, by method",
            ["service", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rpc_in_flight = Gauge(
            "latentface_rpc_in_flight", "RPCs being served now", ["service", "method"], registry=self.registry
        )
        self.batch_size = Histogram(
            "latentface_encode_batch_size", "Face crops per encoder call", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self._faces = _FacesCollector()
        self.registry.register(self._faces)
        self._http: Any = None

    # --- hooks -------------------------------------------------------------------------
    def observe_batch(self, size: int) -> None:
        """Record one encoder call of ``size`` rows (pass as the batcher's ``on_batch``)."""
        self.batch_size.observe(size)

    def set_faces(self, collection: str, n: int) -> None:
        with self._faces._lock:
            self._faces._values[collection] = float(n)

    def remove_faces(self, collection: str) -> None:
        with self._faces._lock:
            self._faces._values.pop(collection, None)

    def faces_source(self, fn: Callable[[], Mapping[str, int]] | None) -> None:
        """Read faces per collection from ``fn()`` at each scrape (e.g. from the gallery's stats)."""
        with self._faces._lock:
            self._faces._source = fn

    # --- exposition ----------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition format, as the HTTP endpoint serves it."""
        return generate_latest(self.registry)

    def start_http_server(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` in a daemon thread; returns the bound port (``port=0`` picks one)."""
        server, _thread = _prom_http_server(port, addr=addr, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # --- gRPC ------------------------------------------------------------------------------
    def interceptor(self) -> grpc.ServerInterceptor:
        """A server interceptor counting every RPC by method and final status code, and timing it."""
        return _MetricsInterceptor(self)


def _code_of(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return code.name


class _MetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split_method(handler_call_details.method)
        m = self._m

        def finish(context: grpc.ServicerContext, start: float, failed: bool, code: str | None = None) -> None:
            m.rpc_in_flight.labels(service, method).dec()
            m.rpc_seconds.labels(service, method).observe(time.perf_counter() - start)
            m.rpc_total.labels(service, method, code or _code_of(context, failed)).inc()

        def unary(behavior):  # type: ignore[no-untyped-def]
            def call(request, context):  # type: ignore[no-untyped-def]
                m.rpc_in_flight.labels(service, method).inc()
                start = time.perf_counter()
                failed = True
                try:
                    response = behavior(request, context)
                    failed = False
                    return response
                finally:
                    finish(context, start, failed)

            return call

        def streaming(behavior):  # type: ignore[no-untyped-def]
            def call(request, context):  # type: ignore[no-untyped-def]
                m.rpc_in_flight.labels(service, method).inc()
                start = time.perf_counter()
                failed, code = True, None
                try:
                    yield from behavior(request, context)
                    failed = False
                except GeneratorExit:
                    code = "CANCELLED"  # the stream was closed before its end: the client went away
                    raise
                finally:
                    finish(context, start, failed, code)

            return call

        return wrap_handler(handler, unary=unary, streaming=streaming)
