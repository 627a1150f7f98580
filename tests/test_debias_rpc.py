"""AnalysisService.StartDebias: a real server on port 0, the real client, a real debias job."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from embeddings import errors
from embeddings.synthetic.debias import make_debias_embeddings
from service.client import Client
from service.config import load_config
from service.server import create_server


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("debias-data")
    config = load_config({"data_dir": str(data_dir), "weights": "random", "offline": True, "server.port": 0}, env={})
    srv, _port = create_server(config)
    srv.start()
    with Client(f"127.0.0.1:{srv.port}", srv.admin_key_path.read_text().strip()) as c:
        yield c
    srv.stop(2.0)


def test_start_debias_job_writes_the_three_way_report(admin, tmp_path) -> None:
    ds = make_debias_embeddings(n_identities=200, images_per_identity=4, dim=48, signal_dim=8,
                                shares={"majority": 0.8, "minority": 0.2}, seed=5)  # fmt: skip
    np.save(tmp_path / "emb.npy", ds.vectors)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "identity", "group"])
        w.writerows(zip(ds.ids, ds.identities, ds.groups["group"], strict=True))
    files = (str(tmp_path / "emb.npy"), str(tmp_path / "labels.csv"))
    job = admin.start_debias(embeddings=files, group_by=["group"], target_fmr=0.01, epochs=2, out_dim=8,
                             hidden_dim=0, eval_fraction=0.4, seed=3)  # fmt: skip
    assert job.kind == "debias"
    final = list(admin.watch_job(job.id, timeout=300))[-1]
    assert final.state == "DONE", final.error
    assert set(final.artifacts) == {"report.json", "report.html", "adapter_uniform.pt", "adapter_weighted.pt"}
    report = json.loads(admin.get_report(job.id, "report.json").data)
    assert set(report["models"]) == {"base", "uniform", "weighted"} and report["seed"] == 3
    assert report["training"]["uniform"]["params"]["hidden_dim"] is None  # 0 asks for a linear adapter
    assert report["split"]["eval_identities"] == round(0.4 * 160) + round(0.4 * 40)
    assert admin.get_report(job.id, "report.html").content_type.startswith("text/html")
    with pytest.raises(errors.InvalidInput):
        admin.start_debias(embeddings=files, group_by=[])
    with pytest.raises(errors.InvalidInput):
        admin.start_debias(embeddings=files, group_by=["group"], eval_fraction=1.5)
