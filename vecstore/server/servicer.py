"""The Vecstore gRPC servicer: messages in, calls on an embedded Database, messages out.

Thin by design: every check of user input is the embedded database's own (so remote and
embedded calls fail alike), plus the wire-level checks of ``vecstore.wire``. Exceptions
become status codes through the one table in ``vecstore.status_codes``.
"""

from __future__ import annotations

import functools
import json
import logging
import time

import grpc
import numpy as np
import pyarrow as pa

import vecstore
from vecstore import wire
from vecstore.collection import Collection
from vecstore.database import Database, check_collection_name
from vecstore.errors import InvalidArgument, ResourceExhausted
from vecstore.status_codes import ERROR_HEADER, code_for
from vecstore.v1 import vecstore_pb2 as pb
from vecstore.v1 import vecstore_pb2_grpc as pb_grpc

from .batching import SearchBatcher, SearchKind

log = logging.getLogger("vecstore.server")

# Status messages are cut to this many characters (a name or value echoed in full could
# pass gRPC's 16 KiB trailer limit and turn the status into RESOURCE_EXHAUSTED).
MAX_STATUS_MESSAGE_CHARS = 1000
TRUNCATED = "… (truncated)"
# Distinct ids whose metadata a Get fetches at a time while it sizes the response.
GET_CHUNK_IDS = 4096


def bounded(message: str, limit: int = MAX_STATUS_MESSAGE_CHARS) -> str:
    """``message`` cut to at most ``limit`` characters, ending in TRUNCATED when cut."""
    if len(message) <= limit:
        return message
    return message[:limit - len(TRUNCATED)] + TRUNCATED


def abort_with(context: grpc.ServicerContext, exc: BaseException, prefix: str = "") -> None:
    """End the call with the status code of ``exc`` and its message, cut to
    MAX_STATUS_MESSAGE_CHARS (raises, as ``context.abort`` does)."""
    code = code_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
    context.set_trailing_metadata(((ERROR_HEADER, bounded(type(exc).__name__, 100)),))
    context.abort(code, bounded(prefix + str(exc)))


