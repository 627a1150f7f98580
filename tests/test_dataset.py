"""Dataset loaders: embeddings + labels files, image folders with a content-hash cache, synthetic groups."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from embeddings.dataset import Dataset, embed_image_folder, load_embeddings, load_labels
from embeddings.errors import InvalidDataset, InvalidInput, NoFaceFound
from embeddings.synthetic.groups import make_group_embeddings


def _write(tmp_path, array, csv_text):
    np.save(tmp_path / "e.npy", array)
    (tmp_path / "l.csv").write_text(csv_text)
    return tmp_path / "e.npy", tmp_path / "l.csv"


def test_load_embeddings_with_identity_and_groups(tmp_path, rng) -> None:
    X = rng.normal(size=(3, 4)).astype(np.float32)
    npy, labels = _write(tmp_path, X, "id,identity,skin,age\na,p1,dark,young\nb,p1,light,old\nc,p2,dark,old\n")
    ds = load_embeddings(npy, labels)
    assert ds.ids.tolist() == ["a", "b", "c"]
    assert ds.identities.tolist() == ["p1", "p1", "p2"]
    assert set(ds.groups) == {"skin", "age"} and ds.groups["age"].tolist() == ["young", "old", "old"]
    np.testing.assert_allclose(ds.vectors, X / np.linalg.norm(X, axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(
    ("array", "csv_text", "message"),
    [
        (np.ones((3, 4), np.float32), "id\na\nb\n", "2 label rows for 3"),
        (np.ones((2, 4), np.float32), "id\na\na\n", "l.csv:3: column 'id' repeats 'a'"),
        (np.array([[1.0, np.nan], [1.0, 1.0]], np.float32), "id\na\nb\n", "row 0, column 1"),
        (np.ones(4, np.float32), "id\na\n", "must be 2-D"),
        (np.ones((2, 4), np.float32), "name\na\nb\n", "l.csv:1: no 'id' column"),
        (np.ones((2, 4), np.float32), "id,g\na,x\nb\n", "l.csv:3: expected 2 columns, found 1"),
        (np.zeros((2, 4), np.float32), "id\na\nb\n", "row 0 is an all-zero vector"),
    ],
)
def test_malformed_inputs_name_file_line_and_column(tmp_path, array, csv_text, message) -> None:
    npy, labels = _write(tmp_path, array, csv_text)
    with pytest.raises(InvalidDataset, match=message.replace("(", r"\(")):
        load_embeddings(npy, labels)


def test_load_labels_without_identity(tmp_path) -> None:
    (tmp_path / "l.csv").write_text("id,group\nx,A\ny,B\n")
    table = load_labels(tmp_path / "l.csv")
    assert table.identities is None and table.groups["group"].tolist() == ["A", "B"]


class MeanColourPipeline:
    """A stand-in for FacePipeline (same embed_one/model_id protocol): the embedding is the image's
    colour histogram; an all-black image has "no face". Counts its calls so the cache can be checked."""

    model_id = "mean-colour/v1"

    def __init__(self) -> None:
        self.calls = 0

    def embed_one(self, data: bytes) -> np.ndarray:
        import io

        self.calls += 1
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
        if pixels.max() == 0:
            raise NoFaceFound("no face")
        hist = [np.histogram(pixels[..., c], bins=4, range=(0, 256))[0] for c in range(3)]
        return np.concatenate(hist).astype(np.float32) + 1.0


def _image_tree(root, rng) -> None:
    for person in ("alice", "bob"):
        (root / person).mkdir(parents=True)
        for i in range(3):
            img = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / person / f"{i}.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "bob" / "blank.png")
    (root / "bob" / "notes.txt").write_text("not an image")


def test_embed_image_folder_caches_and_counts_skipped(tmp_path, rng) -> None:
    root = tmp_path / "faces"
    _image_tree(root, rng)
    pipeline = MeanColourPipeline()
    ds = embed_image_folder(root, pipeline, cache_dir=tmp_path / "cache")
    assert pipeline.calls == 7
    assert ds.ids.tolist() == [f"alice/{i}.png" for i in range(3)] + [f"bob/{i}.png" for i in range(3)]
    assert ds.identities.tolist() == ["alice"] * 3 + ["bob"] * 3
    assert ds.skipped == {"no_face": 1} and ds.model_id == "mean-colour/v1"
    again = embed_image_folder(root, pipeline, cache_dir=tmp_path / "cache")
    assert pipeline.calls == 7  # nothing re-embedded, the no-face image included
    np.testing.assert_array_equal(again.vectors, ds.vectors)
    assert again.skipped == {"no_face": 1}

    class OtherModel(MeanColourPipeline):
        model_id = "other/v2"

    other = OtherModel()
    embed_image_folder(root, other, cache_dir=tmp_path / "cache")
    assert other.calls == 7  # the cache is keyed by model id too


def test_embed_image_folder_attaches_labels(tmp_path, rng) -> None:
    root = tmp_path / "faces"
    _image_tree(root, rng)
    rows = [f"{p}/{i}.png,{g}" for p, g in (("alice", "A"), ("bob", "B")) for i in range(3)]
    (tmp_path / "l.csv").write_text("id,group\n" + "\n".join(rows + ["bob/blank.png,B"]) + "\n")
    ds = embed_image_folder(root, MeanColourPipeline(), cache_dir=tmp_path / "c", labels_csv=tmp_path / "l.csv")
    assert ds.groups["group"].tolist() == ["A"] * 3 + ["B"] * 3


def test_dataset_validation_and_subset(rng) -> None:
    ds = Dataset(ids=np.array(["a", "b", "c"]), vectors=rng.normal(size=(3, 2)), groups={"g": np.array(["x", "y", "x"])})
    sub = ds.subset([2, 0])
    assert sub.ids.tolist() == ["c", "a"] and sub.groups["g"].tolist() == ["x", "x"]
    with pytest.raises(InvalidDataset):
        Dataset(ids=np.array(["a", "a"]), vectors=np.ones((2, 2)))


def test_synthetic_groups_have_planted_shares_and_unit_rows() -> None:
    ds = make_group_embeddings(n=2000, shares={"A": 0.9, "B": 0.08, "C": 0.02}, seed=3)
    counts = {g: int((ds.groups["group"] == g).sum()) for g in ("A", "B", "C")}
    assert counts == {"A": 1800, "B": 160, "C": 40}
    np.testing.assert_allclose(np.linalg.norm(ds.vectors, axis=1), 1.0, rtol=1e-5)
    same = make_group_embeddings(n=2000, shares={"A": 0.9, "B": 0.08, "C": 0.02}, seed=3)
    np.testing.assert_array_equal(ds.vectors, same.vectors)
    # Planted offset: group centroids are far apart compared with the null structure's.
    def gap(d):
        a, b = d.groups["group"] == "majority", d.groups["group"] == "minority"
        return np.linalg.norm(d.vectors[a].mean(0) - d.vectors[b].mean(0))

    assert gap(make_group_embeddings(n=2000, seed=1)) > 2 * gap(make_group_embeddings(n=2000, structure="none", seed=1))
    with pytest.raises(InvalidInput):
        make_group_embeddings(structure="banana")
