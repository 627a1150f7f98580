"""FaceEncoder: golden outputs for seeded weights, invariants, and loading facenet-layout checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from embeddings.config import PRETRAINED, EncoderConfig
from embeddings.encode import FaceEncoder, _random_state_dict, resolve_device, resolve_precision
from embeddings.errors import InvalidInput, WeightsUnavailable

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"

# Golden embeddings were made by the fp32 path on an x86-64 CPU. Other CPUs / oneDNN versions
# reorder float sums; measured drift is ~1e-6 per element, so 1e-4 absolute (elements are ~0.04)
# flags real changes without flaking. The bf16 path is checked by cosine, as its rounding is coarse.
GOLDEN_ATOL = 1e-4
FAST_MIN_COSINE = 0.999


def _golden() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(DATA / "golden_encoder_random_seed0.npz")
    # Stored at 80x80 to keep the repository small; pixel-doubled back to the 160x160 crop size.
    crops = data["crops_80"].repeat(2, axis=1).repeat(2, axis=2)
    return np.ascontiguousarray(crops), data["embeddings"]


@pytest.fixture(scope="module")
def fp32() -> FaceEncoder:
    return FaceEncoder(EncoderConfig(weights="random", seed=0, precision="fp32", batch_size=3))


@pytest.fixture(scope="module")
def fast() -> FaceEncoder:
    return FaceEncoder(EncoderConfig(weights="random", seed=0, precision="bf16", batch_size=3))


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Four varied crops: the two golden ones, a mirrored face and blocky noise."""
    golden, _ = _golden()
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (1, 20, 20, 3), dtype=np.uint8).repeat(8, axis=1).repeat(8, axis=2)
    return np.concatenate([golden, golden[:1, :, ::-1], noise])


@pytest.fixture(scope="module")
def fp32_out(fp32: FaceEncoder, crops: np.ndarray) -> np.ndarray:
    return fp32.encode(crops)  # batch_size=3 splits the four crops into 3 + 1


@pytest.fixture(scope="module")
def fast_out(fast: FaceEncoder, crops: np.ndarray) -> np.ndarray:
    return fast.encode(crops)


def test_golden_fp32(fp32_out: np.ndarray) -> None:
    assert fp32_out.dtype == np.float32 and fp32_out.shape == (4, 512)
    np.testing.assert_allclose(fp32_out[:2], _golden()[1], atol=GOLDEN_ATOL, rtol=0)


def test_golden_fast_path_within_cosine(fast_out: np.ndarray, fp32_out: np.ndarray) -> None:
    assert np.all(np.sum(fast_out[:2] * _golden()[1], axis=1) >= FAST_MIN_COSINE)
    assert np.sum(fast_out * fp32_out, axis=1).min() >= FAST_MIN_COSINE
    # Random weights still separate different inputs, and a mirrored face is not the face.
    assert float(fast_out[0] @ fast_out[1]) < 0.5
    assert float(fast_out[0] @ fast_out[2]) < 0.99


def test_fp32_reference_of_fast_encoder_is_plain_fp32(fast: FaceEncoder, crops: np.ndarray, fp32_out: np.ndarray) -> None:
    np.testing.assert_allclose(fast.encode_fp32_reference(crops[3:]), fp32_out[3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["fp32", "fast"])
def test_unit_norm_deterministic_and_batch_invariant(which: str, crops: np.ndarray, request) -> None:
    encoder: FaceEncoder = request.getfixturevalue(which)
    together: np.ndarray = request.getfixturevalue(f"{which}_out")
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)
    first = encoder.encode(crops[:1])
    assert np.array_equal(encoder.encode(crops[:1]), first)
    # crops[0] and crops[1] were encoded in a batch of three; alone they must give the same vector.
    one_by_one = np.concatenate([first, encoder.encode(crops[1:2])])
    np.testing.assert_allclose(one_by_one, together[:2], atol=1e-5 if which == "fp32" else 2e-3, rtol=0)


def test_empty_and_bad_inputs(fast: FaceEncoder) -> None:
    assert fast.encode(np.zeros((0, 160, 160, 3), np.uint8)).shape == (0, 512)
    bad = [
        np.zeros((160, 160, 3), np.uint8),
        np.zeros((1, 160, 160, 4), np.uint8),
        np.zeros((1, 112, 112, 3), np.uint8),
        np.zeros((1, 160, 160, 3), np.float32),
        [[0]],
    ]
    for value in bad:
        with pytest.raises(InvalidInput):
            fast.encode(value)  # type: ignore[arg-type]


def test_random_model_id_and_attributes(fp32: FaceEncoder, fast: FaceEncoder) -> None:
    assert fp32.model_id == "facenet-inception-resnet-v1/RANDOM-seed0-NOT-FOR-PRODUCTION"
    assert "NOT-FOR-PRODUCTION" in fast.model_id and fp32.is_random
    assert (fast.embedding_dim, fast.crop_size, fast.device) == (512, 160, "cpu")
    assert (fp32.precision, fast.precision) == ("fp32", "bf16")


