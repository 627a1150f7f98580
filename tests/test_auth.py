"""API keys, roles and collection scopes through a real gRPC server; admin key bootstrap; keys CLI; TLS/mTLS."""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sqlite3
import stat
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from embeddings import errors
from embeddings.errors import InvalidInput, NotFound, Unauthenticated
from service import auth
from service.auth import (
    AuthInterceptor,
    KeyStore,
    authorize,
    current_principal,
    ensure_admin_key,
    visible_collections,
)
from service.errors import ErrorInterceptor
from service.logs import configure_logging

ROOT = Path(__file__).resolve().parents[1]


# --- a tiny real server: methods that check the role and collection the request names -------------
def _read(request: bytes, context) -> bytes:
    authorize(request.decode() or None, "read")
    return current_principal().key_id.encode()


def _write(request: bytes, context) -> bytes:
    authorize(request.decode(), "write")
    return b"written"


def _admin(request: bytes, context) -> bytes:
    authorize(request.decode() or None, "admin")
    return b"administered"


def _list(request: bytes, context) -> bytes:
    authorize(None, "read")
    return ",".join(visible_collections(["a", "b", "c"])).encode()


def _stream(request: bytes, context):
    authorize(None, "read")
    for _ in range(3):
        yield current_principal().key_id.encode()  # the principal is bound for every step of the stream


