from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    def __init__(self, image: _Optional[bytes] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("faces",)
    FACES_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[_common_pb2.Face]
    def __init__(self, faces: _Optional[_Iterable[_Union[_common_pb2.Face, _Mapping]]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("image", "aligned_crop")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_CROP_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    aligned_crop: bool
    def __init__(self, image: _Optional[bytes] = ..., aligned_crop: _Optional[bool] = ...) -> None: ...

class FaceWithEmbedding(_message.Message):
    __slots__ = ("face", "embedding")
    FACE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    face: _common_pb2.Face
    embedding: _common_pb2.Embedding
    def __init__(self, face: _Optional[_Union[_common_pb2.Face, _Mapping]] = ..., embedding: _Optional[_Union[_common_pb2.Embedding, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("faces",)
    FACES_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[FaceWithEmbedding]
    def __init__(self, faces: _Optional[_Iterable[_Union[FaceWithEmbedding, _Mapping]]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("collection", "subject_id", "images", "embeddings", "display_name", "metadata", "groups", "request_id", "aligned_crops")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_CROPS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    subject_id: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Embedding]
    display_name: str
    metadata: _containers.ScalarMap[str, str]
    groups: _containers.ScalarMap[str, str]
    request_id: str
    aligned_crops: bool
    def __init__(self, collection: _Optional[str] = ..., subject_id: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., embeddings: _Optional[_Iterable[_Union[_common_pb2.Embedding, _Mapping]]] = ..., display_name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., groups: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ..., aligned_crops: _Optional[bool] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("subject_id", "face_ids", "created_subject", "replayed")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    created_subject: bool
    replayed: bool
    def __init__(self, subject_id: _Optional[str] = ..., face_ids: _Optional[_Iterable[str]] = ..., created_subject: _Optional[bool] = ..., replayed: _Optional[bool] = ...) -> None: ...

class EnrollRejection(_message.Message):
    __slots__ = ("index", "subject_id", "request_id", "code", "message", "reasons")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    index: int
    subject_id: str
    request_id: str
    code: str
    message: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., subject_id: _Optional[str] = ..., request_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class EnrollStreamResponse(_message.Message):
    __slots__ = ("enrolled", "faces", "rejected", "results")
    ENROLLED_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    enrolled: int
    faces: int
    rejected: _containers.RepeatedCompositeFieldContainer[EnrollRejection]
    results: _containers.RepeatedCompositeFieldContainer[EnrollResponse]
    def __init__(self, enrolled: _Optional[int] = ..., faces: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[EnrollRejection, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[EnrollResponse, _Mapping]]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("image", "embedding", "reference_image", "subject_id", "collection", "threshold")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    embedding: _common_pb2.Embedding
    reference_image: bytes
    subject_id: str
    collection: str
    threshold: float
    def __init__(self, image: _Optional[bytes] = ..., embedding: _Optional[_Union[_common_pb2.Embedding, _Mapping]] = ..., reference_image: _Optional[bytes] = ..., subject_id: _Optional[str] = ..., collection: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("decision", "probe_face", "reference_face")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    PROBE_FACE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FACE_FIELD_NUMBER: _ClassVar[int]
    decision: _common_pb2.MatchDecision
    probe_face: _common_pb2.Face
    reference_face: _common_pb2.Face
    def __init__(self, decision: _Optional[_Union[_common_pb2.MatchDecision, _Mapping]] = ..., probe_face: _Optional[_Union[_common_pb2.Face, _Mapping]] = ..., reference_face: _Optional[_Union[_common_pb2.Face, _Mapping]] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("image", "collection", "k", "threshold")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    collection: str
    k: int
    threshold: float
    def __init__(self, image: _Optional[bytes] = ..., collection: _Optional[str] = ..., k: _Optional[int] = ..., threshold: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("subject_id", "face_id", "decision")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    face_id: str
    decision: _common_pb2.MatchDecision
    def __init__(self, subject_id: _Optional[str] = ..., face_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.MatchDecision, _Mapping]] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("face", "candidates")
    FACE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    face: _common_pb2.Face
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, face: _Optional[_Union[_common_pb2.Face, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("collection", "subject_id", "display_name", "metadata", "groups", "face_ids")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    subject_id: str
    display_name: str
    metadata: _containers.ScalarMap[str, str]
    groups: _containers.ScalarMap[str, str]
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., subject_id: _Optional[str] = ..., display_name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., groups: _Optional[_Mapping[str, str]] = ..., face_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSubjectRequest(_message.Message):
    __slots__ = ("collection", "subject_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    subject_id: str
    def __init__(self, collection: _Optional[str] = ..., subject_id: _Optional[str] = ...) -> None: ...

class ListSubjectsRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSubjectsResponse(_message.Message):
    __slots__ = ("subjects", "next_page_token")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedCompositeFieldContainer[Subject]
    next_page_token: str
    def __init__(self, subjects: _Optional[_Iterable[_Union[Subject, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteSubjectRequest(_message.Message):
    __slots__ = ("collection", "subject_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    subject_id: str
    def __init__(self, collection: _Optional[str] = ..., subject_id: _Optional[str] = ...) -> None: ...

class DeleteSubjectResponse(_message.Message):
    __slots__ = ("deleted_faces",)
    DELETED_FACES_FIELD_NUMBER: _ClassVar[int]
    deleted_faces: int
    def __init__(self, deleted_faces: _Optional[int] = ...) -> None: ...

class DeleteFaceRequest(_message.Message):
    __slots__ = ("collection", "face_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    face_id: str
    def __init__(self, collection: _Optional[str] = ..., face_id: _Optional[str] = ...) -> None: ...

class DeleteFaceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
