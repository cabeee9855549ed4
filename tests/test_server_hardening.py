"""Hostile input to the embedded database and the gRPC server: every bad call gets its
documented status code with a bounded message, nothing on disk changes, and the server
stays healthy (a health check and a normal search still answer)."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import vecstore
from vecstore import wire
from vecstore.v1 import vecstore_pb2 as pb
from vecstore.v1 import vecstore_pb2_grpc as pb_grpc

pytest.importorskip("grpc_health")
from vecstore.server import serve  # noqa: E402
from vecstore.server.servicer import MAX_STATUS_MESSAGE_CHARS  # noqa: E402

Code = grpc.StatusCode
DIM = 8
N = 6
MAX_MESSAGE_BYTES = 4 << 20
X = np.random.default_rng(5).standard_normal((N, DIM)).astype(np.float32)
YEARS = [2000, 2001, 2002, 2003, 2004, 2005]


def _view_and_ree_columns() -> dict[str, tuple[pa.Array, list]]:
    """Columns of the types that used to poison a collection, with their values."""
    words = ["a", "b", "c", "a", "b", "c"]
    columns = {
        "string_view": (pa.array(words, pa.string_view()), words),
        "binary_view": (pa.array([w.encode() for w in words], pa.binary_view()),
                        [w.encode() for w in words]),
        "run_end_encoded": (pc.run_end_encode(pa.array([1, 1, 2, 2, 3, 3])),
                            [1, 1, 2, 2, 3, 3]),
    }
    values = [[1], [2, 3], None, [4], [], [5, 6]]
    offsets, sizes = [0, 1, 0, 3, 0, 4], [1, 2, 0, 1, 0, 2]
    items = pa.array([1, 2, 3, 4, 5, 6])
    mask = pa.array([v is None for v in values])
    if hasattr(pa, "ListViewArray"):
        columns["list_view"] = (pa.ListViewArray.from_arrays(offsets, sizes, items, mask=mask),
                                values)
        columns["large_list_view"] = (
            pa.LargeListViewArray.from_arrays(offsets, sizes, items, mask=mask), values)
    return columns


VIEW_COLUMNS = _view_and_ree_columns()


def _disk(path) -> dict:
    """Every file under ``path`` with its size."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))
            if p.is_file()}


def _check_stored(collection, expected: list) -> None:
    assert collection.get_metadata([0, 1, 2, 3, 4, 5]).column("m").to_pylist() == expected
    assert collection.get_metadata([100, 105]).column("m").to_pylist() == [expected[0],
                                                                           expected[5]]
    found = collection.search(X[:1], k=3, filter={"year": {">=": 2003}}).ids
    assert set(found[0]) <= {3, 4, 5, 103, 104, 105}
    np.testing.assert_allclose(collection.get([5, 105]), X[[5, 5]], rtol=1e-6)


# --- 1. view and run-end-encoded metadata ------------------------------------------------

@pytest.mark.parametrize("kind", sorted(VIEW_COLUMNS))
def test_view_and_run_end_encoded_metadata_are_stored_as_plain_types(tmp_path, kind):
    column, expected = VIEW_COLUMNS[kind]
    with vecstore.open(tmp_path, device="cpu") as db:
        c = db.create_collection("c", dim=DIM, metric="l2", codec="flat",
                                 store_vectors="float32")
        c.add(X, metadata={"m": column, "year": YEARS})
        c.flush()
        c.add(X, ids=np.arange(100, 106), metadata=pa.table({"m": column, "year": YEARS}))
        c.compact()
        _check_stored(c, expected)
    with vecstore.open(tmp_path, device="cpu") as db:
        c = db.get_collection("c")
        assert not any(str(t).endswith(("_view", "view>")) or "run_end" in str(t)
                       for t in c.metadata_schema.types)
        _check_stored(c, expected)


@pytest.mark.parametrize("column", [
    pa.UnionArray.from_sparse(pa.array([0] * N, pa.int8()), [pa.array(range(N))]),
    pa.UnionArray.from_dense(pa.array([0] * N, pa.int8()), pa.array(range(N), pa.int32()),
                             [pa.array(range(N))]),
    pa.ListArray.from_arrays(list(range(N + 1)), pc.run_end_encode(pa.array(range(N)))),
], ids=["sparse_union", "dense_union", "list_of_run_end_encoded"])
def test_metadata_that_cannot_be_stored_is_refused_and_changes_nothing(tmp_path, column):
    with vecstore.open(tmp_path, device="cpu") as db:
        c = db.create_collection("c", dim=DIM, codec="flat")
        before = _disk(tmp_path)
        with pytest.raises(vecstore.InvalidArgument, match="cannot be stored"):
            c.add(X, metadata={"m": column})
        assert len(c) == 0 and _disk(tmp_path) == before
        c.add(X, metadata={"year": YEARS})
        c.flush()
        assert c.get_metadata([0]).column("year").to_pylist() == [2000]


