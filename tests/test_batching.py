"""DynamicBatcher: concurrent callers get exactly their own rows, batches form, limits and errors hold."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from embeddings.errors import DeadlineExceeded, Unavailable
from service.batching import BatchWorker, DynamicBatcher

W = np.random.default_rng(7).standard_normal((12, 5)).astype(np.float32)


def encode_fn(rows: np.ndarray) -> np.ndarray:
    """A deterministic row-wise function (so batching must not change any row's result)."""
    flat = rows.reshape(len(rows), -1).astype(np.float32)
    out = np.tanh(flat @ W)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


class Recorder:
    """encode_fn that records the size of each batch and can be slowed down or made to fail."""

    def __init__(self, delay: float = 0.0, fail_when=None) -> None:
        self.sizes: list[int] = []
        self.batches: list[np.ndarray] = []
        self.delay = delay
        self.fail_when = fail_when
        self.lock = threading.Lock()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sizes.append(len(rows))
            self.batches.append(rows.copy())
        time.sleep(self.delay)
        if self.fail_when is not None and self.fail_when(rows):
            raise RuntimeError("encoder exploded")
        return encode_fn(rows)


def crops_for(i: int, n: int) -> np.ndarray:
    return np.random.default_rng(100 + i).standard_normal((n, 3, 2, 2)).astype(np.float32)


def run_threads(n: int, target) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_concurrent_callers_get_their_own_rows_and_batches_form():
    rec = Recorder(delay=0.01)
    seen: list[int] = []
    with DynamicBatcher(rec, max_batch_size=8, max_wait_ms=20, on_batch=seen.append) as batcher:
        sizes = [1 + (i % 4) for i in range(16)]  # 1..4 rows per caller
        results = run_threads(16, lambda i: batcher.encode(crops_for(i, sizes[i])))
        stats = batcher.stats()
    for i, out in enumerate(results):
        assert isinstance(out, np.ndarray), out
        np.testing.assert_allclose(out, encode_fn(crops_for(i, sizes[i])), rtol=1e-5, atol=1e-6)
    assert stats.items == sum(sizes) == sum(rec.sizes)
    assert stats.batches == len(rec.sizes) < 16  # fewer encoder calls than callers
    assert stats.max_batch > 1 and max(rec.sizes) <= 8
    assert stats.histogram == {s: rec.sizes.count(s) for s in set(rec.sizes)}
    assert sorted(seen) == sorted(rec.sizes)  # on_batch saw every batch


def test_large_request_is_split_and_max_batch_size_respected():
    rec = Recorder()
    with DynamicBatcher(rec, max_batch_size=4, max_wait_ms=1) as batcher:
        crops = crops_for(0, 11)
        out = batcher.encode(crops)
    np.testing.assert_allclose(out, encode_fn(crops), rtol=1e-5, atol=1e-6)
    assert max(rec.sizes) <= 4 and sum(rec.sizes) == 11


def test_lone_caller_waits_at_most_about_max_wait():
    with DynamicBatcher(encode_fn, max_batch_size=64, max_wait_ms=30) as batcher:
        start = time.perf_counter()
        batcher.encode(crops_for(0, 1))
        elapsed = time.perf_counter() - start
    assert 0.025 <= elapsed < 1.0  # waited for company, then went alone (upper bound generous: shared CPU)


def test_exception_reaches_every_caller_of_the_failing_batch():
    # A batch holding caller 0's marker row fails; every caller in that batch must get the error,
    # callers in other batches their exact rows.
    marker = np.full((1, 3, 2, 2), 99.0, dtype=np.float32)

    def has_marker(rows: np.ndarray) -> bool:
        return bool((rows == 99.0).reshape(len(rows), -1).all(axis=1).any())

    rec = Recorder(delay=0.05, fail_when=has_marker)
    inputs = [marker] + [crops_for(i, 2) for i in range(1, 6)]
    with DynamicBatcher(rec, max_batch_size=64, max_wait_ms=100) as batcher:
        results = run_threads(6, lambda i: batcher.encode(inputs[i]))
    failing = next(b for b in rec.batches if has_marker(b))
    assert len(failing) > 1  # the marker shared its batch with others (100 ms window)
    for i, r in enumerate(results):
        in_failing = any(np.array_equal(inputs[i][0], row) for row in failing)
        if in_failing:
            assert isinstance(r, RuntimeError) and "exploded" in str(r)
        else:
            np.testing.assert_allclose(r, encode_fn(inputs[i]), rtol=1e-5, atol=1e-6)
    assert sum(isinstance(r, RuntimeError) for r in results) == 1 + (len(failing) - 1) // 2


def test_wrong_row_count_from_encode_fn_is_an_error_for_callers():
    with DynamicBatcher(lambda rows: np.zeros((len(rows) + 1, 4)), max_batch_size=4, max_wait_ms=0) as batcher:
        with pytest.raises(RuntimeError, match="rows"):
            batcher.encode(crops_for(0, 2))


def test_close_wakes_waiters_and_refuses_new_calls():
    started = threading.Event()
    release = threading.Event()

    def slow(rows):
        started.set()
        release.wait(5)
        return encode_fn(rows)

    batcher = DynamicBatcher(slow, max_batch_size=1, max_wait_ms=0)
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = batcher.encode(crops_for(i, 1))
        except BaseException as exc:  # noqa: BLE001
            results[i] = exc

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert started.wait(5)
    waiters = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3)]
    for t in waiters:
        t.start()
    time.sleep(0.05)  # let them queue behind the busy encoder
    closer = threading.Thread(target=batcher.close)
    closer.start()
    for t in waiters:
        t.join(2)
        assert not t.is_alive()  # woken by close, not by the encoder
    release.set()
    first.join(5)
    closer.join(5)
    np.testing.assert_allclose(results[0], encode_fn(crops_for(0, 1)), rtol=1e-5, atol=1e-6)  # in-flight finished
    assert all(isinstance(results[i], Unavailable) for i in (1, 2, 3))
    with pytest.raises(Unavailable):
        batcher.encode(crops_for(9, 1))


