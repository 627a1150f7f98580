"""Bench part ``server``: latency and throughput through a real gRPC server and the real client.

- ``verify_rpc_p50_ms``: Verify of two 1024 px one-face photos (scikit-image's astronaut upscaled
  to 1024, and its mirror image), median over the timed calls.
- ``encode_rps_sequential`` / ``encode_rps_concurrent``: Embed calls per second on a ~224 px face
  image, from 1 client vs 8 concurrent clients (the dynamic batchers merge their MTCNN inputs and
  their crops; ``*_mean_batch_concurrent`` says how well).
"""

from __future__ import annotations

import io
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["astronaut_jpeg", "face_jpeg", "run"]

CONCURRENT_CLIENTS = 8
# The astronaut's face in the 512 px original (x1, y1, x2, y2), with a margin around it.
_FACE_REGION = (130, 10, 330, 230)


def _jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def astronaut_jpeg(side: int = 1024, *, mirror: bool = False) -> bytes:
    """The astronaut photo resized to ``side`` px (JPEG), optionally mirrored left-right."""
    from PIL import Image

    image = Image.fromarray(_astronaut()).resize((side, side), Image.Resampling.BICUBIC)
    pixels = np.asarray(image)
    return _jpeg(np.ascontiguousarray(pixels[:, ::-1]) if mirror else pixels)


def face_jpeg(side: int = 224) -> bytes:
    """A small one-face image: the astronaut's head cropped and resized to ``side`` px."""
    from PIL import Image

    crop = Image.fromarray(_astronaut()).crop(_FACE_REGION).resize((side, side), Image.Resampling.BICUBIC)
    return _jpeg(np.asarray(crop))


def _rps(client_calls: list[Any], calls_each: int) -> float:
    barrier = threading.Barrier(len(client_calls) + 1)

    def worker(call: Any) -> None:
        barrier.wait()
        for _ in range(calls_each):
            call()

    with ThreadPoolExecutor(len(client_calls)) as pool:
        running = [pool.submit(worker, c) for c in client_calls]
        barrier.wait()
        start = time.perf_counter()
        for f in running:
            f.result()
        elapsed = time.perf_counter() - start
    return len(client_calls) * calls_each / elapsed


def run(options: Any) -> dict[str, Any]:
    """Start a server on a fresh data dir under ``options.work_dir`` and measure through the client."""
    from service.client import Client
    from service.config import load_config
    from service.server import create_server

    work = Path(options.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    quick = bool(getattr(options, "quick", False))
    with tempfile.TemporaryDirectory(prefix="bench-server-", dir=work) as data_dir:
        config = load_config(
            {"data_dir": data_dir, "weights": getattr(options, "weights", "random"), "server.port": 0, "offline": True},
            env={},
        )
        server, port = create_server(config)
        server.start()
        try:
            key = server.admin_key_path.read_text().strip() if server.admin_key_path else None
            photo_a, photo_b = astronaut_jpeg(1024), astronaut_jpeg(1024, mirror=True)
            face = face_jpeg(224)
            clients = [Client(f"127.0.0.1:{port}", key) for _ in range(CONCURRENT_CLIENTS)]
            try:
                c0 = clients[0]
                for _ in range(2):  # warm-up: first calls pay for lazy init and allocator growth
                    c0.verify(image=photo_a, reference_image=photo_b)
                    c0.embed(face)
                times = []
                for _ in range(5 if quick else 20):
                    start = time.perf_counter()
                    c0.verify(image=photo_a, reference_image=photo_b)
                    times.append((time.perf_counter() - start) * 1000)
                calls = 4 if quick else 12
                sequential = _rps([lambda: c0.embed(face)], calls * 2)
                before, det_before = server.batch_stats(), server.detect_batch_stats()
                concurrent = _rps([lambda c=c: c.embed(face) for c in clients], calls)
                after, det_after = server.batch_stats(), server.detect_batch_stats()
            finally:
                for c in clients:
                    c.close()
        finally:
            server.stop(5.0)
    batches = after.batches - before.batches
    det_batches = det_after.batches - det_before.batches if det_after is not None else 0
    return {
        "verify_rpc_p50_ms": round(statistics.median(times), 1),
        "verify_rpc_p90_ms": round(float(np.percentile(times, 90)), 1),
        "encode_rps_sequential": round(sequential, 2),
        "encode_rps_concurrent": round(concurrent, 2),
        "encode_concurrency_speedup": round(concurrent / sequential, 2),
        "concurrent_clients": CONCURRENT_CLIENTS,
        "batcher_mean_batch_concurrent": round((after.items - before.items) / batches, 2) if batches else 0.0,
        "batcher_max_batch": after.max_batch,
        "detect_batcher_mean_batch_concurrent": (
            round((det_after.items - det_before.items) / det_batches, 2) if det_batches else 0.0
        ),
    }
