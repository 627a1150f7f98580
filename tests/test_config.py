"""service.config: precedence flags > env > TOML > defaults, typed coercion, loud failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from embeddings.errors import InvalidInput
from service.config import ServiceConfig, load_config


def test_defaults_without_any_source():
    config = load_config({}, env={})
    assert config == ServiceConfig()
    assert config.encoder.weights == "auto"  # the data directory's model, chosen on first start
    assert config.gallery.data_dir == Path("data")


def test_precedence_flags_over_env_over_toml(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('data_dir = "from-toml"\nweights = "casia-webface"\n[server]\nport = 1111\nbatch_max_size = 7\n')
    env = {"LATENTFACE_CONFIG": str(toml), "LATENTFACE_SERVER_PORT": "2222", "LATENTFACE_DATA_DIR": "from-env"}
    config = load_config({"server.port": 3333}, env=env)
    assert config.server.port == 3333  # flag beats env
    assert config.data_dir == Path("from-env")  # env beats TOML
    assert config.encoder.weights == "casia-webface"  # TOML beats default
    assert config.server.batch_max_size == 7
    assert config.gallery.data_dir == Path("from-env")


def test_types_are_coerced_from_strings():
    env = {
        "LATENTFACE_SERVER_AUTH": "false",
        "LATENTFACE_DETECTOR_THRESHOLDS": "0.5,0.6,0.7",
        "LATENTFACE_INDEX_NPROBE": "32",
        "LATENTFACE_SERVER_TLS_CERT": "none",
    }
    config = load_config({}, env=env)
    assert config.server.auth is False
    assert config.detector.thresholds == (0.5, 0.6, 0.7)
    assert config.index.nprobe == 32
    assert config.server.tls_cert is None


def test_offline_forbids_downloads():
    assert load_config({}, env={}).allow_download is True
    assert load_config({}, env={"LATENTFACE_OFFLINE": "1"}).allow_download is False
    assert load_config({"offline": True}, env={}).allow_download is False


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"server.prot": 1}, "prot"),
        ({"nosuch": 1}, "nosuch"),
        ({"bogus.x": 1}, "bogus"),
        ({"server.port": "eighty"}, "server.port"),
        ({"server.port": 70000}, "65535"),
        ({"encoder.precision": "fp8"}, "precision"),
        ({"server.tls_cert": "/x.pem"}, "together"),
    ],
)
def test_bad_values_fail_loudly(flags, message):
    with pytest.raises(InvalidInput, match=message):
        load_config(flags, env={})


def test_bad_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport=1")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config({}, env={}, config_file=bad)
    with pytest.raises(InvalidInput, match="cannot read config file"):
        load_config({}, env={}, config_file=tmp_path / "missing.toml")


def test_request_caps_and_stream_bounds_are_read_and_checked():
    env = {
        "LATENTFACE_SERVER_MAX_IMAGES_PER_REQUEST": "4",
        "LATENTFACE_SERVER_DEFAULT_DEADLINE_S": "none",
        "LATENTFACE_SERVER_MAX_STREAMS": "3",
        "LATENTFACE_SERVER_MAX_STREAMS_PER_PEER": "1",
    }
    server = load_config({}, env=env).server
    assert (server.max_images_per_request, server.default_deadline_s, server.max_streams, server.max_streams_per_peer) == (
        4, None, 3, 1,
    )
    assert load_config({"server.default_deadline_s": "2.5"}, env={}).server.default_deadline_s == 2.5
    for key, bad, message in [
        ("server.max_images_per_request", 0, "max_images_per_request"),
        ("server.default_deadline_s", 0, "default_deadline_s"),
        ("server.max_streams", 0, "max_streams"),
        ("server.max_streams_per_peer", 0, "max_streams_per_peer"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            load_config({key: bad}, env={})
