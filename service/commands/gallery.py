"""Gallery commands: ``enroll``, ``verify``, ``identify``, ``delete``, ``calibrate``.

Local mode opens the data directory directly (refused, naming the holder, while a server holds it);
``--server HOST:PORT`` sends the same request to a running server through the client.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.errors import CollectionNotFound, InvalidInput
from service.cli import emit

_MAX_CALIBRATION_PAIRS = 20_000_000
_PAIR_BLOCK = 1 << 21  # scores computed per block of rows (x 8 bytes: a 16 MB block)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    remote = argparse.ArgumentParser(add_help=False)
    g = remote.add_argument_group("remote mode")
    g.add_argument("--server", help="HOST:PORT of a running latentface server (default: local data dir)")
    g.add_argument("--api-key", help="API key for --server (env LATENTFACE_API_KEY)")
    g.add_argument("--tls-ca", help="CA certificate for a TLS server")

    p = sub.add_parser(
        "enroll",
        parents=[common, remote],
        help="enroll face images for a subject, or a whole folder ROOT/<subject>/<image>",
        description="Enroll images of one subject (--subject ID IMAGE...) or a folder of subjects (--folder ROOT). "
        "Each image must hold a face that passes the quality gate; nothing is stored for an image that fails.",
    )
    p.add_argument("images", nargs="*", type=Path, help="image files of the subject")
    p.add_argument("--subject", help="subject id (required with IMAGE arguments)")
    p.add_argument("--folder", type=Path, help="ROOT with one sub-folder per subject")
    p.add_argument("--name", help="display name of the subject")
    p.add_argument("--metadata", help="JSON object stored with the subject")
    p.add_argument("--group", action="append", default=[], metavar="KEY=VALUE", help="group attribute (repeatable)")
    p.add_argument("--request-id", help="idempotency key: the same id never enrolls twice")
    p.set_defaults(handler=run_enroll)

    p = sub.add_parser(
        "verify",
        parents=[common, remote],
        help="1:1 verification: two images, or an image against an enrolled subject",
    )
    p.add_argument("image", type=Path)
    p.add_argument("other", type=Path, nargs="?", help="second image (or use --subject)")
    p.add_argument("--subject", help="enrolled subject to verify against")
    p.add_argument("--threshold", type=float, help="override the collection's threshold")
    p.set_defaults(handler=run_verify)

    p = sub.add_parser("identify", parents=[common, remote], help="1:N identification against a collection")
    p.add_argument("image", type=Path)
    p.add_argument("-k", "--top-k", type=int, default=5, dest="k")
    p.add_argument("--threshold", type=float, help="override the collection's threshold")
    p.set_defaults(handler=run_identify)

    p = sub.add_parser("delete", parents=[common, remote], help="delete a subject (all its faces) or one face")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--subject")
    target.add_argument("--face")
    p.set_defaults(handler=run_delete)

    p = sub.add_parser(
        "calibrate",
        parents=[common],
        help="threshold for a target false-match rate from labelled pairs",
        description="From a CSV of labelled scores (columns score,genuine) or from the collection's own "
        "enrolled subjects (all genuine and impostor face pairs), find the threshold that gives the target FMR.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scores", type=Path, help="CSV with columns score,genuine (1/0 or true/false)")
    src.add_argument("--from-collection", action="store_true", help="use the collection's enrolled faces as pairs")
    p.add_argument("--target-fmr", type=float, default=1e-3)
    p.add_argument("--apply", action="store_true", help="set the collection's threshold to the result")
    p.set_defaults(handler=run_calibrate)


# ---------------------------------------------------------------- helpers


def _engine(config):
    from service.runtime import build_engine

    return build_engine(config)


def _client(args):
    import os

    from service.client import Client

    key = args.api_key or os.environ.get("LATENTFACE_API_KEY")
    return Client(args.server, api_key=key, tls=args.tls_ca or None)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read image {path}: {exc.strerror}") from exc


def _groups(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--group expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--metadata is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput("--metadata must be a JSON object")
    return value


def _ensure_collection(engine, name: str) -> None:
    """The CLI creates a missing collection on first enrollment (the server API does not)."""
    try:
        engine.collection_stats(name)
    except CollectionNotFound:
        engine.create_collection(name)
        print(f"latentface: created collection {name!r}", file=sys.stderr)


def _decision(d) -> dict[str, Any]:
    return {"is_match": d.is_match, "score": round(float(d.score), 6), "threshold": d.threshold, "model_id": d.model_id}


def _face(face) -> dict[str, Any] | None:
    if face is None:
        return None
    return {
        "box": [round(v, 1) for v in face.box],
        "probability": round(float(face.probability), 4),
        "quality_reasons": list(face.quality.reasons),
    }


def _folder_items(root: Path) -> list[tuple[str, list[Path]]]:
    if not root.is_dir():
        raise InvalidInput(f"--folder {root} is not a directory")
    items = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            items.append((sub.name, images))
    if not items:
        raise InvalidInput(f"--folder {root} has no ROOT/<subject>/<image> files")
    return items


# ---------------------------------------------------------------- commands


def run_enroll(args, config) -> int:
    if args.folder and (args.images or args.subject):
        raise InvalidInput("use either --folder ROOT or --subject ID IMAGE..., not both")
    if not args.folder and not (args.subject and args.images):
        raise InvalidInput("enroll needs --subject ID and at least one IMAGE, or --folder ROOT")
    groups, metadata = _groups(args.group), _metadata(args.metadata)
    items = _folder_items(args.folder) if args.folder else [(args.subject, list(args.images))]
    if args.server:
        with _client(args) as client:
            return _enroll_all(client.enroll, items, args, groups=groups, metadata=metadata)
    engine = _engine(config)
    try:
        _ensure_collection(engine, args.collection)
        return _enroll_all(engine.enroll, items, args, groups=groups, metadata=metadata)
    finally:
        engine.close()


def _enroll_all(enroll, items, args, *, groups, metadata) -> int:
    """Enroll each subject with ``enroll`` (the engine's or the client's: same signature).

    One subject: its error is the command's error. A folder: a subject whose images are refused is
    reported with its reasons and the others go on; the exit code is then 2.
    """
    from tqdm import tqdm

    enrolled, rejected = [], []
    for subject, paths in tqdm(items, desc="enroll", unit="subject", disable=len(items) < 2, file=sys.stderr):
        try:
            result = enroll(
                args.collection,
                subject,
                [_read(p) for p in paths],
                display_name=args.name,
                metadata=metadata,
                groups=groups or None,
                request_id=args.request_id if len(items) == 1 else None,
            )
        except InvalidInput as exc:
            if len(items) == 1:
                raise
            rejected.append({"subject_id": subject, "error": str(exc), "reasons": list(getattr(exc, "reasons", ()))})
            continue
        enrolled.append({"subject_id": result.subject_id, "face_ids": [str(f) for f in result.face_ids]})
    emit({"collection": args.collection, "enrolled": enrolled, "rejected": rejected})
    return 0 if not rejected else 2


def run_verify(args, config) -> int:
    if bool(args.other) == bool(args.subject):
        raise InvalidInput("verify needs either a second IMAGE or --subject ID")
    probe = _read(args.image)
    if args.server:
        with _client(args) as client:
            if args.subject:
                result = client.verify(
                    image=probe, subject_id=args.subject, collection=args.collection, threshold=args.threshold
                )
            else:
                result = client.verify(image=probe, reference_image=_read(args.other), threshold=args.threshold)
        decision, face_a, face_b = result.decision, result.probe_face, result.reference_face
    else:
        engine = _engine(config)
        try:
            if args.subject:
                result = engine.verify_subject(probe, args.collection, args.subject, threshold=args.threshold)
            else:
                result = engine.verify_images(probe, _read(args.other), threshold=args.threshold)
            decision, face_a, face_b = result.decision, result.face_a, result.face_b
        finally:
            engine.close()
    out = {"decision": _decision(decision), "face_a": _face(face_a)}
    if not args.subject:
        out["face_b"] = _face(face_b)
    emit(out)
    return 0 if decision.is_match else 1


def run_identify(args, config) -> int:
    probe = _read(args.image)
    if args.server:
        with _client(args) as client:
            result = client.identify(probe, args.collection, k=args.k, threshold=args.threshold)
        candidates = [(c.subject_id, c.face_id, c.decision.score, c.decision.is_match) for c in result.candidates]
    else:
        engine = _engine(config)
        try:
            result = engine.identify(probe, args.collection, k=args.k, threshold=args.threshold)
        finally:
            engine.close()
        candidates = [(c.subject_id, c.face_id, c.score, c.is_match) for c in result.candidates]
    emit(
        {
            "face": _face(result.face),
            "candidates": [
                {"subject_id": sid, "face_id": str(fid), "score": round(float(score), 6), "is_match": bool(match)}
                for sid, fid, score, match in candidates
            ],
        }
    )
    return 0


def run_delete(args, config) -> int:
    if args.server:
        with _client(args) as client:
            if args.subject:
                client.delete_subject(args.collection, args.subject)
            else:
                client.delete_face(args.collection, args.face)
    else:
        from service.runtime import open_engine

        with open_engine(config) as engine:
            if args.subject:
                engine.delete_subject(args.collection, args.subject)
            else:
                engine.delete_face(args.collection, _face_id(args.face))
    emit({"deleted": {"subject_id": args.subject} if args.subject else {"face_id": args.face}})
    return 0


def _face_id(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise InvalidInput(f"face id must be an integer, got {text!r}") from exc


def _scores_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"score", "genuine"} <= set(reader.fieldnames):
                raise InvalidInput(f"{path}: needs columns score,genuine (has {reader.fieldnames})")
            scores, labels = [], []
            for line, row in enumerate(reader, start=2):
                try:
                    scores.append(float(row["score"]))
                except ValueError as exc:
                    raise InvalidInput(f"{path}:{line}: score {row['score']!r} is not a number") from exc
                flag = row["genuine"].strip().lower()
                if flag not in ("1", "0", "true", "false"):
                    raise InvalidInput(f"{path}:{line}: genuine must be 1/0/true/false, got {row['genuine']!r}")
                labels.append(flag in ("1", "true"))
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    return np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)


def _collection_pairs(engine, collection: str) -> tuple[np.ndarray, np.ndarray]:
    """All face pairs (i < j, row-major) of the collection: same subject = genuine, different = impostor.

    The scores are computed a block of rows at a time, so memory is the two outputs (9 bytes a
    pair) plus one block, never the pair-indexed copies of the vectors (2 x pairs x dim x 4 bytes:
    41 GB each at the pair cap with 512-d vectors).
    """
    dataset = engine.collection_dataset(collection)  # InvalidDataset when it has no faces
    n = len(dataset.ids)
    pairs = n * (n - 1) // 2
    if pairs > _MAX_CALIBRATION_PAIRS:
        raise InvalidInput("collection too large for all-pairs calibration; export labelled scores and use --scores")
    x = dataset.vectors.astype(np.float64)
    _, who = np.unique(dataset.identities, return_inverse=True)
    scores = np.empty(pairs, np.float64)
    genuine = np.empty(pairs, bool)
    rows = max(1, _PAIR_BLOCK // max(n, 1))
    at = 0
    for start in range(0, n - 1, rows):
        stop = min(start + rows, n - 1)
        upper = np.arange(n)[None, :] > np.arange(start, stop)[:, None]  # j > i, row by row
        block = (x[start:stop] @ x.T)[upper]
        scores[at : at + len(block)] = block
        genuine[at : at + len(block)] = (who[start:stop, None] == who[None, :])[upper]
        at += len(block)
    return scores, genuine


def run_calibrate(args, config) -> int:
    from embeddings.match import calibrate
    from service.runtime import open_engine

    engine = None
    try:
        if args.scores:
            scores, labels = _scores_csv(args.scores)
        else:
            engine = open_engine(config)
            scores, labels = _collection_pairs(engine, args.collection)
        result = calibrate(scores, labels, target_fmr=args.target_fmr)
        out = {
            "target_fmr": args.target_fmr,
            "threshold": float(result.threshold),
            "fmr": float(result.fmr),
            "fnmr": float(result.fnmr),
            "n_genuine": int(result.n_genuine),
            "n_impostor": int(result.n_impostor),
        }
        if args.apply:
            engine = engine or open_engine(config)
            engine.set_threshold(args.collection, float(result.threshold))
            out["applied_to"] = args.collection
        emit(out)
        return 0
    finally:
        if engine is not None:
            engine.close()
