"""Weight resolution (facenet-pytorch's cache layout, dlib's PyPI package), offline refusal, digests
and safe loading. The domain reads no environment: service/config.py applies the torch-home rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embeddings.config import PRETRAINED, EncoderConfig
from embeddings.errors import WeightsUnavailable
from embeddings.weights import (
    checkpoint_path,
    dlib_model_file,
    file_digest,
    load_state_dict_file,
    resolve_weights,
    torch_home,
    verify_digest,
)
from service.config import load_config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TORCH_HOME/XDG_CACHE_HOME from the machine; HOME points at an empty temp dir."""
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_random_resolves_to_none() -> None:
    assert resolve_weights(EncoderConfig(weights="random")) is None


def test_torch_home_follows_facenet_precedence(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

    def resolved() -> Path:
        return torch_home(load_config({"weights": "vggface2"}).encoder)

    assert resolved() == Path(get_torch_home()) == clean_env / "home" / ".cache" / "torch"
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xdg"))
    assert resolved() == Path(get_torch_home()) == clean_env / "xdg" / "torch"
    monkeypatch.setenv("TORCH_HOME", str(clean_env / "th"))
    assert resolved() == Path(get_torch_home()) == clean_env / "th"
    # The domain itself reads no environment: without a configured home it uses ~/.cache/torch.
    assert torch_home(EncoderConfig(weights="vggface2")) == clean_env / "home" / ".cache" / "torch"
    # An explicit torch_home in the config wins over the environment.
    assert torch_home(load_config({"encoder.torch_home": str(clean_env / "cfg")}).encoder) == clean_env / "cfg"


def test_offline_is_parsed_once_and_the_domain_never_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import embeddings

    assert load_config({}, env={"LATENTFACE_OFFLINE": "0"}).allow_download is True
    assert load_config({}, env={"LATENTFACE_OFFLINE": "1"}).allow_download is False
    readers = [
        str(path)
        for path in Path(embeddings.__file__).parent.rglob("*.py")
        if "os.environ" in path.read_text() or "os.getenv" in path.read_text()
    ]
    assert readers == []


@pytest.mark.parametrize("name", ["vggface2", "casia-webface"])
def test_missing_checkpoint_offline_says_what_to_put_where(clean_env: Path, name: str) -> None:
    cfg = EncoderConfig(weights=name, torch_home=clean_env / "th")
    expected = clean_env / "th" / "checkpoints" / PRETRAINED[name].file_name
    assert checkpoint_path(cfg) == expected
    with pytest.raises(WeightsUnavailable) as info:
        resolve_weights(cfg, allow_download=False)
    message = str(info.value)
    assert str(expected) in message
    assert PRETRAINED[name].file_name in message
    assert PRETRAINED[name].url in message
    assert "--weights" in message and "LATENTFACE_WEIGHTS" in message
    assert "dlib-resnet" in message  # the model that installs from PyPI is offered
    assert not expected.exists()


def test_download_failure_is_weights_unavailable(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    def no_network(*args: object, **kwargs: object) -> None:  # the internet boundary
        raise OSError("network unreachable")

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


def test_dlib_resnet_resolves_to_the_pinned_package_file() -> None:
    path = resolve_weights(EncoderConfig(weights="dlib-resnet"), allow_download=False)
    assert path == dlib_model_file(PRETRAINED["dlib-resnet"].file_name)
    assert file_digest(path) == PRETRAINED["dlib-resnet"].sha256


def test_missing_package_file_names_the_install_command() -> None:
    with pytest.raises(WeightsUnavailable, match="pip install face_recognition_models dlib-bin"):
        dlib_model_file("no_such_model.dat")
    with pytest.raises(WeightsUnavailable, match="not installed"):
        dlib_model_file("x.dat", package="no_such_package_latentface")


def test_a_file_with_another_digest_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.dat"
    fake.write_bytes(b"something else")
    assert verify_digest(fake, None) == file_digest(fake)
    with pytest.raises(WeightsUnavailable, match="pinned"):
        verify_digest(fake, PRETRAINED["dlib-resnet"].sha256)
