"""`gateway usage ...`: usage reports and the ledger export, through the admin API.

``gateway usage export --since 2026-11-01 --until 2026-12-01 --format csv > november.csv``
streams every record of requests that arrived in that range, for billing; ``gateway usage
report`` prints sums by day, model or user.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

import httpx

from .keys_cli import admin_client, print_answer


def add_usage_commands(commands: Any) -> None:
    """Add `usage export|report` to the top-level parser."""
    usage = commands.add_parser(
        "usage",
        help="usage reports and export (needs GATEWAY_ADMIN_KEY; GATEWAY_URL, default "
        "127.0.0.1:8080)",
    )
    usage.add_argument("--url", help="gateway URL (default: $GATEWAY_URL or 127.0.0.1:8080)")
    actions = usage.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="stream the ledger's records (for billing)")
    export.add_argument("--since", required=True, help="ISO date or time (UTC), or Unix seconds")
    export.add_argument("--until", help="exclusive end (default: now)")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", help="file to write (default: stdout)")
    report = actions.add_parser("report", help="sums of requests and tokens")
    report.add_argument("--from", dest="first", help="first UTC day, YYYY-MM-DD (default: today)")
    report.add_argument("--to", dest="last", help="last UTC day, included (default: today)")
    report.add_argument("--user")
    report.add_argument("--model")
    report.add_argument("--group-by", default="day", help="day, model, user; comma-separated")


def run_usage_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run one `gateway usage` action; 0 on success."""
    client = admin_client("usage", args.url, environ)
    if client is None:
        return 2
    with client:
        try:
            if args.action == "report":
                params = {"from": args.first, "to": args.last, "user": args.user,
                          "model": args.model, "group_by": args.group_by}  # fmt: skip
                wanted = {k: v for k, v in params.items() if v is not None}
                return print_answer("usage", client.get("/admin/usage", params=wanted))
            if args.output:
                with open(args.output, "wb") as out:
                    return _export(client, args, out)
            return _export(client, args, sys.stdout.buffer)
        except httpx.HTTPError as exc:
            # a cut-off export ends here too: the output is then incomplete, and says so
            print(f"gateway usage: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1


def _export(client: httpx.Client, args: argparse.Namespace, out: BinaryIO) -> int:
    params = {"since": args.since, "format": args.format}
    if args.until:
        params["until"] = args.until
    with client.stream("GET", "/admin/usage/records", params=params, timeout=None) as response:
        if response.status_code >= 400:
            response.read()
            return print_answer("usage", response)
        for chunk in response.iter_bytes():
            out.write(chunk)
    out.flush()
    return 0