def test_timeout_raises_deadline_exceeded():
    with DynamicBatcher(Recorder(delay=0.3), max_batch_size=4, max_wait_ms=0) as batcher:
        with pytest.raises(DeadlineExceeded):
            batcher.encode(crops_for(0, 1), timeout=0.05)


def test_rows_of_different_shapes_are_never_mixed():
    rec = Recorder(delay=0.02)
    with DynamicBatcher(rec, max_batch_size=16, max_wait_ms=30) as batcher:
        shapes = [(2, 3, 2, 2), (2, 12)]

        def call(i: int) -> np.ndarray:
            rows = np.random.default_rng(i).standard_normal(shapes[i % 2]).astype(np.float32)
            return batcher.encode(rows), rows

        results = run_threads(6, call)
    for out, rows in results:
        np.testing.assert_allclose(out, encode_fn(rows), rtol=1e-5, atol=1e-6)


def test_batchers_sharing_a_worker_never_run_at_once_and_return_sequences():
    # The server's MTCNN batcher returns a list per image and shares the encoder's worker thread,
    # so torch never runs on two threads at once (see service/batching.py).
    from service.batching import BatchWorker

    active, overlaps = [0], []
    lock = threading.Lock()

    def guarded(fn):
        def run(rows):
            with lock:
                active[0] += 1
                overlaps.append(active[0])
            time.sleep(0.005)
            try:
                return fn(rows)
            finally:
                with lock:
                    active[0] -= 1

        return run

    def describe(rows: np.ndarray) -> list[tuple[float, int]]:
        return [(float(r.sum()), i) for i, r in enumerate(rows)]

    worker = BatchWorker()
    lists = DynamicBatcher(guarded(describe), max_batch_size=8, max_wait_ms=10, worker=worker, name="detect")
    arrays = DynamicBatcher(guarded(encode_fn), max_batch_size=8, max_wait_ms=10, worker=worker)
    try:
        results = run_threads(
            12, lambda i: (lists.encode(crops_for(i, 1 + i % 2)), arrays.encode(crops_for(i, 2)))
        )
    finally:
        worker.close()
    for i, (described, encoded) in enumerate(results):
        rows = crops_for(i, 1 + i % 2)
        assert isinstance(described, list) and [s for s, _ in described] == pytest.approx([float(r.sum()) for r in rows])
        np.testing.assert_allclose(encoded, encode_fn(crops_for(i, 2)), rtol=1e-5, atol=1e-6)
    assert max(overlaps) == 1  # one batch at a time across both batchers
    assert lists.stats().items == sum(1 + i % 2 for i in range(12)) and arrays.stats().items == 24
    assert lists.stats().max_batch > 1 and arrays.stats().max_batch > 1
    with pytest.raises(Unavailable):
        arrays.encode(crops_for(0, 1))