def _start(keystore: KeyStore | None, *, enabled: bool = True, credentials=None) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[ErrorInterceptor(), AuthInterceptor(keystore, enabled=enabled)],
    )
    handlers = {
        "Read": grpc.unary_unary_rpc_method_handler(_read),
        "Write": grpc.unary_unary_rpc_method_handler(_write),
        "Admin": grpc.unary_unary_rpc_method_handler(_admin),
        "List": grpc.unary_unary_rpc_method_handler(_list),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    target = "localhost:0" if credentials is not None else "127.0.0.1:0"
    port = server.add_secure_port(target, credentials) if credentials is not None else server.add_insecure_port(target)
    server.start()
    return server, port


class Caller:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def __call__(self, method: str, arg: str = "", key: str | None = None) -> bytes:
        metadata = (("authorization", f"Bearer {key}"),) if key is not None else None
        return self.channel.unary_unary(f"/test.Echo/{method}")(arg.encode(), metadata=metadata, timeout=10)

    def stream(self, key: str) -> list[bytes]:
        return list(self.channel.unary_stream("/test.Echo/Stream")(b"", metadata=(("authorization", f"Bearer {key}"),), timeout=10))

    def code(self, method: str, arg: str = "", key: str | None = None) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            self(method, arg, key)
        return info.value.code()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("auth")
    store = KeyStore.open(data_dir)
    keys = {
        "admin": store.create(name="ops", role="admin", collections=["*"]),
        "read_a": store.create(name="reader of a", role="read", collections=["a"]),
        "write_a": store.create(name="writer of a", role="write", collections=["a"]),
        "write_ab": store.create(name="writer of a and b", role="write", collections=["a", "b"]),
        "admin_a": store.create(name="admin of a", role="admin", collections=["a"]),
    }
    server, port = _start(store)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield data_dir, store, {k: v[1] for k, v in keys.items()}, {k: v[0] for k, v in keys.items()}, Caller(channel), channel
    channel.close()
    server.stop(None)
    store.close()


def test_missing_wrong_and_malformed_keys_are_unauthenticated(setup):
    _dir, _store, secrets, _ids, call, channel = setup
    assert call.code("Read", "a") == grpc.StatusCode.UNAUTHENTICATED
    assert call.code("Read", "a", key="lf_" + "x" * 43) == grpc.StatusCode.UNAUTHENTICATED
    assert call.code("Read", "a", key=secrets["admin"] + "x") == grpc.StatusCode.UNAUTHENTICATED
    # A key without the Bearer scheme is not accepted either.
    raw = channel.unary_unary("/test.Echo/Read")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"a", metadata=(("authorization", secrets["admin"]),), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in call_details(call, "Read", "a")


def call_details(call: Caller, method: str, arg: str, key: str | None = None) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(method, arg, key)
    return info.value.details()


def test_roles_and_collection_scopes(setup):
    _dir, _store, keys, ids, call, _channel = setup
    assert call("Read", "a", key=keys["read_a"]) == ids["read_a"].encode()
    assert call("Read", "zzz", key=keys["admin"]) == ids["admin"].encode()  # "*" reaches every collection
    # read key writing
    assert call.code("Write", "a", key=keys["read_a"]) == grpc.StatusCode.PERMISSION_DENIED
    assert "role 'read'" in call_details(call, "Write", "a", keys["read_a"])
    # key of collection A touching B, reading or writing
    assert call.code("Read", "b", key=keys["read_a"]) == grpc.StatusCode.PERMISSION_DENIED
    assert call.code("Write", "b", key=keys["write_a"]) == grpc.StatusCode.PERMISSION_DENIED
    assert call("Write", "a", key=keys["write_a"]) == b"written"
    assert call("Write", "b", key=keys["write_ab"]) == b"written"
    assert call.code("Write", "c", key=keys["write_ab"]) == grpc.StatusCode.PERMISSION_DENIED
    # write implies read; admin needs admin; a scoped admin is admin on its collections only
    assert call("Read", "b", key=keys["write_ab"]) == ids["write_ab"].encode()
    assert call.code("Admin", "a", key=keys["write_a"]) == grpc.StatusCode.PERMISSION_DENIED
    assert call("Admin", "a", key=keys["admin_a"]) == b"administered"
    assert call.code("Admin", "b", key=keys["admin_a"]) == grpc.StatusCode.PERMISSION_DENIED
    assert call("Admin", "", key=keys["admin_a"]) == b"administered"
    # collection-less calls need only the role; listings are filtered to the key's collections
    assert call("Read", "", key=keys["read_a"]) == ids["read_a"].encode()
    assert call("List", key=keys["write_ab"]) == b"a,b"
    assert call("List", key=keys["admin"]) == b"a,b,c"


def test_principal_is_bound_through_a_response_stream(setup):
    _dir, _store, keys, ids, call, _channel = setup
    assert call.stream(keys["write_ab"]) == [ids["write_ab"].encode()] * 3
    assert call.stream(keys["read_a"]) == [ids["read_a"].encode()] * 3


def test_health_needs_no_key(setup):
    *_rest, channel = setup
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_revoke_from_another_process_takes_effect_without_restart(setup):
    data_dir, store, _keys, _ids, call, _channel = setup
    key_id, secret = store.create(name="short-lived", role="read", collections=["a"])
    assert call("Read", "a", key=secret) == key_id.encode()
    out = run_keys_cli_subprocess(data_dir, "revoke", key_id)
    assert json.loads(out)["revoked"] is True
    assert call.code("Read", "a", key=secret) == grpc.StatusCode.UNAUTHENTICATED
    assert call_details(call, "Read", "a", secret) == "API key revoked"


def run_keys_cli_subprocess(data_dir: Path, *argv: str) -> str:
    """The keys command in a separate process, as an operator would run it next to a live server."""
    code = (
        "import sys, argparse\n"
        "from service.cli import _common_parser, config_flags\n"
        "from service.commands import keys\n"
        "from service.config import load_config\n"
        "p = argparse.ArgumentParser(); sub = p.add_subparsers(dest='command', required=True)\n"
        "keys.register(sub, _common_parser())\n"
        "args = p.parse_args(sys.argv[1:])\n"
        "sys.exit(args.handler(args, load_config(config_flags(args))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "keys", argv[0], "--data-dir", str(data_dir), *argv[1:]],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def test_auth_disabled_allows_everything(tmp_path):
    server, port = _start(None, enabled=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = Caller(channel)
            assert call("Write", "anything") == b"written"
            assert call("Admin", "") == b"administered"
            assert call("List") == b"a,b,c"
    finally:
        server.stop(None)


def test_authorize_outside_a_call_fails_closed():
    assert current_principal() is None
    with pytest.raises(Unauthenticated):
        authorize("a", "read")
    assert visible_collections(["a"]) == []
    with pytest.raises(InvalidInput):
        authorize("a", "superuser")


# --- the key store itself -----------------------------------------------------------------------------
def test_keystore_stores_only_hashes_and_validates(tmp_path):
    store = KeyStore.open(tmp_path)
    key_id, secret = store.create(name="ci", role="write", collections=["a", " b ", "a"])
    assert secret.startswith("lf_") and len(secret) >= 40
    principal = store.authenticate(secret)
    assert (principal.key_id, principal.role, principal.collections) == (key_id, "write", ("a", "b"))
    store.close()
    # The secret appears nowhere in the database files.
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("keys.sqlite3*"))
    assert secret.encode() not in blob and key_id.encode() in blob
    rows = sqlite3.connect(tmp_path / "keys.sqlite3").execute("SELECT secret_hash FROM api_keys").fetchall()
    assert rows and all(len(r[0]) == 64 for r in rows)
    store = KeyStore.open(tmp_path)
    with pytest.raises(InvalidInput):
        store.create(name="x", role="owner", collections=["a"])
    with pytest.raises(InvalidInput):
        store.create(name="x", role="read", collections=[" ", ""])
    with pytest.raises(NotFound):
        store.revoke("k_nope")
    with pytest.raises(Unauthenticated):
        store.authenticate("")
    info = store.revoke(key_id)
    assert info.revoked and store.revoke(key_id).revoked_at == info.revoked_at  # idempotent
    with pytest.raises(Unauthenticated, match="revoked"):
        store.authenticate(secret)
    assert [k.key_id for k in store.list(include_revoked=False)] == []
    store.close()


def test_principal_allows_follows_role_order_and_scope():
    p = auth.Principal(key_id="k", name="n", role="write", collections=("a",))
    assert p.allows("a", "read") and p.allows("a", "write") and not p.allows("a", "admin")
    assert not p.allows("b", "read") and p.allows(None, "write")
    star = auth.Principal(key_id="k", name="n", role="read", collections=("*",))
    assert star.allows("anything", "read") and not star.allows("anything", "write")


# --- admin key bootstrap ---------------------------------------------------------------------------------
def test_first_start_writes_admin_key_0600_and_never_logs_it(tmp_path, caplog):
    stream = io.StringIO()
    handler = configure_logging("json", stream=stream)
    try:
        with caplog.at_level(logging.DEBUG):
            store = KeyStore.open(tmp_path)
            path = ensure_admin_key(store, tmp_path)
    finally:
        logging.getLogger().removeHandler(handler)
    assert path == tmp_path / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    principal = store.authenticate(secret)
    assert principal.role == "admin" and principal.all_collections
    logged = caplog.text + stream.getvalue()
    assert str(path) in logged  # the path is logged ...
    assert secret not in logged  # ... the key never
    assert all(secret not in str(r.args) for r in caplog.records)
    # Second start: nothing new, the file is untouched.
    assert ensure_admin_key(store, tmp_path) is None
    assert path.read_text().strip() == secret and len(store.list()) == 1
    store.close()


def test_provided_admin_key_file_is_imported_idempotently(tmp_path, caplog):
    key_file = tmp_path / "mounted-secret"
    secret = "Zq7vN2pL9xR4tW8yB3mK6cF1hJ5dS0gA"  # 32 characters, as `openssl rand -base64 24` makes
    key_file.write_text(secret + "\n")
    store = KeyStore.open(tmp_path / "data")
    with caplog.at_level(logging.DEBUG):
        assert ensure_admin_key(store, tmp_path / "data", provided_key_file=key_file) is None
        assert ensure_admin_key(store, tmp_path / "data", provided_key_file=key_file) is None
    assert secret not in caplog.text
    assert not (tmp_path / "data" / "admin.key").exists()
    assert store.authenticate(secret).role == "admin" and len(store.list()) == 1
    key_file.write_text("short")
    with pytest.raises(InvalidInput):
        ensure_admin_key(store, tmp_path / "data", provided_key_file=key_file)
    store.close()


SHIPPED_PLACEHOLDER = "REPLACE-ME-with-at-least-32-random-characters"


def test_shipped_secret_placeholder_is_the_one_refused(tmp_path):
    # The test must follow the manifest: if its text changes, this still checks what ships.
    text = (ROOT / "deploy" / "k8s" / "secret.yaml").read_text()
    assert f'admin.key: "{SHIPPED_PLACEHOLDER}"' in text


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (SHIPPED_PLACEHOLDER, "placeholder text"),
        ("change-me-please-to-a-random-value-0123456789", "placeholder text"),
        ("a" * 48, "too predictable"),
        ("abc" * 16, "too predictable"),
        ("0123456789abcdefghijklmn" * 2, "too predictable"),  # one unit, repeated
        ("Zq7vN2pL9xR4tW8yB3mK6cF1hJ5d", "at least 32 characters"),
    ],
)
def test_placeholder_short_and_low_entropy_admin_keys_are_refused_at_start(tmp_path, secret, why):
    key_file = tmp_path / "admin.key"
    key_file.write_text(secret + "\n")
    with KeyStore.open(tmp_path / "data") as store:
        with pytest.raises(InvalidInput, match=why) as info:
            ensure_admin_key(store, tmp_path / "data", provided_key_file=key_file)
        assert str(key_file) in str(info.value) and "openssl rand" in str(info.value)
        assert store.list() == []  # nothing was stored


