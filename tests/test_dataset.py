"""Dataset loaders: embeddings + labels files, image folders (real MTCNN + seeded encoder) with a
content-hash cache, gallery collections, synthetic groups."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from embeddings.config import EncoderConfig, GalleryConfig
from embeddings.dataset import Dataset, embed_image_folder, load_embeddings, load_labels
from embeddings.detect import FaceDetector
from embeddings.encode import FaceEncoder
from embeddings.errors import CollectionNotFound, InvalidDataset, InvalidInput
from embeddings.gallery import Gallery
from embeddings.pipeline import FacePipeline
from embeddings.synthetic.groups import make_group_embeddings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


class CountingPipeline(FacePipeline):
    """The real pipeline, counting what it is asked to do: images embedded and crops encoded."""

    def __init__(self, encoder: FaceEncoder) -> None:
        super().__init__(FaceDetector(), encoder, encode_fn=self._count_crops)
        self._encoder = encoder
        self.images = 0
        self.crops = 0

    def _count_crops(self, crops: np.ndarray) -> np.ndarray:
        self.crops += len(crops)
        return self._encoder.encode(crops)

    def embed_one(self, source, *, require_quality: bool = False):  # noqa: ANN001, ANN201
        self.images += 1
        return super().embed_one(source, require_quality=require_quality)


@pytest.fixture(scope="module")
def encoder(one_torch_thread) -> FaceEncoder:
    return FaceEncoder(EncoderConfig(weights="random", seed=0))


def _composite(face: np.ndarray, size: int, canvas: int, at: tuple[int, int], fill: int) -> np.ndarray:
    """``face`` resized to ``size`` px, pasted at ``at`` on a ``canvas``-px square of grey ``fill``."""
    small = np.asarray(Image.fromarray(face).resize((size, size), Image.Resampling.BILINEAR))
    out = np.full((canvas, canvas, 3), fill, np.uint8)
    out[at[1] : at[1] + size, at[0] : at[0] + size] = small
    return out


@pytest.fixture(scope="module")
def faces_tree(tmp_path_factory, astronaut):
    """ROOT/alice/{0,1}.png, ROOT/bob/{0,1}.png (astronaut composites, one face each), ROOT/bob/blank.png
    (no face) and a non-image file; returns (root, the images by relative path)."""
    root = tmp_path_factory.mktemp("faces")
    images = {
        "alice/0.png": astronaut,
        "alice/1.png": np.ascontiguousarray(astronaut[:, ::-1]),
        "bob/0.png": _composite(astronaut, 320, 400, (40, 60), 90),
        "bob/1.png": _composite(np.ascontiguousarray(astronaut[:, ::-1]), 300, 420, (100, 20), 200),
        "bob/blank.png": np.full((300, 300, 3), 128, np.uint8),
    }
    for rel, pixels in images.items():
        (root / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / rel)
    (root / "bob" / "notes.txt").write_text("not an image")
    return root, images


def test_embed_image_folder_real_pipeline_caches_and_counts_skipped(tmp_path, faces_tree, encoder) -> None:
    root, images = faces_tree
    pipeline = CountingPipeline(encoder)
    ds = embed_image_folder(root, pipeline, cache_dir=tmp_path / "cache")
    assert (pipeline.images, pipeline.crops) == (5, 4)  # the blank image is looked at, nothing to encode
    assert ds.ids.tolist() == ["alice/0.png", "alice/1.png", "bob/0.png", "bob/1.png"]
    assert ds.identities.tolist() == ["alice", "alice", "bob", "bob"]
    assert ds.skipped == {"no_face": 1} and ds.model_id == encoder.model_id
    # Each row is the best face's embedding of that image, as the pipeline gives it directly.
    reference = FacePipeline(FaceDetector(), encoder)
    for row, rel in enumerate(ds.ids.tolist()):
        expected = reference.embed_one(images[rel]).vector
        np.testing.assert_allclose(ds.vectors[row], expected, atol=1e-5)

    again = embed_image_folder(root, pipeline, cache_dir=tmp_path / "cache")
    assert (pipeline.images, pipeline.crops) == (5, 4)  # all from the cache, the no-face image included
    np.testing.assert_array_equal(again.vectors, ds.vectors)
    assert again.skipped == {"no_face": 1} and again.ids.tolist() == ds.ids.tolist()

    # A damaged cache entry is a miss: that one image is embedded again, the result is the same.
    entry = sorted((tmp_path / "cache").rglob("*.npy"))[0]
    entry.write_bytes(b"not an npy file")
    healed = embed_image_folder(root, pipeline, cache_dir=tmp_path / "cache")
    assert (pipeline.images, pipeline.crops) == (6, 5)
    np.testing.assert_array_equal(healed.vectors, ds.vectors)

    other = CountingPipeline(FaceEncoder(EncoderConfig(weights="random", seed=1)))
    assert other.model_id != pipeline.model_id
    other_ds = embed_image_folder(root, other, cache_dir=tmp_path / "cache")
    assert (other.images, other.crops) == (5, 4)  # the cache is keyed by model id too
    assert not np.allclose(other_ds.vectors, ds.vectors)


def test_embed_image_folder_attaches_labels(tmp_path, faces_tree, encoder) -> None:
    root, _images = faces_tree
    (tmp_path / "l.csv").write_text(
        "id,group\nalice/0.png,A\nalice/1.png,A\nbob/0.png,B\nbob/1.png,B\nbob/blank.png,B\n"
    )
    pipeline = CountingPipeline(encoder)
    ds = embed_image_folder(root, pipeline, cache_dir=tmp_path / "c", labels_csv=tmp_path / "l.csv")
    assert ds.ids.tolist() == ["alice/0.png", "alice/1.png", "bob/0.png", "bob/1.png"]
    assert ds.groups["group"].tolist() == ["A", "A", "B", "B"]


def _planted_collection(gallery: Gallery, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, dict]]:
    """Five subjects with 1-3 faces each; one subject has no 'age' attribute and one has no groups."""
    planted = {
        "s1": (rng.normal(size=(2, 8)), {"skin": "dark", "age": "young"}),
        "s2": (rng.normal(size=(3, 8)), {"skin": "light", "age": "old"}),
        "s3": (rng.normal(size=(1, 8)), {"skin": "dark"}),
        "s4": (rng.normal(size=(2, 8)), {}),
        "s5": (rng.normal(size=(1, 8)), {"skin": "light", "age": "young"}),
    }
    gallery.create_collection("people", threshold=0.42)
    for subject, (vectors, groups) in planted.items():
        gallery.enroll("people", subject, vectors, model_id="test-model/v1", groups=groups or None)
    return planted


def test_from_collection_has_one_row_per_face_with_subject_and_groups(tmp_path, rng) -> None:
    with Gallery.open(GalleryConfig(data_dir=tmp_path), background=False) as gallery:
        planted = _planted_collection(gallery, rng)
        gallery.delete_face("people", int(gallery.get_subject("people", "s2").face_ids[0]))
        reports: list[float] = []
        ds = Dataset.from_collection(gallery, "people", page_size=2, progress=lambda f, m: reports.append(f))
        expected_ids = [str(f) for s in planted for f in gallery.get_subject("people", s).face_ids]
    assert ds.ids.tolist() == expected_ids and len(ds) == 8
    assert ds.identities.tolist() == ["s1", "s1", "s2", "s2", "s3", "s4", "s4", "s5"]
    assert set(ds.groups) == {"skin", "age"}
    assert ds.groups["skin"].tolist() == ["dark", "dark", "light", "light", "dark", "", "", "light"]
    assert ds.groups["age"].tolist() == ["young", "young", "old", "old", "", "", "", "young"]
    assert ds.model_id == "test-model/v1" and ds.skipped == {}
    kept = [planted["s1"][0], planted["s2"][0][1:]] + [planted[s][0] for s in ("s3", "s4", "s5")]
    vectors = np.concatenate(kept)
    np.testing.assert_allclose(ds.vectors, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), atol=1e-6)
    assert len(reports) == 3 and reports[-1] == 1.0  # pages of 2, 2 and 1 subjects


def test_from_collection_empty_and_unknown(tmp_path) -> None:
    with Gallery.open(GalleryConfig(data_dir=tmp_path), background=False) as gallery:
        gallery.create_collection("empty")
        with pytest.raises(InvalidDataset, match="'empty' has no enrolled faces"):
            Dataset.from_collection(gallery, "empty")
        gallery.enroll("empty", "gone", np.ones((1, 4)), model_id="m")
        gallery.delete_subject("empty", "gone")
        with pytest.raises(InvalidDataset, match="no enrolled faces"):
            Dataset.from_collection(gallery, "empty")
        with pytest.raises(CollectionNotFound):
            Dataset.from_collection(gallery, "nowhere")


def test_dataset_validation_and_subset(rng) -> None:
    ds = Dataset(ids=np.array(["a", "b", "c"]), vectors=rng.normal(size=(3, 2)), groups={"g": np.array(["x", "y", "x"])})
    sub = ds.subset([2, 0])
    assert sub.ids.tolist() == ["c", "a"] and sub.groups["g"].tolist() == ["x", "x"]
    # Rows already unit length are taken as they are (a collection's N×D array is not copied again).
    assert np.shares_memory(Dataset(ids=ds.ids, vectors=ds.vectors).vectors, ds.vectors)
    np.testing.assert_allclose(np.linalg.norm(ds.vectors, axis=1), 1.0, rtol=1e-6)
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
