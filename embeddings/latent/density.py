"""Density estimators on latent coordinates, one API (scikit-learn ``KernelDensity`` shape).

Every estimator takes keyword-only parameters in ``__init__`` (stored as given, checked in ``fit``),
keeps learned state in attributes ending in ``_``, and offers:

- ``fit(X) -> self``;
- ``score_samples(X)``: **log**-density of each row of ``X`` (up to an additive constant for the
  histogram estimator, see its docstring);
- ``sample_weights(X=None)``: sampling probabilities (sum 1) of the rows of ``X``, or of the fitted
  rows when ``X`` is None (for the kNN estimator those leave each row itself out);
- ``to_dict()`` / ``from_dict(d)`` and ``save(path)`` / ``load(path)`` (``.npz``) round trips.

Methods: ``histogram`` (the DB-VAE reference), ``knn`` (FAISS k-nearest-neighbour density) and
``gmm`` (a Gaussian mixture, components chosen by BIC).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from embeddings.errors import InvalidInput, NotFitted
from embeddings.latent.weights import inverse_density_weights

__all__ = [
    "DensityEstimator",
    "GMMDensity",
    "HistogramDensity",
    "KDEDensity",
    "KNNDensity",
    "METHODS",
    "held_out_log_likelihood",
    "lowest_bic_mixture",
    "make_estimator",
]


class DensityEstimator:
    """Base of the latent density estimators (see the module docstring for the contract)."""

    method: ClassVar[str] = ""
    _state: ClassVar[tuple[str, ...]] = ()

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    @classmethod
    def _param_names(cls) -> list[str]:
        import inspect

        return [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]

    def _check_fitted(self) -> None:
        if not all(hasattr(self, s) for s in self._state):
            raise NotFitted(f"{type(self).__name__} is not fitted; call fit first")

    def _check_X(self, X: np.ndarray, *, min_rows: int = 1) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] < min_rows or X.shape[1] < 1:
            raise InvalidInput(f"expected a 2-D array with at least {min_rows} rows, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise InvalidInput("input contains NaN or inf")
        if hasattr(self, "n_features_in_") and X.shape[1] != self.n_features_in_:
            raise InvalidInput(f"expected {self.n_features_in_} features, got {X.shape[1]}")
        return np.ascontiguousarray(X)

    def fit(self, X: np.ndarray) -> DensityEstimator:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_samples(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _train_log_density(self) -> np.ndarray:
        return self.score_samples(self.X_)

    def sample_weights(self, X: np.ndarray | None = None) -> np.ndarray:
        """Probabilities ∝ 1/(p + alpha), p the density relative to its mean over the rows (sum 1)."""
        self._check_fitted()
        log_density = self._train_log_density() if X is None else self.score_samples(X)
        return inverse_density_weights(log_density, alpha=self.alpha)

    def to_dict(self) -> dict[str, Any]:
        """Parameters and learned state (numpy arrays) for :meth:`from_dict`."""
        self._check_fitted()
        return {"method": self.method, "params": self.get_params(), "state": {s: getattr(self, s) for s in self._state}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DensityEstimator:
        if cls is DensityEstimator:
            return METHODS[d["method"]].from_dict(d)
        est = cls(**d["params"])
        for k, v in d["state"].items():
            setattr(est, k, v)
        est._restore()
        return est

    def _restore(self) -> None:
        """Rebuild derived state after :meth:`from_dict` (e.g. a FAISS index)."""

    def save(self, path: str | Path) -> None:
        d = self.to_dict()
        arrays = {f"state__{k}": np.asarray(v) for k, v in d["state"].items()}
        np.savez(Path(path), meta=np.array(json.dumps({"method": d["method"], "params": d["params"]})), **arrays)

    @staticmethod
    def load(path: str | Path) -> DensityEstimator:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            state = {k.removeprefix("state__"): z[k] for k in z.files if k.startswith("state__")}
        state = {k: (v.item() if v.ndim == 0 else v) for k, v in state.items()}
        return DensityEstimator.from_dict({**meta, "state": state})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class HistogramDensity(DensityEstimator):
    """The DB-VAE reference (Amini et al., AIES 2019; the MIT 6.S191 lab's computation).

    Per dimension: a ``bins``-bin density histogram of the fitted rows with the outer edges opened
    to ±∞; bin densities + ``alpha``, renormalised to sum 1; per-sample score 1/that value,
    normalised over the samples. ``combine="max"`` takes the element-wise maximum over dimensions
    (the lab), ``"product"`` the product (the paper's independence form); then a final normalisation.
    ``alpha`` here is the lab's histogram smoothing (in units of the histogram's density), not the
    relative α of the other estimators.

    ``score_samples`` returns, per row, the log of the smoothed bin probability combined the same
    way (minimum over dimensions for ``max``, sum of logs for ``product``): larger means denser.
    """

    method = "histogram"
    _state = ("edges_", "density_", "X_", "n_features_in_")

    def __init__(self, *, bins: int = 10, alpha: float = 0.001, combine: str = "max") -> None:
        self.bins = bins
        self.alpha = alpha
        self.combine = combine

    def fit(self, X: np.ndarray) -> HistogramDensity:
        if self.bins < 1 or not self.alpha >= 0 or self.combine not in ("max", "product"):
            raise InvalidInput("bins >= 1, alpha >= 0 and combine in ('max', 'product') are required")
        for attr in self._state:
            self.__dict__.pop(attr, None)
        X = self._check_X(X)
        edges = np.empty((X.shape[1], self.bins + 1))
        density = np.empty((X.shape[1], self.bins))
        for j in range(X.shape[1]):
            density[j], edges[j] = np.histogram(X[:, j], bins=self.bins, density=True)
        self.edges_, self.density_, self.X_ = edges, density, X
        self.n_features_in_ = X.shape[1]
        return self

    def _bin_probability(self, X: np.ndarray) -> np.ndarray:
        """N×D smoothed, renormalised bin value of each row in each dimension."""
        smoothed = self.density_ + self.alpha
        smoothed = smoothed / smoothed.sum(axis=1, keepdims=True)
        out = np.empty(X.shape, dtype=np.float64)
        for j in range(X.shape[1]):
            # Only the inner edges matter: the outer bins extend to ±∞.
            idx = np.searchsorted(self.edges_[j, 1:-1], X[:, j], side="right")
            out[:, j] = smoothed[j, idx]
        return out

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        log_q = np.log(self._bin_probability(self._check_X(X)))
        return log_q.min(axis=1) if self.combine == "max" else log_q.sum(axis=1)

    def sample_weights(self, X: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
        X = self.X_ if X is None else self._check_X(X)
        inv = 1.0 / self._bin_probability(X)
        per_dim = inv / inv.sum(axis=0, keepdims=True)
        if self.combine == "max":
            combined = per_dim.max(axis=1)
        else:
            log_c = np.log(per_dim).sum(axis=1)
            combined = np.exp(log_c - log_c.max())
        return combined / combined.sum()


class KNNDensity(DensityEstimator):
    """k-nearest-neighbour density: p(x) = k / (M · V_d · r_k(x)^d), r_k the distance to the k-th neighbour.

    ``n_neighbors`` gives the scale(s) k: an int is a count, a float in (0, 1) a fraction of the
    M reference rows (all rows, or ``max_reference`` seeded ones); each is rounded and clipped to
    1..M-1. With several scales (the default, 2.5%, 5% and 10% of M) the log-densities at each
    are averaged — the geometric mean of the estimates, with less variance than any one of them.
    At α → 0 the weights spread the sample uniformly over the volume the rows occupy, and that
    volume is only seen fairly at the scale of the groups one wants to balance: with a small k a
    large group's far tail, which it samples more of, counts as extra volume (a 95/5 split ends
    near 1.8 : 1 at k = 100..400 of 20 000, near 1.1 : 1 at 2.5–10%). Exact L2 search with FAISS.
    For the fitted rows (``sample_weights()`` without ``X``) each row is left out of its own
    neighbour list.

    ``dim`` is the exponent d: the dimension of the space the rows *fill*, which is the number of
    columns (the default, ``None``) unless the rows lie on a lower-dimensional surface — e.g. the
    decoder's images of d latent dimensions, embedded in more columns. The wrong d acts as a
    temperature on the weights (they grow like r_k^d).

    ``n_neighbors="auto"`` chooses one k from the data by held-out likelihood instead: the M
    reference rows are split in two halves by a seeded permutation; for each k on a log-spaced grid
    (``grid`` values from 5 rows to a fifth of a half, the radius scale of 10% of M) an estimate at
    scale k fitted on one half scores the other half's rows (at most ``n_validation`` in all, both
    directions), and the k of highest mean held-out log-likelihood wins (ties: the larger k). The
    scored estimate is the kNN density's normalised sample-point form at the same k and exponent d
    (:func:`held_out_log_likelihood`): the kNN estimate itself integrates to more than 1 (its tails
    fall like r^-d), so its held-out log-density is no proper score — on a planted 1-d mixture it
    exceeds the true density's own by 0.03–0.06 nats at every k and is largest at the grid's top,
    while its squared log error is smallest at k ≈ 50 of 2 000. ``k_`` is the winning count, used
    as is on all M rows (``k_grid_`` and ``k_scores_`` show the choice). Deterministic given
    ``seed``; the choice costs one kNN search of a half against itself and ``n_validation`` × M/2
    kernel sums, whatever N.

    Rows are compared in the units given (no rescaling), so the weights do not change when all of
    ``X`` is scaled by one factor. ``alpha`` is relative to the mean density (see
    :func:`~embeddings.latent.weights.inverse_density_weights`).
    """

    method = "knn"
    _state = ("X_", "k_", "train_log_density_", "n_features_in_")

    def __init__(
        self,
        *,
        n_neighbors: int | float | str | tuple[int | float, ...] = (0.025, 0.05, 0.1),
        dim: int | None = None,
        alpha: float = 0.01,
        max_reference: int | None = 20_000,
        n_validation: int = 4000,
        grid: int = 12,
        batch_size: int = 16384,
        seed: int = 0,
    ) -> None:
        self.n_neighbors = tuple(n_neighbors) if isinstance(n_neighbors, list) else n_neighbors
        self.dim = dim
        self.alpha = alpha
        self.max_reference = max_reference
        self.n_validation = n_validation
        self.grid = grid
        self.batch_size = batch_size
        self.seed = seed

    @property
    def _auto(self) -> bool:
        if isinstance(self.n_neighbors, str):
            if self.n_neighbors != "auto":
                raise InvalidInput(f"the only n_neighbors string is 'auto', got {self.n_neighbors!r}")
            return True
        return False

    def _scales(self, m: int) -> np.ndarray:
        """The distinct neighbour counts k for ``m`` reference rows, ascending."""
        given = self.n_neighbors
        scales = list(given) if isinstance(given, (tuple, list)) else [given]
        ks = []
        for k in scales:
            if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)):
                raise InvalidInput(f"n_neighbors must be counts >= 1 or fractions in (0, 1), got {given!r}")
            if isinstance(k, (float, np.floating)) and not float(k).is_integer():
                if not 0 < k < 1:
                    raise InvalidInput(f"a fractional n_neighbors must be in (0, 1), got {k}")
                k = max(1, round(k * m))
            if k < 1:
                raise InvalidInput(f"n_neighbors must be counts >= 1 or fractions in (0, 1), got {given!r}")
            ks.append(int(min(k, m - 1)))
        if not ks:
            raise InvalidInput("n_neighbors must name at least one scale")
        return np.unique(ks)

    def fit(self, X: np.ndarray) -> KNNDensity:
        auto = self._auto
        if not auto:
            self._scales(2)  # checks the values before any work
        if not self.alpha >= 0 or self.batch_size < 1 or (self.dim is not None and self.dim < 1):
            raise InvalidInput("alpha >= 0, batch_size >= 1 and dim >= 1 (or None) are required")
        if auto and (self.grid < 1 or self.n_validation < 2):
            raise InvalidInput("n_neighbors='auto' needs grid >= 1 and n_validation >= 2")
        for attr in (*self._state, "k_grid_", "k_scores_"):
            self.__dict__.pop(attr, None)
        X = self._check_X(X, min_rows=2)
        n = X.shape[0]
        # Beyond max_reference rows the neighbours are searched in a seeded random subset: the
        # estimate stays unbiased (k of M reference rows) and the search costs N·M, not N².
        if self.max_reference is not None and n > self.max_reference:
            ref = np.sort(np.random.default_rng(self.seed).choice(n, int(self.max_reference), replace=False))
        else:
            ref = np.arange(n)
        self.X_ = X[ref]
        self.n_features_in_ = X.shape[1]
        self.k_ = self._choose_k(self.X_) if auto else self._scales(self.X_.shape[0])
        self._restore()
        # A reference row's nearest hit is itself (or an exact twin at distance 0): skip one hit for those.
        in_ref = np.zeros(n, dtype=bool)
        in_ref[ref] = True
        dist = self._search(X, np.concatenate([self.k_ - 1, self.k_]))
        r = np.where(in_ref[:, None], dist[:, self.k_.size :], dist[:, : self.k_.size])
        self.train_log_density_ = self._log_density(r, self.X_.shape[0] - in_ref.astype(np.float64))
        return self

    def _restore(self) -> None:
        import faiss

        self.k_ = np.atleast_1d(np.asarray(self.k_, dtype=np.int64))
        self.index_ = faiss.IndexFlatL2(int(self.n_features_in_))
        self.index_.add(np.ascontiguousarray(self.X_, dtype=np.float32))

    def _choose_k(self, R: np.ndarray) -> np.ndarray:
        """``n_neighbors="auto"``: the k of best 2-fold held-out log-likelihood on the reference rows ``R``."""
        import faiss

        m = R.shape[0]
        d = self.dim or self.n_features_in_
        # Its own stream: the reference subset drew from default_rng(seed).
        perm = np.random.default_rng([int(self.seed), 1]).permutation(m)
        n_fit = m // 2
        halves = (perm[:n_fit], perm[n_fit:])
        hi = max(1, n_fit - 1)  # a fitting row's k-th neighbour among the other rows of its half
        lo = min(5, hi)
        top = min(hi, max(lo, round(0.2 * n_fit)))  # a fifth of a half: the radius scale of 10% of all rows
        grid = np.unique(np.round(np.geomspace(lo, top, int(self.grid))).astype(np.int64))
        per_direction = max(1, int(self.n_validation) // 2)
        total, count = np.zeros(grid.size), 0
        for fit_rows, held in ((halves[0], halves[1]), (halves[1][:n_fit], halves[0])):
            F = np.ascontiguousarray(R[fit_rows], dtype=np.float32)
            index = faiss.IndexFlatL2(int(self.n_features_in_))
            index.add(F)
            # Column 0 of a row's own search is itself (or an exact twin, at the same distance 0).
            d2, _ = index.search(F, int(grid.max()) + 1)
            radii = np.sqrt(np.maximum(d2[:, grid].astype(np.float64), 0.0))
            H = R[held[:per_direction]]  # the halves are in random order already
            total += held_out_log_likelihood(F, H, radii, d=d).sum(axis=0)
            count += H.shape[0]
        scores = total / count
        best = int(np.flatnonzero(scores >= scores.max() - 1e-9 * max(1.0, abs(scores.max())))[-1])
        self.k_grid_, self.k_scores_ = grid, scores
        return grid[best : best + 1].copy()

    def _search(self, X: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Distances (not squared) to the reference rows at 0-based neighbour ranks ``columns``, N×len(columns).

        Only those columns are kept, and the rows go in batches of at most ~16M hits, so a large k
        costs time, not memory."""
        columns = np.asarray(columns, dtype=np.int64)
        k = int(columns.max()) + 1
        rows = max(1, min(self.batch_size, (1 << 24) // k))
        out = np.empty((X.shape[0], columns.size), dtype=np.float64)
        for start in range(0, X.shape[0], rows):
            d2, _ = self.index_.search(X[start : start + rows], k)
            out[start : start + rows] = np.sqrt(np.maximum(d2[:, columns], 0.0))
        return out

    def _log_density(self, r: np.ndarray, n: float | np.ndarray) -> np.ndarray:
        """Mean over the scales of log(k / (n · V_d · r_k^d)); ``r`` is N×len(k_), ``n`` the reference count per row."""
        d = self.dim or self.n_features_in_
        log_unit_ball = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
        per_scale = np.log(self.k_.astype(np.float64)) - d * np.log(_floored(r))
        return per_scale.mean(axis=1) - np.log(n) - log_unit_ball

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = self._check_X(X)
        return self._log_density(self._search(X, self.k_ - 1), self.X_.shape[0])

    def _train_log_density(self) -> np.ndarray:
        return self.train_log_density_


class GMMDensity(DensityEstimator):
    """Gaussian-mixture density (full covariances), the number of components chosen by BIC.

    Candidates are ``n_components`` (a tuple); model selection and fitting use at most
    ``max_fit_samples`` rows (seeded), scoring uses all. Inputs are centred and divided by one global
    scale first, so weights do not change when all of ``X`` is scaled by one factor.
    """

    method = "gmm"
    _state = ("center_", "scale_", "weights_", "means_", "covariances_", "n_features_in_", "train_log_density_")

    def __init__(
        self,
        *,
        n_components: tuple[int, ...] = (1, 2, 4, 8, 16),
        alpha: float = 0.01,
        max_fit_samples: int = 20_000,
        reg_covar: float = 1e-4,
        seed: int = 0,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.max_fit_samples = max_fit_samples
        self.reg_covar = reg_covar
        self.seed = seed

    def fit(self, X: np.ndarray) -> GMMDensity:
        candidates = tuple(int(c) for c in np.atleast_1d(self.n_components))
        if not candidates or min(candidates) < 1 or not self.alpha >= 0 or self.max_fit_samples < 2:
            raise InvalidInput("n_components >= 1, alpha >= 0 and max_fit_samples >= 2 are required")
        for attr in self._state:
            self.__dict__.pop(attr, None)
        X = self._check_X(X, min_rows=2)
        self.n_features_in_ = X.shape[1]
        self.center_ = X.mean(axis=0).astype(np.float64)
        self.scale_ = float(np.sqrt(((X - self.center_) ** 2).sum(axis=1).mean() / X.shape[1])) or 1.0
        Z = (X - self.center_) / self.scale_
        rng = np.random.default_rng(self.seed)
        fit_rows = Z if Z.shape[0] <= self.max_fit_samples else Z[rng.choice(Z.shape[0], self.max_fit_samples, replace=False)]
        sizes = [c for c in sorted(set(candidates)) if c <= fit_rows.shape[0]]
        best, best_bic = lowest_bic_mixture(fit_rows, sizes, covariance_type="full", reg_covar=self.reg_covar, seed=self.seed)
        assert best is not None
        self.weights_, self.means_, self.covariances_ = best.weights_, best.means_, best.covariances_
        self.bic_ = best_bic
        self._restore()
        self.train_log_density_ = self.mixture_.score_samples(Z) - X.shape[1] * math.log(self.scale_)
        return self

    def _restore(self) -> None:
        from sklearn.mixture import GaussianMixture
        from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

        gm = GaussianMixture(n_components=len(self.weights_), covariance_type="full")
        gm.weights_, gm.means_, gm.covariances_ = self.weights_, self.means_, self.covariances_
        gm.precisions_cholesky_ = _compute_precision_cholesky(self.covariances_, "full")
        self.mixture_ = gm

    @property
    def n_components_(self) -> int:
        self._check_fitted()
        return len(self.weights_)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        if not hasattr(self, "mixture_"):
            self._restore()
        Z = (self._check_X(X) - self.center_) / self.scale_
        # The density of X itself: the change of variables costs log(scale) per dimension.
        return self.mixture_.score_samples(Z) - self.n_features_in_ * math.log(self.scale_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most likely mixture component of each row."""
        self._check_fitted()
        return self.mixture_.predict((self._check_X(X) - self.center_) / self.scale_)

    def _train_log_density(self) -> np.ndarray:
        return self.train_log_density_

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["params"]["n_components"] = list(d["params"]["n_components"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DensityEstimator:
        d = {**d, "params": {**d["params"], "n_components": tuple(d["params"]["n_components"])}}
        return super().from_dict(d)


class KDEDensity(DensityEstimator):
    """Gaussian kernel density with the bandwidth chosen from the data by held-out likelihood.

    p(x) = 1/M Σ_j N(x; x_j, h² I) over the M reference rows (all rows, or ``max_reference`` seeded
    ones), with the Gaussian's normalisation in ``dim`` dimensions (see :class:`KNNDensity`).
    ``bandwidth="auto"`` tries h on a geometric grid (``grid`` steps of √2 around the median
    nearest-neighbour distance) and keeps the one with the highest leave-one-out log-likelihood of
    ``n_validation`` seeded reference rows: the scale follows the data — small where a small group
    needs its own density, large where the data are smooth — instead of a fixed fraction of N.
    For the fitted rows, the reference rows leave themselves out.
    """

    method = "kde"
    _state = ("X_", "bandwidth_", "train_log_density_", "n_features_in_")

    def __init__(
        self,
        *,
        bandwidth: float | str = "auto",
        dim: int | None = None,
        alpha: float = 0.01,
        max_reference: int | None = 20_000,
        n_validation: int = 2000,
        grid: int = 16,
        batch_size: int = 1024,
        seed: int = 0,
    ) -> None:
        self.bandwidth = bandwidth
        self.dim = dim
        self.alpha = alpha
        self.max_reference = max_reference
        self.n_validation = n_validation
        self.grid = grid
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, X: np.ndarray) -> KDEDensity:
        auto = isinstance(self.bandwidth, str)
        if (auto and self.bandwidth != "auto") or (not auto and not float(self.bandwidth) > 0):
            raise InvalidInput(f"bandwidth must be 'auto' or a positive number, got {self.bandwidth!r}")
        if not self.alpha >= 0 or self.batch_size < 1 or self.grid < 1 or self.n_validation < 1:
            raise InvalidInput("alpha >= 0, batch_size >= 1, grid >= 1 and n_validation >= 1 are required")
        if self.dim is not None and self.dim < 1:
            raise InvalidInput("dim must be >= 1 (or None)")
        for attr in self._state:
            self.__dict__.pop(attr, None)
        X = self._check_X(X, min_rows=2)
        n = X.shape[0]
        rng = np.random.default_rng(self.seed)
        if self.max_reference is not None and n > self.max_reference:
            ref = np.sort(rng.choice(n, int(self.max_reference), replace=False))
        else:
            ref = np.arange(n)
        self.X_ = X[ref]
        self.n_features_in_ = X.shape[1]
        self_col = np.full(n, -1, dtype=np.int64)
        self_col[ref] = np.arange(ref.size)
        if auto:
            val = np.sort(rng.choice(ref.size, min(ref.size, int(self.n_validation)), replace=False))
            d2 = self._sq_distances(self.X_[val], self_col=val)
            nn = np.sqrt(np.median(d2.min(axis=1)))
            grid = (nn if nn > 0 else 1.0) * 2.0 ** (0.5 * (np.arange(self.grid) - self.grid // 4))
            scores = [self._log_density_from(d2, h).mean() for h in grid]
            self.bandwidth_ = float(grid[int(np.argmax(scores))])
            self.bandwidth_scores_ = np.asarray(scores)
        else:
            self.bandwidth_ = float(self.bandwidth)
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            d2 = self._sq_distances(X[start:stop], self_col=self_col[start:stop])
            out[start:stop] = self._log_density_from(d2, self.bandwidth_)
        self.train_log_density_ = out
        return self

    def _sq_distances(self, Q: np.ndarray, *, self_col: np.ndarray | None = None) -> np.ndarray:
        """Squared distances (float64) from ``Q`` to the reference rows; a row's own column is +inf."""
        R = self.X_.astype(np.float64)
        Q = Q.astype(np.float64)
        d2 = (Q * Q).sum(1)[:, None] + (R * R).sum(1)[None, :] - 2.0 * Q @ R.T
        np.maximum(d2, 0.0, out=d2)
        if self_col is not None:
            rows = np.flatnonzero(self_col >= 0)
            d2[rows, self_col[rows]] = np.inf
        return d2

    def _log_density_from(self, d2: np.ndarray, h: float) -> np.ndarray:
        d = self.dim or self.n_features_in_
        m = np.isfinite(d2).sum(axis=1)  # reference rows counted (a row's own column left out)
        a = -0.5 * d2 / (h * h)
        top = a.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(a - top).sum(axis=1))
        return lse - np.log(np.maximum(m, 1)) - d * math.log(h) - 0.5 * d * math.log(2 * math.pi)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = self._check_X(X)
        out = np.empty(X.shape[0], dtype=np.float64)
        for start in range(0, X.shape[0], self.batch_size):
            out[start : start + self.batch_size] = self._log_density_from(
                self._sq_distances(X[start : start + self.batch_size]), self.bandwidth_
            )
        return out

    def _train_log_density(self) -> np.ndarray:
        return self.train_log_density_


def lowest_bic_mixture(
    rows: np.ndarray, sizes: list[int], *, covariance_type: str, reg_covar: float, seed: int
) -> tuple[Any, float]:
    """Fit a Gaussian mixture of each of ``sizes`` components to ``rows`` (seeded, at most 200 EM
    rounds) and return the one of lowest BIC with its BIC; ``(None, inf)`` when ``sizes`` is empty."""
    from sklearn.mixture import GaussianMixture

    best, best_bic = None, math.inf
    for k in sizes:
        gm = GaussianMixture(
            n_components=k, covariance_type=covariance_type, reg_covar=reg_covar, random_state=seed, max_iter=200
        ).fit(rows)
        bic = float(gm.bic(rows))
        if bic < best_bic:
            best, best_bic = gm, bic
    return best, best_bic


def _floored(r: np.ndarray) -> np.ndarray:
    """Neighbour distances with zeros (twins closer than the k-th neighbour) raised to a floor far
    below the typical spacing: a millionth of the median positive distance."""
    positive = r[r > 0]
    return np.maximum(r, (np.median(positive) if positive.size else 1.0) * 1e-6)


def held_out_log_likelihood(
    F: np.ndarray, H: np.ndarray, radii: np.ndarray, *, d: int, batch: int = 512
) -> np.ndarray:
    """Log-density of each row of ``H`` under the sample-point kNN estimate fitted on ``F``, one column per scale.

    The estimate behind :class:`KNNDensity`'s ``n_neighbors="auto"``: p(x) = 1/n Σ_j N(x; f_j, σ_j² I)
    in ``d`` dimensions, σ_j = r_k(f_j)/√(d+2) (``radii[j]``, the distance from f_j to its k-th
    neighbour among the other rows of ``F``; the Gaussian with the second moment of the ball of that
    radius). It is a normalised density, so its held-out log-likelihood is a proper score of the
    scale k. The kNN estimate k/(n·V_d·r_k(x)^d) itself is not normalised (its tails fall like
    r^-d, its integral diverges) and scoring it directly rewards the grid's ends, not the data's scale.
    Returns len(H) × radii.shape[1].
    """
    F64 = np.asarray(F, dtype=np.float64)
    H64 = np.asarray(H, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64).reshape(F64.shape[0], -1)
    sigma = _floored(r) / math.sqrt(d + 2.0)
    inv_var, log_norm = 0.5 / sigma**2, -d * np.log(sigma)  # n_fit × scales
    const = -math.log(F64.shape[0]) - 0.5 * d * math.log(2 * math.pi)
    ff = (F64 * F64).sum(axis=1)
    out = np.empty((H64.shape[0], r.shape[1]))
    for start in range(0, H64.shape[0], batch):
        Q = H64[start : start + batch]
        d2 = np.maximum((Q * Q).sum(axis=1)[:, None] + ff[None, :] - 2.0 * Q @ F64.T, 0.0)
        for j in range(r.shape[1]):
            a = log_norm[None, :, j] - d2 * inv_var[None, :, j]
            peak = a.max(axis=1, keepdims=True)
            out[start : start + batch, j] = peak[:, 0] + np.log(np.exp(a - peak).sum(axis=1)) + const
    return out


METHODS: dict[str, type[DensityEstimator]] = {
    "histogram": HistogramDensity,
    "knn": KNNDensity,
    "gmm": GMMDensity,
    "kde": KDEDensity,
}


def make_estimator(method: str, **params: Any) -> DensityEstimator:
    """An unfitted estimator by method name (``histogram``, ``knn`` or ``gmm``)."""
    try:
        cls = METHODS[method]
    except KeyError:
        raise InvalidInput(f"unknown density method {method!r}; choose from {sorted(METHODS)}") from None
    return cls(**params)
