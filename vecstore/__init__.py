"""vecstore: a compressed vector database."""

from vecstore.codecs import available_specs, codec_from_config, make_codec
from vecstore.collection import Collection, SearchResult
from vecstore.database import Database, open
from vecstore.errors import (
    AlreadyExists,
    Closed,
    DataLoss,
    GpuUnavailable,
    InvalidArgument,
    Locked,
    NotFound,
    OutOfDeviceMemory,
    VecstoreError,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Closed",
    "Collection",
    "DataLoss",
    "Database",
    "GpuUnavailable",
    "InvalidArgument",
    "Locked",
    "NotFound",
    "OutOfDeviceMemory",
    "SearchResult",
    "VecstoreError",
    "available_specs",
    "codec_from_config",
    "make_codec",
    "open",
]
