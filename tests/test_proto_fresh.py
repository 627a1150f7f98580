"""The committed generated modules are exactly what scripts/gen_proto produces from the .proto files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "service" / "_generated"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".py", ".pyi")}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    _load_generator().generate(tmp_path)
    fresh, committed = _tree(tmp_path), _tree(COMMITTED)
    assert set(fresh) == set(committed), "run scripts/gen_proto: generated file set differs"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated code is stale, run scripts/gen_proto: {stale}"


def test_generated_imports_are_package_relative() -> None:
    for path in COMMITTED.rglob("*_pb2*.py"):
        assert "from latentface.v1 import" not in path.read_text(), path
    assert "latentface" not in {name.split(".")[0] for name in sys.modules}
