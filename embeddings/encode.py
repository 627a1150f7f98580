"""The face encoder: facenet-pytorch's InceptionResnetV1 turning 160x160 crops into unit 512-d vectors.

Three execution paths share one set of weights:

* **int8** (``precision="int8"``, CPU only): static int8 quantization on oneDNN with activation
  parameters calibrated offline on real faces (see :mod:`embeddings.quantize`);
* the **fast path** (``precision="bf16"``): eval-mode BatchNorm folded into the preceding
  convolutions, channels-last memory format and bf16 autocast, under ``torch.inference_mode``;
* the **fp32 path**: the plain facenet-pytorch module in fp32, exactly as facenet-pytorch runs it.

``precision="auto"`` is decided by :func:`select_precision`: int8 where the CPU has native int8 dot
products, the model has a calibration profile whose measured agreement meets the bar and a
load-time self-check confirms it; else bf16 on CUDA devices with bf16 support and on CPUs with fast
bf16 (AVX-512/AMX and oneDNN bf16 kernels); elsewhere fp32.
:meth:`FaceEncoder.encode_fp32_reference` always runs the plain fp32 path, so benchmarks and
tests can compare them on the same crops.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from embeddings.align import crop_faces
from embeddings.config import DLIB_FAMILY, FACENET_FAMILY, EncoderConfig, PretrainedCfg
from embeddings.errors import InvalidInput, Unavailable, WeightsUnavailable
from embeddings.quantize import (
    INT8_COSINE_BAR,
    int8_is_fast,
    int8_warnings_off,
    load_profile,
    min_cosine,
    probe_crops,
    quantize_int8,
)
from embeddings.types import DetectedFace
from embeddings.weights import load_state_dict_file, resolve_weights, verify_digest

__all__ = [
    "MODEL_FAMILY",
    "FaceEncoder",
    "create_encoder",
    "resolve_device",
    "resolve_precision",
    "select_precision",
]

MODEL_FAMILY = FACENET_FAMILY
_REFERENCE_BATCH = 32


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; explicit devices are checked.

    The one device rule of the domain: the detector resolves its device here too.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InvalidInput(f"unknown torch device {device!r}") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise Unavailable(f"device {device!r} requested but CUDA is not available")
    if parsed.type not in ("cpu", "cuda"):
        raise InvalidInput(f"device must be cpu or cuda, got {device!r}")
    return str(parsed)


def _cpu_has_fast_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "AVX512" not in capability and "AMX" not in capability:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    """``"auto"`` → ``"bf16"`` where the hardware runs bf16 fast, else ``"fp32"`` (int8 is chosen
    by :func:`select_precision`, which needs the model)."""
    if precision == "int8" and torch.device(device).type != "cpu":
        raise InvalidInput("precision int8 runs on the CPU only (oneDNN kernels); use bf16 on CUDA")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_fast_bf16() else "fp32"


def select_precision(
    precision: str,
    device: str,
    model_id: str,
    build_int8: Callable[[dict], nn.Module],
    self_check: Callable[[nn.Module], float],
) -> tuple[str, nn.Module | None, str]:
    """The precision an encoder runs at, its int8 module when that is int8, and a note saying why.

    ``"auto"`` takes int8 only when all hold: a CPU with native int8 dot products (VNNI/AMX int8,
    where it is measured fastest), a calibration profile for ``model_id`` whose agreement with fp32
    on held-out real faces meets :data:`INT8_COSINE_BAR`, and a self-check at load (``self_check``:
    the worst cosine to fp32 on a few probe crops on this CPU) meeting it too. Otherwise the bf16/fp32
    rule of :func:`resolve_precision`. ``"int8"`` requires a profile and skips the self-check.
    """
    resolved = resolve_precision(precision, device)
    if precision == "int8":
        profile = load_profile(model_id)
        if profile is None:
            raise Unavailable(f"no int8 calibration profile for {model_id} (scripts/calibrate-int8 makes one)")
        return "int8", build_int8(profile), "int8 requested"
    if precision != "auto" or torch.device(device).type != "cpu":
        return resolved, None, f"{resolved} requested" if precision != "auto" else f"auto: {resolved} on {device}"
    if not int8_is_fast():
        return resolved, None, f"auto: {resolved} (no VNNI/AMX int8 on this CPU)"
    profile = load_profile(model_id)
    if profile is None:
        return resolved, None, f"auto: {resolved} (no int8 profile for this model)"
    measured = float(profile.get("heldout_cosine_min", 0.0))
    if measured < INT8_COSINE_BAR:
        return resolved, None, f"auto: {resolved} (int8 cosine {measured:.5f} on real faces < {INT8_COSINE_BAR})"
    try:
        model = build_int8(profile)
    except Unavailable as exc:  # e.g. a torch build without the x86 quantized engine
        return resolved, None, f"auto: {resolved} (int8 unavailable: {exc})"
    probe = self_check(model)
    if probe < INT8_COSINE_BAR:
        return resolved, None, f"auto: {resolved} (int8 self-check cosine {probe:.5f} < {INT8_COSINE_BAR})"
    return "int8", model, f"auto: int8 (cosine {measured:.5f} on held-out real faces, self-check {probe:.5f})"


def _seeded_init(model: nn.Module, seed: int) -> None:
    """Fill every parameter and buffer from a local generator, so ``seed`` alone fixes the weights.

    Convolutions and linear layers get He-normal weights (variance preserved through ReLUs, so the
    signal neither vanishes nor explodes over the ~100 layers); biases zero; BatchNorms identity,
    except the last one, which is calibrated (see :func:`_calibrate_batchnorm`).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.num_batches_tracked.zero_()
    _calibrate_batchnorm(model, gen)