def test_random_weights_ignore_global_rng(fp32: FaceEncoder) -> None:
    cached = _random_state_dict(0)  # built by the fixture under the default global seed
    torch.manual_seed(999)
    before = torch.get_rng_state()
    rebuilt = _random_state_dict.__wrapped__(0)  # bypass the cache: build again for real
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG was not consumed
    assert cached.keys() == rebuilt.keys()
    # The final BatchNorm is centred with a forward pass, whose float reductions depend on the thread
    # count other tests may have set: equal up to rounding, not bit for bit.
    for k in cached:
        assert torch.allclose(cached[k].float(), rebuilt[k].float(), rtol=1e-4, atol=1e-5), k


def test_device_and_precision_resolution() -> None:
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(InvalidInput):
        resolve_device("not-a-device")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    # auto follows the CPU's features: bf16 exactly where AVX-512/AMX with oneDNN bf16 kernels exist.
    capability = torch.backends.cpu.get_cpu_capability().upper()
    fast_bf16 = ("AVX512" in capability or "AMX" in capability) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", "cpu") == ("bf16" if fast_bf16 else "fp32")


@pytest.fixture(scope="module")
def facenet_checkpoint() -> dict[str, torch.Tensor]:
    """A state dict in the layout of facenet's released vggface2 file, classifier included."""
    gen = torch.Generator().manual_seed(11)
    state = {k: v.clone() for k, v in _random_state_dict(0).items()}
    # Differ from the seed-0 random weights, so loading the file cannot pass by accident.
    state["last_linear.weight"] = torch.randn(state["last_linear.weight"].shape, generator=gen) * 0.03
    n = PRETRAINED["vggface2"].num_classes
    state["logits.weight"] = torch.randn((n, 512), generator=gen)
    state["logits.bias"] = torch.randn((n,), generator=gen)
    return state


def test_vggface2_loads_from_facenet_cache_layout(
    facenet_checkpoint: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crops: np.ndarray
) -> None:
    from facenet_pytorch import InceptionResnetV1

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "checkpoints" / PRETRAINED["vggface2"].file_name
    path.parent.mkdir()
    torch.save(facenet_checkpoint, path)

    encoder = FaceEncoder(EncoderConfig(weights="vggface2", precision="fp32", torch_home=tmp_path))
    # The digest of the bytes loaded is part of the id: another file never passes for this one.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert encoder.model_id == f"facenet-inception-resnet-v1/vggface2-{digest}" and not encoder.is_random
    loaded = encoder.reference_model.state_dict()
    assert not any(k.startswith("logits.") for k in loaded)
    for key, value in loaded.items():
        assert torch.equal(value, facenet_checkpoint[key]), key

    # facenet-pytorch itself, pointed at the same cache, is the reference implementation.
    theirs = InceptionResnetV1(pretrained="vggface2").eval()
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() - 127.5) / 128.0
    with torch.no_grad():
        expected = theirs(x[:2]).numpy()
    np.testing.assert_allclose(encoder.encode(crops[:2]), expected, atol=1e-5, rtol=0)


def test_explicit_file_model_id_and_bad_files(facenet_checkpoint: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save(facenet_checkpoint, path)
    encoder = FaceEncoder(EncoderConfig(weights=str(path), precision="fp32"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert encoder.model_id == f"facenet-inception-resnet-v1/file-{digest}"
    assert torch.equal(encoder.reference_model.last_linear.weight, facenet_checkpoint["last_linear.weight"])

    missing = {k: v for k, v in facenet_checkpoint.items() if not k.startswith("repeat_3.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsUnavailable, match="Missing key"):
        FaceEncoder(EncoderConfig(weights=str(tmp_path / "missing.pt"), precision="fp32"))

    wrong = dict(facenet_checkpoint, **{"last_linear.weight": torch.zeros(128, 1792)})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(WeightsUnavailable, match="size mismatch"):
        FaceEncoder(EncoderConfig(weights=str(tmp_path / "wrong.pt"), precision="fp32"))

    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:4096])
    with pytest.raises(WeightsUnavailable):
        FaceEncoder(EncoderConfig(weights=str(tmp_path / "corrupt.pt")))


def test_missing_named_checkpoint_never_falls_back_to_random(tmp_path: Path) -> None:
    """A missing named checkpoint never silently becomes random weights."""
    with pytest.raises(WeightsUnavailable):
        FaceEncoder(EncoderConfig(weights="vggface2", torch_home=tmp_path))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_encoder_matches_cpu_fp32(fp32: FaceEncoder, crops: np.ndarray, fp32_out: np.ndarray) -> None:
    """On a GPU: auto picks bf16 where supported, and agrees with the CPU fp32 path; int8 is CPU only."""
    gpu_fp32 = FaceEncoder(EncoderConfig(weights="random", seed=0, precision="fp32", device="cuda"))
    assert gpu_fp32.device.startswith("cuda")
    # TF32 or reordered sums on the GPU: cosine, not allclose (measured on CPU: 1 - 1e-7 between runs).
    assert np.sum(gpu_fp32.encode(crops) * fp32_out, axis=1).min() >= 0.9999
    auto = FaceEncoder(EncoderConfig(weights="random", seed=0, device="cuda"))
    assert auto.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert np.sum(auto.encode(crops) * fp32_out, axis=1).min() >= FAST_MIN_COSINE - 0.001
    with pytest.raises(InvalidInput, match="CPU only"):
        FaceEncoder(EncoderConfig(weights="random", seed=0, precision="int8", device="cuda"))
