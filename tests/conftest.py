"""Shared fixtures. Tests use real parts (MTCNN, FAISS, SQLite, gRPC); only the internet is out of reach."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Never let a test reach for the internet or a user's cache.
os.environ.setdefault("LATENTFACE_OFFLINE", "1")

# Real face photos: ../shared/faces beside the repository unless LATENTFACE_TEST_FACES says otherwise.
# Tests that need them skip when the folder is absent; .ci/run sets LATENTFACE_REQUIRE_TEST_FACES=1,
# which turns that skip into a failure, so CI always runs them.
_ROOT = Path(__file__).resolve().parent.parent
FACES_DIR = Path(os.environ.get("LATENTFACE_TEST_FACES", _ROOT.parent / "shared" / "faces"))


@dataclass(frozen=True)
class RealFaces:
    """The real fixtures: ``paths[i]`` is a photo of ``identities[i]`` (MANIFEST.csv order)."""

    root: Path
    paths: tuple[Path, ...]
    identities: tuple[str, ...]


def _missing(reason: str) -> None:
    if os.environ.get("LATENTFACE_REQUIRE_TEST_FACES") == "1":
        pytest.fail(f"real face fixtures required (LATENTFACE_REQUIRE_TEST_FACES=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_faces() -> RealFaces:
    manifest = FACES_DIR / "MANIFEST.csv"
    if not manifest.is_file():
        _missing(f"no real face fixtures at {FACES_DIR} (set LATENTFACE_TEST_FACES)")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return RealFaces(
        root=FACES_DIR,
        paths=tuple(FACES_DIR / r["path"] for r in rows),
        identities=tuple(r["identity"] for r in rows),
    )


@pytest.fixture(scope="session")
def dlib_pipeline():
    """The real pipeline: MTCNN → quality gate → dlib chip → dlib-resnet (default runtime)."""
    from embeddings.config import EncoderConfig
    from embeddings.detect import FaceDetector
    from embeddings.encode import create_encoder
    from embeddings.pipeline import FacePipeline

    return FacePipeline(FaceDetector(), create_encoder(EncoderConfig(weights="dlib-resnet")))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real photograph with one face (scikit-image's astronaut), RGB uint8 512x512."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch-heavy tests single-threaded, restoring the setting after.

    On a shared 2-core box, OpenMP threads spin-waiting for a descheduled sibling made these tests
    several times slower with 2 threads than with 1 (measured under load); results do not change.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
