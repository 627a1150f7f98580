"""int8 encoders: PyTorch FX static quantization on the oneDNN backend, calibrated on real faces.

Chosen by measurement (dlib-resnet with its real weights, 24 real chips, 1 torch thread, a Xeon with
AMX, speed as a ratio to the fp32 port in the same run):

* FX static quantization, PyTorch's x86 engine (this module): 6.0x, ~2-3 s to build, no new dependency;
* the same on the oneDNN engine with full 8-bit activations: 6.7x, but see below;
* PT2E + X86InductorQuantizer + torch.compile: 8.5x, but 93 s of compiling at load and torchao to install;
* ONNX Runtime QDQ static int8: 4.1x, and onnx + onnxruntime to install.

Calibration is done once, offline, on real aligned faces (``scripts/calibrate-int8`` over
``../shared/faces``): each activation observer's quantisation parameters (scale, zero point) are stored
per model id in ``embeddings/int8_profiles/``. Loading prepares the model, swaps every observer for a
fixed one holding the stored parameters and converts it: no face ships with the package and nothing
is calibrated at run time. A model without a profile has no int8 path.

Activations are quantized to 7 bits (``reduce_range``), as PyTorch's x86/fbgemm configuration does, on
every CPU: it keeps the AVX2 kernels of CPUs without VNNI clear of int16 saturation, and it generalised
better to people outside the calibration set than 8 bits: calibrated on 4 of the 8 fixture people,
the other 4 agreed with fp32 to cosine 0.9988 (7 bits) vs 0.9949 (8 bits, whose histogram observer
clips the ranges harder). The engine does not change the agreement (x86, oneDNN and fbgemm agree to
5 digits).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embeddings.errors import Unavailable

__all__ = [
    "INT8_COSINE_BAR",
    "build_profile",
    "calibrate_profile",
    "cpu_features",
    "int8_is_fast",
    "int8_warnings_off",
    "load_profile",
    "min_cosine",
    "probe_crops",
    "profile_path",
    "quantize_int8",
    "save_profile",
]

# The agreement the int8 path must reach against fp32 on real crops (issue #14).
INT8_COSINE_BAR = 0.995

_PROFILE_DIR = Path(__file__).resolve().parent / "int8_profiles"
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
_ENGINE = "x86"  # fbgemm or oneDNN kernels, per layer and CPU
# The quantized engine is process-wide state: set it only while weights are packed.
_ENGINE_LOCK = threading.Lock()


@contextlib.contextmanager
def int8_warnings_off() -> Iterator[None]:
    """Silence the three known warnings of torch.ao's int8 path, by message, around a call into it:
    its deprecation in favour of torchao's PT2E (which needs a 93 s torch.compile at every load, see
    above), the same for quantized tensors, and quantized ``cat`` requantizing inputs of different
    scales (the agreement that costs is what the profiles measure)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"All inputs of this cat operator", category=UserWarning)
        yield


