"""Typed errors raised by vecstore.

Each error also subclasses the builtin exception a caller would naturally catch,
so ``except ValueError`` and ``except KeyError`` keep working.
"""


class VecstoreError(Exception):
    """Base class of every error vecstore raises on purpose."""


class InvalidArgument(VecstoreError, ValueError):
    """An argument has the wrong shape, dtype, value or type."""


class NotFound(VecstoreError, KeyError):
    """A collection or id does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AlreadyExists(VecstoreError, ValueError):
    """A collection name or vector id is already taken."""


class Closed(VecstoreError, RuntimeError):
    """The database or collection was closed and can no longer be used."""


class DataLoss(VecstoreError, OSError):
    """Stored data failed a checksum or validation; the message names the damaged file."""


class Locked(VecstoreError, RuntimeError):
    """Another process holds the database directory open for writing."""


class GpuUnavailable(VecstoreError, RuntimeError):
    """A GPU search was asked for, but CuPy or a CUDA device is missing (the message says
    which), or the collection's codec has no GPU kernel."""


class OutOfDeviceMemory(VecstoreError, MemoryError):
    """Codes do not fit the GPU memory budget."""


class ResourceExhausted(VecstoreError, RuntimeError):
    """A server refused a call for lack of resources: too many calls at once, or a
    message above its size limit."""


class Unavailable(VecstoreError, ConnectionError):
    """A server could not be reached (the client retried with backoff), or is shutting down."""


class DeadlineExceeded(VecstoreError, TimeoutError):
    """A remote call ran past its timeout."""


class Unauthenticated(VecstoreError, PermissionError):
    """A server needs an API key and got none, or a wrong one."""


class PermissionDenied(VecstoreError, PermissionError):
    """A read-only API key was used for a write."""
