from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Collection(_message.Message):
    __slots__ = ("name", "threshold", "model_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    threshold: float
    model_id: str
    def __init__(self, name: _Optional[str] = ..., threshold: _Optional[float] = ..., model_id: _Optional[str] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    threshold: float
    def __init__(self, name: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCollectionStatsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CollectionStats(_message.Message):
    __slots__ = ("collection", "subjects", "faces", "index_kind")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    subjects: int
    faces: int
    index_kind: str
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., subjects: _Optional[int] = ..., faces: _Optional[int] = ..., index_kind: _Optional[str] = ...) -> None: ...

class SetThresholdRequest(_message.Message):
    __slots__ = ("name", "threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    threshold: float
    def __init__(self, name: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class CalibrateRequest(_message.Message):
    __slots__ = ("scores", "same_identity", "target_fmr", "collection", "apply")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SAME_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FMR_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    same_identity: _containers.RepeatedScalarFieldContainer[bool]
    target_fmr: float
    collection: str
    apply: bool
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., same_identity: _Optional[_Iterable[bool]] = ..., target_fmr: _Optional[float] = ..., collection: _Optional[str] = ..., apply: _Optional[bool] = ...) -> None: ...

class CalibrateResponse(_message.Message):
    __slots__ = ("threshold", "fmr", "fnmr", "n_genuine", "n_impostor", "applied")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FMR_FIELD_NUMBER: _ClassVar[int]
    FNMR_FIELD_NUMBER: _ClassVar[int]
    N_GENUINE_FIELD_NUMBER: _ClassVar[int]
    N_IMPOSTOR_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    fmr: float
    fnmr: float
    n_genuine: int
    n_impostor: int
    applied: bool
    def __init__(self, threshold: _Optional[float] = ..., fmr: _Optional[float] = ..., fnmr: _Optional[float] = ..., n_genuine: _Optional[int] = ..., n_impostor: _Optional[int] = ..., applied: _Optional[bool] = ...) -> None: ...