def _errors_to_status(method):
    @functools.wraps(method)
    def call(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # every error reaches the caller as a status code
            abort_with(context, exc)
    return call


def _enum(table: dict, value: int, field: str):
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(f"{field}: unknown enum value {value}") from None


def collection_info(collection: Collection) -> pb.CollectionInfo:
    """The CollectionInfo message describing ``collection``."""
    config = collection.config()
    return pb.CollectionInfo(
        name=collection.name, dim=collection.dim, metric=wire.METRIC_ENUMS[collection.metric],
        codec=collection.codec.spec, code_size=collection.code_size,
        bytes_per_vector=collection.bytes_per_vector,
        store_vectors=wire.STORED_VECTOR_ENUMS[collection.store_vectors],
        rescore_codec=collection.rescore_codec.spec if collection.rescore_codec else "",
        rows=len(collection), config_json=json.dumps(config),
        metadata_schema=wire.pack_schema(collection.metadata_schema))


class VecstoreServicer(pb_grpc.VecstoreServicer):
    """Serves one open Database. ``read_only_caller(context)`` says whether the caller's
    key allows reads only (for ServerInfo)."""

    def __init__(self, db: Database, read_only_caller=lambda context: False,
                 max_message_bytes: int | None = None):
        self.db = db
        self.read_only_caller = read_only_caller
        self.max_message_bytes = max_message_bytes
        self.batcher = SearchBatcher()

    def _collection(self, name: str) -> Collection:
        check_collection_name(name)
        return self.db.get_collection(name)

    # --- collections ----------------------------------------------------------------

    @_errors_to_status
    def CreateCollection(self, request, context):
        collection = self.db.create_collection(
            check_collection_name(request.name), dim=request.dim,
            metric=_enum(wire.METRIC_NAMES, request.metric, "metric"),
            codec=request.codec or "tq4", seed=request.seed,
            rotation=request.rotation or "auto",
            store_vectors=_enum(wire.STORED_VECTOR_NAMES, request.store_vectors, "store_vectors"),
            rescore_codec=request.rescore_codec or None)
        return collection_info(collection)

    @_errors_to_status
    def GetCollection(self, request, context):
        return collection_info(self._collection(request.name))

    @_errors_to_status
    def ListCollections(self, request, context):
        return pb.ListCollectionsResponse(names=self.db.list_collections())

    @_errors_to_status
    def DropCollection(self, request, context):
        check_collection_name(request.name)
        self.db.drop_collection(request.name)
        return pb.DropCollectionResponse()

    # --- writes ---------------------------------------------------------------------

    def _write(self, request, *, upsert: bool) -> pb.WriteResponse:
        collection = self._collection(request.collection)
        vectors = wire.unpack_vectors(request.vectors, request.dim, "vectors")
        ids = np.array(request.ids, dtype=np.int64) if len(request.ids) else None
        metadata = wire.unpack_table(request.metadata, "metadata")
        if upsert:
            written = collection.upsert(vectors, ids, metadata)
        else:
            written = collection.add(vectors, ids, metadata)
        return pb.WriteResponse(ids=written.tolist())

    @_errors_to_status
    def Insert(self, request, context):
        return self._write(request, upsert=False)

    @_errors_to_status
    def Upsert(self, request, context):
        return self._write(request, upsert=True)

    def InsertStream(self, request_iterator, context):
        written: list[int] = []
        index = 0
        try:
            for index, request in enumerate(request_iterator):  # noqa: B007
                written.extend(self._write(request, upsert=False).ids)
        except grpc.RpcError:
            # The stream itself failed (a message over the size limit, a cancelled call):
            # gRPC has already ended the call with its status; nothing to report or log.
            raise
        except Exception as exc:  # reported with the failing message's index
            abort_with(context, exc, f"message {index} (after {len(written)} rows written): ")
        return pb.WriteResponse(ids=written)

    @_errors_to_status
    def Train(self, request, context):
        collection = self._collection(request.collection)
        collection.train(wire.unpack_vectors(request.vectors, request.dim, "vectors"))
        return pb.TrainResponse()

    @_errors_to_status
    def Delete(self, request, context):
        collection = self._collection(request.collection)
        return pb.DeleteResponse(deleted=collection.delete(np.array(request.ids, np.int64)))

    # --- reads ----------------------------------------------------------------------

    def _check_response_size(self, size: int, what: str) -> None:
        """Raise ResourceExhausted when a response of about ``size`` bytes would pass the
        message limit (checked before the response is built)."""
        if self.max_message_bytes is not None and size > self.max_message_bytes:
            raise ResourceExhausted(
                f"{what}: the response would hold about {size:,} bytes, over the server's "
                f"message limit of {self.max_message_bytes:,} bytes; ask for fewer ids")

    def _get_metadata(self, collection: Collection, unique: np.ndarray, counts: np.ndarray,
                      size: int) -> pa.Table:
        """Metadata rows of the distinct ``unique`` ids (m,) int64, fetched GET_CHUNK_IDS at
        a time; ResourceExhausted as soon as ``size`` bytes plus the rows' share of the
        response (each row ``counts`` (m,) times) passes the message limit."""
        tables = []
        for start in range(0, max(unique.size, 1), GET_CHUNK_IDS):
            table = collection.get_metadata(unique[start:start + GET_CHUNK_IDS])
            share = counts[start:start + GET_CHUNK_IDS].sum() / max(1, table.num_rows)
            size += int(table.nbytes * share)
            self._check_response_size(size, "Get")
            tables.append(table)
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    @_errors_to_status
    def Get(self, request, context):
        collection = self._collection(request.collection)
        ids = np.fromiter(request.ids, dtype=np.int64, count=len(request.ids))
        size = request.ByteSize() + (4 * collection.dim * ids.size if request.with_vectors else 0)
        self._check_response_size(size, "Get")
        unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        response = pb.GetResponse(ids=request.ids, dim=collection.dim)
        if request.with_vectors:
            response.vectors = wire.pack_vectors(collection.get(unique)[inverse])
        if request.with_metadata:
            table = self._get_metadata(collection, unique, counts, size)
            response.metadata = wire.pack_table(table.take(inverse))
        elif not request.with_vectors:
            for start in range(0, unique.size, GET_CHUNK_IDS):  # the presence check
                collection.get_metadata(unique[start:start + GET_CHUNK_IDS])
        return response

    @_errors_to_status
    def Search(self, request, context):
        started = time.perf_counter()
        collection = self._collection(request.collection)
        queries = wire.unpack_vectors(request.queries, request.dim, "queries")
        kind = SearchKind(collection, int(request.k),
                          request.rescore if request.HasField("rescore") else None,
                          request.filter_json, _enum(wire.DEVICE_NAMES, request.device, "device"))
        search_filter = wire.filter_from_json(request.filter_json)
        decoded = time.perf_counter()
        result, times = self.batcher.timed_search(kind, queries, search_filter)
        searched = time.perf_counter()
        counts, ids, distances = wire.flatten_results(result)
        response = pb.SearchResponse(counts=counts.tolist(), ids=ids.tolist(),
                                     distances=distances.tolist())
        timing = wire.ServerTiming(decoded - started, times.queued_s, times.search_s,
                                   time.perf_counter() - searched)
        context.set_trailing_metadata(((wire.TIMING_HEADER, timing.pack()),))
        return response

    # --- maintenance and description ------------------------------------------------

    @_errors_to_status
    def Flush(self, request, context):
        if request.collection:
            self._collection(request.collection).flush()
        else:
            self.db.flush()
        return pb.FlushResponse()

    @_errors_to_status
    def Compact(self, request, context):
        self._collection(request.collection).compact()
        return pb.CompactResponse()

    @_errors_to_status
    def Stats(self, request, context):
        collection = self._collection(request.collection)
        stats = collection.stats()
        return pb.StatsResponse(rows=stats["rows"], segments=stats["segments"],
                                memtable_rows=stats["memtable_rows"],
                                deleted_rows=stats["deleted_rows"],
                                code_bytes=stats["code_bytes"], merges=stats["merges"],
                                write_amplification=stats["write_amplification"],
                                codec=collection.codec.spec,
                                device=collection.search_device())

    @_errors_to_status
    def ServerInfo(self, request, context):
        return pb.ServerInfoResponse(version=vecstore.__version__, device=self.db.device,
                                     read_only=self.read_only_caller(context))
