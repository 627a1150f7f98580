"""Synthetic face-embedding galleries with known identities, for tests and the identify benchmark.

Identity centres are Gaussian with a chosen eigen-spectrum, randomly rotated and normalised:

- ``"powerlaw"``: eigenvalues ∝ 1/i, so ~60 % of the variance lies in 32 directions, as in real
  face embeddings (impostor cosines ≈ 0 ± 0.13); this is the case ANN indexes must handle.
- ``"isotropic"``: centres uniform on the sphere (impostor cosines ≈ 0 ± 0.045), the hard case
  for IVF because no direction is preferred.

Each face is its centre plus isotropic noise of norm ``spread``, normalised; genuine cosines are
≈ 1 / (1 + spread²) ≈ 0.7 by default. Generation is chunked with one random stream per chunk,
so the output depends only on the arguments (not on memory) and 1M × 512 is built in pieces.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from embeddings.errors import InvalidInput

__all__ = ["identity_centres", "identity_embeddings", "iter_identity_embeddings", "noisy_faces"]

_CHUNK = 8192  # identities (or faces) per random stream
_SPREAD = 0.65  # norm of the within-identity noise: genuine cosine ≈ 1 / (1 + 0.65²) ≈ 0.70


def _check(dim: int, spectrum: str) -> None:
    if dim < 2:
        raise InvalidInput("dim must be >= 2")
    if spectrum not in ("powerlaw", "isotropic"):
        raise InvalidInput(f"spectrum must be 'powerlaw' or 'isotropic', got {spectrum!r}")


def _scales(dim: int, spectrum: str) -> np.ndarray:
    lam = 1.0 / np.arange(1, dim + 1, dtype=np.float64) if spectrum == "powerlaw" else np.ones(dim)
    return np.sqrt(lam / lam.sum()).astype(np.float32)


def _rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng([seed, 7]).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _chunk_centres(chunk: int, scales: np.ndarray, rot: np.ndarray, seed: int) -> np.ndarray:
    """Unit centres of identities ``chunk * _CHUNK ..``: the one stream both generators draw them from."""
    z = np.random.default_rng([seed, 0, chunk]).standard_normal((_CHUNK, len(scales)), dtype=np.float32)
    return _normalise((z * scales) @ rot.T)


def identity_centres(
    identities: np.ndarray, *, dim: int = 512, spectrum: str = "powerlaw", seed: int = 0
) -> np.ndarray:
    """Unit centre vectors (len(identities), dim) of the given identity numbers (fixed per identity)."""
    _check(dim, spectrum)
    ids = np.asarray(identities, dtype=np.int64).ravel()
    if (ids < 0).any():
        raise InvalidInput("identity numbers must be >= 0")
    out = np.empty((len(ids), dim), np.float32)
    scales, rot = _scales(dim, spectrum), _rotation(dim, seed)
    chunk_of = ids // _CHUNK
    for c in np.unique(chunk_of):
        centres = _chunk_centres(int(c), scales, rot, seed)
        sel = chunk_of == c
        out[sel] = centres[ids[sel] - c * _CHUNK]
    return out


def noisy_faces(
    identities: np.ndarray,
    *,
    dim: int = 512,
    spectrum: str = "powerlaw",
    seed: int = 0,
    noise_seed: int = 1,
    spread: float = _SPREAD,
) -> np.ndarray:
    """Fresh unit face vectors of the given identities (e.g. held-out queries): centre + noise, normalised."""
    ids = np.asarray(identities, dtype=np.int64).ravel()
    centres = identity_centres(ids, dim=dim, spectrum=spectrum, seed=seed)
    noise = np.random.default_rng([seed, 2, noise_seed]).standard_normal(centres.shape, dtype=np.float32)
    noise *= spread / np.sqrt(dim)
    return _normalise(centres + noise).astype(np.float32)


def iter_identity_embeddings(
    n_faces: int,
    *,
    faces_per_identity: int = 5,
    dim: int = 512,
    spectrum: str = "powerlaw",
    seed: int = 0,
    spread: float = _SPREAD,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of :func:`identity_embeddings` in chunks of (vectors, identities), to bound memory."""
    _check(dim, spectrum)
    if n_faces < 1 or faces_per_identity < 1:
        raise InvalidInput("n_faces and faces_per_identity must be >= 1")
    scales, rot = _scales(dim, spectrum), _rotation(dim, seed)
    per_chunk = _CHUNK * faces_per_identity  # faces of one identity chunk
    for start in range(0, n_faces, per_chunk):
        stop = min(start + per_chunk, n_faces)
        c = start // per_chunk
        identities = np.arange(start, stop, dtype=np.int64) // faces_per_identity
        centres = _chunk_centres(c, scales, rot, seed)
        noise = np.random.default_rng([seed, 1, c]).standard_normal((stop - start, dim), dtype=np.float32)
        noise *= spread / np.sqrt(dim)
        yield _normalise(centres[identities - c * _CHUNK] + noise).astype(np.float32), identities


def identity_embeddings(
    n_faces: int,
    *,
    faces_per_identity: int = 5,
    dim: int = 512,
    spectrum: str = "powerlaw",
    seed: int = 0,
    spread: float = _SPREAD,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_faces`` unit embeddings (float32 (N, dim)) and their identity numbers (int64 (N,)).

    Face ``i`` belongs to identity ``i // faces_per_identity``.
    """
    parts = list(
        iter_identity_embeddings(
            n_faces,
            faces_per_identity=faces_per_identity,
            dim=dim,
            spectrum=spectrum,
            seed=seed,
            spread=spread,
        )
    )
    return np.concatenate([v for v, _ in parts]), np.concatenate([i for _, i in parts])
