"""Which calls get a thread, how many long-lived streams may be open, and what shutdown waits for.

grpc's sync server runs every call on a pool thread for its whole life, so a stream that stays
open (``Health/Watch``, reflection, ``WatchJob``) holds a thread until the client leaves. Without
bounds, 16 key-less ``Health/Watch`` streams took all 16 API threads: authenticated calls and
``Health/Check`` timed out, and each SIGTERM waited out the whole grace period. Three rules:

- Health and reflection run on a small pool of their own (:class:`SidePoolInterceptor`, the
  outermost interceptor: grpc honours ``experimental_thread_pool`` on the handler it is given),
  so nothing a key-less caller does can take an API thread.
- Long-lived streams are admitted up to ``max_streams`` in total and ``max_streams_per_peer``
  per client address; beyond that the call ends at once with RESOURCE_EXHAUSTED. The side pool
  has ``max_streams`` + :data:`SIDE_SPARE` threads, so ``Health/Check`` and the rejections
  themselves always find a thread.
- Shutdown waits (up to the grace period) only for the other calls, the ones doing work: once
  they are done the server cancels what is left, so open streams no longer delay the exit.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from embeddings.errors import LimitExceeded
from service._rpc_wrap import wrap_handler

__all__ = ["LONG_LIVED_METHODS", "SIDE_PREFIXES", "SIDE_SPARE", "Admission", "SidePoolInterceptor", "peer_host"]

# Served on the side pool: they need no key, so they must never compete with the API for threads.
SIDE_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# Streams that stay open as long as the client likes (not work the server is doing).
LONG_LIVED_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/latentface.v1.AnalysisService/WatchJob",
    }
)
SIDE_SPARE = 4


def peer_host(peer: str) -> str:
    """The client address of ``context.peer()`` without the port (``ipv4:1.2.3.4:555`` → ``ipv4:1.2.3.4``)."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


def _with_pool(behavior: Callable, pool: futures.ThreadPoolExecutor) -> Callable:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        return behavior(request, context)

    call.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return call


class SidePoolInterceptor(grpc.ServerInterceptor):
    """Runs health and reflection calls on ``pool`` instead of the server's API pool. Must be outermost."""

    def __init__(self, pool: futures.ThreadPoolExecutor) -> None:
        self._pool = pool

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(SIDE_PREFIXES):
            return handler
        wrap = lambda behavior: _with_pool(behavior, self._pool)  # noqa: E731
        return wrap_handler(handler, unary=wrap, streaming=wrap)


class Admission(grpc.ServerInterceptor):
    """Bounds long-lived streams (in total and per peer) and counts the other calls in flight."""

    def __init__(self, *, max_streams: int, max_streams_per_peer: int) -> None:
        self.max_streams = max_streams
        self.max_streams_per_peer = max_streams_per_peer
        self._cv = threading.Condition()
        self._streams: Counter[str] = Counter()
        self._working = 0

    # -- what the server asks ------------------------------------------------------------------
    def open_streams(self) -> int:
        with self._cv:
            return sum(self._streams.values())

    def working(self) -> int:
        """Calls in flight that are not long-lived streams."""
        with self._cv:
            return self._working

    def wait_drained(self, timeout: float | None, *, settle: float = 0.05) -> bool:
        """Block until no working call is in flight (True) or ``timeout`` s pass (False).

        "None in flight" must hold for ``settle`` s: a call accepted before the stop may still sit in
        the pool's queue, to be picked up the moment a worker frees, and must not be cancelled then.
        """
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return self._working == 0
                if self._working:
                    self._cv.wait(left)
                    continue
                self._cv.wait(settle if left is None else min(settle, left))
                if self._working == 0:
                    return True

    # -- bookkeeping -----------------------------------------------------------------------------
    def _admit(self, peer: str) -> None:
        with self._cv:
            total = sum(self._streams.values())
            if total >= self.max_streams:
                raise LimitExceeded(f"too many open streams on this server ({total}); try again later")
            if self._streams[peer] >= self.max_streams_per_peer:
                raise LimitExceeded(
                    f"too many open streams from this client (at most {self.max_streams_per_peer}); close one first"
                )
            self._streams[peer] += 1

    def _leave(self, peer: str) -> None:
        with self._cv:
            self._streams[peer] -= 1
            if self._streams[peer] <= 0:
                del self._streams[peer]

    def _enter_work(self) -> None:
        with self._cv:
            self._working += 1

    def _leave_work(self) -> None:
        with self._cv:
            self._working -= 1
            self._cv.notify_all()

    # -- interceptor -----------------------------------------------------------------------------
    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler_call_details.method in LONG_LIVED_METHODS:
            return wrap_handler(handler, unary=self._bounded_unary, streaming=self._bounded_stream)
        if handler_call_details.method.startswith(SIDE_PREFIXES):
            return handler  # Health/Check: instant, and not work shutdown should wait for
        return wrap_handler(handler, unary=self._counted_unary, streaming=self._counted_stream)

    def _bounded_unary(self, behavior: Callable) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            peer = peer_host(context.peer())
            self._admit(peer)
            try:
                return behavior(request, context)
            finally:
                self._leave(peer)

        return call

    def _bounded_stream(self, behavior: Callable) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            peer = peer_host(context.peer())
            self._admit(peer)
            try:
                yield from behavior(request, context)
            finally:
                self._leave(peer)

        return call

    def _counted_unary(self, behavior: Callable) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            self._enter_work()
            try:
                return behavior(request, context)
            finally:
                self._leave_work()

        return call

    def _counted_stream(self, behavior: Callable) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._enter_work()
            try:
                yield from behavior(request, context)
            finally:
                self._leave_work()

        return call
