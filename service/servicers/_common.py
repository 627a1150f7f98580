"""Small helpers shared by the servicers: required fields, deadlines, shutdown state."""

from __future__ import annotations

import threading

import grpc

from embeddings.errors import DeadlineExceeded, InvalidInput

__all__ = ["ServingState", "check_deadline", "require"]


class ServingState:
    """Set when the server starts shutting down, so long streams stop taking new work."""

    def __init__(self) -> None:
        self.shutting_down = threading.Event()


def require(value: str, name: str) -> str:
    if not value:
        raise InvalidInput(f"{name} is required")
    return value


def check_deadline(context: grpc.ServicerContext, stage: str) -> None:
    """Stop work between stages once the client's deadline has passed (nobody will read the result)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded(f"deadline passed {stage}")
