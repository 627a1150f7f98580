"""AnalysisService end to end: a real server on port 0, the real client, real analysis and audit jobs."""

from __future__ import annotations

import csv
import json
import threading
import time

import numpy as np
import pytest

from embeddings import errors
from embeddings.synthetic.groups import make_group_embeddings
from service.client import Client
from service.config import load_config
from service.server import create_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("analysis-data")
    config = load_config(
        {"data_dir": str(data_dir), "weights": "random", "offline": True, "server.port": 0}, env={}
    )
    srv, _port = create_server(config)
    srv.start()
    yield srv
    srv.stop(2.0)


@pytest.fixture(scope="module")
def admin(server):
    with Client(f"127.0.0.1:{server.port}", server.admin_key_path.read_text().strip()) as c:
        yield c


@pytest.fixture(scope="module")
def key_for(server):
    """Make a client holding a new key of ``role`` on ``collections``."""
    clients = []

    def make(role: str, collections: list[str]) -> Client:
        _id, secret = server.keystore.create(name=f"{role}-{collections}", role=role, collections=collections)
        clients.append(Client(f"127.0.0.1:{server.port}", secret))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


@pytest.fixture(scope="module")
def embeddings_file(tmp_path_factory):
    """60 labelled embeddings (identities + a planted minority group) as .npy + labels.csv."""
    d = tmp_path_factory.mktemp("dataset")
    ds = make_group_embeddings(n=60, images_per_identity=4, shares={"majority": 0.7, "minority": 0.3}, seed=0)
    np.save(d / "emb.npy", ds.vectors)
    with open(d / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "identity", "group"])
        w.writerows(zip(ds.ids, ds.identities, ds.groups["group"], strict=True))
    return (str(d / "emb.npy"), str(d / "labels.csv")), ds


