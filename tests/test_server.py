"""The gRPC service against a real server process: the client mirrors the embedded
database exactly, bad input gets its documented status code and changes nothing, health
and reflection answer, limits hold, and the committed stubs match the proto."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import vecstore
from tests.grpc_server import REPO_ROOT, start_server, wait_until_stored
from vecstore import wire
from vecstore.v1 import vecstore_pb2 as pb
from vecstore.v1 import vecstore_pb2_grpc as pb_grpc

Code = grpc.StatusCode
MAX_MESSAGE_MB = 4
DIM = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = start_server(tmp_path_factory.mktemp("server"),
                           "--max-message-mb", str(MAX_MESSAGE_MB))
    yield process
    assert process.stop() == 0, process.log_text()
    # Every failure was the caller's and reached it as a status code: nothing crashed.
    assert "Traceback" not in process.log_text() and "internal error" not in process.log_text()


@pytest.fixture(scope="module")
def client(server):
    with vecstore.Client(server.address) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server):
    options = [("grpc.max_send_message_length", 64 << 20),
               ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield pb_grpc.VecstoreStub(channel)


# --- congruence: the same calls embedded and remote -------------------------------------

def _run_script(db) -> list:
    """A fixed sequence of calls on ``db`` (a Database or a Client): every result and
    the type of every error, in order."""
    rng = np.random.default_rng(7)
    out = []

    def record(call):
        try:
            value = call()
        except vecstore.VecstoreError as exc:
            value = ("error", type(exc).__name__)
        out.append(value)

    texts = db.create_collection("texts", dim=24, metric="cosine", codec="tq4")
    points = db.create_collection("points", dim=24, metric="l2", codec="tq2",
                                  store_vectors="float16")
    raw = db.create_collection("raw", dim=24, metric="ip", codec="flat")
    x = rng.standard_normal((600, 24)).astype(np.float32)
    lang = np.array(["en", "de", "fr"])[rng.integers(0, 3, 600)].tolist()
    year = rng.integers(1990, 2030, 600)
    for c in (texts, points, raw):
        record(lambda c=c: c.add(x[:400], metadata={"lang": lang[:400], "year": year[:400]}))
        record(lambda c=c: c.add(x[400:500]))                                  # auto ids
        record(lambda c=c: c.add(x[500:550], ids=np.arange(10_000, 10_050)))
        record(lambda c=c: c.upsert(x[550:560], ids=np.arange(5, 15),
                                    metadata={"lang": ["xx"] * 10, "year": [0] * 10}))
        record(lambda c=c: c.delete([1, 2, 3, 99_999]))
        record(lambda c=c: c.search(x[:7], k=12))
        record(lambda c=c: c.search(x[0], k=3))
        record(lambda c=c: c.search(x[:5], k=9, filter={"lang": ["de", "xx"],
                                                         "year": {">=": 2000}}))
        record(lambda c=c: c.search(x[:2], k=700))                             # k > rows
        record(lambda c=c: c.search(x[:2], k=5, filter={"lang": "none"}))      # no match
        record(lambda c=c: c.get([0, 7, 10_049]))
        record(lambda c=c: c.get_metadata([0, 7, 10_049]).to_pylist())
        record(lambda c=c: (type(c.get_metadata([0, 7])), c.get_metadata([0, 7]).schema))
        record(lambda c=c: c.stats())
        record(lambda c=c: c.config())
        record(lambda c=c: (len(c), 7 in c, 2 in c, -1 in c))
        record(lambda c=c: c.flush())
        record(lambda c=c: c.compact())
        record(lambda c=c: (c.stats(), c.search(x[:3], k=4)))
        record(lambda c=c: c.add(x[:2], ids=[0, 4]))                           # taken
        record(lambda c=c: c.add(x[:2, :5]))                                   # wrong dim
        record(lambda c=c: c.get([1]))                                         # deleted
        record(lambda c=c: c.search(x[:1], k=0))
    coded = db.create_collection("coded", dim=24, metric="l2", codec="pq8x4")
    record(lambda: coded.train(x[:, :5]))                                     # wrong dim
    record(lambda: coded.train(x[:300]))
    record(lambda: (coded.add(x[300:]), coded.search(x[:4], k=5), coded.config()))
    record(lambda: coded.train(x[:300]))                                      # holds rows
    for c in (texts, points, coded):
        record(lambda c=c: c.metadata_schema)
    record(lambda: points.search(x[:4], k=5, rescore=4))
    record(lambda: texts.search(x[:4], k=5, rescore=4))                        # nothing kept
    record(lambda: db.create_collection("texts", dim=24))
    record(lambda: db.get_collection("missing"))
    record(lambda: db.list_collections())
    record(lambda: db.drop_collection("raw"))
    record(lambda: db.list_collections())
    record(lambda: db.get_collection("points").search(x[:3], k=6))
    return out


def _assert_same(embedded, remote, where="result"):
    if isinstance(embedded, np.ndarray):
        assert isinstance(remote, np.ndarray), where
        assert embedded.dtype == remote.dtype and embedded.shape == remote.shape, where
        np.testing.assert_array_equal(embedded, remote, err_msg=where)
    elif isinstance(embedded, tuple | list):
        assert type(embedded) is type(remote) and len(embedded) == len(remote), where
        for i, (a, b) in enumerate(zip(embedded, remote, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(embedded, dict):
        assert embedded.keys() == remote.keys(), where
        for key in embedded:
            _assert_same(embedded[key], remote[key], f"{where}[{key!r}]")
    else:
        assert embedded == remote and type(embedded) is type(remote), where


def test_client_and_embedded_database_agree_call_for_call(tmp_path, server):
    with vecstore.open(tmp_path / "embedded") as db:
        embedded = _run_script(db)
    with vecstore.Client(server.address) as client:
        remote = _run_script(client)
        for name in client.list_collections():
            client.drop_collection(name)
    assert len(embedded) == len(remote)
    for i, (a, b) in enumerate(zip(embedded, remote, strict=True)):
        _assert_same(a, b, f"call {i}")
    errors = {value[1] for value in embedded
              if type(value) is tuple and isinstance(value[0], str) and value[0] == "error"}
    assert errors == {"AlreadyExists", "InvalidArgument", "NotFound"}


def test_large_insert_streams_in_batches_and_matches_one_embedded_add(server):
    x = np.random.default_rng(3).standard_normal((3000, 32)).astype(np.float32)
    meta = {"n": np.arange(3000)}
    with vecstore.open() as db:
        local = db.create_collection("bulk", dim=32, metric="ip", codec="tq3")
        local_ids = local.add(x, metadata=meta)
        expected = local.search(x[:20], k=10, filter={"n": {"<": 1500}})
    with vecstore.Client(server.address, batch_bytes=20_000) as client:  # about 140 rows
        remote = client.create_collection("bulk", dim=32, metric="ip", codec="tq3")
        try:
            np.testing.assert_array_equal(remote.add(x, metadata=meta), local_ids)
            got = remote.search(x[:20], k=10, filter={"n": {"<": 1500}})
            np.testing.assert_array_equal(got.ids, expected.ids)
            np.testing.assert_array_equal(got.distances, expected.distances)
            assert remote.get_metadata([2999]).column("n").to_pylist() == [2999]
        finally:
            client.drop_collection("bulk")


def test_client_rejects_an_expression_filter_with_the_dict_form_named(client):
    import pyarrow.compute as pc

    c = client.create_collection("expr", dim=DIM)
    try:
        c.add(np.ones((2, DIM)), metadata={"a": [1, 2]})
        with pytest.raises(vecstore.InvalidArgument, match="dict form"):
            c.search(np.ones(DIM), k=1, filter=pc.field("a") == 1)
    finally:
        client.drop_collection("expr")


# --- bad input: documented code, a message naming the field, nothing changed ------------

@pytest.fixture(scope="module")
def fixed(stub):
    """A collection 'fixed' of 200 rows (d=8, l2, stored float32 vectors, metadata)."""
    x = np.random.default_rng(11).standard_normal((200, DIM)).astype(np.float32)
    stub.CreateCollection(pb.CreateCollectionRequest(
        name="fixed", dim=DIM, metric=pb.METRIC_L2, codec="tq4",
        store_vectors=pb.STORED_VECTORS_FLOAT32))
    stub.Insert(pb.WriteRequest(collection="fixed", vectors=wire.pack_vectors(x), dim=DIM,
                                ids=list(range(200)),
                                metadata=wire.pack_table(pa.table({"tag": np.arange(200) % 5}))))
    return x


def _snapshot(stub, x):
    stats = stub.Stats(pb.StatsRequest(collection="fixed"))
    found = stub.Search(pb.SearchRequest(collection="fixed", queries=wire.pack_vectors(x[:5]),
                                         dim=DIM, k=10))
    got = stub.Get(pb.GetRequest(collection="fixed", ids=list(range(200)), with_vectors=True,
                                 with_metadata=True))
    return (stats.rows, stats.deleted_rows, list(found.ids), list(found.distances),
            got.vectors, got.metadata, list(stub.ListCollections(
                pb.ListCollectionsRequest()).names))


def _vec(*rows, dim=DIM) -> bytes:
    return np.array(rows, dtype="<f4").reshape(-1, dim).tobytes()


ONES = np.ones(DIM).tolist()
BAD_INPUT = {
    "wrong dim": ("Insert", pb.WriteRequest(collection="fixed", vectors=_vec([1.0] * 5, dim=5),
                                            dim=5, ids=[900]),
                  Code.INVALID_ARGUMENT, "dimension 5"),
    "nan": ("Insert", pb.WriteRequest(collection="fixed", vectors=_vec([np.nan] + ONES[1:]),
                                      dim=DIM, ids=[900]), Code.INVALID_ARGUMENT, "NaN"),
    "inf in queries": ("Search", pb.SearchRequest(collection="fixed", dim=DIM, k=3,
                                                  queries=_vec([np.inf] + ONES[1:])),
                       Code.INVALID_ARGUMENT, "queries"),
    "empty batch": ("Insert", pb.WriteRequest(collection="fixed", vectors=b"", dim=DIM),
                    Code.INVALID_ARGUMENT, "vectors is an empty batch"),
    "zero dim": ("Insert", pb.WriteRequest(collection="fixed", vectors=b"", dim=0),
                 Code.INVALID_ARGUMENT, "vectors: dim"),
    "duplicate ids": ("Insert", pb.WriteRequest(collection="fixed", vectors=_vec(ONES, ONES),
                                                dim=DIM, ids=[900, 900]),
                      Code.INVALID_ARGUMENT, "duplicate ids"),
    "ids for other rows": ("Insert", pb.WriteRequest(collection="fixed", vectors=_vec(ONES),
                                                     dim=DIM, ids=[900, 901]),
                           Code.INVALID_ARGUMENT, "ids"),
    "negative id": ("Upsert", pb.WriteRequest(collection="fixed", vectors=_vec(ONES), dim=DIM,
                                              ids=[-4]), Code.INVALID_ARGUMENT, "ids"),
    "upsert without ids": ("Upsert", pb.WriteRequest(collection="fixed", vectors=_vec(ONES),
                                                     dim=DIM), Code.INVALID_ARGUMENT, "ids"),
    "id taken": ("Insert", pb.WriteRequest(collection="fixed", vectors=_vec(ONES), dim=DIM,
                                           ids=[7]), Code.ALREADY_EXISTS, "ids already"),
    "ragged bytes": ("Insert", pb.WriteRequest(collection="fixed", dim=DIM,
                                               vectors=_vec(ONES) + b"\0\0\0\0"),
                     Code.INVALID_ARGUMENT, "vectors: 36 bytes"),
    "ragged query bytes": ("Search", pb.SearchRequest(collection="fixed", dim=DIM, k=3,
                                                      queries=_vec(ONES)[:-1]),
                           Code.INVALID_ARGUMENT, "queries: 31 bytes"),
    "bad metadata": ("Insert", pb.WriteRequest(collection="fixed", vectors=_vec(ONES), dim=DIM,
                                               ids=[900], metadata=b"not arrow"),
                     Code.INVALID_ARGUMENT, "metadata"),
    "k zero": ("Search", pb.SearchRequest(collection="fixed", queries=_vec(ONES), dim=DIM, k=0),
               Code.INVALID_ARGUMENT, "k must be"),
    "k negative": ("Search", pb.SearchRequest(collection="fixed", queries=_vec(ONES), dim=DIM,
                                              k=-3), Code.INVALID_ARGUMENT, "k must be"),
    "k above the cap": ("Search", pb.SearchRequest(collection="fixed", queries=_vec(ONES),
                                                   dim=DIM, k=16_385),
                        Code.INVALID_ARGUMENT, "k must be between 1 and 16384"),
    "rescore above the cap": ("Search", pb.SearchRequest(collection="fixed", dim=DIM, k=3,
                                                         queries=_vec(ONES), rescore=65),
                              Code.INVALID_ARGUMENT, "rescore"),
    "filter not json": ("Search", pb.SearchRequest(collection="fixed", queries=_vec(ONES),
                                                   dim=DIM, k=3, filter_json="{tag"),
                        Code.INVALID_ARGUMENT, "filter_json"),
    "filter on unknown field": ("Search", pb.SearchRequest(collection="fixed", dim=DIM, k=3,
                                                           queries=_vec(ONES),
                                                           filter_json='{"nope": 1}'),
                                Code.INVALID_ARGUMENT, "filter"),
    "unknown metric": ("CreateCollection", pb.CreateCollectionRequest(name="new", dim=4,
                                                                      metric=9),
                       Code.INVALID_ARGUMENT, "metric"),
    "unknown codec": ("CreateCollection", pb.CreateCollectionRequest(name="new", dim=4,
                                                                     codec="tq99"),
                      Code.INVALID_ARGUMENT, "tq99"),
    "unknown collection": ("Search", pb.SearchRequest(collection="nope", queries=_vec(ONES),
                                                      dim=DIM, k=3),
                           Code.NOT_FOUND, "nope"),
    "unknown collection on drop": ("DropCollection", pb.DropCollectionRequest(name="nope"),
                                   Code.NOT_FOUND, "nope"),
    "name taken": ("CreateCollection", pb.CreateCollectionRequest(name="fixed", dim=4),
                   Code.ALREADY_EXISTS, "fixed"),
    "name with slash": ("CreateCollection", pb.CreateCollectionRequest(name="a/b", dim=4),
                        Code.INVALID_ARGUMENT, "collection name"),
    "name dot dot": ("CreateCollection", pb.CreateCollectionRequest(name="..", dim=4),
                     Code.INVALID_ARGUMENT, "collection name"),
    "path in collection": ("Insert", pb.WriteRequest(collection="../fixed", dim=DIM,
                                                     vectors=_vec(ONES), ids=[900]),
                           Code.INVALID_ARGUMENT, "collection name"),
    "path on drop": ("DropCollection", pb.DropCollectionRequest(name="../fixed"),
                     Code.INVALID_ARGUMENT, "collection name"),
    "oversized message": ("Insert", pb.WriteRequest(
        collection="fixed", dim=DIM, vectors=bytes((MAX_MESSAGE_MB << 20) + 4 * DIM)),
        Code.RESOURCE_EXHAUSTED, "larger than max"),
}
# The same table on the other RPCs that take the input (InsertStream gets one message).
_OVERSIZED = bytes((MAX_MESSAGE_MB << 20) + 4 * DIM)
BAD_INPUT.update({
    "wrong dim on upsert": ("Upsert", pb.WriteRequest(collection="fixed", dim=5, ids=[900],
                                                      vectors=_vec([1.0] * 5, dim=5)),
                            Code.INVALID_ARGUMENT, "vectors have dimension 5"),
    "wrong dim in a stream": ("InsertStream", pb.WriteRequest(
        collection="fixed", dim=5, ids=[900], vectors=_vec([1.0] * 5, dim=5)),
        Code.INVALID_ARGUMENT, "vectors have dimension 5"),
    "wrong dim in queries": ("Search", pb.SearchRequest(collection="fixed", dim=5, k=3,
                                                        queries=_vec([1.0] * 5, dim=5)),
                             Code.INVALID_ARGUMENT, "queries have dimension 5"),
    "inf on upsert": ("Upsert", pb.WriteRequest(collection="fixed", dim=DIM, ids=[3],
                                                vectors=_vec([-np.inf] + ONES[1:])),
                      Code.INVALID_ARGUMENT, "vectors contain NaN or Inf"),
    "nan in a stream": ("InsertStream", pb.WriteRequest(collection="fixed", dim=DIM, ids=[900],
                                                        vectors=_vec(ONES[:-1] + [np.nan])),
                        Code.INVALID_ARGUMENT, "vectors contain NaN or Inf"),
    "nan in queries": ("Search", pb.SearchRequest(collection="fixed", dim=DIM, k=3,
                                                  queries=_vec([np.nan] + ONES[1:])),
                       Code.INVALID_ARGUMENT, "queries contain NaN or Inf"),
    "empty batch on upsert": ("Upsert", pb.WriteRequest(collection="fixed", vectors=b"",
                                                        dim=DIM, ids=[3]),
                              Code.INVALID_ARGUMENT, "vectors is an empty batch"),
    "empty batch in a stream": ("InsertStream", pb.WriteRequest(collection="fixed",
                                                                vectors=b"", dim=DIM),
                                Code.INVALID_ARGUMENT, "vectors is an empty batch"),
    "empty queries": ("Search", pb.SearchRequest(collection="fixed", queries=b"", dim=DIM, k=3),
                      Code.INVALID_ARGUMENT, "queries is an empty batch"),
    "zero dim in queries": ("Search", pb.SearchRequest(collection="fixed", queries=b"", k=3),
                            Code.INVALID_ARGUMENT, "queries: dim"),
    "duplicate ids on upsert": ("Upsert", pb.WriteRequest(collection="fixed", dim=DIM,
                                                          vectors=_vec(ONES, ONES), ids=[4, 4]),
                                Code.INVALID_ARGUMENT, "duplicate ids"),
    "duplicate ids in a stream": ("InsertStream", pb.WriteRequest(
        collection="fixed", dim=DIM, vectors=_vec(ONES, ONES), ids=[900, 900]),
        Code.INVALID_ARGUMENT, "duplicate ids"),
    "ragged bytes on upsert": ("Upsert", pb.WriteRequest(collection="fixed", dim=DIM, ids=[3],
                                                         vectors=_vec(ONES) + b"\0\0"),
                               Code.INVALID_ARGUMENT, "vectors: 34 bytes"),
    "ragged bytes in a stream": ("InsertStream", pb.WriteRequest(
        collection="fixed", dim=DIM, ids=[900], vectors=_vec(ONES)[:-4]),
        Code.INVALID_ARGUMENT, "vectors: 28 bytes"),
    "negative id on delete": ("Delete", pb.DeleteRequest(collection="fixed", ids=[3, -1]),
                              Code.INVALID_ARGUMENT, "ids must be non-negative"),
    "negative id on get": ("Get", pb.GetRequest(collection="fixed", ids=[-1],
                                                with_vectors=True),
                           Code.INVALID_ARGUMENT, "ids must be non-negative"),
    "unknown id on get": ("Get", pb.GetRequest(collection="fixed", ids=[3, 4321]),
                          Code.NOT_FOUND, "4321"),
    "unknown device": ("Search", pb.SearchRequest(collection="fixed", queries=_vec(ONES),
                                                  dim=DIM, k=3, device=9),
                       Code.INVALID_ARGUMENT, "device"),
    "unknown store_vectors": ("CreateCollection", pb.CreateCollectionRequest(
        name="new", dim=4, store_vectors=9), Code.INVALID_ARGUMENT, "store_vectors"),
    "oversized upsert": ("Upsert", pb.WriteRequest(collection="fixed", dim=DIM,
                                                   vectors=_OVERSIZED),
                         Code.RESOURCE_EXHAUSTED, "larger than max"),
    "oversized stream message": ("InsertStream", pb.WriteRequest(collection="fixed", dim=DIM,
                                                                 vectors=_OVERSIZED),
                                 Code.RESOURCE_EXHAUSTED, "larger than max"),
    "oversized queries": ("Search", pb.SearchRequest(collection="fixed", dim=DIM, k=3,
                                                     queries=_OVERSIZED),
                          Code.RESOURCE_EXHAUSTED, "larger than max"),
})
BAD_INPUT.update({
    "train after rows": ("Train", pb.TrainRequest(collection="fixed", vectors=_vec(ONES),
                                                  dim=DIM),
                         Code.INVALID_ARGUMENT, "already holds vectors"),
    "wrong dim to train": ("Train", pb.TrainRequest(collection="fixed", dim=5,
                                                    vectors=_vec([1.0] * 5, dim=5)),
                           Code.INVALID_ARGUMENT, "training vectors have dimension 5"),
    "nan to train": ("Train", pb.TrainRequest(collection="fixed", dim=DIM,
                                              vectors=_vec([np.nan] + ONES[1:])),
                     Code.INVALID_ARGUMENT, "training vectors contain NaN or Inf"),
    "empty batch to train": ("Train", pb.TrainRequest(collection="fixed", vectors=b"",
                                                      dim=DIM),
                             Code.INVALID_ARGUMENT, "training vectors is an empty batch"),
    "ragged bytes to train": ("Train", pb.TrainRequest(collection="fixed", dim=DIM,
                                                       vectors=_vec(ONES) + b"\0\0"),
                              Code.INVALID_ARGUMENT, "vectors: 34 bytes"),
    "oversized training sample": ("Train", pb.TrainRequest(collection="fixed", dim=DIM,
                                                           vectors=_OVERSIZED),
                                  Code.RESOURCE_EXHAUSTED, "larger than max"),
})
for _method, _request in (
        ("GetCollection", pb.GetCollectionRequest(name="nope")),
        ("Train", pb.TrainRequest(collection="nope", vectors=_vec(ONES), dim=DIM)),
        ("Insert", pb.WriteRequest(collection="nope", vectors=_vec(ONES), dim=DIM)),
        ("Upsert", pb.WriteRequest(collection="nope", vectors=_vec(ONES), dim=DIM, ids=[1])),
        ("InsertStream", pb.WriteRequest(collection="nope", vectors=_vec(ONES), dim=DIM)),
        ("Delete", pb.DeleteRequest(collection="nope", ids=[1])),
        ("Get", pb.GetRequest(collection="nope", ids=[1])),
        ("Flush", pb.FlushRequest(collection="nope")),
        ("Compact", pb.CompactRequest(collection="nope")),
        ("Stats", pb.StatsRequest(collection="nope"))):
    BAD_INPUT[f"unknown collection on {_method}"] = (_method, _request, Code.NOT_FOUND, "nope")
    _path = type(_request)()
    _path.CopyFrom(_request)
    _field = "name" if _method == "GetCollection" else "collection"
    setattr(_path, _field, "a/b" if _method in ("Get", "Delete", "Flush") else "..")
    BAD_INPUT[f"path on {_method}"] = (_method, _path, Code.INVALID_ARGUMENT, "collection name")


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_its_code_and_changes_nothing(stub, fixed, case):
    method, request, code, words = BAD_INPUT[case]
    before = _snapshot(stub, fixed)
    if method == "InsertStream":
        request = iter([request])
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub, method)(request)
    assert raised.value.code() == code, raised.value.details()
    assert words in raised.value.details()
    assert _snapshot(stub, fixed) == before


def test_a_stream_reports_the_failing_message_and_keeps_the_ones_before(stub, fixed):
    good = pb.WriteRequest(collection="fixed", vectors=_vec(ONES), dim=DIM, ids=[5000])
    bad = pb.WriteRequest(collection="fixed", vectors=_vec(ONES), dim=DIM, ids=[5000])
    with pytest.raises(grpc.RpcError) as raised:
        stub.InsertStream(iter([good, bad]))
    assert raised.value.code() == Code.ALREADY_EXISTS
    assert raised.value.details().startswith("message 1 (after 1 rows written)")
    assert stub.Delete(pb.DeleteRequest(collection="fixed", ids=[5000])).deleted == 1


def test_a_stream_cancelled_or_oversized_mid_way_is_no_server_error(stub, fixed, server):
    good = pb.WriteRequest(collection="fixed", vectors=_vec(ONES), dim=DIM, ids=[6000])
    release = threading.Event()

    def requests(last):
        yield good
        release.wait(30)
        yield last

    # Cancelled by the caller while the server waits for the next message.
    stream = stub.InsertStream.future(requests(good), timeout=30)
    wait_until_stored(stub, "fixed", 6000)
    stream.cancel()
    release.set()
    assert stream.cancelled()
    # A message over the limit after a good one.
    stub.Delete(pb.DeleteRequest(collection="fixed", ids=[6000]))
    with pytest.raises(grpc.RpcError) as raised:
        stub.InsertStream(requests(pb.WriteRequest(collection="fixed", dim=DIM,
                                                   vectors=_OVERSIZED)), timeout=30)
    assert raised.value.code() == Code.RESOURCE_EXHAUSTED
    assert stub.Delete(pb.DeleteRequest(collection="fixed", ids=[6000])).deleted == 1
    time.sleep(0.5)  # the server's handler thread ends after the caller's call
    assert "internal error" not in server.log_text()  # the caller's doing, not a crash


def test_remote_errors_are_the_embedded_error_types(client, fixed):
    c = client.get_collection("fixed")
    with pytest.raises(vecstore.AlreadyExists):
        c.add(np.ones(DIM), ids=[3])
    with pytest.raises(vecstore.NotFound):
        c.get([12345])
    with pytest.raises(vecstore.InvalidArgument, match="rescore"):
        c.search(np.ones(DIM), k=2, rescore=0)
    with pytest.raises(vecstore.InvalidArgument, match="collection name"):
        client.get_collection("../etc")


# --- health, reflection, limits -----------------------------------------------------------

def test_health_answers_serving(server):
    with grpc.insecure_channel(server.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", "vecstore.v1.Vecstore"):
            response = check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert raised.value.code() == Code.NOT_FOUND


def test_reflection_lists_and_describes_the_service(server):
    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert {"vecstore.v1.Vecstore", "grpc.health.v1.Health"} <= set(services)
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(database)
        service = pool.FindServiceByName("vecstore.v1.Vecstore")
        assert {m.name for m in service.methods} == set(
            pb.DESCRIPTOR.services_by_name["Vecstore"].methods_by_name)
        assert pool.FindMessageTypeByName("vecstore.v1.SearchRequest").fields_by_name["k"]


def test_server_info_names_the_version(client):
    assert client.server_info() == {"version": vecstore.__version__, "device": "auto",
                                    "read_only": False}


def test_calls_beyond_the_concurrency_cap_are_refused(tmp_path):
    server = start_server(tmp_path, "--max-concurrent-rpcs", "1")
    release = threading.Event()

    def held_open():  # a client stream that keeps its call, the only one allowed, open
        release.wait(30)
        yield from ()

    try:
        with grpc.insecure_channel(server.address) as channel, \
                vecstore.Client(server.address, retries=0) as client:
            stub = pb_grpc.VecstoreStub(channel)
            stream = stub.InsertStream.future(held_open())
            deadline = time.monotonic() + 30
            while True:  # until the stream has taken the slot and a probe is refused
                if stream.done():  # the stream came while a probe held the slot: again
                    assert stream.exception().code() == Code.RESOURCE_EXHAUSTED
                    stream = stub.InsertStream.future(held_open())
                try:
                    client.list_collections()
                except vecstore.ResourceExhausted:
                    break
                assert time.monotonic() < deadline, "the held stream never took the slot"
                time.sleep(0.02)
            with pytest.raises(grpc.RpcError) as raised:
                stub.ListCollections(pb.ListCollectionsRequest(), timeout=10)
            assert raised.value.code() == Code.RESOURCE_EXHAUSTED
            release.set()
            assert list(stream.result(timeout=30).ids) == []
            # The server frees the slot just after the stream's response is sent.
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert client.list_collections() == []
                    break
                except vecstore.ResourceExhausted:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
    finally:
        release.set()
        assert server.stop() == 0


# --- configuration ------------------------------------------------------------------------

def test_keys_over_plaintext_off_loopback_need_an_explicit_flag():
    from vecstore.server import ApiKeys, Server

    with vecstore.open() as db:
        with pytest.raises(vecstore.InvalidArgument, match="--allow-insecure-keys"):
            Server(db, host="0.0.0.0", port=0, keys=ApiKeys("secret"))
        Server(db, host="127.0.0.1", port=0, keys=ApiKeys("secret")).stop(0)
        Server(db, host="0.0.0.0", port=0, keys=ApiKeys("secret"),
               allow_insecure_keys=True).stop(0)


def _self_signed_certificate(directory) -> tuple:
    """A certificate for localhost and its key, as PEM files in ``directory``: made with
    the cryptography package when it is installed, else the openssl command, else skip."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("needs the cryptography package or the openssl command")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", str(key), "-out", str(cert)], check=True,
                       capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


