"""Issue #10, "tests that must exist": every RPC x every role x every collection scope, on the real server.

Keys: role read/write/admin x scope own (``ma`` and ``ghost``, a collection that never exists),
other (``mb``) and all (``*``), plus no key and a revoked key. Each RPC is listed with the role it
needs and the collection it touches; a call is allowed exactly when the key's role is high
enough and its scope covers that collection. Allowed calls must give the RPC's real answer
(checked on values), denied ones PERMISSION_DENIED with nothing changed; no key or a revoked
key gives UNAUTHENTICATED. A test fails when an RPC of the protos is missing from the table.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from embeddings.errors import LatentfaceError
from service._generated.latentface.v1 import analysis_pb2, collection_pb2, face_pb2
from service.client import Client
from service.config import load_config
from service.server import create_server

ROLES = ("read", "write", "admin")
SCOPES = {"own": ["ma", "ghost"], "other": ["mb"], "all": ["*"]}
CELLS = [(role, scope) for role in ROLES for scope in SCOPES] + [("none", "-"), ("revoked", "-")]
RANK = {r: i for i, r in enumerate(ROLES)}
OK = "OK"


@dataclass
class World:
    address: str
    admin: Client
    keys: dict[tuple[str, str], str | None]
    photo: bytes
    vector: np.ndarray
    model_id: str
    faces: dict[str, str]  # per cell: a face id of subject "face-<cell>" (for DeleteFace)
    job_id: str


def _cell_name(role: str, scope: str) -> str:
    return f"{role}-{scope}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, astronaut):
    config = load_config(
        {"data_dir": str(tmp_path_factory.mktemp("matrix")), "weights": "random", "offline": True, "server.port": 0},
        env={},
    )
    srv, port = create_server(config)
    srv.start()
    address = f"127.0.0.1:{port}"
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=92)
    photo = buf.getvalue()
    admin = Client(address, srv.admin_key_path.read_text().strip())
    try:
        admin.create_collection("ma")
        admin.create_collection("mb")
        [emb] = admin.embed(photo)  # a real vector of the served model, whatever its dimension
        vector, model_id = emb.vector, emb.model_id
        rng = np.random.default_rng(0)
        admin.enroll("ma", "alice", [photo], groups={"g": "x"})
        faces = {}
        for role, scope in CELLS:
            cell = _cell_name(role, scope)
            other = rng.standard_normal(len(vector)).astype(np.float32)
            other /= np.linalg.norm(other)
            admin.enroll("ma", f"del-{cell}", embeddings=[(other, model_id)], groups={"g": "y"})
            faces[cell] = admin.enroll("ma", f"face-{cell}", embeddings=[(other, model_id)]).face_ids[0]
        keys: dict[tuple[str, str], str | None] = {}
        for role in ROLES:
            for scope, collections in SCOPES.items():
                keys[(role, scope)] = srv.keystore.create(name=f"{role} {scope}", role=role, collections=collections)[1]
        keys[("none", "-")] = None
        revoked_id, keys[("revoked", "-")] = srv.keystore.create(name="revoked", role="admin", collections=["*"])
        srv.keystore.revoke(revoked_id)
        job = admin.start_analysis(collection="ma")
        end = time.monotonic() + 120
        while not admin.get_job(job.id).terminal and time.monotonic() < end:
            time.sleep(0.2)
        assert admin.get_job(job.id).terminal
        yield World(address, admin, keys, photo, vector, model_id, faces, job.id)
    finally:
        admin.close()
        srv.stop(2.0)


# -- the table: RPC -> (role needed, collection touched or None, call) --------------------------------------
# A call returns a value the test checks when the call is allowed (callables taking the world and the cell).
Call = Callable[[Client, World, str], Any]

CALIBRATION_SCORES = [0.85] * 50 + [i / 1000 for i in range(300)]
CALIBRATION_SAME = [True] * 50 + [False] * 300


def _stats_before(world: World) -> int:
    return world.admin.collection_stats("ma").faces


RPCS: dict[str, tuple[str, str | None, Call, Callable[[Any, World, str], bool]]] = {
    # FaceService
    "FaceService/Detect": ("read", None, lambda c, w, cell: c.detect(w.photo), lambda r, w, cell: len(r) == 1),
    "FaceService/Embed": ("read", None, lambda c, w, cell: c.embed(w.photo), lambda r, w, cell: len(r) == 1),
    "FaceService/Enroll": (
        "write", "ma",
        lambda c, w, cell: c.enroll("ma", f"enr-{cell}", embeddings=[(w.vector, w.model_id)]),
        lambda r, w, cell: r.created_subject and w.admin.get_subject("ma", f"enr-{cell}").face_ids == r.face_ids,
    ),
    "FaceService/Verify": (
        "read", "ma",
        lambda c, w, cell: c.verify(embedding=(w.vector, w.model_id), subject_id="alice", collection="ma"),
        lambda r, w, cell: r.decision.is_match and r.decision.score > 0.99,
    ),
    "FaceService/Identify": (
        "read", "ma",
        lambda c, w, cell: c.identify(w.photo, "ma", k=1000),  # other subjects share alice's vector: all of them
        lambda r, w, cell: any(x.subject_id == "alice" and x.decision.score > 0.99 for x in r.candidates),
    ),
    "FaceService/GetSubject": (
        "read", "ma", lambda c, w, cell: c.get_subject("ma", "alice"), lambda r, w, cell: r.subject_id == "alice"
    ),
    "FaceService/ListSubjects": (
        "read", "ma",
        lambda c, w, cell: c.list_subjects("ma", page_size=1000),
        lambda r, w, cell: "alice" in {s.subject_id for s in r.subjects},
    ),
    "FaceService/DeleteSubject": (
        "write", "ma", lambda c, w, cell: c.delete_subject("ma", f"del-{cell}"), lambda r, w, cell: r == 1
    ),
    "FaceService/DeleteFace": (
        "write", "ma",
        lambda c, w, cell: c.delete_face("ma", w.faces[cell]),
        lambda r, w, cell: w.admin.get_subject("ma", f"face-{cell}").face_ids == [],
    ),
    # EnrollStream is checked per message in its own test below; here: one message to "ma".
    "FaceService/EnrollStream": (
        "write", "ma",
        lambda c, w, cell: c.enroll_stream([{"collection": "ma", "subject_id": f"str-{cell}", "embeddings": [(w.vector, w.model_id)]}]),
        lambda r, w, cell: r.enrolled == 1 and not r.rejected,
    ),
    # CollectionService
    "CollectionService/CreateCollection": (
        "admin", "ma", lambda c, w, cell: c.create_collection("ma"), None  # allowed: ALREADY_EXISTS (below)
    ),
    "CollectionService/ListCollections": (
        "read", None,
        lambda c, w, cell: sorted(x.name for x in c.list_collections()),
        lambda r, w, cell: r == {"own": ["ma"], "other": ["mb"], "all": ["ma", "mb"]}[cell.split("-")[1]],
    ),
    "CollectionService/DeleteCollection": ("admin", "ghost", lambda c, w, cell: c.delete_collection("ghost"), None),
    "CollectionService/GetCollectionStats": (
        "read", "ma", lambda c, w, cell: c.collection_stats("ma"), lambda r, w, cell: r.faces >= 1
    ),
    "CollectionService/SetThreshold": (
        "admin", "ma", lambda c, w, cell: c.set_threshold("ma", 0.5), lambda r, w, cell: r.threshold == 0.5
    ),
    "CollectionService/Calibrate": (  # with apply: the threshold becomes the collection's
        "admin", "ma",
        lambda c, w, cell: c.calibrate(CALIBRATION_SCORES, CALIBRATION_SAME, target_fmr=0.01, collection="ma", apply=True),
        lambda r, w, cell: r.applied and w.admin.collection_stats("ma").collection.threshold == pytest.approx(r.threshold),
    ),
    # AnalysisService (the job of the fixture is an analysis of "ma")
    "AnalysisService/StartAnalysis": (
        "admin", "ma", lambda c, w, cell: c.start_analysis(collection="ma"), lambda r, w, cell: bool(r.id)
    ),
    "AnalysisService/StartAudit": (
        "admin", "ma",
        lambda c, w, cell: c.start_audit(collection="ma", group_by=["g"], target_fmr=0.1),
        lambda r, w, cell: bool(r.id),
    ),
    "AnalysisService/StartDebias": (
        "admin", "ma", lambda c, w, cell: c.start_debias(collection="ma", group_by=["g"], epochs=1),
        lambda r, w, cell: bool(r.id),
    ),
    "AnalysisService/GetJob": ("read", "ma", lambda c, w, cell: c.get_job(w.job_id), lambda r, w, cell: r.id == w.job_id),
    "AnalysisService/WatchJob": (
        "read", "ma",
        lambda c, w, cell: list(c.watch_job(w.job_id, timeout=30)),
        lambda r, w, cell: r and r[-1].id == w.job_id and r[-1].terminal,
    ),
    "AnalysisService/CancelJob": (
        "admin", "ma", lambda c, w, cell: c.cancel_job(w.job_id), lambda r, w, cell: r.id == w.job_id and r.terminal
    ),
    "AnalysisService/GetReport": (
        "read", "ma", lambda c, w, cell: c.get_report(w.job_id, "summary.json"), None  # allowed: the admin's answer
    ),
}
# What an allowed call answers when that is an error rather than a value.
ALLOWED_CODE = {"CollectionService/CreateCollection": "ALREADY_EXISTS", "CollectionService/DeleteCollection": "NOT_FOUND"}


def _run(call: Call, client: Client, world: World, cell: str) -> tuple[str, Any]:
    try:
        return OK, call(client, world, cell)
    except LatentfaceError as exc:
        return exc.status_code.name, exc  # type: ignore[attr-defined]


def test_the_table_lists_every_rpc_of_the_protos():
    served = {
        f"{service.name}/{method.name}"
        for module in (face_pb2, collection_pb2, analysis_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert served == set(RPCS)


def _allowed(role: str, scope: str, needed: str, collection: str | None) -> bool:
    if role not in RANK or RANK[role] < RANK[needed]:
        return False
    return collection is None or scope == "all" or collection in SCOPES[scope]


@pytest.mark.parametrize(("role", "scope"), CELLS, ids=[_cell_name(r, s) for r, s in CELLS])
@pytest.mark.parametrize("rpc", sorted(RPCS))
def test_role_scope_matrix(world: World, rpc: str, role: str, scope: str) -> None:
    needed, collection, call, check = RPCS[rpc]
    cell = _cell_name(role, scope)
    faces_before = _stats_before(world)
    with Client(world.address, world.keys[(role, scope)]) as client:
        code, result = _run(call, client, world, cell)
    if role in ("none", "revoked"):
        assert code == "UNAUTHENTICATED", (rpc, cell, result)
        assert _stats_before(world) == faces_before
        return
    if not _allowed(role, scope, needed, collection):
        assert code == "PERMISSION_DENIED", (rpc, cell, result)
        assert _stats_before(world) == faces_before  # a refused call changed nothing
        return
    if rpc in ALLOWED_CODE:
        assert code == ALLOWED_CODE[rpc], (rpc, cell, result)
    elif check is None:  # the answer an admin for everything gets
        expected, _ = _run(call, world.admin, world, cell)
        assert code == expected and code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"), (rpc, cell, result)
    else:
        assert code == OK, (rpc, cell, result)
        assert check(result, world, cell), (rpc, cell, result)


@pytest.mark.parametrize(("role", "scope"), [c for c in CELLS if c[0] in ROLES], ids=lambda v: str(v))
def test_enroll_stream_checks_the_scope_of_every_message(world: World, role: str, scope: str) -> None:
    """Message 0 goes to "ma", message 1 to "mb": each is authorised on its own collection."""
    cell = _cell_name(role, scope)
    items = [
        {"collection": "ma", "subject_id": f"pm-{cell}", "embeddings": [(world.vector, world.model_id)]},
        {"collection": "mb", "subject_id": f"pm-{cell}", "embeddings": [(world.vector, world.model_id)]},
    ]
    with Client(world.address, world.keys[(role, scope)]) as client:
        code, result = _run(lambda c, w, _cell: c.enroll_stream(items), client, world, cell)
    ok_a = _allowed(role, scope, "write", "ma")
    ok_b = _allowed(role, scope, "write", "mb")
    if ok_a and ok_b:
        assert code == OK and result.enrolled == 2
    else:
        # The first message it may not write ends the stream; what came before it stays committed.
        assert code == "PERMISSION_DENIED", result
        assert result.enrolled == (1 if ok_a else 0)
    stored = {c: {s.subject_id for s in world.admin.list_subjects(c, page_size=1000).subjects} for c in ("ma", "mb")}
    assert (f"pm-{cell}" in stored["ma"]) == ok_a
    assert (f"pm-{cell}" in stored["mb"]) == (ok_a and ok_b)


def test_health_and_reflection_need_no_key(world: World) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(world.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
