"""The ``vecstore`` command (also ``python -m vecstore``).

``vecstore serve --data DIR [--host 127.0.0.1] [--port 50051] ...`` serves a database over
gRPC (needs the ``server`` extra); ``vecstore serve --help`` lists the options.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vecstore", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a database directory over gRPC")
    try:
        from vecstore.server import cli
    except ImportError as exc:
        print(f"vecstore: the server needs gRPC: pip install 'vecstore[server]' ({exc})",
              file=sys.stderr)
        return 2
    cli.add_arguments(serve)
    args = parser.parse_args(argv)
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