def test_random_keys_of_the_documented_recipes_are_accepted(tmp_path):
    import secrets

    with KeyStore.open(tmp_path) as store:
        for i in range(50):  # the entropy estimate must not refuse real random keys by bad luck
            for secret in (secrets.token_hex(16), secrets.token_urlsafe(32), secrets.token_urlsafe(48)):
                store.import_key(secret, name=f"k{i}", role="read", collections=["*"])
        assert len(store.list()) == 150


def test_rotating_the_mounted_admin_key_revokes_the_old_one_and_a_revoked_key_stays_out(tmp_path, caplog):
    import secrets

    data = tmp_path / "data"
    key_file = tmp_path / "admin.key"
    old, new = secrets.token_urlsafe(36), secrets.token_urlsafe(36)
    with KeyStore.open(data) as store:
        key_file.write_text(old)
        ensure_admin_key(store, data, provided_key_file=key_file)
        old_id = store.authenticate(old).key_id
        key_file.write_text(new)  # the Secret was rotated; the pod restarts
        with caplog.at_level(logging.INFO):
            ensure_admin_key(store, data, provided_key_file=key_file)
        new_id = store.authenticate(new).key_id
        with pytest.raises(Unauthenticated, match="revoked"):
            store.authenticate(old)
        assert f"revoked {old_id}" in caplog.text and f"active as {new_id}" in caplog.text
        # Mounting the revoked key again neither brings it back nor is logged as active.
        key_file.write_text(old)
        caplog.clear()
        with caplog.at_level(logging.INFO), pytest.raises(InvalidInput, match=f"revoked \\(key id {old_id}\\)"):
            ensure_admin_key(store, data, provided_key_file=key_file)
        assert "active" not in caplog.text
        with pytest.raises(Unauthenticated):
            store.authenticate(old)
        assert store.authenticate(new).key_id == new_id
        assert [k.key_id for k in store.list(include_revoked=False)] == [new_id]


