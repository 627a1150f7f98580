"""Dynamic batching: work from concurrent calls is run together, on one worker thread.

Each caller of :meth:`DynamicBatcher.encode` queues its rows (split into chunks of at most
``max_batch_size``) and blocks. A :class:`BatchWorker` thread serves one or more batchers (the
server has two: MTCNN detection keyed by the downscaled image size, and the face encoder). It
takes the batcher whose oldest chunk is oldest, waits at most ``max_wait_ms`` *from that
chunk's arrival* for more, packs whole chunks of the same row shape in arrival order up to
``max_batch_size`` rows, calls the batcher's function once, and hands every caller its own rows
back in order. While the worker is busy new chunks pile up, so under load batches fill without
any waiting.

Why one thread for every model: on a CPU each thread that runs torch brings its own intra-op
thread team, so RPC threads running MTCNN and the encoder side by side oversubscribe the cores
(8 calls x 2 intra-op threads on 2 cores spent most of their time spinning). Run one at a time
on one thread, every batch gets all the cores and larger batches get cheaper per row.

Waiting only pays when somebody can join. Callers may be tracked with :meth:`BatchWorker.track`
(the server tracks every image call); when every tracked call is already queued in some batcher
and as many are queued as were recently in flight at once (the peak of the last second), nobody is
on the way, so the worker runs at once instead of sitting out ``max_wait_ms`` (a lone caller pays
no wait at all). The wait counts from when the worker became free, not from the oldest chunk's
arrival: otherwise 8 looping clients split into two groups of 4, each queueing while the other
runs and run the moment the worker is free, and never share the cheaper batch of 8 (measured:
aligned-crop Embed at 8 clients went from 2.5x to 3.4-3.7x sequential throughput, mean batch
4.0 -> 7.8). Untracked use keeps the plain ``max_wait_ms`` rule.

A caller that gives up (its ``timeout``/``deadline`` passes) takes its rows out of the queue,
so no work is done for an answer nobody will read.

If the worker thread itself dies (a bug, not an error of the batch function, which goes to the
batch's callers), every waiting caller gets Unavailable at once instead of hanging, later calls
are refused, and the worker's ``on_failure`` callbacks run (the server goes NOT_SERVING).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embeddings.errors import DeadlineExceeded, Unavailable

__all__ = ["BatchStats", "BatchWorker", "DynamicBatcher"]

log = logging.getLogger(__name__)

_caller_ids = itertools.count()


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
    leads: bool  # the first chunk of its caller: counts the caller once as queued
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        # Only chunks of the same row shape and dtype can be concatenated.
        return self.rows.shape[1:], self.rows.dtype


PEAK_WINDOW_S = 1.0


class BatchWorker:
    """The one thread that runs the batches of its :class:`DynamicBatcher` s, one batch at a time."""

    def __init__(self, *, name: str = "latentface-batcher") -> None:
        self._cv = threading.Condition()
        self._batchers: list[DynamicBatcher] = []
        self._closed = False
        self._in_flight = 0
        # Recent concurrency: the most calls seen in flight within the last PEAK_WINDOW_S seconds.
        self._peak = 0
        self._peak_at = 0.0
        # When the worker last finished a batch: waits are counted from then, not from the oldest
        # chunk's arrival, or chunks that queued during a long batch would never wait for anybody.
        self._free_since = time.monotonic()
        self._running: list[_Chunk] = []  # the batch being run, failed too if the thread dies
        self.failure: BaseException | None = None
        self._on_failure: list[Callable[[BaseException], None]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count a call as in flight for its whole duration (see the module doc: adaptive waiting)."""
        with self._cv:
            self._in_flight += 1
            now = time.monotonic()
            if self._in_flight >= self._peak or now - self._peak_at > PEAK_WINDOW_S:
                self._peak, self._peak_at = self._in_flight, now
        try:
            yield
        finally:
            with self._cv:
                self._in_flight -= 1
                self._cv.notify_all()  # a batch may have been waiting for this caller

    def close(self, timeout: float = 5.0) -> None:
        """Stop: the running batch finishes, queued callers of every batcher get Unavailable."""
        with self._cv:
            self._closed = True
            dropped = [chunk for b in self._batchers for chunk in b._pending]
            for b in self._batchers:
                b._pending.clear()
            self._cv.notify_all()
        for chunk in dropped:
            if not chunk.future.done():
                chunk.future.set_exception(Unavailable("the batcher was closed before this call was run"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(exc)`` if the worker thread dies (at once if it already has)."""
        with self._cv:
            if self.failure is None:
                self._on_failure.append(callback)
                return
        callback(self.failure)

    def _fail(self, exc: BaseException) -> None:
        """The worker thread is dying: hand every waiting caller an error and refuse new ones."""
        log.critical("the batch worker thread died; image calls are refused from now on", exc_info=exc)
        with self._cv:
            self.failure = exc
            self._closed = True
            dropped = [*self._running, *(chunk for b in self._batchers for chunk in b._pending)]
            for b in self._batchers:
                b._pending.clear()
            callbacks = list(self._on_failure)
            self._cv.notify_all()
        error = Unavailable(f"the batch worker failed ({type(exc).__name__}); the server must be restarted")
        for chunk in dropped:
            if not chunk.future.done():
                chunk.future.set_exception(error)
        for callback in callbacks:
            try:
                callback(exc)
            except Exception:  # noqa: BLE001 - every callback gets its turn
                log.exception("batch worker failure callback failed")

    def _add(self, batcher: DynamicBatcher) -> None:
        with self._cv:
            self._batchers.append(batcher)

    def _next_batch(self) -> tuple[DynamicBatcher, list[_Chunk]] | None:
        """Block until some batcher has a batch ready (or closed: None)."""
        with self._cv:
            while not self._closed:
                live = [b for b in self._batchers if b._pending]
                if not live:
                    self._cv.wait()
                    continue
                now = time.monotonic()
                queued = sum(b._queued_callers() for b in live)
                peak = self._peak if now - self._peak_at <= PEAK_WINDOW_S else self._in_flight
                # Nobody can join: every tracked call is queued and as many calls are queued as were
                # recently in flight at once (callers that just got their answer usually come back
                # within a few ms, and one batch of 8 is cheaper per row than two of 4).
                nobody_coming = 0 < self._in_flight <= queued and queued >= peak
                ready, wake = [], None
                for b in live:
                    first = b._pending[0]
                    due = max(first.arrived, self._free_since) + b.max_wait_s
                    if nobody_coming or due <= now or b._fill(first.key) >= b.max_batch_size:
                        ready.append((first.arrived, b))
                    else:
                        wake = due if wake is None else min(wake, due)
                if ready:
                    batcher = min(ready, key=lambda t: t[0])[1]
                    return batcher, batcher._take()
                self._cv.wait(max(0.0, wake - now) if wake is not None else None)
            return None

    def _run(self) -> None:
        try:
            while (picked := self._next_batch()) is not None:
                batcher, batch = picked
                self._running = batch
                batcher._execute(batch)
                with self._cv:
                    self._running = []
                    self._free_since = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - nobody may be left waiting on a dead thread
            self._fail(exc)


class DynamicBatcher:
    """Thread-safe batching front for ``fn: (N, ...) array -> N results`` (an array or a sequence).

    Without ``worker`` the batcher owns a worker thread of its own (closed with it); with one, it
    shares that thread with the worker's other batchers and :meth:`close` only refuses new calls.
    """

    def __init__(
        self,
        encode_fn: Callable[[np.ndarray], Any],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
        worker: BatchWorker | None = None,
        name: str = "encode",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self._fn = encode_fn
        self.name = name
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._on_batch = on_batch
        self._owns_worker = worker is None
        self._worker = worker if worker is not None else BatchWorker(name=f"latentface-{name}-batcher")
        self._cv = self._worker._cv  # one lock guards every batcher of a worker
        self._pending: deque[_Chunk] = deque()
        self._closed = False
        self._batches = 0
        self._items = 0
        self._max_batch = 0
        self._histogram: Counter[int] = Counter()
        self._worker._add(self)

    def encode(self, crops: np.ndarray, *, timeout: float | None = None, deadline: float | None = None) -> Any:
        """Run ``fn`` on ``crops`` (N rows) together with concurrent callers' rows; returns this caller's N results.

        Raises whatever ``fn`` raised for a batch holding these rows, Unavailable after
        :meth:`close`, and DeadlineExceeded when ``timeout`` seconds pass or the monotonic
        ``deadline`` is reached first (rows not yet run are then dropped from the queue).
        """
        crops = np.asarray(crops)
        if crops.ndim < 1:
            raise ValueError("crops must have a leading batch dimension")
        if len(crops) == 0:
            return self._fn(crops)
        now = time.monotonic()
        if timeout is not None:
            deadline = now + timeout if deadline is None else min(deadline, now + timeout)
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"deadline passed before queueing for the {self.name} batcher")
        starts = range(0, len(crops), self.max_batch_size)
        chunks = [_Chunk(crops[i : i + self.max_batch_size], now, leads=i == 0) for i in starts]
        with self._cv:
            if self._worker.failure is not None:
                raise Unavailable(f"the {self.name} batcher's worker failed; the server must be restarted")
            if self._closed or self._worker.closed:
                raise Unavailable(f"the {self.name} batcher is closed (server shutting down)")
            self._pending.extend(chunks)
            self._cv.notify_all()
        parts = []
        for chunk in chunks:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                parts.append(chunk.future.result(remaining))
            except (FutureTimeout, CancelledError) as exc:
                self._withdraw(chunks)
                raise DeadlineExceeded(f"deadline passed while waiting for the {self.name} batcher") from exc
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts, axis=0)
        return [r for part in parts for r in part]

    def stats(self) -> BatchStats:
        with self._cv:
            return BatchStats(self._batches, self._items, self._max_batch, dict(sorted(self._histogram.items())))

    def close(self, timeout: float = 5.0) -> None:
        """Stop: the batch being run finishes, queued callers get Unavailable, new calls are refused."""
        if self._owns_worker:
            self._closed = True
            self._worker.close(timeout)
            return
        with self._cv:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
        for chunk in dropped:
            if not chunk.future.done():
                chunk.future.set_exception(Unavailable(f"the {self.name} batcher was closed before this call was run"))

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- called by the worker, holding the shared lock ---------------------------------------------
    def _fill(self, key: tuple) -> int:
        return sum(len(c.rows) for c in self._pending if c.key == key)

    def _queued_callers(self) -> int:
        return sum(c.leads for c in self._pending)

    def _take(self) -> list[_Chunk]:
        first_key = self._pending[0].key
        batch, rest, rows = [], deque(), 0
        for chunk in self._pending:
            if chunk.key == first_key and rows + len(chunk.rows) <= self.max_batch_size:
                batch.append(chunk)
                rows += len(chunk.rows)
            else:
                rest.append(chunk)
        self._pending = rest
        # A caller that gave up cancelled its futures; running them would be wasted work.
        return [c for c in batch if c.future.set_running_or_notify_cancel()]

    def _withdraw(self, chunks: Sequence[_Chunk]) -> None:
        with self._cv:
            for chunk in chunks:
                if chunk.future.cancel():  # only succeeds while still queued
                    try:
                        self._pending.remove(chunk)
                    except ValueError:
                        pass  # already taken by the worker, which skips cancelled chunks

    # -- called by the worker thread, without the lock ---------------------------------------------
    def _execute(self, batch: list[_Chunk]) -> None:
        if not batch:
            return
        rows = np.concatenate([c.rows for c in batch], axis=0) if len(batch) > 1 else batch[0].rows
        try:
            out = self._fn(rows)
            if isinstance(out, np.ndarray) or not isinstance(out, Sequence):
                out = np.asarray(out)
            n = (out.shape[0] if out.ndim else 0) if isinstance(out, np.ndarray) else len(out)
            if n != len(rows):
                raise RuntimeError(f"{self.name} function returned {n} rows for {len(rows)}")
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of this batch
            for chunk in batch:
                chunk.future.set_exception(exc)
            return
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
            except Exception:  # noqa: BLE001 - a metrics hook must not stop the batcher
                log.exception("on_batch hook failed")
