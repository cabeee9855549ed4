"""The one table between vecstore's errors and gRPC status codes.

The server turns an exception into its code (``code_for``) and sends the exception's
class name in the ``vecstore-error`` trailing metadata; the client turns the code, and
that name when it is one of ``vecstore.errors``, back into the same exception type
(``error_for``), so embedded and remote calls raise alike.

| error | status code |
|---|---|
| InvalidArgument (the message names the field), other ValueError, TypeError | INVALID_ARGUMENT |
| NotFound (unknown collection or id) | NOT_FOUND |
| AlreadyExists (collection name or id taken) | ALREADY_EXISTS |
| DataLoss (checksum or validation failure) | DATA_LOSS |
| ResourceExhausted (too many calls, message too large), OutOfDeviceMemory | RESOURCE_EXHAUSTED |
| Unauthenticated (missing or wrong API key) | UNAUTHENTICATED |
| PermissionDenied (read-only key on a write) | PERMISSION_DENIED |
| Unavailable, Closed (server unreachable or shutting down) | UNAVAILABLE |
| DeadlineExceeded (call past its timeout) | DEADLINE_EXCEEDED |
| GpuUnavailable, Locked | FAILED_PRECONDITION |
| anything else | INTERNAL |
"""

from __future__ import annotations

import grpc

from vecstore import errors

ERROR_HEADER = "vecstore-error"

Code = grpc.StatusCode

# Order matters twice: the first class an exception is an instance of gives its code, and
# the first VecstoreError listed for a code is what the client raises when no name came.
ERROR_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, Code.INVALID_ARGUMENT),
    (errors.NotFound, Code.NOT_FOUND),
    (errors.AlreadyExists, Code.ALREADY_EXISTS),
    (errors.DataLoss, Code.DATA_LOSS),
    (errors.ResourceExhausted, Code.RESOURCE_EXHAUSTED),
    (errors.OutOfDeviceMemory, Code.RESOURCE_EXHAUSTED),
    (errors.Unauthenticated, Code.UNAUTHENTICATED),
    (errors.PermissionDenied, Code.PERMISSION_DENIED),
    (errors.Unavailable, Code.UNAVAILABLE),
    (errors.Closed, Code.UNAVAILABLE),
    (errors.DeadlineExceeded, Code.DEADLINE_EXCEEDED),
    (errors.GpuUnavailable, Code.FAILED_PRECONDITION),
    (errors.Locked, Code.FAILED_PRECONDITION),
    # Builtin errors of user input that escaped a typed check (pyarrow's ArrowInvalid is a
    # ValueError).
    (ValueError, Code.INVALID_ARGUMENT),
    (TypeError, Code.INVALID_ARGUMENT),
)

_BY_NAME = {cls.__name__: cls for cls, _ in ERROR_CODES if issubclass(cls, errors.VecstoreError)}
_BY_CODE: dict[grpc.StatusCode, type[errors.VecstoreError]] = {}
for _cls, _code in ERROR_CODES:
    if issubclass(_cls, errors.VecstoreError):
        _BY_CODE.setdefault(_code, _cls)


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status code of ``exc``: its row in ERROR_CODES, else INTERNAL."""
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return Code.INTERNAL


def error_for(code: grpc.StatusCode, message: str, name: str | None = None) -> Exception:
    """The vecstore error for a failed call: the class called ``name`` when the server sent
    one that belongs to ``code``, else the first class listed for ``code``, else
    VecstoreError with the code in the message."""
    cls = _BY_NAME.get(name or "")
    if cls is not None and code_for(cls(message)) == code:
        return cls(message)
    cls = _BY_CODE.get(code)
    if cls is None:
        return errors.VecstoreError(f"{code.name}: {message}")
    return cls(message)


def error_from_rpc(exc: grpc.RpcError) -> Exception:
    """The vecstore error for the RpcError a stub raised."""
    name = None
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_HEADER:
            name = value
    return error_for(exc.code(), exc.details() or "", name)