def cpu_features() -> dict[str, bool]:
    """The CPU flags that decide the encoder's code paths, from /proc/cpuinfo (all False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            break
    return {flag: flag in flags for flag in _FLAGS}


def int8_is_fast(features: dict[str, bool] | None = None) -> bool:
    """True where int8 dot products run natively (VNNI or AMX int8), where int8 is measured fastest;
    without VNNI the kernels emulate them with several instructions each (not measured here)."""
    f = cpu_features() if features is None else features
    return bool(f.get("amx_int8") or f.get("avx512_vnni") or f.get("avx_vnni"))


def _safe_name(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)


def profile_path(model_id: str, directory: Path | None = None) -> Path:
    """Where the int8 calibration profile of ``model_id`` lives."""
    return (directory or _PROFILE_DIR) / f"{_safe_name(model_id)}.json"


def load_profile(model_id: str, directory: Path | None = None) -> dict | None:
    """The stored calibration profile of ``model_id``, or None when it has none."""
    path = profile_path(model_id, directory)
    if not path.is_file():
        return None
    profile = json.loads(path.read_text())
    if profile.get("model_id") != model_id:
        return None
    return profile


def _qconfig_mapping(skip: tuple[str, ...]):
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    activation = HistogramObserver.with_args(quant_min=0, quant_max=127)  # 7 bits: see above
    mapping = QConfigMapping().set_global(QConfig(activation=activation, weight=weight))
    for name in skip:  # layers left in fp32
        mapping = mapping.set_module_name(name, None)
    return mapping


def _observers(prepared: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.quantization.observer import ObserverBase

    # Every name, duplicates included: ops that keep their input's parameters (pooling, flatten)
    # share one observer under several names, and each name must get the fixed replacement.
    return {
        name: module
        for name, module in prepared._modules.items()
        if isinstance(module, ObserverBase) and name.startswith("activation_post_process")
    }


def _prepare(model: nn.Module, example: torch.Tensor, skip: tuple[str, ...]) -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_fx

    with int8_warnings_off():
        return prepare_fx(model, _qconfig_mapping(skip), (example,))


def calibrate_profile(
    make_model, example: torch.Tensor, batches: Iterable[torch.Tensor], *, skip: tuple[str, ...] = ()
) -> dict:
    """Observe ``batches`` (real aligned faces, model inputs) and return the activation parameters:
    ``{"qparams": {observer: [scale, zero_point]}, "skip": [layers left in fp32]}``.

    ``make_model()`` returns a fresh fp32 eval-mode model (preparing one changes it in place).
    """
    prepared = _prepare(make_model(), example, skip)
    with torch.no_grad(), int8_warnings_off():
        for batch in batches:
            prepared(batch)
    table = {}
    for name, observer in _observers(prepared).items():
        scale, zero_point = observer.calculate_qparams()
        table[name] = [float(scale), int(zero_point)]
    return {"qparams": table, "skip": list(skip)}


def quantize_int8(model: nn.Module, example: torch.Tensor, profile: dict) -> nn.Module:
    """An int8 copy of ``model`` (changed in place: pass a fresh fp32 one) with ``profile``'s parameters."""
    from torch.ao.quantization.observer import FixedQParamsObserver
    from torch.ao.quantization.quantize_fx import convert_fx

    table = profile.get("qparams") or {}
    prepared = _prepare(model, example, tuple(profile.get("skip", ())))
    observers = _observers(prepared)
    if set(observers) != set(table):
        raise Unavailable("the int8 profile does not fit this model (observers differ): recalibrate it")
    fixed: dict[int, nn.Module] = {}
    for name, observer in observers.items():
        scale, zero_point = table[name]
        if id(observer) not in fixed:  # 7-bit activations: see the module docstring
            fixed[id(observer)] = FixedQParamsObserver(scale, zero_point, quant_min=0, quant_max=127)
        setattr(prepared, name, fixed[id(observer)])
    engine = _ENGINE
    with _ENGINE_LOCK, int8_warnings_off():
        before = torch.backends.quantized.engine
        if engine not in torch.backends.quantized.supported_engines:
            raise Unavailable(f"this torch build has no {engine} quantized engine")
        torch.backends.quantized.engine = engine
        try:
            return convert_fx(prepared)
        finally:
            torch.backends.quantized.engine = before


def probe_crops(n: int, size: int, *, seed: int = 0) -> np.ndarray:
    """``n`` seeded smooth RGB crops (upsampled noise), uint8 (n, size, size, 3): the load-time
    self-check's inputs. No face ships with the package; on dlib-resnet int8 agrees with fp32 on
    these about as on real chips (min cosine 0.9978, vs 0.9987 on held-out people)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 12, 12), generator=gen) * 255.0
    up = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The worst cosine between matching rows of two arrays of embeddings."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = np.sum(a64 * b64, axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.min(num / np.maximum(den, 1e-300)))


def build_profile(encoder, crops: np.ndarray, people: Sequence[str], *, source: str) -> dict:
    """Calibrate ``encoder``'s int8 path on real aligned ``crops`` (``people[i]`` is who crop i shows)
    and measure its agreement with fp32, as a profile for :func:`load_profile`.

    The stored parameters come from all the crops. The agreement is held out: calibrate on half the
    people, take the worst cosine to fp32 on the other half's crops, both ways round.
    ``encoder`` provides ``model_id``, ``int8_skip``, ``int8_source()`` and ``model_input(crops)``.
    """
    x = encoder.model_input(crops)
    example, skip = x[:1], tuple(encoder.int8_skip)
    profile = calibrate_profile(encoder.int8_source, example, [x], skip=skip)
    names = sorted(set(people))
    first = np.array([p in set(names[::2]) for p in people])
    with torch.inference_mode():
        reference = encoder.int8_source()(x).float().numpy()
    worst = 1.0
    for train in (first, ~first):
        fold = calibrate_profile(encoder.int8_source, example, [x[torch.from_numpy(train)]], skip=skip)
        model = quantize_int8(encoder.int8_source(), example, fold)
        with torch.inference_mode(), int8_warnings_off():
            out = model(x[torch.from_numpy(~train)]).float().numpy()
        worst = min(worst, min_cosine(out, reference[~train]))
    return {
        "model_id": encoder.model_id,
        "calibration": {"source": source, "crops": len(crops), "people": len(names)},
        # What select_precision compares with INT8_COSINE_BAR.
        "heldout_cosine_min": round(worst, 6),
        "measured_with": {"torch": torch.__version__, **cpu_features()},
        **profile,
    }


def save_profile(profile: dict, directory: Path | None = None) -> Path:
    """Write ``profile`` where :func:`load_profile` finds it; returns the path."""
    path = profile_path(profile["model_id"], directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=1, sort_keys=True) + "\n")
    return path