# --- the gRPC server ---------------------------------------------------------------------

def _health(address: str, timeout: float = 2.0) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout).status


@pytest.fixture
def served(tmp_path):
    """A server on ``tmp_path/data`` with collection "c" (N rows of year metadata) and a
    raw stub: (server, stub, data directory)."""
    data = tmp_path / "data"
    server = serve(data, device="cpu", port=0, max_message_bytes=MAX_MESSAGE_BYTES)
    channel = grpc.insecure_channel(server.address, options=[
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20)])
    try:
        stub = pb_grpc.VecstoreStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(
            name="c", dim=DIM, metric=pb.METRIC_L2, codec="flat",
            store_vectors=pb.STORED_VECTORS_FLOAT32),
            timeout=10)
        stub.Insert(_write(X, pa.table({"year": YEARS})), timeout=10)
        yield server, stub, data
    finally:
        channel.close()
        server.stop(5)


def _write(x, table, ids=None) -> pb.WriteRequest:
    return pb.WriteRequest(collection="c", vectors=wire.pack_vectors(x), dim=DIM,
                           ids=[] if ids is None else list(ids),
                           metadata=wire.pack_table(table))


def _search(stub, filter_json: str = "", timeout: float = 5.0) -> pb.SearchResponse:
    return stub.Search(pb.SearchRequest(collection="c", dim=DIM, k=3, filter_json=filter_json,
                                        queries=wire.pack_vectors(X[:1])), timeout=timeout)


