import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_DONE: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_DONE: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class EmbeddingsFile(_message.Message):
    __slots__ = ("embeddings_path", "labels_path")
    EMBEDDINGS_PATH_FIELD_NUMBER: _ClassVar[int]
    LABELS_PATH_FIELD_NUMBER: _ClassVar[int]
    embeddings_path: str
    labels_path: str
    def __init__(self, embeddings_path: _Optional[str] = ..., labels_path: _Optional[str] = ...) -> None: ...

class DatasetSource(_message.Message):
    __slots__ = ("image_folder", "embeddings", "collection")
    IMAGE_FOLDER_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    image_folder: str
    embeddings: EmbeddingsFile
    collection: str
    def __init__(self, image_folder: _Optional[str] = ..., embeddings: _Optional[_Union[EmbeddingsFile, _Mapping]] = ..., collection: _Optional[str] = ...) -> None: ...

class StartAnalysisRequest(_message.Message):
    __slots__ = ("dataset", "method", "alpha", "latent_dim", "seed", "n_vaes", "max_weight_ratio", "min_ess", "identity_aware", "component_share")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    N_VAES_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_ESS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_AWARE_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_SHARE_FIELD_NUMBER: _ClassVar[int]
    dataset: DatasetSource
    method: str
    alpha: float
    latent_dim: int
    seed: int
    n_vaes: int
    max_weight_ratio: float
    min_ess: float
    identity_aware: bool
    component_share: float
    def __init__(self, dataset: _Optional[_Union[DatasetSource, _Mapping]] = ..., method: _Optional[str] = ..., alpha: _Optional[float] = ..., latent_dim: _Optional[int] = ..., seed: _Optional[int] = ..., n_vaes: _Optional[int] = ..., max_weight_ratio: _Optional[float] = ..., min_ess: _Optional[float] = ..., identity_aware: _Optional[bool] = ..., component_share: _Optional[float] = ...) -> None: ...

class StartDebiasRequest(_message.Message):
    __slots__ = ("dataset", "group_by", "target_fmr", "eval_fraction", "out_dim", "hidden_dim", "epochs", "method", "seed")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FMR_FIELD_NUMBER: _ClassVar[int]
    EVAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    OUT_DIM_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    dataset: DatasetSource
    group_by: _containers.RepeatedScalarFieldContainer[str]
    target_fmr: float
    eval_fraction: float
    out_dim: int
    hidden_dim: int
    epochs: int
    method: str
    seed: int
    def __init__(self, dataset: _Optional[_Union[DatasetSource, _Mapping]] = ..., group_by: _Optional[_Iterable[str]] = ..., target_fmr: _Optional[float] = ..., eval_fraction: _Optional[float] = ..., out_dim: _Optional[int] = ..., hidden_dim: _Optional[int] = ..., epochs: _Optional[int] = ..., method: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class StartAuditRequest(_message.Message):
    __slots__ = ("dataset", "group_by", "target_fmr", "threshold", "analysis_job_id", "seed")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FMR_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    dataset: DatasetSource
    group_by: _containers.RepeatedScalarFieldContainer[str]
    target_fmr: float
    threshold: float
    analysis_job_id: str
    seed: int
    def __init__(self, dataset: _Optional[_Union[DatasetSource, _Mapping]] = ..., group_by: _Optional[_Iterable[str]] = ..., target_fmr: _Optional[float] = ..., threshold: _Optional[float] = ..., analysis_job_id: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "kind", "state", "progress", "message", "error", "created_at", "finished_at", "artifacts")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    state: JobState
    progress: float
    message: str
    error: str
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    artifacts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., artifacts: _Optional[_Iterable[str]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("job_id", "artifact")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    artifact: str
    def __init__(self, job_id: _Optional[str] = ..., artifact: _Optional[str] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("job_id", "artifact", "content_type", "data")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    artifact: str
    content_type: str
    data: bytes
    def __init__(self, job_id: _Optional[str] = ..., artifact: _Optional[str] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...
