"""The architecture stays visible: the domain knows nothing of gRPC, servicers stay thin, public names resolve."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_domain_never_imports_grpc_or_the_service():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & {"grpc", "service", "google"})
        for p in (ROOT / "embeddings").rglob("*.py")
        if _imports(p) & {"grpc", "service", "google"}
    }
    assert offenders == {}


def _gallery_reaches(path: Path) -> list[int]:
    """Lines where ``<something>.gallery`` is used as an attribute, or a gallery backend is opened."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "gallery"]
    lines += [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module in ("embeddings.gallery", "embeddings.backends", "embeddings.store")
    ]
    return sorted(lines)


def test_servicers_and_cli_talk_to_face_engine_only():
    """Servicers, the server and CLI commands reach the gallery (SQLite + FAISS, or PostgreSQL + Milvus)
    through FaceEngine only; service/runtime.py is the one place that opens a backend."""
    files = [*(ROOT / "service" / "servicers").glob("*.py"), *(ROOT / "service" / "commands").glob("*.py")]
    files.append(ROOT / "service" / "server.py")
    offenders = {str(p.relative_to(ROOT)): lines for p in files if (lines := _gallery_reaches(p))}
    assert offenders == {}


def test_servicers_never_import_torch_or_faiss():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & {"torch", "faiss", "torchvision", "facenet_pytorch"})
        for p in (ROOT / "service" / "servicers").rglob("*.py")
        if _imports(p) & {"torch", "faiss", "torchvision", "facenet_pytorch"}
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "module",
    ["embeddings.errors", "embeddings.latent", "embeddings.audit", "embeddings.bench", "service.client", "service.config"],
)
def test_every_public_name_resolves(module):
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []
    assert len(mod.__all__) == len(set(mod.__all__))


def test_error_tree_is_pinned():
    from embeddings import errors

    assert sorted(errors.__all__) == [
        "AlreadyExists", "AuthError", "Cancelled", "CollectionNotFound", "DataDirLocked", "DeadlineExceeded", "FaceNotFound",
        "ImageTooLarge", "IndexNotReady", "InvalidDataset", "InvalidImage", "InvalidInput", "JobNotFound",
        "LatentfaceError", "LimitExceeded", "ModelMismatch", "NoFaceFound", "NotFitted", "NotFound",
        "PermissionDenied", "QualityRejected", "RequestIdReused", "StorageError", "SubjectNotFound", "Unauthenticated",
        "Unavailable", "WeightsUnavailable",
    ]  # fmt: skip
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.LatentfaceError)
    # old ``except`` clauses keep working
    assert issubclass(errors.InvalidImage, ValueError)
    assert issubclass(errors.SubjectNotFound, LookupError)
    assert issubclass(errors.NotFitted, AttributeError)
