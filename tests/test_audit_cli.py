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
