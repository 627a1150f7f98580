"""Where the encoder's weights live, fetching them when allowed, and loading them safely.

Named facenet checkpoints (``"vggface2"``, ``"casia-webface"``) are looked for exactly where
facenet-pytorch's ``load_weights`` keeps them, ``<torch home>/checkpoints/<file name>``, so a
cache filled by facenet-pytorch (or by hand) is found. The torch home is
``EncoderConfig.torch_home``; ``service/config.py`` fills it with facenet-pytorch's
``get_torch_home()`` rule (``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else
``~/.cache/torch``). The domain reads no environment variable: without a torch home it uses
``~/.cache/torch``, and downloads only when the caller passes ``allow_download=True``.

``"dlib-resnet"`` ships inside the PyPI package ``face_recognition_models``: nothing is ever
downloaded, and its file is checked against the pinned SHA-256.

There is never a silent fallback to random weights: a missing or unusable file raises
:class:`~embeddings.errors.WeightsUnavailable` with a message that says which file to put where.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import torch

from embeddings.config import EncoderConfig, PretrainedCfg
from embeddings.errors import WeightsUnavailable

__all__ = [
    "checkpoint_path",
    "dlib_model_file",
    "file_digest",
    "load_state_dict_file",
    "resolve_weights",
    "torch_home",
    "verify_digest",
]

_DOWNLOAD_TIMEOUT_S = 60.0
_DLIB_INSTALL = "pip install face_recognition_models dlib-bin (scripts/install does)"


def torch_home(config: EncoderConfig) -> Path:
    """The configured torch home (service/config.py applies facenet-pytorch's env rule), else
    ``~/.cache/torch``."""
    if config.torch_home is not None:
        return Path(config.torch_home).expanduser()
    return Path.home() / ".cache" / "torch"


def dlib_model_file(file_name: str, *, package: str = "face_recognition_models") -> Path:
    """A ``.dat`` file of the ``face_recognition_models`` package, found without importing it
    (its ``__init__`` needs ``pkg_resources``, which current setuptools no longer ships)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / "models" / file_name
        if path.is_file():
            return path
    where = f" (looked in {locations[0]}/models)" if locations else ""
    raise WeightsUnavailable(
        f"{file_name} of the Python package {package!r} is not installed{where}. Install it: {_DLIB_INSTALL}."
    )


def verify_digest(path: Path, expected: str | None) -> str:
    """The file's SHA-256; WeightsUnavailable when a pinned digest is given and differs."""
    digest = file_digest(path)
    if expected is not None and digest != expected:
        raise WeightsUnavailable(
            f"{str(path)!r} has SHA-256 {digest[:16]}…, not the pinned {expected[:16]}…: the file is "
            "damaged or another version. Reinstall it (for dlib-resnet: "
            f"{_DLIB_INSTALL}) or pass the file explicitly as a path."
        )
    return digest


def checkpoint_path(config: EncoderConfig) -> Path:
    """The full path where a named checkpoint is expected (it may not exist)."""
    cfg = config.pretrained
    if cfg.file_name is None:
        raise WeightsUnavailable(f"weights {config.weights!r} have no checkpoint file")
    return torch_home(config) / "checkpoints" / cfg.file_name


def resolve_weights(config: EncoderConfig, *, allow_download: bool = False) -> Path | None:
    """The checkpoint file for ``config.weights``; ``None`` for seeded random weights.

    A named checkpoint that is not on disk is downloaded from facenet-pytorch's release URL
    only when ``allow_download`` is true; otherwise, or
    when the download fails, :class:`WeightsUnavailable` says which file to put at which path.
    Any other value of ``weights`` is a path to a state-dict file, which must exist.
    """
    if config.weights == "random":
        return None
    cfg = config.pretrained
    if cfg.package is not None and cfg.file_name is not None:
        return dlib_model_file(cfg.file_name, package=cfg.package)
    if cfg.name == "file":
        path = Path(config.weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"encoder weights file {str(path)!r} does not exist. Pass an existing weight file "
                "(--weights /path/to/file.pt or .dat, or LATENTFACE_WEIGHTS), or one of 'dlib-resnet', "
                "'vggface2', 'casia-webface'."
            )
        return path
    path = checkpoint_path(config)
    if path.is_file():
        return path
    if allow_download:
        try:
            _download(cfg, path)
        except (OSError, ValueError, WeightsUnavailable) as exc:
            # WeightsUnavailable: what came back is not a checkpoint (its message names a temp file).
            raise WeightsUnavailable(_missing_message(cfg, path, f"download failed: {exc}")) from exc
        return path
    raise WeightsUnavailable(_missing_message(cfg, path, "downloads are disabled (offline)"))


def _missing_message(cfg: PretrainedCfg, path: Path, why: str) -> str:
    return (
        f"encoder weights {cfg.name!r} are not available ({why}). "
        f"Download {cfg.file_name} from {cfg.url} and put it at {path} "
        f"(that is, {path.parent}/ must contain {cfg.file_name}); "
        "or point the service at a state-dict file with --weights /path/to/file.pt or LATENTFACE_WEIGHTS; "
        f"or use the model that installs from PyPI: --weights dlib-resnet ({_DLIB_INSTALL})."
    )


def _download(cfg: PretrainedCfg, dst: Path) -> None:
    """Fetch ``cfg.url`` to ``dst`` through a temporary file, so a broken download never lands."""
    if cfg.url is None:
        raise ValueError(f"checkpoint {cfg.name!r} has no URL")
    dst.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(cfg.url, headers={"User-Agent": "latentface"})
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
        load_state_dict_file(Path(tmp_name))  # refuse to install something that is not a checkpoint
        os.replace(tmp_name, dst)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``torch.load(weights_only=True)``; unusable files raise WeightsUnavailable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip, runtime and value errors alike
        raise WeightsUnavailable(
            f"cannot load encoder weights from {str(path)!r}: {type(exc).__name__}: {exc}. "
            "The file is corrupt or not a PyTorch state dict; replace it."
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint wrapping the state dict
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsUnavailable(f"{str(path)!r} does not hold a state dict of tensors; replace it.")
    return state


def file_digest(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
