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

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
         "--out", str(tmp_path / "out"), "--method", "histogram", "--alpha", "0.01", "--clusters", "4",
         "--vaes", "2", "--max-weight-ratio", "0"]
    )
    assert args.handler(args, SimpleNamespace(data_dir=tmp_path)) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert printed["method"] == summary["method"] == "histogram"
    assert summary["params"]["alpha"] == 0.01 and summary["n"] == 800
    assert summary["params"]["n_vaes"] == 2 and summary["params"]["max_weight_ratio"] is None
    assert len(json.loads((tmp_path / "out" / "clusters.json").read_text())) == 4
    with (tmp_path / "out" / "weights.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ds.ids.tolist()
    assert sum(float(r["weight"]) for r in rows) == pytest.approx(1.0)


def test_analyze_identity_aware_with_an_ess_floor_on_128d_embeddings(tmp_path, capsys) -> None:
    # 128-d, like the dlib-resnet embeddings: nothing in the analysis may assume 512.
    ds = make_group_embeddings(n=800, dim=128, images_per_identity=4, seed=3)
    np.save(tmp_path / "e.npy", ds.vectors)
    with (tmp_path / "l.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "identity", "group"])
        w.writerows(zip(ds.ids, ds.identities, ds.groups["group"], strict=True))
    args = _parser().parse_args(
        ["analyze", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "l.csv"),
         "--out", str(tmp_path / "out"), "--identity-aware", "--min-ess", "0.5", "--clusters", "3"]
    )
    assert args.handler(args, SimpleNamespace(data_dir=tmp_path)) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    params = summary["params"]
    assert params["identity_aware"] and params["min_ess"] == 0.5 and params["identities"] == 200
    assert printed["alpha_effective"] == params["alpha_effective"] > 0
    with (tmp_path / "out" / "weights.csv").open() as f:
        weight = {r["id"]: float(r["weight"]) for r in csv.DictReader(f)}
    # One weight per identity, shared by its 4 faces; over identities the ESS floor holds.
    per_identity: dict[str, list[float]] = {}
    for i, ident in zip(ds.ids, ds.identities, strict=True):
        per_identity.setdefault(ident, []).append(weight[i])
    mass = np.array([sum(v) for v in per_identity.values()])
    assert all(max(v) - min(v) < 1e-12 for v in per_identity.values())
    assert mass.sum() ** 2 / (mass**2).sum() >= 0.5 * 200 * 0.999
    clusters = json.loads((tmp_path / "out" / "clusters.json").read_text())
    assert {"direction", "direction_norm", "group_alignment"} <= set(clusters[0])
    assert len(clusters[0]["direction"]) == params["active_dims"]
    with pytest.raises(InvalidInput, match="min-ess"):
        bad = _parser().parse_args(["analyze", "--embeddings", "e.npy", "--labels", "l.csv", "--out", "o", "--min-ess", "1"])
        bad.handler(bad, SimpleNamespace(data_dir=tmp_path))


def test_analyze_refuses_embeddings_without_labels(tmp_path) -> None:
    args = _parser().parse_args(["analyze", "--embeddings", "x.npy", "--out", str(tmp_path)])
    with pytest.raises(InvalidInput, match="--labels"):
        args.handler(args, SimpleNamespace(data_dir=tmp_path))


def test_analyze_refuses_a_weight_cap_below_one(tmp_path) -> None:
    ds = make_group_embeddings(n=100, seed=2)
    np.save(tmp_path / "e.npy", ds.vectors)
    (tmp_path / "l.csv").write_text("id\n" + "\n".join(ds.ids) + "\n")
    args = _parser().parse_args(
        ["analyze", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "l.csv"),
         "--out", str(tmp_path / "out"), "--max-weight-ratio", "0.5"]
    )
    with pytest.raises(InvalidInput, match="--max-weight-ratio"):
        args.handler(args, SimpleNamespace(data_dir=tmp_path))
    args.max_weight_ratio, args.vaes = 50.0, 0
    with pytest.raises(InvalidInput, match="--vaes"):
        args.handler(args, SimpleNamespace(data_dir=tmp_path))
    assert not (tmp_path / "out").exists()


