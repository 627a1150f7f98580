"""The gRPC server: wiring of servicers, interceptors, health, reflection, batching and shutdown.

:func:`create_server` builds everything from a :class:`ServiceConfig` and binds the port
(``port=0`` picks a free one, for tests) without starting; :func:`serve` is ``latentface serve``:
start, log the address, the weights and the data directory, then wait for SIGTERM/SIGINT and
shut down gracefully (health NOT_SERVING, refuse new calls, drain within ``server.grace_s``,
snapshot the index, exit 0).

Interceptors, outermost first: side pool (health and reflection run on threads of their own) →
metrics (sees every final status) → errors (one mapping of exceptions to status codes, request
ids) → admission (bounds long-lived streams, counts the calls shutdown waits for; see
service/admission.py) → auth (binds the caller for the servicers' checks).
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embeddings.errors import DataDirLocked, Unavailable
from service._generated.latentface.v1 import (
    analysis_pb2,
    analysis_pb2_grpc,
    collection_pb2,
    collection_pb2_grpc,
    face_pb2,
    face_pb2_grpc,
)
from service.admission import SIDE_SPARE, Admission, SidePoolInterceptor
from service.auth import AuthInterceptor, ensure_admin_key, open_keystore
from service.config import ServiceConfig
from service.errors import ErrorInterceptor
from service.servicers import CollectionServicer, FaceServicer, ServingState

__all__ = ["LatentfaceServer", "SERVICE_NAMES", "create_server", "serve"]

log = logging.getLogger("latentface.server")

FACE_SERVICE = face_pb2.DESCRIPTOR.services_by_name["FaceService"].full_name
COLLECTION_SERVICE = collection_pb2.DESCRIPTOR.services_by_name["CollectionService"].full_name
ANALYSIS_SERVICE = analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name
# Services health reports on ("" is the whole server) and reflection lists.
SERVICE_NAMES = (FACE_SERVICE, COLLECTION_SERVICE, ANALYSIS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)


@dataclass(eq=False)
class LatentfaceServer:
    """A bound (not yet started) server and the parts it owns; :meth:`stop` releases all of them."""

    grpc_server: grpc.Server
    port: int
    address: str
    engine: Any
    health: health.HealthServicer
    state: ServingState
    batcher: Any = None
    detect_batcher: Any = None
    batch_worker: Any = None
    metrics: Any = None
    metrics_port: int | None = None
    jobs: Any = None
    keystore: Any = None
    admin_key_path: Path | None = None
    admission: Admission | None = None
    side_pool: futures.ThreadPoolExecutor | None = None
    _owns_engine: bool = True
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.grpc_server.start()
        _set_health(self.health, health_pb2.HealthCheckResponse.SERVING)
        if self.batch_worker is not None and self.batch_worker.failure is not None:
            # It died before or while we said SERVING (its callback may have run first).
            _set_health(self.health, health_pb2.HealthCheckResponse.NOT_SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, let running ones finish within ``grace`` s, flush."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, and it stays so
        self.state.shutting_down.set()  # streams stop taking new messages
        done = self.grpc_server.stop(grace)  # new calls refused from here on
        if self.admission is not None:
            # Wait for the calls doing work only; open Watch/reflection/WatchJob streams would
            # otherwise hold the exit for the whole grace period. Then cancel what is left.
            self.admission.wait_drained(0.0 if grace is None else grace)  # None: grpc cancels everything now
            self.grpc_server.stop(None)
        done.wait()
        if self.side_pool is not None:
            self.side_pool.shutdown(wait=False, cancel_futures=True)
        for name, close in self._closers():
            try:
                close()
            except Exception:  # noqa: BLE001 - one failing part must not keep the others open
                log.exception("error while closing %s", name)

    def _closers(self) -> list[tuple[str, Callable[[], None]]]:
        closers: list[tuple[str, Callable[[], None]]] = []
        if self.jobs is not None:
            closers.append(("jobs", self.jobs.close))
        if self.batch_worker is not None:
            closers.append(("batchers", self.batch_worker.close))
        elif self.batcher is not None:
            closers.append(("batcher", self.batcher.close))
        if self._owns_engine:
            closers.append(("gallery snapshot", self._snapshot))
            closers.append(("gallery", self.engine.close))
        if self.metrics is not None:
            closers.append(("metrics", self.metrics.close))
        if self.keystore is not None:
            closers.append(("key store", self.keystore.close))
        return closers

    def _snapshot(self) -> None:
        self.engine.snapshot()
        log.info("gallery snapshot written")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def batch_stats(self) -> Any:
        """The encoder batcher's counters (None when the engine was passed in without one)."""
        return self.batcher.stats() if self.batcher is not None else None

    def detect_batch_stats(self) -> Any:
        """The MTCNN batcher's counters (images per batch; None without one)."""
        return self.detect_batcher.stats() if self.detect_batcher is not None else None


