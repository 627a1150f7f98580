"""Bench part ``server``: latency and throughput through a real gRPC server and the real client.

- ``verify_rpc_p50_ms``: Verify of two 1024 px one-face photos (scikit-image's astronaut upscaled
  to 1024, and its mirror image), median over the timed calls.
- ``embed_rps_sequential`` / ``embed_rps_concurrent`` / ``embed_concurrency_speedup``: full Embed
  calls (decode, MTCNN, quality, crop, encode) per second on a 224 px face photo, 1 client vs 8
  concurrent clients. MTCNN dominates these calls and batches poorly on a CPU, which caps the speedup.
  ``embed_detect_mean_batch`` / ``embed_encode_mean_batch``: images per MTCNN batch and crops per
  encoder batch during the concurrent run.
- ``encode_rps_sequential`` / ``encode_rps_concurrent`` / ``encode_concurrency_speedup``: Embed with
  ``aligned_crop`` on a 160×160 face crop (JPEG), so each call is decode + encoder only: the
  encoder's path through the dynamic batcher. ``encode_mean_batch``: crops per encoder batch during
  the concurrent run.
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

__all__ = ["aligned_crop_jpeg", "astronaut_jpeg", "face_jpeg", "run"]

CONCURRENT_CLIENTS = 8
# The astronaut's face in the 512 px original (x1, y1, x2, y2), with a margin around it.
_FACE_REGION = (130, 10, 330, 230)
_ASTRONAUT_FACE_BOX = (181.0, 62.0, 268.0, 172.0)


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


def aligned_crop_jpeg(size: int = 160) -> bytes:
    """The astronaut's face as an on-device SDK would send it: detected, cut like
    ``embeddings.align.crop_faces`` and resized to ``size`` px (JPEG)."""
    from PIL import Image

    from embeddings.align import crop_box

    # Her face box as MTCNN finds it in the 512 px original (rounded); fixed so that making the
    # bench input needs no detector.
    left, top, right, bottom = crop_box(_ASTRONAUT_FACE_BOX, 512, 512, size=size)
    crop = Image.fromarray(_astronaut()).crop((left, top, right, bottom))
    crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    return _jpeg(np.asarray(crop))


def _mean_batch(before: Any, after: Any) -> float:
    if before is None or after is None or after.batches == before.batches:
        return 0.0
    return round((after.items - before.items) / (after.batches - before.batches), 2)


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
            face, crop = face_jpeg(224), aligned_crop_jpeg(160)
            clients = [Client(f"127.0.0.1:{port}", key) for _ in range(CONCURRENT_CLIENTS)]
            try:
                c0 = clients[0]
                for _ in range(2):  # warm-up: first calls pay for lazy init and allocator growth
                    c0.verify(image=photo_a, reference_image=photo_b)
                    c0.embed(face)
                    c0.embed(crop, aligned_crop=True)
                times = []
                for _ in range(5 if quick else 20):
                    t0 = time.perf_counter()
                    c0.verify(image=photo_a, reference_image=photo_b)
                    times.append((time.perf_counter() - t0) * 1000)
                calls = 4 if quick else 12
                embed = _throughput(server, clients, calls, lambda c: c.embed(face))
                # Crop calls are cheaper: more of them keep the timed windows comparable.
                encode = _throughput(server, clients, calls * 3, lambda c: c.embed(crop, aligned_crop=True))
            finally:
                for c in clients:
                    c.close()
        finally:
            server.stop(5.0)
    return {
        "verify_rpc_p50_ms": round(statistics.median(times), 1),
        "verify_rpc_p90_ms": round(float(np.percentile(times, 90)), 1),
        "concurrent_clients": CONCURRENT_CLIENTS,
        "embed_rps_sequential": embed["sequential"],
        "embed_rps_concurrent": embed["concurrent"],
        "embed_concurrency_speedup": embed["speedup"],
        "embed_detect_mean_batch": embed["detect_mean_batch"],
        "embed_encode_mean_batch": embed["encode_mean_batch"],
        "encode_rps_sequential": encode["sequential"],
        "encode_rps_concurrent": encode["concurrent"],
        "encode_concurrency_speedup": encode["speedup"],
        "encode_mean_batch": encode["encode_mean_batch"],
        "encoder_max_batch": encode["encoder_max_batch"],
    }


def _throughput(server: Any, clients: list[Any], calls: int, call: Any) -> dict[str, float]:
    """Calls per second from one client (2×``calls`` calls) and from all clients (``calls`` each),
    with the batchers' mean batch sizes over the concurrent run."""
    c0 = clients[0]
    sequential = _rps([lambda: call(c0)], calls * 2)
    enc_before, det_before = server.batch_stats(), server.detect_batch_stats()
    concurrent = _rps([lambda c=c: call(c) for c in clients], calls)
    enc_after, det_after = server.batch_stats(), server.detect_batch_stats()
    return {
        "sequential": round(sequential, 2),
        "concurrent": round(concurrent, 2),
        "speedup": round(concurrent / sequential, 2),
        "encode_mean_batch": _mean_batch(enc_before, enc_after),
        "detect_mean_batch": _mean_batch(det_before, det_after),
        "encoder_max_batch": enc_after.max_batch if enc_after is not None else 0,
    }