def test_analysis_then_audit_end_to_end(admin, embeddings_file, server):
    files, ds = embeddings_file
    job = admin.start_analysis(embeddings=files, method="histogram", latent_dim=4, n_vaes=2, max_weight_ratio=0, seed=0)
    assert job.kind == "analysis" and job.state in ("QUEUED", "RUNNING")
    seen = list(admin.watch_job(job.id, timeout=240))
    assert seen[-1].state == "DONE", seen[-1].error
    progress = [j.progress for j in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len(seen) >= 3  # queued/running, at least one progress step, done
    done = admin.get_job(job.id)
    assert set(done.artifacts) >= {"weights.csv", "clusters.json", "summary.json"}
    assert done.finished_at is not None and done.finished_at >= done.created_at

    weights = admin.get_report(job.id, "weights.csv")
    assert weights.content_type.startswith("text/csv")
    on_disk = (server.jobs.jobs_dir / job.id / "weights.csv").read_bytes()
    assert weights.data == on_disk
    rows = list(csv.DictReader(weights.data.decode().splitlines()))
    assert sorted(r["id"] for r in rows) == sorted(ds.ids.tolist())
    summary = json.loads(admin.get_report(job.id, "summary.json").data)
    assert summary["params"]["n_vaes"] == 2 and summary["params"]["max_weight_ratio"] is None

    audit = admin.start_audit(embeddings=files, group_by=["group"], target_fmr=0.01, analysis_job_id=job.id, seed=1)
    final = list(admin.watch_job(audit.id, timeout=240))[-1]
    assert final.state == "DONE", final.error
    assert set(final.artifacts) >= {"report.json", "report.html"}
    report = admin.get_report(audit.id, "report.json")
    assert report.content_type == "application/json"
    assert "group" in json.dumps(json.loads(report.data))
    html = admin.get_report(audit.id, "report.html")
    assert html.content_type.startswith("text/html") and b"<html" in html.data.lower()
    # The analysis' most under-represented cluster is explained on the page: its best-aligned group value.
    best = json.loads(report.data)["latent"]["clusters"][0]["top_alignment"][0]
    assert best["column"] == "group" and f"group = {best['value']} <span".encode() in html.data


def test_cancel_running_and_queued_jobs(admin, embeddings_file, server):
    files, _ds = embeddings_file
    # The server runs one job at a time: while a gated job holds the worker, an RPC-started one queues.
    gate = threading.Event()
    blocker = server.jobs.submit("analysis", {"dataset": {"embeddings_path": "-"}}, lambda p, s, o: gate.wait(30) and {})
    queued = admin.start_analysis(embeddings=files, method="knn", latent_dim=4, seed=6)
    assert admin.get_job(queued.id).state == "QUEUED"
    assert admin.cancel_job(queued.id).state == "CANCELLED"
    gate.set()
    assert server.jobs.wait(blocker, timeout_s=30).state == "DONE"
    running = admin.start_analysis(embeddings=files, method="knn", latent_dim=4, seed=5)
    deadline = time.monotonic() + 60
    while admin.get_job(running.id).state == "QUEUED" and time.monotonic() < deadline:
        time.sleep(0.02)
    admin.cancel_job(running.id)
    final = list(admin.watch_job(running.id, timeout=120))[-1]
    assert (final.state, final.error) == ("CANCELLED", "") and final.finished_at is not None
    assert admin.get_job(queued.id).state == "CANCELLED"
    with pytest.raises(errors.InvalidInput, match="DONE"):
        admin.get_report(running.id, "weights.csv")


def test_bad_requests_map_to_statuses(admin, embeddings_file, tmp_path):
    files, _ds = embeddings_file
    with pytest.raises(errors.NotFound):
        admin.get_job("0" * 32)
    with pytest.raises(errors.NotFound):
        admin.cancel_job("no-such-job")
    with pytest.raises(errors.InvalidInput, match="not a file"):
        admin.start_analysis(embeddings=(str(tmp_path / "missing.npy"), files[1]))
    with pytest.raises(errors.InvalidInput, match="not a directory"):
        admin.start_analysis(image_folder=str(tmp_path / "nowhere"))
    with pytest.raises(errors.InvalidInput, match="unknown method"):
        admin.start_analysis(embeddings=files, method="astrology")
    with pytest.raises(errors.InvalidInput, match="latent_dim"):
        admin.start_analysis(embeddings=files, latent_dim=0)
    for n_vaes in (0, 11):
        with pytest.raises(errors.InvalidInput, match="n_vaes"):
            admin.start_analysis(embeddings=files, n_vaes=n_vaes)
    with pytest.raises(errors.InvalidInput, match="max_weight_ratio"):
        admin.start_analysis(embeddings=files, max_weight_ratio=0.5)
    with pytest.raises(errors.InvalidInput, match="target_fmr"):
        admin.start_audit(embeddings=files, group_by=["group"], target_fmr=1.5)
    with pytest.raises(errors.NotFound):
        admin.start_audit(collection="no-such-collection", group_by=["group"])
    with pytest.raises(errors.NotFound):
        admin.start_audit(embeddings=files, group_by=["group"], analysis_job_id="f" * 32)


def test_failed_job_reports_the_domain_error(admin, tmp_path):
    # A well-formed request whose data is bad fails as a job, with the domain's message.
    np.save(tmp_path / "few.npy", np.eye(5, 8, dtype=np.float32))
    (tmp_path / "few.csv").write_text("id\n" + "\n".join(f"r{i}" for i in range(5)) + "\n")
    job = admin.start_analysis(embeddings=(str(tmp_path / "few.npy"), str(tmp_path / "few.csv")))
    final = list(admin.watch_job(job.id, timeout=60))[-1]
    assert final.state == "FAILED" and "at least 50" in final.error


def test_rights_on_jobs(admin, key_for, embeddings_file, server):
    files, _ds = embeddings_file
    reader = key_for("read", ["*"])
    scoped_admin = key_for("admin", ["a"])
    with pytest.raises(errors.PermissionDenied):
        reader.start_analysis(embeddings=files)  # read key starting a job
    with pytest.raises(errors.PermissionDenied, match="all collections"):
        scoped_admin.start_analysis(embeddings=files)  # server files need an all-collections admin
    with pytest.raises(errors.PermissionDenied):
        scoped_admin.start_audit(collection="b", group_by=["group"])  # admin of a touching b
    job = admin.start_analysis(embeddings=files, latent_dim=2)
    admin.cancel_job(job.id)
    with pytest.raises(errors.PermissionDenied):
        scoped_admin.get_job(job.id)
    with Client(f"127.0.0.1:{server.port}") as anonymous, pytest.raises(errors.Unauthenticated):
        anonymous.get_job(job.id)


def test_watch_follows_progress_of_a_live_job(server, admin):
    # The manager's watch through the RPC stream: updates arrive as the job reports them.
    gate = threading.Event()

    def fn(progress, should_stop, out_dir):
        for i in range(3):
            gate.wait(10)
            progress((i + 1) / 3, f"step {i + 1}")
            time.sleep(0.3)
        (out_dir / "x.json").write_text("{}")
        return {"x.json": out_dir / "x.json"}

    job_id = server.jobs.submit("analysis", {"dataset": {"embeddings_path": "-"}}, fn)
    messages = []
    for job in admin.watch_job(job_id, timeout=60):
        messages.append((job.state, job.message))
        gate.set()
    assert messages[-1] == ("DONE", "done")
    assert [m for s, m in messages if s == "RUNNING" and m.startswith("step")] == ["step 1", "step 2", "step 3"]
    assert admin.get_report(job_id, "x.json").data == b"{}"


def test_analysis_and_audit_of_a_collection(admin, server):
    # The collection's faces are the dataset: ids = face ids, identities = subjects, groups = theirs.
    ds = make_group_embeddings(n=60, images_per_identity=4, shares={"majority": 0.7, "minority": 0.3}, seed=2)
    server.engine.create_collection("team", threshold=0.31)
    face_ids = []
    for identity in sorted(set(ds.identities.tolist())):
        rows = ds.identities == identity
        [group] = set(ds.groups["group"][rows].tolist())
        result = server.engine.enroll_embeddings(
            "team", identity, ds.vectors[rows], "synthetic/v1", groups={"group": group}
        )
        face_ids += [str(f) for f in result.face_ids]

    job = admin.start_analysis(collection="team", method="histogram", latent_dim=4, seed=0)
    final = list(admin.watch_job(job.id, timeout=240))[-1]
    assert final.state == "DONE", final.error
    rows = list(csv.DictReader(admin.get_report(job.id, "weights.csv").data.decode().splitlines()))
    assert [r["id"] for r in rows] == face_ids

    audit = admin.start_audit(collection="team", group_by=["group"], seed=1)
    final = list(admin.watch_job(audit.id, timeout=240))[-1]
    assert final.state == "DONE", final.error
    report = json.loads(admin.get_report(audit.id, "report.json").data)
    assert (report["threshold"], report["threshold_source"]) == (0.31, "given")  # the collection's own
    assert set(report["groups"]) == {"majority", "minority"}
    assert sum(g["n_identities"] for g in report["groups"].values()) == len(set(ds.identities.tolist()))


@pytest.fixture(scope="module")
def identities_file(tmp_path_factory):
    """100 embeddings of 25 identities (4 faces each), with and without the labels' identity column."""
    d = tmp_path_factory.mktemp("identities")
    ds = make_group_embeddings(
        n=100, images_per_identity=4, shares={"majority": 0.8, "minority": 0.2}, seed=3
    )
    np.save(d / "emb.npy", ds.vectors)
    for name, with_identity in (("labels.csv", True), ("no_identity.csv", False)):
        with open(d / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "identity", "group"] if with_identity else ["id", "group"])
            for i, identity, group in zip(ds.ids, ds.identities, ds.groups["group"], strict=True):
                w.writerow([i, identity, group] if with_identity else [i, group])
    return str(d / "emb.npy"), str(d / "labels.csv"), str(d / "no_identity.csv"), ds