# --- keys CLI --------------------------------------------------------------------------------------------
def run_keys_cli(data_dir: Path, *argv: str) -> int:
    from service.cli import _common_parser, config_flags
    from service.commands import keys
    from service.config import load_config

    parser = argparse.ArgumentParser()
    keys.register(parser.add_subparsers(dest="command", required=True), _common_parser())
    args = parser.parse_args(["keys", argv[0], "--data-dir", str(data_dir), *argv[1:]])
    return args.handler(args, load_config(config_flags(args), env={}))


def test_keys_cli_create_list_revoke(tmp_path, capsys):
    assert run_keys_cli(tmp_path, "create", "--role", "write", "--collections", "a,b", "--name", "ingest") == 0
    created = json.loads(capsys.readouterr().out)
    assert created["role"] == "write" and created["collections"] == ["a", "b"] and created["name"] == "ingest"
    secret = created.pop("secret")
    with KeyStore.open(tmp_path) as store:
        assert store.authenticate(secret).key_id == created["key_id"]
    assert run_keys_cli(tmp_path, "list") == 0
    listed = capsys.readouterr().out
    assert secret not in listed and "secret" not in listed
    assert [k["key_id"] for k in json.loads(listed)] == [created["key_id"]]
    assert run_keys_cli(tmp_path, "revoke", created["key_id"]) == 0
    assert json.loads(capsys.readouterr().out)["revoked"] is True
    with KeyStore.open(tmp_path) as store, pytest.raises(Unauthenticated):
        store.authenticate(secret)
    with pytest.raises(NotFound):
        run_keys_cli(tmp_path, "revoke", "k_missing")


# --- TLS and mutual TLS ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost\n")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=latentface-test-ca")
    for name in ("server", "client"):
        ssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={'localhost' if name == 'server' else 'client'}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return d


