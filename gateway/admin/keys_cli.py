"""`gateway keys ...`: manage API keys through a running gateway's admin API.

The admin credential comes from the environment (``GATEWAY_ADMIN_KEY``), never from the
command line, where every user of the machine could read it in the process list.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

import httpx

from ..identity import KeyHasher
from ..quotas import LIMITS


def add_keys_commands(commands: Any) -> None:
    """Add `keys create|list|show|revoke|limits|hash` to the top-level parser."""
    keys = commands.add_parser(
        "keys",
        help="manage API keys (needs GATEWAY_ADMIN_KEY; GATEWAY_URL, default 127.0.0.1:8080)",
    )
    keys.add_argument("--url", help="gateway URL (default: $GATEWAY_URL or 127.0.0.1:8080)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="issue a key; it is printed once")
    create.add_argument("--user", required=True)
    create.add_argument("--team")
    create.add_argument("--tier")
    create.add_argument("--model", action="append", dest="models", help="allowed model (repeat)")
    create.add_argument("--expires-in-days", type=float)
    _limit_arguments(create)
    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--user")
    show = actions.add_parser("show", help="show one key's record")
    show.add_argument("key_id")
    revoke = actions.add_parser("revoke", help="revoke a key on every replica")
    revoke.add_argument("key_id")
    limits = actions.add_parser("limits", help="show, or with options replace, a user's limits")
    limits.add_argument("user")
    _limit_arguments(limits)
    actions.add_parser(
        "hash", help="print the hash of a key read from stdin, for auth.keys in the config"
    )


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    for limit in LIMITS:
        parser.add_argument(f"--{limit.option}", type=int, help=limit.description)


def run_keys_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run one `gateway keys` action; 0 on success."""
    if args.action == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("gateway keys hash: expected the key on stdin", file=sys.stderr)
            return 2
        print(KeyHasher(environ.get("GATEWAY_KEY_PEPPER") or None).digest(key))
        return 0
    client = admin_client("keys", args.url, environ)
    if client is None:
        return 2
    with client:
        try:
            response = _request(client, args)
        except httpx.HTTPError as exc:
            print(f"gateway keys: cannot reach {client.base_url}: {exc}", file=sys.stderr)
            return 1
    return print_answer("keys", response)


def admin_client(command: str, url: str | None, environ: Mapping[str, str]) -> httpx.Client | None:
    """A client of the admin API (URL from `--url`, ``GATEWAY_URL`` or the default; the
    credential from ``GATEWAY_ADMIN_KEY``); None, with the reason printed, without one."""
    admin_key = environ.get("GATEWAY_ADMIN_KEY")
    if not admin_key:
        print(f"gateway {command}: set GATEWAY_ADMIN_KEY to the admin credential", file=sys.stderr)
        return None
    base = url or environ.get("GATEWAY_URL") or "http://127.0.0.1:8080"
    headers = {"authorization": f"Bearer {admin_key}"}
    return httpx.Client(base_url=base.rstrip("/"), headers=headers, timeout=30)


def print_answer(command: str, response: httpx.Response) -> int:
    """Print an admin API answer (JSON, indented) or its error; the exit status."""
    body = response.json() if response.content else {}
    if response.status_code >= 400:
        message = body.get("error", {}).get("message", response.text)
        print(f"gateway {command}: HTTP {response.status_code}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _request(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    limits = {
        limit.setting: getattr(args, limit.option)
        for limit in LIMITS
        if getattr(args, limit.option, None) is not None
    }
    if args.action == "create":
        payload: dict[str, Any] = {"user": args.user}
        for name in ("team", "tier", "models", "expires_in_days"):
            if getattr(args, name) is not None:
                payload[name] = getattr(args, name)
        if limits:
            payload["limits"] = limits
        return client.post("/admin/keys", json=payload)
    if args.action == "list":
        return client.get("/admin/keys", params={"user": args.user} if args.user else None)
    if args.action == "show":
        return client.get(f"/admin/keys/{args.key_id}")
    if args.action == "revoke":
        return client.delete(f"/admin/keys/{args.key_id}")
    path = f"/admin/users/{args.user}/limits"
    return client.put(path, json=limits) if limits else client.get(path)