def _jobs_on_server(server) -> tuple[list[str], list[str]]:
    """Every job record, and every job folder on disk."""
    records = sorted(j.id for j in server.jobs.list(limit=10_000))
    return records, sorted(p.name for p in server.jobs.jobs_dir.iterdir())


def test_identity_aware_with_an_ess_floor(admin, identities_file, server):
    npy, labels, _no_identity, ds = identities_file
    job = admin.start_analysis(
        embeddings=(npy, labels), latent_dim=4, identity_aware=True, min_ess=0.9, seed=0
    )
    recorded = server.jobs.get(job.id).params
    assert (recorded["identity_aware"], recorded["min_ess"]) == (True, 0.9)
    final = list(admin.watch_job(job.id, timeout=240))[-1]
    assert final.state == "DONE", final.error
    summary = json.loads(admin.get_report(job.id, "summary.json").data)
    assert summary["params"]["identity_aware"] is True
    assert (summary["params"]["min_ess"], summary["params"]["identities"]) == (0.9, 25)
    # The 0.9 floor binds at the default α = 0, so it raised α.
    assert summary["params"]["alpha_effective"] > summary["params"]["alpha"] == 0.0

    rows = list(csv.DictReader(admin.get_report(job.id, "weights.csv").data.decode().splitlines()))
    weight = {r["id"]: float(r["weight"]) for r in rows}
    per_identity: dict[str, list[float]] = {}
    for i, identity in zip(ds.ids.tolist(), ds.identities.tolist(), strict=True):
        per_identity.setdefault(identity, []).append(weight[i])
    assert len(per_identity) == 25
    for faces in per_identity.values():  # one weight per identity, shared equally by its 4 faces
        assert len(faces) == 4 and max(faces) - min(faces) <= 1e-12 * max(faces)
    mass = np.array([sum(faces) for faces in per_identity.values()])
    assert len({round(m, 12) for m in mass}) > 1  # identities still differ
    assert mass.sum() ** 2 / (mass**2).sum() >= 0.9 * 25 * (1 - 1e-3)  # the ESS floor counts identities