@dataclass(frozen=True)
class _Batching:
    worker: Any
    detect: Any
    encode: Any

    def close(self) -> None:
        self.worker.close()


def _build_engine(config: ServiceConfig, metrics: Any) -> tuple[Any, _Batching]:
    """Encoder and detector → their dynamic batchers on one worker thread → pipeline → engine.

    Raises WeightsUnavailable before anything binds. Both models run on the one worker thread
    (see service/batching.py for why); MTCNN batches stack same-size downscaled images of
    concurrent calls, the encoder batch their face crops.
    """
    from embeddings.detect import FaceDetector
    from embeddings.pipeline import FacePipeline
    from service.batching import BatchWorker, DynamicBatcher
    from service.runtime import build_encoder, build_engine

    sc = config.server
    encoder = build_encoder(config)
    detector = FaceDetector(config.detector, config.quality)
    worker = BatchWorker()
    try:
        detect_batcher = DynamicBatcher(
            detector.run_network,
            max_batch_size=sc.batch_max_size,
            max_wait_ms=sc.batch_max_wait_ms,
            worker=worker,
            name="detect",
        )
        batcher = DynamicBatcher(
            encoder.encode,
            max_batch_size=sc.batch_max_size,
            max_wait_ms=sc.batch_max_wait_ms,
            on_batch=metrics.observe_batch if metrics is not None else None,
            worker=worker,
            name="encode",
        )
        pipeline = FacePipeline(
            detector, encoder, limits=config.decode, encode_fn=batcher.encode, network_fn=detect_batcher.encode
        )
        engine = build_engine(config, pipeline=pipeline)
    except BaseException:
        worker.close()
        raise
    return engine, _Batching(worker, detect_batcher, batcher)


def _analysis_servicer(config: ServiceConfig, engine: Any) -> tuple[Any, Any]:
    """S2's job manager and AnalysisService, when those modules are present."""
    try:
        from service.jobs_pg import open_job_manager
        from service.servicers.analysis import AnalysisServicer
    except ImportError:
        log.warning("analysis jobs are not available in this build; AnalysisService is not served")
        return None, None
    jobs = open_job_manager(config)  # in PostgreSQL with --store: shared by replicas
    return jobs, AnalysisServicer(jobs, engine, config)


def _faces_per_collection(engine: Any) -> Callable[[], dict[str, int]]:
    """Faces per collection for each scrape, from memory: the live vectors of each collection's index.

    Not the store's COUNT(*)s: two per collection under the store's lock made every scrape wait for,
    and hold up, enrollments. A backend without in-memory names lists them once per scrape.
    """

    def read() -> dict[str, int]:
        out = {}
        for name in engine.collection_names():
            try:
                out[name] = engine.index_size(name)
            except LookupError:  # deleted since the names were read
                continue
        return out

    return read


def create_server(config: ServiceConfig, *, engine: Any = None) -> tuple[LatentfaceServer, int]:
    """Build and bind the server described by ``config``; returns it (not started) and the bound port.

    Without ``engine`` the encoder, the dynamic batcher in front of it and the gallery under
    ``config.data_dir`` are built here (and owned: :meth:`LatentfaceServer.stop` snapshots and
    closes them). A passed-in engine is used as it is and left open. A start that fails (missing
    weights, port in use) removes the data directory again if this start created it, so a typo or
    a missing checkpoint leaves no empty directory that the next start would take as initialised.
    """
    fresh = not config.data_dir.exists()
    try:
        return _create_server(config, engine=engine)
    except BaseException as exc:
        # Not when another process holds it: it created the directory a moment ago and is using it.
        if fresh and config.data_dir.is_dir() and not isinstance(exc, DataDirLocked):
            shutil.rmtree(config.data_dir, ignore_errors=True)
        raise