def test_analyze_component_share_is_recorded_and_checked(tmp_path, capsys) -> None:
    ds = make_group_embeddings(n=200, images_per_identity=4, seed=4)
    np.save(tmp_path / "e.npy", ds.vectors)
    (tmp_path / "l.csv").write_text("id\n" + "\n".join(ds.ids) + "\n")
    base = ["analyze", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "l.csv"),
            "--latent-dim", "4", "--clusters", "3"]
    args = _parser().parse_args([*base, "--out", str(tmp_path / "out"), "--component-share", "1"])
    assert args.handler(args, SimpleNamespace(data_dir=tmp_path)) == 0
    capsys.readouterr()
    params = json.loads((tmp_path / "out" / "summary.json").read_text())["params"]
    assert params["component_share"] == 1.0 and params["components"] >= 1
    # Out of range, NaN, or non-zero with histogram: refused before anything is read or written.
    for extra in (["--component-share", "11"], ["--component-share", "-1"], ["--component-share", "nan"],
                  ["--component-share", "1", "--method", "histogram"]):
        bad = _parser().parse_args([*base, "--out", str(tmp_path / "bad"), *extra])
        with pytest.raises(InvalidInput, match="component-share"):
            bad.handler(bad, SimpleNamespace(data_dir=tmp_path))
    assert not (tmp_path / "bad").exists()


def _enroll(config, name: str, ds) -> list[str]:
    """Enroll ``ds`` into collection ``name``, a subject per identity with its group; returns the face ids."""
    from embeddings.gallery import Gallery

    with Gallery.open(config.gallery, background=False) as gallery:
        gallery.create_collection(name)
        face_ids: list[str] = []
        for identity in sorted(set(ds.identities.tolist())):
            rows = ds.identities == identity
            [group] = set(ds.groups["group"][rows].tolist())  # groups are per identity in the planted set
            result = gallery.enroll(
                name, identity, ds.vectors[rows], model_id="synthetic/v1", groups={"group": group}
            )
            face_ids += [str(f) for f in result.face_ids]
    return face_ids


def test_analyze_collection_writes_the_three_artefacts_with_face_ids(tmp_path, capsys) -> None:
    from service.config import load_config

    config = load_config({"data_dir": str(tmp_path / "data")}, env={})
    ds = make_group_embeddings(n=120, images_per_identity=4, seed=5)
    face_ids = _enroll(config, "people", ds)
    index_dir = tmp_path / "data" / "index"
    before = {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()}
    args = _parser().parse_args(
        ["analyze", "--collection", "people", "--out", str(tmp_path / "out"), "--method", "knn",
         "--latent-dim", "4", "--clusters", "3"]
    )
    assert args.handler(args, config) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 120 and printed["skipped"] == {}
    with (tmp_path / "out" / "weights.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == face_ids  # one row per enrolled face, in subject order
    assert sum(float(r["weight"]) for r in rows) == pytest.approx(1.0)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n"] == 120
    assert len(json.loads((tmp_path / "out" / "clusters.json").read_text())) == 3
    # Reading a collection leaves the gallery's files as they were (no snapshot written at close).
    assert {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()} == before


def test_analyze_unknown_or_empty_collection(tmp_path) -> None:
    from embeddings.errors import CollectionNotFound, InvalidDataset
    from embeddings.gallery import Gallery
    from service.config import load_config

    config = load_config({"data_dir": str(tmp_path / "data")}, env={})
    with Gallery.open(config.gallery, background=False) as gallery:
        gallery.create_collection("empty")
    args = _parser().parse_args(["analyze", "--collection", "nowhere", "--out", str(tmp_path / "out")])
    with pytest.raises(CollectionNotFound):
        args.handler(args, config)
    args = _parser().parse_args(["analyze", "--collection", "empty", "--out", str(tmp_path / "out")])
    with pytest.raises(InvalidDataset, match="no enrolled faces"):
        args.handler(args, config)