def _refused(call, code) -> str:
    """Make the failing ``call``; check its code and message bound; the message."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code, raised.value.details()
    assert len(raised.value.details()) <= MAX_STATUS_MESSAGE_CHARS
    return raised.value.details()


def _still_healthy(server, stub) -> None:
    assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
    assert list(_search(stub).counts) == [3]


@pytest.mark.parametrize("kind", sorted(VIEW_COLUMNS))
def test_view_and_run_end_encoded_metadata_over_grpc(served, kind):
    server, stub, data = served
    column, expected = VIEW_COLUMNS[kind]
    table = pa.table({"m": column, "year": YEARS})
    stub.Insert(_write(X, table, ids=range(100, 106)), timeout=10)
    stub.Flush(pb.FlushRequest(collection="c"), timeout=10)
    stub.Insert(_write(X, table, ids=range(200, 206)), timeout=10)
    stub.Compact(pb.CompactRequest(collection="c"), timeout=10)
    got = stub.Get(pb.GetRequest(collection="c", ids=[100, 205], with_metadata=True),
                   timeout=10)
    assert wire.unpack_table(got.metadata).column("m").to_pylist() == [expected[0],
                                                                       expected[5]]
    assert set(_search(stub, json.dumps({"year": {">=": 2005}})).ids) == {5, 105, 205}
    _still_healthy(server, stub)
    server.stop(5)
    with vecstore.open(data, device="cpu") as db:
        c = db.get_collection("c")
        assert c.get_metadata([100, 205]).column("m").to_pylist() == [expected[0],
                                                                       expected[5]]


def test_a_union_column_over_grpc_is_refused_and_changes_nothing(served):
    server, stub, data = served
    union = pa.UnionArray.from_sparse(pa.array([0] * N, pa.int8()), [pa.array(range(N))])
    before = _disk(data)
    _refused(lambda: stub.Insert(_write(X, pa.table({"u": union}), ids=range(100, 106)),
                                 timeout=10), Code.INVALID_ARGUMENT)
    assert _disk(data) == before
    _still_healthy(server, stub)


# --- 2. compressed metadata --------------------------------------------------------------

@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_metadata_is_refused_before_it_is_decompressed(served, codec):
    server, stub, data = served
    table = pa.table({"big": ["x" * (32 << 20)]})  # compresses to a few KiB
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=codec)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    assert len(payload) < MAX_MESSAGE_BYTES
    request = pb.WriteRequest(collection="c", vectors=wire.pack_vectors(X[:1]), dim=DIM,
                              ids=[100], metadata=payload)
    before = _disk(data)
    message = _refused(lambda: stub.Insert(request, timeout=10), Code.INVALID_ARGUMENT)
    assert "compressed Arrow IPC bodies are not accepted" in message
    assert _disk(data) == before
    with pytest.raises(vecstore.InvalidArgument, match="compressed"):
        wire.unpack_table(payload)
    _still_healthy(server, stub)


def test_uncompressed_metadata_with_dictionaries_still_unpacks():
    table = pa.table({"d": pa.array(["u", "v", "u"]).dictionary_encode(), "n": [1, 2, 3]})
    assert wire.unpack_table(wire.pack_table(table)).equals(table)


# --- 3. filters too deep or out of range -------------------------------------------------

DEEP_JSON = '{"year": {"in": ' + "[" * 3000 + "1" + "]" * 3000 + "}}"
BAD_FILTERS = {
    "deep_json": DEEP_JSON,
    "deep_dicts": '{"year": ' + '{"==": ' * 3000 + "1" + "}" * 3000 + "}",
    "just_past_the_depth_limit": '{"year": {"in": ' + "[" * 31 + "1" + "]" * 31 + "}}",
    "beyond_int64": json.dumps({"year": {">": 2 ** 70}}),
    "beyond_int64_in_list": json.dumps({"year": [2 ** 70]}),
    "beyond_int64_equal": json.dumps({"year": -(2 ** 70)}),
}


@pytest.mark.parametrize("name", sorted(BAD_FILTERS))
def test_bad_filters_over_grpc_are_invalid_argument(served, name):
    server, stub, data = served
    before = _disk(data)
    _refused(lambda: _search(stub, BAD_FILTERS[name]), Code.INVALID_ARGUMENT)
    assert _disk(data) == before
    _still_healthy(server, stub)


def _nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("filter", [
    {"year": {"in": _nested(3000)}}, {"year": _nested(3000)}, {"year": {"in": _nested(31)}},
    {"year": {">": 2 ** 70}}, {"year": [2 ** 70]}, {"year": 2 ** 70},
    {"year": {"in": 2005}},
], ids=["deep_in", "deep_list", "just_past_the_limit", "gt_beyond_int64",
        "list_beyond_int64", "equal_beyond_int64", "in_without_a_list"])
def test_bad_filters_embedded_are_invalid_argument(filter):
    with vecstore.open(device="cpu") as db:
        c = db.create_collection("c", dim=DIM, codec="flat")
        c.add(X, metadata={"year": YEARS})
        with pytest.raises(vecstore.InvalidArgument) as raised:
            c.search(X[:1], k=3, filter=filter)
        assert len(str(raised.value)) <= 400
        assert c.search(X[:1], k=3, filter={"year": {"in": _nested(1, 2005)}}).ids[0, 0] == 5


def test_a_filter_at_the_depth_limit_still_runs():
    from vecstore.metadata import MAX_FILTER_DEPTH

    with vecstore.open(device="cpu") as db:
        c = db.create_collection("c", dim=DIM, codec="flat")
        c.add(X, metadata={"year": YEARS})
        filter = {"year": {"in": [2005]}}
        assert wire.filter_from_json(json.dumps(filter)) == filter
        assert MAX_FILTER_DEPTH >= 3
        assert c.search(X[:1], k=3, filter=filter).ids[0, 0] == 5


# --- 4. bounded status messages ----------------------------------------------------------

def test_a_huge_collection_name_is_invalid_argument_with_a_bounded_message(served):
    server, stub, data = served
    name = "x" * 20_000 + "/"
    before = _disk(data)
    for call in (
        lambda: stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=DIM), timeout=10),
        lambda: stub.GetCollection(pb.GetCollectionRequest(name=name), timeout=10),
        lambda: stub.DropCollection(pb.DropCollectionRequest(name=name), timeout=10),
        lambda: _search_in(stub, name),
        lambda: _search(stub, json.dumps({"f" * 20_000: 1})),  # echoed in the message
    ):
        _refused(call, Code.INVALID_ARGUMENT)
    assert _disk(data) == before
    _still_healthy(server, stub)


def _search_in(stub, collection: str):
    return stub.Search(pb.SearchRequest(collection=collection, dim=DIM, k=1,
                                        queries=wire.pack_vectors(X[:1])), timeout=10)


def test_short_messages_are_not_cut():
    from vecstore.server.servicer import bounded

    assert bounded("short") == "short"
    cut = bounded("y" * 5000)
    assert len(cut) == MAX_STATUS_MESSAGE_CHARS and cut.endswith("… (truncated)")


# --- 6. Get with many repeats ------------------------------------------------------------

def test_a_get_of_a_million_repeats_is_refused_quickly(served):
    server, stub, data = served
    request = pb.GetRequest(collection="c", ids=[3] * 1_000_000, with_vectors=True)
    started = time.monotonic()
    message = _refused(lambda: stub.Get(request, timeout=30), Code.RESOURCE_EXHAUSTED)
    assert "message limit" in message and time.monotonic() - started < 10
    metadata_only = pb.GetRequest(collection="c", ids=[3] * 1_000_000, with_metadata=True)
    _refused(lambda: stub.Get(metadata_only, timeout=30), Code.RESOURCE_EXHAUSTED)
    _still_healthy(server, stub)


def test_a_get_of_repeated_ids_under_the_limit_matches_the_embedded_get(served):
    server, stub, data = served
    ids = np.array([3, 0, 3, 5] * 5_000)
    got = stub.Get(pb.GetRequest(collection="c", ids=ids.tolist(), with_vectors=True,
                                 with_metadata=True), timeout=30)
    presence = stub.Get(pb.GetRequest(collection="c", ids=ids.tolist()), timeout=30)
    assert list(presence.ids) == ids.tolist()
    _refused(lambda: stub.Get(pb.GetRequest(collection="c", ids=[3, 99]), timeout=10),
             Code.NOT_FOUND)
    server.stop(5)
    with vecstore.open(data, device="cpu") as db:
        c = db.get_collection("c")
        np.testing.assert_array_equal(wire.unpack_vectors(got.vectors, DIM), c.get(ids))
        assert wire.unpack_table(got.metadata).equals(c.get_metadata(ids))


# --- 5. concurrency: idle streams, the cap, health ---------------------------------------

def _idle_stream(release: threading.Event):
    release.wait(30)
    yield from ()


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def limited(tmp_path):
    """start(**options): a server with collection "c"; a stub and a channel for health."""
    servers, channels = [], []

    def start(**options):
        server = serve(None, device="cpu", port=0, **options)
        servers.append(server)
        channel = grpc.insecure_channel(server.address)
        channels.append(channel)
        stub = pb_grpc.VecstoreStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="c", dim=DIM, codec="flat"),
                              timeout=10)
        stub.Insert(_write(X, pa.table({"year": YEARS})), timeout=10)
        return server, stub

    yield start
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(5)


def test_idle_streams_do_not_stall_unary_calls_and_past_the_stream_cap_are_refused(limited):
    server, stub = limited(max_concurrent_rpcs=24, max_concurrent_streams=16)
    release = threading.Event()
    streams = []
    try:
        streams = [stub.InsertStream.future(_idle_stream(release), timeout=60)
                   for _ in range(16)]  # the old server ran 16 threads in all
        _wait_for(lambda: server.limiter.streams == 16)
        started = time.monotonic()
        assert list(_search(stub, timeout=2).counts) == [3]
        assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - started < 2
        extra = stub.InsertStream.future(_idle_stream(release), timeout=60)
        assert extra.exception(timeout=5).code() == Code.RESOURCE_EXHAUSTED
        assert "client streams" in extra.exception().details()
    finally:
        release.set()
        for stream in streams:
            assert list(stream.result(timeout=30).ids) == []
    _wait_for(lambda: server.limiter.calls == 0)
    assert list(_search(stub).counts) == [3]


def test_health_and_reflection_answer_while_the_call_cap_is_full(limited):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server, stub = limited(max_concurrent_rpcs=8, max_concurrent_streams=8)
    release = threading.Event()
    streams = []
    try:
        streams = [stub.InsertStream.future(_idle_stream(release), timeout=60)
                   for _ in range(8)]
        _wait_for(lambda: server.limiter.calls == 8)
        started = time.monotonic()
        message = _refused(lambda: _search(stub, timeout=2), Code.RESOURCE_EXHAUSTED)
        assert "limit of 8 calls" in message and time.monotonic() - started < 2
        statuses = [_health(server.address) for _ in range(10)]
        assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 10
        with grpc.insecure_channel(server.address) as channel:
            responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            services = {s.name for r in responses for s in r.list_services_response.service}
        assert "vecstore.v1.Vecstore" in services
    finally:
        release.set()
        for stream in streams:
            assert list(stream.result(timeout=30).ids) == []
    _wait_for(lambda: server.limiter.calls == 0)
    assert list(_search(stub).counts) == [3]


def test_concurrency_options_are_checked():
    from vecstore.server import Server

    with vecstore.open() as db:
        for options in ({"max_concurrent_streams": 0}, {"reserve_threads": 0},
                        {"max_concurrent_rpcs": 4, "max_concurrent_streams": 5}):
            with pytest.raises(vecstore.InvalidArgument):
                Server(db, port=0, **options)
        server = Server(db, port=0, max_concurrent_rpcs=9)
        assert server.limiter.max_streams == 4
        server.stop(0)
