"""``vecstore.Client``: the remote twin of the embedded Database and Collection.

The same methods with the same arguments, return types and errors, over gRPC to a
``vecstore serve`` process. Input is checked here with the embedded checks before it is
sent, so bad input raises the same error without a round trip; the server checks again.

Differences from the embedded API, all from the network in between:

- Filters take the dict form only (a pyarrow Expression has no portable encoding).
- An insert larger than ``batch_bytes`` is split into batches (sent over one client
  stream by ``add``); each batch is atomic, the whole insert is not: when a later batch
  fails, the earlier ones stay written.
- A call failing with UNAVAILABLE (server unreachable or restarting) is retried with
  exponential backoff up to ``retries`` times; no other failure is retried. A write whose
  reply was lost may already be applied, so a retried ``add`` with explicit ids can raise
  AlreadyExists.
- Reads (``get``, ``get_metadata``) and query batches larger than ``batch_bytes`` (the
  queries or the largest possible results) go in several calls; a write landing between
  two calls may be seen by some queries of a batch and not others.
- ``RemoteCollection.close()`` releases the handle only: the collection stays open on
  the server, whose writes are durable when acknowledged.
- ``Database.damaged`` and ``Collection.path`` have no remote twin: the server's
  directories are its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pyarrow as pa

from vecstore import _validate, wire
from vecstore import metadata as metadata_module
from vecstore.codecs.registry import codec_from_config
from vecstore.collection import SearchResult
from vecstore.database import check_collection_options
from vecstore.errors import Closed, InvalidArgument, NotFound
from vecstore.search.executor import check_device
from vecstore.status_codes import error_from_rpc
from vecstore.v1 import vecstore_pb2 as pb
from vecstore.v1 import vecstore_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
# Inserts are cut into requests of about this many bytes, well under the message limit.
DEFAULT_BATCH_BYTES = 64 << 20
DEFAULT_RETRIES = 4
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0

def _target(url: str) -> tuple[str, bool]:
    """The ``host:port`` of ``url`` and whether its scheme asks for TLS."""
    for scheme, tls in (("grpcs://", True), ("grpc://", False)):
        if url.startswith(scheme):
            return url[len(scheme):].rstrip("/"), tls
    if "://" in url:
        raise InvalidArgument(f"url must be host:port, grpc://host:port or grpcs://host:port, "
                              f"got {url!r}")
    return url, False


class Client:
    """A connection to a vecstore server, with the methods of ``vecstore.Database``.

    Parameters
    ----------
    url : str
        ``host:port``, ``grpc://host:port``, or ``grpcs://host:port`` for TLS.
    api_key : str, optional
        Sent as ``authorization: Bearer <key>`` on every call.
    tls : bool
        Use TLS (implied by ``grpcs://``); ``root_certificates`` (PEM bytes) overrides the
        system's trusted roots, e.g. for a self-signed server certificate.
    timeout : float, optional
        Seconds each call may take; None waits as long as the call takes.
    max_message_bytes, batch_bytes : int
        The channel's message limit (the server's default is the same 256 MiB) and the
        size inserts are split at.
    retries : int
        How many times a call failing with UNAVAILABLE is retried, with backoff.
    """

    def __init__(self, url: str, api_key: str | None = None, *, tls: bool = False,
                 root_certificates: bytes | None = None, timeout: float | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 batch_bytes: int = DEFAULT_BATCH_BYTES, retries: int = DEFAULT_RETRIES):
        target, scheme_tls = _target(url)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidArgument(f"retries must be a non-negative integer, got {retries!r}")
        if not 0 < batch_bytes <= max_message_bytes:
            raise InvalidArgument(f"batch_bytes must be in 1..max_message_bytes "
                                  f"({max_message_bytes}), got {batch_bytes}")
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if tls or scheme_tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.VecstoreStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.url = url
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.batch_bytes = batch_bytes
        self.retries = retries
        self._closed = False

    def __repr__(self) -> str:
        return f"Client({self.url!r}{', closed' if self._closed else ''})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel. Safe to call more than once; the server keeps running."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def _call(self, method: str, request, *, with_call: bool = False):
        """``request`` through the stub's ``method``, retrying UNAVAILABLE with backoff;
        a failure raises the vecstore error of its status code. ``request`` may be a
        callable returning a fresh request iterator (client streams). ``with_call``
        returns (response, the call's trailing metadata as a dict)."""
        if self._closed:
            raise Closed("the client is closed")
        backoff, attempt = FIRST_BACKOFF_S, 0
        while True:
            try:
                sent = request() if callable(request) else request
                stub = getattr(self._stub, method)
                if not with_call:
                    return stub(sent, timeout=self.timeout, metadata=self._metadata)
                response, call = stub.with_call(sent, timeout=self.timeout,
                                                metadata=self._metadata)
                return response, dict(call.trailing_metadata() or ())
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise error_from_rpc(exc) from None
                if attempt == self.retries:  # say which server, and that it was retried
                    error = error_from_rpc(exc)
                    raise type(error)(f"vecstore server at {self.url} unavailable after "
                                      f"{attempt + 1} attempts: {error}") from None
            time.sleep(backoff)
            backoff, attempt = min(2 * backoff, MAX_BACKOFF_S), attempt + 1

    # --- the Database methods -----------------------------------------------------------

    def create_collection(self, name: str, *, dim: int, metric: str = "cosine",
                          codec: str = "tq4", seed: int = 0, rotation: str = "auto",
                          store_vectors: str | None = None,
                          rescore_codec: str | None = None) -> RemoteCollection:
        """Create an empty collection (see ``Database.create_collection``)."""
        check_collection_options(metric, store_vectors, rescore_codec)
        for field, value in (("dim", dim), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise InvalidArgument(f"{field} must be a non-negative integer, got {value!r}")
        info = self._call("CreateCollection", pb.CreateCollectionRequest(
            name=name, dim=int(dim), metric=wire.METRIC_ENUMS[metric], codec=codec, seed=int(seed),
            rotation=rotation, store_vectors=wire.STORED_VECTOR_ENUMS[store_vectors],
            rescore_codec=rescore_codec or ""))
        return RemoteCollection(self, info)

    def get_collection(self, name: str) -> RemoteCollection:
        """The collection called ``name``; NotFound if there is none."""
        return RemoteCollection(self, self._call("GetCollection",
                                                 pb.GetCollectionRequest(name=name)))

    def list_collections(self) -> list[str]:
        """Names of all collections, sorted."""
        return list(self._call("ListCollections", pb.ListCollectionsRequest()).names)

    def drop_collection(self, name: str) -> None:
        """Delete the collection and its files; NotFound if there is none."""
        self._call("DropCollection", pb.DropCollectionRequest(name=name))

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self.list_collections()

    def flush(self) -> None:
        """Flush every collection on the server."""
        self._call("Flush", pb.FlushRequest())

    def server_info(self) -> dict:
        """The server's ``version``, ``device`` setting, and whether this client's key is
        ``read_only``."""
        info = self._call("ServerInfo", pb.ServerInfoRequest())
        return {"version": info.version, "device": info.device, "read_only": info.read_only}


class RemoteCollection:
    """A collection on a server, with the methods of ``vecstore.Collection``.

    Get one from ``Client.create_collection`` or ``Client.get_collection``. Its description
    (name, dim, metric, codec) is fixed when it is created; counts and configuration are
    read from the server on each call.
    """

    def __init__(self, client: Client, info: pb.CollectionInfo):
        self._client = client
        self.name = info.name
        self.dim = info.dim
        self.metric = wire.METRIC_NAMES[info.metric]
        self.store_vectors = wire.STORED_VECTOR_NAMES[info.store_vectors]
        self.code_size = info.code_size
        self.bytes_per_vector = info.bytes_per_vector
        self._rescore_codec = info.rescore_codec or None
        self._closed = False

    def __repr__(self) -> str:
        return (f"RemoteCollection(name={self.name!r}, dim={self.dim}, metric={self.metric!r}, "
                f"url={self._client.url!r})")

    def __enter__(self) -> RemoteCollection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release this handle: later calls on it raise Closed. The collection stays open
        on the server. Safe to call more than once."""
        self._closed = True

    def _call(self, method: str, request, *, with_call: bool = False):
        if self._closed:
            raise Closed(f"collection {self.name!r} is closed")
        return self._client._call(method, request, with_call=with_call)

    # --- description --------------------------------------------------------------------

    @property
    def can_rescore(self) -> bool:
        """Whether ``search(..., rescore=r)`` has finer vectors to rerank with."""
        return self.store_vectors is not None or self._rescore_codec is not None

    def config(self) -> dict:
        """The collection's JSON-safe description, as ``Collection.config()``."""
        info = self._call("GetCollection", pb.GetCollectionRequest(name=self.name))
        return json.loads(info.config_json)

    @property
    def metadata_schema(self) -> pa.Schema:
        """The Arrow schema of the metadata fields seen so far, read from the server."""
        info = self._call("GetCollection", pb.GetCollectionRequest(name=self.name))
        return wire.unpack_schema(info.metadata_schema)

    @property
    def codec(self):
        """The collection's codec, rebuilt from its configuration on the server."""
        return codec_from_config(self.config()["codec"])

    def stats(self) -> dict:
        """``rows``, ``segments``, ``memtable_rows``, ``deleted_rows``, ``code_bytes``,
        ``merges`` and ``write_amplification``, as ``Collection.stats()``."""
        stats = self._call("Stats", pb.StatsRequest(collection=self.name))
        return {"rows": stats.rows, "segments": stats.segments,
                "memtable_rows": stats.memtable_rows, "deleted_rows": stats.deleted_rows,
                "code_bytes": stats.code_bytes, "merges": stats.merges,
                "write_amplification": stats.write_amplification}

    def search_device(self) -> str:
        """Where the server runs this collection's searches: "cpu" or "gpu"."""
        return self._call("Stats", pb.StatsRequest(collection=self.name)).device

    def __len__(self) -> int:
        return int(self._call("Stats", pb.StatsRequest(collection=self.name)).rows)

    def __contains__(self, item) -> bool:
        if isinstance(item, bool) or not isinstance(item, int | np.integer) or item < 0:
            return False
        try:
            self._call("Get", pb.GetRequest(collection=self.name, ids=[int(item)]))
        except NotFound:
            return False
        return True

    # --- writes -------------------------------------------------------------------------

    def _batches(self, vectors, ids, metadata) -> Iterator[pb.WriteRequest]:
        """Checked input as WriteRequests of about ``batch_bytes`` each."""
        x = _validate.as_matrix(vectors, self.dim, "vectors")
        if ids is not None:
            ids = _validate.as_ids(ids, x.shape[0])
            _validate.unique_ids(ids)
        table = metadata_module.as_metadata(metadata, x.shape[0])
        row_bytes = 4 * self.dim + 8 + (table.nbytes // x.shape[0] if table is not None else 0)
        per_batch = max(1, self._client.batch_bytes // max(1, row_bytes))
        for start in range(0, x.shape[0], per_batch):
            stop = start + per_batch
            yield pb.WriteRequest(
                collection=self.name, vectors=wire.pack_vectors(x[start:stop]), dim=self.dim,
                ids=[] if ids is None else ids[start:stop].tolist(),
                metadata=wire.pack_table(None if table is None
                                         else table.slice(start, stop - start)))

    def add(self, vectors, ids=None, metadata=None) -> np.ndarray:
        """Add vectors (n, d) or (d,) with optional ids (n,); return the ids (n,) int64.

        As ``Collection.add``; inserts above ``batch_bytes`` go as a client stream of
        batches, each atomic on its own.
        """
        requests = list(self._batches(vectors, ids, metadata))
        if len(requests) == 1:
            response = self._call("Insert", requests[0])
        else:
            response = self._call("InsertStream", lambda: iter(requests))
        return np.array(response.ids, dtype=np.int64)

    def upsert(self, vectors, ids, metadata=None) -> np.ndarray:
        """Insert vectors (n, d), replacing any stored under the same ids (n,); returns
        the ids. Atomic per batch of ``batch_bytes``."""
        if ids is None:
            raise InvalidArgument("upsert needs ids")
        written = [self._call("Upsert", request).ids
                   for request in self._batches(vectors, ids, metadata)]
        return np.concatenate([np.array(w, dtype=np.int64) for w in written])

    def train(self, vectors) -> None:
        """Fit data-dependent codecs (PQ, MIB, PCA) on a sample (n, d) before adding, as
        ``Collection.train``. The sample travels in one message, so it must fit the
        message limit."""
        x = _validate.as_matrix(vectors, self.dim, "training vectors")
        if x.nbytes > self._client.max_message_bytes:
            raise InvalidArgument(
                f"training vectors: {x.nbytes / 2**20:,.1f} MiB exceed the message limit of "
                f"{self._client.max_message_bytes / 2**20:,.1f} MiB; train on a sample "
                "(the codecs use at most 65,536 rows)")
        self._call("Train", pb.TrainRequest(collection=self.name,
                                            vectors=wire.pack_vectors(x), dim=self.dim))

    def delete(self, ids) -> int:
        """Delete the vectors with these ids; absent ids are ignored. Returns how many went."""
        ids = _validate.as_ids(ids)
        response = self._call("Delete", pb.DeleteRequest(collection=self.name,
                                                         ids=ids.tolist()))
        return int(response.deleted)

    def flush(self) -> None:
        """Seal the collection's recent writes into a segment on the server."""
        self._call("Flush", pb.FlushRequest(collection=self.name))

    def compact(self) -> None:
        """Rewrite the collection's segments without deleted rows."""
        self._call("Compact", pb.CompactRequest(collection=self.name))

    # --- reads --------------------------------------------------------------------------

    def _reads(self, ids, **what) -> Iterator[pb.GetResponse]:
        """Get responses for checked ``ids``, about ``batch_bytes`` of vectors per call
        (absent ids raise NotFound before anything is fetched: the first call checks
        them all)."""
        ids = _validate.as_ids(ids)
        per_call = max(1, self._client.batch_bytes // (4 * self.dim + 8))
        if ids.size > per_call:
            self._call("Get", pb.GetRequest(collection=self.name, ids=ids.tolist()))
        for start in range(0, max(ids.size, 1), per_call):
            chunk = ids[start : start + per_call].tolist()
            yield self._call("Get", pb.GetRequest(collection=self.name, ids=chunk, **what))

    def get(self, ids) -> np.ndarray:
        """The vectors (n, d) float32 of ``ids`` (n,); NotFound naming absent ids."""
        parts = [wire.unpack_vectors(response.vectors, self.dim)
                 for response in self._reads(ids, with_vectors=True)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    def get_metadata(self, ids) -> pa.Table:
        """The metadata rows of ``ids`` (n,) as a Table with an ``id`` column first."""
        tables = [wire.unpack_table(response.metadata)
                  for response in self._reads(ids, with_metadata=True)]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def search(self, queries, k: int = 10, *, rescore: int | None = None,
               filter=None, device: str | None = None) -> SearchResult:
        """The k nearest stored vectors to each query (nq, d) or (d,): a SearchResult of
        (nq, k) float32 distances and int64 ids, as ``Collection.search``."""
        return self.search_timed(queries, k, rescore=rescore, filter=filter,
                                 device=device)[0]

    def search_timed(self, queries, k: int = 10, *, rescore: int | None = None,
                     filter=None, device: str | None = None
                     ) -> tuple[SearchResult, list[wire.ServerTiming | None]]:
        """``search``, and where the server spent each of its calls' time (one call per
        ``batch_bytes`` of queries): decoding, queued for a batch, searching, encoding
        (None from a server that does not say)."""
        q = _validate.as_matrix(queries, self.dim, "queries")
        k = _validate.as_k(k)
        rescore = _validate.as_rescore(rescore)
        if device is not None:
            check_device(device)
        filter_json = wire.filter_to_json(filter)
        # A result is at most a 10-byte id varint and a 4-byte distance.
        per_call = max(1, self._client.batch_bytes // max(4 * self.dim, 14 * k + 10))
        parts, timings = [], []
        for start in range(0, q.shape[0], per_call):
            request = pb.SearchRequest(collection=self.name, dim=self.dim, k=k,
                                       queries=wire.pack_vectors(q[start : start + per_call]),
                                       filter_json=filter_json, device=wire.DEVICE_ENUMS[device])
            if rescore is not None:
                request.rescore = rescore
            response, trailing = self._call("Search", request, with_call=True)
            packed = trailing.get(wire.TIMING_HEADER)
            timings.append(None if packed is None else wire.ServerTiming.unpack(packed))
            parts.append(wire.expand_results(response.counts, response.ids,
                                             response.distances, k, self.metric))
        if len(parts) == 1:
            return parts[0], timings
        return SearchResult(np.concatenate([part.distances for part in parts]),
                            np.concatenate([part.ids for part in parts])), timings