def test_callers_that_come_back_rejoin_one_full_batch():
    """8 tracked clients in a loop: after each batch the worker waits for the ones just answered.

    Without that wait the clients split into two alternating groups of 4 (each group queues while
    the other runs, and is run the moment the worker is free); one batch of 8 is cheaper per row.
    The batch (250 ms) outlasts max_wait (200 ms), so without the wait counted from when the
    worker became free the group queued during a batch is overdue when it ends and runs alone;
    the returning clients' trip back (a few ms) is far inside max_wait even on a loaded machine.
    """
    from service.batching import BatchWorker

    sizes: list[int] = []

    def slow(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        time.sleep(0.25)
        return x * 2

    worker = BatchWorker()
    batcher = DynamicBatcher(slow, max_batch_size=8, max_wait_ms=200, worker=worker)
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(8)}
    start = threading.Barrier(8)

    def client(i: int) -> None:
        start.wait(10)
        for k in range(6):
            with worker.track():
                results[i].append(batcher.encode(np.full((1, 2), 10 * i + k, np.float32)))
            time.sleep(0.004)  # the answer's trip back and the next request's trip in

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    worker.close()
    assert all(np.array_equal(r[k], np.full((1, 2), 2 * (10 * i + k), np.float32)) for i, r in results.items() for k in range(6))
    assert sum(sizes) == 48
    # Only the first batch (it may catch the clients mid-start) and the last (the remainder) may be
    # short; alternating groups of 4 would give no full batch at all.
    assert sizes[1:-1] == [8] * (len(sizes) - 2), sizes


class _BrokenRows(Sequence):
    """Results of the right length that cannot be sliced: a bug that kills the worker thread itself."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        raise RuntimeError("bug in the worker's result handling")


def test_worker_thread_death_reaches_every_waiter_and_refuses_new_calls():
    worker = BatchWorker()
    failures: list[BaseException] = []
    worker.on_failure(failures.append)
    slow = Recorder(delay=0.3)
    good = DynamicBatcher(slow, max_batch_size=4, max_wait_ms=0, worker=worker, name="good")
    bad = DynamicBatcher(lambda rows: _BrokenRows(len(rows)), max_batch_size=4, max_wait_ms=0, worker=worker, name="bad")
    outcomes: dict[str, object] = {}

    def call(name: str, batcher: DynamicBatcher, i: int) -> None:
        try:
            outcomes[name] = batcher.encode(crops_for(i, 1))  # no deadline: before the fix this waited forever
        except BaseException as exc:  # noqa: BLE001 - asserted on
            outcomes[name] = exc

    first = threading.Thread(target=call, args=("first", good, 0))
    first.start()
    time.sleep(0.1)  # the worker is busy with "first"; these two queue behind it
    threads = [threading.Thread(target=call, args=(n, b, i)) for i, (n, b) in enumerate([("bad", bad), ("queued", good)], 1)]
    for t in threads:
        t.start()
    for t in (first, *threads):
        t.join(10)
        assert not t.is_alive(), "a caller was left waiting on a dead worker"
    assert isinstance(outcomes["first"], np.ndarray)  # run before the death, answered normally
    assert isinstance(outcomes["bad"], Unavailable)
    assert isinstance(outcomes["queued"], Unavailable)
    assert "batch worker failed (RuntimeError)" in str(outcomes["bad"])
    assert [type(e) for e in failures] == [RuntimeError]
    with pytest.raises(Unavailable, match="worker failed"):
        good.encode(crops_for(9, 1))
    late: list[BaseException] = []
    worker.on_failure(late.append)  # registered after the death: called at once
    assert [type(e) for e in late] == [RuntimeError]
    worker.close()
