"""``latentface debias`` end to end: an embeddings file, and real faces through the dlib-resnet pipeline."""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from embeddings.audit import AuditOptions, run_audit
from embeddings.debias import adapter_digest, load_adapter, split_identities
from embeddings.errors import LatentfaceError
from embeddings.synthetic.debias import make_debias_embeddings
from service import cli
from service.commands import debias as debias_command

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
FEMALE = {"amy", "bernadette", "penny"}


def main(argv: list[str]) -> int:
    """service.cli.main restricted to the debias command."""
    parser = argparse.ArgumentParser(prog="latentface")
    debias_command.register(parser.add_subparsers(dest="command", required=True), cli._common_parser())
    args = parser.parse_args(argv)
    from service.config import load_config

    try:
        return int(args.handler(args, load_config(cli.config_flags(args), env={})) or 0)
    except LatentfaceError as exc:
        return cli.exit_code_for(exc)


def _html_values(html: str) -> dict[str, object]:
    return {k: json.loads(v.replace("&quot;", '"')) for k, v in re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', html)}


def _lookup(report: dict, key: str) -> object:
    node: object = report
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
    return node


def test_cli_debias_from_embeddings_file(tmp_path: Path) -> None:
    ds = make_debias_embeddings(n_identities=300, images_per_identity=5, dim=48, signal_dim=8,
                                shares={"majority": 0.8, "minority": 0.2}, seed=2)  # fmt: skip
    np.save(tmp_path / "emb.npy", ds.vectors)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "identity", "skin_tone"])
        w.writerows(zip(ds.ids, ds.identities, ds.groups["group"], strict=True))
    out = tmp_path / "out"
    args = ["debias", "--data-dir", str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy"),
            "--labels", str(tmp_path / "labels.csv"), "--group-by", "skin_tone", "--target-fmr", "1e-2",
            "--epochs", "2", "--out-dim", "16", "--hidden-dim", "0", "--bootstrap", "50", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["models"]) == {"base", "uniform", "weighted"}
    for name, m in rep["models"].items():  # each in the audit report's own shape, at the one target FMR
        assert set(m["groups"]) == {"majority", "minority"} and m["target_fmr"] == 0.01
        assert {"fnmr", "fnmr_ci", "fmr", "fmr_ci", "n_genuine"} <= set(m["groups"]["minority"])
        assert m["overall"]["fmr"] <= 0.01 and m["differentials"]["fnmr"]["max_min_ratio"] is not None
        assert m["model_id"] == (None if name == "base" else f"unknown+adapter-{name}")  # a .npy names no model
    # identity-disjoint split: 30% of each group's identities held out, every image of them audited
    assert rep["split"]["eval_identities"] == round(0.3 * 240) + round(0.3 * 60)
    assert rep["models"]["base"]["data"]["n_images"] == rep["split"]["eval_images"] == 5 * rep["split"]["eval_identities"]
    mass = rep["weights"]["groups"]
    assert abs(sum(v["weight_mass"] for v in mass.values()) - 1.0) < 1e-9
    # every number on the page is the JSON's
    values = _html_values((out / "report.html").read_text())
    assert len(values) > 40
    for key, value in values.items():
        assert _lookup(rep, key) == value, key
    for name in ("uniform", "weighted"):
        adapter = load_adapter(out / f"adapter_{name}.pt")
        assert adapter.in_dim_ == 48 and adapter.out_dim == 16
        digest = adapter_digest(out / f"adapter_{name}.pt")
        assert rep["adapters"][f"adapter_{name}.pt"]["model_id"] == f"unknown+adapter-{digest[:12]}"
    # a group column the labels lack is a usage error (exit 2), not a crash
    assert main([*args[:-2], "--group-by", "sex", "--out", str(out)]) == 2


def _augmented_faces(root: Path) -> Path:
    """The 24 real photos, each also mirrored and cropped 8% tighter: 72 images of 8 people (the latent
    analysis needs 50 training rows)."""
    from PIL import Image, ImageOps

    for src in sorted(FACES.glob("*/*.png")):
        person = src.parent.name
        (root / person).mkdir(parents=True, exist_ok=True)
        img = Image.open(src).convert("RGB")
        w, h = img.size
        img.save(root / person / f"{src.stem}.png")
        ImageOps.mirror(img).save(root / person / f"{src.stem}_mirror.png")
        d = int(0.04 * min(w, h))
        img.crop((d, d, w - d, h - d)).resize((w, h)).save(root / person / f"{src.stem}_crop.png")
    return root


def test_debias_end_to_end_on_real_faces_dlib_resnet(tmp_path: Path) -> None:
    """Runs and writes the three-way report on real embeddings; far too small to assert gains, so it checks
    that the base model's numbers are the audit's of the same held-out embeddings."""
    from embeddings.dataset import embed_image_folder
    from service.config import load_config
    from service.runtime import build_pipeline

    if not FACES.is_dir():
        pytest.skip(f"{FACES} not present")
    config = load_config({"data_dir": str(tmp_path / "data"), "weights": "dlib-resnet"}, env={})
    try:
        pipeline = build_pipeline(config)
    except (LatentfaceError, ImportError) as exc:
        pytest.skip(f"weights 'dlib-resnet' are not usable here yet: {exc}")
    assert pipeline.encoder.embedding_dim == 128
    root = _augmented_faces(tmp_path / "faces")
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "identity", "sex"])
        for p in sorted(root.glob("*/*.png")):
            w.writerow([p.relative_to(root).as_posix(), p.parent.name, "f" if p.parent.name in FEMALE else "m"])
    out = tmp_path / "out"
    args = ["debias", "--data-dir", str(tmp_path / "data"), "--weights", "dlib-resnet", "--images", str(root),
            "--labels", str(tmp_path / "labels.csv"), "--group-by", "sex", "--target-fmr", "1e-2",
            "--eval-fraction", "0.25", "--epochs", "5", "--out-dim", "32", "--bootstrap", "50", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["model_id"] == pipeline.model_id and rep["models"]["base"]["model_id"] == pipeline.model_id
    assert set(rep["models"]) == {"base", "uniform", "weighted"}
    # the same embeddings (cached by the run), the same split, the plain audit: the base column must agree
    dataset = embed_image_folder(root, pipeline, cache_dir=tmp_path / "data" / "cache" / "embeddings",
                                 labels_csv=tmp_path / "labels.csv")  # fmt: skip
    held = split_identities(dataset.identities, dataset.groups["sex"], eval_fraction=0.25, seed=0)
    audit = run_audit(dataset.subset(np.flatnonzero(held)), group_by=["sex"], target_fmr=1e-2,
                      options=AuditOptions(n_bootstrap=50)).report  # fmt: skip
    base = rep["models"]["base"]
    assert base["threshold"] == pytest.approx(audit["threshold"], abs=1e-6)
    for g, r in audit["groups"].items():
        for key in ("fnmr", "fmr", "n_genuine", "n_impostor", "n_identities"):
            assert base["groups"][g][key] == r[key], (g, key)
    for name in ("uniform", "weighted"):
        adapter = load_adapter(out / f"adapter_{name}.pt")
        assert adapter.in_dim_ == 128  # follows the model, not 512
        m = rep["models"][name]
        assert m["overall"]["n_genuine"] == base["overall"]["n_genuine"]
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
