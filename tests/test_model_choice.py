"""The data directory remembers its model: chosen once (explicitly or the best real one obtainable),
recorded, required on every later start; never a silent switch, never random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embeddings.config import PRETRAINED, EncoderConfig
from embeddings.errors import InvalidInput, StorageError, WeightsUnavailable
from service.config import load_config
from service.model_choice import MODEL_FILE, choose_weights, read_recorded
from service.runtime import build_encoder

ROOT = Path(__file__).resolve().parent.parent


def _config(data_dir: Path, torch_home: Path, **flags):
    return load_config({"data_dir": str(data_dir), "offline": True, "encoder.torch_home": str(torch_home), **flags}, env={})


def test_first_start_offline_takes_dlib_resnet_and_records_it(tmp_path: Path) -> None:
    config = _config(tmp_path / "data", tmp_path / "empty-torch-home")
    assert config.encoder.weights == "auto"
    encoder = build_encoder(config)
    assert encoder.model_id.startswith("dlib-resnet-v1/dlib-resnet-")
    record = read_recorded(config.data_dir)
    assert record["weights"] == "dlib-resnet" and record["model_id"] == encoder.model_id
    assert "vggface2 is unavailable" in record["reason"]
    assert (config.data_dir / MODEL_FILE).stat().st_mode & 0o777 == 0o600
    # A later start without --weights uses the record; an explicit other model is refused.
    again = choose_weights(config.data_dir, config.encoder, allow_download=False)
    assert (again.weights, again.recorded) == ("dlib-resnet", True)
    with pytest.raises(InvalidInput, match="holds vectors of model 'dlib-resnet'"):
        build_encoder(_config(tmp_path / "data", tmp_path / "empty-torch-home", weights="random"))
    assert read_recorded(config.data_dir)["weights"] == "dlib-resnet"


def test_cached_vggface2_is_preferred(tmp_path: Path) -> None:
    home = tmp_path / "th"
    (home / "checkpoints").mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, home / "checkpoints" / PRETRAINED["vggface2"].file_name)
    choice = choose_weights(tmp_path / "data", EncoderConfig(torch_home=home), allow_download=False)
    assert (choice.weights, "torch cache" in choice.reason, choice.recorded) == ("vggface2", True, False)


def test_a_recorded_model_that_is_gone_fails_with_the_remedy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / MODEL_FILE).write_text(json.dumps({"weights": str(tmp_path / "gone.pt"), "model_id": "x"}))
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        build_encoder(_config(data, tmp_path / "th"))
    (data / MODEL_FILE).write_text(json.dumps({"weights": "vggface2", "model_id": "x"}))
    with pytest.raises(WeightsUnavailable, match="put it at"):  # never a switch to dlib or random
        build_encoder(_config(data, tmp_path / "th"))
    (data / MODEL_FILE).write_text("{not json")
    with pytest.raises(StorageError, match="damaged"):
        build_encoder(_config(data, tmp_path / "th"))


def test_explicit_choice_is_recorded_and_a_failed_start_records_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(WeightsUnavailable):
        build_encoder(_config(data, tmp_path / "th", weights="vggface2"))
    assert read_recorded(data) is None
    encoder = build_encoder(_config(data, tmp_path / "th", weights="random"))
    assert read_recorded(data) == {**read_recorded(data), "weights": "random", "model_id": encoder.model_id}


def test_serve_offline_with_no_weights_verifies_real_faces(tmp_path: Path, real_faces) -> None:
    """The README's main command on an offline machine: no --weights, no facenet checkpoint."""
    from test_server_shutdown import _address, _reap

    from service.client import Client

    env = {**os.environ, "LATENTFACE_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TORCH_HOME": str(tmp_path / "th")}
    env.pop("LATENTFACE_WEIGHTS", None)
    env.pop("LATENTFACE_CONFIG", None)
    cmd = [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path / "data"), "--port", "0", "--no-auth"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        address = _address(proc, lines)
        log = "".join(lines)
        assert "dlib-resnet" in log and "recorded" in log
        photos = dict(zip(real_faces.paths, real_faces.identities, strict=True))
        amy = [p for p, who in photos.items() if who == "amy"]
        raj = [p for p, who in photos.items() if who == "raj"]
        with Client(address) as client:
            client.wait_ready()
            same = client.verify(image=amy[0].read_bytes(), reference_image=amy[2].read_bytes())
            other = client.verify(image=amy[0].read_bytes(), reference_image=raj[0].read_bytes())
        assert same.decision.is_match and not other.decision.is_match
        assert same.decision.model_id.startswith("dlib-resnet-v1/")
        assert same.decision.threshold == pytest.approx(PRETRAINED["dlib-resnet"].default_threshold)
    finally:
        proc.terminate()
        _reap(proc)
