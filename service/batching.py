"""Dynamic batching: face crops from concurrent calls are encoded together.

Each caller of :meth:`DynamicBatcher.encode` queues its rows (split into chunks of at most
``max_batch_size``) and blocks. One worker thread takes the oldest chunk, waits at most
``max_wait_ms`` *from that chunk's arrival* for more, packs whole chunks in arrival order
up to ``max_batch_size`` rows, calls ``encode_fn`` once, and hands every caller its own
rows back in order. While the encoder is busy new chunks pile up, so under load batches fill
without any waiting; alone, a caller pays at most ``max_wait_ms``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from embeddings.errors import DeadlineExceeded, Unavailable

__all__ = ["BatchStats", "DynamicBatcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchStats:
    """Counters since start: batches run, rows encoded, the largest batch, and rows-per-batch histogram."""

    batches: int
    items: int
    max_batch: int
    histogram: dict[int, int] = field(default_factory=dict)

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass(eq=False)
class _Chunk:
    rows: np.ndarray
    arrived: float
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        # Only chunks of the same row shape and dtype can be concatenated.
        return self.rows.shape[1:], self.rows.dtype


class DynamicBatcher:
    """Thread-safe batching front for ``encode_fn: (N, ...) array -> (N, D) array``."""

    def __init__(
        self,
        encode_fn: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self._encode_fn = encode_fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._on_batch = on_batch
        self._pending: deque[_Chunk] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._batches = 0
        self._items = 0
        self._max_batch = 0
        self._histogram: Counter[int] = Counter()
        self._worker = threading.Thread(target=self._run, name="latentface-batcher", daemon=True)
        self._worker.start()

    def encode(self, crops: np.ndarray, *, timeout: float | None = None) -> np.ndarray:
        """Encode ``crops`` (N rows) together with concurrent callers' rows; returns this caller's N rows.

        Raises whatever ``encode_fn`` raised for a batch holding these rows, Unavailable after
        :meth:`close`, and DeadlineExceeded when ``timeout`` seconds pass first.
        """
        crops = np.asarray(crops)
        if crops.ndim < 1:
            raise ValueError("crops must have a leading batch dimension")
        if len(crops) == 0:
            return np.asarray(self._encode_fn(crops))
        now = time.monotonic()
        chunks = [_Chunk(crops[i : i + self.max_batch_size], now) for i in range(0, len(crops), self.max_batch_size)]
        with self._cv:
            if self._closed:
                raise Unavailable("the encoder batcher is closed (server shutting down)")
            self._pending.extend(chunks)
            self._cv.notify_all()
        deadline = None if timeout is None else now + timeout
        parts = []
        for chunk in chunks:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                parts.append(chunk.future.result(remaining))
            except FutureTimeout as exc:
                raise DeadlineExceeded("deadline passed while waiting for the encoder") from exc
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def stats(self) -> BatchStats:
        with self._cv:
            return BatchStats(self._batches, self._items, self._max_batch, dict(sorted(self._histogram.items())))

    def close(self, timeout: float = 5.0) -> None:
        """Stop: the batch being encoded finishes, queued callers get Unavailable, new calls are refused."""
        with self._cv:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for chunk in dropped:
            chunk.future.set_exception(Unavailable("the encoder batcher was closed before this call was encoded"))
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_batch(self) -> list[_Chunk] | None:
        """Block until a batch is ready (or closed: None). Called by the worker only."""
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            first = self._pending[0]
            deadline = first.arrived + self.max_wait_s
            while not self._closed and self._fill(first.key) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            if self._closed:
                return None
            batch, rest, rows = [], deque(), 0
            for chunk in self._pending:
                if chunk.key == first.key and rows + len(chunk.rows) <= self.max_batch_size:
                    batch.append(chunk)
                    rows += len(chunk.rows)
                else:
                    rest.append(chunk)
            self._pending = rest
            return batch

    def _fill(self, key: tuple) -> int:
        return sum(len(c.rows) for c in self._pending if c.key == key)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            rows = np.concatenate([c.rows for c in batch], axis=0) if len(batch) > 1 else batch[0].rows
            try:
                out = np.asarray(self._encode_fn(rows))
                if out.shape[:1] != (len(rows),):
                    raise RuntimeError(f"encode_fn returned {out.shape[0] if out.ndim else 0} rows for {len(rows)}")
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of this batch
                for chunk in batch:
                    chunk.future.set_exception(exc)
                continue
            with self._cv:
                self._batches += 1
                self._items += len(rows)
                self._max_batch = max(self._max_batch, len(rows))
                self._histogram[len(rows)] += 1
            start = 0
            for chunk in batch:
                stop = start + len(chunk.rows)
                chunk.future.set_result(out[start:stop])
                start = stop
            if self._on_batch is not None:
                try:
                    self._on_batch(len(rows))
                except Exception:  # noqa: BLE001 - a metrics hook must not stop encoding
                    log.exception("on_batch hook failed")
