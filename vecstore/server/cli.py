"""``vecstore serve``: run the gRPC server until SIGTERM or SIGINT.

On either signal the server stops taking calls, lets those in flight finish (up to
``--grace`` seconds), flushes and closes the database, and exits with status 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

MIB = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vecstore serve``."""
    from . import app

    parser.add_argument("--data", required=True, help="database directory (created if absent)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=50051,
                        help="port (default: %(default)s); 0 picks a free one")
    parser.add_argument("--port-file", type=Path,
                        help="write the bound port to this file once serving")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where searches run (default %(default)s)")
    parser.add_argument("--durability", choices=("sync", "batch"), default="sync",
                        help="fsync every write (sync, the default) or every 50 ms (batch)")
    parser.add_argument("--api-key-file", help="read-write API key (else $VECSTORE_API_KEY)")
    parser.add_argument("--readonly-api-key-file",
                        help="read-only API key (else $VECSTORE_READONLY_API_KEY)")
    parser.add_argument("--tls-cert", help="PEM certificate chain; serve TLS with --tls-key")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--allow-insecure-keys", action="store_true",
                        help="allow API keys over plaintext on a non-loopback address")
    parser.add_argument("--max-message-mb", type=int,
                        default=app.DEFAULT_MAX_MESSAGE_BYTES // MIB,
                        help="largest request or response in MiB (default %(default)s)")
    parser.add_argument("--max-concurrent-rpcs", type=int,
                        default=app.DEFAULT_MAX_CONCURRENT_RPCS,
                        help="Vecstore calls beyond this many at once get RESOURCE_EXHAUSTED "
                             "(default %(default)s; health checks and reflection do not count)")
    parser.add_argument("--max-concurrent-streams", type=int,
                        help="InsertStream calls beyond this many at once get "
                             "RESOURCE_EXHAUSTED (default: half of --max-concurrent-rpcs)")
    parser.add_argument("--reserve-threads", type=int, default=app.DEFAULT_RESERVE_THREADS,
                        help="threads beyond --max-concurrent-rpcs for health checks, "
                             "reflection and refusals (default %(default)s)")
    parser.add_argument("--workers", type=int,
                        help="ignored (kept for old command lines): the server runs "
                             "--max-concurrent-rpcs + --reserve-threads threads")
    parser.add_argument("--grace", type=float, default=app.DEFAULT_GRACE_S,
                        help="seconds calls in flight get to finish on shutdown "
                             "(default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean shutdown, 2 for bad options."""
    from vecstore.errors import VecstoreError

    from .app import serve
    from .auth import ApiKeys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if (args.tls_cert is None) != (args.tls_key is None):
        print("vecstore serve: give both --tls-cert and --tls-key, or neither", file=sys.stderr)
        return 2
    if args.workers is not None:
        logging.getLogger("vecstore.server").warning(
            "--workers is ignored: the server runs --max-concurrent-rpcs + --reserve-threads "
            "threads, so that no call waits for one")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        keys = ApiKeys.load(args.api_key_file, args.readonly_api_key_file)
        server = serve(args.data, device=args.device, durability=args.durability,
                       host=args.host, port=args.port, keys=keys,
                       tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
                       allow_insecure_keys=args.allow_insecure_keys,
                       max_message_bytes=args.max_message_mb * MIB,
                       max_concurrent_rpcs=args.max_concurrent_rpcs,
                       max_concurrent_streams=args.max_concurrent_streams,
                       reserve_threads=args.reserve_threads)
    except (VecstoreError, OSError, RuntimeError) as exc:
        print(f"vecstore serve: {exc}", file=sys.stderr)
        return 2
    if args.port_file is not None:
        args.port_file.write_text(f"{server.port}\n")
    while not stop.wait(0.5):
        pass
    logging.getLogger("vecstore.server").info("signal received: finishing calls in flight")
    server.stop(args.grace)
    return 0
