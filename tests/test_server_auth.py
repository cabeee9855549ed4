"""API keys: every RPC with no key, a wrong key, the read-only key and the read-write key."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import vecstore
from tests.grpc_server import start_server
from vecstore import wire
from vecstore.v1 import vecstore_pb2 as pb
from vecstore.v1 import vecstore_pb2_grpc as pb_grpc

Code = grpc.StatusCode
READ_WRITE_KEY = "rw-4f1d0c"
READ_ONLY_KEY = "ro-9a7e22"
KEYS = {"none": None, "wrong": "not-the-key", "read-only": READ_ONLY_KEY,
        "read-write": READ_WRITE_KEY}
HEADERS = ("bearer", "api-key")
ONE = wire.pack_vectors(np.ones((1, 4), np.float32))

# Each RPC with a request that succeeds (or fails for a reason other than auth) when allowed.
READS = {
    "GetCollection": lambda who: pb.GetCollectionRequest(name="auth"),
    "ListCollections": lambda who: pb.ListCollectionsRequest(),
    "Get": lambda who: pb.GetRequest(collection="auth", ids=[0], with_vectors=True),
    "Search": lambda who: pb.SearchRequest(collection="auth", queries=ONE, dim=4, k=2),
    "Stats": lambda who: pb.StatsRequest(collection="auth"),
    "ServerInfo": lambda who: pb.ServerInfoRequest(),
}
WRITES = {
    "CreateCollection": lambda who: pb.CreateCollectionRequest(name=f"new-{who}", dim=4),
    "DropCollection": lambda who: pb.DropCollectionRequest(name=f"drop-{who}"),
    "Insert": lambda who: pb.WriteRequest(collection="auth", vectors=ONE, dim=4),
    "Upsert": lambda who: pb.WriteRequest(collection="auth", vectors=ONE, dim=4, ids=[0]),
    "InsertStream": lambda who: iter([pb.WriteRequest(collection="auth", vectors=ONE, dim=4)]),
    "Delete": lambda who: pb.DeleteRequest(collection="auth", ids=[10_000]),
    "Train": lambda who: pb.TrainRequest(collection=f"train-{who}", vectors=ONE, dim=4),
    "Flush": lambda who: pb.FlushRequest(collection="auth"),
    "Compact": lambda who: pb.CompactRequest(collection="auth"),
}


def test_the_matrix_covers_every_rpc():
    assert set(READS) | set(WRITES) == set(
        pb.DESCRIPTOR.services_by_name["Vecstore"].methods_by_name)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = start_server(tmp_path_factory.mktemp("auth-server"),
                           env={"VECSTORE_API_KEY": READ_WRITE_KEY,
                                "VECSTORE_READONLY_API_KEY": READ_ONLY_KEY})
    with vecstore.Client(process.address, api_key=READ_WRITE_KEY) as client:
        client.create_collection("auth", dim=4).add(np.eye(4))
        for who in KEYS:
            for header in HEADERS:
                client.create_collection(f"drop-{who}-{header}", dim=4)
                client.create_collection(f"train-{who}-{header}", dim=4)
    yield process
    assert process.stop() == 0
    log = process.log_text()
    assert READ_WRITE_KEY not in log and READ_ONLY_KEY not in log


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


def _metadata(who: str, header: str = "bearer"):
    key = KEYS[who]
    if key is None:
        return ()
    return (("authorization", f"Bearer {key}"),) if header == "bearer" else (("api-key", key),)


def _code(channel, method: str, request, metadata) -> grpc.StatusCode:
    try:
        getattr(pb_grpc.VecstoreStub(channel), method)(request, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        assert not any(key and key in exc.details() for key in KEYS.values()), exc.details()
        return exc.code()
    return Code.OK


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("who", list(KEYS))
@pytest.mark.parametrize("method", [*READS, *WRITES])
def test_every_rpc_with_every_key(channel, method, who, header):
    writes = method in WRITES
    request = (WRITES if writes else READS)[method](f"{who}-{header}")
    code = _code(channel, method, request, _metadata(who, header))
    if who in ("none", "wrong"):
        assert code == Code.UNAUTHENTICATED
    elif who == "read-only" and writes:
        assert code == Code.PERMISSION_DENIED
    else:
        assert code == Code.OK


def test_a_denied_write_changes_nothing(channel):
    stub = pb_grpc.VecstoreStub(channel)
    rows = stub.Stats(pb.StatsRequest(collection="auth"), metadata=_metadata("read-only")).rows
    for who in ("none", "wrong", "read-only"):
        _code(channel, "Insert", WRITES["Insert"](who), _metadata(who))
        _code(channel, "Delete", pb.DeleteRequest(collection="auth", ids=[0, 1]), _metadata(who))
    assert stub.Stats(pb.StatsRequest(collection="auth"),
                      metadata=_metadata("read-only")).rows == rows
    assert "drop-none-bearer" in stub.ListCollections(pb.ListCollectionsRequest(),
                                               metadata=_metadata("read-only")).names


def test_health_needs_no_key(channel):
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_a_key(server):
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert raised.value.code() == Code.UNAUTHENTICATED

    class AddKey(grpc.StreamStreamClientInterceptor):
        def intercept_stream_stream(self, continuation, details, requests):
            details = details._replace(metadata=(("api-key", READ_ONLY_KEY),))
            return continuation(details, requests)

    with grpc.insecure_channel(server.address) as channel:
        keyed = grpc.intercept_channel(channel, AddKey())
        assert "vecstore.v1.Vecstore" in ProtoReflectionDescriptorDatabase(keyed).get_services()


def test_the_client_raises_typed_auth_errors(server):
    with vecstore.Client(server.address) as anonymous:
        with pytest.raises(vecstore.Unauthenticated):
            anonymous.list_collections()
    with vecstore.Client(server.address, api_key=READ_ONLY_KEY) as reader:
        assert reader.server_info()["read_only"] is True
        collection = reader.get_collection("auth")
        assert collection.search(np.ones(4), k=1).ids.shape == (1, 1)
        with pytest.raises(vecstore.PermissionDenied):
            collection.add(np.ones(4))
    with vecstore.Client(server.address, api_key=READ_WRITE_KEY) as writer:
        assert writer.server_info()["read_only"] is False


@pytest.mark.parametrize("who", list(KEYS))
def test_reflection_with_every_key(channel, who):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        responses = list(stub.ServerReflectionInfo(iter([request]), metadata=_metadata(who),
                                                   timeout=30))
    except grpc.RpcError as exc:
        assert who in ("none", "wrong") and exc.code() == Code.UNAUTHENTICATED
        assert not any(key and key in exc.details() for key in KEYS.values())
        return
    assert who in ("read-only", "read-write")
    names = {s.name for s in responses[0].list_services_response.service}
    assert "vecstore.v1.Vecstore" in names


@pytest.mark.parametrize("who", list(KEYS))
def test_health_check_and_watch_with_every_key(channel, who):
    # Exempt from keys: a wrong key is ignored, not refused, so probes never flap.
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="vecstore.v1.Vecstore")
    serving = health_pb2.HealthCheckResponse.SERVING
    assert stub.Check(request, metadata=_metadata(who), timeout=10).status == serving
    watch = stub.Watch(request, metadata=_metadata(who), timeout=10)
    assert next(watch).status == serving
    watch.cancel()