def _calibrate_batchnorm(model: InceptionResnetV1, gen: torch.Generator, n: int = 16) -> None:
    """Set the final BatchNorm's statistics from seeded smooth-noise images (a data-dependent init).

    With an identity final BatchNorm a random network maps every input to nearly the same
    direction (ReLU outputs share a positive mean); centring the 512 outputs makes
    random embeddings of different images differ, as trained ones do, so tests comparing faces
    mean something. Only the last layer is calibrated: calibrating the inner BatchNorms too makes
    the random network chaotic (bf16 vs fp32 cosine fell to ~0.87). Even so, centring leaves the
    image-dependent part of a random network's features small next to their shared part, so bf16
    rounding shows more than with trained weights: bf16 vs fp32 cosine is ~0.999 here (measured
    min 0.9988-0.9995 on synthetic and photo crops), where trained weights reach ~0.9999.
    """
    size = 160
    low = torch.randn((n, 3, size // 16, size // 16), generator=gen)
    x = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = (0.5 * x + 0.1 * torch.randn((n, 3, size, size), generator=gen)).clamp(-1.0, 1.0)
    features: list[torch.Tensor] = []
    hook = model.last_bn.register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0]))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        hook.remove()
    with torch.no_grad():
        model.last_bn.running_mean.copy_(features[0].mean(dim=0))
        # One shared scale: per-dimension scaling would magnify rounding noise in quiet dimensions.
        model.last_bn.running_var.fill_(features[0].var(dim=0).mean().item())


def _blank_model() -> InceptionResnetV1:
    """An uninitialised InceptionResnetV1 on the CPU, for weights to be loaded or seeded into.

    Built on the meta device: no memory is initialised and the global RNG is never touched.
    """
    with torch.device("meta"):
        model = InceptionResnetV1(classify=False)
    return model.to_empty(device="cpu")


@functools.lru_cache(maxsize=1)
def _random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights, kept for reuse: building them takes seconds and they never change."""
    model = _blank_model()
    _seeded_init(model, seed)
    return {k: v.detach() for k, v in model.state_dict().items()}


class _Fp32Linear(nn.Module):
    """Runs the final projection in fp32 even under bf16 autocast.

    It costs nothing measurable (one 1792x512 matmul) and removes the last bf16 rounding before the
    embedding: the fast path's worst cosine to fp32 on the benchmark crops rose from 0.99901 to 0.99919.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.linear(x.float())


