"""deploy/k8s-scaleout and deploy/compose.scaleout.yml: the config they ship loads, replicas share state."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from embeddings.errors import InvalidInput
from service.auth import check_imported_key
from service.config import load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s-scaleout"


def _config_toml() -> str:
    text = (K8S / "configmap.yaml").read_text()
    block = text.split("config.toml: |\n", 1)[1]
    return textwrap.dedent(block)


def test_the_shipped_config_loads_as_a_scaleout_config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(_config_toml())
    dsn = "postgresql://latentface:pw@postgres:5432/latentface"
    config = load_config(env={"LATENTFACE_STORE": dsn}, config_file=path)
    assert (config.store, config.vectors) == (dsn, "http://milvus:19530")
    assert "pw" not in repr(config)  # the DSN's password stays out of logs
    with pytest.raises(InvalidInput):  # vectors without a store is refused, not silently embedded
        load_config(env={}, config_file=path)


def test_at_least_two_replicas_with_grpc_probes_and_the_store_from_a_secret():
    deployment = (K8S / "deployment.yaml").read_text()
    assert int(re.search(r"^  replicas: (\d+)$", deployment, re.M).group(1)) >= 2
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert re.search(rf"{probe}:\n\s+grpc: {{port: 50051", deployment)
    assert "secretKeyRef: {name: latentface-store, key: dsn}" in deployment
    assert "persistentVolumeClaim: {claimName: latentface-data" not in deployment  # nothing stateful
    compose = (ROOT / "deploy" / "compose.scaleout.yml").read_text()
    assert compose.count("<<: *replica") >= 2
    resources = (K8S / "kustomization.yaml").read_text()
    for name in ("deployment.yaml", "service.yaml", "postgres.yaml", "milvus.yaml", "secret.yaml", "configmap.yaml"):
        assert f"  - {name}" in resources and (K8S / name).is_file()


def test_the_placeholder_admin_key_is_refused():
    placeholder = re.search(r'admin.key: "([^"]+)"', (K8S / "secret.yaml").read_text()).group(1)
    with pytest.raises(InvalidInput):
        check_imported_key(placeholder)
