"""Issue #10 data-safety items seen by a client: a real server on port 0 over a real gallery (embedding
calls only, so no encoder is loaded), raw stubs so status codes and details are checked as sent."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from embeddings.config import GalleryConfig
from embeddings.engine import FaceEngine
from embeddings.gallery import Gallery
from service._generated.latentface.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    common_pb2,
    face_pb2,
    face_pb2_grpc,
)
from service.config import load_config
from service.server import create_server

DIM = 16


@pytest.fixture
def stubs(tmp_path):
    gallery = Gallery.open(GalleryConfig(data_dir=tmp_path / "data"), background=False)
    engine = FaceEngine(None, gallery)
    config = load_config({"data_dir": str(tmp_path / "data"), "server.port": 0, "server.auth": False}, env={})
    server, port = create_server(config, engine=engine)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield face_pb2_grpc.FaceServiceStub(channel), collection_pb2_grpc.CollectionServiceStub(channel), gallery
    finally:
        channel.close()
        server.stop(1.0)
        gallery.close()


def _embedding(rng: np.random.Generator) -> common_pb2.Embedding:
    v = rng.normal(size=DIM).astype(np.float32)
    return common_pb2.Embedding(vector=(v / np.linalg.norm(v)).tolist(), model_id="m")


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    return err.value.code(), err.value.details()


def test_bad_names_and_ids_are_invalid_argument_with_short_messages(stubs, rng) -> None:
    face, coll, _ = stubs
    for name in ("人脸识别" * 11, "n" * 200, "  ", "a\nb", "*", "a,b", "x" * 100_000):
        code, details = _code(coll.CreateCollection, collection_pb2.CreateCollectionRequest(name=name))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200, (code, len(details))
    coll.CreateCollection(collection_pb2.CreateCollectionRequest(name="c"), timeout=30)
    # A 200k-character subject id used to come back RESOURCE_EXHAUSTED (its echo overflowed the
    # 16 KiB metadata limit) after being stored.
    for subject in ("s" * 200_000, "tab\there\n", "\u200bzero-width"):
        req = face_pb2.EnrollRequest(collection="c", subject_id=subject, embeddings=[_embedding(rng)])
        code, details = _code(face.Enroll, req)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200, (code, len(details))
    code, details = _code(face.GetSubject, face_pb2.GetSubjectRequest(collection="q" * 100_000, subject_id="a"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200
    # A 26-digit face id overflowed SQLite's INTEGER: INTERNAL. No face can have it: NOT_FOUND.
    code, _ = _code(face.DeleteFace, face_pb2.DeleteFaceRequest(collection="c", face_id="1" * 26))
    assert code is grpc.StatusCode.NOT_FOUND


def test_request_id_reuse_for_another_request_is_already_exists(stubs, rng) -> None:
    face, coll, gallery = stubs
    coll.CreateCollection(collection_pb2.CreateCollectionRequest(name="c"), timeout=30)
    e1, e2 = _embedding(rng), _embedding(rng)
    first = face.Enroll(face_pb2.EnrollRequest(collection="c", subject_id="alice", embeddings=[e1], request_id="R1"))
    again = face.Enroll(face_pb2.EnrollRequest(collection="c", subject_id="alice", embeddings=[e1], request_id="R1"))
    assert again.replayed and list(again.face_ids) == list(first.face_ids)
    req = face_pb2.EnrollRequest(collection="c", subject_id="bob", embeddings=[e1], request_id="R1")
    code, details = _code(face.Enroll, req)
    assert code is grpc.StatusCode.ALREADY_EXISTS and "R1" in details
    req = face_pb2.EnrollRequest(collection="c", subject_id="alice", embeddings=[e2], request_id="R1")
    assert _code(face.Enroll, req)[0] is grpc.StatusCode.ALREADY_EXISTS
    assert gallery.collection_stats("c").faces == 1
    # Deleted: the id no longer replays a face that is gone; the same request enrolls afresh.
    face.DeleteSubject(face_pb2.DeleteSubjectRequest(collection="c", subject_id="alice"), timeout=30)
    fresh = face.Enroll(face_pb2.EnrollRequest(collection="c", subject_id="alice", embeddings=[e1], request_id="R1"))
    assert not fresh.replayed and set(fresh.face_ids).isdisjoint(first.face_ids)
    assert [int(f) for f in fresh.face_ids] == gallery.face_ids("c")[0].tolist()



def test_a_served_data_dir_is_owner_only(tmp_path) -> None:
    """Under umask 022 the server's data dir is 0700 and every file in it 0600 (gallery, keys, jobs)."""
    import os
    import stat

    data = tmp_path / "data"
    old = os.umask(0o022)
    try:
        gallery = Gallery.open(GalleryConfig(data_dir=data), background=False)
        config = load_config({"data_dir": str(data), "server.port": 0, "server.auth": True}, env={})
        server, _ = create_server(config, engine=FaceEngine(None, gallery))
        server.stop(0.5)
        gallery.close()
    finally:
        os.umask(old)
    modes = {p.relative_to(data).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in data.rglob("*")}
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {"gallery.sqlite3", "keys.sqlite3", "jobs.sqlite3"} <= set(modes)
    for path, mode in modes.items():
        assert mode == (0o700 if (data / path).is_dir() else 0o600), (path, oct(mode))


def test_no_long_input_is_echoed_by_the_service_layer(tmp_path) -> None:
    """Auth and wire conversion run before the domain's checks: their messages echo a short prefix too."""
    gallery = Gallery.open(GalleryConfig(data_dir=tmp_path / "data"), background=False)
    config = load_config({"data_dir": str(tmp_path / "data"), "server.port": 0, "server.auth": True}, env={})
    server, port = create_server(config, engine=FaceEngine(None, gallery))
    server.start()
    try:
        _, secret = server.keystore.create(name="scoped", role="write", collections=["mine"])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        face = face_pb2_grpc.FaceServiceStub(channel)
        meta = (("authorization", f"Bearer {secret}"),)
        with pytest.raises(grpc.RpcError) as err:
            face.GetSubject(face_pb2.GetSubjectRequest(collection="q" * 100_000, subject_id="a"), metadata=meta, timeout=30)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED and len(err.value.details()) < 200
        with pytest.raises(grpc.RpcError) as err:
            face.DeleteFace(face_pb2.DeleteFaceRequest(collection="mine", face_id="x" * 100_000), metadata=meta, timeout=30)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and len(err.value.details()) < 200
        channel.close()
    finally:
        server.stop(0.5)
        gallery.close()


def test_local_cli_beside_a_running_server_is_refused_naming_it(tmp_path, capsys) -> None:
    """A local-mode CLI next to a server would snapshot an index without the server's writes and
    truncate the log past them; it now exits 4 (UNAVAILABLE) and names the holder."""
    import os

    from service.cli import main

    data = tmp_path / "data"
    with Gallery.open(GalleryConfig(data_dir=data), background=False) as g:
        g.create_collection("c")
        assert main(["collections", "list", "--data-dir", str(data)]) == 4
        err = capsys.readouterr().err
        assert f"is in use by pid {os.getpid()}" in err and "--server" in err
    assert main(["collections", "list", "--data-dir", str(data)]) == 0
    assert '"name": "c"' in capsys.readouterr().out
