"""Issue #10 item 21: the README's Node.js example (examples/node/client.js) against the real server.

The npm packages are installed once into a cache directory (~/.cache/latentface/node-<versions>,
or $LATENTFACE_NODE_CACHE) with the ordinary npm client; skipped, saying why, without node/npm or
when the install fails (no registry).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from service.config import load_config
from service.server import create_server

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("@grpc/grpc-js@1.14.7", "@grpc/proto-loader@0.8.0")


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (apt-get install nodejs npm)")
    base = Path(os.environ.get("LATENTFACE_NODE_CACHE", Path.home() / ".cache" / "latentface"))
    prefix = base / ("node-" + "-".join(p.replace("/", "_").replace("@", "") for p in PACKAGES))
    modules = prefix / "node_modules"
    if not (modules / "@grpc" / "grpc-js").is_dir() or not (modules / "@grpc" / "proto-loader").is_dir():
        prefix.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *PACKAGES],
            capture_output=True, text=True, timeout=600, check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"npm install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-300:]}")
    return modules


def test_node_example_enrolls_and_identifies_with_camel_case_fields(node_modules, tmp_path, astronaut):
    config = load_config(
        {"data_dir": str(tmp_path / "data"), "weights": "random", "offline": True, "server.port": 0}, env={}
    )
    srv, port = create_server(config)
    srv.start()
    try:
        photo = tmp_path / "alice.jpg"
        buf = io.BytesIO()
        Image.fromarray(astronaut).save(buf, format="JPEG", quality=92)
        photo.write_bytes(buf.getvalue())
        key = srv.admin_key_path.read_text().strip()
        done = subprocess.run(
            ["node", str(ROOT / "examples" / "node" / "client.js"), f"127.0.0.1:{port}", key, str(photo)],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "NODE_PATH": str(node_modules)},
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        threshold = srv.engine.gallery.get_collection("node-demo").threshold
    finally:
        srv.stop(2.0)
    assert out["health"] == "SERVING"
    assert out["enrolled"]["subjectId"] == "alice" and len(out["enrolled"]["faceIds"]) == 1
    [top] = out["candidates"]
    assert top["subjectId"] == "alice" and top["isMatch"] is True and top["score"] > 0.99
    assert top["threshold"] == pytest.approx(threshold)
    assert out["missing"]["code"] == "NOT_FOUND" and "nobody" in out["missing"]["details"]
