"""The `gateway` console script: `serve`; `keys` and `usage`, through the admin API."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .admin import add_keys_commands, add_usage_commands, run_keys_command, run_usage_command
from .serve import serve


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gateway` command."""
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="serve the gateway")
    serving.add_argument("--config", help="YAML configuration file (default: built-in quickstart)")
    serving.add_argument("--host", help="interface to bind (default: server.host, 127.0.0.1)")
    serving.add_argument("--port", type=int, help="TCP port (default: server.port, 8080)")
    serving.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    add_keys_commands(commands)
    add_usage_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "usage":
        return run_usage_command(args, os.environ)
    return run_keys_command(args, os.environ)


if __name__ == "__main__":
    sys.exit(main())
