"""AnalysisService: latent-density analyses and fairness audits as background jobs.

Thin, like the other servicers: validate the request, check the caller's rights, hand a job
function to the :class:`~service.jobs.JobManager`, convert job records to ``Job`` messages.
The work itself is ``embeddings.latent.run_analysis`` / ``embeddings.audit.run_audit``.

Rights (see :mod:`service.auth`): a job over a collection needs an admin key for that
collection to start or cancel, and any key for that collection to read its status and
reports. A job over server files (an embeddings file or an image folder) reads the server's
file system, so it needs an admin key for all collections, for every operation.

An audit of a collection given no operating point runs at the collection's own threshold.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from embeddings.errors import InvalidInput, JobNotFound, LimitExceeded, PermissionDenied
from service._generated.latentface.v1 import analysis_pb2, analysis_pb2_grpc
from service.auth import authorize, current_principal
from service.jobs import JobInfo, JobManager, JobState
from service.servicers._common import require

__all__ = ["AnalysisServicer", "job_to_proto"]

log = logging.getLogger(__name__)

_STATE = {
    JobState.QUEUED: analysis_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: analysis_pb2.JOB_STATE_RUNNING,
    JobState.DONE: analysis_pb2.JOB_STATE_DONE,
    JobState.FAILED: analysis_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: analysis_pb2.JOB_STATE_CANCELLED,
}
_CONTENT_TYPES = {".json": "application/json", ".html": "text/html; charset=utf-8", ".csv": "text/csv; charset=utf-8"}
# Headroom under the message limit for the Report's other fields and framing.
_REPORT_OVERHEAD = 64 * 1024


def job_to_proto(info: JobInfo) -> analysis_pb2.Job:
    job = analysis_pb2.Job(
        id=info.id,
        kind=info.kind,
        state=_STATE[info.state],
        progress=info.progress,
        message=info.message,
        error=info.error or "",
        artifacts=sorted(info.artifacts),
    )
    job.created_at.FromNanoseconds(int(info.created_at * 1e9))
    if info.finished_at is not None:
        job.finished_at.FromNanoseconds(int(info.finished_at * 1e9))
    return job


def _content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _by_file_name(paths: dict[str, Path]) -> dict[str, Path]:
    # Artifacts are named by their file names (what GetReport takes), whatever keys the domain used.
    return {Path(p).name: Path(p) for p in paths.values()}


def _authorize_server_files() -> None:
    authorize(None, "admin")
    principal = current_principal()
    if principal is None or not principal.all_collections:
        raise PermissionDenied("jobs over server files need an admin key for all collections")


def _require_identities(source: dict[str, Any]) -> None:
    """Identity-aware weighting needs identities: an image folder (its sub-folders) and a collection
    (its subjects) always have them; an embeddings file needs an ``identity`` column."""
    from embeddings.dataset import label_columns

    if "labels_path" in source and "identity" not in label_columns(source["labels_path"]):
        raise InvalidInput(
            f"identity_aware needs identity labels, and {source['labels_path']!r} has no 'identity' column"
        )


class AnalysisServicer(analysis_pb2_grpc.AnalysisServiceServicer):
    """Implements ``latentface.v1.AnalysisService`` over a :class:`JobManager` and a FaceEngine."""

    def __init__(self, job_manager: JobManager, engine: Any, config: Any) -> None:
        self._jobs = job_manager
        self._engine = engine
        self._config = config
        self._max_report_bytes = int(config.server.max_message_bytes) - _REPORT_OVERHEAD

    # --- datasets ---------------------------------------------------------------------------------
    def _dataset_source(self, source: analysis_pb2.DatasetSource) -> dict[str, Any]:
        """Check the source and the caller's right to it; returns the JSON-able description recorded on the job."""
        kind = source.WhichOneof("source")
        if kind is None:
            raise InvalidInput("dataset is required: an image_folder, an embeddings file or a collection")
        if kind == "collection":
            name = source.collection
            authorize(name, "admin")
            self._engine.get_collection(name)  # CollectionNotFound → NOT_FOUND
            return {"collection": name}
        _authorize_server_files()
        if kind == "image_folder":
            folder = Path(source.image_folder)
            if not folder.is_dir():
                raise InvalidInput(f"image_folder {str(folder)!r} is not a directory on the server")
            return {"image_folder": str(folder)}
        emb = source.embeddings
        for what, path in (("embeddings_path", emb.embeddings_path), ("labels_path", emb.labels_path)):
            if not path or not Path(path).is_file():
                raise InvalidInput(f"{what} {path!r} is not a file on the server")
        return {"embeddings_path": emb.embeddings_path, "labels_path": emb.labels_path}

    def _load_dataset(self, source: dict[str, Any], progress, should_stop):  # noqa: ANN001, ANN202
        """Runs inside the job: the dataset the source describes (image folders report progress 0..1)."""
        from embeddings import dataset as ds

        if "embeddings_path" in source:
            return ds.load_embeddings(source["embeddings_path"], source["labels_path"])
        if "image_folder" in source:
            pipeline = getattr(self._engine, "pipeline", None)
            if pipeline is None:
                raise InvalidInput("this server has no face pipeline to embed an image folder")
            return ds.embed_image_folder(
                source["image_folder"],
                pipeline,
                cache_dir=Path(self._config.data_dir) / "cache" / "embeddings",
                progress=progress,
                should_stop=should_stop,
            )
        return self._engine.collection_dataset(source["collection"], progress=progress, should_stop=should_stop)

    def _scope_of(self, info: JobInfo) -> str | None:
        return info.params.get("dataset", {}).get("collection")

    def _authorize_job(self, job_id: str, role: str) -> JobInfo:
        info = self._jobs.get(require(job_id, "job_id"))
        collection = self._scope_of(info)
        if collection is None:
            _authorize_server_files()
        else:
            authorize(collection, role)
        return info

    # --- RPCs ----------------------------------------------------------------------------------------
    def StartAnalysis(self, request: analysis_pb2.StartAnalysisRequest, context: grpc.ServicerContext) -> analysis_pb2.Job:
        from embeddings.latent import (
            DEFAULT_ALPHA,
            DEFAULT_METHOD,
            DEFAULT_MIN_ESS,
            MAX_VAES,
            check_component_share,
            check_min_ess,
            run_analysis,
        )

        source = self._dataset_source(request.dataset)
        method = request.method or DEFAULT_METHOD
        if method not in DEFAULT_ALPHA:
            raise InvalidInput(f"unknown method {method!r}; choose from {', '.join(sorted(DEFAULT_ALPHA))}")
        alpha = request.alpha if request.HasField("alpha") else None
        if alpha is not None and alpha < 0:
            raise InvalidInput("alpha must be >= 0")
        latent_dim = request.latent_dim if request.HasField("latent_dim") else 32
        if not 1 <= latent_dim <= 512:
            raise InvalidInput("latent_dim must be in 1..512")
        n_vaes = request.n_vaes if request.HasField("n_vaes") else 1
        if not 1 <= n_vaes <= MAX_VAES:
            raise InvalidInput(f"n_vaes must be in 1..{MAX_VAES}")
        max_weight_ratio = request.max_weight_ratio if request.HasField("max_weight_ratio") else 50.0
        if not (max_weight_ratio == 0 or max_weight_ratio >= 1):
            raise InvalidInput("max_weight_ratio must be 0 (no cap) or >= 1")
        max_weight_ratio = None if max_weight_ratio == 0 else max_weight_ratio
        min_ess = request.min_ess if request.HasField("min_ess") else DEFAULT_MIN_ESS
        check_min_ess(min_ess)
        min_ess = min_ess or None  # 0 turns the floor off, as in the CLI
        # Absent = None: the method's default (the domain's DEFAULT_COMPONENT_SHARE), 0 = off.
        component_share = request.component_share if request.HasField("component_share") else None
        check_component_share(component_share, method)
        identity_aware = request.identity_aware
        if identity_aware:
            _require_identities(source)
        # One set of options: recorded with the job and passed to the run.
        options = {
            "method": method,
            "alpha": alpha,
            "latent_dim": latent_dim,
            "n_vaes": n_vaes,
            "max_weight_ratio": max_weight_ratio,
            "min_ess": min_ess,
            "component_share": component_share,
            "identity_aware": identity_aware,
            "seed": request.seed,
        }

        def analyse(dataset, progress, should_stop):
            return run_analysis(dataset, **options, progress=progress, should_stop=should_stop)

        return self._submit("analysis", {"dataset": source, **options}, self._dataset_job(source, analyse))

    def StartAudit(self, request: analysis_pb2.StartAuditRequest, context: grpc.ServicerContext) -> analysis_pb2.Job:
        from embeddings.audit import run_audit

        source = self._dataset_source(request.dataset)
        group_by = [g for g in request.group_by if g]
        point = request.WhichOneof("operating_point")
        target_fmr = request.target_fmr if point == "target_fmr" else 1e-3
        threshold = request.threshold if point == "threshold" else None
        if point is None and "collection" in source:
            # A collection decides matches at its own threshold: audit what is deployed (as the CLI does).
            threshold = self._engine.get_collection(source["collection"]).threshold
        if not 0 < target_fmr < 1:
            raise InvalidInput("target_fmr must be in (0, 1)")
        if threshold is not None and not -1 <= threshold <= 1:
            raise InvalidInput("threshold must be a cosine in [-1, 1]")
        analysis_dir = None
        if request.analysis_job_id:
            analysis = self._authorize_job(request.analysis_job_id, "read")
            if analysis.kind != "analysis" or analysis.state != JobState.DONE:
                raise InvalidInput(f"job {analysis.id} is not a finished analysis ({analysis.kind}, {analysis.state})")
            analysis_dir = self._jobs.jobs_dir / analysis.id
        options = {"group_by": group_by, "target_fmr": target_fmr, "threshold": threshold, "seed": request.seed}
        params = {"dataset": source, **options, "analysis_job_id": request.analysis_job_id or None}

        def audit(dataset, progress, should_stop):
            return run_audit(dataset, **options, analysis_dir=analysis_dir, progress=progress, should_stop=should_stop)

        return self._submit("audit", params, self._dataset_job(source, audit))

    def StartDebias(self, request: analysis_pb2.StartDebiasRequest, context: grpc.ServicerContext) -> analysis_pb2.Job:
        from embeddings.debias import run_debias
        from embeddings.latent import DEFAULT_ALPHA

        source = self._dataset_source(request.dataset)
        group_by = [g for g in request.group_by if g]
        if not group_by:
            raise InvalidInput("group_by needs at least one column")
        target_fmr = request.target_fmr if request.HasField("target_fmr") else 1e-3
        eval_fraction = request.eval_fraction if request.HasField("eval_fraction") else 0.3
        if not (0 < target_fmr < 1 and 0 < eval_fraction < 1):
            raise InvalidInput("target_fmr and eval_fraction must be in (0, 1)")
        adapter = {
            "out_dim": request.out_dim if request.HasField("out_dim") else 64,
            "hidden_dim": (request.hidden_dim or None) if request.HasField("hidden_dim") else 256,
            "epochs": request.epochs if request.HasField("epochs") else 14,
        }
        if not (1 <= adapter["out_dim"] <= 4096 and 1 <= adapter["epochs"] <= 1000 and (adapter["hidden_dim"] or 1) > 0):
            raise InvalidInput("out_dim must be in 1..4096, epochs in 1..1000 and hidden_dim >= 0")
        if request.method and request.method not in DEFAULT_ALPHA:
            raise InvalidInput(f"unknown method {request.method!r}; choose from {', '.join(sorted(DEFAULT_ALPHA))}")
        analysis = {"method": request.method} if request.method else {}
        options = {"group_by": group_by, "target_fmr": target_fmr, "eval_fraction": eval_fraction, "seed": request.seed}

        def debias(dataset, progress, should_stop):
            return run_debias(dataset, **options, adapter_params=adapter, analysis_params=analysis,
                              progress=progress, should_stop=should_stop)  # fmt: skip

        params = {"dataset": source, **options, "adapter": adapter, "analysis": analysis}
        return self._submit("debias", params, self._dataset_job(source, debias))

    def _dataset_job(self, source: dict[str, Any], run):  # noqa: ANN001
        """A job fn that loads ``source`` (its share of the progress bar), runs ``run`` and writes its artefacts."""
        load_share = 0.5 if "image_folder" in source else 0.05

        def job(progress, should_stop, out_dir: Path) -> dict[str, Path]:
            dataset = self._load_dataset(source, lambda f, m: progress(load_share * f, m), should_stop)
            result = run(dataset, lambda f, m: progress(load_share + (1 - load_share) * f, m), should_stop)
            return _by_file_name(result.write(out_dir))

        return job

    def _submit(self, kind: str, params: dict[str, Any], job) -> analysis_pb2.Job:  # noqa: ANN001
        principal = current_principal()
        params["created_by"] = principal.key_id if principal is not None else None
        job_id = self._jobs.submit(kind, params, job)
        log.info("started %s job %s", kind, job_id, extra={"job_id": job_id})
        return job_to_proto(self._jobs.get(job_id))

    def GetJob(self, request: analysis_pb2.GetJobRequest, context: grpc.ServicerContext) -> analysis_pb2.Job:
        return job_to_proto(self._authorize_job(request.job_id, "read"))

    def WatchJob(self, request: analysis_pb2.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[analysis_pb2.Job]:
        self._authorize_job(request.job_id, "read")
        # Ends when the job does, or as soon as the client goes away or its deadline passes.
        for info in self._jobs.watch(request.job_id, poll_s=0.25, stop=lambda: not context.is_active()):
            yield job_to_proto(info)

    def CancelJob(self, request: analysis_pb2.CancelJobRequest, context: grpc.ServicerContext) -> analysis_pb2.Job:
        self._authorize_job(request.job_id, "admin")
        return job_to_proto(self._jobs.cancel(request.job_id))

    def GetReport(self, request: analysis_pb2.GetReportRequest, context: grpc.ServicerContext) -> analysis_pb2.Report:
        info = self._authorize_job(request.job_id, "read")
        if info.state != JobState.DONE:
            raise InvalidInput(f"job {info.id} is {info.state}; reports exist once it is DONE")
        name = request.artifact or ("report.html" if "report.html" in info.artifacts else "")
        if not name:
            raise InvalidInput(f"artifact is required; this job has: {', '.join(sorted(info.artifacts))}")
        path = self._jobs.artifact_path(info.id, name)
        try:
            size = path.stat().st_size
            if size > self._max_report_bytes:
                raise LimitExceeded(f"{name} is {size} bytes, over the {self._max_report_bytes}-byte message limit")
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise JobNotFound(f"artifact {name} of job {info.id} is missing on the server") from exc
        return analysis_pb2.Report(job_id=info.id, artifact=name, content_type=_content_type(name), data=data)
