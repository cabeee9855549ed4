"""Optional API keys: a read-write key and a read-only key, checked on every call.

A key travels in the call metadata as ``authorization: Bearer <key>`` or ``api-key: <key>``
(the two conventions of Qdrant and Milvus clients) and is compared in constant time with
every configured key. Health checks need no key, so that load balancers and orchestrators
can probe the server; reflection does need one, since it describes the service. Keys are
never logged.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from vecstore.errors import InvalidArgument

READ_WRITE_ENV = "VECSTORE_API_KEY"
READ_ONLY_ENV = "VECSTORE_READONLY_API_KEY"
OPEN_PREFIX = "/grpc.health.v1.Health/"
WRITE_METHODS = frozenset(
    f"/vecstore.v1.Vecstore/{name}"
    for name in ("CreateCollection", "DropCollection", "Insert", "Upsert", "InsertStream",
                 "Delete", "Train", "Flush", "Compact")
)
READ_WRITE, READ_ONLY = "read-write", "read-only"


def _read_key(file: str | os.PathLike) -> str:
    try:
        key = Path(file).read_text().strip()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the API key file {file}: {exc}") from exc
    if not key:
        raise InvalidArgument(f"the API key file {file} is empty")
    return key


@dataclass(frozen=True, repr=False)
class ApiKeys:
    """The configured keys (either may be None). ``repr`` never shows them."""

    read_write: str | None = None
    read_only: str | None = None

    def __repr__(self) -> str:
        return f"ApiKeys(read_write={self.read_write is not None}, " \
               f"read_only={self.read_only is not None})"

    @property
    def enabled(self) -> bool:
        return self.read_write is not None or self.read_only is not None

    @classmethod
    def load(cls, key_file=None, readonly_key_file=None, environ=os.environ) -> ApiKeys:
        """Keys from the files when given, else from VECSTORE_API_KEY and
        VECSTORE_READONLY_API_KEY (an empty variable counts as unset)."""
        read_write = _read_key(key_file) if key_file else environ.get(READ_WRITE_ENV) or None
        read_only = (_read_key(readonly_key_file) if readonly_key_file
                     else environ.get(READ_ONLY_ENV) or None)
        if read_write is not None and read_write == read_only:
            raise InvalidArgument("the read-write and read-only API keys must differ")
        return cls(read_write, read_only)

    def role(self, metadata) -> str | None:
        """READ_WRITE, READ_ONLY or None for the key in call ``metadata`` (key, value) pairs."""
        sent = presented_key(metadata)
        if sent is None:
            return None
        sent_bytes = sent.encode()
        # Compare with both keys every time, so the timing says nothing about which matched.
        matches_write = self.read_write is not None and hmac.compare_digest(
            sent_bytes, self.read_write.encode())
        matches_read = self.read_only is not None and hmac.compare_digest(
            sent_bytes, self.read_only.encode())
        if matches_write:
            return READ_WRITE
        return READ_ONLY if matches_read else None


def presented_key(metadata) -> str | None:
    """The key sent as ``authorization: Bearer <key>`` or ``api-key: <key>``, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif key == "api-key" and isinstance(value, str) and value:
            return value
    return None


def _denying(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    """A handler of the same streaming kind as ``handler`` that ends the call with ``code``."""
    def deny(request_or_iterator, context):
        context.abort(code, message)

    kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler),
             ("unary_stream", grpc.unary_stream_rpc_method_handler),
             ("stream_unary", grpc.stream_unary_rpc_method_handler),
             ("stream_stream", grpc.stream_stream_rpc_method_handler))
    for attribute, make in kinds:
        if getattr(handler, attribute) is not None:
            return make(deny, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    raise TypeError(f"unknown handler kind: {handler!r}")


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Rejects calls without a valid key (UNAUTHENTICATED) and writes made with the
    read-only key (PERMISSION_DENIED). Health checks pass without a key."""

    def __init__(self, keys: ApiKeys):
        self.keys = keys

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIX):
            return continuation(handler_call_details)
        role = self.keys.role(handler_call_details.invocation_metadata)
        if role is None:
            handler = continuation(handler_call_details)
            return handler and _denying(
                handler, grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong API key: send 'authorization: Bearer <key>' or "
                "'api-key: <key>' metadata")
        if role == READ_ONLY and method in WRITE_METHODS:
            handler = continuation(handler_call_details)
            return handler and _denying(
                handler, grpc.StatusCode.PERMISSION_DENIED,
                f"the read-only API key cannot call {method.rsplit('/', 1)[-1]}")
        return continuation(handler_call_details)
