"""A running gRPC server: the Vecstore service, health checking and reflection.

``Server`` wraps an open Database; ``serve(path, ...)`` opens one and starts a server
that owns it, so that ``stop()`` also flushes and closes the database. ``vecstore serve``
(``vecstore.server.cli``) runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import vecstore
from vecstore.database import Database
from vecstore.errors import InvalidArgument
from vecstore.v1 import vecstore_pb2 as pb
from vecstore.v1 import vecstore_pb2_grpc as pb_grpc

from .auth import READ_ONLY, ApiKeyInterceptor, ApiKeys
from .servicer import VecstoreServicer

log = logging.getLogger("vecstore.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Vecstore"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
# Vecstore calls beyond this many at once get RESOURCE_EXHAUSTED instead of a queue.
DEFAULT_MAX_CONCURRENT_RPCS = 256
# Threads beyond max_concurrent_rpcs, for health checks, reflection and refusals.
DEFAULT_RESERVE_THREADS = 16
DEFAULT_GRACE_S = 30.0


class CallLimiter(grpc.ServerInterceptor):
    """Refuses calls to methods under ``prefix`` with RESOURCE_EXHAUSTED, at once, while
    ``max_calls`` of them (or ``max_streams`` client streams) are running. Other services
    (health checks, reflection) pass uncounted."""

    def __init__(self, prefix: str, max_calls: int, max_streams: int):
        self.prefix = prefix
        self.max_calls = max_calls
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self.calls = 0
        self.streams = 0

    def _enter(self, stream: bool) -> str | None:
        """Take a slot; None, or why there is none."""
        with self._lock:
            if self.calls >= self.max_calls:
                return f"the server is running its limit of {self.max_calls} calls; retry later"
            if stream and self.streams >= self.max_streams:
                return (f"the server is running its limit of {self.max_streams} client "
                        "streams; retry later")
            self.calls += 1
            self.streams += stream
        return None

    def _leave(self, stream: bool) -> None:
        with self._lock:
            self.calls -= 1
            self.streams -= stream

    def _limited(self, behavior, stream: bool):
        """``behavior`` run while it holds a slot (a unary response: the servicer's methods
        all return one message)."""
        @functools.wraps(behavior)
        def call(request_or_iterator, context):
            refusal = self._enter(stream)
            if refusal is not None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            try:
                return behavior(request_or_iterator, context)
            finally:
                self._leave(stream)
        return call

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._limited(handler.unary_unary, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._limited(handler.stream_unary, True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        raise TypeError(f"no limit for the streaming responses of {handler_call_details.method}")


def default_max_streams(max_concurrent_rpcs: int) -> int:
    """The default cap on concurrent InsertStream calls: half the call cap, at least 1."""
    return max(1, max_concurrent_rpcs // 2)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{bracketed}:{port}"


class Server:
    """The Vecstore service on ``host:port`` (port 0 picks a free one; see ``port``).

    Parameters
    ----------
    db : Database
        The open database to serve; closed by ``stop()`` when ``owns_db``.
    keys : ApiKeys, optional
        When any key is set, every call except health checks needs one.
    tls : (certificate_chain_path, private_key_path), optional
        Serve TLS instead of plaintext.
    allow_insecure_keys : bool
        Permit API keys over plaintext on an address other than loopback, where they
        would cross the network in clear text. Refused (InvalidArgument) otherwise.
    max_message_bytes : int
        Largest request or response; larger ones fail with RESOURCE_EXHAUSTED (gRPC's
        code for a message over the limit).
    max_concurrent_rpcs : int
        Vecstore calls beyond this many at once fail with RESOURCE_EXHAUSTED at once.
        Health checks and reflection do not count.
    max_concurrent_streams : int, optional
        InsertStream calls beyond this many at once fail with RESOURCE_EXHAUSTED, so that
        idle streams cannot take every slot from unary calls; half of
        ``max_concurrent_rpcs`` (at least 1) by default.
    reserve_threads : int
        Threads beyond ``max_concurrent_rpcs`` for health checks, reflection and refusals.
        The pool has ``max_concurrent_rpcs + reserve_threads`` threads, and gRPC refuses
        calls past that many, so no call ever waits for a thread.
    """

    def __init__(self, db: Database, *, host: str = "127.0.0.1", port: int = 50051,
                 keys: ApiKeys | None = None, tls: tuple[str, str] | None = None,
                 allow_insecure_keys: bool = False,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
                 max_concurrent_streams: int | None = None,
                 reserve_threads: int = DEFAULT_RESERVE_THREADS, owns_db: bool = False):
        keys = keys or ApiKeys()
        if keys.enabled and tls is None and not allow_insecure_keys and not is_loopback(host):
            raise InvalidArgument(
                f"API keys over plaintext on {host} would cross the network in clear text: "
                "give a TLS certificate and key, or allow it explicitly "
                "(--allow-insecure-keys)")
        if max_concurrent_streams is None:
            max_concurrent_streams = default_max_streams(max_concurrent_rpcs)
        for name, value in (("max_message_bytes", max_message_bytes),
                            ("max_concurrent_rpcs", max_concurrent_rpcs),
                            ("max_concurrent_streams", max_concurrent_streams),
                            ("reserve_threads", reserve_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
        if max_concurrent_streams > max_concurrent_rpcs:
            raise InvalidArgument(f"max_concurrent_streams ({max_concurrent_streams}) must not "
                                  f"exceed max_concurrent_rpcs ({max_concurrent_rpcs})")
        self.db = db
        self.host = host
        self.keys = keys
        self.owns_db = owns_db
        self._stopped = False
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self.limiter = CallLimiter(f"/{SERVICE_NAME}/", max_concurrent_rpcs,
                                   max_concurrent_streams)
        interceptors = [ApiKeyInterceptor(keys)] if keys.enabled else []
        threads = max_concurrent_rpcs + reserve_threads
        self._server = grpc.server(ThreadPoolExecutor(max_workers=threads,
                                                      thread_name_prefix="vecstore-rpc"),
                                   interceptors=[*interceptors, self.limiter], options=options,
                                   maximum_concurrent_rpcs=threads)
        servicer = VecstoreServicer(db, self._read_only_caller, max_message_bytes)
        pb_grpc.add_VecstoreServicer_to_server(servicer, self._server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        address = host_port(host, port)
        if tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            certificate, key = (Path(p).read_bytes() for p in tls)
            credentials = grpc.ssl_server_credentials([(key, certificate)])
            self.port = self._server.add_secure_port(address, credentials)
        self.tls = tls is not None

    def _read_only_caller(self, context: grpc.ServicerContext) -> bool:
        return self.keys.enabled and self.keys.role(context.invocation_metadata()) == READ_ONLY

    @property
    def address(self) -> str:
        """``host:port`` with the bound port, as ``vecstore.Client`` takes it."""
        return host_port(self.host, self.port)

    def start(self) -> Server:
        self._server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("vecstore %s serving %s on %s (device %s, API keys %s, TLS %s)",
                 vecstore.__version__, self.db.path or "an in-memory database", self.address,
                 self.db.device, "on" if self.keys.enabled else "off",
                 "on" if self.tls else "off")
        return self

    def stop(self, grace: float = DEFAULT_GRACE_S) -> None:
        """Stop taking calls, let those in flight finish (up to ``grace`` seconds), then
        flush and close the database when the server owns it. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        if self.owns_db:
            self.db.close()
        log.info("vecstore stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; False if ``timeout`` passed first."""
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve(path: str | os.PathLike | None = None, *, device: str = "auto",
          durability: str = "sync", **options) -> Server:
    """Open the database at ``path`` (in memory when None) and start a Server that owns
    it; ``options`` are Server's. Use as a context manager, or call ``stop()``."""
    db = vecstore.open(path, device=device, durability=durability)
    try:
        return Server(db, owns_db=True, **options).start()
    except BaseException:
        db.close()
        raise
