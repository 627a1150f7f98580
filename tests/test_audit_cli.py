"""``latentface audit`` end to end: embeddings file + labels CSV in, report.json + report.html out."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from embeddings.errors import LatentfaceError
from embeddings.synthetic.verification import make_verification_set
from service import cli
from service.commands import audit as audit_command


def main(argv: list[str]) -> int:
    """service.cli.main restricted to the audit command (other commands are built by others)."""
    parser = argparse.ArgumentParser(prog="latentface")
    audit_command.register(parser.add_subparsers(dest="command", required=True), cli._common_parser())
    args = parser.parse_args(argv)
    from service.config import load_config

    try:
        return int(args.handler(args, load_config(cli.config_flags(args))) or 0)
    except LatentfaceError as exc:
        return cli.exit_code_for(exc)


def test_cli_audit_from_embeddings_file(tmp_path: Path) -> None:
    ds = make_verification_set(identities_per_group={"a": 150, "b": 150}, images_per_identity=4, dim=16, seed=4)
    np.save(tmp_path / "emb.npy", ds.vectors)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "identity", "skin_tone"])
        w.writerows(zip(ds.ids, ds.identities, ds.groups["group"], strict=True))
    out = tmp_path / "out"
    code = main([
        "audit", "--data-dir", str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy"),
        "--labels", str(tmp_path / "labels.csv"), "--group-by", "skin_tone", "--target-fmr", "1e-2",
        "--bootstrap", "50", "--out", str(out),
    ])
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["group_by"] == ["skin_tone"] and set(rep["groups"]) == {"a", "b"}
    assert rep["target_fmr"] == 0.01 and rep["overall"]["fmr"] <= 0.01
    assert rep["groups"]["a"]["n_identities"] == 150 and rep["groups"]["a"]["n_genuine"] == 150 * 6
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    # a missing group column is a usage error (exit code 2), not a crash
    assert main(["audit", "--data-dir", str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy"),
                 "--labels", str(tmp_path / "labels.csv"), "--group-by", "sex", "--out", str(out)]) == 2


def test_cli_audit_collection_at_its_deployed_threshold(tmp_path: Path) -> None:
    from embeddings.gallery import Gallery
    from service.config import load_config

    ds = make_verification_set(identities_per_group={"a": 60, "b": 40}, images_per_identity=3, dim=16, seed=7)
    config = load_config({"data_dir": str(tmp_path / "data")}, env={})
    with Gallery.open(config.gallery, background=False) as g:
        g.create_collection("staff", threshold=0.37)
        for identity in sorted(set(ds.identities.tolist())):
            rows = ds.identities == identity
            [group] = set(ds.groups["group"][rows].tolist())
            g.enroll("staff", identity, ds.vectors[rows], model_id="synth/v1", groups={"skin_tone": group})
    base = ["audit", "--data-dir", str(tmp_path / "data"), "--collection", "staff", "--group-by", "skin_tone",
            "--bootstrap", "20"]
    assert main([*base, "--out", str(tmp_path / "deployed")]) == 0
    rep = json.loads((tmp_path / "deployed" / "report.json").read_text())
    # No --threshold and no --target-fmr: the collection's own threshold is what is audited.
    assert (rep["threshold"], rep["threshold_source"]) == (0.37, "given")
    assert rep["group_by"] == ["skin_tone"] and set(rep["groups"]) == {"a", "b"}
    assert rep["groups"]["a"]["n_identities"] == 60 and rep["groups"]["b"]["n_identities"] == 40
    assert rep["groups"]["a"]["n_genuine"] == 60 * 3 and rep["groups"]["b"]["n_genuine"] == 40 * 3
    # An explicit operating point wins over the collection's threshold.
    assert main([*base, "--target-fmr", "1e-2", "--out", str(tmp_path / "fmr")]) == 0
    rep = json.loads((tmp_path / "fmr" / "report.json").read_text())
    assert rep["threshold_source"] == "target_fmr" and rep["target_fmr"] == 0.01
    assert main([*base[:4], "nowhere", *base[5:], "--out", str(tmp_path / "x")]) == 3  # not found
