"""Datasets for the analysis path: embeddings plus optional identity and group labels.

Three ways in: an embeddings file (``.npy`` float32 N×D plus a labels CSV), an image folder
(``ROOT/<identity>/<image>``, embedded with a :class:`~embeddings.pipeline.FacePipeline` and cached by
content hash and model id), and a gallery collection (:meth:`Dataset.from_collection`: one row per
enrolled face, labelled with its subject and the subject's group attributes).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embeddings.errors import (
    Cancelled,
    InvalidDataset,
    InvalidImage,
    NoFaceFound,
    QualityRejected,
    SubjectNotFound,
)

if TYPE_CHECKING:
    from embeddings.gallery import Gallery

__all__ = [
    "Dataset",
    "IMAGE_SUFFIXES",
    "LabelTable",
    "embed_image_folder",
    "label_columns",
    "load_embeddings",
    "load_labels",
]

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_RESERVED = ("id", "identity")
# |‖x‖² − 1| under this counts as unit length: float32 rounding of an already-normalised row.
_UNIT_TOLERANCE = 1e-5
_COLLECTION_PAGE = 500


@dataclass
class Dataset:
    """N labelled embeddings. ``vectors`` rows are L2-normalised float32; ``groups`` maps a column to N labels.

    ``skipped`` counts inputs that produced no row (e.g. ``{"no_face": 3}``) so nothing is dropped silently.
    """

    ids: np.ndarray
    vectors: np.ndarray
    identities: np.ndarray | None = None
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    model_id: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        vectors = np.asarray(self.vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise InvalidDataset(f"vectors must be 2-D (N×D), got shape {vectors.shape}")
        n = vectors.shape[0]
        if self.ids.shape != (n,):
            raise InvalidDataset(f"{self.ids.shape[0]} ids for {n} vectors")
        if len(set(self.ids.tolist())) != n:
            raise InvalidDataset("ids must be unique")
        if not np.isfinite(vectors).all():
            raise InvalidDataset("vectors contain NaN or inf")
        # einsum, not np.linalg.norm: no N×D temporary, which matters for a whole collection's faces.
        sq_norms = np.einsum("ij,ij->i", vectors, vectors)[:, None]
        if n and (sq_norms <= 0).any():
            raise InvalidDataset(f"row {int(np.argmin(sq_norms[:, 0]))} is an all-zero vector")
        if n and np.abs(sq_norms - 1.0).max() > _UNIT_TOLERANCE:
            vectors = vectors / np.sqrt(np.where(sq_norms > 0, sq_norms, 1.0))
        # Rows already unit length (a gallery's are) are kept as they are: no second N×D copy.
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.identities is not None:
            self.identities = np.asarray(self.identities).astype(str)
            if self.identities.shape != (n,):
                raise InvalidDataset(f"{self.identities.shape[0]} identities for {n} vectors")
        groups = {}
        for name, values in self.groups.items():
            values = np.asarray(values).astype(str)
            if values.shape != (n,):
                raise InvalidDataset(f"group column {name!r} has {values.shape[0]} values for {n} vectors")
            groups[name] = values
        self.groups = groups

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def subset(self, index: np.ndarray | Sequence[int]) -> Dataset:
        """Rows ``index`` (an integer or boolean index) as a new Dataset."""
        idx = np.asarray(index)
        return Dataset(
            ids=self.ids[idx],
            vectors=self.vectors[idx],
            identities=None if self.identities is None else self.identities[idx],
            groups={k: v[idx] for k, v in self.groups.items()},
            model_id=self.model_id,
        )

    @classmethod
    def from_collection(
        cls,
        gallery: Gallery,
        collection: str,
        *,
        page_size: int = _COLLECTION_PAGE,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> Dataset:
        """Every enrolled face of ``collection``: one row per face.

        ``ids`` are face ids (as strings), ``identities`` subject ids, ``model_id`` the collection's.
        Each group attribute set on any subject becomes a group column; subjects without that
        attribute get the empty string there (a group of its own in an audit, so label every
        subject with the attributes you group by). Subjects are read a page at a time and their
        vectors written into one preallocated N×D array, so memory stays near that array's size.
        Raises CollectionNotFound for an unknown collection and InvalidDataset for an empty one.
        """
        record = gallery.get_collection(collection)  # CollectionNotFound passes through
        stats = gallery.collection_stats(collection)
        if stats.faces == 0 or record.dim is None:
            raise InvalidDataset(f"collection {collection!r} has no enrolled faces to analyse")
        vectors = np.empty((stats.faces, record.dim), dtype=np.float32)
        face_ids = np.empty(stats.faces, dtype=np.int64)
        row_subject = np.empty(stats.faces, dtype=np.int64)  # row -> index into subject_ids
        subject_ids: list[str] = []
        subject_groups: list[dict[str, Any]] = []
        filled = 0
        token: str | None = None
        while True:
            if should_stop is not None and should_stop():
                raise Cancelled(f"reading collection {collection!r} was cancelled")
            page, token = gallery.list_subjects(collection, page_size=page_size, page_token=token)
            for subject in page:
                try:
                    ids, vecs, _model = gallery.subject_vectors(collection, subject.subject_id)
                except SubjectNotFound:
                    continue  # deleted since the page was read: it is gone, so is its row
                if len(ids) == 0:
                    continue
                end = filled + len(ids)
                if end > len(vectors):  # faces enrolled while we read: grow once, geometrically
                    size = max(end, 2 * len(vectors))
                    vectors = _grow(vectors, size)
                    face_ids = _grow(face_ids, size)
                    row_subject = _grow(row_subject, size)
                vectors[filled:end] = vecs
                face_ids[filled:end] = ids
                row_subject[filled:end] = len(subject_ids)
                subject_ids.append(subject.subject_id)
                subject_groups.append(dict(subject.groups or {}))
                filled = end
            if progress is not None:
                done = min(len(subject_ids), stats.subjects) / max(stats.subjects, 1)
                progress(done, f"read {filled} faces of {len(subject_ids)} subjects")
            if token is None:
                break
        if filled == 0:
            raise InvalidDataset(f"collection {collection!r} has no enrolled faces to analyse")
        rows = row_subject[:filled]
        columns = sorted({name for groups in subject_groups for name in groups})
        return cls(
            ids=face_ids[:filled].astype(str),
            vectors=vectors[:filled],
            identities=np.array(subject_ids, dtype=str)[rows],
            groups={
                name: np.array([_group_label(g.get(name)) for g in subject_groups], dtype=str)[rows]
                for name in columns
            },
            model_id=record.model_id,
        )


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def _group_label(value: Any) -> str:
    """A subject's group attribute as a label: missing or null → ``""``, anything else as text."""
    return "" if value is None else str(value)


