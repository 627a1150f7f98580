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