def _create_server(config: ServiceConfig, *, engine: Any) -> tuple[LatentfaceServer, int]:
    from service.metrics import Metrics

    sc = config.server
    config.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    owns_engine = engine is None
    batching = None
    if engine is None:
        engine, batching = _build_engine(config, metrics)
    parts: dict[str, Any] = {}
    try:
        keystore = open_keystore(config) if sc.auth else None
        parts["keystore"] = keystore
        admin_key_path = (
            ensure_admin_key(keystore, config.data_dir, provided_key_file=sc.admin_key_file)
            if keystore is not None
            else None
        )
        admission = Admission(max_streams=sc.max_streams, max_streams_per_peer=sc.max_streams_per_peer)
        side_pool = futures.ThreadPoolExecutor(
            max_workers=sc.max_streams + SIDE_SPARE, thread_name_prefix="latentface-health"
        )
        parts["side_pool"] = side_pool
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=sc.max_workers, thread_name_prefix="latentface-rpc"),
            interceptors=[
                SidePoolInterceptor(side_pool),
                metrics.interceptor(),
                ErrorInterceptor(),
                admission,
                AuthInterceptor(keystore, enabled=sc.auth),
            ],
            options=[
                ("grpc.max_receive_message_length", sc.max_message_bytes),
                ("grpc.max_send_message_length", sc.max_message_bytes),
            ],
        )
        state = ServingState()
        track = batching.worker.track if batching is not None else None
        face_pb2_grpc.add_FaceServiceServicer_to_server(FaceServicer(engine, state=state, track=track, limits=sc), server)
        collection_pb2_grpc.add_CollectionServiceServicer_to_server(CollectionServicer(engine), server)
        jobs, analysis = _analysis_servicer(config, engine)
        parts["jobs"] = jobs
        if analysis is not None:
            analysis_pb2_grpc.add_AnalysisServiceServicer_to_server(analysis, server)
        health_servicer = health.HealthServicer()
        for name in ("", *SERVICE_NAMES[:3]):
            health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)  # SERVING once started
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if batching is not None:
            # Without its batch worker no image call can be served: say so to probes and load balancers.
            batching.worker.on_failure(lambda _exc: _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING))
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        port = _bind(server, config)
        metrics.faces_source(_faces_per_collection(engine))
        metrics_port = metrics.start_http_server(sc.metrics_port, addr=sc.host) if sc.metrics_port is not None else None
    except BaseException:
        for part in (parts.get("jobs"), batching, parts.get("keystore")):
            if part is not None:
                part.close()
        if parts.get("side_pool") is not None:
            parts["side_pool"].shutdown(wait=False)
        if owns_engine:
            engine.close()
        raise
    lf = LatentfaceServer(
        grpc_server=server,
        port=port,
        address=f"{sc.host}:{port}",
        engine=engine,
        health=health_servicer,
        state=state,
        batcher=batching.encode if batching is not None else None,
        detect_batcher=batching.detect if batching is not None else None,
        batch_worker=batching.worker if batching is not None else None,
        metrics=metrics,
        metrics_port=metrics_port,
        jobs=jobs,
        keystore=keystore,
        admin_key_path=admin_key_path,
        admission=admission,
        side_pool=side_pool,
        _owns_engine=owns_engine,
    )
    return lf, port


def _set_health(servicer: health.HealthServicer, status: Any) -> None:
    for name in ("", *SERVICE_NAMES[:3]):
        servicer.set(name, status)


def _bind(server: grpc.Server, config: ServiceConfig) -> int:
    from service.tls import server_credentials_from_config

    target = f"{config.server.host}:{config.server.port}"
    credentials = server_credentials_from_config(config.server)
    try:
        port = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {target}: {exc}") from exc
    if port == 0:
        raise Unavailable(f"cannot listen on {target} (address in use or not available)")
    return port


def _model_description(engine: Any) -> str:
    encoder = getattr(engine.pipeline, "encoder", None)
    if encoder is None:
        return str(engine.model_id)
    return f"{encoder.model_id} (device {encoder.device}, precision {encoder.precision})"


def serve(config: ServiceConfig, *, ready: Callable[[LatentfaceServer], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; returns the exit code (0)."""
    server, _port = create_server(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s; shutting down (grace %.1f s)", signal.Signals(signum).name, config.server.grace_s)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        tls = "TLS" if config.server.tls_cert else "plaintext"
        if config.server.tls_client_ca:
            tls = "mutual TLS"
        log.info("weights: %s", _model_description(server.engine))
        log.info("data directory: %s", config.data_dir.resolve())
        if server.metrics_port is not None:
            log.info("metrics on http://%s:%d/metrics", config.server.host, server.metrics_port)
        # Last, so that a supervisor (or a test) reading the log knows everything above is settled.
        log.info("listening on %s (%s, auth %s)", server.address, tls, "on" if config.server.auth else "OFF")
        if ready is not None:
            ready(server)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(config.server.grace_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
