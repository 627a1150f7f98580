"""The debiasing adapter: a small head on the frozen encoder, trained with a margin loss over identities.

:class:`DebiasAdapter` is a scikit-learn-style estimator (keyword-only parameters, ``fit`` learns,
learned state ends in ``_``): a linear or two-layer projection from the encoder's D dims to
``out_dim``, trained with CosFace (additive cosine margin, Wang et al. 2018) over the training
identities, seeded, optionally with per-sample sampling weights (a ``WeightedRandomSampler``, the way
DB-VAE resamples). ``transform`` gives L2-normalised rows; ``save``/``load_adapter`` round-trip it
through one ``.pt`` file holding tensors and a small header (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.errors import Cancelled, InvalidDataset, InvalidInput, NotFitted, StorageError

__all__ = ["ADAPTER_FORMAT", "DebiasAdapter", "adapter_digest", "load_adapter"]

ADAPTER_FORMAT = "latentface.adapter/1"

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]


def _module(in_dim: int, out_dim: int, hidden_dim: int | None):
    from torch import nn

    if hidden_dim is None:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class DebiasAdapter:
    """A head from D to ``out_dim`` dims, trained with a CosFace margin loss over identities.

    ``hidden_dim=None`` is a linear projection, an integer a two-layer MLP with that hidden width.
    The optimiser is SGD with momentum and weight decay: a direction only rare samples need is
    learned at the rate those samples are drawn, which is what sampling weights change (Adam would
    rescale rare gradients up and hide the effect of the sampler). ``epochs`` count passes of N
    draws, whatever the weights. With more than ``max_classes`` identities each step scores the
    batch's identities and a random sample of the others (Partial FC), about ``max_classes`` in all.
    """

    def __init__(
        self,
        *,
        out_dim: int = 64,
        hidden_dim: int | None = None,
        scale: float = 30.0,
        margin: float = 0.2,
        epochs: int = 10,
        batch_size: int = 256,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        max_classes: int = 4096,
        seed: int = 0,
    ) -> None:
        self.out_dim = out_dim
        self.hidden_dim = hidden_dim
        self.scale = scale
        self.margin = margin
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.max_classes = max_classes
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {
            "out_dim": self.out_dim,
            "hidden_dim": self.hidden_dim,
            "scale": self.scale,
            "margin": self.margin,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "max_classes": self.max_classes,
            "seed": self.seed,
        }

    def _check_params(self) -> None:
        if self.out_dim < 1 or (self.hidden_dim is not None and self.hidden_dim < 1):
            raise InvalidInput("out_dim and hidden_dim must be >= 1")
        if self.epochs < 1 or self.batch_size < 2 or self.max_classes < 2:
            raise InvalidInput("epochs must be >= 1, batch_size >= 2 and max_classes >= 2")
        if not (self.scale > 0 and 0 <= self.margin < 1 and self.lr > 0 and self.weight_decay >= 0):
            raise InvalidInput("need scale > 0, 0 <= margin < 1, lr > 0 and weight_decay >= 0")

    def fit(
        self,
        X: np.ndarray,
        identities: np.ndarray,
        *,
        sample_weight: np.ndarray | None = None,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> DebiasAdapter:
        """Train on ``X`` (N, D) labelled by ``identities`` (N,); ``sample_weight`` (N,) sets how often each row is drawn."""
        import torch
        import torch.nn.functional as F
        from torch.utils.data import RandomSampler, WeightedRandomSampler

        self._check_params()
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) != len(identities) or len(X) < 2:
            raise InvalidDataset("X must be (N, D), N >= 2, with one identity per row")
        names, y = np.unique(np.asarray(identities).astype(str), return_inverse=True)
        if len(names) < 2:
            raise InvalidDataset("training the adapter needs at least two identities")
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # nn.Linear's initialisation draws from the global generator
        model = _module(X.shape[1], self.out_dim, self.hidden_dim)
        classes = torch.nn.Parameter(torch.randn(len(names), self.out_dim, generator=gen) / np.sqrt(self.out_dim))
        if sample_weight is None:
            sampler = RandomSampler(range(len(X)), replacement=True, num_samples=len(X), generator=gen)
        else:
            w = np.asarray(sample_weight, dtype=np.float64)
            if w.shape != (len(X),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise InvalidInput("sample_weight must be N finite non-negative numbers with a positive sum")
            sampler = WeightedRandomSampler(torch.from_numpy(w), num_samples=len(X), replacement=True, generator=gen)
        opt = torch.optim.SGD(
            [*model.parameters(), classes], lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        steps_per_epoch = max(1, len(X) // self.batch_size)
        total = self.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=total, pct_start=0.1)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
        losses: list[float] = []
        start = time.perf_counter()
        step = 0
        for epoch in range(self.epochs):
            order = torch.tensor(list(sampler), dtype=torch.int64)
            epoch_loss = 0.0
            for b in range(steps_per_epoch):
                if should_stop is not None and should_stop():
                    raise Cancelled("training the adapter was cancelled")
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                z = F.normalize(model(Xt[idx]), dim=1)
                target = yt[idx]
                if len(names) > self.max_classes:
                    # Partial FC (An et al., 2021): the batch's identities and a random sample of the others,
                    # so a step costs O(max_classes), not O(identities).
                    negatives = torch.randint(len(names), (self.max_classes,), generator=gen)
                    chosen = torch.unique(torch.cat([target, negatives]))
                    cos = z @ F.normalize(classes[chosen], dim=1).T
                    target = torch.searchsorted(chosen, target)
                else:
                    cos = z @ F.normalize(classes, dim=1).T
                rows = torch.arange(len(idx))
                logits = self.scale * cos.index_put((rows, target), cos[rows, target] - self.margin)
                loss = F.cross_entropy(logits, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                epoch_loss += float(loss.detach())
                step += 1
            losses.append(epoch_loss / steps_per_epoch)
            if progress is not None:
                progress(step / total, f"adapter epoch {epoch + 1}/{self.epochs}, loss {losses[-1]:.3f}")
        model.eval()
        self.module_ = model
        self.in_dim_ = int(X.shape[1])
        self.n_identities_ = int(len(names))
        self.loss_history_ = losses
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _fitted(self):
        module = getattr(self, "module_", None)
        if module is None:
            raise NotFitted("this DebiasAdapter is not fitted yet; call fit() first")
        return module

    def transform(self, X: np.ndarray, *, batch_size: int = 65_536) -> np.ndarray:
        """The adapted, L2-normalised rows of ``X`` (N, D) → (N, ``out_dim``) float32."""
        import torch
        import torch.nn.functional as F

        module = self._fitted()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.in_dim_:
            raise InvalidInput(f"the adapter takes (N, {self.in_dim_}) inputs, got {X.shape}")
        out = np.empty((len(X), self.out_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(X), batch_size):
                out[s : s + batch_size] = F.normalize(module(torch.from_numpy(X[s : s + batch_size])), dim=1).numpy()
        return out

    def save(self, path: str | Path) -> Path:
        """Write the adapter to ``path`` (``.pt``: tensors and a header; no pickled code)."""
        import torch

        module = self._fitted()
        path = Path(path)
        header = {"format": ADAPTER_FORMAT, "in_dim": self.in_dim_, **self.get_params()}
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"header": header, "state_dict": state}, tmp)
            tmp.replace(path)
        except OSError as exc:
            raise StorageError(f"cannot write the adapter to {path}: {exc}") from exc
        return path


def load_adapter(path: str | Path) -> DebiasAdapter:
    """A fitted :class:`DebiasAdapter` from a file :meth:`DebiasAdapter.save` wrote."""
    import torch

    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise InvalidInput(f"{path}: no such adapter file") from exc
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise InvalidInput(f"{path}: not a latentface adapter file: {exc}") from exc
    header = blob.get("header") if isinstance(blob, dict) else None
    if not isinstance(header, dict) or header.get("format") != ADAPTER_FORMAT:
        raise InvalidInput(f"{path}: not a latentface adapter file (expected format {ADAPTER_FORMAT})")
    params = {k: header[k] for k in DebiasAdapter().get_params() if k in header}
    adapter = DebiasAdapter(**params)
    module = _module(int(header["in_dim"]), adapter.out_dim, adapter.hidden_dim)
    try:
        module.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise InvalidInput(f"{path}: adapter tensors do not match its header: {exc}") from exc
    module.eval()
    adapter.module_ = module
    adapter.in_dim_ = int(header["in_dim"])
    adapter.n_identities_ = header.get("n_identities")
    adapter.loss_history_ = []
    return adapter


def adapter_digest(path: str | Path) -> str:
    """sha256 of the adapter file's bytes (hex); its first 12 characters join the model id."""
    h = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the adapter file: {exc}") from exc
    return h.hexdigest()
