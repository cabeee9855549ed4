from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]
    METRIC_IP: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]

class StoredVectors(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORED_VECTORS_UNSPECIFIED: _ClassVar[StoredVectors]
    STORED_VECTORS_NONE: _ClassVar[StoredVectors]
    STORED_VECTORS_FLOAT16: _ClassVar[StoredVectors]
    STORED_VECTORS_FLOAT32: _ClassVar[StoredVectors]

class Device(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_UNSPECIFIED: _ClassVar[Device]
    DEVICE_AUTO: _ClassVar[Device]
    DEVICE_CPU: _ClassVar[Device]
    DEVICE_GPU: _ClassVar[Device]
METRIC_UNSPECIFIED: Metric
METRIC_COSINE: Metric
METRIC_IP: Metric
METRIC_L2: Metric
STORED_VECTORS_UNSPECIFIED: StoredVectors
STORED_VECTORS_NONE: StoredVectors
STORED_VECTORS_FLOAT16: StoredVectors
STORED_VECTORS_FLOAT32: StoredVectors
DEVICE_UNSPECIFIED: Device
DEVICE_AUTO: Device
DEVICE_CPU: Device
DEVICE_GPU: Device

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "dim", "metric", "codec", "seed", "rotation", "store_vectors", "rescore_codec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    STORE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    RESCORE_CODEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    codec: str
    seed: int
    rotation: str
    store_vectors: StoredVectors
    rescore_codec: str
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., codec: _Optional[str] = ..., seed: _Optional[int] = ..., rotation: _Optional[str] = ..., store_vectors: _Optional[_Union[StoredVectors, str]] = ..., rescore_codec: _Optional[str] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "dim", "metric", "codec", "code_size", "bytes_per_vector", "store_vectors", "rescore_codec", "rows", "config_json", "metadata_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_VECTOR_FIELD_NUMBER: _ClassVar[int]
    STORE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    RESCORE_CODEC_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    codec: str
    code_size: int
    bytes_per_vector: int
    store_vectors: StoredVectors
    rescore_codec: str
    rows: int
    config_json: str
    metadata_schema: bytes
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., codec: _Optional[str] = ..., code_size: _Optional[int] = ..., bytes_per_vector: _Optional[int] = ..., store_vectors: _Optional[_Union[StoredVectors, str]] = ..., rescore_codec: _Optional[str] = ..., rows: _Optional[int] = ..., config_json: _Optional[str] = ..., metadata_schema: _Optional[bytes] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("collection", "vectors", "dim", "ids", "metadata")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vectors: bytes
    dim: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    metadata: bytes
    def __init__(self, collection: _Optional[str] = ..., vectors: _Optional[bytes] = ..., dim: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., metadata: _Optional[bytes] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("collection", "vectors", "dim")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vectors: bytes
    dim: int
    def __init__(self, collection: _Optional[str] = ..., vectors: _Optional[bytes] = ..., dim: _Optional[int] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "with_vectors", "with_metadata")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    WITH_METADATA_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    with_vectors: bool
    with_metadata: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., with_vectors: _Optional[bool] = ..., with_metadata: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("ids", "vectors", "dim", "metadata")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: bytes
    dim: int
    metadata: bytes
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[bytes] = ..., dim: _Optional[int] = ..., metadata: _Optional[bytes] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "dim", "k", "filter_json", "rescore", "device")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    RESCORE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: bytes
    dim: int
    k: int
    filter_json: str
    rescore: int
    device: Device
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[bytes] = ..., dim: _Optional[int] = ..., k: _Optional[int] = ..., filter_json: _Optional[str] = ..., rescore: _Optional[int] = ..., device: _Optional[_Union[Device, str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("counts", "ids", "distances")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    distances: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, counts: _Optional[_Iterable[int]] = ..., ids: _Optional[_Iterable[int]] = ..., distances: _Optional[_Iterable[float]] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("rows", "segments", "memtable_rows", "deleted_rows", "code_bytes", "codec", "device", "merges", "write_amplification")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MEMTABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    DELETED_ROWS_FIELD_NUMBER: _ClassVar[int]
    CODE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MERGES_FIELD_NUMBER: _ClassVar[int]
    WRITE_AMPLIFICATION_FIELD_NUMBER: _ClassVar[int]
    rows: int
    segments: int
    memtable_rows: int
    deleted_rows: int
    code_bytes: int
    codec: str
    device: str
    merges: int
    write_amplification: float
    def __init__(self, rows: _Optional[int] = ..., segments: _Optional[int] = ..., memtable_rows: _Optional[int] = ..., deleted_rows: _Optional[int] = ..., code_bytes: _Optional[int] = ..., codec: _Optional[str] = ..., device: _Optional[str] = ..., merges: _Optional[int] = ..., write_amplification: _Optional[float] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfoResponse(_message.Message):
    __slots__ = ("version", "device", "read_only")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    version: str
    device: str
    read_only: bool
    def __init__(self, version: _Optional[str] = ..., device: _Optional[str] = ..., read_only: _Optional[bool] = ...) -> None: ...