def _fold_batchnorm(model: InceptionResnetV1) -> InceptionResnetV1:
    """Fold eval-mode BatchNorms into the layer before them (same maths, fewer passes over memory)."""
    for module in model.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv, bn)
            module.bn = nn.Identity()
    model.last_linear = fuse_linear_bn_eval(model.last_linear, model.last_bn)
    model.last_bn = nn.Identity()
    return model


def create_encoder(config: EncoderConfig, *, allow_download: bool = False):
    """The encoder of ``config.weights``' model family: :class:`FaceEncoder` (facenet) or
    :class:`~embeddings.dlib_encoder.DlibEncoder`. Both expose ``model_id``, ``crop_size``,
    ``embedding_dim``, ``device``, ``precision``, ``pretrained``, ``align`` and ``encode``."""
    if config.pretrained.family == DLIB_FAMILY:
        from embeddings.dlib_encoder import DlibEncoder

        return DlibEncoder(config, allow_download=allow_download)
    return FaceEncoder(config, allow_download=allow_download)


class FaceEncoder:
    """Embeds aligned 160x160 RGB face crops as L2-normalised 512-d float32 vectors.

    Weights come from ``config.weights`` (see :func:`embeddings.weights.resolve_weights`);
    ``"random"`` builds seeded random weights whose ``model_id`` says NOT-FOR-PRODUCTION.
    """

    embedding_dim: int
    crop_size: int
    model_id: str
    device: str
    precision: str

    def __init__(self, config: EncoderConfig = EncoderConfig(), *, allow_download: bool = False) -> None:
        self.config = config
        self._pretrained: PretrainedCfg = config.pretrained
        self.pretrained = self._pretrained
        self.embedding_dim = self._pretrained.embedding_dim
        self.crop_size = self._pretrained.crop_size
        self.device = resolve_device(config.device)
        self._weights_path = resolve_weights(config, allow_download=allow_download)
        if self._weights_path is None:
            self.model_id = f"{MODEL_FAMILY}/RANDOM-seed{config.seed}-NOT-FOR-PRODUCTION"
        else:
            # The digest of the bytes loaded joins the id: another file never passes for this model.
            digest = verify_digest(self._weights_path, self._pretrained.sha256)
            self.model_id = f"{MODEL_FAMILY}/{self._pretrained.name}-{digest[:12]}"
        self._lock = threading.Lock()
        plain = self._build_plain()
        self.precision, int8_model, self.precision_note = select_precision(
            config.precision, self.device, self.model_id, self._int8_builder(plain), self._int8_check(plain)
        )
        if int8_model is not None:
            self._model = int8_model
            self._reference = plain
        elif self.precision == "bf16":
            self._model = _fold_batchnorm(plain).to(memory_format=torch.channels_last)
            self._model.last_linear = _Fp32Linear(self._model.last_linear)
            self._reference: InceptionResnetV1 | None = None  # rebuilt on demand; saves ~90 MB
        else:
            self._model = plain
            self._reference = plain

    @property
    def is_random(self) -> bool:
        """True when the weights are seeded random ones (results are meaningless for recognition)."""
        return self._weights_path is None

    def __repr__(self) -> str:
        return f"FaceEncoder(model_id={self.model_id!r}, device={self.device!r}, precision={self.precision!r})"

    def _build_plain(self) -> InceptionResnetV1:
        """The unmodified facenet-pytorch module in fp32 and eval mode, weights loaded, on the device."""
        model = _blank_model()
        if self._weights_path is None:
            model.load_state_dict(_random_state_dict(self.config.seed), strict=True)
        else:
            state = load_state_dict_file(self._weights_path)
            # facenet's checkpoints carry the training classifier (logits.*); embeddings never use it.
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise WeightsUnavailable(
                    f"{str(self._weights_path)!r} is not an InceptionResnetV1 state dict: {exc}"
                ) from exc
        return model.eval().to(self.device)

    # The int8 path's source (scripts/calibrate-int8 and embeddings.quantize.build_profile use these):
    # a fresh traceable fp32 copy, and crops as that model's input tensor.
    int8_skip = ("last_linear", "last_bn")  # one 1792x512 product: fp32 costs nothing measurable

    def int8_source(self) -> nn.Module:
        return copy.deepcopy(self.reference_model)

    def model_input(self, crops: np.ndarray) -> torch.Tensor:
        return next(self._batches(self._check(crops), len(crops)))[1].contiguous()

    def _int8_builder(self, plain: nn.Module) -> Callable[[dict], nn.Module]:
        example = torch.zeros(1, 3, self.crop_size, self.crop_size)
        return lambda profile: quantize_int8(copy.deepcopy(plain), example, profile)

    def _int8_check(self, plain: nn.Module) -> Callable[[nn.Module], float]:
        def check(model: nn.Module) -> float:
            crops = probe_crops(8, self.crop_size)
            return min_cosine(self._run(model, crops, 8, mode="int8"), self._run(plain, crops, 8, mode="fp32"))

        return check

    @property
    def reference_model(self) -> InceptionResnetV1:
        """The plain fp32 facenet-pytorch module with this encoder's weights (built lazily)."""
        with self._lock:
            if self._reference is None:
                self._reference = self._build_plain()
            return self._reference

    def align(self, image: np.ndarray, faces: list[DetectedFace] | tuple[DetectedFace, ...]) -> np.ndarray:
        """N×160×160×3 uint8 crops of ``faces``, cut as facenet-pytorch's ``extract_face`` cuts them."""
        return crop_faces(image, faces, size=self.crop_size)

    def _check(self, crops: np.ndarray) -> np.ndarray:
        size = self.crop_size
        if not isinstance(crops, np.ndarray):
            raise InvalidInput(f"crops must be a numpy array, got {type(crops).__name__}")
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise InvalidInput(
                f"crops must be uint8 of shape (N, {size}, {size}, 3), got {crops.dtype} {crops.shape}"
            )
        return np.ascontiguousarray(crops)

    def _batches(self, crops: np.ndarray, batch_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
        mean, std = self._pretrained.mean, self._pretrained.std
        for start in range(0, len(crops), batch_size):
            part = slice(start, start + batch_size)
            nhwc = torch.from_numpy(crops[part]).to(self.device, non_blocking=True)
            # NHWC permuted to NCHW is exactly the channels-last layout: no copy needed for the fast path.
            yield part, (nhwc.permute(0, 3, 1, 2).float() - mean) / std

    def _run(self, model: nn.Module, crops: np.ndarray, batch_size: int, *, mode: str) -> np.ndarray:
        crops = self._check(crops)
        out = np.empty((len(crops), self.embedding_dim), dtype=np.float32)
        device_type = torch.device(self.device).type
        grad_off = torch.no_grad() if mode == "fp32" else torch.inference_mode()
        with grad_off:
            for part, x in self._batches(crops, batch_size):
                if mode == "bf16":
                    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                        y = model(x)
                elif mode == "int8":
                    with int8_warnings_off():
                        y = model(x)
                else:
                    y = model(x.contiguous())
                # Re-normalise in fp32: bf16 outputs are unit-norm only to ~3 significant digits.
                y = nn.functional.normalize(y.float(), p=2.0, dim=1)
                out[part] = y.cpu().numpy()
        return out

    def encode(self, crops: np.ndarray) -> np.ndarray:
        """Embed uint8 crops of shape (N, 160, 160, 3) RGB → float32 (N, 512), rows of unit L2 norm."""
        return self._run(self._model, crops, self.config.batch_size, mode=self.precision)

    def encode_fp32_reference(self, crops: np.ndarray, *, batch_size: int = _REFERENCE_BATCH) -> np.ndarray:
        """Embed with facenet-pytorch's plain fp32 module (no folding, NCHW, no autocast): the baseline."""
        if batch_size < 1:
            raise InvalidInput("batch_size must be >= 1")
        return self._run(self.reference_model, crops, batch_size, mode="fp32")
