"""vecstore: a compressed vector database."""

from vecstore._native import cpu_features, get_num_threads, set_num_threads
from vecstore.codecs import available_specs, codec_from_config, make_codec
from vecstore.collection import Collection, SearchResult
from vecstore.database import Database, open
from vecstore.errors import (
    AlreadyExists,
    Closed,
    DataLoss,
    DeadlineExceeded,
    GpuUnavailable,
    InvalidArgument,
    Locked,
    NotFound,
    OutOfDeviceMemory,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VecstoreError,
)
from vecstore.merge_policy import TieredMergePolicy

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Client",
    "Closed",
    "Collection",
    "DataLoss",
    "Database",
    "DeadlineExceeded",
    "GpuUnavailable",
    "InvalidArgument",
    "Locked",
    "NotFound",
    "OutOfDeviceMemory",
    "PermissionDenied",
    "ResourceExhausted",
    "SearchResult",
    "TieredMergePolicy",
    "Unauthenticated",
    "Unavailable",
    "VecstoreError",
    "available_specs",
    "codec_from_config",
    "cpu_features",
    "get_num_threads",
    "make_codec",
    "open",
    "set_num_threads",
]


def __getattr__(name: str):
    # The gRPC client imports grpc, an optional dependency (the server extra): load it on
    # first use of vecstore.Client only.
    if name == "Client":
        from vecstore.client import Client

        return Client
    raise AttributeError(f"module 'vecstore' has no attribute {name!r}")
