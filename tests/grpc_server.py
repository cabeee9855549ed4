"""Start ``python -m vecstore serve`` in a subprocess on a free loopback port, for tests."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vecstore.server.process import spawn
from vecstore.v1 import vecstore_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60


@dataclass
class ServerProcess:
    process: subprocess.Popen
    address: str
    log: Path

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the server and wait; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(directory: Path, *args: str, env: dict | None = None) -> ServerProcess:
    """Serve ``directory/data`` with extra ``args``; returns once health says SERVING."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "server.log"
    with open(log, "wb") as out:
        try:
            process, address = spawn(directory, "--grace", "20", *args, stdout=out, env=env,
                                     cwd=REPO_ROOT, timeout=START_TIMEOUT_S)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log.read_text()}") from None
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        status = check(health_pb2.HealthCheckRequest(service=""), timeout=START_TIMEOUT_S,
                       wait_for_ready=True).status
    if status != health_pb2.HealthCheckResponse.SERVING:
        process.kill()
        raise RuntimeError(f"server health is {status}")
    return ServerProcess(process, address, log)


def wait_until_stored(stub, collection, row_id, timeout=30.0):
    """Poll Get until `row_id` is readable; Get answers NOT_FOUND until then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if stub.Get(vecstore_pb2.GetRequest(collection=collection, ids=[row_id])).ids:
                return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"id {row_id} was not stored within {timeout} s")
        time.sleep(0.02)
