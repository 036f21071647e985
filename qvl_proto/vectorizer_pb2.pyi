from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOAT32: _ClassVar[Encoding]
    FLOAT16: _ClassVar[Encoding]
    INT8: _ClassVar[Encoding]
    BINARY: _ClassVar[Encoding]

class Truncate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATE_END: _ClassVar[Truncate]
    TRUNCATE_NONE: _ClassVar[Truncate]
    TRUNCATE_START: _ClassVar[Truncate]

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    NOT_READY: _ClassVar[ErrorReason]
    MODEL_MISMATCH: _ClassVar[ErrorReason]
FLOAT32: Encoding
FLOAT16: Encoding
INT8: Encoding
BINARY: Encoding
TRUNCATE_END: Truncate
TRUNCATE_NONE: Truncate
TRUNCATE_START: Truncate
REASON_UNSPECIFIED: ErrorReason
NOT_READY: ErrorReason
MODEL_MISMATCH: ErrorReason

class Frames(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, frames: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Part(_message.Message):
    __slots__ = ("text", "image", "video", "frames", "image_uri", "video_uri", "document", "document_uri", "page", "start_s", "end_s")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URI_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_URI_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    video: bytes
    frames: Frames
    image_uri: str
    video_uri: str
    document: bytes
    document_uri: str
    page: int
    start_s: float
    end_s: float
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., video: _Optional[bytes] = ..., frames: _Optional[_Union[Frames, _Mapping]] = ..., image_uri: _Optional[str] = ..., video_uri: _Optional[str] = ..., document: _Optional[bytes] = ..., document_uri: _Optional[str] = ..., page: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("parts", "instruction")
    PARTS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[Part]
    instruction: str
    def __init__(self, parts: _Optional[_Iterable[_Union[Part, _Mapping]]] = ..., instruction: _Optional[str] = ...) -> None: ...

class EmbedOptions(_message.Message):
    __slots__ = ("dimensions", "encoding", "normalize", "instruction", "allow_partial", "truncate", "chunking", "fingerprint")
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    dimensions: int
    encoding: Encoding
    normalize: bool
    instruction: str
    allow_partial: bool
    truncate: Truncate
    chunking: Chunking
    fingerprint: str
    def __init__(self, dimensions: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., normalize: bool = ..., instruction: _Optional[str] = ..., allow_partial: bool = ..., truncate: _Optional[_Union[Truncate, str]] = ..., chunking: _Optional[_Union[Chunking, _Mapping]] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class Chunking(_message.Message):
    __slots__ = ("pages", "video", "text")
    PAGES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    pages: PageChunking
    video: VideoChunking
    text: TextChunking
    def __init__(self, pages: _Optional[_Union[PageChunking, _Mapping]] = ..., video: _Optional[_Union[VideoChunking, _Mapping]] = ..., text: _Optional[_Union[TextChunking, _Mapping]] = ...) -> None: ...

class PageChunking(_message.Message):
    __slots__ = ("max_pages",)
    MAX_PAGES_FIELD_NUMBER: _ClassVar[int]
    max_pages: int
    def __init__(self, max_pages: _Optional[int] = ...) -> None: ...

class VideoChunking(_message.Message):
    __slots__ = ("seconds", "overlap")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    overlap: float
    def __init__(self, seconds: _Optional[float] = ..., overlap: _Optional[float] = ...) -> None: ...

class TextChunking(_message.Message):
    __slots__ = ("tokens", "overlap")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    overlap: int
    def __init__(self, tokens: _Optional[int] = ..., overlap: _Optional[int] = ...) -> None: ...

class Locator(_message.Message):
    __slots__ = ("page", "start_s", "end_s", "char_start", "char_end")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    CHAR_START_FIELD_NUMBER: _ClassVar[int]
    CHAR_END_FIELD_NUMBER: _ClassVar[int]
    page: int
    start_s: float
    end_s: float
    char_start: int
    char_end: int
    def __init__(self, page: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., char_start: _Optional[int] = ..., char_end: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("embedding", "locator")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    LOCATOR_FIELD_NUMBER: _ClassVar[int]
    embedding: Embedding
    locator: Locator
    def __init__(self, embedding: _Optional[_Union[Embedding, _Mapping]] = ..., locator: _Optional[_Union[Locator, _Mapping]] = ...) -> None: ...

class Chunks(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[Chunk]
    def __init__(self, chunks: _Optional[_Iterable[_Union[Chunk, _Mapping]]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("items", "options")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    options: EmbedOptions
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "packed", "scale", "dimensions", "encoding", "truncated_tokens")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    packed: bytes
    scale: float
    dimensions: int
    encoding: Encoding
    truncated_tokens: int
    def __init__(self, values: _Optional[_Iterable[float]] = ..., packed: _Optional[bytes] = ..., scale: _Optional[float] = ..., dimensions: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., truncated_tokens: _Optional[int] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("index", "message", "code", "limit", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    message: str
    code: str
    limit: str
    reason: ErrorReason
    def __init__(self, index: _Optional[int] = ..., message: _Optional[str] = ..., code: _Optional[str] = ..., limit: _Optional[str] = ..., reason: _Optional[_Union[ErrorReason, str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "errors", "model", "tokens", "chunks")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    errors: _containers.RepeatedCompositeFieldContainer[ItemError]
    model: str
    tokens: int
    chunks: _containers.RepeatedCompositeFieldContainer[Chunks]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[ItemError, _Mapping]]] = ..., model: _Optional[str] = ..., tokens: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[Chunks, _Mapping]]] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("seq", "item", "options")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    item: Item
    options: EmbedOptions
    def __init__(self, seq: _Optional[int] = ..., item: _Optional[_Union[Item, _Mapping]] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ...) -> None: ...

class EmbedStreamResult(_message.Message):
    __slots__ = ("seq", "embedding", "error", "chunks")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    embedding: Embedding
    error: ItemError
    chunks: Chunks
    def __init__(self, seq: _Optional[int] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., chunks: _Optional[_Union[Chunks, _Mapping]] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("query", "documents", "instruction", "top_k", "allow_partial")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    query: Item
    documents: _containers.RepeatedCompositeFieldContainer[Item]
    instruction: str
    top_k: int
    allow_partial: bool
    def __init__(self, query: _Optional[_Union[Item, _Mapping]] = ..., documents: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., instruction: _Optional[str] = ..., top_k: _Optional[int] = ..., allow_partial: bool = ...) -> None: ...

class Ranked(_message.Message):
    __slots__ = ("index", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("scores", "ranking", "errors", "model")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    ranking: _containers.RepeatedCompositeFieldContainer[Ranked]
    errors: _containers.RepeatedCompositeFieldContainer[ItemError]
    model: str
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., ranking: _Optional[_Iterable[_Union[Ranked, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[ItemError, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("task", "name", "hidden_size", "max_length", "modalities", "dtype", "device", "attention", "default_instruction", "query_instruction", "fingerprint")
    TASK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    task: str
    name: str
    hidden_size: int
    max_length: int
    modalities: _containers.RepeatedScalarFieldContainer[str]
    dtype: str
    device: str
    attention: str
    default_instruction: str
    query_instruction: str
    fingerprint: str
    def __init__(self, task: _Optional[str] = ..., name: _Optional[str] = ..., hidden_size: _Optional[int] = ..., max_length: _Optional[int] = ..., modalities: _Optional[_Iterable[str]] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., attention: _Optional[str] = ..., default_instruction: _Optional[str] = ..., query_instruction: _Optional[str] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_request_bytes", "max_media_bytes", "max_source_image_pixels", "image_max_pixels", "video_max_frames", "video_fps", "max_video_seconds", "max_items_per_request", "max_rerank_documents", "queue_max_items", "batch_tokens", "stream_max_in_flight", "allow_uri_schemes", "max_document_bytes", "max_document_pages", "max_video_windows")
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MEDIA_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SOURCE_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FPS_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_RERANK_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STREAM_MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_URI_SCHEMES_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_PAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    max_request_bytes: int
    max_media_bytes: int
    max_source_image_pixels: int
    image_max_pixels: int
    video_max_frames: int
    video_fps: float
    max_video_seconds: float
    max_items_per_request: int
    max_rerank_documents: int
    queue_max_items: int
    batch_tokens: int
    stream_max_in_flight: int
    allow_uri_schemes: _containers.RepeatedScalarFieldContainer[str]
    max_document_bytes: int
    max_document_pages: int
    max_video_windows: int
    def __init__(self, max_request_bytes: _Optional[int] = ..., max_media_bytes: _Optional[int] = ..., max_source_image_pixels: _Optional[int] = ..., image_max_pixels: _Optional[int] = ..., video_max_frames: _Optional[int] = ..., video_fps: _Optional[float] = ..., max_video_seconds: _Optional[float] = ..., max_items_per_request: _Optional[int] = ..., max_rerank_documents: _Optional[int] = ..., queue_max_items: _Optional[int] = ..., batch_tokens: _Optional[int] = ..., stream_max_in_flight: _Optional[int] = ..., allow_uri_schemes: _Optional[_Iterable[str]] = ..., max_document_bytes: _Optional[int] = ..., max_document_pages: _Optional[int] = ..., max_video_windows: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("models", "limits", "version", "transformers_version", "torch_version", "encodings", "profiles", "profile_fingerprints")
    class ProfileFingerprintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMERS_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: Limits
    version: str
    transformers_version: str
    torch_version: str
    encodings: _containers.RepeatedScalarFieldContainer[str]
    profiles: _containers.RepeatedScalarFieldContainer[str]
    profile_fingerprints: _containers.ScalarMap[str, str]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., version: _Optional[str] = ..., transformers_version: _Optional[str] = ..., torch_version: _Optional[str] = ..., encodings: _Optional[_Iterable[str]] = ..., profiles: _Optional[_Iterable[str]] = ..., profile_fingerprints: _Optional[_Mapping[str, str]] = ...) -> None: ...
