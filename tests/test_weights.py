"""Checkpoint resolution (facenet-pytorch's cache layout), offline refusal, and safe loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embeddings.config import PRETRAINED, EncoderConfig
from embeddings.errors import WeightsUnavailable
from embeddings.weights import checkpoint_path, load_state_dict_file, resolve_weights, torch_home


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TORCH_HOME/XDG_CACHE_HOME from the machine; HOME points at an empty temp dir."""
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LATENTFACE_OFFLINE", "1")
    return tmp_path


def test_random_resolves_to_none() -> None:
    assert resolve_weights(EncoderConfig(weights="random")) is None


def test_torch_home_follows_facenet_precedence(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

    cfg = EncoderConfig(weights="vggface2")
    assert torch_home(cfg) == Path(get_torch_home()) == clean_env / "home" / ".cache" / "torch"
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xdg"))
    assert torch_home(cfg) == Path(get_torch_home()) == clean_env / "xdg" / "torch"
    monkeypatch.setenv("TORCH_HOME", str(clean_env / "th"))
    assert torch_home(cfg) == Path(get_torch_home()) == clean_env / "th"
    # An explicit torch_home in the config wins over the environment.
    assert torch_home(EncoderConfig(torch_home=clean_env / "cfg")) == clean_env / "cfg"


@pytest.mark.parametrize("name", ["vggface2", "casia-webface"])
def test_missing_checkpoint_offline_says_what_to_put_where(clean_env: Path, name: str) -> None:
    cfg = EncoderConfig(weights=name, torch_home=clean_env / "th")
    expected = clean_env / "th" / "checkpoints" / PRETRAINED[name].file_name
    assert checkpoint_path(cfg) == expected
    # allow_download is overridden by LATENTFACE_OFFLINE, so this never touches the network.
    with pytest.raises(WeightsUnavailable) as info:
        resolve_weights(cfg, allow_download=True)
    message = str(info.value)
    assert str(expected) in message
    assert PRETRAINED[name].file_name in message
    assert PRETRAINED[name].url in message
    assert "--weights" in message and "LATENTFACE_WEIGHTS" in message
    assert not expected.exists()


def test_download_failure_is_weights_unavailable(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    def no_network(*args: object, **kwargs: object) -> None:  # the internet boundary
        raise OSError("network unreachable")

    monkeypatch.delenv("LATENTFACE_OFFLINE")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    cfg = EncoderConfig(weights="vggface2", torch_home=clean_env / "th")
    with pytest.raises(WeightsUnavailable, match="network unreachable") as info:
        resolve_weights(cfg, allow_download=True)
    assert str(checkpoint_path(cfg)) in str(info.value)
    assert list((clean_env / "th" / "checkpoints").iterdir()) == []  # no partial file left behind


def test_downloaded_non_checkpoint_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import urllib.request

    def captive_portal(*args: object, **kwargs: object) -> io.BytesIO:  # the internet boundary
        return io.BytesIO(b"<html>please log in</html>")

    monkeypatch.delenv("LATENTFACE_OFFLINE")
    monkeypatch.setattr(urllib.request, "urlopen", captive_portal)
    cfg = EncoderConfig(weights="vggface2", torch_home=clean_env / "th")
    with pytest.raises(WeightsUnavailable, match="download failed") as info:
        resolve_weights(cfg, allow_download=True)
    # Says which file to put where, not only that a since-deleted temp file was unreadable.
    assert f"put it at {checkpoint_path(cfg)}" in str(info.value)
    assert list((clean_env / "th" / "checkpoints").iterdir()) == []


def test_existing_checkpoint_is_found(clean_env: Path) -> None:
    cfg = EncoderConfig(weights="casia-webface", torch_home=clean_env / "th")
    path = checkpoint_path(cfg)
    path.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, path)
    assert resolve_weights(cfg) == path


def test_explicit_file(clean_env: Path) -> None:
    path = clean_env / "mine.pt"
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_weights(EncoderConfig(weights=str(path)))
    torch.save({"w": torch.arange(3.0)}, path)
    assert resolve_weights(EncoderConfig(weights=str(path))) == path
    state = load_state_dict_file(path)
    assert torch.equal(state["w"], torch.arange(3.0))


def test_corrupt_and_foreign_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        load_state_dict_file(garbage)
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(WeightsUnavailable):
        load_state_dict_file(truncated)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(WeightsUnavailable, match="state dict"):
        load_state_dict_file(not_a_dict)
