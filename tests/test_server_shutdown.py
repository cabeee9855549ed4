"""SIGTERM while a client inserts: the server finishes the calls in flight, flushes, exits
with status 0, and every acknowledged write is on disk."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

import vecstore
from tests.grpc_server import REPO_ROOT, start_server, wait_until_stored
from tests.grpc_writer import BATCH, COLLECTION, DIM, batch_vectors
from vecstore import wire
from vecstore.v1 import vecstore_pb2 as pb
from vecstore.v1 import vecstore_pb2_grpc as pb_grpc

ACKED_BEFORE_SIGNAL = 40


def test_sigterm_during_inserts_loses_no_acknowledged_write(tmp_path):
    server = start_server(tmp_path)
    with vecstore.Client(server.address) as client:
        client.create_collection(COLLECTION, dim=DIM, metric="l2", codec="tq4",
                                 store_vectors="float32")
    acks = tmp_path / "acks"
    acks.touch()
    writer = subprocess.Popen([sys.executable, "tests/grpc_writer.py", server.address, str(acks)],
                              cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(acks.read_text().split()) < ACKED_BEFORE_SIGNAL:
            assert writer.poll() is None, writer.stderr.read()
            assert time.monotonic() < deadline, "the writer is too slow"
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.log_text()
        _, stderr = writer.communicate(timeout=60)
    finally:
        writer.kill()
        server.stop()
    assert writer.returncode == 0 and "stopped at batch" in stderr
    acked = [int(b) for b in acks.read_text().split()]
    assert acked == list(range(len(acked))) and len(acked) >= ACKED_BEFORE_SIGNAL
    log = server.log_text()
    assert "finishing calls in flight" in log and "vecstore stopped" in log
    assert "Traceback" not in log
    with vecstore.open(tmp_path / "data") as db:
        collection = db.get_collection(COLLECTION)
        assert collection.stats()["memtable_rows"] == 0  # flushed on the way out
        ids = np.arange(len(acked) * BATCH)
        np.testing.assert_array_equal(collection.get(ids),
                                      np.concatenate([batch_vectors(b) for b in acked]))
        # Rows beyond the acknowledged ones are whole batches whose reply never arrived.
        assert len(collection) % BATCH == 0 and len(collection) >= ids.size


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_the_call_in_flight_finish_then_flushes_and_exits_0(tmp_path, signum):
    server = start_server(tmp_path)
    x = np.random.default_rng(5).standard_normal((20, DIM)).astype(np.float32)
    first_sent, release = threading.Event(), threading.Event()

    def requests():  # a bulk load that is half sent when the signal arrives
        yield pb.WriteRequest(collection=COLLECTION, vectors=wire.pack_vectors(x[:10]), dim=DIM)
        first_sent.set()
        release.wait(30)
        yield pb.WriteRequest(collection=COLLECTION, vectors=wire.pack_vectors(x[10:]), dim=DIM)

    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.VecstoreStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(
                name=COLLECTION, dim=DIM, metric=pb.METRIC_L2,
                store_vectors=pb.STORED_VECTORS_FLOAT32))
            in_flight = stub.InsertStream.future(requests(), timeout=60)
            assert first_sent.wait(30)
            wait_until_stored(stub, COLLECTION, 9)  # the server is inside the call
            server.process.send_signal(signum)
            deadline = time.monotonic() + 30
            while True:  # new calls are refused once the server is shutting down
                try:
                    stub.ListCollections(pb.ListCollectionsRequest(), timeout=30)
                except grpc.RpcError as exc:
                    # UNAVAILABLE once the port is closed; a call that reaches the server
                    # in the instant it stops accepting is CANCELLED by gRPC instead.
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.CANCELLED), exc.details()
                    break
                assert time.monotonic() < deadline, "the server ignored the signal"
                time.sleep(0.05)
            assert server.process.poll() is None  # still finishing the stream
            release.set()
            assert list(in_flight.result(timeout=30).ids) == list(range(20))
        assert server.process.wait(60) == 0, server.log_text()
    finally:
        release.set()
        server.stop()
    assert "Traceback" not in server.log_text()
    with vecstore.open(tmp_path / "data") as db:
        collection = db.get_collection(COLLECTION)
        assert collection.stats()["memtable_rows"] == 0  # flushed on the way out
        np.testing.assert_array_equal(collection.get(np.arange(20)), x)
