"""``latentface audit`` end to end: embeddings file + labels CSV in, report.json + report.html out."""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

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


@pytest.mark.usefixtures("one_torch_thread")
def test_audit_html_explains_the_under_represented_cluster(tmp_path: Path, capsys) -> None:
    """A planted 10% minority is the analysis' most under-represented cluster; the audit page names
    ``group = minority`` as its best-aligned group, with the cosine and direction norm of clusters.json."""
    from types import SimpleNamespace

    from embeddings.synthetic.groups import make_group_embeddings
    from service.commands import analyze as analyze_command

    ds = make_group_embeddings(
        n=600, images_per_identity=4, shares={"majority": 0.9, "minority": 0.1}, separation=6.0, seed=0
    )
    region = np.random.default_rng(0).choice(["north", "south"], size=len(ds))  # unrelated to the plant
    np.save(tmp_path / "emb.npy", ds.vectors)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "identity", "group", "region"])
        w.writerows(zip(ds.ids, ds.identities, ds.groups["group"], region, strict=True))
    files = ["--embeddings", str(tmp_path / "emb.npy"), "--labels", str(tmp_path / "labels.csv")]
    parser = argparse.ArgumentParser(prog="latentface")
    analyze_command.register(parser.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["analyze", *files, "--out", str(tmp_path / "analysis"), "--latent-dim", "8",
                              "--clusters", "6"])  # fmt: skip
    assert args.handler(args, SimpleNamespace(data_dir=tmp_path)) == 0
    capsys.readouterr()
    top = json.loads((tmp_path / "analysis" / "clusters.json").read_text())[0]
    assert top["mean_weight"] > 3 and top["group_composition"]["group"]["minority"] > 0.9
    cosine = top["group_alignment"]["group"]["minority"]
    assert cosine > 0.95 and max(abs(c) for c in top["group_alignment"]["region"].values()) < 0.5

    out = tmp_path / "report"
    code = main(["audit", "--data-dir", str(tmp_path / "data"), *files, "--group-by", "group",
                 "--target-fmr", "1e-2", "--bootstrap", "20", "--analysis-dir", str(tmp_path / "analysis"),
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    shown = json.loads((out / "report.json").read_text())["latent"]["clusters"][0]
    assert shown["direction_norm"] == top["direction_norm"]
    best = shown["top_alignment"]
    assert best[0] == {"column": "group", "value": "minority", "cosine": cosine}
    assert len(best) == 3 and [b["cosine"] for b in best] == sorted((b["cosine"] for b in best), reverse=True)
    assert best[1]["column"] == "region"  # both columns compete, the unrelated one ranks below the plant
    html = (out / "report.html").read_text()
    row = re.search(r'<tr><td data-key="latent\.clusters\.0\.id".*?</tr>', html, re.S)
    assert row is not None
    norm = re.search(r'data-key="latent\.clusters\.0\.direction_norm" data-value="[^"]+">([^<]+)<', row[0])
    assert norm is not None and norm[1] == f"{top['direction_norm']:.3g}"
    first = re.search(r"group = minority <span data-key=\"latent\.clusters\.0\.top_alignment\.0\.cosine\" "
                      r"data-value=\"([^\"]+)\">([^<]+)</span>", row[0])  # fmt: skip
    assert first is not None and float(first[1]) == cosine and first[2] == f"{cosine:+.3f}"
