"""A small MLP variational autoencoder over embeddings; its posterior means μ are the latent coordinates."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from embeddings.errors import Cancelled, InvalidInput, NotFitted

__all__ = ["EmbeddingVAE", "MIN_STEPS", "PATIENCE_STEPS", "mean_kl_per_dim"]

MIN_STEPS = 1500
PATIENCE_STEPS = 100

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class EmbeddingVAE:
    """MLP VAE (D → hidden → 2·latent_dim; latent_dim → hidden → D) trained on standardised inputs.

    Loss per sample: squared reconstruction error (a unit-variance Gaussian decoder on standardised
    features) + ``beta`` · KL(q(z|x) ‖ N(0, I)). Early stopping on a held-out ``val_fraction``;
    the best-validation weights are kept. ``epochs`` (the most) and ``patience`` (epochs without a
    better validation loss before stopping) default to a budget in optimiser steps: at least
    :data:`MIN_STEPS` steps may run and :data:`PATIENCE_STEPS` steps without progress stop the fit
    (but never fewer than 40 and 4 epochs). Small datasets have few steps per epoch; stopped by
    epochs alone they end before unused latent dimensions have collapsed, and a latent space with
    spare active dimensions distorts the density estimated on it. Everything random comes from
    ``seed``, so two fits on the same data give the same μ. ``max_train_samples`` caps the rows used
    to train (μ is still computed for all rows), which keeps 100k-row fits fast without changing
    what is learned much.
    """

    def __init__(
        self,
        *,
        latent_dim: int = 32,
        hidden_dim: int = 256,
        beta: float = 1.0,
        epochs: int | None = None,
        batch_size: int = 512,
        lr: float = 2e-3,
        val_fraction: float = 0.1,
        patience: int | None = None,
        max_train_samples: int | None = 50_000,
        seed: int = 0,
        num_threads: int | None = None,
    ) -> None:
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.val_fraction = val_fraction
        self.patience = patience
        self.max_train_samples = max_train_samples
        self.seed = seed
        self.num_threads = num_threads

    def _check_params(self, n: int) -> None:
        if self.latent_dim < 1 or self.hidden_dim < 1:
            raise InvalidInput("latent_dim and hidden_dim must be >= 1")
        if self.beta < 0 or self.batch_size < 1 or self.lr <= 0:
            raise InvalidInput("beta >= 0, batch_size >= 1 and lr > 0 are required")
        if (self.epochs is not None and self.epochs < 1) or (self.patience is not None and self.patience < 1):
            raise InvalidInput("epochs and patience must be >= 1 (or None for the step budget)")
        if not 0 < self.val_fraction < 1:
            raise InvalidInput("val_fraction must be in (0, 1)")
        if n < 10:
            raise InvalidInput(f"need at least 10 samples to fit a VAE, got {n}")

    def _build(self, dim: int) -> Any:
        import torch
        from torch import nn

        class _Net(nn.Module):
            def __init__(self, dim: int, hidden: int, latent: int) -> None:
                super().__init__()
                self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent))
                self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, dim))
                self.latent = latent

            def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                h = self.encoder(x)
                return h[:, : self.latent], h[:, self.latent :].clamp(-10.0, 10.0)

        return _Net(dim, self.hidden_dim, self.latent_dim)

    def fit(self, X: np.ndarray, *, progress: Progress | None = None, should_stop: ShouldStop | None = None) -> EmbeddingVAE:
        """Train on the rows of ``X`` (N×D). Raises :class:`Cancelled` when ``should_stop()`` turns true."""
        import torch

        X = _as_2d(X)
        self._check_params(X.shape[0])
        rng = np.random.default_rng(self.seed)
        with _torch_threads(self.num_threads):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self.mean_ = X.mean(axis=0)
            self.scale_ = X.std(axis=0) + 1e-6
            rows = rng.permutation(X.shape[0])
            if self.max_train_samples is not None and rows.size > self.max_train_samples:
                rows = rows[: self.max_train_samples]
            n_val = max(1, int(round(rows.size * self.val_fraction)))
            Z = torch.from_numpy(((X[rows] - self.mean_) / self.scale_).astype(np.float32))
            train, val = Z[n_val:], Z[:n_val]
            epochs, patience = self.schedule(train.shape[0])
            net = self._build(X.shape[1])
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            best, best_state, bad = math.inf, None, 0
            self.history_: list[tuple[float, float]] = []
            for epoch in range(epochs):
                net.train()
                order = torch.randperm(train.shape[0], generator=gen)
                total = 0.0
                for start in range(0, train.shape[0], self.batch_size):
                    if should_stop is not None and should_stop():
                        raise Cancelled("VAE training was cancelled")
                    batch = train[order[start : start + self.batch_size]]
                    loss = self._loss(net, batch, gen).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * batch.shape[0]
                net.eval()
                with torch.no_grad():
                    val_loss = float(self._loss(net, val, None).mean())
                self.history_.append((total / max(1, train.shape[0]), val_loss))
                if progress is not None:
                    progress((epoch + 1) / epochs, f"VAE epoch {epoch + 1}: validation loss {val_loss:.3f}")
                if val_loss < best - 1e-4 * abs(best if math.isfinite(best) else 1.0):
                    best, bad = val_loss, 0
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
                    if bad >= patience:
                        break
            if best_state is not None:
                net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.n_epochs_ = len(self.history_)
        self.best_val_loss_ = best
        return self

    def schedule(self, n_train: int) -> tuple[int, int]:
        """(most epochs, patience in epochs) for ``n_train`` training rows: the given values, or the step budget."""
        steps_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        epochs = self.epochs or max(40, math.ceil(MIN_STEPS / steps_per_epoch))
        patience = self.patience or max(4, math.ceil(PATIENCE_STEPS / steps_per_epoch))
        return epochs, patience

    def _loss(self, net: Any, x: Any, gen: Any) -> Any:
        import torch

        mu, logvar = net.encode(x)
        if gen is None:  # validation: the posterior mean, so the score does not depend on noise draws
            z = mu
        else:
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        recon = net.decoder(z)
        rec = ((recon - x) ** 2).sum(dim=1) * 0.5
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
        return rec + self.beta * kl

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFitted("EmbeddingVAE is not fitted; call fit first")

    def posterior(self, X: np.ndarray, *, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means μ and log-variances log σ² (both N×latent_dim, float32)."""
        import torch

        self._check_fitted()
        X = _as_2d(X)
        if X.shape[1] != self.mean_.shape[0]:
            raise InvalidInput(f"expected {self.mean_.shape[0]} features, got {X.shape[1]}")
        mus, log_vars = [], []
        with _torch_threads(self.num_threads), torch.no_grad():
            for start in range(0, X.shape[0], batch_size):
                chunk = torch.from_numpy(((X[start : start + batch_size] - self.mean_) / self.scale_).astype(np.float32))
                mu, log_var = self.net_.encode(chunk)
                mus.append(mu.numpy())
                log_vars.append(log_var.numpy())
        if not mus:
            empty = np.zeros((0, self.latent_dim), np.float32)
            return empty, empty.copy()
        return np.concatenate(mus).astype(np.float32), np.concatenate(log_vars).astype(np.float32)

    def decode(self, Z: np.ndarray, *, batch_size: int = 8192) -> np.ndarray:
        """The decoder's output for latent rows ``Z`` (N×latent_dim), in the standardised feature space
        the VAE was trained in (where its unit-variance Gaussian likelihood, and so its metric, lives)."""
        import torch

        self._check_fitted()
        Z = _as_2d(Z)
        if Z.shape[1] != self.latent_dim:
            raise InvalidInput(f"expected {self.latent_dim} latent dimensions, got {Z.shape[1]}")
        out = []
        with _torch_threads(self.num_threads), torch.no_grad():
            for start in range(0, Z.shape[0], batch_size):
                out.append(self.net_.decoder(torch.from_numpy(Z[start : start + batch_size])).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.mean_.shape[0]), np.float32)

    def transform(self, X: np.ndarray, *, batch_size: int = 8192) -> np.ndarray:
        """Posterior means μ (N×latent_dim, float32)."""
        return self.posterior(X, batch_size=batch_size)[0]

    def kl_per_dim(self, X: np.ndarray, *, batch_size: int = 8192) -> np.ndarray:
        """Mean KL(q(z_j|x) ‖ N(0,1)) per latent dimension over ``X``; near 0 marks an unused (collapsed) dimension."""
        mu, log_var = self.posterior(X, batch_size=batch_size)
        return mean_kl_per_dim(mu, log_var)


def mean_kl_per_dim(mu: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """Mean KL(N(μ_j, σ_j²) ‖ N(0, 1)) per dimension over the rows of posterior means and log-variances."""
    mu, log_var = mu.astype(np.float64), log_var.astype(np.float64)
    return (0.5 * (mu**2 + np.exp(log_var) - 1.0 - log_var)).mean(axis=0)


def _as_2d(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise InvalidInput(f"expected a 2-D array (N×D), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InvalidInput("input contains NaN or inf")
    return X
