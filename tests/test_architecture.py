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
