"""``latentface analyze`` over an embeddings file, through its own argparse registration."""

from __future__ import annotations

import argparse
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from embeddings.errors import InvalidInput
from embeddings.synthetic.groups import make_group_embeddings
from service.commands import analyze


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--collection", default="default")
    parser = argparse.ArgumentParser(prog="latentface")
    analyze.register(parser.add_subparsers(dest="command"), common)
    return parser


def test_analyze_embeddings_file_writes_the_three_artefacts(tmp_path, capsys) -> None:
    ds = make_group_embeddings(n=800, seed=2)
    np.save(tmp_path / "e.npy", ds.vectors)
    with (tmp_path / "l.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "identity", "group"])
        w.writerows(zip(ds.ids, ds.identities, ds.groups["group"], strict=True))
    args = _parser().parse_args(
        ["analyze", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "l.csv"),
         "--out", str(tmp_path / "out"), "--method", "histogram", "--alpha", "0.01", "--clusters", "4"]
    )
    assert args.handler(args, SimpleNamespace(data_dir=tmp_path)) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert printed["method"] == summary["method"] == "histogram"
    assert summary["params"]["alpha"] == 0.01 and summary["n"] == 800
    assert len(json.loads((tmp_path / "out" / "clusters.json").read_text())) == 4
    with (tmp_path / "out" / "weights.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ds.ids.tolist()
    assert sum(float(r["weight"]) for r in rows) == pytest.approx(1.0)


def test_analyze_refuses_embeddings_without_labels(tmp_path) -> None:
    args = _parser().parse_args(["analyze", "--embeddings", "x.npy", "--out", str(tmp_path)])
    with pytest.raises(InvalidInput, match="--labels"):
        args.handler(args, SimpleNamespace(data_dir=tmp_path))
