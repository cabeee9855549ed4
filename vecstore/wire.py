"""Conversions between numpy/Arrow values and the fields of the gRPC messages.

Shared by the server (``vecstore.server``) and the client (``vecstore.client``) so that
both ends read and write the wire format of ``proto/vecstore/v1/vecstore.proto`` the same
way:

- vectors: packed little-endian float32 bytes, n * dim * 4 of them, row after row;
- metadata: the Arrow IPC stream format of one table, so every Arrow type survives exactly;
  compressed record batches are refused (the client never compresses);
- filters: the dict form of ``vecstore.metadata`` as JSON;
- search results: flat ids and distances with a count per query (padding is not sent);
- enums: the names of metrics, stored vectors and devices both ways, every zero value
  (*_UNSPECIFIED) reading as the default.

Every failure raises InvalidArgument naming the field.
"""

from __future__ import annotations

import json
import struct
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vecstore import metadata
from vecstore.collection import SearchResult
from vecstore.errors import InvalidArgument
from vecstore.v1 import vecstore_pb2 as pb

FLOAT32_LE = np.dtype("<f4")

METRIC_ENUMS = {"cosine": pb.METRIC_COSINE, "ip": pb.METRIC_IP, "l2": pb.METRIC_L2}
METRIC_NAMES = {pb.METRIC_UNSPECIFIED: "cosine",
                **{value: name for name, value in METRIC_ENUMS.items()}}
STORED_VECTOR_ENUMS = {None: pb.STORED_VECTORS_NONE, "float16": pb.STORED_VECTORS_FLOAT16,
                       "float32": pb.STORED_VECTORS_FLOAT32}
STORED_VECTOR_NAMES = {pb.STORED_VECTORS_UNSPECIFIED: None,
                       **{value: name for name, value in STORED_VECTOR_ENUMS.items()}}
DEVICE_ENUMS = {None: pb.DEVICE_UNSPECIFIED, "auto": pb.DEVICE_AUTO, "cpu": pb.DEVICE_CPU,
                "gpu": pb.DEVICE_GPU}
DEVICE_NAMES = {value: name for name, value in DEVICE_ENUMS.items()}
# MessageHeader union values of Arrow's Message.fbs.
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3


# Trailing metadata of every Search response: where the server spent the call's time.
TIMING_HEADER = "vecstore-timing-us"


class ServerTiming(NamedTuple):
    """Seconds one Search call spent in the server: decoding the request, queued for its
    batch, in that batch's search, and encoding the response."""

    decode_s: float
    queue_s: float
    search_s: float
    encode_s: float

    def pack(self) -> str:
        """Whole microseconds, comma-separated, as TIMING_HEADER carries them."""
        return ",".join(str(round(seconds * 1e6)) for seconds in self)

    @classmethod
    def unpack(cls, text: str) -> ServerTiming:
        """The timing ``pack`` wrote; InvalidArgument for anything else."""
        try:
            values = [int(part) / 1e6 for part in text.split(",")]
            return cls(*values)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed {TIMING_HEADER} {text!r:.80}") from exc


def pack_vectors(x: np.ndarray) -> bytes:
    """The bytes of ``x`` (n, d) as little-endian float32, row after row."""
    return np.ascontiguousarray(x, dtype=FLOAT32_LE).tobytes()


def unpack_vectors(data: bytes, dim: int, field: str = "vectors") -> np.ndarray:
    """The (n, dim) float32 array packed in ``data`` (read-only, no copy).

    Raises InvalidArgument when ``dim`` is not positive or the byte length is not a
    multiple of 4 * dim. An empty ``data`` gives an empty (0, dim) batch, which the
    collection rejects with its own message.
    """
    if dim <= 0:
        raise InvalidArgument(f"{field}: dim must be a positive integer, got {dim}")
    if len(data) % (FLOAT32_LE.itemsize * dim):
        raise InvalidArgument(
            f"{field}: {len(data)} bytes is not a whole number of float32 vectors of "
            f"dim {dim} ({FLOAT32_LE.itemsize * dim} bytes each)"
        )
    return np.frombuffer(data, dtype=FLOAT32_LE).reshape(-1, dim)