def test_tls_with_an_api_key(tmp_path):
    from vecstore.server import ApiKeys, serve

    cert, key = _self_signed_certificate(tmp_path)
    with serve(None, host="localhost", port=0, keys=ApiKeys("s3cret"),
               tls=(str(cert), str(key))) as server:
        assert server.tls
        with vecstore.Client(f"grpcs://localhost:{server.port}", api_key="s3cret",
                             root_certificates=cert.read_bytes()) as client:
            client.create_collection("t", dim=4).add(np.eye(4))
            assert client.list_collections() == ["t"]
        with vecstore.Client(f"localhost:{server.port}", tls=True, api_key="wrong",
                             root_certificates=cert.read_bytes()) as wrong:
            with pytest.raises(vecstore.Unauthenticated):
                wrong.list_collections()
        with vecstore.Client(f"localhost:{server.port}", api_key="s3cret",
                             retries=0) as plain:
            with pytest.raises(vecstore.Unavailable):
                plain.list_collections()
        with vecstore.Client(f"grpcs://localhost:{server.port}", api_key="s3cret",
                             retries=0) as untrusted:  # the system's roots do not vouch for it
            with pytest.raises(vecstore.Unavailable):
                untrusted.list_collections()


def test_serve_refuses_keys_in_clear_text_off_loopback_unless_allowed(tmp_path):
    command = [sys.executable, "-m", "vecstore", "serve", "--data", str(tmp_path / "data"),
               "--host", "0.0.0.0", "--port", "0"]
    env = {**os.environ, "VECSTORE_API_KEY": "k-31337"}
    refused = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2
    assert "--allow-insecure-keys" in refused.stderr and "k-31337" not in refused.stderr
    half_tls = subprocess.run([*command, "--tls-cert", "c.pem"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert half_tls.returncode == 2 and "--tls-key" in half_tls.stderr
    allowed = start_server(tmp_path, "--host", "0.0.0.0", "--allow-insecure-keys",
                           env={"VECSTORE_API_KEY": "k-31337"})
    try:
        with vecstore.Client(allowed.address, api_key="k-31337") as client:
            assert client.list_collections() == []
    finally:
        assert allowed.stop() == 0
    assert "k-31337" not in allowed.log_text()


def test_committed_stubs_match_the_proto(tmp_path):
    # The same command as `make proto`, into a temporary directory.
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
                    f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", "proto/vecstore/v1/vecstore.proto"],
                   cwd=REPO_ROOT, check=True)
    for name in ("vecstore_pb2.py", "vecstore_pb2.pyi", "vecstore_pb2_grpc.py"):
        fresh = (tmp_path / "vecstore" / "v1" / name).read_bytes()
        committed = (REPO_ROOT / "vecstore" / "v1" / name).read_bytes()
        assert fresh == committed, f"vecstore/v1/{name} is stale: run make proto"


def test_the_readme_grpcurl_examples_parse_and_run(stub):
    """Each grpcurl call of the README names a real method, and its JSON body parses into
    that method's request (proto3 JSON: lowerCamelCase names, base64 bytes) and succeeds."""
    import json
    import re

    from google.protobuf import json_format

    text = (REPO_ROOT / "README.md").read_text().split("## Serving over gRPC", 1)[1]
    lines = " ".join(text.split("## ", 1)[0].replace("\\\n", " ").splitlines())
    calls = re.findall(r"grpcurl [^']*?-d '([^']*)'\s+\S+ (\S+)/(\w+)", lines)
    assert [method for _, _, method in calls] == ["ListCollections", "CreateCollection",
                                                  "Insert", "Search"]
    service = pb.DESCRIPTOR.services_by_name["Vecstore"]
    try:
        for body, service_name, method in calls:
            assert service_name == service.full_name
            message = service.methods_by_name[method].input_type._concrete_class()
            json_format.Parse(body, message)  # raises on an unknown field or a bad value
            assert set(json.loads(body)) <= {f.json_name for f in message.DESCRIPTOR.fields}
            response = getattr(stub, method)(message, timeout=30)
        assert list(response.ids) == [7] and list(response.distances) == [pytest.approx(1.0)]
    finally:
        stub.DropCollection(pb.DropCollectionRequest(name="docs"))


# --- the client: batching, retries, closing -------------------------------------------------

def test_inserts_are_split_by_bytes_under_the_server_limit():
    from vecstore.server import serve

    limit = 1 << 20
    x = np.random.default_rng(4).standard_normal((5000, 64)).astype(np.float32)  # 1.3 MB
    meta = {"tag": [f"row-{i}" for i in range(5000)]}
    with serve(None, port=0, max_message_bytes=limit) as server:
        with vecstore.Client(server.address, max_message_bytes=limit,
                             batch_bytes=200_000) as client:
            c = client.create_collection("split", dim=64, metric="l2", store_vectors="float32")
            requests = list(c._batches(x, None, meta))
            assert len(requests) >= 7 and all(r.ByteSize() < 250_000 for r in requests)
            np.testing.assert_array_equal(c.add(x, metadata=meta), np.arange(5000))
            assert c.get_metadata([4999]).column("tag").to_pylist() == ["row-4999"]
            # Reads larger than batch_bytes come back in batches, each under the limit.
            tags = c.get_metadata(np.arange(5000)[::-1]).column("tag").to_pylist()
            assert tags == meta["tag"][::-1]
            np.testing.assert_array_equal(c.upsert(x[::-1], ids=np.arange(5000)),
                                          np.arange(5000))
            np.testing.assert_array_equal(c.get(np.arange(2500)), x[:2499:-1])
            np.testing.assert_array_equal(c.get(np.arange(5000)), x[::-1])
            with pytest.raises(vecstore.NotFound, match="99999"):
                c.get(np.append(np.arange(5000), 99_999))
            # So do query batches: 5,000 queries are 1.3 MB.
            found = c.search(x, k=3)
            assert found.ids.shape == (5000, 3) and found.distances.dtype == np.float32
            for rows in (slice(0, 50), slice(4950, 5000)):  # small batches score by tables
                alone = c.search(x[rows], k=3)
                np.testing.assert_array_equal(alone.ids, found.ids[rows])
                np.testing.assert_allclose(alone.distances, found.distances[rows], rtol=0,
                                           atol=1e-5 * np.abs(found.distances).max())
        with vecstore.Client(server.address) as unsplit:  # one 1.3 MB message: refused
            with pytest.raises(vecstore.ResourceExhausted):
                unsplit.get_collection("split").upsert(x, ids=np.arange(5000))
            assert len(unsplit.get_collection("split")) == 5000
            with pytest.raises(vecstore.ResourceExhausted):  # one 1.3 MB reply: refused
                unsplit.get_collection("split").get(np.arange(5000))
            with pytest.raises(vecstore.ResourceExhausted):  # 1.3 MB of queries: refused
                unsplit.get_collection("split").search(x, k=3)


class _Flaky(pb_grpc.VecstoreServicer):
    """Fails each call with the next code of ``codes``, then answers."""

    def __init__(self, codes):
        self.codes = list(codes)
        self.calls = 0
        self.streamed = []

    def _maybe_fail(self, context):
        self.calls += 1
        if self.codes:
            context.abort(self.codes.pop(0), "injected")

    def ListCollections(self, request, context):
        self._maybe_fail(context)
        return pb.ListCollectionsResponse(names=["x"])

    def InsertStream(self, request_iterator, context):
        received = [list(r.ids) for r in request_iterator]
        self.streamed.append(received)
        self._maybe_fail(context)
        return pb.WriteResponse(ids=[i for ids in received for i in ids])


@pytest.fixture
def flaky(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr("vecstore.client.FIRST_BACKOFF_S", 0.001)
    servers = []

    def start(codes):
        servicer = _Flaky(codes)
        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_VecstoreServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def test_the_client_retries_unavailable_only_and_a_bounded_number_of_times(flaky):
    servicer, address = flaky([Code.UNAVAILABLE] * 2)
    with vecstore.Client(address, retries=2) as client:
        assert client.list_collections() == ["x"]
    assert servicer.calls == 3
    servicer, address = flaky([Code.UNAVAILABLE] * 10)
    with vecstore.Client(address, retries=3) as client:
        with pytest.raises(vecstore.Unavailable, match=f"{address} unavailable after 4 attempts"):
            client.list_collections()
    assert servicer.calls == 4
    for code, error in ((Code.INTERNAL, vecstore.VecstoreError),
                        (Code.RESOURCE_EXHAUSTED, vecstore.ResourceExhausted),
                        (Code.DEADLINE_EXCEEDED, vecstore.DeadlineExceeded),
                        (Code.UNAUTHENTICATED, vecstore.Unauthenticated)):
        servicer, address = flaky([code, code])
        with vecstore.Client(address, retries=4) as client:
            with pytest.raises(error):
                client.list_collections()
        assert servicer.calls == 1, code
    with pytest.raises(vecstore.InvalidArgument, match="retries"):
        vecstore.Client(address, retries=-1)


def test_a_retried_stream_sends_every_batch_again(flaky):
    servicer, address = flaky([Code.UNAVAILABLE])
    with vecstore.Client(address, retries=1, batch_bytes=100) as client:
        info = pb.CollectionInfo(name="s", dim=4, metric=pb.METRIC_L2)
        collection = vecstore.client.RemoteCollection(client, info)
        ids = collection.add(np.ones((6, 4)), ids=np.arange(6))
    np.testing.assert_array_equal(ids, np.arange(6))
    assert (collection.metric, collection.store_vectors) == ("l2", None)  # UNSPECIFIED: None
    assert servicer.calls == 2 and servicer.streamed[0] == servicer.streamed[1]
    assert servicer.streamed[0] == [[0, 1, 2, 3], [4, 5]]  # 100 bytes: 4 rows of 4*4 + 8


def test_an_unreachable_server_is_a_clear_unavailable_error(monkeypatch):
    import socket

    monkeypatch.setattr("vecstore.client.FIRST_BACKOFF_S", 0.001)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    with vecstore.Client(address, retries=1, timeout=10) as client:
        with pytest.raises(vecstore.Unavailable, match=f"server at {address} unavailable"):
            client.list_collections()
    with pytest.raises(ConnectionError):  # Unavailable is also the builtin
        vecstore.Client(address, retries=0).list_collections()


def test_closing_the_client_twice_is_safe_and_later_calls_raise_closed(server):
    with vecstore.Client(server.address) as client:
        c = client.create_collection("closing", dim=4)
        c.add(np.eye(4))
    client.close()
    assert "closed" in repr(client)
    for call in (client.list_collections, lambda: client.get_collection("closing"),
                 lambda: c.search(np.ones(4), k=1), lambda: c.add(np.eye(4)), lambda: len(c)):
        with pytest.raises(vecstore.Closed):
            call()
    with vecstore.Client(server.address) as other:
        assert len(other.get_collection("closing")) == 4
        other.drop_collection("closing")


def test_a_closed_remote_collection_raises_closed_and_the_collection_stays(client):
    with client.create_collection("handle", dim=4) as c:
        c.add(np.eye(4))
    c.close()
    for call in (lambda: c.search(np.ones(4), k=1), lambda: c.add(np.eye(4)), lambda: len(c),
                 lambda: c.metadata_schema, lambda: c.train(np.eye(4))):
        with pytest.raises(vecstore.Closed, match="'handle' is closed"):
            call()
    assert len(client.get_collection("handle")) == 4
    client.drop_collection("handle")


def test_training_a_large_sample_says_to_use_a_smaller_one(server):
    with vecstore.Client(server.address, max_message_bytes=1 << 20,
                         batch_bytes=1 << 20) as small:
        c = small.create_collection("big-sample", dim=64, codec="pq8x4")
        with pytest.raises(vecstore.InvalidArgument, match="exceed the message limit"):
            c.train(np.ones((5000, 64)))
        c.train(np.random.default_rng(0).standard_normal((2000, 64)))
        assert c.codec.is_trained
        small.drop_collection("big-sample")


def test_serve_help_names_the_defaults():
    shown = subprocess.run([sys.executable, "-m", "vecstore", "serve", "--help"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    for words in ("--data DATA", "default: 127.0.0.1", "default: 50051", "default 256",
                  "default 30.0", "--allow-insecure-keys", "$VECSTORE_API_KEY"):
        assert words in text, words


def test_search_calls_report_where_the_server_spent_their_time(client):
    """Every Search response carries the server's decode, queue, search and encode times
    as trailing metadata; the client reads them per call."""
    name = "timed"
    collection = client.create_collection(name, dim=8, metric="ip", codec="tq4")
    try:
        collection.add(np.eye(8, dtype=np.float32))
        result, timings = collection.search_timed(np.eye(8, dtype=np.float32)[:2], k=3)
        assert result.ids.shape == (2, 3) and len(timings) == 1
        timing = timings[0]
        assert all(seconds >= 0 for seconds in timing)
        assert 0 < timing.search_s < 10
        same = collection.search(np.eye(8, dtype=np.float32)[:2], k=3)
        np.testing.assert_array_equal(same.ids, result.ids)
    finally:
        client.drop_collection(name)


def test_server_timing_round_trips_and_refuses_garbage():
    timing = wire.ServerTiming(1.5e-5, 0.0, 2.25e-3, 4e-6)
    back = wire.ServerTiming.unpack(timing.pack())
    assert timing.pack() == "15,0,2250,4"
    np.testing.assert_allclose(back, timing, atol=1e-6)
    for bad in ("", "1,2,3", "1,2,3,x", "1,2,3,4,5"):
        with pytest.raises(vecstore.InvalidArgument, match="malformed"):
            wire.ServerTiming.unpack(bad)