@dataclass(frozen=True)
class LabelTable:
    """A labels CSV: ``ids`` (column ``id``), optional ``identities`` and the remaining columns as groups."""

    ids: np.ndarray
    identities: np.ndarray | None
    groups: dict[str, np.ndarray]


def label_columns(path: str | Path) -> list[str]:
    """The column names of a labels CSV, read from its header only (a cheap check before a long job)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    except OSError as exc:
        raise InvalidDataset(f"{path}: cannot read labels file: {exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidDataset(f"{path}: not a UTF-8 CSV file: {exc}") from exc
    if header is None:
        raise InvalidDataset(f"{path}: empty labels file (expected a header with an 'id' column)")
    return [h.strip() for h in header]


def load_labels(path: str | Path) -> LabelTable:
    """Read a labels CSV with an ``id`` column, an optional ``identity`` column and group-attribute columns."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InvalidDataset(f"{path}: empty labels file (expected a header with an 'id' column)")
            header = [h.strip() for h in header]
            if "id" not in header:
                raise InvalidDataset(f"{path}:1: no 'id' column in header {header}")
            dupes = {h for h in header if header.count(h) > 1}
            if dupes:
                raise InvalidDataset(f"{path}:1: duplicate column(s) {sorted(dupes)}")
            rows: list[list[str]] = []
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise InvalidDataset(f"{path}:{line_no}: expected {len(header)} columns, found {len(row)}")
                rows.append(row)
    except OSError as exc:
        raise InvalidDataset(f"{path}: cannot read labels file: {exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidDataset(f"{path}: not a UTF-8 CSV file: {exc}") from exc
    columns = {h: np.array([r[i] for r in rows], dtype=str) for i, h in enumerate(header)}
    ids = columns["id"]
    seen: dict[str, int] = {}
    for i, value in enumerate(ids.tolist()):
        if value == "":
            raise InvalidDataset(f"{path}:{i + 2}: column 'id' is empty")
        if value in seen:
            raise InvalidDataset(f"{path}:{i + 2}: column 'id' repeats {value!r} (first on line {seen[value]})")
        seen[value] = i + 2
    groups = {h: v for h, v in columns.items() if h not in _RESERVED}
    return LabelTable(ids=ids, identities=columns.get("identity"), groups=groups)


def load_embeddings(npy_path: str | Path, labels_csv: str | Path) -> Dataset:
    """Load an ``.npy`` float N×D array and its labels CSV (row i of the CSV describes row i of the array)."""
    npy_path = Path(npy_path)
    try:
        array = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidDataset(f"{npy_path}: cannot read embeddings: {exc}") from exc
    if array.ndim != 2:
        raise InvalidDataset(f"{npy_path}: embeddings must be 2-D (N×D), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidDataset(f"{npy_path}: embeddings must be floating point, got {array.dtype}")
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise InvalidDataset(f"{npy_path}: NaN or inf at row {row}, column {col}")
    zero = np.flatnonzero(~array.any(axis=1))
    if zero.size:
        raise InvalidDataset(f"{npy_path}: row {int(zero[0])} is an all-zero vector")
    labels = load_labels(labels_csv)
    if labels.ids.shape[0] != array.shape[0]:
        raise InvalidDataset(
            f"{labels_csv}: {labels.ids.shape[0]} label rows for {array.shape[0]} embeddings in {npy_path}"
        )
    return Dataset(
        ids=labels.ids,
        vectors=array.astype(np.float32),
        identities=labels.identities,
        groups=labels.groups,
    )


def embed_image_folder(
    root: str | Path,
    pipeline: Any,
    *,
    cache_dir: str | Path,
    labels_csv: str | Path | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Dataset:
    """Embed the best face of every image under ``ROOT/<identity>/``; id = path relative to ROOT.

    Embeddings are cached under ``cache_dir`` by sha256 of the file bytes and ``pipeline.model_id``,
    so a second run reads the cache instead of re-embedding. Images without a usable face are
    skipped and counted in ``Dataset.skipped``. When ``labels_csv`` is given its ``id`` column
    names images by relative path and its other columns become identities/groups.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidDataset(f"{root}: not a directory")
    model_id = str(pipeline.model_id)
    cache = _EmbeddingCache(Path(cache_dir), model_id)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidDataset(f"{root}: no images found (expected ROOT/<identity>/<image>)")
    ids: list[str] = []
    identities: list[str] = []
    vectors: list[np.ndarray] = []
    skipped = {"no_face": 0, "invalid_image": 0}
    hits = 0
    for i, path in enumerate(files):
        if should_stop is not None and should_stop():
            raise Cancelled("embedding the image folder was cancelled")
        rel = path.relative_to(root).as_posix()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidDataset(f"{path}: cannot read the image ({exc.strerror})") from exc
        digest = hashlib.sha256(data).hexdigest()
        cached = cache.get(digest)
        if cached is not None:
            hits += 1
            vector, reason = cached
        else:
            vector, reason = _embed_best(pipeline, data)
            cache.put(digest, vector, reason)
        if vector is None:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            ids.append(rel)
            identities.append(path.parent.relative_to(root).as_posix() if path.parent != root else "")
            vectors.append(vector)
        if progress is not None:
            progress((i + 1) / len(files), f"embedded {i + 1}/{len(files)} images ({hits} from cache)")
    skipped = {k: v for k, v in skipped.items() if v}
    if not vectors:
        raise InvalidDataset(f"{root}: no face found in any of {len(files)} images")
    dataset = Dataset(
        ids=np.array(ids),
        vectors=np.stack(vectors),
        identities=np.array(identities),
        model_id=model_id,
        skipped=skipped,
    )
    if labels_csv is not None:
        dataset = _attach_labels(dataset, load_labels(labels_csv), labels_csv)
    return dataset


def _embed_best(pipeline: Any, data: bytes) -> tuple[np.ndarray | None, str]:
    """The best face's vector and ``""``, or None and the reason no row is produced."""
    try:
        result = pipeline.embed_one(data)
    except (NoFaceFound, QualityRejected):
        return None, "no_face"
    except InvalidImage:
        return None, "invalid_image"
    if isinstance(result, (list, tuple)):  # several faces, best first
        result = result[0] if result else None
    if result is None:
        return None, "no_face"
    vector = getattr(result, "vector", result)
    return np.asarray(vector, dtype=np.float32).reshape(-1), ""


class _EmbeddingCache:
    """One ``.npy`` per (model id, content hash); a ``.none`` file holding the reason marks an image without a row."""

    def __init__(self, cache_dir: Path, model_id: str) -> None:
        self.dir = cache_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> tuple[np.ndarray | None, str] | None:
        """``(vector, "")``, ``(None, reason)`` or None when the image was never seen."""
        path = self._path(digest)
        if path.exists():
            try:
                vector = np.load(path, allow_pickle=False)
            except (OSError, ValueError):  # a damaged cache entry is a miss: embed again, overwrite it
                return None
            if vector.ndim == 1 and np.isfinite(vector).all():
                return vector, ""
            return None
        marker = path.with_suffix(".none")
        if marker.exists():
            return None, marker.read_text().strip() or "no_face"
        return None

    def put(self, digest: str, vector: np.ndarray | None, reason: str) -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        target, tmp = (path, path.with_suffix(".tmp")) if vector is not None else (
            path.with_suffix(".none"), path.with_suffix(".none.tmp"))
        with tmp.open("wb") as f:
            if vector is None:
                f.write(reason.encode())
            else:
                np.save(f, vector.astype(np.float32))
        tmp.replace(target)  # atomic: a crash never leaves a half-written cache entry


def _attach_labels(dataset: Dataset, labels: LabelTable, source: str | Path) -> Dataset:
    position = {v: i for i, v in enumerate(labels.ids.tolist())}
    missing = [i for i in dataset.ids.tolist() if i not in position]
    if missing:
        raise InvalidDataset(f"{source}: no label row for image(s) {missing[:5]}")
    rows = np.array([position[i] for i in dataset.ids.tolist()], dtype=np.int64)
    return Dataset(
        ids=dataset.ids,
        vectors=dataset.vectors,
        identities=dataset.identities if labels.identities is None else labels.identities[rows],
        groups={k: v[rows] for k, v in labels.groups.items()},
        model_id=dataset.model_id,
        skipped=dataset.skipped,
    )