def pack_table(table: pa.Table | None) -> bytes:
    """``table`` in the Arrow IPC stream format; empty bytes for None."""
    if table is None:
        return b""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _flatbuffer_field(buf: bytes, table: int, slot: int) -> int | None:
    """Where field ``slot`` of the flatbuffer table at ``table`` is in ``buf``, or None
    when the field is absent. Raises struct.error or ValueError past the buffer's end."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    if vtable < 0:
        raise ValueError("flatbuffer vtable outside the message")
    entry = 4 + 2 * slot
    if entry + 2 > struct.unpack_from("<H", buf, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", buf, vtable + entry)[0]
    return table + offset if offset else None


def _flatbuffer_table(buf: bytes, position: int) -> int:
    """The table that the offset at ``position`` points to."""
    return position + struct.unpack_from("<I", buf, position)[0]


def _body_is_compressed(metadata: bytes) -> bool:
    """Whether the Arrow IPC message with flatbuffer ``metadata`` (Message.fbs) has a
    compressed body: a RecordBatch, or the RecordBatch of a DictionaryBatch, whose
    ``compression`` field (slot 3) is set."""
    message = _flatbuffer_table(metadata, 0)
    type_at = _flatbuffer_field(metadata, message, 1)
    header_at = _flatbuffer_field(metadata, message, 2)
    kind = metadata[type_at] if type_at is not None else 0
    if header_at is None or kind not in (_DICTIONARY_BATCH, _RECORD_BATCH):
        return False
    batch = _flatbuffer_table(metadata, header_at)
    if kind == _DICTIONARY_BATCH:
        data_at = _flatbuffer_field(metadata, batch, 1)
        if data_at is None:
            return False
        batch = _flatbuffer_table(metadata, data_at)
    return _flatbuffer_field(metadata, batch, 3) is not None


def _refuse_compressed(data: bytes, field: str) -> None:
    """Raise InvalidArgument when a message of the Arrow IPC stream ``data`` has a
    compressed body (checked before anything is decompressed)."""
    try:
        compressed = any(_body_is_compressed(message.metadata.to_pybytes())
                         for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)))
    except (pa.ArrowException, ValueError, OSError, struct.error, IndexError) as exc:
        raise InvalidArgument(f"{field}: not a valid Arrow IPC stream: {exc}") from exc
    if compressed:
        raise InvalidArgument(f"{field}: compressed Arrow IPC bodies are not accepted; "
                              "send it uncompressed")


def unpack_table(data: bytes, field: str = "metadata") -> pa.Table | None:
    """The table in the Arrow IPC stream ``data``; None for empty bytes.

    Compressed record batches are refused (InvalidArgument) before any is decompressed:
    a small compressed body can expand past every message limit.
    """
    if not data:
        return None
    _refuse_compressed(data, field)
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            table = reader.read_all()
        table.validate(full=True)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise InvalidArgument(f"{field}: not a valid Arrow IPC stream: {exc}") from exc
    return table


def pack_schema(schema: pa.Schema) -> bytes:
    """``schema`` as Arrow IPC schema bytes."""
    return schema.serialize().to_pybytes()


def unpack_schema(data: bytes) -> pa.Schema:
    """The schema in Arrow IPC schema bytes ``data``; no fields for empty bytes."""
    return pa.ipc.read_schema(pa.py_buffer(data)) if data else pa.schema([])


def _json_value(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise InvalidArgument(f"filter: value {value!r} of type {type(value).__name__} "
                          "cannot be sent as JSON")


def filter_to_json(filter) -> str:
    """The dict form of a filter as JSON; empty for None.

    A pyarrow Expression has no portable encoding, so remote searches take the dict form.
    """
    if filter is None:
        return ""
    if isinstance(filter, pc.Expression):
        raise InvalidArgument("filter: a remote search takes the dict form of a filter "
                              "(see vecstore.metadata), not a pyarrow Expression")
    if not isinstance(filter, dict):
        raise InvalidArgument(
            f"filter must be a pyarrow.compute.Expression or a dict, got {type(filter).__name__}"
        )
    return json.dumps(filter, default=_json_value, allow_nan=False)


def filter_from_json(text: str) -> dict | None:
    """The dict filter in ``text``; None for an empty string. Dicts and lists may nest at
    most ``metadata.MAX_FILTER_DEPTH`` levels (InvalidArgument beyond)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidArgument(f"filter_json nests dicts and lists deeper than "
                              f"{metadata.MAX_FILTER_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidArgument(f"filter_json: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"filter_json must hold a JSON object, got {type(value).__name__}")
    metadata.check_filter_depth(value, "filter_json")
    return value


def flatten_results(result: SearchResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query counts (nq,) uint32 and the found ids and distances, flat, best first.

    Missing results (id -1) come last in each row of a SearchResult and are not sent.
    """
    found = result.ids >= 0
    return (found.sum(axis=1).astype(np.uint32), result.ids[found],
            result.distances[found].astype(np.float32))


def expand_results(counts, ids, distances, k: int, metric: str) -> SearchResult:
    """The (nq, k) SearchResult of flat results, padded with id -1 and -inf (ip, cosine)
    or +inf (l2) distances as the embedded search pads."""
    counts = np.asarray(counts, dtype=np.int64)
    flat_ids = np.asarray(ids, dtype=np.int64)
    flat_distances = np.asarray(distances, dtype=np.float32)
    if counts.size and (counts.max() > k or counts.sum() != flat_ids.size
                        or flat_ids.size != flat_distances.size):
        raise InvalidArgument("search response: counts do not match the ids and distances")
    pad = np.float32(np.inf if metric == "l2" else -np.inf)
    out_ids = np.full((counts.size, k), -1, dtype=np.int64)
    out_distances = np.full((counts.size, k), pad, dtype=np.float32)
    filled = np.arange(k)[None, :] < counts[:, None]
    out_ids[filled] = flat_ids
    out_distances[filled] = flat_distances
    return SearchResult(out_distances, out_ids)
