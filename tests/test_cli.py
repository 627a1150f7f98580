"""The ``latentface`` CLI end to end on a real data dir: real MTCNN, seeded random encoder, SQLite + FAISS."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTFACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LATENTFACE_WEIGHTS", "random")
    monkeypatch.setenv("LATENTFACE_OFFLINE", "1")


def run(*argv: str) -> tuple[int, object]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    text = out.getvalue()
    return code, (json.loads(text) if text.strip() else None)


@pytest.fixture
def photos(tmp_path, astronaut) -> dict[str, Path]:
    paths = {}
    img = Image.fromarray(astronaut)
    for name, im in {
        "a": img,
        "a_small": img.resize((384, 384)),
        "flip": img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "noface": Image.fromarray(np.full((256, 256, 3), 128, np.uint8)),
    }.items():
        paths[name] = tmp_path / f"{name}.png"
        im.save(paths[name])
    return paths


def test_enroll_identify_verify_delete_roundtrip(photos, capsys):
    code, out = run("enroll", "--subject", "alice", "--name", "Alice", "--group", "band=x", str(photos["a"]))
    assert code == 0, capsys.readouterr().err
    assert out["enrolled"][0]["subject_id"] == "alice"
    face_id = out["enrolled"][0]["face_ids"][0]

    code, out = run("identify", str(photos["a_small"]))
    assert code == 0
    top = out["candidates"][0]
    assert top["subject_id"] == "alice" and top["face_id"] == face_id
    assert top["score"] > 0.9 and top["is_match"] is True

    code, out = run("verify", str(photos["a"]), "--subject", "alice")
    assert code == 0 and out["decision"]["is_match"] is True
    assert "NOT-FOR-PRODUCTION" in out["decision"]["model_id"]

    code, out = run("verify", str(photos["a"]), str(photos["a_small"]))
    assert code == 0 and out["decision"]["score"] > 0.9
    assert out["face_a"]["quality_reasons"] == []

    code, out = run("delete", "--subject", "alice")
    assert code == 0
    code, out = run("identify", str(photos["a"]))
    assert code == 0 and out["candidates"] == []
    code, _ = run("verify", str(photos["a"]), "--subject", "alice")
    assert code == 3  # not found


def test_errors_have_exit_codes_and_store_nothing(photos, tmp_path, capsys):
    code, _ = run("enroll", "--subject", "bob", str(photos["noface"]))
    assert code == 2
    assert "no face" in capsys.readouterr().err.lower()
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _ = run("enroll", "--subject", "bob", str(photos["a"]), str(junk))
    assert code == 2
    code, out = run("collections", "stats")
    assert code == 0 and out["faces"] == 0 and out["subjects"] == 0
    code, _ = run("verify", str(photos["a"]))
    assert code == 2  # neither a second image nor --subject
    code, _ = run("identify", str(photos["a"]), "--collection", "nosuch")
    assert code == 3


def test_offline_missing_weights_says_where(photos, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LATENTFACE_WEIGHTS", "vggface2")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, _ = run("verify", str(photos["a"]), str(photos["flip"]))
    err = capsys.readouterr().err
    assert code == 4
    assert "20180402-114759-vggface2.pt" in err and str(tmp_path / "torch") in err


def test_folder_enroll_and_calibrate(photos, tmp_path):
    root = tmp_path / "people"
    rng = np.random.default_rng(0)
    base = np.asarray(Image.open(photos["a"]))
    for person in range(3):
        (root / f"p{person}").mkdir(parents=True)
        for k in range(2):
            shifted = np.clip(base.astype(int) + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(shifted).save(root / f"p{person}" / f"{k}.png")
    code, out = run("enroll", "--folder", str(root), "--collection", "staff")
    assert code == 0 and sorted(e["subject_id"] for e in out["enrolled"]) == ["p0", "p1", "p2"]

    code, out = run("calibrate", "--from-collection", "--collection", "staff", "--target-fmr", "0.1")
    assert code == 0
    # 3 subjects x 2 faces: 3 genuine pairs, 12 impostor pairs, at most 10% of them at or above the threshold
    assert (out["n_genuine"], out["n_impostor"]) == (3, 12) and out["fmr"] <= 0.1

    scores = tmp_path / "scores.csv"
    genuine = rng.normal(0.7, 0.05, 200)
    impostor = rng.normal(0.1, 0.1, 5000)
    rows = ["score,genuine"] + [f"{s},1" for s in genuine] + [f"{s},0" for s in impostor]
    scores.write_text("\n".join(rows) + "\n")
    code, out = run("calibrate", "--scores", str(scores), "--target-fmr", "0.01", "--apply", "--collection", "staff")
    assert code == 0
    expected = np.sort(impostor)[::-1]
    # brute force: the share of impostors at or above the threshold is at most the target
    assert np.mean(impostor >= out["threshold"]) <= 0.01
    assert out["threshold"] <= expected[int(0.01 * len(impostor)) - 2] + 1e-9
    code, stats = run("collections", "stats", "--collection", "staff")
    assert stats["threshold"] == pytest.approx(out["threshold"])


def test_a_crash_that_is_not_a_latentface_error_exits_6_not_1(tmp_path, capsys):
    """Issue #10 item 19: 1 means "no match" to scripts; a bug must never look like an answer."""
    scores = tmp_path / "scores.csv"
    scores.write_bytes(b"\xff\xfe\x00\xe2score,genuine\n0.5,1\n")  # not UTF-8: the CSV reader raises UnicodeDecodeError
    code, _ = run("calibrate", "--scores", str(scores))
    err = capsys.readouterr().err
    assert code == 6
    assert "internal error: UnicodeDecodeError" in err
