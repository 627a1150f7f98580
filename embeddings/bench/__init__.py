"""``latentface bench``: the project's own benchmark, one part per concern, one JSON object out.

Each part is a module ``embeddings.bench.<part>`` with ``run(options) -> dict``; the service adds
parts of its own (``server``) through ``extra_parts``. Parts are imported lazily so ``--only`` pays
only for what it runs.
"""

from __future__ import annotations

import importlib
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings.errors import InvalidInput

__all__ = ["BenchOptions", "PARTS", "run_bench"]

PARTS: tuple[str, ...] = ("encoder", "detect", "identify", "analysis", "analysis-suite", "audit", "debias", "real", "scaleout")


@dataclass(frozen=True)
class BenchOptions:
    gallery_size: int = 100_000
    analysis_size: int = 100_000
    seed: int = 0
    work_dir: Path = field(default_factory=lambda: Path("bench-out"))
    quick: bool = False
    weights: str = "random"
    # The ``real`` part's photos: <person>/<image> with MANIFEST.csv (path,identity).
    faces_dir: Path = field(default_factory=lambda: Path("../shared/faces"))
    # The analysis suite's "real" scenario: FILE.npy with FILE.csv beside it (skipped when None).
    real_embeddings: Path | None = None


def run_bench(
    only: Iterable[str] | None,
    options: BenchOptions,
    *,
    extra_parts: Mapping[str, Callable[[BenchOptions], dict[str, Any]]] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Run the selected parts (all when ``only`` is None) and merge their figures into one dict."""
    extra = dict(extra_parts or {})
    known = list(PARTS) + [p for p in extra if p not in PARTS]
    selected = list(only) if only else known
    unknown = [p for p in selected if p not in known]
    if unknown:
        raise InvalidInput(f"unknown benchmark part(s) {unknown}; choose from {known}")
    import torch

    result: dict[str, Any] = {
        "machine": {
            "cpus": _cpu_count(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": _cpu_flags(),
        },
        "options": {
            "gallery_size": options.gallery_size,
            "analysis_size": options.analysis_size,
            "seed": options.seed,
            "quick": options.quick,
        },
    }
    options.work_dir.mkdir(parents=True, exist_ok=True)
    for part in selected:
        log(f"bench: running {part}")
        start = time.perf_counter()
        runner = extra.get(part) or importlib.import_module(f"embeddings.bench.{part.replace('-', '_')}").run
        result.update(runner(options))
        result[f"{part}_part_s"] = round(time.perf_counter() - start, 2)
    return result


# The CPU features that decide the encoder's and FAISS's code paths.
_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpu_flags() -> dict[str, Any]:
    """Model name and the feature flags that matter, from /proc/cpuinfo (empty where absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, **{flag: flag in flags for flag in _FLAGS}}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