def test_tls_and_mutual_tls(certs, tmp_path):
    from service.tls import channel_credentials, server_credentials

    store = KeyStore.open(tmp_path)
    _id, secret = store.create(name="t", role="read", collections=["*"])
    # Plain TLS: a client trusting the CA gets through (and the key is still checked).
    server, port = _start(store, credentials=server_credentials(certs / "server.pem", certs / "server.key"))
    try:
        with grpc.secure_channel(f"localhost:{port}", channel_credentials(certs / "ca.pem")) as channel:
            assert Caller(channel)("Read", "x", key=secret) == _id.encode()
            assert Caller(channel).code("Read", "x") == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(None)
    # Mutual TLS: without a client certificate the handshake fails; with one signed by the CA it works.
    mtls = server_credentials(certs / "server.pem", certs / "server.key", certs / "ca.pem")
    server, port = _start(store, credentials=mtls)
    try:
        with grpc.secure_channel(f"localhost:{port}", channel_credentials(certs / "ca.pem")) as channel:
            assert Caller(channel).code("Read", "x", key=secret) == grpc.StatusCode.UNAVAILABLE
        creds = channel_credentials(certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key")
        with grpc.secure_channel(f"localhost:{port}", creds) as channel:
            assert Caller(channel)("Read", "x", key=secret) == _id.encode()
    finally:
        server.stop(None)
        store.close()
    with pytest.raises(InvalidInput, match="not a PEM"):
        server_credentials(certs / "san.ext", certs / "server.key")
    with pytest.raises(InvalidInput, match="cannot read"):
        server_credentials(certs / "missing.pem", certs / "server.key")



# --- the real latentface server and client --------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.args!r}")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from service.config import load_config
    from service.server import create_server

    data_dir = tmp_path_factory.mktemp("real-auth")
    config = load_config({"data_dir": str(data_dir), "weights": "random", "offline": True, "server.port": 0}, env={})
    collect, stream = _Collect(), io.StringIO()
    level = logging.getLogger().level
    json_handler = configure_logging("json", stream=stream, level=logging.DEBUG)
    logging.getLogger().addHandler(collect)
    try:
        srv, port = create_server(config)
        srv.start()
    finally:
        logging.getLogger().removeHandler(collect)
        logging.getLogger().removeHandler(json_handler)
        logging.getLogger().setLevel(level)
    yield srv, port, data_dir, "\n".join(collect.lines) + stream.getvalue()
    srv.stop(2.0)


def test_real_server_admin_key_file_and_logs(real):
    srv, _port, data_dir, logs = real
    path = data_dir / "admin.key"
    assert srv.admin_key_path == path and stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert str(path) in logs and secret not in logs


def test_real_server_keys_roles_and_scopes(real):
    from service.client import Client

    srv, port, data_dir, _logs = real
    address = f"127.0.0.1:{port}"
    admin_secret = (data_dir / "admin.key").read_text().strip()
    store = srv.keystore
    _r, read_a = store.create(name="read a", role="read", collections=["a"])
    _w, write_a = store.create(name="write a", role="write", collections=["a"])
    revoked_id, revoked = store.create(name="gone", role="admin", collections=["*"])
    model_id = srv.engine.pipeline.model_id
    vector = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    vector /= np.linalg.norm(vector)
    with Client(address, admin_secret) as admin:
        admin.create_collection("a")
        admin.create_collection("b")
        assert [c.name for c in admin.list_collections()] == ["a", "b"]
    for key in (None, "lf_" + "0" * 43):
        with Client(address, key) as c, pytest.raises(Unauthenticated):
            c.list_collections()
    with Client(address, revoked) as c:
        assert {x.name for x in c.list_collections()} == {"a", "b"}
        run_keys_cli_subprocess(data_dir, "revoke", revoked_id)  # the operator's CLI, another process
        with pytest.raises(Unauthenticated):
            c.list_collections()
    with Client(address, read_a) as c:
        assert [x.name for x in c.list_collections()] == ["a"]  # filtered to the key's collections
        assert c.collection_stats("a").faces == 0
        with pytest.raises(errors.PermissionDenied):
            c.enroll("a", "s1", embeddings=[(vector, model_id)])  # read key writing
        with pytest.raises(errors.PermissionDenied):
            c.collection_stats("b")  # key of A reading B
    with Client(address, write_a) as c:
        assert c.enroll("a", "s1", embeddings=[(vector, model_id)]).created_subject
        with pytest.raises(errors.PermissionDenied):
            c.enroll("b", "s1", embeddings=[(vector, model_id)])  # key of A writing B
        with pytest.raises(errors.PermissionDenied):
            c.delete_collection("a")  # write is not admin
    with Client(address, admin_secret) as admin:
        assert admin.collection_stats("a").faces == 1 and admin.collection_stats("b").faces == 0
