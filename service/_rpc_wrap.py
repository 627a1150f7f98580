"""Wrapping a gRPC method handler's behaviour, for server interceptors.

grpc's sync server calls ``intercept_service`` on its polling thread and runs the behaviour
later on a worker thread, so per-call state (context variables, timers) must be set up
inside the behaviour, not in ``intercept_service``. These helpers rebuild a handler of the
same kind (unary/streaming on either side) around a wrapper.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import grpc

__all__ = ["run_in_context", "wrap_handler"]

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    *,
    unary: Callable[[Behavior], Behavior],
    streaming: Callable[[Behavior], Behavior],
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` whose behaviour is wrapped.

    ``unary`` wraps behaviours that return one response, ``streaming`` those that return an
    iterator of responses (its wrapper must itself return an iterator).
    """
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kw)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kw)


def run_in_context(handler: grpc.RpcMethodHandler, setup: Callable[[grpc.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """Run each call of ``handler`` in a fresh copy of the current contextvars context.

    ``setup(context)`` runs first inside that copy (to set context variables, or to abort the
    call); the behaviour, and for streaming responses every step of the response iterator,
    then run in the same copy, so what ``setup`` set is visible throughout the call and never
    leaks into the next call served by the same worker thread.
    """

    def unary(behavior: Behavior) -> Behavior:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            ctx = contextvars.copy_context()
            return ctx.run(_setup_then, setup, behavior, request, context)

        return call

    def streaming(behavior: Behavior) -> Behavior:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            ctx = contextvars.copy_context()
            responses = ctx.run(_setup_then, setup, behavior, request, context)
            return _iterate_in(ctx, responses)

        return call

    return wrap_handler(handler, unary=unary, streaming=streaming)


def _setup_then(setup: Callable[[grpc.ServicerContext], None], behavior: Behavior, request: Any, context: Any) -> Any:
    setup(context)
    return behavior(request, context)


def _iterate_in(ctx: contextvars.Context, responses: Iterator[Any]) -> Iterator[Any]:
    iterator = iter(responses)
    try:
        while True:
            try:
                item = ctx.run(next, iterator)
            except StopIteration:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            ctx.run(close)
