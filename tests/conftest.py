"""Shared fixtures. Tests use real parts (MTCNN, FAISS, SQLite, gRPC); only the internet is out of reach."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Never let a test reach for the internet or a user's cache.
os.environ.setdefault("LATENTFACE_OFFLINE", "1")


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