def test_min_ess_zero_turns_the_floor_off_and_absent_is_the_default(admin, identities_file, server):
    npy, labels, _no_identity, _ds = identities_file
    off = admin.start_analysis(embeddings=(npy, labels), latent_dim=2, min_ess=0, seed=0)
    default = admin.start_analysis(embeddings=(npy, labels), latent_dim=2, seed=0)
    for job in (off, default):
        admin.cancel_job(job.id)
    off_params, default_params = server.jobs.get(off.id).params, server.jobs.get(default.id).params
    assert (off_params["min_ess"], off_params["identity_aware"]) == (None, False)
    assert (default_params["min_ess"], default_params["identity_aware"]) == (0.2, False)


def test_bad_min_ess_and_identity_aware_without_identities_write_nothing(admin, identities_file, server):
    npy, labels, no_identity, _ds = identities_file
    before = _jobs_on_server(server)
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(errors.InvalidInput, match=r"min_ess must be a share of N in \[0, 1\)"):
            admin.start_analysis(embeddings=(npy, labels), min_ess=bad)
    no_column = "identity_aware needs identity labels.*no 'identity' column"
    with pytest.raises(errors.InvalidInput, match=no_column):
        admin.start_analysis(embeddings=(npy, no_identity), identity_aware=True)
    # No new job and no folder of one (earlier tests' jobs may still make or tidy their own folders).
    after = _jobs_on_server(server)
    assert not set(after[0]) - set(before[0]) and set(after[1]) <= set(before[0]) | set(before[1])
    # The same file is fine when identities are not asked for.
    job = admin.start_analysis(embeddings=(npy, no_identity), identity_aware=False, latent_dim=2)
    admin.cancel_job(job.id)
    assert server.jobs.get(job.id).params["identity_aware"] is False


def test_component_share_zero_turns_it_off_and_absent_is_the_default(admin, identities_file, server):
    npy, labels, _no_identity, _ds = identities_file
    off = admin.start_analysis(embeddings=(npy, labels), latent_dim=2, component_share=0, seed=0)
    default = admin.start_analysis(embeddings=(npy, labels), latent_dim=2, seed=0)
    # Recorded as asked: absent stays None, so the domain's default for the method applies.
    assert server.jobs.get(off.id).params["component_share"] == 0.0
    assert server.jobs.get(default.id).params["component_share"] is None
    summaries = []
    for job in (off, default):
        final = list(admin.watch_job(job.id, timeout=240))[-1]
        assert final.state == "DONE", final.error
        summaries.append(json.loads(admin.get_report(job.id, "summary.json").data))
    off_params, default_params = (s["params"] for s in summaries)
    assert summaries[1]["method"] == "knn"
    assert off_params["component_share"] == 0.0 and "components" not in off_params
    assert default_params["component_share"] == 2.0 and default_params["components"] >= 1


def test_bad_component_share_writes_nothing(admin, identities_file, server):
    npy, labels, _no_identity, _ds = identities_file
    before = _jobs_on_server(server)
    for bad in (-1.0, 11.0, float("nan")):
        with pytest.raises(errors.InvalidInput, match=r"component_share must be in \[0, 10\]"):
            admin.start_analysis(embeddings=(npy, labels), component_share=bad)
    with pytest.raises(errors.InvalidInput, match="component_share does not apply to the histogram method"):
        admin.start_analysis(embeddings=(npy, labels), method="histogram", component_share=1)
    # No new job and no folder of one (earlier tests' jobs may still make or tidy their own folders).
    after = _jobs_on_server(server)
    assert not set(after[0]) - set(before[0]) and set(after[1]) <= set(before[0]) | set(before[1])
    # 0 is "off", which histogram is anyway: accepted.
    job = admin.start_analysis(embeddings=(npy, labels), method="histogram", component_share=0, latent_dim=2)
    admin.cancel_job(job.id)
    assert server.jobs.get(job.id).params["component_share"] == 0.0
