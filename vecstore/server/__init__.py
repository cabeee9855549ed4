"""The vecstore gRPC server (installed as ``vecstore.server``).

``serve(path, host=..., port=...)`` starts one in this process; ``vecstore serve`` runs
one from the command line. The wire contract is ``proto/vecstore/v1/vecstore.proto``.
"""

from .app import Server, serve
from .auth import ApiKeys

__all__ = ["ApiKeys", "Server", "serve"]
